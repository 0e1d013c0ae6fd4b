package peer

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"

	schedulerv1 "github.com/pouchfly/pouchfly/api/scheduler/v1"
)

// maxMsgSize bounds every gRPC message in either direction.
const maxMsgSize = 16 << 20

// session keeps one control stream to a supernode, failing over along the
// configured list and reconnecting with backoff. It delivers the
// scheduler's packets to the peer and queues the peer's packets to it.
type session struct {
	addrs    []string
	hello    func() *schedulerv1.Hello
	dispatch func(*schedulerv1.SchedulerPacket)
	// onChange is called (from the session goroutine) when the session
	// comes up (true) or goes down (false).
	onChange func(up bool)
	creds    credentials.TransportCredentials
	log      *slog.Logger

	out chan *schedulerv1.PeerPacket

	mu      sync.Mutex
	up      bool
	upCh    chan struct{} // closed while up
	welcome *schedulerv1.Welcome
	key     atomic.Pointer[ed25519.PublicKey]
	current string
	// established counts sessions opened.
	established atomic.Int64
}

func newSession(addrs []string, creds credentials.TransportCredentials, hello func() *schedulerv1.Hello, dispatch func(*schedulerv1.SchedulerPacket), onChange func(bool), log *slog.Logger) *session {
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	return &session{addrs: addrs, creds: creds, hello: hello, dispatch: dispatch, onChange: onChange, log: log,
		out: make(chan *schedulerv1.PeerPacket, 8192), upCh: make(chan struct{})}
}

// Send queues p for the supernode. It never blocks: while the session is
// down, or if the queue is full, the packet is dropped (tasks re-register
// when the session comes back).
func (s *session) Send(p *schedulerv1.PeerPacket) bool {
	s.mu.Lock()
	up := s.up
	s.mu.Unlock()
	if !up {
		return false
	}
	select {
	case s.out <- p:
		return true
	default:
		s.log.Warn("supernode send queue full; packet dropped")
		return false
	}
}

// Up reports whether a session is established.
func (s *session) Up() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.up
}

// WaitUp returns a channel closed once the session is up.
func (s *session) WaitUp() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.upCh
}

// Key returns the supernode's token verification key, nil before Welcome.
func (s *session) Key() ed25519.PublicKey {
	if k := s.key.Load(); k != nil {
		return *k
	}
	return nil
}

// Welcome returns the last Welcome received.
func (s *session) Welcome() *schedulerv1.Welcome {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.welcome
}

// Current returns the supernode address in use ("" when down).
func (s *session) Current() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.current
}

// Run keeps a session up until ctx ends.
func (s *session) Run(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for i := 0; ctx.Err() == nil; i++ {
		if len(s.addrs) == 0 {
			<-ctx.Done()
			return
		}
		addr := s.addrs[i%len(s.addrs)]
		start := time.Now()
		err := s.runOne(ctx, addr)
		if ctx.Err() != nil {
			return
		}
		s.log.Warn("supernode session ended", "supernode", addr, "err", err)
		if time.Since(start) > 10*time.Second {
			backoff = 100 * time.Millisecond
		}
		// Try the next supernode at once; pause once per full round.
		if (i+1)%len(s.addrs) == 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 3*time.Second)
		}
	}
}

func (s *session) setUp(up bool, addr string) {
	s.mu.Lock()
	if up == s.up {
		s.mu.Unlock()
		return
	}
	s.up = up
	if up {
		s.current = addr
		close(s.upCh)
	} else {
		s.current = ""
		s.upCh = make(chan struct{})
	}
	s.mu.Unlock()
	if s.onChange != nil {
		s.onChange(up)
	}
}

func (s *session) runOne(ctx context.Context, addr string) error {
	conn, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(s.creds),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMsgSize), grpc.MaxCallSendMsgSize(maxMsgSize)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 5 * time.Second}),
	)
	if err != nil {
		return err
	}
	defer conn.Close()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := schedulerv1.NewSchedulerClient(conn).Session(sctx)
	if err != nil {
		return err
	}
	if err := stream.Send(&schedulerv1.PeerPacket{Body: &schedulerv1.PeerPacket_Hello{Hello: s.hello()}}); err != nil {
		return err
	}
	// The Welcome must come quickly, or the supernode is not healthy.
	dctx, dcancel := context.WithTimeout(sctx, 3*time.Second)
	type recvResult struct {
		p   *schedulerv1.SchedulerPacket
		err error
	}
	first := make(chan recvResult, 1)
	go func() { p, err := stream.Recv(); first <- recvResult{p, err} }()
	var r recvResult
	select {
	case r = <-first:
	case <-dctx.Done():
		dcancel()
		return fmt.Errorf("no welcome from %s: %w", addr, dctx.Err())
	}
	dcancel()
	if r.err != nil {
		return r.err
	}
	w := r.p.GetWelcome()
	if w == nil {
		return errors.New("first packet from supernode is not a welcome")
	}
	if len(w.TokenPublicKey) == ed25519.PublicKeySize {
		k := ed25519.PublicKey(append([]byte(nil), w.TokenPublicKey...))
		s.key.Store(&k)
	}
	s.mu.Lock()
	s.welcome = w
	s.mu.Unlock()
	// Drop whatever was queued for an earlier session.
	for len(s.out) > 0 {
		<-s.out
	}
	s.established.Add(1)
	s.log.Info("supernode session up", "supernode", addr, "supernode_id", w.SupernodeId)
	s.setUp(true, addr)
	defer s.setUp(false, "")

	sendErr := make(chan error, 1)
	go func() {
		for {
			select {
			case <-sctx.Done():
				sendErr <- sctx.Err()
				return
			case p := <-s.out:
				if err := stream.Send(p); err != nil {
					sendErr <- err
					cancel()
					return
				}
			}
		}
	}()
	for {
		p, err := stream.Recv()
		if err != nil {
			cancel()
			<-sendErr
			return err
		}
		s.dispatch(p)
	}
}
