package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"sort"
	"strings"
	"time"

	"github.com/pouchfly/pouchfly/peer"
	"github.com/pouchfly/pouchfly/piece"
	"github.com/pouchfly/pouchfly/supernode"
	"github.com/pouchfly/pouchfly/test/cluster"
)

// p2pRun is one measured peer-to-peer download.
type p2pRun struct {
	Run                    int     `json:"run"`
	Consumer               string  `json:"consumer"`
	Bytes                  int64   `json:"bytes"`
	Seconds                float64 `json:"seconds"`
	FirstByteSeconds       float64 `json:"first_byte_seconds"`
	PiecesDoneSeconds      float64 `json:"pieces_done_seconds"`   // every piece stored and verified
	BackgroundCores        float64 `json:"background_busy_cores"` // other load, sampled just before
	BytesPerSec            float64 `json:"bytes_per_sec"`
	MachineCPUSeconds      float64 `json:"machine_cpu_seconds"`
	MachineCPUUtil         float64 `json:"machine_cpu_util"` // busy cores, 0..nproc
	ProcessCPUSeconds      float64 `json:"process_cpu_seconds"`
	CPUSecondsPerGB        float64 `json:"cpu_seconds_per_gb"`
	ProcessCPUSecondsPerGB float64 `json:"process_cpu_seconds_per_gb"`
	// MachineLessBackground estimates the run's own machine CPU: machine
	// busy time less the other load measured just before the run.
	MachineLessBackground      float64          `json:"machine_cpu_seconds_less_background"`
	MachineLessBackgroundPerGB float64          `json:"cpu_seconds_per_gb_less_background"`
	Received                   map[string]int64 `json:"received"`
	CDNEgressBytes             int64            `json:"cdn_egress_bytes"`
	DigestOK                   bool             `json:"digest_ok"`
	Err                        string           `json:"error,omitempty"`
}

// p2pResult is the whole throughput scenario.
type p2pResult struct {
	SeedSeconds     float64          `json:"seed_seconds"`
	SeedReceived    map[string]int64 `json:"seed_received"`
	OriginEgress    int64            `json:"origin_egress_bytes"`
	CDNDuringP2P    bool             `json:"cdn_during_p2p"`
	Runs            []p2pRun         `json:"runs"`
	Warmup          []p2pRun         `json:"warmup_runs,omitempty"` // not in the statistics
	HarnessFetch    *p2pRun          `json:"harness_fetch,omitempty"`
	NoDigest        *p2pRun          `json:"no_digest_ablation,omitempty"`
	NoDigestProfile *profileResult   `json:"no_digest_profile,omitempty"`
	Profile         *profileResult   `json:"profile,omitempty"`
	PieceSize       int32            `json:"piece_size"`
}

type p2pOptions struct {
	dir       string
	data      []byte
	runs      int
	warmup    int  // downloads before the measured ones, reported apart
	cdnOn     bool // keep the CDN in the swarm while peer 1 downloads
	harness   bool // one extra run through cluster.Peer.Fetch
	ablation  bool // one extra run of a task requested without digest
	profile   string
	forceProf bool
	targetBps float64
	timeout   time.Duration
	quietWait time.Duration
}

