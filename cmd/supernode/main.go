// Command supernode runs the Pouchfly scheduler and CDN seeder.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/pouchfly/pouchfly/internal/cliconfig"
	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/internal/profiling"
	"github.com/pouchfly/pouchfly/internal/tlsconfig"
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
		stopProfile, err := profiling.Start("supernode")
		if err != nil {
			return err
		}
		defer stopProfile()
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
	c.AddCommand(genCertsCmd())
	return c
}

func genCertsCmd() *cobra.Command {
	var (
		dir   string
		hosts []string
		days  int
	)
	c := &cobra.Command{
		Use:   "gen-certs --dir DIR --hosts a,b,...",
		Short: "Generate a test CA and one certificate per host for TLS and mutual TLS",
		Long: `gen-certs writes a test PKI into DIR: ca.pem and ca-key.pem (an ECDSA P-256
CA), and for each host (an IP or a DNS name, as agents and peers dial it)
HOST.pem and HOST-key.pem, signed by the CA, valid both as a server and as a
client certificate. Keep ca-key.pem off the hosts. For production use your
own CA; docs/reliability.md shows the same with openssl.

supernode.yaml:  tls: {cert: SUPERNODE.pem, key: SUPERNODE-key.pem, client_ca: ca.pem, require_client_cert: true}
dfget.yaml:      peer: {tls: {ca: ca.pem, cert: HOST.pem, key: HOST-key.pem, require_client_cert: true}}`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if dir == "" || len(hosts) == 0 || days < 1 {
				return fmt.Errorf("gen-certs: --dir, --hosts and --days ≥ 1 are required: %w", errdefs.ErrInvalid)
			}
			pki, err := tlsconfig.Generate(dir, hosts, time.Duration(days)*24*time.Hour)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "CA: %s (key %s)\n", pki.CA, pki.CAKey)
			for _, h := range hosts {
				p := pki.Hosts[strings.TrimSpace(h)]
				fmt.Fprintf(cmd.OutOrStdout(), "%s: %s %s\n", h, p.Cert, p.Key)
			}
			return nil
		},
	}
	c.Flags().StringVar(&dir, "dir", "", "output directory")
	c.Flags().StringSliceVar(&hosts, "hosts", nil, "hosts (IPs or DNS names) to issue certificates for, comma-separated")
	c.Flags().IntVar(&days, "days", 365, "validity in days")
	return c
}
