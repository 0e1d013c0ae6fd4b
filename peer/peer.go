package peer

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc/credentials"

	schedulerv1 "github.com/pouchfly/pouchfly/api/scheduler/v1"
	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/internal/httpserver"
	"github.com/pouchfly/pouchfly/internal/ratelimit"
	"github.com/pouchfly/pouchfly/internal/tasktoken"
	"github.com/pouchfly/pouchfly/piece"
)

// Version is the agent's version string, set by the binary.
var Version = "dev"

// Peer is the host agent. Create it with New, then call Run.
type Peer struct {
	cfg     Config
	store   piece.Store
	log     *slog.Logger
	metrics *metrics
	tokens  tasktoken.Cache // verified piece-request tokens
	hostID  string
	ip      string

	sess        *session
	pieceClient *http.Client
	pieceScheme string // "https://" when TLS is on
	origin      *http.Client
	upLimit     *rate.Limiter
	downLimit   *rate.Limiter

	uploadLn net.Listener
	upload   *http.Server
	pieces   *piece.Handler

	gcKick  chan struct{}
	started chan struct{}

	mu      sync.Mutex
	ctx     context.Context
	tasks   map[string]*task
	reading map[string]int // open streams per task: GC keeps these
	wg      sync.WaitGroup
}

// Options are a Peer's optional dependencies.
type Options struct {
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// OriginClient fetches from origins when going back to source; nil: a
	// client with sane timeouts and the system CAs.
	OriginClient *http.Client
	// SupernodeCreds secures the session (nil: from Config.TLS, or
	// plaintext).
	SupernodeCreds credentials.TransportCredentials
}

