package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pouchfly/pouchfly/internal/units"
	"github.com/pouchfly/pouchfly/test/report"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "sim:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("sim", flag.ContinueOnError)
	def := DefaultConfig()
	var (
		hostsF     = fs.String("hosts", "10,100,1000", "comma-separated host counts, one run each (may be empty with --compare-testbed)")
		sizeF      = fs.String("size", "64MiB", "blob size")
		hostCap    = fs.Float64("host-cap-mbit", 50, "each host's upload and download cap, Mbit/s")
		originCap  = fs.Float64("origin-cap-mbit", 200, "the origin's upload cap, Mbit/s")
		snCap      = fs.Float64("supernode-cap-mbit", -1, "the supernode's (CDN's) cap, Mbit/s (-1: the origin cap; 0: none)")
		rtt        = fs.Duration("rtt", def.RTT, "round-trip time between any two hosts")
		spread     = fs.Duration("start-spread", 0, "hosts start at uniform random times in [0, spread)")
		maxWall    = fs.Duration("max-wall", 15*time.Minute, "stop a run after this much real time (0: none) and report what was measured")
		wLoad      = fs.Float64("w-load", def.Scheduler.Weights.Load, "scheduler weights.load")
		wUseful    = fs.Float64("w-useful", def.Scheduler.Weights.Useful, "scheduler weights.useful")
		wSticky    = fs.Float64("w-sticky", def.Scheduler.Weights.Sticky, "scheduler weights.sticky")
		cdnGrants  = fs.Int("cdn-grants", def.Scheduler.CDNGrants, "scheduler cdn_grants")
		cdnFresh   = fs.Duration("cdn-freshness", def.Scheduler.CDNFreshness, "scheduler cdn_freshness")
		candSample = fs.Int("candidate-sample", def.Scheduler.CandidateSample, "scheduler candidate_sample (0: every peer)")
		maxTime    = fs.Duration("max-time", 0, "simulated time bound (0: 20 × the limit + 2m)")
		burst      = fs.Duration("burst", 0, "token-bucket burst of the host caps, in seconds of cap (the agents' limiters have 1s; 0: strict caps)")
		model      = fs.String("model", def.Model, "fluid model: maxmin (local max-min fair) or share (min of the two ends' equal shares)")
		seed       = fs.Uint64("seed", 1, "random seed")
		cost       = fs.String("sched-cost", "zero", "scheduler call cost in simulated time: zero (ideal scheduler) or measured (real time, one server)")
		reportF    = fs.String("report", "sim-report.json", "JSON report (one object per run, DESIGN.md §5 fields + detail)")
		plotF      = fs.String("plot", "sim.png", "PNG plot of completion time vs hosts (empty: none)")
		maxPar     = fs.Int("max-parallel-pieces", def.MaxParallelPieces, "agent max_parallel_pieces")
		perParent  = fs.Int("per-parent-pieces", def.PerParentPieces, "agent per_parent_pieces")
		cdnPar     = fs.Int("cdn-parallel-pieces", def.CDNParallelPieces, "agent cdn_parallel_pieces")
		maxParents = fs.Int("max-parents", def.Scheduler.MaxParents, "scheduler max_parents")
		fanout     = fs.Int("cdn-fanout", def.Scheduler.CDNFanout, "scheduler cdn_fanout")
		retry503   = fs.Duration("retry-after-503", def.RetryAfter503, "the agent rests a parent that answered 503 this long, without counting a failure (today's agent: 1s; 0: the agent before 1bee27a, where a 503 was a network failure)")
		cdnMaxUp   = fs.Int("cdn-max-uploads", def.CDNMaxUploads, "supernode upload_max_concurrent")
		peerMaxUp  = fs.Int("max-uploads", def.MaxUploads, "agent max_uploads")
		cpuProf    = fs.String("cpuprofile", "", "write a CPU profile of the simulator")
		timelineF  = fs.Bool("timeline", false, "print swarm state once a simulated second")
		traceF     = fs.Bool("trace", false, "trace every host's packets and pieces to stderr (small runs)")
		cmpSeeds   = fs.Int("compare-seeds", 3, "simulator seeds per comparison case")
		testbedF   = fs.String("compare-testbed", "", "a testbed bench report (make bench's bench-report.json): simulate each of its p2p runs at the same N, size and caps (strict caps, no burst) and print both")
		cluster    = fs.Bool("compare-cluster", false, "also run the in-process loopback cluster (test/cluster) at the first host count with the same caps, and print both")
	)
	if err := fs.Parse(args); err != nil {
		return err
	}
	size, err := units.ParseBytes(*sizeF)
	if err != nil {
		return err
	}
	var ns []int
	for _, f := range strings.Split(*hostsF, ",") {
		if strings.TrimSpace(f) == "" && (*testbedF != "" || *cluster) {
			continue
		}
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return fmt.Errorf("--hosts: bad count %q", f)
		}
		ns = append(ns, n)
	}
	if *cost != "zero" && *cost != "measured" {
		return fmt.Errorf("--sched-cost: zero or measured")
	}
	cfg := def
	cfg.Size = size
	cfg.HostCap = *hostCap * 125000
	cfg.OriginCap = *originCap * 125000
	switch {
	case *snCap < 0:
		cfg.SupernodeCap = cfg.OriginCap
	default:
		cfg.SupernodeCap = *snCap * 125000
	}
	cfg.RTT, cfg.StartSpread, cfg.MaxTime, cfg.MaxWall, cfg.Seed = *rtt, *spread, *maxTime, *maxWall, *seed
	cfg.Scheduler.Weights.Load, cfg.Scheduler.Weights.Useful, cfg.Scheduler.Weights.Sticky = *wLoad, *wUseful, *wSticky
	cfg.Scheduler.CDNGrants, cfg.Scheduler.CDNFreshness, cfg.Scheduler.CandidateSample = *cdnGrants, *cdnFresh, *candSample
	cfg.MeasuredCost = *cost == "measured"
	cfg.Model = *model
	cfg.Burst = *burst
	cfg.MaxParallelPieces, cfg.PerParentPieces, cfg.CDNParallelPieces = *maxPar, *perParent, *cdnPar
	cfg.Scheduler.MaxParents, cfg.Scheduler.CDNFanout = *maxParents, *fanout
	cfg.RetryAfter503, cfg.CDNMaxUploads, cfg.MaxUploads = *retry503, *cdnMaxUp, *peerMaxUp
	if *cpuProf != "" {
		f, err := os.Create(*cpuProf)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	if err := cfg.Scheduler.Validate(); err != nil {
		return err
	}

	var outs []Output
	for _, n := range ns {
		c := cfg
		c.Hosts = n
		fmt.Fprintf(stdout, "sim: %d hosts, %s, hosts %g Mbit/s, origin %g Mbit/s ...\n", n, units.Format(size), *hostCap, *originCap)
		s, err := New(c)
		if err != nil {
			return err
		}
		if *timelineF {
			s.timeline = stdout
		}
		if *traceF {
			s.trace = os.Stderr
		}
		r := s.Run()
		o := r.Output()
		outs = append(outs, o)
		d := o.Detail
		fmt.Fprintf(stdout, "  p50 %.2fs max %.2fs (limit %.2fs), cdn %.2f×, %d decisions at %.1f µs CPU, wall %.1fs%s\n",
			o.Seconds.P50, o.Seconds.Max, o.LimitSeconds, d.CDNEgressX, d.Decisions, d.SchedCPUUSPerDec, d.WallSeconds,
			map[bool]string{true: " ABORTED: " + r.Aborted}[r.Aborted != ""])
		fmt.Fprintf(stdout, "  util down %.2f up %.2f, idle uploaders %.2f, starved %.2f, cdn children %.0f, max children %d, max uploads %d, 503 cdn %d peers %d, new parents/set %.2f\n",
			d.DownloadUtil, d.UploadUtil, d.IdleUploaders, d.Starved, d.CDNChildren, d.MaxChildren, d.MaxUploads, d.Refused503CDN, d.Refused503Peers, d.NewParentsPerSet)
	}
	if *cluster && len(ns) == 0 {
		return fmt.Errorf("--compare-cluster needs a host count in --hosts")
	}
	if *cluster {
		// The loopback cluster's agents cap with token buckets that start
		// full (1 s of burst), its CDN has no cap and loopback's RTT is
		// tiny: simulate that (several seeds), then run the real thing.
		c := cfg
		c.Hosts = ns[0]
		c.SupernodeCap = 0
		c.RTT = 200 * time.Microsecond
		c.Burst = time.Second
		for seed := uint64(1); seed <= uint64(*cmpSeeds); seed++ {
			c.Seed = seed
			s, err := New(c)
			if err != nil {
				return err
			}
			so := s.Run().Output()
			so.Scenario = "sim-as-cluster"
			so.Notes = fmt.Sprintf("seed %d; 1 s token-bucket burst, CDN uncapped, RTT 0.2 ms; ", seed) + so.Notes
			outs = append(outs, so)
		}
		o, err := compareCluster(c, stdout)
		if err != nil {
			return fmt.Errorf("cluster comparison: %w", err)
		}
		outs = append(outs, o)
	}
	if *testbedF != "" {
		tb, err := compareTestbed(*testbedF, cfg, *cmpSeeds, stdout)
		if err != nil {
			return err
		}
		outs = append(outs, tb...)
	}
	printTable(stdout, outs)
	if *reportF != "" {
		if err := writeJSON(*reportF, outs); err != nil {
			return err
		}
		fmt.Fprintln(stdout, "report:", *reportF)
	}
	if *plotF != "" {
		if err := plotRuns(*plotF, outs); err != nil {
			return err
		}
		fmt.Fprintln(stdout, "plot:", *plotF)
	}
	return nil
}

