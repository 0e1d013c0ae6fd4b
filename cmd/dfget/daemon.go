package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/sync/errgroup"

	"github.com/pouchfly/pouchfly/internal/cliconfig"
	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/internal/httpserver"
	"github.com/pouchfly/pouchfly/internal/profiling"
	"github.com/pouchfly/pouchfly/peer"
	"github.com/pouchfly/pouchfly/piece"
	"github.com/pouchfly/pouchfly/registryproxy"
)

// daemonConfig is dfget.yaml.
type daemonConfig struct {
	// Peer configures the P2P agent.
	Peer peer.Config `yaml:"peer"`
	// Mirror configures the OCI registry mirror (off when its listen is "").
	Mirror registryproxy.Config `yaml:"mirror"`
	// MetricsListen serves Prometheus /metrics ("" to disable).
	MetricsListen string `yaml:"metrics_listen"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `yaml:"log_level"`
}

func defaultDaemonConfig() daemonConfig {
	return daemonConfig{Peer: peer.DefaultConfig(), Mirror: registryproxy.DefaultConfig(), MetricsListen: "127.0.0.1:65003", LogLevel: "info"}
}

func (c daemonConfig) Validate() error {
	if err := c.Peer.Validate(); err != nil {
		return err
	}
	if err := c.Mirror.Validate(); err != nil {
		return err
	}
	if c.MetricsListen != "" {
		if _, _, err := net.SplitHostPort(c.MetricsListen); err != nil {
			return fmt.Errorf("metrics_listen %q: %w", c.MetricsListen, errdefs.ErrInvalid)
		}
	}
	var l slog.Level
	if err := l.UnmarshalText([]byte(c.LogLevel)); err != nil {
		return fmt.Errorf("log_level %q: %w", c.LogLevel, errdefs.ErrInvalid)
	}
	return nil
}

func configCmd() *cobra.Command {
	c := &cobra.Command{Use: "config", Short: "Show dfget daemon configuration"}
	c.AddCommand(&cobra.Command{
		Use:   "default",
		Short: "Print the default dfget.yaml",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := cliconfig.Print(defaultDaemonConfig())
			fmt.Print(s)
			return err
		},
	})
	return c
}

func daemonCmd() *cobra.Command {
	var file string
	c := &cobra.Command{
		Use:   "daemon",
		Short: "Run the peer agent (one per host)",
		Long: `dfget daemon is the per-host peer agent: it keeps a session to the supernode,
downloads pieces from other hosts, serves the pieces it holds, and answers
dfget on its local socket. It also serves an OCI registry mirror (pull only,
mirror.listen, 127.0.0.1:65001 by default; "" turns it off) for containerd,
docker and pouchd: manifests pass through to the registry, blobs go P2P.

Configuration: defaults (dfget config default), then --config FILE (YAML),
then POUCHFLY_* environment variables (POUCHFLY_PEER_ZONE=a), then flags.`,
		Args: cobra.NoArgs,
	}
	f := c.Flags()
	f.StringVar(&file, "config", "", "YAML config file")
	f.StringSlice("supernode", nil, "supernode host:port (repeatable)")
	f.String("upload-listen", "", "upload server listen address")
	f.String("ip", "", "address other hosts reach this one at")
	f.String("data-dir", "", "piece store and state directory")
	f.String("socket", "", "local API unix socket")
	f.String("zone", "", "locality label")
	f.String("host-id", "", "stable host ID")
	f.String("metrics-listen", "", "Prometheus listen address")
	f.String("upload-rate", "", "upload cap, e.g. 50M (bytes/s)")
	f.String("download-rate", "", "download cap, e.g. 50M (bytes/s)")
	f.Bool("no-back-source", false, "never fetch from the origin directly")
	f.String("mirror-listen", "", `registry mirror listen address ("" in the config turns it off)`)
	c.RunE = func(cmd *cobra.Command, args []string) error {
		cfg := defaultDaemonConfig()
		flags := map[string]*pflag.Flag{
			"peer.supernodes": f.Lookup("supernode"), "peer.upload_listen": f.Lookup("upload-listen"),
			"peer.ip": f.Lookup("ip"), "peer.data_dir": f.Lookup("data-dir"), "peer.socket": f.Lookup("socket"),
			"peer.zone": f.Lookup("zone"), "peer.host_id": f.Lookup("host-id"), "metrics_listen": f.Lookup("metrics-listen"),
			"peer.upload_rate": f.Lookup("upload-rate"), "peer.download_rate": f.Lookup("download-rate"),
			"mirror.listen": f.Lookup("mirror-listen"),
		}
		if err := cliconfig.Load(&cfg, file, flags); err != nil {
			return err
		}
		if nb, _ := f.GetBool("no-back-source"); nb {
			cfg.Peer.BackSource = false
		}
		if err := cfg.Validate(); err != nil {
			return err
		}
		return runDaemon(cmd.Context(), cfg)
	}
	return c
}

func runDaemon(ctx context.Context, cfg daemonConfig) error {
	stopProfile, err := profiling.Start("dfget-daemon")
	if err != nil {
		return err
	}
	defer stopProfile()
	var level slog.Level
	level.UnmarshalText([]byte(cfg.LogLevel))
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	store, err := piece.NewDiskStore(filepath.Join(cfg.Peer.DataDir, "store"), nil)
	if err != nil {
		return fmt.Errorf("store: %v: %w", err, errLocalIO)
	}
	defer store.Close()
	// Back-to-source fetches trust the mirror's upstream CAs and never
	// carry credentials across origins on a redirect.
	origin, err := registryproxy.OriginClient(cfg.Mirror)
	if err != nil {
		return err
	}
	p, err := peer.New(cfg.Peer, store, peer.Options{Logger: log, OriginClient: origin})
	if err != nil {
		return err
	}
	var mirror *registryproxy.Mirror
	if cfg.Mirror.Listen != "" {
		if mirror, err = registryproxy.New(cfg.Mirror, p, registryproxy.Options{Logger: log}); err != nil {
			return err
		}
	}
	// Every server runs in the group; the first error stops them all, and
	// the store closes only after everything that uses it has returned.
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return p.Run(ctx) })
	<-p.Started()
	g.Go(func() error { return p.ServeAPI(ctx, cfg.Peer.Socket) })
	if mirror != nil {
		g.Go(func() error { return mirror.Run(ctx) })
	}
	if cfg.MetricsListen != "" {
		reg := prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		reg.MustRegister(p.Collectors()...)
		if mirror != nil {
			reg.MustRegister(mirror.Collectors()...)
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		srv := httpserver.DefaultLimits().Server(httpserver.NoBody(mux), log.With("component", "metrics"))
		srv.Addr = cfg.MetricsListen
		g.Go(func() error {
			go func() { <-ctx.Done(); srv.Close() }()
			if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("metrics: %w", err)
			}
			return nil
		})
	}
	log.Info("dfget daemon started", "host", p.HostID(), "upload", p.UploadAddr(), "socket", cfg.Peer.Socket, "mirror", cfg.Mirror.Listen)
	return g.Wait()
}
