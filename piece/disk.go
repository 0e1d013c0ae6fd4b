package piece

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pouchfly/pouchfly/internal/clock"
	"github.com/pouchfly/pouchfly/internal/errdefs"
)

// DiskStore keeps each task in a folder of its own under its root:
//
//	<root>/<task>/data       the content, pieces written at their offsets
//	<root>/<task>/sums       32 bytes per piece: its SHA-256, zeros if absent
//	<root>/<task>/meta.json  Meta plus the complete flag
//
// The sums file doubles as the persistent bitmap, so an agent restarted
// after a crash keeps the pieces it had. A task ID is a digest or a hex
// hash, so it is a safe folder name (':' becomes '_').
type DiskStore struct {
	root  string
	clock clock.Clock
	gate  writeGate

	mu    sync.Mutex
	tasks map[string]*diskTask
}

type diskTask struct {
	mu       sync.Mutex
	dir      string
	meta     Meta
	bitmap   Bitmap
	sums     [][]byte
	complete bool
	access   time.Time
	data     *os.File
	sumsFile *os.File
	deleted  bool
}

type diskMeta struct {
	Meta
	Complete bool `json:"complete"`
}

var _ Store = (*DiskStore)(nil)

var copyBufs = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// NewDiskStore opens (creating if needed) a store rooted at root and loads
// the tasks already there; clk may be nil for the wall clock.
func NewDiskStore(root string, clk clock.Clock) (*DiskStore, error) {
	if clk == nil {
		clk = clock.Real{}
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("store root: %w", err)
	}
	s := &DiskStore{root: root, clock: clk, tasks: map[string]*diskTask{}}
	ents, err := os.ReadDir(root)
	if err != nil {
		return nil, fmt.Errorf("store root: %w", err)
	}
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		t, err := s.load(filepath.Join(root, e.Name()))
		if err != nil {
			// A half-created or damaged task is dropped, never served.
			os.RemoveAll(filepath.Join(root, e.Name()))
			continue
		}
		s.tasks[t.meta.TaskID] = t
	}
	return s, nil
}

func dirName(taskID string) string { return strings.ReplaceAll(taskID, ":", "_") }

func (s *DiskStore) load(dir string) (*diskTask, error) {
	b, err := os.ReadFile(filepath.Join(dir, "meta.json"))
	if err != nil {
		return nil, err
	}
	var m diskMeta
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	if validMeta(m.Meta) != nil || dirName(m.TaskID) != filepath.Base(dir) {
		return nil, errors.New("bad meta")
	}
	t := &diskTask{dir: dir, meta: m.Meta, complete: m.Complete}
	if err := t.open(); err != nil {
		return nil, err
	}
	raw, err := io.ReadAll(io.LimitReader(t.sumsFile, int64(MaxCount)*sha256.Size))
	if err != nil {
		t.close()
		return nil, err
	}
	zero := make([]byte, sha256.Size)
	for n := 0; (n+1)*sha256.Size <= len(raw); n++ {
		if t.meta.ContentLength >= 0 && n >= t.meta.Count() {
			break // sums past the end of the content are not pieces
		}
		sum := raw[n*sha256.Size : (n+1)*sha256.Size]
		if !bytes.Equal(sum, zero) {
			t.setSum(n, append([]byte(nil), sum...))
		}
	}
	if t.complete && (t.meta.ContentLength < 0 || !t.bitmap.Full(t.meta.Count())) {
		t.complete = false
	}
	if fi, err := t.data.Stat(); err == nil {
		t.access = fi.ModTime()
	}
	return t, nil
}

func (t *diskTask) open() error {
	var err error
	if t.data, err = os.OpenFile(filepath.Join(t.dir, "data"), os.O_RDWR|os.O_CREATE, 0o600); err != nil {
		return err
	}
	if t.sumsFile, err = os.OpenFile(filepath.Join(t.dir, "sums"), os.O_RDWR|os.O_CREATE, 0o600); err != nil {
		t.data.Close()
		return err
	}
	return nil
}

