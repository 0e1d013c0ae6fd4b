// Package supernode is the supernode's gRPC edge: the Scheduler service's
// session layer on top of package scheduler. It validates and bounds every
// input, keeps one session per host, queues the scheduler's packets per
// host without ever blocking the scheduler, and maps error classes to gRPC
// codes (only here).
package supernode

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"log/slog"
	"net"
	"regexp"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	schedulerv1 "github.com/pouchfly/pouchfly/api/scheduler/v1"
	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/scheduler"
)

// Limits on a Hello.
const (
	MaxHostIDLen   = 128
	MaxLabels      = 32
	MaxLabelBytes  = 256
	MaxNameLen     = 256
	MaxHeldTasks   = 1 << 16
	hostLockStripe = 64
)

var hostIDRe = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,128}$`)

// Config tunes the session layer.
type Config struct {
	// MaxMessageBytes bounds one gRPC message in either direction.
	MaxMessageBytes int `yaml:"max_message_bytes"`
	// QueueLen is the per-host outbound queue; a host whose queue overflows
	// loses its session (it reconnects and re-registers).
	QueueLen int `yaml:"queue_len"`
	// HelloTimeout bounds the wait for a new stream's Hello.
	HelloTimeout time.Duration `yaml:"hello_timeout"`
	// PacketRate and PacketBurst bound the packets per second one host may
	// send; exceeding them ends the session (ResourceExhausted).
	PacketRate  float64 `yaml:"packet_rate"`
	PacketBurst int     `yaml:"packet_burst"`
	// RegisterRate and RegisterBurst bound task registrations per second
	// per host; an excess registration gets TaskError ERROR_UNAVAILABLE.
	RegisterRate  float64 `yaml:"register_rate"`
	RegisterBurst int     `yaml:"register_burst"`
	// KeepaliveTime is how often the server pings an idle connection;
	// KeepaliveTimeout how long it waits for the answer.
	KeepaliveTime    time.Duration `yaml:"keepalive_time"`
	KeepaliveTimeout time.Duration `yaml:"keepalive_timeout"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		MaxMessageBytes:  4 << 20,
		QueueLen:         8192,
		HelloTimeout:     10 * time.Second,
		PacketRate:       2000,
		PacketBurst:      10000,
		RegisterRate:     200,
		RegisterBurst:    1000,
		KeepaliveTime:    30 * time.Second,
		KeepaliveTimeout: 10 * time.Second,
	}
}

// Validate checks the configuration; errors wrap errdefs.ErrInvalid.
func (c Config) Validate() error {
	switch {
	case c.MaxMessageBytes < 64<<10 || c.MaxMessageBytes > 64<<20:
		return fmt.Errorf("supernode config: max_message_bytes %d not in 64KiB..64MiB: %w", c.MaxMessageBytes, errdefs.ErrInvalid)
	case c.QueueLen < 1:
		return fmt.Errorf("supernode config: queue_len %d < 1: %w", c.QueueLen, errdefs.ErrInvalid)
	case c.HelloTimeout <= 0:
		return fmt.Errorf("supernode config: hello_timeout %v <= 0: %w", c.HelloTimeout, errdefs.ErrInvalid)
	case c.PacketRate <= 0 || c.PacketBurst < 1 || c.RegisterRate <= 0 || c.RegisterBurst < 1:
		return fmt.Errorf("supernode config: rates and bursts must be positive: %w", errdefs.ErrInvalid)
	case c.KeepaliveTime <= 0 || c.KeepaliveTimeout <= 0:
		return fmt.Errorf("supernode config: keepalive times must be positive: %w", errdefs.ErrInvalid)
	}
	return nil
}

