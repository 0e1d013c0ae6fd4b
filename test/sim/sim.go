package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"time"

	dto "github.com/prometheus/client_model/go"

	schedulerv1 "github.com/pouchfly/pouchfly/api/scheduler/v1"
	"github.com/pouchfly/pouchfly/internal/clock"
	"github.com/pouchfly/pouchfly/internal/tasktoken"
	"github.com/pouchfly/pouchfly/peer"
	"github.com/pouchfly/pouchfly/piece"
	"github.com/pouchfly/pouchfly/scheduler"
)

// Config is one simulation run.
type Config struct {
	// Hosts is the number of downloading hosts.
	Hosts int
	// Size is the blob size in bytes.
	Size int64
	// HostCap is each host's upload and download cap, bytes/s.
	HostCap float64
	// OriginCap is the origin's upload cap, bytes/s.
	OriginCap float64
	// SupernodeCap is the supernode's (CDN's) upload and download cap,
	// bytes/s (0: unlimited).
	SupernodeCap float64
	// RTT is the round-trip time between any two hosts (and to the
	// supernode and origin).
	RTT time.Duration
	// StartSpread: host i starts its download at a uniform random time in
	// [0, StartSpread) (0: all at once).
	StartSpread time.Duration
	// MaxTime bounds the simulated time; hosts not done by then failed.
	MaxTime time.Duration
	// MaxWall bounds the real time of the run (0: none); a run cut short
	// says so in Result.Aborted.
	MaxWall time.Duration
	// Burst, if positive, gives each host's caps a token bucket of Burst ×
	// cap bytes, full at the start (the agents' rate limiters: 1 s), during
	// which the host runs at line rate.
	Burst time.Duration
	// Model is the fluid model: ModelMaxMin or ModelShare.
	Model string
	// Seed seeds the hosts' random choices.
	Seed uint64
	// MeasuredCost makes scheduler calls take, in simulated time, the
	// real time they took (one server: the scheduler's mutex); otherwise
	// the scheduler is infinitely fast.
	MeasuredCost bool

	// Peer agent settings (peer.DefaultConfig's unless set).
	MaxParallelPieces, PerParentPieces, CDNParallelPieces, MaxUploads int
	// CDNMaxUploads is the supernode's upload_max_concurrent.
	CDNMaxUploads int
	// RetryAfter503 is how long the agent rests a parent that answered
	// 503 (today's agent: 1 s, neither reported nor counted as a failure).
	// 0 models the agent before that change: a 503 was a network failure,
	// three of which dropped the parent and asked for new parents at once.
	RetryAfter503 time.Duration
	// Scheduler is the scheduler's configuration.
	Scheduler scheduler.Config
}

// DefaultConfig returns the defaults of the agent, supernode and scheduler.
func DefaultConfig() Config {
	pc := peer.DefaultConfig()
	return Config{
		Hosts: 8, Size: 64 << 20,
		HostCap: 50 * 125000, OriginCap: 200 * 125000, SupernodeCap: 200 * 125000,
		RTT: time.Millisecond, Seed: 1, Model: ModelMaxMin,
		MaxParallelPieces: pc.MaxParallelPieces, PerParentPieces: pc.PerParentPieces,
		CDNParallelPieces: pc.CDNParallelPieces, MaxUploads: pc.MaxUploads,
		CDNMaxUploads: 256, // supernode.DefaultNodeConfig().UploadMaxConcurrent
		RetryAfter503: time.Second,
		Scheduler:     scheduler.DefaultConfig(),
	}
}

// Sim is one run's state.
type Sim struct {
	cfg    Config
	q      eventQueue
	now    int64
	clk    *clock.Fake
	sched  *scheduler.Scheduler
	net    network
	hosts  []*host
	byID   map[string]int32
	nodeID map[string]int32
	out    []outPkt

	oneWay, rtt, reportIv int64
	taskID, url           string
	sums                  [][]byte
	pieceSize             int32
	count                 int
	cdnNode, originNode   int32
	originNext            int

	busyUntil int64
	waiting   []*schedCall

	childScratch []int
	candScratch  []cand
	orderScratch []int
	stats        stats
	trace        io.Writer
	timeline     io.Writer
	// capViolation, when checkCaps is set, records the first instant a
	// node's flowing transfers exceeded its cap (tests).
	checkCaps    bool
	capViolation string
}

