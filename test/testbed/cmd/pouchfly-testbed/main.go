// Command pouchfly-testbed builds the multi-host testbed (package
// test/testbed: network namespaces on a bridge, tbf caps both ways, real
// origin, supernode and dfget daemon processes inside) and runs one
// scenario on it, or removes stale testbeds. Root only.
//
//	pouchfly-testbed run   [--hosts 8] [--size 64MiB] [--mode direct,p2p] [caps, config overrides…]
//	pouchfly-testbed clean
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/pouchfly/pouchfly/internal/units"
	"github.com/pouchfly/pouchfly/test/report"
	"github.com/pouchfly/pouchfly/test/testbed"
)

const usage = `pouchfly-testbed: N hosts as network namespaces on a bridge (its own
namespace), no default route anywhere, tc tbf caps both ways per host; an
origin host and a supernode host. Root only.

  pouchfly-testbed run [flags]   build it, run the scenarios, print a table,
                                 write the report, remove everything
  pouchfly-testbed clean         remove stale testbeds of earlier runs

Flags of run:
`

func main() {
	testbed.RoleMain()
	os.Exit(mainExit(os.Args[1:]))
}

func mainExit(args []string) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(os.Stderr, usage)
		flags(&opts{}).PrintDefaults()
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch args[0] {
	case "clean":
		if err := testbed.CheckPrereqs(); err != nil {
			fmt.Fprintln(os.Stderr, "pouchfly-testbed:", err)
			return 1
		}
		removed, err := testbed.CleanStale(ctx, testbed.DefaultPrefix, os.Stdout)
		fmt.Printf("removed %d stale namespaces %s\n", len(removed), strings.Join(removed, " "))
		if err != nil {
			fmt.Fprintln(os.Stderr, "pouchfly-testbed:", err)
			return 1
		}
		return 0
	case "run":
	default:
		fmt.Fprintf(os.Stderr, "pouchfly-testbed: unknown command %q (run, clean)\n", args[0])
		return 2
	}
	var o opts
	fs := flags(&o)
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(os.Stderr, "pouchfly-testbed:", err)
		return 2
	}
	size, err := units.ParseBytes(o.size)
	if err != nil {
		fmt.Fprintln(os.Stderr, "pouchfly-testbed: --size:", err)
		return 2
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	if err := run(ctx, o, size); err != nil {
		fmt.Fprintln(os.Stderr, "pouchfly-testbed: FAILED:", err)
		return 1
	}
	return 0
}

type opts struct {
	hosts                     int
	size, report, bin         string
	modes                     []string
	hostCap, originCap, snCap float64
	timeout                   time.Duration
	keep                      bool
	agentSet, snSet           map[string]string
}

func flags(o *opts) *pflag.FlagSet {
	fs := pflag.NewFlagSet("run", pflag.ContinueOnError)
	fs.IntVar(&o.hosts, "hosts", 8, "number of downloading hosts")
	fs.StringVar(&o.size, "size", "64MiB", "size of the generated file")
	fs.StringSliceVar(&o.modes, "mode", []string{"direct", "p2p"}, "scenarios: direct, p2p")
	fs.Float64Var(&o.hostCap, "host-cap", 50, "per-host cap, Mbit/s, both directions (0: none)")
	fs.Float64Var(&o.originCap, "origin-cap", 200, "origin host cap, Mbit/s")
	fs.Float64Var(&o.snCap, "supernode-cap", 200, "supernode host cap, Mbit/s")
	fs.StringVar(&o.bin, "bin", "bin", "directory with the supernode and dfget binaries")
	fs.StringVar(&o.report, "report", "testbed-report.json", "JSON report (\"\" to skip)")
	fs.DurationVar(&o.timeout, "timeout", 20*time.Minute, "bound on the whole run")
	fs.BoolVar(&o.keep, "keep", false, "keep the work directory (logs)")
	fs.StringToStringVar(&o.agentSet, "agent-set", nil, "dfget daemon config overrides, e.g. peer.max_parallel_pieces=8")
	fs.StringToStringVar(&o.snSet, "supernode-set", nil, "supernode config overrides, e.g. scheduler.cdn_fanout=3")
	return fs
}

func run(ctx context.Context, o opts, size int64) (err error) {
	tb, err := testbed.New(ctx, testbed.Config{Hosts: o.hosts, HostCapMbit: o.hostCap, OriginCapMbit: o.originCap,
		SupernodeCapMbit: o.snCap, Keep: o.keep, Log: os.Stdout})
	if err != nil {
		return err
	}
	defer func() {
		if cerr := tb.Close(); cerr != nil && err == nil {
			err = cerr
		}
		fmt.Println("testbed removed")
	}()
	r := testbed.NewRunner(tb, testbed.RunnerOptions{BinDir: o.bin, AgentSet: o.agentSet, SupernodeSet: o.snSet, Log: os.Stdout})
	if err := r.StartOrigin(ctx); err != nil {
		return err
	}
	var reps []report.Report
	for _, m := range o.modes {
		var run *testbed.Run
		switch m {
		case "direct":
			run, err = r.RunDirect(ctx, o.hosts, size)
		case "p2p":
			run, err = r.RunP2P(ctx, o.hosts, size)
		default:
			return fmt.Errorf("--mode %q: direct or p2p (bittorrent is in make bench)", m)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", m, err)
		}
		rep := run.Report(tb.Config())
		reps = append(reps, rep)
		fmt.Printf("%s: p50 %.2fs p99 %.2fs max %.2fs (limit %.2fs), origin egress %.2f×, supernode egress %.2f×, %.2f CPU-s/GB, failed %d\n",
			m, rep.Seconds.P50, rep.Seconds.P99, rep.Seconds.Max, rep.LimitSeconds,
			float64(rep.OriginEgressBytes)/float64(size), float64(rep.SupernodeEgressBytes)/float64(size), rep.CPUSecondsPerGB, rep.FailedHosts)
	}
	if o.report != "" {
		if err := report.WriteAll(o.report, reps); err != nil {
			return err
		}
	}
	for _, rep := range reps {
		if rep.FailedHosts > 0 || !rep.DigestsOK {
			return fmt.Errorf("%s: %d hosts failed", rep.Scenario, rep.FailedHosts)
		}
	}
	return nil
}
