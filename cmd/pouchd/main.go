// Command pouchd is Pouchfly's container engine daemon: it supervises its
// own containerd, pulls images through the local P2P agent and serves a
// Docker-v1.24-style API on unix:///var/run/pouchd.sock for pouch.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/pouchfly/pouchfly/engine"
	"github.com/pouchfly/pouchfly/internal/cliconfig"
	"github.com/pouchfly/pouchfly/internal/errdefs"
)

// config is pouchd.yaml.
type config struct {
	// Engine configures pouchd (home, listen, mirror, containerd,
	// runtimes, quota, lxcfs, rich).
	Engine engine.Config `yaml:"engine"`
	// MetricsListen serves Prometheus /metrics ("" to disable).
	MetricsListen string `yaml:"metrics_listen"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `yaml:"log_level"`
}

func defaultConfig() config {
	return config{Engine: engine.DefaultConfig(), MetricsListen: "127.0.0.1:65005", LogLevel: "info"}
}

func (c config) Validate() error {
	var l slog.Level
	if err := l.UnmarshalText([]byte(c.LogLevel)); err != nil {
		return fmt.Errorf("log_level %q: %w", c.LogLevel, errdefs.ErrInvalid)
	}
	if c.MetricsListen != "" {
		if _, _, err := net.SplitHostPort(c.MetricsListen); err != nil {
			return fmt.Errorf("metrics_listen %q: %w", c.MetricsListen, errdefs.ErrInvalid)
		}
	}
	return c.Engine.Validate()
}

func main() {
	os.Exit(run())
}

func run() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := rootCmd()
	root.SetContext(ctx)
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "pouchd:", err)
		if errors.Is(err, errdefs.ErrInvalid) {
			return 2
		}
		return 1
	}
	return 0
}

func rootCmd() *cobra.Command {
	var file string
	c := &cobra.Command{
		Use:   "pouchd",
		Short: "Pouchfly container engine daemon",
		Long: `pouchd runs containers in the PouchContainer line on top of a containerd it
supervises (own config, root, state and socket under its home; adopted when
still running, restarted when it dies). Images are pulled through the local
Pouchfly agent's registry mirror (dfget daemon, http://127.0.0.1:65001),
falling back to the registry when the agent is down. pouch is its client.

Configuration: defaults (pouchd config default), then --config FILE (YAML),
then POUCHFLY_* environment variables (POUCHFLY_ENGINE_HOME=/srv/pouchd),
then flags.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	f := c.Flags()
	f.StringVar(&file, "config", "", "YAML config file")
	f.String("home", "", "pouchd's state directory (containers, containerd, volumes)")
	f.StringP("listen", "H", "", "API address: unix:///path.sock or tcp://host:port")
	f.String("mirror", "", `the local agent's registry mirror URL ("" pulls directly)`)
	f.String("containerd", "", "use this containerd socket instead of supervising one")
	f.String("containerd-binary", "", "containerd binary to supervise")
	f.String("log-level", "", "debug, info, warn or error")
	f.String("pouch-init", "", "pouch-init binary for rich containers")
	f.String("metrics-listen", "", `Prometheus listen address ("" in the config turns it off)`)
	f.Bool("stop-containerd", false, "stop the supervised containerd (and so lose live containers' supervision) on exit")
	c.RunE = func(cmd *cobra.Command, args []string) error {
		cfg := defaultConfig()
		flags := map[string]*pflag.Flag{
			"engine.home": f.Lookup("home"), "engine.listen": f.Lookup("listen"), "engine.mirror": f.Lookup("mirror"),
			"engine.containerd.address": f.Lookup("containerd"), "engine.containerd.binary": f.Lookup("containerd-binary"),
			"log_level": f.Lookup("log-level"), "engine.rich.init_path": f.Lookup("pouch-init"),
			"metrics_listen": f.Lookup("metrics-listen"),
		}
		if err := cliconfig.Load(&cfg, file, flags); err != nil {
			return err
		}
		if s, _ := f.GetBool("stop-containerd"); s {
			cfg.Engine.Containerd.KeepRunning = false
		}
		if err := cfg.Validate(); err != nil {
			return err
		}
		return serve(cmd.Context(), cfg)
	}
	c.AddCommand(configCmd())
	return c
}

func configCmd() *cobra.Command {
	c := &cobra.Command{Use: "config", Short: "Show pouchd configuration"}
	c.AddCommand(&cobra.Command{
		Use:   "default",
		Short: "Print the default pouchd.yaml",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := cliconfig.Print(defaultConfig())
			fmt.Print(s)
			return err
		},
	})
	return c
}

func serve(ctx context.Context, cfg config) error {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel))
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(log)
	if os.Geteuid() != 0 {
		log.Warn("pouchd is not running as root: containers, quota and lxcfs need root")
	}
	e, err := engine.New(cfg.Engine, engine.Options{Logger: log})
	if err != nil {
		return err
	}
	defer e.Close()
	if err := e.Start(ctx); err != nil {
		return err
	}
	if cfg.MetricsListen != "" {
		reg := prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		reg.MustRegister(e.Collectors()...)
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		srv := &http.Server{Addr: cfg.MetricsListen, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Warn("metrics listener", "err", err)
			}
		}()
		defer srv.Close()
	}
	log.Info("pouchd serving", "listen", cfg.Engine.Listen, "home", cfg.Engine.Home, "metrics", cfg.MetricsListen)
	return e.Serve(ctx)
}