// verifyCaps checks that no node sends or receives faster than its cap.
func (s *Sim) verifyCaps() {
	for i := range s.net.nodes {
		nd := &s.net.nodes[i]
		var u, d float64
		for _, x := range nd.ups {
			u += x.rate
		}
		for _, x := range nd.downs {
			d += x.rate
		}
		if u > nd.up*(1+1e-9) || d > nd.down*(1+1e-9) {
			s.capViolation = fmt.Sprintf("t=%.3fs node %d: up %.0f/%.0f down %.0f/%.0f B/s", float64(s.now)/1e9, i, u, nd.up, d, nd.down)
			s.checkCaps = false
			return
		}
	}
}

func (s *Sim) tracef(format string, args ...any) {
	if s.trace != nil {
		fmt.Fprintf(s.trace, "%9.4f ", float64(s.now)/1e9)
		fmt.Fprintf(s.trace, format+"\n", args...)
	}
}

type stats struct {
	callN          [numCalls]int64
	callT          [numCalls]time.Duration
	callCPU        [numCalls]time.Duration
	decisions      int64
	seeds          int
	timeouts       int
	finished       int
	unexpected     int
	requests       int64
	canceled       int64
	endgameDups    int64
	parentsAdded   int64
	parentsDropped int64
	events         int64
	seedDoneAt     int64
	waitSum        int64 // scheduler queueing (measured cost), ns
	costSum, costN int64 // piece download times since the last timeline line
	waitMax        int64

	// sampler sums
	samples                   int
	downUtil, upUtil          float64 // sums of per-sample means
	downN                     int
	idleUp, starved           float64 // sums of per-sample fractions
	maxChildren, maxUploads   int
	cdnChildren, cdnChildrenN float64
}

const sampleEvery = int64(250 * time.Millisecond)

// sample measures, at one instant: the download rate of the hosts still
// downloading over their cap, the upload rate of all hosts over their cap,
// how many hosts upload nothing, how many downloading hosts have no piece
// in flight, and the children per parent (from the hosts' parent sets).
func (s *Sim) sample() {
	var down, up, idle, starved float64
	nDown := 0
	children := s.childScratch[:0]
	for range len(s.net.nodes) {
		children = append(children, 0)
	}
	maxUp := 0
	for _, h := range s.hosts {
		nd := &s.net.nodes[h.node]
		maxUp = max(maxUp, len(nd.ups))
		var u float64
		for _, x := range nd.ups {
			u += x.rate
		}
		up += u / nd.up
		if len(nd.ups) == 0 {
			idle++
		}
		if !h.started || h.done {
			continue
		}
		nDown++
		var d float64
		for _, x := range nd.downs {
			d += x.rate
		}
		down += d / nd.down
		if h.nInflight == 0 {
			starved++
		}
		for _, ps := range h.parents {
			if ps.inSet {
				children[ps.node]++
			}
		}
	}
	if nDown == 0 {
		s.childScratch = children[:0]
		return
	}
	st := &s.stats
	if s.timeline != nil && s.now%int64(time.Second) == 0 {
		held := 0
		for _, h := range s.hosts {
			held += h.nHave
		}
		fmt.Fprintf(s.timeline, "t=%5.1fs downloading %5d held %5.1f%% down %.2f up %.2f idle-up %.2f starved %.2f cdn-children %4d max-children %3d max-uploads %2d cdn-up %3d/%d\n",
			float64(s.now)/1e9, nDown, 100*float64(held)/float64(len(s.hosts)*s.count), down/float64(nDown), up/float64(len(s.hosts)),
			idle/float64(len(s.hosts)), starved/float64(nDown), children[s.cdnNode], slices.Max(children[2:]), maxUp,
			len(s.net.nodes[s.cdnNode].ups), s.net.nodes[s.cdnNode].slots)
		s.timelineDetail(nDown)
	}
	st.samples++
	st.downUtil += down / float64(nDown)
	st.downN++
	st.upUtil += up / float64(len(s.hosts))
	st.idleUp += idle / float64(len(s.hosts))
	st.starved += starved / float64(nDown)
	for i, c := range children {
		if int32(i) == s.cdnNode {
			st.cdnChildren += float64(c)
			st.cdnChildrenN++
			continue
		}
		st.maxChildren = max(st.maxChildren, c)
	}
	st.maxUploads = max(st.maxUploads, maxUp)
	s.childScratch = children[:0]
}

