// Command supernode runs the Pouchfly scheduler and CDN seeder.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/pouchfly/pouchfly/internal/cliconfig"
	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/supernode"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := rootCmd()
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "supernode:", err)
		if errors.Is(err, errdefs.ErrInvalid) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

func rootCmd() *cobra.Command {
	var file string
	c := &cobra.Command{
		Use:   "supernode",
		Short: "Pouchfly supernode: scheduler, CDN seeder and piece server",
		Long: `supernode schedules who fetches which piece from whom, fetches each blob from
its origin once (the CDN seeder) and serves those pieces to hosts.

Ports (defaults): 8002 gRPC sessions from agents, 8001 CDN pieces,
8080 /metrics, /healthz, the dashboard (/) and the API (/api/v1/…:
preheat jobs, registry webhook, dashboard state and events).

Configuration: defaults (supernode config default), then --config FILE (YAML),
then POUCHFLY_* environment variables (POUCHFLY_SCHEDULER_MAX_PARENTS=6), then flags.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	f := c.Flags()
	f.StringVar(&file, "config", "", "YAML config file")
	f.String("listen", "", "gRPC listen address for agents")
	f.String("piece-listen", "", "CDN piece server listen address")
	f.String("advertise-ip", "", "address agents reach the piece server at")
	f.String("http-listen", "", "metrics/health listen address")
	f.String("data-dir", "", "CDN cache directory")
	f.String("log-level", "", "debug, info, warn or error")
	f.Bool("no-cdn", false, "do not seed: hosts fetch from the origin themselves")
	c.RunE = func(cmd *cobra.Command, args []string) error {
		cfg := supernode.DefaultNodeConfig()
		flags := map[string]*pflag.Flag{
			"listen": f.Lookup("listen"), "piece_listen": f.Lookup("piece-listen"), "advertise_ip": f.Lookup("advertise-ip"),
			"http_listen": f.Lookup("http-listen"), "data_dir": f.Lookup("data-dir"), "log_level": f.Lookup("log-level"),
		}
		if err := cliconfig.Load(&cfg, file, flags); err != nil {
			return err
		}
		if v, _ := f.GetBool("no-cdn"); v {
			cfg.CDNEnabled = false
		}
		if err := cfg.Validate(); err != nil {
			return err
		}
		var level slog.Level
		level.UnmarshalText([]byte(cfg.LogLevel))
		log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
		n, err := supernode.NewNode(cfg, supernode.NodeOptions{Logger: log})
		if err != nil {
			return err
		}
		return n.Run(cmd.Context())
	}
	c.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return fmt.Errorf("%v (see supernode --help): %w", err, errdefs.ErrInvalid)
	})
	cfgCmd := &cobra.Command{Use: "config", Short: "Show supernode configuration"}
	cfgCmd.AddCommand(&cobra.Command{
		Use:   "default",
		Short: "Print the default supernode.yaml",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := cliconfig.Print(supernode.DefaultNodeConfig())
			fmt.Print(s)
			return err
		},
	})
	c.AddCommand(cfgCmd)
	c.AddCommand(preheatCmd())
	return c
}