func (t *diskTask) close() {
	if t.data != nil {
		t.data.Close()
	}
	if t.sumsFile != nil {
		t.sumsFile.Close()
	}
}

func (t *diskTask) setSum(n int, sum []byte) {
	for len(t.sums) <= n {
		t.sums = append(t.sums, nil)
	}
	t.sums[n] = sum
	t.bitmap.Set(n)
}

func (t *diskTask) writeMeta() error {
	b, _ := json.Marshal(diskMeta{Meta: t.meta, Complete: t.complete})
	tmp := filepath.Join(t.dir, "meta.json.tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return mapIOErr(err)
	}
	return mapIOErr(os.Rename(tmp, filepath.Join(t.dir, "meta.json")))
}

func mapIOErr(err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("%v: %w", err, errdefs.ErrNoSpace)
	}
	return err
}

func (s *DiskStore) get(taskID string) (*diskTask, error) {
	s.mu.Lock()
	t := s.tasks[taskID]
	s.mu.Unlock()
	if t == nil {
		return nil, fmt.Errorf("task %s: %w", taskID, errdefs.ErrNotFound)
	}
	return t, nil
}

// Create implements Store.
func (s *DiskStore) Create(ctx context.Context, meta Meta) error {
	if err := validMeta(meta); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if t := s.tasks[meta.TaskID]; t != nil {
		t.mu.Lock()
		defer t.mu.Unlock()
		return t.merge(meta)
	}
	dir := filepath.Join(s.root, dirName(meta.TaskID))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return mapIOErr(err)
	}
	t := &diskTask{dir: dir, meta: meta, access: s.clock.Now()}
	if err := t.open(); err != nil {
		os.RemoveAll(dir)
		return mapIOErr(err)
	}
	if err := t.writeMeta(); err != nil {
		t.close()
		os.RemoveAll(dir)
		return err
	}
	s.tasks[meta.TaskID] = t
	return nil
}

func validMeta(m Meta) error {
	if err := ValidTaskID(m.TaskID); err != nil {
		return err
	}
	if m.PieceSize <= 0 || m.PieceSize > MaxSize {
		return fmt.Errorf("piece size %d: %w", m.PieceSize, errdefs.ErrInvalid)
	}
	if m.ContentLength < -1 || Count(m.ContentLength, m.PieceSize) > MaxCount {
		return fmt.Errorf("content length %d: %w", m.ContentLength, errdefs.ErrInvalid)
	}
	if m.Digest != "" {
		if err := ValidDigest(m.Digest); err != nil {
			return err
		}
	}
	return nil
}

// merge applies a repeated Create; the caller holds t.mu. It is shared by
// both stores through mergeMeta.
func (t *diskTask) merge(m Meta) error {
	changed, err := mergeMeta(&t.meta, m)
	if err != nil || !changed {
		return err
	}
	return t.writeMeta()
}

func mergeMeta(cur *Meta, m Meta) (changed bool, err error) {
	if cur.PieceSize != m.PieceSize {
		return false, fmt.Errorf("task %s exists with piece size %d, not %d: %w", m.TaskID, cur.PieceSize, m.PieceSize, errdefs.ErrInvalid)
	}
	if cur.ContentLength >= 0 && m.ContentLength >= 0 && cur.ContentLength != m.ContentLength {
		return false, fmt.Errorf("task %s exists with length %d, not %d: %w", m.TaskID, cur.ContentLength, m.ContentLength, errdefs.ErrInvalid)
	}
	if cur.ContentLength < 0 && m.ContentLength >= 0 {
		cur.ContentLength = m.ContentLength
		changed = true
	}
	if cur.Digest == "" && m.Digest != "" {
		cur.Digest = m.Digest
		changed = true
	}
	return changed, nil
}