// timelineDetail prints, under a timeline line, what limits the swarm at
// this instant: the mean time of the pieces finished since the last line,
// the CDN's uplink use, the share of busy uplinks and of downloading
// hosts' downlinks at their cap, pieces in flight per downloading host,
// and how many of a downloading host's missing pieces its parents hold
// against how many any host holds (the overlay's reach).
func (s *Sim) timelineDetail(nDown int) {
	rate := func(xs []*xfer) float64 {
		var r float64
		for _, x := range xs {
			r += x.rate
		}
		return r
	}
	var any piece.Bitmap
	for _, h := range s.hosts {
		for i, b := range h.have {
			for len(any) <= i {
				any = append(any, 0)
			}
			any[i] |= b
		}
	}
	var upBusy, upSat, downSat, inflight, byParents, byAny float64
	for _, h := range s.hosts {
		nd := &s.net.nodes[h.node]
		if len(nd.ups) > 0 {
			upBusy++
			if rate(nd.ups) > 0.95*nd.up {
				upSat++
			}
		}
		if !h.started || h.done {
			continue
		}
		if rate(nd.downs) > 0.95*nd.down {
			downSat++
		}
		inflight += float64(h.nInflight)
		var u piece.Bitmap
		for _, ps := range h.parents {
			if !ps.inSet {
				continue
			}
			for i, b := range ps.bitmap {
				for len(u) <= i {
					u = append(u, 0)
				}
				u[i] |= b
			}
		}
		byParents += float64(u.CountMissingFrom(h.have))
		byAny += float64(any.CountMissingFrom(h.have))
	}
	pt := 0.0
	if s.stats.costN > 0 {
		pt = float64(s.stats.costSum) / float64(s.stats.costN) / 1e9
	}
	s.stats.costSum, s.stats.costN = 0, 0
	cdn := &s.net.nodes[s.cdnNode]
	d := float64(max(nDown, 1))
	fmt.Fprintf(s.timeline, "         piece time %.2fs, cdn up %.2f, saturated: up %.2f of busy, down %.2f; in flight %.1f; missing held by parents %.1f, by anyone %.1f\n",
		pt, rate(cdn.ups)/cdn.up, upSat/max(upBusy, 1), downSat/d, inflight/d, byParents/d, byAny/d)
}

func (s *Sim) isCDN(n int32) bool { return n == s.cdnNode }

func (s *Sim) nodeOf(id string) int32 {
	if n, ok := s.nodeID[id]; ok {
		return n
	}
	panic("sim: unknown parent " + id)
}

const cdnID = "cdn"