// Backend is what the session layer needs of the scheduler
// (*scheduler.Scheduler implements it).
type Backend interface {
	AddHost(info scheduler.HostInfo) error
	RemoveHost(id string)
	Heartbeat(id string, hb *schedulerv1.Heartbeat)
	Register(hostID string, r *schedulerv1.RegisterTask) error
	ReportPieces(hostID string, r *schedulerv1.PieceReports)
	Done(hostID string, d *schedulerv1.TaskDone)
	NeedParents(hostID string, r *schedulerv1.NeedParents)
	Leave(hostID, taskID string)
	Held(hostID string, t *schedulerv1.HeldTask) error
	Welcome(hostID string) *schedulerv1.Welcome
}

var _ Backend = (*scheduler.Scheduler)(nil)

// Server implements schedulerv1.SchedulerServer and scheduler.Sender.
// Create it with NewServer, give it its backend with SetBackend before
// serving (the scheduler needs the Server as its Sender first).
type Server struct {
	schedulerv1.UnimplementedSchedulerServer
	cfg     Config
	log     *slog.Logger
	metrics *Metrics
	backend atomic.Pointer[Backend]

	seed      maphash.Seed
	hostLocks [hostLockStripe]sync.Mutex // serialise a host's session changes

	mu       sync.Mutex
	sessions map[string]*session

	tap atomic.Pointer[func(hostID string, p *schedulerv1.SchedulerPacket)]
}

// SetTap makes f see every packet about to be sent to a host, Welcome
// included (tests check what hosts receive; nil removes it). f runs on
// the host's send loop and must not block or keep p.
func (s *Server) SetTap(f func(hostID string, p *schedulerv1.SchedulerPacket)) {
	if f == nil {
		s.tap.Store(nil)
		return
	}
	s.tap.Store(&f)
}

var (
	_ schedulerv1.SchedulerServer = (*Server)(nil)
	_ scheduler.Sender            = (*Server)(nil)
	_ scheduler.Disconnecter      = (*Server)(nil)
)

// NewServer returns a session layer with no backend yet.
// SetLogger replaces the logger (default slog.Default()); call before use.
func (s *Server) SetLogger(l *slog.Logger) { s.log = l.With("component", "supernode") }

func NewServer(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Server{
		cfg: cfg, log: slog.Default().With("component", "supernode"), metrics: NewMetrics(),
		seed: maphash.MakeSeed(), sessions: map[string]*session{},
	}, nil
}

// SetBackend sets the scheduler the sessions feed. Call it once, before
// serving.
func (s *Server) SetBackend(b Backend) { s.backend.Store(&b) }

// Metrics returns the session layer's collectors (unregistered).
func (s *Server) Metrics() *Metrics { return s.metrics }

// ServerOptions returns the grpc.Server options this service expects:
// message size bounds and keepalive.
func (s *Server) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.MaxRecvMsgSize(s.cfg.MaxMessageBytes),
		grpc.MaxSendMsgSize(s.cfg.MaxMessageBytes),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: s.cfg.KeepaliveTime, Timeout: s.cfg.KeepaliveTimeout}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		// A connection (TLS handshake included) must be up within the
		// Hello timeout.
		grpc.ConnectionTimeout(s.cfg.HelloTimeout),
	}
}

// session is one host's stream.
type session struct {
	id       string
	out      chan *schedulerv1.SchedulerPacket
	cancel   context.CancelCauseFunc
	packets  *rate.Limiter
	regs     *rate.Limiter
	overflow atomic.Bool

	mu   sync.Mutex // held while a packet is dispatched to the backend
	dead bool
}

// kill ends the session and waits for an in-flight dispatch, so that no
// packet of this session reaches the backend afterwards.
func (ss *session) kill(cause error) {
	ss.cancel(cause)
	ss.mu.Lock()
	ss.dead = true
	ss.mu.Unlock()
}

func (s *Server) hostLock(id string) *sync.Mutex {
	return &s.hostLocks[maphash.String(s.seed, id)%hostLockStripe]
}