// runP2P seeds peer 0 through the supernode's CDN, then has a fresh peer
// download the task from it `runs` times, each on its own loopback address.
func runP2P(ctx context.Context, o p2pOptions) (*p2pResult, error) {
	res := &p2pResult{CDNDuringP2P: o.cdnOn}
	copts := cluster.Options{
		Peers: 1,
		Node:  func(c *supernode.NodeConfig) { c.CDNEnabled = true },
		Peer: func(i int, c *peer.Config) {
			c.StallTimeout = 60 * time.Second
			c.SupernodeWait = 10 * time.Second
			c.BackSource = false // bytes must come from the swarm
		},
	}
	c, err := cluster.New(o.dir, copts)
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	defer c.Close()
	digest := c.Origin.Add("blob", o.data)
	req := peer.Request{URL: c.Origin.URL("blob"), Digest: digest, NoBackSource: true}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = c.WaitConnected(wctx)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("peers never connected: %w", err)
	}

	// Seed: peer 0 takes the whole task from the CDN (which fetches the
	// origin once).
	sctx, cancel := context.WithTimeout(ctx, o.timeout)
	seed := c.Peers[0].Fetch(sctx, req)
	cancel()
	if seed.Err != nil || seed.Digest != digest {
		return nil, fmt.Errorf("seed download: err %v digest %s want %s", seed.Err, seed.Digest, digest)
	}
	res.SeedSeconds, res.SeedReceived = seed.Seconds, seed.Received
	if st, err := c.Peers[0].Store().Stat(ctx, digest); err != nil || !st.Complete {
		return nil, fmt.Errorf("peer 0 does not hold the whole task after its download (err %v)", err)
	} else {
		res.PieceSize = st.PieceSize
	}
	// The ablation task: the same content requested without its digest, so
	// the stream skips the whole-content SHA-256 (pieces are still
	// verified against the seeder's sums).
	reqND := peer.Request{URL: c.Origin.URL("blob") + "?ablation=no-digest", NoBackSource: true}
	taskND, _ := piece.TaskID(reqND.URL, "", peer.DefaultConfig().FilterQuery, "")
	if o.ablation {
		sctx, cancel := context.WithTimeout(ctx, o.timeout)
		seed := c.Peers[0].Fetch(sctx, reqND)
		cancel()
		if seed.Err != nil || seed.Digest != digest {
			return nil, fmt.Errorf("seed download (no digest): err %v digest %s want %s", seed.Err, seed.Digest, digest)
		}
	}
	res.OriginEgress = c.Origin.Egress()

	if !o.cdnOn {
		// Restart the supernode without its CDN, on the same gRPC address:
		// peer 0 offers the task it holds in its Hello, so it is the only
		// possible parent.
		cfg := supernode.DefaultNodeConfig()
		cfg.Listen = c.Node.Addr()
		cfg.PieceListen = "127.0.0.2:0"
		cfg.HTTPListen = "127.0.0.2:0"
		cfg.DataDir = filepath.Join(o.dir, "supernode")
		cfg.Scheduler.HostTimeout = 10 * time.Second
		cfg.CDNEnabled = false
		c.StopSupernode()
		if err := c.StartSupernode(cfg); err != nil {
			return nil, fmt.Errorf("restart supernode without CDN: %w", err)
		}
		// Peer 0's session reconnects with backoff; wait for it.
		if err := waitHeld(ctx, c, digest); err != nil {
			return nil, err
		}
	}

	next := 1
	measure := func(consumer string, prof string, req peer.Request, task string) p2pRun {
		i := next
		next++
		r := p2pRun{Run: i, Consumer: consumer}
		p, err := c.AddPeer(copts, i)
		if err != nil {
			r.Err = err.Error()
			return r
		}
		defer func() {
			p.Stop()
			os.RemoveAll(filepath.Join(o.dir, fmt.Sprintf("peer%d", i)))
		}()
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err = p.WaitConnected(wctx)
		cancel()
		if err != nil {
			r.Err = "never connected: " + err.Error()
			return r
		}
		syncFS(o.dir)
		runtime.GC()
		r.BackgroundCores = waitQuiet(ctx, o.quietWait)
		dctx, cancel := context.WithTimeout(ctx, o.timeout)
		defer cancel()
		cdn0 := c.Node.CDNEgress()
		if prof != "" {
			f, err := os.Create(prof)
			if err == nil {
				pprof.StartCPUProfile(f)
				defer func() { pprof.StopCPUProfile(); f.Close() }()
			}
		}
		cpu0, self0, t0 := readCPUStat(), selfCPU(), time.Now()
		// Note when the store holds every piece, to tell the download from
		// the in-order consumption that may trail it.
		watchDone := make(chan struct{})
		watchRes := make(chan float64, 1)
		go func() {
			tk := time.NewTicker(5 * time.Millisecond)
			defer tk.Stop()
			for {
				if st, err := p.Store().Stat(dctx, task); err == nil && st.Meta.ContentLength > 0 && st.Bitmap.Full(st.Count()) {
					watchRes <- time.Since(t0).Seconds()
					return
				}
				select {
				case <-tk.C:
				case <-watchDone:
					watchRes <- 0
					return
				}
			}
		}()
		switch consumer {
		case "fetch":
			fr := p.Fetch(dctx, req) // no first-byte time through Fetch
			r.Bytes, r.Received, r.DigestOK = fr.Bytes, fr.Received, fr.Err == nil && fr.Digest == digest
			if fr.Err != nil {
				r.Err = fr.Err.Error()
			}
		default:
			s, err := p.Download(dctx, req)
			if err != nil {
				r.Err = err.Error()
				return r
			}
			// The stream checks the whole-content digest itself and
			// returns an error instead of EOF on a mismatch.
			fb := &firstByte{r: s, t0: t0}
			var dst io.Writer = io.Discard
			cmp := &sampleCompare{want: o.data}
			if req.Digest == "" {
				dst = cmp // no digest for the stream to check: compare bytes
			}
			n, err := io.CopyBuffer(dst, fb, make([]byte, 1<<20))
			r.FirstByteSeconds = fb.sec
			r.Bytes, r.Received = n, s.Received()
			r.DigestOK = err == nil && n == int64(len(o.data)) && !cmp.bad
			if err != nil {
				r.Err = err.Error()
			}
			s.Close()
		}
		r.Seconds = time.Since(t0).Seconds()
		cpu1, self1 := readCPUStat(), selfCPU()
		close(watchDone)
		r.PiecesDoneSeconds = <-watchRes
		r.MachineCPUSeconds, r.MachineCPUUtil = cpu1.sub(cpu0)
		r.ProcessCPUSeconds = self1 - self0
		r.CDNEgressBytes = c.Node.CDNEgress() - cdn0
		if r.Seconds > 0 {
			r.BytesPerSec = float64(r.Bytes) / r.Seconds
		}
		r.MachineLessBackground = max(0, r.MachineCPUSeconds-r.BackgroundCores*r.Seconds)
		if r.Bytes > 0 {
			r.CPUSecondsPerGB = r.MachineCPUSeconds / (float64(r.Bytes) / 1e9)
			r.MachineLessBackgroundPerGB = r.MachineLessBackground / (float64(r.Bytes) / 1e9)
			r.ProcessCPUSecondsPerGB = r.ProcessCPUSeconds / (float64(r.Bytes) / 1e9)
		}
		return r
	}
	for range o.warmup {
		if ctx.Err() != nil {
			break
		}
		r := measure("discard", "", req, digest)
		logf("p2p warm-up run %d: %s in %.2fs = %.2f GB/s, cpu %.2fs machine (%.2f s/GB), received %v %s",
			r.Run, fmtBytes(r.Bytes), r.Seconds, r.BytesPerSec/1e9, r.MachineCPUSeconds, r.CPUSecondsPerGB, r.Received, r.Err)
		res.Warmup = append(res.Warmup, r)
	}
	for range o.runs {
		if ctx.Err() != nil {
			break
		}
		r := measure("discard", "", req, digest)
		logf("p2p run %d: %s in %.2fs = %.2f GB/s, cpu %.2fs machine (%.2f s/GB), received %v %s",
			r.Run, fmtBytes(r.Bytes), r.Seconds, r.BytesPerSec/1e9, r.MachineCPUSeconds, r.CPUSecondsPerGB, r.Received, r.Err)
		res.Runs = append(res.Runs, r)
	}
	if o.harness && ctx.Err() == nil {
		r := measure("fetch", "", req, digest)
		logf("p2p via cluster.Fetch (sha256 in the consumer): %.2f GB/s %s", r.BytesPerSec/1e9, r.Err)
		res.HarnessFetch = &r
	}
	best, _ := bestMedian(res.Runs)
	profiling := (best < o.targetBps || o.forceProf) && o.profile != ""
	if o.ablation && ctx.Err() == nil {
		prof := ""
		if profiling {
			ext := filepath.Ext(o.profile)
			prof = strings.TrimSuffix(o.profile, ext) + "-no-digest" + ext
		}
		r := measure("discard-no-digest", prof, reqND, taskND)
		logf("p2p without the whole-content digest check: %.2f GB/s, %.2f s/GB process %s", r.BytesPerSec/1e9, r.ProcessCPUSecondsPerGB, r.Err)
		res.NoDigest = &r
		if prof != "" {
			res.NoDigestProfile = &profileResult{File: prof, Run: r}
		}
	}
	if profiling && ctx.Err() == nil {
		r := measure("discard", o.profile, req, digest)
		logf("profiled run: %.2f GB/s (profile %s)", r.BytesPerSec/1e9, o.profile)
		res.Profile = &profileResult{File: o.profile, Run: r}
	}
	return res, nil
}