// New builds a run: the scheduler with the CDN host, the hosts (connected,
// not started), the network.
func New(cfg Config) (*Sim, error) {
	// Scheduler calls are timed with the thread's CPU clock: stay on one
	// thread.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if cfg.Hosts < 1 || cfg.Size <= 0 || cfg.HostCap <= 0 || cfg.OriginCap <= 0 {
		return nil, fmt.Errorf("sim: hosts, size, host cap and origin cap must be positive")
	}
	if cfg.MaxTime <= 0 {
		cfg.MaxTime = time.Duration(20*float64(cfg.Size)/cfg.HostCap*1e9) + 2*time.Minute
	}
	s := &Sim{cfg: cfg, byID: map[string]int32{}, nodeID: map[string]int32{}}
	s.clk = clock.NewFake(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	signer, err := tasktoken.NewSigner(nil)
	if err != nil {
		return nil, err
	}
	s.sched, err = scheduler.New(cfg.Scheduler, s, s, signer, s.clk)
	if err != nil {
		return nil, err
	}
	s.sched.SetLogger(slog.New(slog.DiscardHandler))
	s.rtt = int64(cfg.RTT)
	s.oneWay = s.rtt / 2
	s.reportIv = int64(cfg.Scheduler.ReportInterval) // told to hosts in Welcome
	sum := sha256.Sum256(fmt.Appendf(nil, "sim blob %d", cfg.Size))
	s.taskID = "sha256:" + hex.EncodeToString(sum[:])
	s.url = "http://origin.sim/blobs/" + s.taskID
	s.pieceSize = piece.SizeFor(cfg.Size)
	s.count = piece.Count(cfg.Size, s.pieceSize)
	for n := range s.count {
		d := sha256.Sum256(fmt.Appendf(nil, "%s/%d", s.taskID, n))
		s.sums = append(s.sums, d[:])
	}
	inf := math.Inf(1)
	s.net.sim = s
	switch cfg.Model {
	case ModelMaxMin, "":
		s.net.maxmin = true
	case ModelShare:
	default:
		return nil, fmt.Errorf("sim: unknown fluid model %q", cfg.Model)
	}
	sn := cfg.SupernodeCap
	if sn <= 0 {
		sn = inf
	}
	s.net.nodes = make([]node, 0, cfg.Hosts+2)
	s.originNode = 0
	s.net.nodes = append(s.net.nodes, node{up: cfg.OriginCap, down: inf})
	s.cdnNode = 1
	s.net.nodes = append(s.net.nodes, node{up: sn, down: sn, maxSlots: cfg.CDNMaxUploads})
	s.nodeID[cdnID] = s.cdnNode
	if err := s.sched.AddHost(scheduler.HostInfo{ID: cdnID, IP: "10.0.0.2", UploadPort: 8001, CDN: true}); err != nil {
		return nil, err
	}
	rng := rand.New(rand.NewPCG(cfg.Seed, 0x5eed))
	s.hosts = make([]*host, cfg.Hosts)
	// The seed also names the hosts (the scheduler breaks ties and picks
	// super-seeding targets by hashes of host IDs) and orders the hosts
	// that start at the same instant.
	order := rng.Perm(cfg.Hosts)
	starts := make([]int64, cfg.Hosts)
	for i := range cfg.Hosts {
		id := fmt.Sprintf("h%06d-%x", i, cfg.Seed)
		nd := int32(len(s.net.nodes))
		b := cfg.HostCap * cfg.Burst.Seconds()
		s.net.nodes = append(s.net.nodes, node{up: cfg.HostCap, down: cfg.HostCap, maxSlots: cfg.MaxUploads, burst: b, tokUp: b, tokDown: b})
		h := &host{idx: int32(i), id: id, node: nd, length: -1,
			rng:  rand.New(rand.NewPCG(cfg.Seed, uint64(i)+1)),
			info: scheduler.HostInfo{ID: id, Hostname: id, IP: fmt.Sprintf("10.%d.%d.%d", 1+i>>16, (i>>8)&255, i&255), UploadPort: 65002}}
		s.hosts[i] = h
		s.byID[id] = int32(i)
		s.nodeID[id] = nd
		// Hello: every agent is connected before the pull starts.
		s.exec(&schedCall{kind: callHello, fn: func(sc *scheduler.Scheduler) {
			if err := sc.AddHost(h.info); err != nil {
				panic(err)
			}
		}})
		if cfg.StartSpread > 0 {
			starts[i] = rng.Int64N(int64(cfg.StartSpread))
		}
	}
	for _, i := range order {
		s.q.push(event{at: starts[i], kind: evHostStart, h: int32(i)})
	}
	s.q.push(event{at: int64(cfg.Scheduler.HousekeepingInterval), kind: evHousekeep})
	s.q.push(event{at: sampleEvery, kind: evSample})
	return s, nil
}

// Run runs the simulation to the end (every host done, or MaxTime).
func (s *Sim) Run() *Result {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	wall := time.Now()
	limit := int64(s.cfg.MaxTime)
	aborted := ""
	for (s.q.len() > 0 || len(s.net.flows) > 0) && s.stats.finished < len(s.hosts) {
		var e event
		if f := s.net.flows; len(f) > 0 && (s.q.len() == 0 || f[0].doneAt < s.q.ev[0].at) {
			e = event{at: f[0].doneAt, kind: evFlowDone, x: f[0]}
		} else {
			e = s.q.pop()
		}
		if e.at > limit {
			break
		}
		if e.at > s.now {
			s.clk.Advance(time.Duration(e.at - s.now))
			s.now = e.at
		}
		if s.checkCaps {
			s.verifyCaps()
		}
		s.stats.events++
		if s.cfg.MaxWall > 0 && s.stats.events&0xfff == 0 && time.Since(wall) > s.cfg.MaxWall {
			aborted = fmt.Sprintf("stopped after %s of real time at %.1f s simulated", s.cfg.MaxWall, float64(s.now)/1e9)
			break
		}
		switch e.kind {
		case evHostStart:
			s.startTask(s.hosts[e.h])
		case evInbox:
			s.handleInbox(s.hosts[e.h])
		case evReportTick:
			h := s.hosts[e.h]
			h.reportArmed = false
			s.flushReports(h)
		case evRefresh:
			s.refresh(s.hosts[e.h])
		case evRequest:
			s.request(e.x)
		case evFlowDone:
			s.flowDone(e.x)
		case evResult:
			s.result(e.x)
		case evSchedArrive:
			s.arrive(e.c)
		case evSchedWake:
			s.wake()
		case evHousekeep:
			s.arrive(&schedCall{kind: callHousekeep, fn: (*scheduler.Scheduler).Housekeep})
			s.q.push(event{at: s.now + int64(s.cfg.Scheduler.HousekeepingInterval), kind: evHousekeep})
		case evOriginStart:
			s.originStart()
		case evReconnect:
			s.reconnect(s.hosts[e.h])
		case evTokens:
			s.net.tokensOut(e.h, uint32(e.x.piece), s.now)
		case evRetry:
			s.epilogue(s.hosts[e.h])
		case evSample:
			s.sample()
			s.q.push(event{at: s.now + sampleEvery, kind: evSample})
		}
	}
	r := s.result0(time.Since(wall))
	r.Aborted = aborted
	return r
}