// pieceLimit returns the size piece n must have (exact) or may have at most.
func pieceLimit(m Meta, n int) (size int64, exact bool, err error) {
	if n < 0 || n >= MaxCount {
		return 0, false, fmt.Errorf("piece %d: %w", n, errdefs.ErrInvalid)
	}
	if m.ContentLength < 0 {
		return int64(m.PieceSize), false, nil
	}
	if n >= m.Count() {
		return 0, false, fmt.Errorf("piece %d of %d: %w", n, m.Count(), errdefs.ErrInvalid)
	}
	_, size = Range(n, m.ContentLength, m.PieceSize)
	return size, true, nil
}

// copyPiece copies a piece from r into w, hashing it, and checks its size
// and sum. It is the one write path of both stores.
func copyPiece(w io.Writer, r io.Reader, size int64, exact bool, want []byte) ([]byte, error) {
	h := sha256.New()
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	got, err := io.CopyBuffer(io.MultiWriter(w, h), io.LimitReader(r, size+1), *bp)
	if err != nil {
		return nil, mapIOErr(err)
	}
	if got > size || (exact && got != size) || got == 0 && size > 0 {
		return nil, fmt.Errorf("piece is %d bytes, want %d: %w", got, size, errdefs.ErrInvalid)
	}
	sum := h.Sum(nil)
	if want != nil && !bytes.Equal(sum, want) {
		return nil, fmt.Errorf("piece sha256 %x, want %x: %w", sum, want, errdefs.ErrDigestMismatch)
	}
	return sum, nil
}

// WritePiece implements Store.
func (s *DiskStore) WritePiece(ctx context.Context, taskID string, n int, r io.Reader, want []byte) ([]byte, error) {
	t, err := s.get(taskID)
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	meta, data, sumsFile := t.meta, t.data, t.sumsFile
	t.mu.Unlock()
	size, exact, err := pieceLimit(meta, n)
	if err != nil {
		return nil, err
	}
	hold, release, r, read, err := s.gate.claim(ctx, taskID, n, r, size, exact, want)
	if err != nil {
		return nil, err
	}
	defer release()
	t.mu.Lock()
	have := t.bitmap.Has(n)
	var prev []byte
	if have {
		prev = append([]byte(nil), t.sums[n]...)
	}
	t.mu.Unlock()
	if have && read {
		return nil, ErrTaken // stored by another copy while this one was read
	}
	if have {
		// Already verified: keep those bytes, never rewrite them.
		return prev, nil
	}
	off := int64(n) * int64(meta.PieceSize)
	sum, err := copyPiece(hold.writer(io.NewOffsetWriter(data, off)), ctxReader{ctx, r}, size, exact, want)
	if err != nil {
		return nil, err
	}
	err = hold.commit(func() error {
		if _, err := sumsFile.WriteAt(sum, int64(n)*sha256.Size); err != nil {
			return mapIOErr(err)
		}
		t.mu.Lock()
		defer t.mu.Unlock()
		if t.deleted {
			return fmt.Errorf("task %s deleted during write: %w", taskID, errdefs.ErrNotFound)
		}
		t.setSum(n, sum)
		t.access = s.clock.Now()
		return nil
	})
	if err != nil {
		return nil, err
	}
	return sum, nil
}

// ctxReader stops a copy when its context ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// ReadPiece implements Store.
func (s *DiskStore) ReadPiece(ctx context.Context, taskID string, n int) (*Reader, error) {
	t, err := s.get(taskID)
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	has, meta := t.bitmap.Has(n), t.meta
	t.mu.Unlock()
	if !has {
		return nil, fmt.Errorf("task %s piece %d: %w", taskID, n, errdefs.ErrNotFound)
	}
	off := int64(n) * int64(meta.PieceSize)
	size := int64(meta.PieceSize)
	if meta.ContentLength >= 0 {
		_, size = Range(n, meta.ContentLength, meta.PieceSize)
	} else if fi, err := t.data.Stat(); err == nil && fi.Size()-off < size {
		size = fi.Size() - off
	}
	return s.open(t, off, size)
}