// waitHeld waits until the (restarted) supernode knows peer 0 holds the
// whole task.
func waitHeld(ctx context.Context, c *cluster.Cluster, task string) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		for _, t := range c.Node.Scheduler().Snapshot().Tasks {
			if t.ID != task {
				continue
			}
			for _, p := range t.Peers {
				if p.HostID == c.Peers[0].HostID() && p.Done && p.Pieces == t.PieceCount {
					return nil
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("the restarted supernode never learned that peer 0 holds the task")
}

// bestMedian returns the best and median throughput of successful runs.
func bestMedian(runs []p2pRun) (best, median float64) {
	var v []float64
	for _, r := range runs {
		if r.Err == "" && r.DigestOK {
			v = append(v, r.BytesPerSec)
		}
	}
	if len(v) == 0 {
		return 0, 0
	}
	sort.Float64s(v)
	best = v[len(v)-1]
	if len(v)%2 == 1 {
		median = v[len(v)/2]
	} else {
		median = (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return best, median
}

// firstByte notes when the first byte arrived.
type firstByte struct {
	r   io.Reader
	t0  time.Time
	sec float64
}

func (f *firstByte) Read(b []byte) (int, error) {
	n, err := f.r.Read(b)
	if n > 0 && f.sec == 0 {
		f.sec = time.Since(f.t0).Seconds()
	}
	return n, err
}

// sampleCompare checks 64 bytes of every MiB written against want: a cheap
// check (the pieces themselves are SHA-256 verified by the peer). It is
// sparse on purpose: on this VM, touching memory idle for a few seconds
// costs microseconds per page, so a full memcmp against the (cold) origin
// copy would cost the consumer a tenth of a second per GiB.
type sampleCompare struct {
	want []byte
	off  int
	bad  bool
}

func (c *sampleCompare) Write(b []byte) (int, error) {
	if c.off+len(b) > len(c.want) {
		c.bad = true
	} else {
		const step = 1 << 20
		for i := (step - c.off%step) % step; i < len(b); i += step {
			e := min(i+64, len(b))
			if !bytes.Equal(b[i:e], c.want[c.off+i:c.off+e]) {
				c.bad = true
			}
		}
	}
	c.off += len(b)
	return len(b), nil
}
