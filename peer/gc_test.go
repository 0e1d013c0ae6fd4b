package peer_test

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/pouchfly/pouchfly/peer"
	"github.com/pouchfly/pouchfly/supernode"
	"github.com/pouchfly/pouchfly/test/cluster"
	"github.com/pouchfly/pouchfly/test/origin"
)

func TestGCKeepsStoreUnderLimitAndSparesReaders(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Peers: 1, Peer: func(i int, cfg *peer.Config) {
		cfg.DiskLimit = 10 << 20
		cfg.GCInterval = time.Hour // the test calls GC itself
	}})
	p := c.Peers[0]
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	var digests []string
	for i := range 4 {
		name := origin.Itoa(i)
		d := c.Origin.Add(name, origin.Random(4<<20, uint64(100+i)))
		digests = append(digests, d)
		if r := p.Fetch(ctx, peer.Request{URL: c.Origin.URL(name), Digest: d}); r.Err != nil {
			t.Fatal(r.Err)
		}
		time.Sleep(10 * time.Millisecond) // distinct access times
	}
	// Hold a reader open on the oldest task: GC must spare it.
	s, err := p.Download(ctx, peer.Request{URL: c.Origin.URL("0"), Digest: digests[0]})
	if err != nil {
		t.Fatal(err)
	}
	p.GC(ctx)
	ts, err := p.Tasks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	var used int64
	for _, ti := range ts {
		have[ti.ID] = true
		used += ti.ContentLength
	}
	if !have[digests[0]] {
		t.Fatal("GC removed a task with an open reader")
	}
	if have[digests[1]] {
		t.Fatal("GC kept the least recently used idle task")
	}
	if !have[digests[3]] {
		t.Fatal("GC removed the newest task")
	}
	if used > 12<<20 {
		t.Fatalf("store holds %d bytes after GC, limit 10MiB (+ the task being read)", used)
	}
	b, err := io.ReadAll(s)
	s.Close()
	if err != nil || len(b) != 4<<20 {
		t.Fatalf("reader after GC: %d bytes, %v", len(b), err)
	}
}

// An idle agent keeps its session: heartbeats reach the supernode before
// its host timeout.
func TestHeartbeatsKeepIdleHostsConnected(t *testing.T) {
	c := cluster.Start(t, cluster.Options{
		Peers: 1,
		Node:  func(cfg *supernode.NodeConfig) { cfg.Scheduler.HostTimeout = time.Second },
		Peer:  func(i int, cfg *peer.Config) { cfg.HeartbeatInterval = 200 * time.Millisecond },
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second) // three host timeouts, nothing else to say
	if n := c.Peers[0].Sessions(); n != 1 {
		t.Fatalf("agent opened %d sessions in 3 idle seconds; the supernode dropped it", n)
	}
}
