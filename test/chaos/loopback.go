package chaos

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pouchfly/pouchfly/internal/units"
	"github.com/pouchfly/pouchfly/peer"
	"github.com/pouchfly/pouchfly/piece"
	"github.com/pouchfly/pouchfly/supernode"
	"github.com/pouchfly/pouchfly/supernode/dashboard"
	"github.com/pouchfly/pouchfly/test/cluster"
	"github.com/pouchfly/pouchfly/test/origin"
)

// LoopbackEnv runs the scenarios on test/cluster: a real supernode and
// real agents in this process, each on its own 127.0.0.x address, their
// local APIs on unix sockets. Host caps are the agents' upload and
// download rate limits, the origin's cap its total rate. "Killing" an
// agent or the supernode cancels it (its listeners and connections close
// at once; the data directory stays); the testbed variant uses SIGKILL.
type LoopbackEnv struct {
	// Dir holds every run's data (a test's TempDir).
	Dir string
	// Hosts is MaxHosts.
	Hosts int
	// HostRate caps each agent's upload and download, bytes/s (0: none).
	HostRate int64
	// OriginRate caps the origin over all responses, bytes/s (0: none).
	OriginRate int64
	// Logger receives the cluster's logs (nil: discarded).
	Logger *slog.Logger

	mu      sync.Mutex
	c       *cluster.Cluster
	opts    cluster.Options
	setup   Setup
	evil    map[int]*EvilStore
	apis    map[int]context.CancelFunc
	apiDone map[int]chan struct{}
	mounts  []string
	runDir  string
	egress0 int64 // egress of earlier runs' origins
	runs    int
}

var _ Env = (*LoopbackEnv)(nil)

// Name implements Env.
func (e *LoopbackEnv) Name() string { return "loopback" }

// MaxHosts implements Env.
func (e *LoopbackEnv) MaxHosts() int { return e.Hosts }

// Caps implements Env.
func (e *LoopbackEnv) Caps() (float64, float64) {
	return float64(e.HostRate) * 8 / 1e6, float64(e.OriginRate) * 8 / 1e6
}

// Start implements Env.
func (e *LoopbackEnv) Start(ctx context.Context, s Setup) (err error) {
	if s.Hosts < 1 || s.Hosts > e.Hosts || s.Hosts > 200 {
		return fmt.Errorf("loopback: %d hosts asked, %d available", s.Hosts, e.Hosts)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.c != nil {
		return fmt.Errorf("loopback: already started")
	}
	e.runs++
	e.runDir = filepath.Join(e.Dir, fmt.Sprintf("run%d", e.runs))
	if err := os.MkdirAll(e.runDir, 0o755); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			e.stopLocked()
		}
	}()
	e.setup, e.evil = s, map[int]*EvilStore{}
	e.apis, e.apiDone = map[int]context.CancelFunc{}, map[int]chan struct{}{}
	for h, size := range s.Disk {
		dir := cluster.PeerDirOf(e.runDir, h)
		if err := mountTmpfs(dir, size); err != nil {
			return err
		}
		e.mounts = append(e.mounts, dir)
	}
	var cfgErr error
	e.opts = cluster.Options{
		Peers:  s.Hosts,
		Logger: e.Logger,
		Node: func(c *supernode.NodeConfig) {
			if err := applySets(c, s.Supernode, e.runDir); err != nil && cfgErr == nil {
				cfgErr = fmt.Errorf("supernode config: %w", err)
			}
		},
		Peer: func(i int, c *peer.Config) {
			c.UploadRate, c.DownloadRate = units.Bytes(e.HostRate), units.Bytes(e.HostRate)
			f := struct {
				Peer peer.Config `yaml:"peer"`
			}{*c}
			if err := applySets(&f, s.agentSets(i), e.runDir); err != nil && cfgErr == nil {
				cfgErr = fmt.Errorf("agent config: %w", err)
			}
			*c = f.Peer
		},
		Store: func(i int, st piece.Store) piece.Store {
			if !s.evil(i) {
				return st
			}
			ev := NewEvilStore(st)
			e.evil[i] = ev
			return ev
		},
	}
	c, err := cluster.New(e.runDir, e.opts)
	if err == nil && cfgErr != nil {
		c.Close()
		err = cfgErr
	}
	if err != nil {
		return err
	}
	e.c = c
	rate := e.OriginRate
	if s.OriginRate > 0 {
		rate = s.OriginRate
	}
	c.Origin.SetTotalRate(rate)
	for i := range s.Hosts {
		if err := e.serveAPI(i); err != nil {
			return err
		}
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return c.WaitConnected(wctx)
}

