package supernode

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	schedulerv1 "github.com/pouchfly/pouchfly/api/scheduler/v1"
	"github.com/pouchfly/pouchfly/cdn"
	"github.com/pouchfly/pouchfly/internal/clock"
	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/internal/httpserver"
	"github.com/pouchfly/pouchfly/internal/ratelimit"
	"github.com/pouchfly/pouchfly/internal/tasktoken"
	"github.com/pouchfly/pouchfly/internal/tlsconfig"
	"github.com/pouchfly/pouchfly/piece"
	"github.com/pouchfly/pouchfly/scheduler"
	"github.com/pouchfly/pouchfly/supernode/httpapi"
	"github.com/pouchfly/pouchfly/supernode/preheat"
)

// NodeConfig is supernode.yaml: the listeners and every package's section.
type NodeConfig struct {
	// Listen is the gRPC scheduler address hosts connect to.
	Listen string `yaml:"listen"`
	// PieceListen is the CDN's piece server (the data plane).
	PieceListen string `yaml:"piece_listen"`
	// AdvertiseIP is the address hosts reach the piece server at; empty:
	// the piece listener's address (or 127.0.0.1 when it listens on all).
	AdvertiseIP string `yaml:"advertise_ip"`
	// HTTPListen serves /metrics and /healthz ("" to disable).
	HTTPListen string `yaml:"http_listen"`
	// DataDir holds the CDN's piece cache.
	DataDir string `yaml:"data_dir"`
	// CDNEnabled seeds tasks from the supernode; off, hosts go back to
	// source themselves.
	CDNEnabled bool `yaml:"cdn_enabled"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `yaml:"log_level"`
	// Session tunes the gRPC session layer.
	Session Config `yaml:"session"`
	// Scheduler tunes parent choice.
	Scheduler scheduler.Config `yaml:"scheduler"`
	// CDN tunes the seeder.
	CDN cdn.Config `yaml:"cdn"`
	// Auth tunes the origin check that admits hosts to protected content.
	Auth AuthConfig `yaml:"auth"`
	// UploadMaxConcurrent caps the CDN's concurrent piece uploads.
	UploadMaxConcurrent int `yaml:"upload_max_concurrent"`
	// API tunes the admin API, preheat, the registry webhook and the
	// dashboard served on HTTPListen.
	API httpapi.Config `yaml:"api"`
	// PieceServer bounds the CDN piece server's connections: header read
	// deadline (slowloris), keep-alive idle time, header size.
	PieceServer httpserver.Limits `yaml:"piece_server"`
	// UploadClientRate is how many piece requests per second one host
	// (remote IP) may make to the CDN piece server, UploadClientBurst how
	// many at once; beyond, 429 with Retry-After. 0: no per-host limit.
	UploadClientRate  float64 `yaml:"upload_client_rate"`
	UploadClientBurst int     `yaml:"upload_client_burst"`
	// UploadClientMaxConcurrent caps one host's CDN uploads in flight
	// (429 beyond), so that one host cannot hold every slot of
	// upload_max_concurrent.
	UploadClientMaxConcurrent int `yaml:"upload_client_max_concurrent"`
	// TLS secures the gRPC listener and the CDN piece server, with mutual
	// TLS when require_client_cert is set. TLS is cluster-wide: every
	// agent then needs peer.tls. Empty: plaintext.
	TLS tlsconfig.ServerConfig `yaml:"tls"`
}

// DefaultNodeConfig returns the defaults `supernode config default` prints.
func DefaultNodeConfig() NodeConfig {
	return NodeConfig{
		Listen:              "0.0.0.0:8002",
		PieceListen:         "0.0.0.0:8001",
		HTTPListen:          "0.0.0.0:8080",
		DataDir:             "/var/lib/pouchfly/supernode",
		CDNEnabled:          true,
		LogLevel:            "info",
		Session:             DefaultConfig(),
		Scheduler:           scheduler.DefaultConfig(),
		CDN:                 cdn.DefaultConfig(),
		Auth:                DefaultAuthConfig(),
		UploadMaxConcurrent: 256,
		API:                 httpapi.DefaultConfig(),

		PieceServer:               httpserver.DefaultLimits(),
		UploadClientRate:          1000,
		UploadClientBurst:         2000,
		UploadClientMaxConcurrent: 128,
	}
}

// Validate reports the first invalid field.
func (c NodeConfig) Validate() error {
	for name, a := range map[string]string{"listen": c.Listen, "piece_listen": c.PieceListen} {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return fmt.Errorf("supernode config: %s %q: %w", name, a, errdefs.ErrInvalid)
		}
	}
	if c.HTTPListen != "" {
		if _, _, err := net.SplitHostPort(c.HTTPListen); err != nil {
			return fmt.Errorf("supernode config: http_listen %q: %w", c.HTTPListen, errdefs.ErrInvalid)
		}
	}
	if c.AdvertiseIP != "" && net.ParseIP(c.AdvertiseIP) == nil {
		return fmt.Errorf("supernode config: advertise_ip %q: %w", c.AdvertiseIP, errdefs.ErrInvalid)
	}
	if c.DataDir == "" {
		return fmt.Errorf("supernode config: data_dir is empty: %w", errdefs.ErrInvalid)
	}
	if c.UploadMaxConcurrent < 1 {
		return fmt.Errorf("supernode config: upload_max_concurrent must be ≥ 1: %w", errdefs.ErrInvalid)
	}
	var l slog.Level
	if err := l.UnmarshalText([]byte(c.LogLevel)); err != nil {
		return fmt.Errorf("supernode config: log_level %q: %w", c.LogLevel, errdefs.ErrInvalid)
	}
	if c.Auth.PositiveTTL < 0 || c.Auth.NegativeTTL < 0 || c.Auth.Timeout <= 0 || c.Auth.MaxConcurrent < 1 || c.Auth.MaxEntries < 1 {
		return fmt.Errorf("supernode config: auth: ttls ≥ 0, timeout > 0, max_concurrent and max_entries ≥ 1: %w", errdefs.ErrInvalid)
	}
	if c.UploadClientRate < 0 || c.UploadClientMaxConcurrent < 0 || (c.UploadClientRate > 0 && c.UploadClientBurst < 1) {
		return fmt.Errorf("supernode config: upload_client_rate and upload_client_max_concurrent must not be negative, upload_client_burst ≥ 1 with a rate: %w", errdefs.ErrInvalid)
	}
	if err := c.PieceServer.Validate(); err != nil {
		return fmt.Errorf("supernode config: piece_server: %w", err)
	}
	if err := c.TLS.Validate(); err != nil {
		return fmt.Errorf("supernode config: %w", err)
	}
	if err := c.Session.Validate(); err != nil {
		return err
	}
	if err := c.Scheduler.Validate(); err != nil {
		return err
	}
	if err := c.API.Validate(); err != nil {
		return err
	}
	return c.CDN.Validate()
}

// NodeOptions are a Node's optional dependencies.
type NodeOptions struct {
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// OriginClient is the CDN's HTTP client; nil: sane defaults.
	OriginClient *http.Client
	// Clock defaults to the wall clock.
	Clock clock.Clock
}

// Node is a whole supernode: session server, scheduler, CDN and its piece
// server, metrics. New listens at once (addresses are known); Run serves.
type Node struct {
	cfg   NodeConfig
	log   *slog.Logger
	sched *scheduler.Scheduler
	srv   *Server
	cdn   *cdn.CDN
	store *piece.DiskStore

	grpcLn, pieceLn, httpLn net.Listener
	grpcSrv                 *grpc.Server
	pieceSrv, httpSrv       *http.Server
	cdnEgress               atomic.Int64
	cdnEgressMetric         prometheus.Counter
	registry                *prometheus.Registry
	preheat                 *preheat.Manager
	api                     *httpapi.Server
	httpMux                 *http.ServeMux
}

// NewNode builds a supernode.
func NewNode(cfg NodeConfig, opts NodeOptions) (n *Node, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	clk := opts.Clock
	if clk == nil {
		clk = clock.Real{}
	}
	n = &Node{cfg: cfg, log: log}
	defer func() {
		if err != nil {
			n.closeListeners()
			if n.store != nil {
				n.store.Close()
			}
		}
	}()
	serverTLS, err := cfg.TLS.Load()
	if err != nil {
		return nil, err
	}
	if n.grpcLn, err = net.Listen("tcp", cfg.Listen); err != nil {
		return nil, fmt.Errorf("scheduler listener: %w", err)
	}
	if n.pieceLn, err = net.Listen("tcp", cfg.PieceListen); err != nil {
		return nil, fmt.Errorf("piece listener: %w", err)
	}
	if cfg.HTTPListen != "" {
		if n.httpLn, err = net.Listen("tcp", cfg.HTTPListen); err != nil {
			return nil, fmt.Errorf("http listener: %w", err)
		}
	}
	if n.store, err = piece.NewDiskStore(filepath.Join(cfg.DataDir, "cdn"), clk); err != nil {
		return nil, fmt.Errorf("cdn store: %w", err)
	}
	signer, err := tasktoken.NewSigner(nil)
	if err != nil {
		return nil, err
	}
	if n.srv, err = NewServer(cfg.Session); err != nil {
		return nil, err
	}
	n.srv.SetLogger(log)
	var seeder scheduler.Seeder
	var auth *AuthSeeder
	rep := &Reporter{}
	client := opts.OriginClient
	if client == nil {
		client = &http.Client{Transport: &http.Transport{
			Proxy:               http.ProxyFromEnvironment,
			DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			TLSHandshakeTimeout: 10 * time.Second,
			MaxIdleConnsPerHost: 16,
			ReadBufferSize:      256 << 10,
		}}
	}
	if cfg.CDNEnabled {
		if n.cdn, err = cdn.New(cfg.CDN, n.store, client, rep, clk, cdn.WithLogger(log)); err != nil {
			return nil, err
		}
		auth = NewAuthSeeder(n.cdn, client, cfg.Auth, clk, log)
		seeder = auth
	}
	if n.sched, err = scheduler.New(cfg.Scheduler, n.srv, seeder, signer, clk); err != nil {
		return nil, err
	}
	n.sched.SetLogger(log)
	rep.Attach(n.sched)
	if auth != nil {
		auth.SetAdmitter(n.sched)
	}
	n.srv.SetBackend(n.sched)
	if cfg.CDNEnabled {
		ip := cfg.AdvertiseIP
		if ip == "" {
			ip = "127.0.0.1"
			if ta := n.pieceLn.Addr().(*net.TCPAddr); !ta.IP.IsUnspecified() {
				ip = ta.IP.String()
			}
		}
		if err := n.sched.AddHost(scheduler.HostInfo{
			ID: "cdn-" + cfg.Scheduler.SupernodeID, Hostname: "cdn", IP: ip,
			UploadPort: n.pieceLn.Addr().(*net.TCPAddr).Port, CDN: true,
		}); err != nil {
			return nil, err
		}
	}
	gopts := n.srv.ServerOptions()
	if serverTLS != nil {
		gopts = append(gopts, grpc.Creds(credentials.NewTLS(serverTLS)))
	}
	n.grpcSrv = grpc.NewServer(gopts...)
	schedulerv1.RegisterSchedulerServer(n.grpcSrv, n.srv)

	n.cdnEgressMetric = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "pouchfly", Subsystem: "cdn", Name: "upload_bytes_total",
		Help: "Piece bytes the supernode's CDN served to hosts.",
	})
	pub := signer.Public()
	tokens := new(tasktoken.Cache)
	h := piece.NewHandler(n.store, piece.ServerOptions{
		Authorize: func(r *http.Request, task string) (string, error) {
			return tokens.Verify(pub, r.Header.Get(piece.TokenHeader), task, clk.Now())
		},
		MaxConcurrent: cfg.UploadMaxConcurrent,
		OnServed: func(task string, _ int, b int64, _ string) {
			n.cdnEgress.Add(b)
			n.cdnEgressMetric.Add(float64(b))
		},
		Clients:      clientLimits(cfg),
		MaxPerClient: cfg.UploadClientMaxConcurrent,
	})
	pmux := http.NewServeMux()
	h.Register(pmux)
	n.pieceSrv = cfg.PieceServer.Server(pmux, log.With("component", "pieces"))
	if serverTLS != nil {
		ptls := serverTLS.Clone()
		ptls.NextProtos = []string{"http/1.1"}
		n.pieceLn = tls.NewListener(n.pieceLn, ptls)
	}

	n.registry = prometheus.NewRegistry()
	n.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), n.cdnEgressMetric)
	n.registry.MustRegister(n.sched.Metrics().Collectors()...)
	n.registry.MustRegister(n.srv.Metrics().Collectors()...)
	if n.cdn != nil {
		n.registry.MustRegister(n.cdn.Collectors()...)
	}
	hmux := http.NewServeMux()
	n.httpMux = hmux
	hmux.Handle("GET /metrics", promhttp.HandlerFor(n.registry, promhttp.HandlerOpts{}))
	hmux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	if n.httpLn != nil {
		// Preheat, webhook, dashboard: the API lives on the HTTP listener.
		popts := preheat.Options{Client: client, Clock: clk, Logger: log}
		if n.cdn != nil {
			popts.CDNStat = n.store.Stat
		}
		if n.preheat, err = preheat.New(cfg.API.Preheat, n.sched, popts); err != nil {
			return nil, err
		}
		if n.api, err = httpapi.New(cfg.API, n.sched, n.preheat, httpapi.Options{Logger: log, Gatherer: n.registry, SupernodeID: cfg.Scheduler.SupernodeID}); err != nil {
			return nil, err
		}
		n.registry.MustRegister(n.api.Collectors()...)
		n.api.Register(hmux)
	}
	lim := httpserver.DefaultLimits()
	lim.MaxHeaderBytes = 64 << 10
	// POST bodies (preheat requests, webhooks) get 30 s and the API's
	// body limit; event streams (GET) keep no deadline.
	n.httpSrv = lim.Server(httpserver.BoundBody(hmux, int64(cfg.API.MaxBodyBytes), 30*time.Second), log.With("component", "http"))
	return n, nil
}

// clientLimits returns the CDN piece server's per-host limiter (nil: off).
func clientLimits(cfg NodeConfig) *ratelimit.Keyed {
	if cfg.UploadClientRate <= 0 && cfg.UploadClientMaxConcurrent <= 0 {
		return nil
	}
	r := math.Inf(1)
	if cfg.UploadClientRate > 0 {
		r = cfg.UploadClientRate
	}
	return ratelimit.New(r, cfg.UploadClientBurst, 4096, nil)
}

func (n *Node) closeListeners() {
	for _, l := range []net.Listener{n.grpcLn, n.pieceLn, n.httpLn} {
		if l != nil {
			l.Close()
		}
	}
}

// Addr returns the gRPC address hosts connect to.
func (n *Node) Addr() string { return n.grpcLn.Addr().String() }

// HTTPAddr returns the metrics/API address ("" when disabled).
func (n *Node) HTTPAddr() string {
	if n.httpLn == nil {
		return ""
	}
	return n.httpLn.Addr().String()
}

// PieceAddr returns the CDN piece server's address.
func (n *Node) PieceAddr() string { return n.pieceLn.Addr().String() }

// CDNEgress returns the piece bytes the CDN has served.
func (n *Node) CDNEgress() int64 { return n.cdnEgress.Load() }

// Scheduler returns the scheduler (dashboard, tests).
func (n *Node) Scheduler() *scheduler.Scheduler { return n.sched }

// Registry returns the node's Prometheus registry.
func (n *Node) Registry() *prometheus.Registry { return n.registry }

// HTTPMux lets later features (dashboard, preheat API) add routes; call
// before Run.
func (n *Node) HTTPMux() *http.ServeMux { return n.httpMux }

// Sessions returns the gRPC session layer (tests tap what it sends).
func (n *Node) Sessions() *Server { return n.srv }

// Run serves until ctx ends, then stops everything and returns.
func (n *Node) Run(ctx context.Context) error {
	// Everything runs on a context of its own, cancelled only once the
	// sessions are gone (below), so that nothing the shutdown does
	// reaches the hosts.
	outer := ctx
	ctx, cancel := context.WithCancel(context.WithoutCancel(outer))
	defer cancel()
	errc := make(chan error, 8)
	var wg sync.WaitGroup
	serve := func(name string, f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, grpc.ErrServerStopped) {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	serve("scheduler", func() error { return n.sched.Run(ctx) })
	if n.cdn != nil {
		serve("cdn", func() error { return n.cdn.Run(ctx) })
	}
	serve("grpc", func() error { return n.grpcSrv.Serve(n.grpcLn) })
	serve("pieces", func() error { return n.pieceSrv.Serve(n.pieceLn) })
	if n.httpLn != nil {
		serve("http", func() error { return n.httpSrv.Serve(n.httpLn) })
	}
	if n.preheat != nil {
		serve("preheat", func() error { return n.preheat.Run(ctx) })
		serve("api", func() error { return n.api.Run(ctx) })
	}
	n.log.Info("supernode up", "scheduler", n.Addr(), "pieces", n.PieceAddr(), "http", n.HTTPAddr())
	var err error
	select {
	case <-outer.Done():
	case err = <-errc:
	}
	// Drop the sessions first, at once: a stopping supernode must look to
	// the hosts like a crashed one. Were the CDN cancelled first, each
	// seed in flight would fail and the scheduler would order every host
	// of its task back to source on the way out (an origin stampede on
	// each restart); without a session the hosts keep their parents and
	// wait supernode_wait for this supernode or another to answer.
	// (GracefulStop would only wait for the session streams, which never
	// end by themselves.)
	n.grpcSrv.Stop()
	cancel()
	sctx, scancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer scancel()
	n.pieceSrv.Shutdown(sctx)
	n.httpSrv.Shutdown(sctx)
	n.pieceSrv.Close()
	n.httpSrv.Close()
	wg.Wait()
	n.store.Close()
	return err
}