// Output is one run in the report: DESIGN.md §5's fields plus the
// simulator's detail.
type Output struct {
	report.Report
	Detail Detail `json:"detail"`
}

// Detail is what only the simulator measures.
type Detail struct {
	Model              string              `json:"model"`
	Variant            string              `json:"variant"`
	RTTMs              float64             `json:"rtt_ms"`
	SupernodeCapMbit   float64             `json:"supernode_cap_mbit"`
	PieceSize          int32               `json:"piece_size"`
	Pieces             int                 `json:"pieces"`
	SchedCost          string              `json:"sched_cost"`
	MinSeconds         float64             `json:"min_seconds"`
	P50OverLimit       float64             `json:"p50_over_limit"`
	MaxOverLimit       float64             `json:"max_over_limit"`
	SeedDoneSeconds    float64             `json:"seed_done_seconds"`
	CDNEgressX         float64             `json:"cdn_egress_x"`
	OriginEgressX      float64             `json:"origin_egress_x"`
	P2PShare           float64             `json:"p2p_share"`
	Decisions          int64               `json:"decisions"`
	SchedSeconds       float64             `json:"sched_seconds"`
	SchedCPUSeconds    float64             `json:"sched_cpu_seconds"`
	SchedUSPerDecision float64             `json:"sched_us_per_decision"`
	SchedCPUUSPerDec   float64             `json:"sched_cpu_us_per_decision"`
	SchedBusyFraction  float64             `json:"sched_busy_fraction"`
	SchedCPUPerGB      float64             `json:"sched_cpu_seconds_per_gb"`
	AssignUSMean       float64             `json:"assign_us_mean"`
	SchedWaitMsMean    float64             `json:"sched_wait_ms_mean"`
	SchedWaitMsMax     float64             `json:"sched_wait_ms_max"`
	Calls              map[string]CallStat `json:"calls"`
	ParentSetsPerHostS float64             `json:"parent_sets_per_host_second"`
	NewParentsPerSet   float64             `json:"new_parents_per_set"`
	Reparents          map[string]float64  `json:"reparents"`
	ParentsDropped     int64               `json:"parents_dropped_after_failures"`
	Requests           int64               `json:"piece_requests"`
	Refused503CDN      int                 `json:"refused_503_cdn"`
	Refused503Peers    int                 `json:"refused_503_peers"`
	PeakCDNUploads     int                 `json:"peak_cdn_uploads"`
	EndgameDups        int64               `json:"endgame_duplicates"`
	Timeouts           int                 `json:"host_timeouts"`
	Events             int64               `json:"events"`
	WallSeconds        float64             `json:"wall_seconds"`
	HeapMiB            float64             `json:"heap_mib"`
	// Averages over 250 ms samples while hosts download.
	DownloadUtil  float64 `json:"download_util"`
	UploadUtil    float64 `json:"upload_util"`
	IdleUploaders float64 `json:"idle_uploaders"`
	Starved       float64 `json:"starved"`
	CDNChildren   float64 `json:"cdn_children"`
	MaxChildren   int     `json:"max_children"`
	MaxUploads    int     `json:"max_uploads"`
}

