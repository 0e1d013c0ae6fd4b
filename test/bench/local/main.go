// Command local runs Pouchfly's loopback benchmarks (`make bench-local`):
//
//  1. peer-to-peer throughput: one agent downloads a task (default 1 GiB)
//     from one seeded agent over loopback, in one process (test/cluster),
//     with whole-machine CPU-seconds per GB from /proc/stat;
//  2. peak RSS of real `dfget daemon` processes while 1 GiB moves between
//     them (VmHWM from /proc/<pid>/status);
//  3. the supernode's scheduling decision cost with 1000 peers, read from
//     the scheduler package's `go test -bench` output (--sched-bench).
//
// It prints a table and writes a JSON array (DESIGN.md §5) to --report.
// Figures are reported, never asserted: the exit status is non-zero only
// when a scenario could not run at all.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/pouchfly/pouchfly/internal/units"
	"github.com/pouchfly/pouchfly/test/origin"
)

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench-local: "+format+"\n", args...)
}

func fmtBytes(n int64) string { return units.Format(n) }

const (
	targetBps = 1e9      // ≥ 1 GB/s peer to peer
	targetRSS = 64 << 20 // ≤ 64 MiB per agent
)

func main() {
	var (
		sizeS     = flag.String("size", "1GiB", "task size")
		runs      = flag.Int("runs", 3, "measured peer-to-peer downloads")
		warmup    = flag.Int("warmup", 1, "peer-to-peer downloads before the measured ones, reported apart (the first download into fresh page-cache memory pays one-time VM costs)")
		report    = flag.String("report", "bench-local-report.json", "JSON report file")
		schedFile = flag.String("sched-bench", "", "`go test -bench` output of ./scheduler/ to include")
		base      = flag.String("dir", "", "parent of the temporary data dir (default: $TMPDIR or /tmp)")
		cdnOn     = flag.Bool("cdn-during-p2p", true, "keep the supernode's CDN (which has finished seeding) in the swarm while the measured peer downloads; false: restart the supernode without CDN first, so every byte must come from the seeded peer")
		harness   = flag.Bool("harness-fetch", true, "also time one download through cluster.Peer.Fetch (which hashes the content again in the consumer)")
		profile   = flag.String("profile", "bench-local-cpu.prof", "CPU profile written by an extra run when the throughput target is missed (\"\": none)")
		forceProf = flag.Bool("force-profile", false, "profile even when the target is met")
		skipP2P   = flag.Bool("skip-p2p", false, "skip the in-process throughput scenario")
		skipRSS   = flag.Bool("skip-rss", false, "skip the real-process RSS scenario")
		keep      = flag.Bool("keep", false, "keep the temporary data dir")
		goBin     = flag.String("go", "go", "go command (builds the binaries, reads the profile)")
		total     = flag.Duration("timeout", 20*time.Minute, "bound on the whole benchmark")
		perDL     = flag.Duration("download-timeout", 3*time.Minute, "bound on one download")
		ablation  = flag.Bool("ablation", true, "also time one download of the same content requested without its digest (no whole-content SHA-256 in the stream; pieces still verified)")
		quiet     = flag.Duration("quiet-wait", 45*time.Second, "before each measured download, wait up to this long for other load on the (shared) machine to drop below 0.25 cores")
		analyze   = flag.String("analyze", "", "only print the hot spots of an existing CPU profile")
	)
	flag.Parse()
	if *analyze != "" {
		p := &profileResult{File: *analyze}
		analyzeProfile(*goBin, p)
		printProfile(os.Stdout, p)
		return
	}
	size, err := units.ParseBytes(*sizeS)
	if err != nil || size <= 0 {
		fmt.Fprintln(os.Stderr, "bench-local: --size:", err)
		os.Exit(2)
	}
	if *runs < 1 {
		fmt.Fprintln(os.Stderr, "bench-local: --runs must be ≥ 1")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *total)
	defer cancel()
	// A watchdog: if something wedges past the bound, die (children die
	// with us through Pdeathsig).
	go func() {
		<-ctx.Done()
		time.Sleep(30 * time.Second)
		logf("timed out; exiting")
		os.Exit(3)
	}()

	dir, err := os.MkdirTemp(*base, "pouchfly-bench-local-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench-local:", err)
		os.Exit(1)
	}
	m := machineFacts(dir)
	logf("data under %s (%s%s), nproc %d, sha_ni %v, load %s", dir, m.DataFS, map[bool]string{true: ", tmpfs", false: ", on disk"}[m.Tmpfs], m.NProc, m.SHANI, m.LoadAvg)

	failed := false
	t0 := time.Now()
	logf("generating %s of content", fmtBytes(size))
	data := origin.Random(size, 42)
	logf("generated in %.1fs", time.Since(t0).Seconds())

	var p2p *p2pResult
	if !*skipP2P {
		prof := *profile
		if prof != "" {
			prof, _ = filepath.Abs(prof)
		}
		p2p, err = runP2P(ctx, p2pOptions{
			dir: filepath.Join(dir, "p2p"), data: data, runs: *runs, warmup: *warmup, cdnOn: *cdnOn, harness: *harness, ablation: *ablation,
			profile: prof, forceProf: *forceProf, targetBps: targetBps, timeout: *perDL, quietWait: *quiet,
		})
		if err != nil {
			logf("p2p scenario failed: %v", err)
			failed = true
		} else {
			for _, p := range []*profileResult{p2p.Profile, p2p.NoDigestProfile} {
				if p != nil {
					analyzeProfile(*goBin, p)
				}
			}
		}
		os.RemoveAll(filepath.Join(dir, "p2p"))
	}

	var rss *rssResult
	if !*skipRSS && ctx.Err() == nil {
		binDir := filepath.Join(dir, "bin")
		root, err := modRoot(*goBin)
		if err == nil {
			logf("building dfget and supernode into %s", binDir)
			err = buildBinaries(ctx, *goBin, root, binDir)
		}
		if err == nil {
			rdir := filepath.Join(dir, "procs")
			os.MkdirAll(rdir, 0o755)
			rss, err = runRSS(ctx, rssOptions{dir: rdir, binDir: binDir, data: data, cdnOn: *cdnOn, timeout: *perDL, quietWait: *quiet})
			if err != nil && rss != nil {
				rss.Err = err.Error()
			}
			if *keep {
				logf("agent logs kept in %s", rdir)
			}
		}
		if err != nil {
			logf("rss scenario failed: %v", err)
			failed = true
			if !*keep {
				// Keep the processes' logs, drop their data.
				logs := filepath.Join(os.TempDir(), filepath.Base(dir)+"-logs")
				os.MkdirAll(logs, 0o755)
				ls, _ := filepath.Glob(filepath.Join(dir, "procs", "*.log"))
				for _, l := range ls {
					if b, err := os.ReadFile(l); err == nil {
						os.WriteFile(filepath.Join(logs, filepath.Base(l)), b, 0o644)
					}
				}
				logf("process logs copied to %s", logs)
			}
		}
	}

	var sched []schedBench
	if *schedFile != "" {
		var complete bool
		if sched, complete, err = parseSchedBench(*schedFile); err != nil || len(sched) == 0 || !complete {
			logf("scheduler benchmarks: err %v, %d results, run ok %v (see %s)", err, len(sched), complete, *schedFile)
			failed = true
		}
	}

	objs := buildReport(m, size, *runs, p2p, rss, sched)
	printTable(os.Stdout, m, size, *runs, p2p, rss, sched)
	if *report != "" {
		b, _ := json.MarshalIndent(objs, "", "  ")
		if err := os.WriteFile(*report, append(b, '\n'), 0o644); err != nil {
			logf("report: %v", err)
			failed = true
		} else {
			logf("report written to %s", *report)
		}
	}
	if *keep {
		logf("data kept in %s", dir)
	} else {
		os.RemoveAll(dir)
	}
	if failed {
		os.Exit(1)
	}
}