// originStart: the origin answered the CDN (length known: SeedMeta), and
// the body starts streaming.
func (s *Sim) originStart() {
	length, ps := s.cfg.Size, s.pieceSize
	s.arrive(&schedCall{kind: callSeed, fn: func(sc *scheduler.Scheduler) { sc.SeedMeta(s.taskID, length, ps) }})
	s.originNext = 0
	s.originStream()
}

func (s *Sim) originStream() {
	n := s.originNext
	_, size := piece.Range(n, s.cfg.Size, s.pieceSize)
	x := &xfer{from: s.originNode, to: s.cdnNode, piece: n, size: float64(size), origin: true, child: -1}
	s.net.nodes[s.originNode].slots++
	s.net.start(x, s.now)
}

// originPiece: piece n is stored at the CDN (SeedPiece), the stream goes
// on; after the last one, SeedDone.
func (s *Sim) originPiece(x *xfer) {
	n, sum := x.piece, s.sums[x.piece]
	s.arrive(&schedCall{kind: callSeed, fn: func(sc *scheduler.Scheduler) { sc.SeedPiece(s.taskID, n, sum) }})
	if n+1 < s.count {
		s.originNext = n + 1
		s.originStream()
		return
	}
	s.stats.seedDoneAt = s.now
	length := s.cfg.Size
	s.arrive(&schedCall{kind: callSeed, fn: func(sc *scheduler.Scheduler) { sc.SeedDone(s.taskID, length, s.taskID) }})
}

// reconnect: the agent's session comes back (Hello with the tasks it holds
// completely; a downloading task registers again).
func (s *Sim) reconnect(h *host) {
	info := h.info
	s.arrive(&schedCall{kind: callHello, fn: func(sc *scheduler.Scheduler) { sc.AddHost(info) }})
	if h.done {
		ht := &schedulerv1.HeldTask{TaskId: s.taskID, ContentLength: s.cfg.Size, PieceSize: uint32(s.pieceSize), PieceSha256: s.sums}
		id := h.id
		s.arrive(&schedCall{kind: callHeld, fn: func(sc *scheduler.Scheduler) { sc.Held(id, ht) }})
	} else if h.started {
		reg := &schedulerv1.RegisterTask{TaskId: s.taskID, Url: s.url, Digest: s.taskID}
		id := h.id
		s.arrive(&schedCall{kind: callRegister, fn: func(sc *scheduler.Scheduler) { sc.Register(id, reg) }})
	}
}

// Result is what a run measured.
type Result struct {
	Config            Config
	Times             []float64 // per finished host, seconds from its start
	Failed            int
	LimitSeconds      float64
	OriginEgress      float64
	CDNEgress         float64
	P2PBytes          float64
	CDNKept, PeerKept int64
	SeedDoneSeconds   float64
	MakespanSeconds   float64

	Decisions       int64
	SchedSeconds    float64
	SchedCPUSeconds float64
	SchedByCall     map[string]CallStat
	DecisionHist    CallStat // the scheduler's own Decision histogram (assignLocked only)
	Reparents       map[string]float64
	ParentSets      int64
	ParentsAdded    int64
	ParentsDropped  int64
	Requests        int64
	Refused503CDN   int
	Refused503Peers int
	PeakCDNUploads  int
	EndgameDups     int64
	Canceled        int64
	Timeouts        int
	Unexpected      int
	Events          int64
	WallSeconds     float64
	HeapBytes       uint64
	Aborted         string
	// Scheduler queueing delay (measured cost): mean and max, seconds.
	WaitMean, WaitMax float64

	// Time averages over the sampler's instants while hosts download.
	DownUtil, UpUtil, IdleUploaders, Starved, CDNChildren float64
	MaxChildren, MaxUploads                               int
}

