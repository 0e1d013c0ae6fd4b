// Command pouchfly-demo (`make demo`) shows Pouchfly on one machine with
// real processes: an origin and a token-auth OCI registry (in process,
// 127.0.0.1 and 127.0.0.3), a `supernode` child process (127.0.0.2) and N
// `dfget daemon` child processes (127.0.0.11…). First all agents download
// one generated file at once through their local sockets ("demo-file"),
// then all hosts pull one generated multi-layer image at once, each through
// its own agent's registry mirror ("demo-image"). It prints per-host (and
// per-layer) tables and summaries and writes a report in the DESIGN.md §5
// format, one object per scenario.
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
)

const usage = `pouchfly-demo: an origin, a registry, a supernode and N peer agents on this
machine's loopback addresses share one generated file, then one generated
container image.

  origin      in this process on 127.0.0.1 (serves a generated file)
  registry    in this process on 127.0.0.3: a distribution registry with
              token auth holding a generated multi-platform image demo/app:v1
  supernode   bin/supernode, child process on 127.0.0.2
  agents      bin/dfget daemon, child processes host-1…host-N on 127.0.0.11…,
              each serving its registry mirror on its own address

Scenario "demo-file": every agent downloads the file at once through its
local socket, with the file's digest. Scenario "demo-image": every host
pulls the linux/amd64 image at once through its own agent's mirror, as a
container runtime would (index, manifest, then config and layers, a few
blobs at a time), checking every digest. For each, the demo prints seconds,
MiB/s and where the bytes came from per host (and per layer for the image),
then origin/registry and supernode egress, the P2P share and CPU per GB, and
writes the report (a JSON array of DESIGN.md §5 objects, one per scenario).
Child logs go to a temporary directory that is removed on exit (also on
Ctrl-C or failure; --keep keeps it). Exit status: 0 when every host got the
right bytes in both scenarios, 1 otherwise, 2 for bad flags.

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
	fs.Uint64Var(&o.Seed, "seed", o.Seed, "seed of the generated file's and image's content")
	fs.BoolVar(&o.Keep, "keep", o.Keep, "keep the temporary directory (data dirs, sockets, logs) for inspection")
	fs.DurationVar(&o.StopTimeout, "stop-timeout", o.StopTimeout, "how long a child may take to exit after SIGTERM before SIGKILL")
	fs.IntVar(&o.ImageLayers, "image-layers", o.ImageLayers, "layers per platform of the generated image (0 skips the image scenario)")
	layerSize := fs.String("image-layer-size", formatSizeRange(o.ImageLayerMin, o.ImageLayerMax), "size of each image layer: SIZE, or MIN-MAX for sizes drawn in between (seeded by --seed)")
	fs.IntVar(&o.ImageParallel, "image-parallel", o.ImageParallel, "blobs each host fetches at once during the image pull (docker's default is 3)")
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
	if o.ImageLayerMin, o.ImageLayerMax, err = parseSizeRange(*layerSize); err != nil {
		fmt.Fprintln(os.Stderr, "pouchfly-demo: --image-layer-size:", err)
		return 2
	}
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
		// 4 layers of 8–32 MiB per platform (linux/amd64, linux/arm64;
		// the last layer is per platform, the others shared).
		ImageLayers:   4,
		ImageLayerMin: 8 << 20,
		ImageLayerMax: 32 << 20,
		ImageParallel: 3,
	}
}

// parseSizeRange reads "16MiB" (min = max) or "8MiB-32MiB".
func parseSizeRange(s string) (lo, hi int64, err error) {
	a, b, isRange := strings.Cut(s, "-")
	if lo, err = units.ParseBytes(a); err != nil {
		return 0, 0, err
	}
	hi = lo
	if isRange {
		if hi, err = units.ParseBytes(b); err != nil {
			return 0, 0, err
		}
	}
	if hi < lo {
		return 0, 0, fmt.Errorf("%q: the maximum is below the minimum", s)
	}
	return lo, hi, nil
}

// formatSizeRange is parseSizeRange's inverse.
func formatSizeRange(lo, hi int64) string {
	if lo == hi {
		return units.Format(lo)
	}
	return units.Format(lo) + "-" + units.Format(hi)
}
