// Command pouchfly-chaos (`make chaos`, issue #7) runs the chaos suite of
// package test/chaos on the multi-host testbed (package test/testbed:
// network namespaces on a bridge, tbf caps both ways, real supernode and
// `dfget daemon` processes): agents SIGKILLed and restarted, the supernode
// SIGKILLed and restarted, a malicious host, origin faults, a full disk,
// 1000 concurrent requests. It writes chaos-report.json (a JSON array of
// DESIGN.md §5 objects with each scenario's figures and checks), prints a
// table, and exits non-zero when a check failed. Root only. Everything
// it made (namespaces, mounts, processes, directories) is removed on exit,
// on Ctrl-C and at --timeout.
package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/pouchfly/pouchfly/test/chaos"
	"github.com/pouchfly/pouchfly/test/testbed"
)

type options struct {
	bin, report, table string
	hosts              int
	hostCap            float64
	originCap, snCap   float64
	scenarios          []string
	timeout            time.Duration
	keep               bool
}

func main() {
	chaos.RegisterRoles()
	testbed.RoleMain()
	os.Exit(mainExit(os.Args[1:]))
}

func mainExit(args []string) int {
	var o options
	var names []string
	for _, s := range chaos.Scenarios() {
		names = append(names, s.Short)
	}
	fs := pflag.NewFlagSet("pouchfly-chaos", pflag.ContinueOnError)
	fs.StringVar(&o.bin, "bin", "bin", "directory with the supernode and dfget binaries")
	fs.IntVar(&o.hosts, "hosts", 16, "number of hosts")
	fs.Float64Var(&o.hostCap, "host-cap", 50, "per-host cap, Mbit/s, both directions")
	fs.Float64Var(&o.originCap, "origin-cap", 200, "origin host cap, Mbit/s")
	fs.Float64Var(&o.snCap, "supernode-cap", 200, "supernode host cap, Mbit/s")
	fs.StringSliceVar(&o.scenarios, "scenarios", names, "scenarios to run, in this order")
	fs.StringVar(&o.report, "report", "chaos-report.json", "JSON report (array of DESIGN.md §5 objects)")
	fs.StringVar(&o.table, "table", "", "also write the table (markdown) here")
	fs.DurationVar(&o.timeout, "timeout", 30*time.Minute, "bound on the whole run")
	fs.BoolVar(&o.keep, "keep", false, "keep the testbed's work directory (logs)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(os.Stderr, "pouchfly-chaos:", err)
		return 2
	}
	var run []chaos.Scenario
	for _, name := range o.scenarios {
		i := slices.IndexFunc(chaos.Scenarios(), func(s chaos.Scenario) bool { return s.Short == name })
		if i < 0 {
			fmt.Fprintf(os.Stderr, "pouchfly-chaos: unknown scenario %q (%s)\n", name, strings.Join(names, ", "))
			return 2
		}
		run = append(run, chaos.Scenarios()[i])
	}
	if err := testbed.CheckPrereqs(); err != nil {
		fmt.Fprintln(os.Stderr, "pouchfly-chaos:", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	start := time.Now()
	results, err := runAll(ctx, o, run)
	if len(results) > 0 {
		if werr := chaos.WriteResults(o.report, results); werr != nil && err == nil {
			err = werr
		}
		var tbl bytes.Buffer
		chaos.Table(&tbl, results)
		fmt.Printf("\n%s\n", tbl.String())
		if o.table != "" {
			if werr := os.WriteFile(o.table, tbl.Bytes(), 0o644); werr != nil && err == nil {
				err = werr
			}
		}
		fmt.Printf("report: %s (%d scenarios, %.0fs)\n", o.report, len(results), time.Since(start).Seconds())
	}
	failed := 0
	for _, r := range results {
		for _, c := range r.Failed() {
			failed++
			fmt.Printf("FAILED %s: %s: %s\n", r.Scenario, c.Name, c.Detail)
		}
	}
	switch {
	case err != nil && ctx.Err() != nil:
		fmt.Fprintln(os.Stderr, "pouchfly-chaos: interrupted or out of time (--timeout); everything was cleaned up:", err)
		return 1
	case err != nil:
		fmt.Fprintln(os.Stderr, "pouchfly-chaos: FAILED:", err)
		return 1
	case failed > 0:
		fmt.Fprintf(os.Stderr, "pouchfly-chaos: %d checks failed\n", failed)
		return 1
	}
	return 0
}

// runAll builds one testbed and runs the scenarios on it; it returns the
// results so far also on error.
func runAll(ctx context.Context, o options, run []chaos.Scenario) (results []*chaos.Result, err error) {
	tb, err := testbed.New(ctx, testbed.Config{Hosts: o.hosts, HostCapMbit: o.hostCap, OriginCapMbit: o.originCap,
		SupernodeCapMbit: o.snCap, Keep: o.keep, Log: os.Stdout})
	if err != nil {
		return nil, err
	}
	r := testbed.NewRunner(tb, testbed.RunnerOptions{BinDir: o.bin, Log: os.Stdout})
	env := &chaos.TestbedEnv{R: r, RunTimeout: 10 * time.Minute}
	defer func() {
		env.Stop() // processes and mounts of a scenario cut short
		if cerr := tb.Close(); cerr != nil {
			fmt.Fprintln(os.Stderr, "pouchfly-chaos: cleanup:", cerr)
			if err == nil {
				err = cerr
			}
		} else {
			fmt.Println("testbed removed (namespaces, veths, bridge, qdiscs, processes, mounts, work directory)")
		}
	}()
	if err := r.StartOrigin(ctx); err != nil {
		return nil, err
	}
	p := chaos.TestbedProfile()
	p.Hosts = min(p.Hosts, o.hosts)
	for _, s := range run {
		t0 := time.Now()
		fmt.Printf("== %s …\n", s.Short)
		rs, err := chaos.Run(ctx, env, p, s)
		results = append(results, rs...)
		for _, res := range rs {
			verdict := "ok"
			if !res.Passed() {
				verdict = "FAILED"
			}
			fmt.Printf("== %-24s %s  p50 %.2fs max %.2fs  origin egress %.2f×  failed %d  [%.0fs]\n", res.Scenario, verdict,
				res.Seconds.P50, res.Seconds.Max, res.Figures["origin_egress_ratio"], res.FailedHosts, time.Since(t0).Seconds())
			for _, c := range res.Checks {
				mark := "  ok  "
				if !c.OK {
					mark = "  FAIL"
				}
				fmt.Printf("%s %s: %s\n", mark, c.Name, c.Detail)
			}
		}
		if err != nil {
			return results, fmt.Errorf("%s: %w", s.Short, err)
		}
	}
	return results, nil
}
