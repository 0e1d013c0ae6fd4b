// Package piecetest is the conformance suite every piece.Store
// implementation must pass.
package piecetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/piece"
)

// Factory returns a fresh, empty store for one subtest. reopen, when not
// nil, returns a store over the same backing state (a restart).
type Factory func(t *testing.T) (s piece.Store, reopen func() piece.Store)

const pieceSize = 1 << 20

func content(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func taskID(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hexs(sum[:])
}

func hexs(b []byte) string {
	const digits = "0123456789abcdef"
	var sb strings.Builder
	for _, c := range b {
		sb.WriteByte(digits[c>>4])
		sb.WriteByte(digits[c&15])
	}
	return sb.String()
}

func sumOf(b []byte) []byte { s := sha256.Sum256(b); return s[:] }

func pieceOf(b []byte, n int) []byte {
	off, size := piece.Range(n, int64(len(b)), pieceSize)
	return b[off : off+size]
}

// writeAll stores every piece of b, verified.
func writeAll(t *testing.T, s piece.Store, id string, b []byte) {
	t.Helper()
	ctx := context.Background()
	for n := 0; n < piece.Count(int64(len(b)), pieceSize); n++ {
		p := pieceOf(b, n)
		if _, err := s.WritePiece(ctx, id, n, bytes.NewReader(p), sumOf(p)); err != nil {
			t.Fatalf("write piece %d: %v", n, err)
		}
	}
}

func readPiece(t *testing.T, s piece.Store, id string, n int) []byte {
	t.Helper()
	r, err := s.ReadPiece(context.Background(), id, n)
	if err != nil {
		t.Fatalf("read piece %d: %v", n, err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(b)) != r.Size {
		t.Fatalf("piece %d: read %d bytes, Size says %d", n, len(b), r.Size)
	}
	return b
}

// Run runs the conformance suite against the stores newStore makes.
func Run(t *testing.T, newStore Factory) {
	ctx := context.Background()

	t.Run("RoundTrip", func(t *testing.T) {
		s, _ := newStore(t)
		b := content(t, 3*pieceSize+12345)
		id := taskID(b)
		if err := s.Create(ctx, piece.Meta{TaskID: id, ContentLength: int64(len(b)), PieceSize: pieceSize}); err != nil {
			t.Fatal(err)
		}
		writeAll(t, s, id, b)
		for n := 0; n < 4; n++ {
			if got := readPiece(t, s, id, n); !bytes.Equal(got, pieceOf(b, n)) {
				t.Fatalf("piece %d differs", n)
			}
		}
		if err := s.Finish(ctx, id, int64(len(b))); err != nil {
			t.Fatal(err)
		}
		st, err := s.Stat(ctx, id)
		if err != nil || !st.Complete || st.Bitmap.Count() != 4 || st.ContentLength != int64(len(b)) {
			t.Fatalf("stat = %+v, %v", st, err)
		}
		r, err := s.ReadAt(ctx, id, pieceSize-10, 20)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(r)
		r.Close()
		if !bytes.Equal(got, b[pieceSize-10:pieceSize+10]) {
			t.Fatal("ReadAt across a piece boundary differs")
		}
	})

	t.Run("RejectsCorruptPiece", func(t *testing.T) {
		s, _ := newStore(t)
		b := content(t, 2*pieceSize)
		id := taskID(b)
		must(t, s.Create(ctx, piece.Meta{TaskID: id, ContentLength: int64(len(b)), PieceSize: pieceSize}))
		bad := append([]byte(nil), pieceOf(b, 0)...)
		bad[100] ^= 0xff
		_, err := s.WritePiece(ctx, id, 0, bytes.NewReader(bad), sumOf(pieceOf(b, 0)))
		if !errors.Is(err, errdefs.ErrDigestMismatch) {
			t.Fatalf("corrupt piece: err = %v, want ErrDigestMismatch", err)
		}
		if _, err := s.ReadPiece(ctx, id, 0); !errors.Is(err, errdefs.ErrNotFound) {
			t.Fatalf("corrupt piece readable: %v", err)
		}
		st, _ := s.Stat(ctx, id)
		if st.Bitmap.Has(0) {
			t.Fatal("corrupt piece marked present")
		}
	})

	t.Run("VerifiedPieceNeverRewritten", func(t *testing.T) {
		s, _ := newStore(t)
		b := content(t, pieceSize)
		id := taskID(b)
		must(t, s.Create(ctx, piece.Meta{TaskID: id, ContentLength: int64(len(b)), PieceSize: pieceSize}))
		writeAll(t, s, id, b)
		junk := bytes.Repeat([]byte{7}, pieceSize)
		if _, err := s.WritePiece(ctx, id, 0, bytes.NewReader(junk), nil); err != nil {
			t.Fatalf("second write: %v", err)
		}
		if !bytes.Equal(readPiece(t, s, id, 0), b) {
			t.Fatal("a verified piece was overwritten")
		}
	})

	t.Run("WrongSizes", func(t *testing.T) {
		s, _ := newStore(t)
		b := content(t, pieceSize+10)
		id := taskID(b)
		must(t, s.Create(ctx, piece.Meta{TaskID: id, ContentLength: int64(len(b)), PieceSize: pieceSize}))
		short := pieceOf(b, 0)[:100]
		if _, err := s.WritePiece(ctx, id, 0, bytes.NewReader(short), nil); !errors.Is(err, errdefs.ErrInvalid) {
			t.Fatalf("short piece: %v", err)
		}
		long := append(append([]byte(nil), pieceOf(b, 1)...), 1, 2, 3)
		if _, err := s.WritePiece(ctx, id, 1, bytes.NewReader(long), nil); !errors.Is(err, errdefs.ErrInvalid) {
			t.Fatalf("long piece: %v", err)
		}
		for _, n := range []int{-1, 2, 1 << 30} {
			if _, err := s.WritePiece(ctx, id, n, bytes.NewReader(nil), nil); !errors.Is(err, errdefs.ErrInvalid) {
				t.Fatalf("piece %d out of range: %v", n, err)
			}
		}
		if err := s.Finish(ctx, id, int64(len(b))); !errors.Is(err, errdefs.ErrInvalid) {
			t.Fatalf("finish with missing pieces: %v", err)
		}
	})

	t.Run("InvalidMeta", func(t *testing.T) {
		s, _ := newStore(t)
		for _, m := range []piece.Meta{
			{TaskID: "../../etc", ContentLength: 1, PieceSize: pieceSize},
			{TaskID: "sha256:zz", ContentLength: 1, PieceSize: pieceSize},
			{TaskID: taskID([]byte("x")), ContentLength: 1, PieceSize: 0},
			{TaskID: taskID([]byte("x")), ContentLength: 1, PieceSize: piece.MaxSize + 1},
			{TaskID: taskID([]byte("x")), ContentLength: -2, PieceSize: pieceSize},
			{TaskID: taskID([]byte("x")), ContentLength: 1, PieceSize: pieceSize, Digest: "md5:abc"},
		} {
			if err := s.Create(ctx, m); !errors.Is(err, errdefs.ErrInvalid) {
				t.Errorf("Create(%+v) = %v, want ErrInvalid", m, err)
			}
		}
		b := content(t, 10)
		id := taskID(b)
		must(t, s.Create(ctx, piece.Meta{TaskID: id, ContentLength: 10, PieceSize: pieceSize}))
		if err := s.Create(ctx, piece.Meta{TaskID: id, ContentLength: 10, PieceSize: 2 * pieceSize}); !errors.Is(err, errdefs.ErrInvalid) {
			t.Fatalf("re-create with another piece size: %v", err)
		}
		if err := s.Create(ctx, piece.Meta{TaskID: id, ContentLength: 10, PieceSize: pieceSize}); err != nil {
			t.Fatalf("idempotent create: %v", err)
		}
	})

	t.Run("UnknownLength", func(t *testing.T) {
		s, _ := newStore(t)
		b := content(t, 2*pieceSize+77)
		id := taskID(b)
		must(t, s.Create(ctx, piece.Meta{TaskID: id, ContentLength: -1, PieceSize: pieceSize}))
		for n := 0; n < 3; n++ {
			if _, err := s.WritePiece(ctx, id, n, bytes.NewReader(pieceOf(b, n)), nil); err != nil {
				t.Fatalf("piece %d: %v", n, err)
			}
		}
		must(t, s.Finish(ctx, id, int64(len(b))))
		if got := readPiece(t, s, id, 2); !bytes.Equal(got, pieceOf(b, 2)) {
			t.Fatal("last piece differs")
		}
		st, _ := s.Stat(ctx, id)
		if st.ContentLength != int64(len(b)) || !st.Complete {
			t.Fatalf("stat after finish: %+v", st.Meta)
		}
	})

	t.Run("UnknownTask", func(t *testing.T) {
		s, _ := newStore(t)
		id := taskID([]byte("nope"))
		if _, err := s.ReadPiece(ctx, id, 0); !errors.Is(err, errdefs.ErrNotFound) {
			t.Fatalf("ReadPiece: %v", err)
		}
		if _, err := s.WritePiece(ctx, id, 0, bytes.NewReader([]byte("x")), nil); !errors.Is(err, errdefs.ErrNotFound) {
			t.Fatalf("WritePiece: %v", err)
		}
		if _, err := s.Stat(ctx, id); !errors.Is(err, errdefs.ErrNotFound) {
			t.Fatalf("Stat: %v", err)
		}
		if err := s.Delete(ctx, id); err != nil {
			t.Fatalf("Delete of unknown task: %v", err)
		}
	})

	t.Run("DeleteAndList", func(t *testing.T) {
		s, _ := newStore(t)
		var ids []string
		for i := 0; i < 3; i++ {
			b := content(t, 1000)
			id := taskID(b)
			ids = append(ids, id)
			must(t, s.Create(ctx, piece.Meta{TaskID: id, ContentLength: 1000, PieceSize: pieceSize}))
			writeAll(t, s, id, b)
		}
		must(t, s.Delete(ctx, ids[1]))
		l, err := s.List(ctx)
		must(t, err)
		if len(l) != 2 {
			t.Fatalf("List has %d tasks, want 2", len(l))
		}
		for _, st := range l {
			if st.TaskID == ids[1] {
				t.Fatal("deleted task listed")
			}
			if st.Bytes != 1000 {
				t.Fatalf("task bytes = %d, want 1000", st.Bytes)
			}
		}
		if _, err := s.ReadPiece(ctx, ids[1], 0); !errors.Is(err, errdefs.ErrNotFound) {
			t.Fatalf("deleted task readable: %v", err)
		}
	})

	t.Run("ConcurrentWriters", func(t *testing.T) {
		s, _ := newStore(t)
		b := content(t, 8*pieceSize)
		id := taskID(b)
		must(t, s.Create(ctx, piece.Meta{TaskID: id, ContentLength: int64(len(b)), PieceSize: pieceSize}))
		var wg sync.WaitGroup
		for w := 0; w < 4; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				for n := 0; n < 8; n++ {
					p := pieceOf(b, n)
					if w%2 == 1 { // half the writers send garbage
						p = bytes.Repeat([]byte{byte(w)}, len(p))
					}
					s.WritePiece(ctx, id, n, bytes.NewReader(p), sumOf(pieceOf(b, n)))
				}
			}(w)
		}
		wg.Wait()
		for n := 0; n < 8; n++ {
			if !bytes.Equal(readPiece(t, s, id, n), pieceOf(b, n)) {
				t.Fatalf("piece %d corrupted by concurrent writers", n)
			}
		}
		sums, err := s.PieceSums(ctx, id)
		must(t, err)
		for n := 0; n < 8; n++ {
			if !bytes.Equal(sums[n], sumOf(pieceOf(b, n))) {
				t.Fatalf("sum %d wrong", n)
			}
		}
	})

	// A copy that streams slowly (a trickling parent) must not hold back
	// a complete verified copy of the same piece: the second takes the
	// piece over at once; the first then fails with ErrTaken (not stored)
	// and cannot change the stored bytes.
	t.Run("SlowWriterTakenOver", func(t *testing.T) {
		s, _ := newStore(t)
		b := content(t, 2*pieceSize)
		id := taskID(b)
		must(t, s.Create(ctx, piece.Meta{TaskID: id, ContentLength: int64(len(b)), PieceSize: pieceSize}))
		p := pieceOf(b, 0)
		slow := &gatedReader{first: p[:len(p)/2], rest: bytes.Repeat([]byte{7}, len(p)-len(p)/2), release: make(chan struct{}), started: make(chan struct{})}
		slowDone := make(chan error, 1)
		go func() {
			_, err := s.WritePiece(ctx, id, 0, slow, sumOf(p))
			slowDone <- err
		}()
		<-slow.started
		// The complete copy does not wait for the slow one.
		sum, err := s.WritePiece(ctx, id, 0, bytes.NewReader(p), sumOf(p))
		if err != nil || !bytes.Equal(sum, sumOf(p)) {
			t.Fatalf("complete copy: %v", err)
		}
		if !bytes.Equal(readPiece(t, s, id, 0), p) {
			t.Fatal("piece wrong after the takeover")
		}
		close(slow.release)
		if err := <-slowDone; !errors.Is(err, piece.ErrTaken) || !errors.Is(err, context.Canceled) {
			t.Fatalf("overtaken copy: %v, want ErrTaken (a context.Canceled)", err)
		}
		if !bytes.Equal(readPiece(t, s, id, 0), p) {
			t.Fatal("the overtaken copy changed the stored piece")
		}
	})

	// A copy without a digest to check never takes a piece over: it waits.
	t.Run("UnverifiedCopyWaits", func(t *testing.T) {
		s, _ := newStore(t)
		b := content(t, pieceSize)
		id := taskID(b)
		must(t, s.Create(ctx, piece.Meta{TaskID: id, ContentLength: int64(len(b)), PieceSize: pieceSize}))
		slow := &gatedReader{first: b[:10], rest: b[10:], release: make(chan struct{}), started: make(chan struct{})}
		done := make(chan error, 1)
		go func() { _, err := s.WritePiece(ctx, id, 0, slow, sumOf(b)); done <- err }()
		<-slow.started
		other := make(chan error, 1)
		go func() {
			_, err := s.WritePiece(ctx, id, 0, bytes.NewReader(bytes.Repeat([]byte{1}, len(b))), nil)
			other <- err
		}()
		select {
		case err := <-other:
			t.Fatalf("unverified copy did not wait: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
		close(slow.release)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if err := <-other; err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(readPiece(t, s, id, 0), b) {
			t.Fatal("a verified piece was rewritten")
		}
	})

	// Reopen runs only for stores with persistent state (reopen != nil).
	t.Run("Reopen", func(t *testing.T) {
		s, reopen := newStore(t)
		if reopen == nil {
			return
		}
		b := content(t, 3*pieceSize)
		id := taskID(b)
		must(t, s.Create(ctx, piece.Meta{TaskID: id, ContentLength: int64(len(b)), PieceSize: pieceSize}))
		p := pieceOf(b, 1)
		if _, err := s.WritePiece(ctx, id, 1, bytes.NewReader(p), sumOf(p)); err != nil {
			t.Fatal(err)
		}
		s2 := reopen()
		st, err := s2.Stat(ctx, id)
		must(t, err)
		if st.Bitmap.Count() != 1 || !st.Bitmap.Has(1) || st.Complete {
			t.Fatalf("after reopen: bitmap %v complete %v", st.Bitmap, st.Complete)
		}
		if !bytes.Equal(readPiece(t, s2, id, 1), p) {
			t.Fatal("piece differs after reopen")
		}
	})
}

// gatedReader yields first, then blocks until release before yielding
// rest; started is closed on the first read.
type gatedReader struct {
	first, rest []byte
	release     chan struct{}
	started     chan struct{}
	once        sync.Once
}

func (g *gatedReader) Read(b []byte) (int, error) {
	g.once.Do(func() { close(g.started) })
	if len(g.first) > 0 {
		n := copy(b, g.first)
		g.first = g.first[n:]
		return n, nil
	}
	<-g.release
	if len(g.rest) == 0 {
		return 0, io.EOF
	}
	n := copy(b, g.rest)
	g.rest = g.rest[n:]
	return n, nil
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