// Output converts a result to its report object.
func (r *Result) Output() Output {
	c := r.Config
	size := float64(c.Size)
	o := Output{Report: report.Report{
		Scenario: "sim", Hosts: c.Hosts, BlobBytes: c.Size,
		HostCapMbit: c.HostCap / 125000, OriginCapMbit: c.OriginCap / 125000,
		OriginEgressBytes: int64(r.OriginEgress), SupernodeEgressBytes: int64(r.CDNEgress), P2PBytes: int64(r.P2PBytes),
		Seconds: report.Summarize(r.Times), LimitSeconds: report.Limit(c.Size, c.HostCap/125000),
		DigestsOK: true, FailedHosts: r.Failed,
		Notes: "discrete-event simulation driving the real scheduler package (test/sim); no data moves, so digests_ok is vacuous " +
			"and cpu_seconds_per_gb is not measured (see detail.sched_cpu_seconds_per_gb)",
	}}
	d := Detail{
		Model: c.Model, RTTMs: float64(c.RTT) / 1e6, SupernodeCapMbit: c.SupernodeCap / 125000,
		SchedCost:       map[bool]string{false: "zero", true: "measured"}[c.MeasuredCost],
		SeedDoneSeconds: r.SeedDoneSeconds, CDNEgressX: r.CDNEgress / size, OriginEgressX: r.OriginEgress / size,
		Decisions: r.Decisions, SchedSeconds: r.SchedSeconds, SchedCPUSeconds: r.SchedCPUSeconds, AssignUSMean: r.DecisionHist.MeanUS,
		Calls: r.SchedByCall, Reparents: r.Reparents, ParentsDropped: r.ParentsDropped, Requests: r.Requests,
		Refused503CDN: r.Refused503CDN, Refused503Peers: r.Refused503Peers, PeakCDNUploads: r.PeakCDNUploads,
		EndgameDups: r.EndgameDups, Timeouts: r.Timeouts, Events: r.Events, WallSeconds: r.WallSeconds,
		HeapMiB:         float64(r.HeapBytes) / (1 << 20),
		SchedWaitMsMean: r.WaitMean * 1e3, SchedWaitMsMax: r.WaitMax * 1e3,
		DownloadUtil: r.DownUtil, UploadUtil: r.UpUtil, IdleUploaders: r.IdleUploaders, Starved: r.Starved,
		CDNChildren: r.CDNChildren, MaxChildren: r.MaxChildren, MaxUploads: r.MaxUploads,
	}
	d.Variant = variant(c)
	d.PieceSize = pieceSizeOf(c.Size)
	d.Pieces = int((c.Size + int64(d.PieceSize) - 1) / int64(d.PieceSize))
	if len(r.Times) > 0 {
		d.MinSeconds = r.Times[0]
	}
	if o.LimitSeconds > 0 {
		d.P50OverLimit = o.Seconds.P50 / o.LimitSeconds
		d.MaxOverLimit = o.Seconds.Max / o.LimitSeconds
	}
	if tot := r.P2PBytes + r.CDNEgress; tot > 0 {
		d.P2PShare = r.P2PBytes / tot
	}
	if r.Decisions > 0 {
		d.SchedUSPerDecision = r.SchedSeconds * 1e6 / float64(r.Decisions)
		d.SchedCPUUSPerDec = r.SchedCPUSeconds * 1e6 / float64(r.Decisions)
	}
	if r.MakespanSeconds > 0 {
		d.SchedBusyFraction = r.SchedCPUSeconds / r.MakespanSeconds
		var hs float64
		for _, t := range r.Times {
			hs += t
		}
		if hs > 0 {
			d.ParentSetsPerHostS = float64(r.ParentSets) / hs
		}
	}
	if delivered := float64(c.Hosts) * size; delivered > 0 {
		d.SchedCPUPerGB = r.SchedCPUSeconds / (delivered / 1e9)
	}
	if r.ParentSets > 0 {
		d.NewParentsPerSet = float64(r.ParentsAdded) / float64(r.ParentSets)
	}
	if r.Aborted != "" {
		o.Notes += "; ABORTED: " + r.Aborted
	}
	if r.Unexpected > 0 {
		o.Notes += fmt.Sprintf("; %d unexpected TaskError/BackToSource packets", r.Unexpected)
	}
	o.Detail = d
	return o
}