// CallStat is a count and the real (and thread CPU) time spent.
type CallStat struct {
	N          int64   `json:"n"`
	Seconds    float64 `json:"seconds"`
	MeanUS     float64 `json:"mean_us"`
	CPUSeconds float64 `json:"cpu_seconds,omitempty"`
	CPUMeanUS  float64 `json:"cpu_mean_us,omitempty"`
}

func (s *Sim) result0(wall time.Duration) *Result {
	r := &Result{Config: s.cfg, WallSeconds: wall.Seconds(), Events: s.stats.events,
		LimitSeconds: float64(s.cfg.Size) / s.cfg.HostCap,
		OriginEgress: s.net.nodes[s.originNode].sent, CDNEgress: s.net.nodes[s.cdnNode].sent,
		Decisions: s.stats.decisions, SchedByCall: map[string]CallStat{}, Reparents: map[string]float64{},
		ParentsAdded: s.stats.parentsAdded, ParentsDropped: s.stats.parentsDropped, Requests: s.stats.requests,
		Refused503CDN: s.net.nodes[s.cdnNode].refused, PeakCDNUploads: s.net.nodes[s.cdnNode].peakSlots,
		EndgameDups: s.stats.endgameDups, Canceled: s.stats.canceled, Timeouts: s.stats.timeouts,
		Unexpected: s.stats.unexpected, SeedDoneSeconds: float64(s.stats.seedDoneAt) / 1e9,
		MakespanSeconds: float64(s.now) / 1e9}
	for i := 2; i < len(s.net.nodes); i++ {
		r.P2PBytes += s.net.nodes[i].sent
		r.Refused503Peers += s.net.nodes[i].refused
	}
	for _, h := range s.hosts {
		r.ParentSets += int64(h.parentSets)
		r.CDNKept += h.fromCDN
		r.PeerKept += h.fromPeers
		if h.done {
			r.Times = append(r.Times, float64(h.doneAt-h.start)/1e9)
		} else {
			r.Failed++
		}
	}
	slices.Sort(r.Times)
	var total, cpu time.Duration
	for k := range numCalls {
		if n := s.stats.callN[k]; n > 0 {
			t, c := s.stats.callT[k], s.stats.callCPU[k]
			total += t
			cpu += c
			r.SchedByCall[callNames[k]] = CallStat{N: n, Seconds: t.Seconds(), MeanUS: t.Seconds() * 1e6 / float64(n),
				CPUSeconds: c.Seconds(), CPUMeanUS: c.Seconds() * 1e6 / float64(n)}
		}
	}
	r.SchedSeconds, r.SchedCPUSeconds = total.Seconds(), cpu.Seconds()
	m := s.sched.Metrics()
	var d dto.Metric
	if m.Decision.Write(&d) == nil && d.Histogram != nil {
		n := int64(d.Histogram.GetSampleCount())
		r.DecisionHist = CallStat{N: n, Seconds: d.Histogram.GetSampleSum()}
		if n > 0 {
			r.DecisionHist.MeanUS = r.DecisionHist.Seconds * 1e6 / float64(n)
		}
	}
	for _, why := range []string{scheduler.ReasonFailures, scheduler.ReasonSlow, "bad piece"} {
		var c dto.Metric
		if m.Reparents.WithLabelValues(why).Write(&c) == nil && c.Counter != nil {
			r.Reparents[why] = c.Counter.GetValue()
		}
	}
	var calls int64
	for _, n := range s.stats.callN {
		calls += n
	}
	if calls > 0 {
		r.WaitMean = float64(s.stats.waitSum) / float64(calls) / 1e9
	}
	r.WaitMax = float64(s.stats.waitMax) / 1e9
	if st := s.stats; st.samples > 0 {
		n := float64(st.samples)
		r.DownUtil, r.UpUtil, r.IdleUploaders, r.Starved = st.downUtil/n, st.upUtil/n, st.idleUp/n, st.starved/n
		r.MaxChildren, r.MaxUploads = st.maxChildren, st.maxUploads
		if st.cdnChildrenN > 0 {
			r.CDNChildren = st.cdnChildren / st.cdnChildrenN
		}
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	r.HeapBytes = ms.HeapInuse
	return r
}
