package piece

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/pouchfly/pouchfly/internal/clock"
	"github.com/pouchfly/pouchfly/internal/errdefs"
)

// MemoryStore keeps pieces in memory: for tests, and for short-lived
// embedded peers that hand the content straight to a writer.
type MemoryStore struct {
	clock clock.Clock
	gate  writeGate

	mu    sync.Mutex
	tasks map[string]*memTask
	// MaxBytes, when positive, makes writes beyond it fail with ErrNoSpace.
	maxBytes int64
	used     int64
}

type memTask struct {
	meta     Meta
	pieces   [][]byte
	sums     [][]byte
	bitmap   Bitmap
	complete bool
	access   time.Time
}

var _ Store = (*MemoryStore)(nil)

// NewMemoryStore returns an empty store holding at most maxBytes (0: no
// limit); clk may be nil for the wall clock.
func NewMemoryStore(maxBytes int64, clk clock.Clock) *MemoryStore {
	if clk == nil {
		clk = clock.Real{}
	}
	return &MemoryStore{clock: clk, tasks: map[string]*memTask{}, maxBytes: maxBytes}
}

func (s *MemoryStore) get(taskID string) (*memTask, error) {
	t := s.tasks[taskID]
	if t == nil {
		return nil, fmt.Errorf("task %s: %w", taskID, errdefs.ErrNotFound)
	}
	return t, nil
}

// Create implements Store.
func (s *MemoryStore) Create(ctx context.Context, meta Meta) error {
	if err := validMeta(meta); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if t := s.tasks[meta.TaskID]; t != nil {
		_, err := mergeMeta(&t.meta, meta)
		return err
	}
	t := &memTask{meta: meta}
	t.access = s.clock.Now()
	s.tasks[meta.TaskID] = t
	return nil
}

// WritePiece implements Store.
func (s *MemoryStore) WritePiece(ctx context.Context, taskID string, n int, r io.Reader, want []byte) ([]byte, error) {
	s.mu.Lock()
	t, err := s.get(taskID)
	var meta Meta
	if err == nil {
		meta = t.meta
	}
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	size, exact, err := pieceLimit(meta, n)
	if err != nil {
		return nil, err
	}
	hold, release, r, read, err := s.gate.claim(ctx, taskID, n, r, size, exact, want)
	if err != nil {
		return nil, err
	}
	defer release()
	s.mu.Lock()
	if t.bitmap.Has(n) {
		prev := append([]byte(nil), t.sums[n]...)
		s.mu.Unlock()
		if read {
			return nil, ErrTaken // stored by another copy while this one was read
		}
		return prev, nil
	}
	s.mu.Unlock()
	var buf bytes.Buffer
	sum, err := copyPiece(hold.writer(&buf), ctxReader{ctx, r}, size, exact, want)
	if err != nil {
		return nil, err
	}
	err = hold.commit(func() error {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.tasks[taskID] != t {
			return fmt.Errorf("task %s deleted during write: %w", taskID, errdefs.ErrNotFound)
		}
		if s.maxBytes > 0 && s.used+int64(buf.Len()) > s.maxBytes {
			return fmt.Errorf("memory store holds %d of %d bytes: %w", s.used, s.maxBytes, errdefs.ErrNoSpace)
		}
		for len(t.pieces) <= n {
			t.pieces = append(t.pieces, nil)
			t.sums = append(t.sums, nil)
		}
		t.pieces[n] = buf.Bytes()
		t.sums[n] = sum
		t.bitmap.Set(n)
		s.used += int64(buf.Len())
		t.access = s.clock.Now()
		return nil
	})
	if err != nil {
		return nil, err
	}
	return sum, nil
}

// ReadPiece implements Store.
func (s *MemoryStore) ReadPiece(ctx context.Context, taskID string, n int) (*Reader, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, err := s.get(taskID)
	if err != nil {
		return nil, err
	}
	if !t.bitmap.Has(n) {
		return nil, fmt.Errorf("task %s piece %d: %w", taskID, n, errdefs.ErrNotFound)
	}
	t.access = s.clock.Now()
	p := t.pieces[n]
	return &Reader{R: bytes.NewReader(p), Size: int64(len(p))}, nil
}

// ReadAt implements Store.
func (s *MemoryStore) ReadAt(ctx context.Context, taskID string, off, size int64) (*Reader, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, err := s.get(taskID)
	if err != nil {
		return nil, err
	}
	if off < 0 || size < 0 {
		return nil, fmt.Errorf("range %d+%d: %w", off, size, errdefs.ErrInvalid)
	}
	ps := int64(t.meta.PieceSize)
	var parts []io.Reader
	var total int64
	for pos := off; total < size; {
		n := int(pos / ps)
		if n >= len(t.pieces) || t.pieces[n] == nil {
			break
		}
		p := t.pieces[n][pos-int64(n)*ps:]
		if rem := size - total; int64(len(p)) > rem {
			p = p[:rem]
		}
		if len(p) == 0 {
			break
		}
		parts = append(parts, bytes.NewReader(p))
		total += int64(len(p))
		pos += int64(len(p))
	}
	t.access = s.clock.Now()
	return &Reader{R: io.MultiReader(parts...), Size: total}, nil
}

// Finish implements Store.
func (s *MemoryStore) Finish(ctx context.Context, taskID string, length int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, err := s.get(taskID)
	if err != nil {
		return err
	}
	if err := finishMeta(&t.meta, t.bitmap, length); err != nil {
		return err
	}
	t.complete = true
	return nil
}

func (t *memTask) stat() Stat {
	st := Stat{Meta: t.meta, Bitmap: t.bitmap.Clone(), Complete: t.complete, LastAccess: t.access}
	for _, p := range t.pieces {
		st.Bytes += int64(len(p))
	}
	return st
}

// Stat implements Store.
func (s *MemoryStore) Stat(ctx context.Context, taskID string) (Stat, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, err := s.get(taskID)
	if err != nil {
		return Stat{}, err
	}
	return t.stat(), nil
}

// List implements Store.
func (s *MemoryStore) List(ctx context.Context) ([]Stat, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Stat, 0, len(s.tasks))
	for _, t := range s.tasks {
		out = append(out, t.stat())
	}
	return out, nil
}

// Delete implements Store.
func (s *MemoryStore) Delete(ctx context.Context, taskID string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t := s.tasks[taskID]; t != nil {
		s.used -= t.stat().Bytes
		delete(s.tasks, taskID)
	}
	return nil
}

// PieceSums implements Store.
func (s *MemoryStore) PieceSums(ctx context.Context, taskID string) ([][]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, err := s.get(taskID)
	if err != nil {
		return nil, err
	}
	return cloneSums(t.sums), nil
}