func modRoot(goBin string) (string, error) {
	out, err := exec.Command(goBin, "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("not inside the module (run from the repository)")
	}
	return filepath.Dir(mod), nil
}

// percentile by nearest rank over v (sorted in place).
func percentile(v []float64, p float64) float64 {
	if len(v) == 0 {
		return 0
	}
	sort.Float64s(v)
	i := int(math.Ceil(p/100*float64(len(v)))) - 1
	return v[max(0, min(i, len(v)-1))]
}

func buildReport(m Machine, size int64, runs int, p2p *p2pResult, rss *rssResult, sched []schedBench) []map[string]any {
	var objs []map[string]any
	mo := map[string]any{"scenario": "machine"}
	b, _ := json.Marshal(m)
	json.Unmarshal(b, &mo)
	mo["scenario"] = "machine"
	objs = append(objs, mo)
	if p2p != nil {
		var secs, cpu []float64
		var peerB, cdnB, originB, cdnEgress int64
		ok, failedRuns := true, 0
		for _, r := range p2p.Runs {
			if r.Err != "" || !r.DigestOK {
				ok = false
				failedRuns++
				continue
			}
			secs = append(secs, r.Seconds)
			cpu = append(cpu, r.CPUSecondsPerGB)
			peerB += r.Received["peer"]
			cdnB += r.Received["cdn"]
			originB += r.Received["origin"]
			cdnEgress += r.CDNEgressBytes
		}
		best, med := bestMedian(p2p.Runs)
		notes := fmt.Sprintf("%d downloads (after %d warm-up downloads, reported apart) of the task by a fresh in-process agent from one seeded agent over loopback, no caps; "+
			"CDN during the measured downloads: %v; consumer discards the bytes (the stream verifies the whole digest); "+
			"cpu_seconds_per_gb = median over runs of whole-machine busy CPU (/proc/stat) per 1e9 bytes delivered; data on %s",
			runs, len(p2p.Warmup), p2p.CDNDuringP2P, m.DataFS)
		o := map[string]any{
			"scenario": "p2p-loopback", "hosts": 2, "blob_bytes": size, "host_cap_mbit": 0, "origin_cap_mbit": 0,
			"origin_egress_bytes": p2p.OriginEgress, "supernode_egress_bytes": cdnEgress, "p2p_bytes": peerB,
			"cdn_bytes": cdnB, "peer_origin_bytes": originB,
			"cpu_seconds_per_gb": round(percentile(append([]float64(nil), cpu...), 50), 3),
			"seconds":            map[string]float64{"p50": round(percentile(append([]float64(nil), secs...), 50), 3), "p99": round(percentile(append([]float64(nil), secs...), 99), 3), "max": round(percentile(append([]float64(nil), secs...), 100), 3)},
			"limit_seconds":      0, "digests_ok": ok, "failed_hosts": failedRuns,
			"throughput_bytes_per_sec": map[string]float64{"best": round(best, 0), "median": round(med, 0)},
			"target_bytes_per_sec":     targetBps, "target_met": best >= targetBps,
			"notes": notes, "detail": p2p,
		}
		var bgMax float64
		contended := 0
		for _, r := range p2p.Runs {
			bgMax = max(bgMax, r.BackgroundCores)
			if r.BackgroundCores >= 0.5 {
				contended++
			}
		}
		o["other_load_busy_cores_max"], o["contended_runs"] = round(bgMax, 2), contended
		objs = append(objs, o)
	}
	if rss != nil {
		o := map[string]any{
			"scenario": "agent-rss", "hosts": 2, "blob_bytes": size, "host_cap_mbit": 0, "origin_cap_mbit": 0,
			"p2p_bytes": rss.Received["peer"], "cdn_bytes": rss.Received["cdn"], "cpu_seconds_per_gb": round(rss.CPUSecondsPerGB, 3), "digests_ok": rss.DigestOK, "failed_hosts": map[bool]int{true: 0, false: 1}[rss.DigestOK],
			"seconds":                map[string]float64{"p50": round(rss.Seconds, 3), "p99": round(rss.Seconds, 3), "max": round(rss.Seconds, 3)},
			"limit_seconds":          0,
			"agent_a_peak_rss_bytes": rss.PeakA, "agent_b_peak_rss_bytes": rss.PeakB,
			"target_rss_bytes": targetRSS, "target_met": rss.PeakA <= targetRSS && rss.PeakB <= targetRSS && rss.PeakA > 0 && rss.PeakB > 0,
			"notes": "real processes: supernode + two `dfget daemon` on 127.0.0.2/.21/.22; A downloads the task via the CDN, then B downloads it through its unix socket (bytes discarded); " +
				"peaks are VmHWM from /proc/<pid>/status, reset with clear_refs between phases",
			"detail": rss,
		}
		objs = append(objs, o)
	}
	if len(sched) > 0 {
		objs = append(objs, map[string]any{
			"scenario": "scheduler-1000", "hosts": 1000, "benchmarks": sched,
			"notes": "go test -bench of ./scheduler/: ChooseParents over 1000 candidates, NeedParents/N with N peers on one task (100, 1000, 10000), Register1000 = registering a whole 1000-host swarm (per op)",
		})
	}
	return objs
}

func round(v float64, digits int) float64 {
	p := math.Pow(10, float64(digits))
	return math.Round(v*p) / p
}