// Send queues p for hostID without blocking. A host without a session
// loses the packet; a host whose queue is full loses its session.
func (s *Server) Send(hostID string, p *schedulerv1.SchedulerPacket) {
	s.mu.Lock()
	ss := s.sessions[hostID]
	s.mu.Unlock()
	if ss == nil {
		s.metrics.Dropped.Inc()
		return
	}
	s.enqueue(ss, p)
}

func (s *Server) enqueue(ss *session, p *schedulerv1.SchedulerPacket) {
	if ss.overflow.Load() {
		s.metrics.Dropped.Inc()
		return
	}
	select {
	case ss.out <- p:
	default:
		if !ss.overflow.Swap(true) {
			s.metrics.Overflows.Inc()
			s.log.Warn("outbound queue overflow, ending session", "peer", ss.id, "queue", cap(ss.out))
			ss.cancel(status.Error(codes.ResourceExhausted, "outbound queue overflow; reconnect"))
		}
		s.metrics.Dropped.Inc()
	}
}

// Disconnect ends hostID's session (the scheduler dropped the host).
func (s *Server) Disconnect(hostID string) {
	s.mu.Lock()
	ss := s.sessions[hostID]
	s.mu.Unlock()
	if ss != nil {
		ss.cancel(status.Error(codes.Unavailable, "host timed out; reconnect"))
	}
}

// Session serves one host's stream: Hello first, then packets until the
// stream ends, when the host is removed (unless a newer session of the
// same host replaced this one).
func (s *Server) Session(stream grpc.BidiStreamingServer[schedulerv1.PeerPacket, schedulerv1.SchedulerPacket]) error {
	bp := s.backend.Load()
	if bp == nil {
		return status.Error(codes.Unavailable, "scheduler not ready")
	}
	b := *bp
	hello, err := s.recvHello(stream)
	if err != nil {
		s.metrics.Rejected.Inc()
		return err
	}
	info, err := validateHello(hello)
	if err != nil {
		s.metrics.Rejected.Inc()
		return toStatus(err)
	}
	id := info.ID
	log := s.log.With("peer", id)
	ctx, cancel := context.WithCancelCause(stream.Context())
	defer cancel(nil)
	ss := &session{
		id: id, out: make(chan *schedulerv1.SchedulerPacket, s.cfg.QueueLen), cancel: cancel,
		packets: rate.NewLimiter(rate.Limit(s.cfg.PacketRate), s.cfg.PacketBurst),
		regs:    rate.NewLimiter(rate.Limit(s.cfg.RegisterRate), s.cfg.RegisterBurst),
	}
	// Welcome goes first in the queue, before anything the scheduler sends.
	ss.out <- &schedulerv1.SchedulerPacket{Body: &schedulerv1.SchedulerPacket_Welcome{Welcome: b.Welcome(id)}}

	hl := s.hostLock(id)
	hl.Lock()
	s.mu.Lock()
	old := s.sessions[id]
	s.sessions[id] = ss
	s.mu.Unlock()
	if old != nil {
		log.Info("host reconnected, ending its previous session")
		old.kill(status.Error(codes.Aborted, "replaced by a newer session of the same host"))
	}
	if err := b.AddHost(info); err != nil {
		s.mu.Lock()
		if s.sessions[id] == ss {
			delete(s.sessions, id)
		}
		s.mu.Unlock()
		hl.Unlock()
		s.metrics.Rejected.Inc()
		return toStatus(err)
	}
	hl.Unlock()
	s.metrics.Sessions.Inc()
	defer s.metrics.Sessions.Dec()
	log.Info("session started", "addr", net.JoinHostPort(info.IP, fmt.Sprint(info.UploadPort)), "zone", info.Zone,
		"version", info.Version, "held", len(hello.Held))

	held := hello.Held
	if len(held) > MaxHeldTasks {
		held = held[:MaxHeldTasks]
	}
	ss.mu.Lock()
	for _, ht := range held {
		if err := b.Held(id, ht); err != nil {
			log.Warn("held task refused", "task", ht.GetTaskId(), "err", err)
		}
	}
	ss.mu.Unlock()

	go s.recvLoop(ctx, stream, b, ss)

	var sendErr error
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case p := <-ss.out:
			if tap := s.tap.Load(); tap != nil {
				(*tap)(id, p)
			}
			if err := stream.Send(p); err != nil {
				sendErr = err
				cancel(err)
				break loop
			}
			s.metrics.PacketsOut.Inc()
		}
	}
	ss.kill(nil)
	hl.Lock()
	s.mu.Lock()
	current := s.sessions[id] == ss
	if current {
		delete(s.sessions, id)
	}
	s.mu.Unlock()
	if current {
		b.RemoveHost(id)
	}
	hl.Unlock()
	cause := context.Cause(ctx)
	if sendErr != nil {
		cause = sendErr
	}
	log.Info("session ended", "cause", cause)
	return toStatus(cause)
}

