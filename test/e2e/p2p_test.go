// Package e2e runs whole clusters in one process on loopback and checks
// the promises: every host gets the right bytes, the origin sends each blob
// about once, and most bytes move between peers.
package e2e

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/peer"
	"github.com/pouchfly/pouchfly/test/cluster"
	"github.com/pouchfly/pouchfly/test/origin"
)

const blobSize = 64 << 20

func TestEightPeersShareOneOriginCopy(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Peers: 8})
	data := origin.Random(blobSize, 42)
	digest := c.Origin.Add("blob", data)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := c.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	res := c.FetchAll(ctx, peer.Request{URL: c.Origin.URL("blob"), Digest: digest})
	var fromPeers, fromCDN, fromOrigin int64
	for _, r := range res {
		if r.Err != nil {
			t.Fatalf("%s: %v", r.Host, r.Err)
		}
		if r.Digest != digest || r.Bytes != blobSize {
			t.Fatalf("%s: got %d bytes %s, want %s", r.Host, r.Bytes, r.Digest, digest)
		}
		fromPeers += r.Received["peer"]
		fromCDN += r.Received["cdn"]
		fromOrigin += r.Received["origin"]
	}
	t.Logf("origin egress %d (%.2fx), cdn egress %d, peer bytes %d, cdn bytes %d, peers' origin bytes %d",
		c.Origin.Egress(), float64(c.Origin.Egress())/blobSize, c.Node.CDNEgress(), fromPeers, fromCDN, fromOrigin)
	if eg := c.Origin.Egress(); float64(eg) > 1.05*blobSize {
		t.Errorf("origin sent %d bytes, more than 1.05 × %d", eg, blobSize)
	}
	total := fromPeers + fromCDN + fromOrigin
	if total < 8*blobSize {
		t.Errorf("peers account for %d bytes received, want ≥ %d", total, 8*blobSize)
	}
	if fromPeers*2 < total {
		t.Errorf("only %d of %d bytes came from peers; want at least half", fromPeers, total)
	}
	// The supernode counts every piece it sent, the peers only those they
	// kept (an endgame duplicate is dropped), so served ≥ kept.
	if cdn := c.Node.CDNEgress(); cdn < fromCDN {
		t.Errorf("supernode counted %d CDN bytes served, fewer than the %d peers kept", cdn, fromCDN)
	}
}

func TestPeersKilledMidTransfer(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Peers: 8, Peer: func(i int, cfg *peer.Config) {
		cfg.DownloadRate = 24 << 20 // stretch the transfer so the kill lands mid-way
	}})
	data := origin.Random(blobSize, 7)
	digest := c.Origin.Add("blob", data)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := c.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	type out struct {
		i int
		r cluster.Result
	}
	results := make(chan out, 8)
	for i, p := range c.Peers {
		go func() { results <- out{i, p.Fetch(ctx, peer.Request{URL: c.Origin.URL("blob"), Digest: digest})} }()
	}
	// Kill two peers once they hold some pieces.
	killed := map[int]bool{2: true, 5: true}
	deadline := time.Now().Add(30 * time.Second)
	for i := range killed {
		for time.Now().Before(deadline) {
			ts, _ := c.Peers[i].Tasks(ctx)
			if len(ts) == 1 && ts[0].Have >= 4 {
				if ts[0].Have == ts[0].Pieces {
					t.Fatalf("peer %d finished before it could be killed; slow the test down", i)
				}
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		c.Peers[i].Stop()
	}
	for range 8 {
		o := <-results
		if killed[o.i] {
			continue
		}
		if o.r.Err != nil || o.r.Digest != digest {
			t.Errorf("survivor %s: err %v digest %s", o.r.Host, o.r.Err, o.r.Digest)
		}
	}
	if eg := c.Origin.Egress(); float64(eg) > 1.05*blobSize {
		t.Errorf("origin sent %d bytes, more than 1.05 × %d", eg, blobSize)
	}
}

func TestSupernodeStoppedMidTransfer(t *testing.T) {
	for _, tc := range []struct {
		name       string
		backSource bool
	}{{"back-to-source", true}, {"no-back-source", false}} {
		t.Run(tc.name, func(t *testing.T) {
			c := cluster.Start(t, cluster.Options{Peers: 3, Peer: func(i int, cfg *peer.Config) {
				cfg.BackSource = tc.backSource
				cfg.SupernodeWait = 500 * time.Millisecond
				cfg.StallTimeout = 5 * time.Second
			}})
			// A slow origin keeps the CDN seeding when the supernode stops.
			c.Origin.Rate = 16 << 20
			data := origin.Random(blobSize, 9)
			digest := c.Origin.Add("blob", data)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			if err := c.WaitConnected(ctx); err != nil {
				t.Fatal(err)
			}
			done := make(chan []cluster.Result, 1)
			go func() { done <- c.FetchAll(ctx, peer.Request{URL: c.Origin.URL("blob"), Digest: digest}) }()
			for c.Node.CDNEgress() < 4<<20 && ctx.Err() == nil {
				time.Sleep(10 * time.Millisecond)
			}
			c.StopSupernode()
			res := <-done
			for _, r := range res {
				if tc.backSource {
					if r.Err != nil || r.Digest != digest {
						t.Errorf("%s: err %v digest %s, want the content via back-to-source", r.Host, r.Err, r.Digest)
					}
					if r.Received["origin"] == 0 {
						t.Errorf("%s: no bytes from the origin: back-to-source did not happen", r.Host)
					}
				} else if !errors.Is(r.Err, errdefs.ErrUnavailable) {
					t.Errorf("%s: err = %v, want a clear 'unavailable' failure", r.Host, r.Err)
				}
			}
		})
	}
}