// ReadAt implements Store.
func (s *DiskStore) ReadAt(ctx context.Context, taskID string, off, size int64) (*Reader, error) {
	t, err := s.get(taskID)
	if err != nil {
		return nil, err
	}
	if off < 0 || size < 0 {
		return nil, fmt.Errorf("range %d+%d: %w", off, size, errdefs.ErrInvalid)
	}
	return s.open(t, off, size)
}

func (s *DiskStore) open(t *diskTask, off, size int64) (*Reader, error) {
	f, err := os.Open(filepath.Join(t.dir, "data"))
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", t.meta.TaskID, errdefs.ErrNotFound)
	}
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		f.Close()
		return nil, err
	}
	t.mu.Lock()
	t.access = s.clock.Now()
	t.mu.Unlock()
	return &Reader{R: &io.LimitedReader{R: f, N: size}, Size: size, c: f}, nil
}

// Finish implements Store.
func (s *DiskStore) Finish(ctx context.Context, taskID string, length int64) error {
	t, err := s.get(taskID)
	if err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := finishMeta(&t.meta, t.bitmap, length); err != nil {
		return err
	}
	if err := t.data.Truncate(length); err != nil {
		return mapIOErr(err)
	}
	t.complete = true
	return t.writeMeta()
}

func finishMeta(m *Meta, b Bitmap, length int64) error {
	if length < 0 || (m.ContentLength >= 0 && length != m.ContentLength) {
		return fmt.Errorf("task %s: finish with length %d, have %d: %w", m.TaskID, length, m.ContentLength, errdefs.ErrInvalid)
	}
	if n := Count(length, m.PieceSize); !b.Full(n) || b.Count() != n {
		return fmt.Errorf("task %s: %d of %d pieces present: %w", m.TaskID, b.Count(), n, errdefs.ErrInvalid)
	}
	m.ContentLength = length
	return nil
}

// Stat implements Store.
func (s *DiskStore) Stat(ctx context.Context, taskID string) (Stat, error) {
	t, err := s.get(taskID)
	if err != nil {
		return Stat{}, err
	}
	return t.stat(), nil
}

func (t *diskTask) stat() Stat {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := Stat{Meta: t.meta, Bitmap: t.bitmap.Clone(), Complete: t.complete, LastAccess: t.access}
	st.Bytes = int64(t.bitmap.Count()) * int64(t.meta.PieceSize)
	if t.meta.ContentLength >= 0 && st.Bytes > t.meta.ContentLength {
		st.Bytes = t.meta.ContentLength
	}
	return st
}

// List implements Store.
func (s *DiskStore) List(ctx context.Context) ([]Stat, error) {
	s.mu.Lock()
	ts := make([]*diskTask, 0, len(s.tasks))
	for _, t := range s.tasks {
		ts = append(ts, t)
	}
	s.mu.Unlock()
	out := make([]Stat, 0, len(ts))
	for _, t := range ts {
		out = append(out, t.stat())
	}
	return out, nil
}

// Delete implements Store.
func (s *DiskStore) Delete(ctx context.Context, taskID string) error {
	s.mu.Lock()
	t := s.tasks[taskID]
	delete(s.tasks, taskID)
	s.mu.Unlock()
	if t == nil {
		return nil
	}
	t.mu.Lock()
	t.deleted = true
	t.bitmap = nil
	t.close()
	t.mu.Unlock()
	return os.RemoveAll(t.dir)
}

// PieceSums implements Store.
func (s *DiskStore) PieceSums(ctx context.Context, taskID string) ([][]byte, error) {
	t, err := s.get(taskID)
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return cloneSums(t.sums), nil
}

func cloneSums(in [][]byte) [][]byte {
	out := make([][]byte, len(in))
	for i, s := range in {
		out[i] = append([]byte(nil), s...)
		if s == nil {
			out[i] = nil
		}
	}
	return out
}

// Close releases open files; the store must not be used afterwards.
func (s *DiskStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, t := range s.tasks {
		t.mu.Lock()
		t.close()
		t.mu.Unlock()
	}
	return nil
}