// serveAPI serves host i's local API on its socket.
func (e *LoopbackEnv) serveAPI(i int) error {
	p := e.c.Peers[i]
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.ServeAPI(ctx, e.socket(i))
	}()
	e.apis[i], e.apiDone[i] = cancel, done
	// Wait until it answers.
	c := peer.NewClient(e.socket(i))
	for range 200 {
		pctx, pcancel := context.WithTimeout(ctx, 200*time.Millisecond)
		err := c.Ping(pctx)
		pcancel()
		if err == nil {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("loopback: agent %d's API does not answer", i)
}

func (e *LoopbackEnv) stopAPI(i int) {
	if cancel := e.apis[i]; cancel != nil {
		cancel()
		<-e.apiDone[i]
		delete(e.apis, i)
	}
}

func (e *LoopbackEnv) socket(i int) string {
	return filepath.Join(e.runDir, fmt.Sprintf("api%d.sock", i))
}

// Stop implements Env.
func (e *LoopbackEnv) Stop() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.stopLocked()
}

func (e *LoopbackEnv) stopLocked() {
	for i := range e.apis {
		e.stopAPI(i)
	}
	if e.c != nil {
		e.egress0 += e.c.Origin.Egress()
		e.c.Close()
		e.c = nil
	}
	for _, m := range e.mounts {
		unmount(m)
	}
	e.mounts = nil
	if e.runDir != "" {
		os.RemoveAll(e.runDir)
	}
}

// AddFiles implements Env.
func (e *LoopbackEnv) AddFiles(ctx context.Context, prefix string, count int, size int64, seed uint64) ([]Request, error) {
	c := e.cl()
	if c == nil {
		return nil, errNotStarted
	}
	out := make([]Request, count)
	for k := range count {
		name := fmt.Sprintf("%s%d", prefix, k)
		d := c.Origin.Add(name, content(size, seed+uint64(k)))
		out[k] = Request{URL: c.Origin.URL(name), Digest: d, Size: size, Seed: seed + uint64(k)}
	}
	return out, nil
}

var errNotStarted = errors.New("env not started")

func (e *LoopbackEnv) cl() *cluster.Cluster {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.c
}

// Fetch implements Env.
func (e *LoopbackEnv) Fetch(ctx context.Context, batch map[int][]Request) ([]Fetched, error) {
	start := time.Now()
	var mu sync.Mutex
	var out []Fetched
	var wg sync.WaitGroup
	for h, reqs := range batch {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res := fetchBatch(ctx, e.socket(h), h, reqs, start)
			mu.Lock()
			out = append(out, res...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out, ctx.Err()
}

// Socket implements Env.
func (e *LoopbackEnv) Socket(host int) string { return e.socket(host) }

// HostID implements Env.
func (e *LoopbackEnv) HostID(host int) string { return fmt.Sprintf("peer%d", host) }

// KillAgent implements Env.
func (e *LoopbackEnv) KillAgent(ctx context.Context, host int) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.c == nil || host >= len(e.c.Peers) || !e.c.Peers[host].Running() {
		return fmt.Errorf("loopback: agent %d does not run", host)
	}
	e.stopAPI(host)
	e.c.Peers[host].Stop()
	return nil
}

// RestartAgent implements Env.
func (e *LoopbackEnv) RestartAgent(ctx context.Context, host int) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.c == nil || e.c.Peers[host].Running() {
		return fmt.Errorf("loopback: agent %d runs", host)
	}
	p, err := e.c.AddPeer(e.opts, host)
	if err != nil {
		return err
	}
	if err := e.serveAPI(host); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return p.WaitConnected(wctx)
}