var hostIDRe = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,128}$`)

// New builds a peer over store. It listens on the upload address (so the
// address is known at once) but starts nothing until Run.
func New(cfg Config, store piece.Store, opts Options) (*Peer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	p := &Peer{cfg: cfg, store: store, metrics: newMetrics(), tasks: map[string]*task{}, reading: map[string]int{}, gcKick: make(chan struct{}, 1), started: make(chan struct{})}
	var err error
	if p.hostID, err = loadHostID(cfg); err != nil {
		return nil, err
	}
	p.log = log.With("peer", p.hostID)
	clientTLS, serverTLS, err := cfg.TLS.Load()
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.UploadListen)
	if err != nil {
		return nil, fmt.Errorf("upload server: %w", err)
	}
	p.ip = advertiseIP(cfg, ln.Addr())
	p.uploadLn = ln
	pieceTransport := &http.Transport{
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConnsPerHost:   cfg.PerParentPieces * 2,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: 15 * time.Second,
		DisableCompression:    true,
		WriteBufferSize:       64 << 10,
		ReadBufferSize:        256 << 10,
	}
	creds := opts.SupernodeCreds
	if clientTLS != nil {
		// TLS is cluster-wide: every parent (hosts and the CDN) serves
		// it, and this host's uploads do too.
		pieceTransport.TLSClientConfig = clientTLS
		pieceTransport.TLSHandshakeTimeout = 5 * time.Second
		p.pieceScheme = "https://"
		p.uploadLn = tls.NewListener(ln, serverTLS)
		if creds == nil {
			creds = credentials.NewTLS(clientTLS)
		}
	}
	p.pieceClient = &http.Client{Transport: pieceTransport}
	p.origin = opts.OriginClient
	if p.origin == nil {
		p.origin = &http.Client{CheckRedirect: dropCredentialsAcrossOrigins, Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			TLSHandshakeTimeout:   10 * time.Second,
			ResponseHeaderTimeout: 30 * time.Second,
			MaxIdleConnsPerHost:   8,
			ReadBufferSize:        256 << 10,
		}}
	}
	if cfg.UploadRate > 0 {
		p.upLimit = rate.NewLimiter(rate.Limit(cfg.UploadRate), max(int(cfg.UploadRate), piece.ChunkSize))
	}
	if cfg.DownloadRate > 0 {
		p.downLimit = rate.NewLimiter(rate.Limit(cfg.DownloadRate), max(int(cfg.DownloadRate), piece.ChunkSize))
	}
	var clients *ratelimit.Keyed
	if cfg.UploadClientRate > 0 || cfg.UploadClientMaxConcurrent > 0 {
		r := rate.Inf
		if cfg.UploadClientRate > 0 {
			r = rate.Limit(cfg.UploadClientRate)
		}
		clients = ratelimit.New(float64(r), cfg.UploadClientBurst, 4096, nil)
	}
	p.pieces = piece.NewHandler(store, piece.ServerOptions{
		Authorize:     p.authorize,
		MaxConcurrent: cfg.MaxUploads,
		Limiter:       p.upLimit,
		OnServed: func(task string, n int, bytes int64, host string) {
			p.metrics.uploadBytes.Add(float64(bytes))
		},
		Clients:      clients,
		MaxPerClient: cfg.UploadClientMaxConcurrent,
	})
	mux := http.NewServeMux()
	p.pieces.Register(mux)
	mux.Handle("GET /healthz", httpserver.NoBody(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })))
	p.upload = cfg.UploadServer.Server(mux, p.log.With("component", "upload"))
	p.sess = newSession(cfg.Supernodes, creds, p.hello, p.dispatch, p.sessionChanged, p.log)
	return p, nil
}

// dropCredentialsAcrossOrigins follows up to 10 redirects and removes
// credentials when a redirect changes scheme, host or port (Go's client
// only does so when the host name changes).
func dropCredentialsAcrossOrigins(req *http.Request, via []*http.Request) error {
	if len(via) >= 10 {
		return errors.New("stopped after 10 redirects")
	}
	first := via[0].URL
	if req.URL.Scheme != first.Scheme || req.URL.Host != first.Host {
		for _, h := range []string{"Authorization", "Proxy-Authorization", "Cookie"} {
			req.Header.Del(h)
		}
	}
	return nil
}

// loadHostID returns the configured ID or one kept in the data dir.
func loadHostID(cfg Config) (string, error) {
	if cfg.HostID != "" {
		if !hostIDRe.MatchString(cfg.HostID) {
			return "", fmt.Errorf("host_id %q: want 1-128 of [A-Za-z0-9._:-]: %w", cfg.HostID, errdefs.ErrInvalid)
		}
		return cfg.HostID, nil
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return "", fmt.Errorf("data dir: %w", err)
	}
	f := filepath.Join(cfg.DataDir, "host_id")
	if b, err := os.ReadFile(f); err == nil && hostIDRe.Match(bytesTrim(b)) {
		return string(bytesTrim(b)), nil
	}
	name, _ := os.Hostname()
	name = regexp.MustCompile(`[^A-Za-z0-9.-]`).ReplaceAllString(name, "-")
	if len(name) > 64 {
		name = name[:64]
	}
	var r [4]byte
	rand.Read(r[:])
	id := strings.TrimPrefix(name+"-"+hex.EncodeToString(r[:]), "-")
	if err := os.WriteFile(f, []byte(id+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("host id: %w", err)
	}
	return id, nil
}

func bytesTrim(b []byte) []byte { return []byte(strings.TrimSpace(string(b))) }

// advertiseIP picks the address other hosts reach us at.
func advertiseIP(cfg Config, ln net.Addr) string {
	if cfg.IP != "" {
		return cfg.IP
	}
	if ta, ok := ln.(*net.TCPAddr); ok && !ta.IP.IsUnspecified() {
		return ta.IP.String()
	}
	// The local address of a route to the supernode (UDP connect sends
	// nothing).
	for _, s := range cfg.Supernodes {
		if c, err := net.Dial("udp", s); err == nil {
			ip := c.LocalAddr().(*net.UDPAddr).IP.String()
			c.Close()
			return ip
		}
	}
	return "127.0.0.1"
}

// HostID returns the host's ID.
func (p *Peer) HostID() string { return p.hostID }

// UploadAddr returns ip:port of the upload server as other hosts see it.
func (p *Peer) UploadAddr() string {
	return net.JoinHostPort(p.ip, fmt.Sprint(p.uploadLn.Addr().(*net.TCPAddr).Port))
}

// Sessions returns how many supernode sessions this agent has opened
// (1 while it never lost its supernode).
func (p *Peer) Sessions() int64 { return p.sess.established.Load() }

// Connected reports whether the supernode session is up.
func (p *Peer) Connected() bool { return p.sess.Up() }

// Store returns the peer's piece store.
func (p *Peer) Store() piece.Store { return p.store }

func (p *Peer) reportInterval() time.Duration {
	if w := p.sess.Welcome(); w != nil && w.ReportIntervalMs > 0 {
		return time.Duration(w.ReportIntervalMs) * time.Millisecond
	}
	return 100 * time.Millisecond
}

func (p *Peer) authorize(r *http.Request, task string) (string, error) {
	return p.tokens.Verify(p.sess.Key(), r.Header.Get(piece.TokenHeader), task, time.Now())
}

func (p *Peer) fetchPiece(ctx context.Context, addr, task string, n int, token string) (io.ReadCloser, int64, error) {
	return piece.FetchPiece(ctx, p.pieceClient, p.pieceScheme+addr, task, n, token)
}

// limitDownload applies the host's download rate limit to r.
func (p *Peer) limitDownload(ctx context.Context, r io.Reader) io.Reader {
	if p.downLimit == nil {
		return r
	}
	return &rateReader{ctx: ctx, r: r, l: p.downLimit}
}

type rateReader struct {
	ctx context.Context
	r   io.Reader
	l   *rate.Limiter
}

func (rr *rateReader) Read(b []byte) (int, error) {
	if len(b) > piece.ChunkSize {
		b = b[:piece.ChunkSize]
	}
	n, err := rr.r.Read(b)
	if n > 0 {
		if werr := rr.l.WaitN(rr.ctx, n); werr != nil && err == nil {
			err = werr
		}
	}
	return n, err
}

// Run serves uploads, keeps the supernode session and collects garbage
// until ctx ends; then it stops everything and returns.
func (p *Peer) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	p.mu.Lock()
	p.ctx = ctx
	p.mu.Unlock()
	close(p.started)
	errc := make(chan error, 1)
	go func() {
		if err := p.upload.Serve(p.uploadLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- err
		}
	}()
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); p.sess.Run(ctx) }()
	go func() { defer wg.Done(); p.gcLoop(ctx) }()
	go func() { defer wg.Done(); p.heartbeats(ctx) }()
	p.log.Info("peer agent up", "upload", p.UploadAddr(), "supernodes", p.cfg.Supernodes)
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		cancel()
	}
	// Uploads in flight get a second to finish; idle and never-used
	// connections are closed at once.
	sctx, scancel := context.WithTimeout(context.Background(), time.Second)
	defer scancel()
	if p.upload.Shutdown(sctx) != nil {
		p.upload.Close()
	}
	wg.Wait()
	p.wg.Wait()
	p.pieceClient.CloseIdleConnections()
	p.origin.CloseIdleConnections()
	return err
}

// heartbeats keeps the supernode informed of the host's upload load (and
// that the host is alive) while the session is up.
func (p *Peer) heartbeats(ctx context.Context) {
	tk := time.NewTicker(p.cfg.HeartbeatInterval)
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
			p.sess.Send(&schedulerv1.PeerPacket{Body: &schedulerv1.PeerPacket_Heartbeat{Heartbeat: &schedulerv1.Heartbeat{
				ActiveUploads: uint32(p.pieces.Active())}}})
		}
	}
}

// Started returns a channel closed once Run has started: Download works
// from then on.
func (p *Peer) Started() <-chan struct{} { return p.started }

func (p *Peer) runCtx() context.Context {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ctx
}

// WaitConnected waits until the supernode session is up or ctx ends.
func (p *Peer) WaitConnected(ctx context.Context) error {
	select {
	case <-p.sess.WaitUp():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (p *Peer) hello() *schedulerv1.Hello {
	h := &schedulerv1.Hello{
		HostId: p.hostID, Hostname: hostname(), Ip: p.ip,
		UploadPort: uint32(p.uploadLn.Addr().(*net.TCPAddr).Port),
		Zone:       p.cfg.Zone, Labels: p.cfg.Labels,
		UploadLimitBps: uint64(p.cfg.UploadRate), Version: Version,
	}
	// Offer what we hold completely (bounded: the newest 256 tasks).
	stats, _ := p.store.List(context.Background())
	sort.Slice(stats, func(i, j int) bool { return stats[i].LastAccess.After(stats[j].LastAccess) })
	for _, st := range stats {
		// Only digest tasks: the supernode cannot check a URL task's
		// digests offered by a host, so it takes none.
		if !st.Complete || len(h.Held) >= 256 || !strings.HasPrefix(st.TaskID, "sha256:") {
			continue
		}
		sums, err := p.store.PieceSums(context.Background(), st.TaskID)
		if err != nil || len(sums) < st.Count() {
			continue
		}
		h.Held = append(h.Held, &schedulerv1.HeldTask{TaskId: st.TaskID, ContentLength: st.ContentLength, PieceSize: uint32(st.PieceSize), PieceSha256: sums[:st.Count()]})
	}
	return h
}

func hostname() string {
	h, _ := os.Hostname()
	return h
}

// dispatch routes a scheduler packet to its task.
func (p *Peer) dispatch(pk *schedulerv1.SchedulerPacket) {
	var id string
	switch b := pk.Body.(type) {
	case *schedulerv1.SchedulerPacket_Task:
		id = b.Task.TaskId
	case *schedulerv1.SchedulerPacket_Parents:
		id = b.Parents.TaskId
	case *schedulerv1.SchedulerPacket_Available:
		id = b.Available.TaskId
	case *schedulerv1.SchedulerPacket_BackToSource:
		id = b.BackToSource.TaskId
	case *schedulerv1.SchedulerPacket_Error:
		id = b.Error.TaskId
	case *schedulerv1.SchedulerPacket_Prefetch:
		p.prefetch(b.Prefetch)
		return
	default:
		return
	}
	p.mu.Lock()
	t := p.tasks[id]
	p.mu.Unlock()
	if t == nil {
		return
	}
	select {
	case t.events <- pk:
	default:
		// The periodic parent refresh resends full bitmaps.
		p.log.Warn("task event queue full; packet dropped", "task", id)
	}
}

func (p *Peer) sessionChanged(up bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, t := range p.tasks {
		select {
		case t.ctl <- up:
		default:
		}
	}
}

// prefetch downloads what a preheat job orders, discarding the stream.
func (p *Peer) prefetch(pf *schedulerv1.Prefetch) {
	for _, rt := range pf.Tasks {
		h := http.Header{}
		for k, v := range rt.Headers {
			h.Set(k, v)
		}
		req := Request{URL: rt.Url, Header: h, Digest: rt.Digest, Range: rt.Range, Prefetch: true}
		ctx := p.runCtx()
		if ctx == nil {
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			s, err := p.Download(ctx, req)
			if err != nil {
				p.log.Warn("prefetch failed", "job", pf.JobId, "err", err)
				return
			}
			defer s.Close()
			if err := s.WaitDone(ctx); err != nil {
				p.log.Warn("prefetch failed", "job", pf.JobId, "err", err)
			}
		}()
	}
}

// Download starts (or joins) the task for req and returns a stream of its
// content in order. The task runs on the peer's context: it goes on (and
// keeps serving other hosts) even if every stream is closed.
func (p *Peer) Download(ctx context.Context, req Request) (*Stream, error) {
	if req.Digest != "" {
		if err := piece.ValidDigest(req.Digest); err != nil {
			return nil, err
		}
	}
	id, err := piece.TaskID(req.URL, req.Digest, p.cfg.FilterQuery, req.Range)
	if err != nil {
		return nil, err
	}
	rctx := p.runCtx()
	if rctx == nil {
		return nil, fmt.Errorf("peer is not running: %w", errdefs.ErrUnavailable)
	}
	if rctx.Err() != nil {
		return nil, fmt.Errorf("peer is shutting down: %w", errdefs.ErrUnavailable)
	}
	p.mu.Lock()
	t := p.tasks[id]
	if t == nil {
		t = newTask(p, id, req)
		p.tasks[id] = t
		p.metrics.activeTasks.Inc()
		p.wg.Add(1)
		go func() { defer p.wg.Done(); t.run(rctx) }()
	}
	p.reading[id]++
	p.mu.Unlock()
	return newStream(ctx, p, t, req.Digest), nil
}

// readers returns the open streams on a task.
func (p *Peer) readers(id string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.reading[id]
}

// streamClosed drops a reader's hold on a task.
func (p *Peer) streamClosed(id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.reading[id]--; p.reading[id] <= 0 {
		delete(p.reading, id)
	}
}

// taskEnded forgets a finished task; its store data stays for later
// requests and for other hosts.
func (p *Peer) taskEnded(t *task, err error) {
	p.mu.Lock()
	if p.tasks[t.id] == t {
		delete(p.tasks, t.id)
		p.metrics.activeTasks.Dec()
	}
	p.mu.Unlock()
}

// TaskInfo is a task as the local API lists it.
type TaskInfo struct {
	ID            string           `json:"id"`
	ContentLength int64            `json:"content_length"`
	PieceSize     int32            `json:"piece_size"`
	Pieces        int              `json:"pieces"`
	Have          int              `json:"have"`
	Complete      bool             `json:"complete"`
	Active        bool             `json:"active"`
	Received      map[string]int64 `json:"received,omitempty"`
}

// Tasks lists the tasks in the store and in flight.
func (p *Peer) Tasks(ctx context.Context) ([]TaskInfo, error) {
	stats, err := p.store.List(ctx)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	active := map[string]*task{}
	for id, t := range p.tasks {
		active[id] = t
	}
	p.mu.Unlock()
	out := make([]TaskInfo, 0, len(stats))
	for _, st := range stats {
		ti := TaskInfo{ID: st.TaskID, ContentLength: st.ContentLength, PieceSize: st.PieceSize, Pieces: st.Count(), Have: st.Bitmap.Count(), Complete: st.Complete}
		if t := active[st.TaskID]; t != nil {
			ti.Active = true
			ti.Received = t.receivedCopy()
		}
		out = append(out, ti)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

func (t *task) receivedCopy() map[string]int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	m := make(map[string]int64, len(t.received))
	for k, v := range t.received {
		m[k] = v
	}
	return m
}
