package registryproxy

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/pouchfly/pouchfly/internal/clock"
	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/internal/httpserver"
	"github.com/pouchfly/pouchfly/peer"
)

// Agent is what the mirror needs of the peer agent: a blob download as a
// P2P task, read in order as its pieces verify. *peer.Peer implements it.
type Agent interface {
	// Download starts or joins the task for req; see peer.Peer.Download.
	Download(ctx context.Context, req peer.Request) (*peer.Stream, error)
}

var _ Agent = (*peer.Peer)(nil)

// Options are a Mirror's optional dependencies.
type Options struct {
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Clock drives the caches' TTLs (nil: the wall clock).
	Clock clock.Clock
}

// Mirror is the registry mirror: an http.Handler for the pull side of the
// OCI distribution API (ServeHTTP), and its server (Serve, Run). Safe for
// concurrent use.
type Mirror struct {
	cfg     Config
	agent   Agent
	log     *slog.Logger
	clk     clock.Clock
	ups     *upstreams
	tls     *tls.Config
	metrics *metrics

	authKey   []byte               // keys the credential hashes in cache keys
	manifests *lru[cachedManifest] // (upstream, repo, digest, credentials) → manifest
	checks    *lru[int64]          // (upstream, repo, digest, credentials) → blob size (-1: unknown)
	verified  *lru[struct{}]       // digests whose local copy read back whole and matched
}

type cachedManifest struct {
	body      []byte
	mediaType string
}

// New builds a mirror over agent. It reads the TLS and CA files named in
// cfg but listens on nothing and starts no goroutine (Run, Serve do).
func New(cfg Config, agent Agent, opts Options) (*Mirror, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if agent == nil {
		return nil, fmt.Errorf("mirror: nil agent: %w", errdefs.ErrInvalid)
	}
	m := &Mirror{cfg: cfg, agent: agent, log: opts.Logger, clk: opts.Clock, metrics: newMetrics()}
	if m.log == nil {
		m.log = slog.Default()
	}
	m.log = m.log.With("component", "mirror")
	if m.clk == nil {
		m.clk = clock.Real{}
	}
	var err error
	if m.ups, err = newUpstreams(cfg); err != nil {
		return nil, err
	}
	if cfg.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("mirror tls: %v: %w", err, errdefs.ErrInvalid)
		}
		m.tls = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	m.authKey = make([]byte, 32)
	rand.Read(m.authKey)
	m.manifests = newLRU[cachedManifest](m.clk, cfg.ManifestCacheTTL, cfg.ManifestCacheEntries, int64(cfg.ManifestCacheBytes))
	m.checks = newLRU[int64](m.clk, cfg.AuthCacheTTL, 16384, 16384)
	m.verified = newLRU[struct{}](m.clk, 10*time.Minute, 4096, 4096)
	return m, nil
}

// Run listens on cfg.Listen and serves until ctx ends (see Serve).
func (m *Mirror) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", m.cfg.Listen)
	if err != nil {
		return fmt.Errorf("mirror: %w", err)
	}
	return m.Serve(ctx, ln)
}