func (s *Server) recvHello(stream grpc.BidiStreamingServer[schedulerv1.PeerPacket, schedulerv1.SchedulerPacket]) (*schedulerv1.Hello, error) {
	type result struct {
		p   *schedulerv1.PeerPacket
		err error
	}
	ch := make(chan result, 1)
	go func() {
		p, err := stream.Recv()
		ch <- result{p, err}
	}()
	t := time.NewTimer(s.cfg.HelloTimeout)
	defer t.Stop()
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, toStatus(r.err)
		}
		h := r.p.GetHello()
		if h == nil {
			return nil, status.Error(codes.InvalidArgument, "first packet must be Hello")
		}
		return h, nil
	case <-t.C:
		return nil, status.Error(codes.DeadlineExceeded, "no Hello in time")
	case <-stream.Context().Done():
		return nil, toStatus(stream.Context().Err())
	}
}

func (s *Server) recvLoop(ctx context.Context, stream grpc.BidiStreamingServer[schedulerv1.PeerPacket, schedulerv1.SchedulerPacket], b Backend, ss *session) {
	for {
		p, err := stream.Recv()
		if err != nil {
			ss.cancel(err)
			return
		}
		s.metrics.PacketsIn.Inc()
		if !ss.packets.Allow() {
			ss.cancel(status.Error(codes.ResourceExhausted, "too many packets"))
			return
		}
		if err := s.dispatch(ctx, b, ss, p); err != nil {
			ss.cancel(err)
			return
		}
	}
}

// dispatch hands one packet to the backend. An error ends the session.
func (s *Server) dispatch(ctx context.Context, b Backend, ss *session, p *schedulerv1.PeerPacket) error {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.dead || ctx.Err() != nil {
		return nil
	}
	id := ss.id
	defer func(start time.Time, kind string) {
		s.metrics.PacketSeconds.WithLabelValues(kind).Observe(time.Since(start).Seconds())
	}(time.Now(), packetKind(p))
	switch body := p.Body.(type) {
	case *schedulerv1.PeerPacket_Heartbeat:
		b.Heartbeat(id, body.Heartbeat)
	case *schedulerv1.PeerPacket_Register:
		r := body.Register
		if r == nil {
			return status.Error(codes.InvalidArgument, "empty register")
		}
		if !ss.regs.Allow() {
			s.enqueue(ss, &schedulerv1.SchedulerPacket{Body: &schedulerv1.SchedulerPacket_Error{Error: &schedulerv1.TaskError{
				TaskId: trunc(r.TaskId, 256), Code: schedulerv1.ErrorCode_ERROR_UNAVAILABLE, Message: "too many registrations; retry later"}}})
			return nil
		}
		if err := b.Register(id, r); err != nil && !errors.Is(err, errdefs.ErrInvalid) && !errors.Is(err, errdefs.ErrUnavailable) {
			return toStatus(err)
		}
	case *schedulerv1.PeerPacket_Pieces:
		if body.Pieces != nil && len(body.Pieces.Results) > scheduler.MaxReportBatch {
			return status.Errorf(codes.InvalidArgument, "more than %d piece results in one report", scheduler.MaxReportBatch)
		}
		b.ReportPieces(id, body.Pieces)
	case *schedulerv1.PeerPacket_Done:
		b.Done(id, body.Done)
	case *schedulerv1.PeerPacket_NeedParents:
		b.NeedParents(id, body.NeedParents)
	case *schedulerv1.PeerPacket_Leave:
		if body.Leave != nil {
			b.Leave(id, body.Leave.TaskId)
		}
	case *schedulerv1.PeerPacket_Hello:
		return status.Error(codes.InvalidArgument, "duplicate Hello")
	default:
		return status.Error(codes.InvalidArgument, "empty or unknown packet")
	}
	return nil
}

