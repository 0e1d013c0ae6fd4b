package e2e

import (
	"context"
	"errors"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/peer"
	"github.com/pouchfly/pouchfly/piece"
	"github.com/pouchfly/pouchfly/test/cluster"
	"github.com/pouchfly/pouchfly/test/origin"
)

// truncatingStore serves every piece cut short: its upload server sends a
// Content-Length it then fails to honour, as a parent that dies mid-piece.
type truncatingStore struct {
	piece.Store
	armed atomic.Bool
	cut   atomic.Int64
}

func (s *truncatingStore) ReadPiece(ctx context.Context, task string, n int) (*piece.Reader, error) {
	r, err := s.Store.ReadPiece(ctx, task, n)
	if err != nil || !s.armed.Load() {
		return r, err
	}
	s.cut.Add(1)
	return &piece.Reader{R: io.MultiReader(io.LimitReader(r, r.Size/2), errReader{}), Size: r.Size}, nil
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("parent went away") }

func TestParentDisconnectsMidPiece(t *testing.T) {
	cutter := &truncatingStore{}
	c := cluster.Start(t, cluster.Options{Peers: 4, Store: func(i int, s piece.Store) piece.Store {
		if i == 0 {
			cutter.Store = s
			return cutter
		}
		return s
	}})
	data := origin.Random(16<<20, 21)
	digest := c.Origin.Add("blob", data)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	req := peer.Request{URL: c.Origin.URL("blob"), Digest: digest}
	if r := c.Peers[0].Fetch(ctx, req); r.Err != nil {
		t.Fatal(r.Err)
	}
	cutter.armed.Store(true)
	for i := 1; i < 4; i++ {
		if r := c.Peers[i].Fetch(ctx, req); r.Err != nil || r.Digest != digest {
			t.Errorf("%s: %v %s", r.Host, r.Err, r.Digest)
		}
	}
	if cutter.cut.Load() == 0 {
		t.Fatal("the dying parent was never asked: the test proved nothing")
	}
	t.Logf("%d pieces cut mid-way, all downloads correct", cutter.cut.Load())
}

func TestDiskFullFailsClearly(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Peers: 1, Store: func(i int, s piece.Store) piece.Store {
		return piece.NewMemoryStore(3<<20, nil) // room for 3 of 8 pieces
	}})
	data := origin.Random(8<<20, 22)
	digest := c.Origin.Add("blob", data)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	r := c.Peers[0].Fetch(ctx, peer.Request{URL: c.Origin.URL("blob"), Digest: digest})
	if !errors.Is(r.Err, errdefs.ErrNoSpace) {
		t.Fatalf("err = %v, want ErrNoSpace", r.Err)
	}
	// The agent keeps working: a small file still downloads.
	small := origin.Random(100<<10, 23)
	d2 := c.Origin.Add("small", small)
	if err := c.Peers[0].Store().Delete(ctx, digest); err != nil {
		t.Fatal(err)
	}
	if r := c.Peers[0].Fetch(ctx, peer.Request{URL: c.Origin.URL("small"), Digest: d2}); r.Err != nil || r.Digest != d2 {
		t.Fatalf("after disk full: %v", r.Err)
	}
}
