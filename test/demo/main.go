// Command pouchfly-demo (`make demo`) shows Pouchfly on one machine with
// real processes: an origin (in process, 127.0.0.1), a `supernode` child
// process (127.0.0.2) and N `dfget daemon` child processes (127.0.0.11…),
// all downloading one generated file at once through their local sockets.
// It prints a per-host table and a summary and writes a report in the
// DESIGN.md §5 format.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/pouchfly/pouchfly/internal/units"
)

const usage = `pouchfly-demo: an origin, a supernode and N peer agents on this machine's
loopback addresses share one generated file.

  origin      in this process on 127.0.0.1 (serves a generated file)
  supernode   bin/supernode, child process on 127.0.0.2
  agents      bin/dfget daemon, child processes host-1…host-N on 127.0.0.11…

Every agent downloads the file at once through its local socket, with the
file's digest; the demo prints seconds, MiB/s and where the bytes came from
per host, then origin and supernode egress, the P2P share and CPU per GB,
and writes the report (JSON, DESIGN.md §5). Child logs go to a temporary
directory that is removed on exit (also on Ctrl-C or failure; --keep keeps
it). Exit status: 0 when every host got the right bytes, 1 otherwise, 2 for
bad flags.

Usage:
  pouchfly-demo [flags]

Flags:
`

func main() {
	os.Exit(mainExit(os.Args[1:]))
}

func mainExit(args []string) int {
	o := defaultOptions()
	fs := pflag.NewFlagSet("pouchfly-demo", pflag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(os.Stderr, usage)
		fs.PrintDefaults()
	}
	size := fs.String("size", units.Format(o.Size), "size of the generated file (e.g. 256MiB, 1GiB, 16M)")
	fs.IntVar(&o.Peers, "peers", o.Peers, "number of peer agents (1..200)")
	fs.StringVar(&o.Report, "report", o.Report, "where to write the JSON report (\"\" to skip)")
	fs.DurationVar(&o.Timeout, "timeout", o.Timeout, "bound on the whole run (shutdown adds at most --stop-timeout)")
	fs.StringVar(&o.BinDir, "bin", o.BinDir, "directory holding the supernode and dfget binaries (make build)")
	fs.Uint64Var(&o.Seed, "seed", o.Seed, "seed of the generated file's content")
	fs.BoolVar(&o.Keep, "keep", o.Keep, "keep the temporary directory (data dirs, sockets, logs) for inspection")
	fs.DurationVar(&o.StopTimeout, "stop-timeout", o.StopTimeout, "how long a child may take to exit after SIGTERM before SIGKILL")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(os.Stderr, "pouchfly-demo:", err)
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "pouchfly-demo: unexpected arguments %q (see --help)\n", fs.Args())
		return 2
	}
	n, err := units.ParseBytes(*size)
	if err != nil {
		fmt.Fprintln(os.Stderr, "pouchfly-demo: --size:", err)
		return 2
	}
	o.Size = n
	o.Out = os.Stdout
	if err := o.validate(); err != nil {
		fmt.Fprintln(os.Stderr, "pouchfly-demo:", err)
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		// After the first Ctrl-C the demo cleans up; a second one kills it
		// (the children then die with it: they have a parent-death signal).
		<-ctx.Done()
		stop()
	}()
	_, err = run(ctx, o)
	switch {
	case err == nil:
		return 0
	case ctx.Err() != nil && errors.Is(err, context.Canceled):
		fmt.Fprintln(os.Stderr, "pouchfly-demo: interrupted; everything was stopped and cleaned up")
	default:
		fmt.Fprintln(os.Stderr, "pouchfly-demo: FAILED:", err)
	}
	return 1
}

// defaultOptions are the flag defaults.
func defaultOptions() options {
	return options{
		Size:        256 << 20,
		Peers:       8,
		Report:      "demo-report.json",
		Timeout:     10 * time.Minute,
		BinDir:      "bin",
		Seed:        1,
		StopTimeout: 5 * time.Second,
	}
}