// Serve serves the mirror on ln (HTTPS when TLS is configured) until ctx
// ends; then it stops taking requests, gives running ones 5 seconds and
// closes the rest. It returns nil after ctx ended, or the serving error.
func (m *Mirror) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           m,
		ReadHeaderTimeout: m.cfg.ReadHeaderTimeout,
		IdleTimeout:       m.cfg.IdleTimeout,
		// The handler answers 431 with an OCI body above the configured
		// limit; the server's own (plain) 431 is the backstop.
		MaxHeaderBytes: 2 * int(m.cfg.MaxHeaderBytes),
		ErrorLog:       slog.NewLogLogger(m.log.Handler(), slog.LevelDebug),
		BaseContext:    func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
		case <-done:
			return
		}
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if srv.Shutdown(sctx) != nil {
			srv.Close()
		}
	}()
	defer close(done)
	m.log.Info("registry mirror up", "addr", ln.Addr().String(), "tls", m.tls != nil, "default_registry", m.cfg.DefaultRegistry)
	var err error
	if m.tls != nil {
		srv.TLSConfig = m.tls.Clone()
		err = srv.ServeTLS(ln, "", "")
	} else {
		err = srv.Serve(ln)
	}
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// ServeHTTP serves one request. Only GET and HEAD are served: the probe
// /v2/, manifests, blobs, tag lists and referrers; everything else
// (pushes, uploads, the catalog, deletes) gets 405 UNSUPPORTED. Every
// error is an OCI error body.
func (m *Mirror) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec := &httpserver.StatusRecorder{ResponseWriter: w}
	rt := route{kind: kindOther}
	defer func() {
		if v := recover(); v != nil {
			m.metrics.requests.WithLabelValues(rt.kind, "aborted").Inc()
			panic(v)
		}
		m.metrics.requests.WithLabelValues(rt.kind, strconv.Itoa(rec.Status())).Inc()
	}()
	rec.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	if r.ContentLength != 0 {
		// Nothing the mirror serves reads a body (pushes get 405): close
		// the connection after the answer rather than wait to drain it.
		rec.Header().Set("Connection", "close")
	}
	if n := headerSize(r); n > int(m.cfg.MaxHeaderBytes) {
		newError(http.StatusRequestHeaderFieldsTooLarge, codeSizeInvalid, fmt.Sprintf("request headers exceed %d bytes", m.cfg.MaxHeaderBytes)).write(rec, r)
		return
	}
	parsed, perr := parseRoute(r)
	if parsed.kind != "" {
		rt.kind = parsed.kind
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		e := newError(http.StatusMethodNotAllowed, codeUnsupported, "this registry mirror is read-only: pull with GET and HEAD")
		e.header.Set("Allow", "GET, HEAD")
		e.write(rec, r)
		return
	}
	if perr != nil {
		perr.write(rec, r)
		return
	}
	rt = parsed
	switch rt.kind {
	case kindUpload, kindCatalog:
		e := newError(http.StatusMethodNotAllowed, codeUnsupported, "this registry mirror serves pulls only (no uploads, no catalog)")
		e.write(rec, r)
		return
	case kindPing:
	default:
		if e := rt.validate(); e != nil {
			e.write(rec, r)
			return
		}
	}
	auths := r.Header.Values("Authorization")
	if len(auths) > 1 {
		newError(http.StatusBadRequest, codeUnsupported, "at most one Authorization header").write(rec, r)
		return
	}
	auth := ""
	if len(auths) == 1 {
		auth = auths[0]
	}
	up, e := m.ups.pick(r)
	if e != nil {
		e.write(rec, r)
		return
	}
	q := &request{r: r, w: rec, rt: rt, up: up, auth: auth, authHash: m.hashAuth(auth),
		log: m.log.With("kind", rt.kind, "registry", up.registry, "repo", rt.name, "ref", rt.ref)}
	switch rt.kind {
	case kindPing:
		m.servePing(q)
	case kindManifest:
		m.serveManifest(q)
	case kindBlob:
		m.serveBlob(q)
	case kindTags, kindReferrers:
		m.servePassthrough(q)
	}
}

// request is one request being served.
type request struct {
	r        *http.Request
	w        *httpserver.StatusRecorder
	rt       route
	up       *upstream
	auth     string // the client's Authorization ("" if none)
	authHash string // keys caches by credentials, never the credentials
	log      *slog.Logger
}

// fail answers e and logs it (server-side failures louder).
func (q *request) fail(e *ociError, msg string, args ...any) {
	args = append(args, "status", e.status, "code", e.code())
	if e.status >= 500 {
		q.log.Warn(msg, args...)
	} else {
		q.log.Debug(msg, args...)
	}
	e.write(q.w, q.r)
}

// upstreamHeader returns the headers sent upstream: the client's
// Authorization and User-Agent (and Accept for manifests), nothing else.
func (q *request) upstreamHeader(accept bool) http.Header {
	h := http.Header{}
	if q.auth != "" {
		h.Set("Authorization", q.auth)
	}
	if ua := q.r.Header.Get("User-Agent"); ua != "" {
		h.Set("User-Agent", ua)
	} else {
		h.Set("User-Agent", "pouchfly-mirror/"+peer.Version)
	}
	if accept {
		for _, v := range q.r.Header.Values("Accept") {
			h.Add("Accept", v)
		}
	}
	return h
}

// hashAuth returns a keyed hash of the credentials for cache keys
// ("anonymous" without credentials).
func (m *Mirror) hashAuth(auth string) string {
	if auth == "" {
		return "anonymous"
	}
	mac := hmac.New(sha256.New, m.authKey)
	mac.Write([]byte(auth))
	return hex.EncodeToString(mac.Sum(nil)[:16])
}

// cacheKey scopes a cached answer to the upstream, the repository, the
// object and the credentials the upstream accepted for them.
func (q *request) cacheKey(digest string) string {
	return q.up.base.String() + "\x00" + q.rt.name + "\x00" + digest + "\x00" + q.authHash
}

// headerSize approximates the size of the request's header block as the
// server read it.
func headerSize(r *http.Request) int {
	n := len(r.Method) + len(r.RequestURI) + len(r.Proto) + 4 + len(r.Host) + 8
	for k, vs := range r.Header {
		for _, v := range vs {
			n += len(k) + len(v) + 4
		}
	}
	return n
}
