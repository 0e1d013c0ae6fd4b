package peer

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/piece"
)

// streamFixture is a task whose every piece is stored (and verified
// against its piece digest), with the supernode's seed still to confirm
// the whole digest (TaskInfo.seed_verifying).
func streamFixture(t *testing.T, content []byte, want digest.Digest) (*Peer, *task) {
	t.Helper()
	ctx := context.Background()
	st, err := piece.NewDiskStore(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	id := want.String()
	ps := int32(64 << 10)
	meta := piece.Meta{TaskID: id, ContentLength: int64(len(content)), PieceSize: ps, Digest: id}
	if err := st.Create(ctx, meta); err != nil {
		t.Fatal(err)
	}
	p := &Peer{store: st, log: slog.New(slog.DiscardHandler), reading: map[string]int{}}
	tk := newTask(p, id, Request{Digest: id})
	n := piece.Count(meta.ContentLength, ps)
	for i := 0; i < n; i++ {
		off, size := piece.Range(i, meta.ContentLength, ps)
		if _, err := st.WritePiece(ctx, id, i, bytes.NewReader(content[off:off+size]), nil); err != nil {
			t.Fatal(err)
		}
		tk.have.Set(i)
	}
	tk.meta, tk.metaOK, tk.final = meta, true, true
	tk.seedVerifying = id
	return p, tk
}

func readStream(p *Peer, tk *task) ([]byte, *Stream, error) {
	s := newStream(context.Background(), p, tk, tk.req.Digest)
	defer s.Close()
	b, err := io.ReadAll(s)
	return b, s, err
}

// While the seed is to confirm the digest, a reader does not hash the
// whole content; the seed's confirmation (sums_verified) ends the stream.
func TestStreamDefersWholeHashToSeed(t *testing.T) {
	content := make([]byte, 300<<10)
	rand.NewChaCha8([32]byte{1}).Read(content)
	p, tk := streamFixture(t, content, digest.FromBytes(content))
	go func() {
		time.Sleep(50 * time.Millisecond)
		tk.mu.Lock()
		tk.sumsVerified = true
		tk.notify()
		tk.mu.Unlock()
	}()
	got, s, err := readStream(p, tk)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, content) {
		t.Fatal("content differs")
	}
	if s.how != "deferred" {
		t.Fatalf("stream settled %q, want deferred", s.how)
	}
	if s.rehashed {
		t.Fatal("stream hashed the store although the seed confirmed")
	}
}

// Without the seed's confirmation, the reader hashes the stored content at
// the end: right content ends in EOF, wrong content in a digest mismatch
// (and the copy is dropped); a failed seed ends the stream with its error.
func TestStreamChecksWholeWhenSeedDoesNotConfirm(t *testing.T) {
	defer func(d time.Duration) { confirmWait = d }(confirmWait)
	confirmWait = 100 * time.Millisecond
	content := make([]byte, 200<<10+7)
	rand.NewChaCha8([32]byte{2}).Read(content)
	d := digest.FromBytes(content)

	t.Run("right content", func(t *testing.T) {
		p, tk := streamFixture(t, content, d)
		got, s, err := readStream(p, tk)
		if err != nil || !bytes.Equal(got, content) {
			t.Fatalf("err %v, content equal %v", err, bytes.Equal(got, content))
		}
		if s.how != "deferred" || !s.rehashed {
			t.Fatalf("settled %q, rehashed %v: want the store hashed after deferring", s.how, s.rehashed)
		}
	})
	t.Run("wrong content", func(t *testing.T) {
		bad := bytes.Clone(content)
		bad[len(bad)/2] ^= 1
		p, tk := streamFixture(t, bad, d)
		_, _, err := readStream(p, tk)
		if !errors.Is(err, errdefs.ErrDigestMismatch) {
			t.Fatalf("err %v, want a digest mismatch", err)
		}
		if _, err := p.store.Stat(context.Background(), d.String()); err == nil {
			t.Fatal("the wrong copy was kept")
		}
	})
	t.Run("seed failed", func(t *testing.T) {
		p, tk := streamFixture(t, content, d)
		failed := errors.New("seed failed: origin gone")
		tk.mu.Lock()
		tk.done, tk.err = true, failed
		tk.mu.Unlock()
		_, _, err := readStream(p, tk)
		if !errors.Is(err, failed) {
			t.Fatalf("err %v, want the seed's failure", err)
		}
	})
}
