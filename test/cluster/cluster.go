// Package cluster runs a whole Pouchfly cluster in one process for tests
// and loopback benchmarks: an origin, a supernode and N peer agents, each
// on its own loopback address (127.0.0.x), all with real listeners.
package cluster

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pouchfly/pouchfly/peer"
	"github.com/pouchfly/pouchfly/piece"
	"github.com/pouchfly/pouchfly/supernode"
	"github.com/pouchfly/pouchfly/test/origin"
)

// Options shape a cluster.
type Options struct {
	// Peers is the number of peer agents.
	Peers int
	// Node adjusts the supernode's config.
	Node func(*supernode.NodeConfig)
	// Peer adjusts peer i's config.
	Peer func(i int, c *peer.Config)
	// Store wraps peer i's store (a malicious peer, a small disk).
	Store func(i int, s piece.Store) piece.Store
	// Logger defaults to discarding everything (POUCHFLY_TEST_LOG=1 logs).
	Logger *slog.Logger
}

// Cluster is a running cluster. Stop everything with Close (tests get it
// through t.Cleanup).
type Cluster struct {
	Origin *origin.Server
	Node   *supernode.Node
	Peers  []*Peer

	dir        string
	log        *slog.Logger
	nodeCfg    supernode.NodeConfig // of the last StartSupernode
	nodeCancel context.CancelFunc
	nodeDone   chan error
}

// Peer is one running agent.
type Peer struct {
	*peer.Peer
	Index  int
	Addr   string // its loopback IP
	cancel context.CancelFunc
	done   chan error
	disk   *piece.DiskStore
}

// Start brings a cluster up; tb's cleanup stops it.
func Start(tb testing.TB, o Options) *Cluster {
	tb.Helper()
	c, err := New(tb.TempDir(), o)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(c.Close)
	return c
}

// New brings a cluster up under dir.
func New(dir string, o Options) (*Cluster, error) {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
		if os.Getenv("POUCHFLY_TEST_LOG") != "" {
			log = slog.New(slog.NewTextHandler(os.Stderr, nil))
		}
	}
	c := &Cluster{Origin: origin.New(), dir: dir, log: log}
	if err := c.Origin.Start("127.0.0.1:0"); err != nil {
		return nil, err
	}
	ncfg := supernode.DefaultNodeConfig()
	ncfg.Listen = "127.0.0.2:0"
	ncfg.PieceListen = "127.0.0.2:0"
	ncfg.HTTPListen = "127.0.0.2:0"
	ncfg.DataDir = filepath.Join(dir, "supernode")
	ncfg.Scheduler.HostTimeout = 10 * time.Second
	if o.Node != nil {
		o.Node(&ncfg)
	}
	if err := c.StartSupernode(ncfg); err != nil {
		c.Close()
		return nil, err
	}
	for i := 0; i < o.Peers; i++ {
		if _, err := c.AddPeer(o, i); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// StartSupernode (re)starts the supernode with cfg.
func (c *Cluster) StartSupernode(cfg supernode.NodeConfig) error {
	n, err := supernode.NewNode(cfg, supernode.NodeOptions{Logger: c.log.With("host", "supernode")})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.Node, c.nodeCancel, c.nodeDone, c.nodeCfg = n, cancel, make(chan error, 1), cfg
	go func() { c.nodeDone <- n.Run(ctx) }()
	return nil
}

// StopSupernode stops the supernode and waits for it.
func (c *Cluster) StopSupernode() {
	if c.nodeCancel != nil {
		c.nodeCancel()
		<-c.nodeDone
		c.nodeCancel = nil
	}
}

func peerDir(root string, i int) string { return filepath.Join(root, fmt.Sprintf("peer%d", i)) }

// AddPeer starts peer number i (its address is 127.0.0.(10+i)).
func (c *Cluster) AddPeer(o Options, i int) (*Peer, error) {
	ip := fmt.Sprintf("127.0.0.%d", 10+i)
	dir := peerDir(c.dir, i)
	cfg := peer.DefaultConfig()
	cfg.HostID = fmt.Sprintf("peer%d", i)
	cfg.DataDir = dir
	cfg.UploadListen = ip + ":0"
	cfg.Supernodes = []string{c.Node.Addr()}
	cfg.SupernodeWait = 2 * time.Second
	cfg.StallTimeout = 20 * time.Second
	if o.Peer != nil {
		o.Peer(i, &cfg)
	}
	disk, err := piece.NewDiskStore(filepath.Join(dir, "store"), nil)
	if err != nil {
		return nil, err
	}
	var store piece.Store = disk
	if o.Store != nil {
		store = o.Store(i, disk)
	}
	p, err := peer.New(cfg, store, peer.Options{Logger: c.log.With("host", cfg.HostID)})
	if err != nil {
		disk.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	cp := &Peer{Peer: p, Index: i, Addr: ip, cancel: cancel, done: make(chan error, 1), disk: disk}
	go func() { cp.done <- p.Run(ctx) }()
	<-p.Started()
	for len(c.Peers) <= i {
		c.Peers = append(c.Peers, nil)
	}
	c.Peers[i] = cp
	return cp, nil
}

// Stop kills the peer (its listeners close, downloads stop) and waits.
func (p *Peer) Stop() {
	if p.cancel != nil {
		p.cancel()
		<-p.done
		p.disk.Close()
		p.cancel = nil
	}
}

// WaitConnected waits until every live peer has a supernode session.
func (c *Cluster) WaitConnected(ctx context.Context) error {
	for _, p := range c.Peers {
		if p == nil || p.cancel == nil {
			continue
		}
		if err := p.WaitConnected(ctx); err != nil {
			return fmt.Errorf("%s: %w", p.HostID(), err)
		}
	}
	return nil
}

// Result is one host's download.
type Result struct {
	Host     string
	Bytes    int64
	Seconds  float64
	Digest   string
	Received map[string]int64
	Err      error
}

// Fetch downloads req on peer p, hashing the content, and reports.
func (p *Peer) Fetch(ctx context.Context, req peer.Request) Result {
	start := time.Now()
	r := Result{Host: p.HostID()}
	s, err := p.Download(ctx, req)
	if err != nil {
		r.Err = err
		return r
	}
	defer s.Close()
	h := newHasher()
	r.Bytes, r.Err = io.CopyBuffer(h, struct{ io.Reader }{s}, make([]byte, 1<<20))
	r.Seconds = time.Since(start).Seconds()
	r.Digest = h.digest()
	r.Received = s.Received()
	return r
}

// FetchAll runs Fetch on every live peer at once.
func (c *Cluster) FetchAll(ctx context.Context, req peer.Request) []Result {
	out := make([]Result, len(c.Peers))
	done := make(chan struct{})
	n := 0
	for i, p := range c.Peers {
		if p == nil || p.cancel == nil {
			continue
		}
		n++
		go func() { out[i] = p.Fetch(ctx, req); done <- struct{}{} }()
	}
	for ; n > 0; n-- {
		<-done
	}
	return out
}

// Close stops every peer, the supernode and the origin.
func (c *Cluster) Close() {
	for _, p := range c.Peers {
		if p != nil {
			p.Stop()
		}
	}
	c.StopSupernode()
	c.Origin.Close()
}
