// Command pouchfly-bench (`make bench`) runs the multi-host testbed
// benchmark of issue #4: on one testbed (package test/testbed: network
// namespaces, tbf caps both ways, real processes), for each number of
// hosts N, three modes side by side —
//
//	direct      every host GETs the blob from the origin
//	p2p         Pouchfly: supernode + one dfget daemon per host
//	bittorrent  anacrolix/torrent v1.59.1: tracker + seeder on the origin host, one client per host
//
// — and writes bench-report.json (one DESIGN.md §5 object per mode and
// N), a markdown table, PNG plots (gonum/plot) and, with --docs, the
// benchmarks page. Root only.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/pouchfly/pouchfly/internal/units"
	"github.com/pouchfly/pouchfly/test/testbed"
)

type options struct {
	size                      string
	hosts                     []int
	modes                     []string
	hostCap, originCap, snCap float64
	bin, report, table        string
	imgDir, docs              string
	timeout, runTimeout       time.Duration
	keep                      bool
	agentSet, snSet           map[string]string
	command                   string
	fromReport                string
	// date is when the results were made (the docs show it).
	date time.Time
}

func main() {
	testbed.RoleMain()
	os.Exit(mainExit(os.Args[1:]))
}

func mainExit(args []string) int {
	var o options
	fs := pflag.NewFlagSet("pouchfly-bench", pflag.ContinueOnError)
	fs.StringVar(&o.size, "size", "64MiB", "blob size")
	fs.IntSliceVar(&o.hosts, "hosts", []int{1, 2, 4, 8, 16, 32}, "numbers of hosts to run")
	fs.StringSliceVar(&o.modes, "modes", []string{"direct", "p2p", "bittorrent"}, "modes to run, in this order for each N")
	fs.Float64Var(&o.hostCap, "host-cap", 50, "per-host cap, Mbit/s, both directions")
	fs.Float64Var(&o.originCap, "origin-cap", 200, "origin host cap, Mbit/s")
	fs.Float64Var(&o.snCap, "supernode-cap", 200, "supernode host cap, Mbit/s")
	fs.StringVar(&o.bin, "bin", "bin", "directory with the supernode and dfget binaries")
	fs.StringVar(&o.report, "report", "bench-report.json", "JSON report (array, one object per mode and N)")
	fs.StringVar(&o.table, "table", "bench-table.md", "markdown table (\"\" to skip)")
	fs.StringVar(&o.imgDir, "img-dir", "bench-img", "directory for the PNG plots (\"\" to skip)")
	fs.StringVar(&o.docs, "docs", "", "also write this benchmarks page (docs/benchmarks.md), linking the plots")
	fs.DurationVar(&o.timeout, "timeout", 90*time.Minute, "bound on the whole benchmark")
	fs.DurationVar(&o.runTimeout, "run-timeout", 10*time.Minute, "bound on one mode's downloads")
	fs.BoolVar(&o.keep, "keep", false, "keep the testbed's work directory (logs)")
	fs.StringToStringVar(&o.agentSet, "agent-set", nil, "dfget daemon config overrides, e.g. peer.max_parallel_pieces=8")
	fs.StringToStringVar(&o.snSet, "supernode-set", nil, "supernode config overrides, e.g. scheduler.cdn_fanout=3")
	fs.StringVar(&o.command, "command", "", "the command line to show in the docs (default: this one)")
	fs.StringVar(&o.fromReport, "from-report", "", "run nothing: redo the table, plots and docs from this earlier report")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(os.Stderr, "pouchfly-bench:", err)
		return 2
	}
	o.command = strings.TrimSpace(o.command)
	if o.command == "" {
		o.command = strings.Join(append([]string{filepath.Base(os.Args[0])}, args...), " ")
	}
	size, err := units.ParseBytes(o.size)
	if err != nil || size < 1 {
		fmt.Fprintln(os.Stderr, "pouchfly-bench: --size:", err)
		return 2
	}
	for _, m := range o.modes {
		if !slices.Contains([]string{"direct", "p2p", "bittorrent"}, m) {
			fmt.Fprintf(os.Stderr, "pouchfly-bench: unknown mode %q\n", m)
			return 2
		}
	}
	if len(o.hosts) == 0 || slices.Min(o.hosts) < 1 {
		fmt.Fprintln(os.Stderr, "pouchfly-bench: --hosts must be positive")
		return 2
	}
	o.date = time.Now()
	if o.fromReport != "" {
		if st, err := os.Stat(o.fromReport); err == nil {
			o.date = st.ModTime()
		}
		rows, err := rowsFromReport(o.fromReport)
		if err == nil {
			if o.report == o.fromReport {
				o.report = "" // already there
			}
			err = writeOutputs(o, rows)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "pouchfly-bench:", err)
			return 1
		}
		return 0
	}
	if err := testbed.CheckPrereqs(); err != nil {
		fmt.Fprintln(os.Stderr, "pouchfly-bench:", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	reps, err := run(ctx, o, size)
	if len(reps) > 0 {
		if werr := writeOutputs(o, reps); werr != nil {
			fmt.Fprintln(os.Stderr, "pouchfly-bench: writing outputs:", werr)
			if err == nil {
				err = werr
			}
		}
	}
	if err != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(os.Stderr, "pouchfly-bench: interrupted or out of time (--timeout); everything was cleaned up:", err)
		} else {
			fmt.Fprintln(os.Stderr, "pouchfly-bench: FAILED:", err)
		}
		return 1
	}
	return 0
}