func printTable(w io.Writer, outs []Output) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\thosts\tlimit s\tp50 s\tp99 s\tmax s\tp50/lim\tmax/lim\torigin ×\tCDN ×\tp2p %\tdecisions\tCPU µs/decision\tsched cores\tsets/host/s\tnew parents/set\tfailed\twall s\t")
	for _, o := range outs {
		d := o.Detail
		fmt.Fprintf(tw, "%s\t%d\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t%.1f\t%d\t%.1f\t%.3f\t%.2f\t%.2f\t%d\t%.1f\t\n",
			o.Scenario, o.Hosts, o.LimitSeconds, o.Seconds.P50, o.Seconds.P99, o.Seconds.Max, d.P50OverLimit, d.MaxOverLimit,
			d.OriginEgressX, d.CDNEgressX, 100*d.P2PShare, d.Decisions, d.SchedCPUUSPerDec, d.SchedBusyFraction,
			d.ParentSetsPerHostS, d.NewParentsPerSet, o.FailedHosts, d.WallSeconds)
	}
	tw.Flush()
}

// variant names the settings that differ from today's defaults.
func variant(c Config) string {
	def := DefaultConfig()
	var v []string
	if c.RetryAfter503 != def.RetryAfter503 {
		v = append(v, fmt.Sprintf("agent retry-after-503 %s", c.RetryAfter503))
	}
	if c.Scheduler.Weights != def.Scheduler.Weights {
		v = append(v, fmt.Sprintf("weights %+v", c.Scheduler.Weights))
	}
	if c.Scheduler.MaxParents != def.Scheduler.MaxParents {
		v = append(v, fmt.Sprintf("max_parents %d", c.Scheduler.MaxParents))
	}
	if c.Scheduler.CDNFanout != def.Scheduler.CDNFanout {
		v = append(v, fmt.Sprintf("cdn_fanout %d", c.Scheduler.CDNFanout))
	}
	if c.Scheduler.CDNGrants != def.Scheduler.CDNGrants {
		v = append(v, fmt.Sprintf("cdn_grants %d", c.Scheduler.CDNGrants))
	}
	if c.Scheduler.CDNFreshness != def.Scheduler.CDNFreshness {
		v = append(v, fmt.Sprintf("cdn_freshness %s", c.Scheduler.CDNFreshness))
	}
	if c.Scheduler.CandidateSample != def.Scheduler.CandidateSample {
		v = append(v, fmt.Sprintf("candidate_sample %d", c.Scheduler.CandidateSample))
	}
	if c.MaxParallelPieces != def.MaxParallelPieces || c.PerParentPieces != def.PerParentPieces || c.CDNParallelPieces != def.CDNParallelPieces {
		v = append(v, fmt.Sprintf("pieces parallel/per-parent/cdn %d/%d/%d", c.MaxParallelPieces, c.PerParentPieces, c.CDNParallelPieces))
	}
	if c.MaxUploads != def.MaxUploads || c.CDNMaxUploads != def.CDNMaxUploads {
		v = append(v, fmt.Sprintf("max uploads agent/cdn %d/%d", c.MaxUploads, c.CDNMaxUploads))
	}
	if c.MeasuredCost {
		v = append(v, "scheduler cost measured")
	}
	if c.Burst > 0 {
		v = append(v, fmt.Sprintf("burst %s", c.Burst))
	}
	if c.Model != def.Model {
		v = append(v, "fluid "+c.Model)
	}
	if len(v) == 0 {
		return "today's defaults"
	}
	return strings.Join(v, ", ")
}