// AgentAlive implements Env.
func (e *LoopbackEnv) AgentAlive(host int) bool {
	c := e.cl()
	return c != nil && host < len(c.Peers) && c.Peers[host].Running()
}

// KillSupernode implements Env.
func (e *LoopbackEnv) KillSupernode(ctx context.Context) error {
	c := e.cl()
	if c == nil || !c.SupernodeRunning() {
		return fmt.Errorf("loopback: supernode does not run")
	}
	c.StopSupernode()
	return nil
}

// RestartSupernode implements Env.
func (e *LoopbackEnv) RestartSupernode(ctx context.Context) error {
	c := e.cl()
	if c == nil {
		return errNotStarted
	}
	return c.RestartSupernode()
}

// SupernodeMetrics implements Env.
func (e *LoopbackEnv) SupernodeMetrics(ctx context.Context) (Metrics, error) {
	c := e.cl()
	if c == nil {
		return nil, errNotStarted
	}
	return Scrape(ctx, scrapeClient, "http://"+c.Node.HTTPAddr()+"/metrics")
}

// SupernodeState implements Env.
func (e *LoopbackEnv) SupernodeState(ctx context.Context) (dashboard.State, error) {
	c := e.cl()
	if c == nil {
		return dashboard.State{}, errNotStarted
	}
	return getState(ctx, scrapeClient, "http://"+c.Node.HTTPAddr())
}

// AgentMetrics implements Env.
func (e *LoopbackEnv) AgentMetrics(ctx context.Context, host int) (Metrics, error) {
	c := e.cl()
	if c == nil {
		return nil, errNotStarted
	}
	reg := prometheus.NewRegistry()
	if err := reg.Register(collectorsOf(c.Peers[host].Collectors())); err != nil {
		return nil, err
	}
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(reg, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	return ParseMetrics(rec.Body)
}

// collectors bundles several collectors into one.
type collectors []prometheus.Collector

func collectorsOf(cs []prometheus.Collector) prometheus.Collector { return collectors(cs) }

func (cs collectors) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range cs {
		c.Describe(ch)
	}
}

func (cs collectors) Collect(ch chan<- prometheus.Metric) {
	for _, c := range cs {
		c.Collect(ch)
	}
}

// OriginEgress implements Env.
func (e *LoopbackEnv) OriginEgress(ctx context.Context) (int64, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := e.egress0
	if e.c != nil {
		n += e.c.Origin.Egress()
	}
	return n, nil
}

// SetOriginFault implements Env.
func (e *LoopbackEnv) SetOriginFault(ctx context.Context, f origin.Fault) error {
	c := e.cl()
	if c == nil {
		return errNotStarted
	}
	return c.Origin.SetFault(f)
}

// OriginLog implements Env.
func (e *LoopbackEnv) OriginLog(ctx context.Context) ([]origin.Record, error) {
	c := e.cl()
	if c == nil {
		return nil, errNotStarted
	}
	return c.Origin.Log(), nil
}

// ArmEvil implements Env.
func (e *LoopbackEnv) ArmEvil(ctx context.Context, host int, modes ...string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	ev := e.evil[host]
	if ev == nil {
		return fmt.Errorf("loopback: host %d is not malicious", host)
	}
	return ev.Arm(modes...)
}

// EvilStats implements Env.
func (e *LoopbackEnv) EvilStats(ctx context.Context, host int) (EvilStats, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	ev := e.evil[host]
	if ev == nil {
		return EvilStats{}, fmt.Errorf("loopback: host %d is not malicious", host)
	}
	return ev.Stats(), nil
}

// scrapeClient keeps no idle connections (no goroutine outlives a run).
var scrapeClient = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