// run builds one testbed with max(hosts) hosts and runs every mode for
// every N on it. It returns the reports made so far also on error.
func run(ctx context.Context, o options, size int64) (reps []row, err error) {
	hosts := slices.Clone(o.hosts)
	slices.Sort(hosts)
	hosts = slices.Compact(hosts)
	tb, err := testbed.New(ctx, testbed.Config{Hosts: hosts[len(hosts)-1], HostCapMbit: o.hostCap,
		OriginCapMbit: o.originCap, SupernodeCapMbit: o.snCap, Keep: o.keep, Log: os.Stdout})
	if err != nil {
		return nil, err
	}
	defer func() {
		if cerr := tb.Close(); cerr != nil {
			fmt.Fprintln(os.Stderr, "pouchfly-bench: cleanup:", cerr)
			if err == nil {
				err = cerr
			}
		} else {
			fmt.Println("testbed removed (namespaces, veths, bridge, qdiscs, processes, work directory)")
		}
	}()
	r := testbed.NewRunner(tb, testbed.RunnerOptions{BinDir: o.bin, AgentSet: o.agentSet, SupernodeSet: o.snSet,
		RunTimeout: o.runTimeout, Log: os.Stdout})
	if err := r.StartOrigin(ctx); err != nil {
		return nil, err
	}
	var failed []string
	for _, n := range hosts {
		for _, m := range o.modes {
			start := time.Now()
			var run *testbed.Run
			switch m {
			case "direct":
				run, err = r.RunDirect(ctx, n, size)
			case "p2p":
				run, err = r.RunP2P(ctx, n, size)
			case "bittorrent":
				run, err = runBitTorrent(ctx, r, n, size)
			}
			if err != nil {
				return reps, fmt.Errorf("%s N=%d: %w", m, n, err)
			}
			rep := run.Report(tb.Config())
			reps = append(reps, row{Rep: rep, TestbedCPU: run.TestbedCPUPerGB(), Background: run.Window.BackgroundCPUs})
			fmt.Printf("== %-10s N=%-3d p50 %6.2fs  p99 %6.2fs  max %6.2fs  (limit %.2fs, max/limit %.2f)  origin %.2f×  supernode %.2f×  %.2f CPU-s/GB (testbed-only %.2f)  failed %d  [%.0fs]\n",
				m, n, rep.Seconds.P50, rep.Seconds.P99, rep.Seconds.Max, rep.LimitSeconds, ratio(rep.Seconds.Max, rep.LimitSeconds),
				float64(rep.OriginEgressBytes)/float64(size), float64(rep.SupernodeEgressBytes)/float64(size),
				rep.CPUSecondsPerGB, run.TestbedCPUPerGB(), rep.FailedHosts, time.Since(start).Seconds())
			if rep.FailedHosts > 0 || !rep.DigestsOK {
				failed = append(failed, m+" N="+strconv.Itoa(n))
			}
		}
	}
	if len(failed) > 0 {
		return reps, fmt.Errorf("hosts failed in %s (see notes in the report)", strings.Join(failed, ", "))
	}
	return reps, nil
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}
