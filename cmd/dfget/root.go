package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/internal/units"
)

type getOptions struct {
	output       string
	headers      []string
	digest       string
	supernodes   []string
	limitRate    units.Bytes
	timeout      durationFlag
	noBackSource bool
	socket       string
	quiet        bool
	verbose      bool
	rng          string
}

func run(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var o getOptions
	root := &cobra.Command{
		Use:   "dfget URL -O FILE",
		Short: "Download a file peer-to-peer through Pouchfly",
		Long: `dfget downloads URL to FILE through the Pouchfly P2P network: the supernode
fetches the origin once, and hosts share verified pieces among themselves.

It uses the local agent (dfget daemon) when its socket answers; otherwise it
runs a short-lived embedded peer that talks to the supernode itself. The file
appears under its final name only after every piece (and --digest, if given)
verified; on failure nothing is left behind.

` + exitCodesHelp,
		Example: `  dfget https://example.com/big.iso -O big.iso
  dfget http://registry:5000/v2/app/blobs/sha256:ab… -O layer.tar.gz --digest sha256:ab…
  dfget URL -O out --header 'Authorization: Bearer …' --supernode sn1:8002 --supernode sn2:8002
  dfget daemon --config /etc/pouchfly/dfget.yaml`,
		Args:          cobra.ArbitraryArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return fmt.Errorf("want exactly one URL (see dfget --help): %w", errdefs.ErrInvalid)
			}
			if o.output == "" {
				return fmt.Errorf("-O FILE is required: %w", errdefs.ErrInvalid)
			}
			return getFile(cmd.Context(), args[0], o)
		},
	}
	f := root.Flags()
	f.StringVarP(&o.output, "output", "O", "", "write the content to FILE (required)")
	f.StringArrayVarP(&o.headers, "header", "H", nil, "send `K: V` to the origin (repeatable; Authorization included)")
	f.StringVar(&o.digest, "digest", "", "expected content digest, sha256:<hex>; verified before FILE appears")
	f.StringArrayVar(&o.supernodes, "supernode", nil, "supernode `host:port` (repeatable, tried in order; default 127.0.0.1:8002)")
	f.Var(&o.limitRate, "limit-rate", "cap the download rate, e.g. 20M (bytes/s; embedded peer only)")
	f.Var(&o.timeout, "timeout", "give up after this long, e.g. 10m (0: no limit)")
	f.BoolVar(&o.noBackSource, "no-back-source", false, "never fetch from the origin directly, fail instead")
	f.StringVar(&o.socket, "socket", "/run/pouchfly/dfget.sock", "local agent socket")
	f.BoolVarP(&o.quiet, "quiet", "q", false, "no progress bar")
	f.BoolVarP(&o.verbose, "verbose", "v", false, "log what happens")
	f.StringVar(&o.rng, "range", "", "download only this byte range, e.g. bytes=0-1023")
	root.AddCommand(daemonCmd(), configCmd(), mirrorCmd())
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return fmt.Errorf("%v (see dfget --help): %w", err, errdefs.ErrInvalid)
	})

	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "dfget:", err)
		if errors.Is(ctx.Err(), context.Canceled) {
			return exitError
		}
	}
	return exitCode(err)
}
