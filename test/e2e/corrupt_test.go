package e2e

import (
	"context"
	"io"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pouchfly/pouchfly/peer"
	"github.com/pouchfly/pouchfly/piece"
	"github.com/pouchfly/pouchfly/test/cluster"
	"github.com/pouchfly/pouchfly/test/origin"
)

// lyingStore serves pieces with one byte flipped once armed.
type lyingStore struct {
	piece.Store
	armed  atomic.Bool
	served atomic.Int64
}

func (s *lyingStore) ReadPiece(ctx context.Context, task string, n int) (*piece.Reader, error) {
	r, err := s.Store.ReadPiece(ctx, task, n)
	if err != nil || !s.armed.Load() {
		return r, err
	}
	s.served.Add(1)
	return &piece.Reader{R: &flipper{r: r}, Size: r.Size}, nil
}

type flipper struct {
	r    io.Reader
	done bool
}

func (f *flipper) Read(b []byte) (int, error) {
	n, err := f.r.Read(b)
	if n > 0 && !f.done {
		b[n/2] ^= 0x5a
		f.done = true
	}
	return n, err
}

func TestCorruptPeerIsQuarantined(t *testing.T) {
	liar := &lyingStore{}
	c := cluster.Start(t, cluster.Options{
		Peers: 6,
		Store: func(i int, s piece.Store) piece.Store {
			if i == 0 {
				liar.Store = s
				return liar
			}
			return s
		},
	})
	data := origin.Random(32<<20, 11)
	digest := c.Origin.Add("blob", data)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := c.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	req := peer.Request{URL: c.Origin.URL("blob"), Digest: digest}
	// The liar gets the whole blob honestly first, so it is the best parent
	// (a peer holding every piece) for everyone who comes after.
	if r := c.Peers[0].Fetch(ctx, req); r.Err != nil || r.Digest != digest {
		t.Fatalf("liar's own download: %v", r.Err)
	}
	liar.armed.Store(true)
	type out struct {
		i int
		r cluster.Result
	}
	results := make(chan out, 5)
	for i := 1; i < 6; i++ {
		go func() { results <- out{i, c.Peers[i].Fetch(ctx, req)} }()
	}
	for range 5 {
		o := <-results
		if o.r.Err != nil || o.r.Digest != digest {
			t.Errorf("%s: err %v digest %s: a corrupt piece got through", o.r.Host, o.r.Err, o.r.Digest)
		}
	}
	snap := c.Node.Scheduler().Snapshot()
	if !slices.Contains(snap.Quarantined, "peer0") {
		t.Fatalf("liar not quarantined; quarantined = %v", snap.Quarantined)
	}
	var bad int
	for _, h := range snap.Hosts {
		if h.ID == "peer0" {
			bad = h.QuarantinedAfter
		}
	}
	if bad < 1 || bad > 3 {
		t.Errorf("liar quarantined after %d bad pieces, want 1..3", bad)
	}
	t.Logf("liar served %d corrupt pieces (those requested before its quarantine), quarantined after %d", liar.served.Load(), bad)
	// Nobody got it as a parent afterwards: a second wave never asks it.
	before := liar.served.Load()
	data2 := origin.Random(8<<20, 12)
	d2 := c.Origin.Add("blob2", data2)
	c.Peers[0].Fetch(ctx, peer.Request{URL: c.Origin.URL("blob2"), Digest: d2})
	for _, r := range c.FetchAll(ctx, peer.Request{URL: c.Origin.URL("blob2"), Digest: d2}) {
		if r.Err != nil || r.Digest != d2 {
			t.Errorf("second wave %s: %v", r.Host, r.Err)
		}
	}
	if after := liar.served.Load(); after != before {
		t.Errorf("quarantined liar still served %d pieces", after-before)
	}
}