// packetKind names a packet's body for metrics.
func packetKind(p *schedulerv1.PeerPacket) string {
	switch p.Body.(type) {
	case *schedulerv1.PeerPacket_Heartbeat:
		return "heartbeat"
	case *schedulerv1.PeerPacket_Register:
		return "register"
	case *schedulerv1.PeerPacket_Pieces:
		return "pieces"
	case *schedulerv1.PeerPacket_Done:
		return "done"
	case *schedulerv1.PeerPacket_NeedParents:
		return "need_parents"
	case *schedulerv1.PeerPacket_Leave:
		return "leave"
	}
	return "other"
}

// validateHello checks a Hello and returns the host it describes; errors
// wrap errdefs.ErrInvalid.
func validateHello(h *schedulerv1.Hello) (scheduler.HostInfo, error) {
	bad := func(f string, a ...any) (scheduler.HostInfo, error) {
		return scheduler.HostInfo{}, fmt.Errorf("hello: "+f+": %w", append(a, errdefs.ErrInvalid)...)
	}
	if !hostIDRe.MatchString(h.HostId) {
		return bad("host_id %q: want 1..%d of [A-Za-z0-9._:-]", trunc(h.HostId, 64), MaxHostIDLen)
	}
	if net.ParseIP(h.Ip) == nil {
		return bad("ip %q does not parse", trunc(h.Ip, 64))
	}
	if h.UploadPort < 1 || h.UploadPort > 65535 {
		return bad("upload_port %d not in 1..65535", h.UploadPort)
	}
	if len(h.Hostname) > MaxNameLen || len(h.Zone) > MaxNameLen || len(h.Version) > MaxNameLen {
		return bad("hostname, zone or version longer than %d", MaxNameLen)
	}
	if len(h.Labels) > MaxLabels {
		return bad("%d labels, at most %d", len(h.Labels), MaxLabels)
	}
	for k, v := range h.Labels {
		if len(k) > MaxLabelBytes || len(v) > MaxLabelBytes {
			return bad("label %q longer than %d bytes", trunc(k, 64), MaxLabelBytes)
		}
	}
	labels := make(map[string]string, len(h.Labels))
	for k, v := range h.Labels {
		labels[k] = v
	}
	return scheduler.HostInfo{ID: h.HostId, Hostname: h.Hostname, IP: h.Ip, UploadPort: int(h.UploadPort),
		Zone: h.Zone, Labels: labels, Version: h.Version}, nil
}

// toStatus maps an error to a gRPC status: errdefs classes to codes, end of
// stream to nil.
func toStatus(err error) error {
	if err == nil || errors.Is(err, io.EOF) {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	code := codes.Internal
	switch {
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, errdefs.ErrInvalid):
		code = codes.InvalidArgument
	case errors.Is(err, errdefs.ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, errdefs.ErrForbidden):
		code = codes.PermissionDenied
	case errors.Is(err, errdefs.ErrUnavailable):
		code = codes.Unavailable
	case errors.Is(err, errdefs.ErrNoSpace):
		code = codes.ResourceExhausted
	case errors.Is(err, errdefs.ErrDigestMismatch):
		code = codes.DataLoss
	}
	return status.Error(code, err.Error())
}

func trunc(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
