package supernode

import (
	"context"
	"crypto/sha256"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	schedulerv1 "github.com/pouchfly/pouchfly/api/scheduler/v1"
	"github.com/pouchfly/pouchfly/internal/clock"
	"github.com/pouchfly/pouchfly/internal/tasktoken"
	"github.com/pouchfly/pouchfly/piece"
	"github.com/pouchfly/pouchfly/scheduler"
)

func TestMain(m *testing.M) {
	flag.Parse()
	if !testing.Verbose() {
		slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil)))
	}
	os.Exit(m.Run())
}

const wait = 5 * time.Second

type fakeSeeder struct {
	mu   sync.Mutex
	reqs []scheduler.SeedRequest
}

func (f *fakeSeeder) Seed(_ context.Context, r scheduler.SeedRequest) {
	f.mu.Lock()
	f.reqs = append(f.reqs, r)
	f.mu.Unlock()
}

func (f *fakeSeeder) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.reqs)
}

type env struct {
	t      *testing.T
	addr   string
	srv    *Server
	sched  *scheduler.Scheduler
	seeder *fakeSeeder
	signer *tasktoken.Signer
}

func newEnv(t *testing.T, cfg Config) *env {
	t.Helper()
	signer, err := tasktoken.NewSigner(nil)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	sd := &fakeSeeder{}
	sched, err := scheduler.New(scheduler.DefaultConfig(), srv, sd, signer, clock.Real{})
	if err != nil {
		t.Fatal(err)
	}
	srv.SetBackend(sched)
	if err := sched.AddHost(scheduler.HostInfo{ID: "cdn", IP: "127.0.0.1", UploadPort: 65001, CDN: true}); err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(srv.ServerOptions()...)
	schedulerv1.RegisterSchedulerServer(gs, srv)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	return &env{t: t, addr: lis.Addr().String(), srv: srv, sched: sched, seeder: sd, signer: signer}
}

// client is a fake host agent: a real gRPC stream and a goroutine moving
// received packets to a channel.
type client struct {
	t      *testing.T
	id     string
	stream grpc.BidiStreamingClient[schedulerv1.PeerPacket, schedulerv1.SchedulerPacket]
	cancel context.CancelFunc
	in     chan *schedulerv1.SchedulerPacket
	err    chan error
}

func (e *env) open(id string, opts ...grpc.DialOption) *client {
	e.t.Helper()
	conn, err := grpc.NewClient(e.addr, append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)...)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	e.t.Cleanup(cancel)
	stream, err := schedulerv1.NewSchedulerClient(conn).Session(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	c := &client{t: e.t, id: id, stream: stream, cancel: cancel, in: make(chan *schedulerv1.SchedulerPacket, 100000), err: make(chan error, 1)}
	go func() {
		for {
			p, err := stream.Recv()
			if err != nil {
				c.err <- err
				return
			}
			c.in <- p
		}
	}()
	return c
}

func hello(id string) *schedulerv1.PeerPacket {
	return &schedulerv1.PeerPacket{Body: &schedulerv1.PeerPacket_Hello{Hello: &schedulerv1.Hello{
		HostId: id, Hostname: id, Ip: "127.0.0.1", UploadPort: 40000, Zone: "z1", Version: "test",
		Labels: map[string]string{"rack": "r1"}}}}
}

// connect opens a session and checks the Welcome.
func (e *env) connect(id string) *client {
	e.t.Helper()
	c := e.open(id)
	c.send(hello(id))
	w := c.next().GetWelcome()
	if w == nil || w.HostId != id || len(w.TokenPublicKey) != 32 || w.ReportIntervalMs != 100 {
		e.t.Fatalf("%s: welcome %v", id, w)
	}
	return c
}

func (c *client) send(p *schedulerv1.PeerPacket) {
	c.t.Helper()
	if err := c.stream.Send(p); err != nil {
		c.t.Fatalf("%s: send: %v", c.id, err)
	}
}

func (c *client) next() *schedulerv1.SchedulerPacket {
	c.t.Helper()
	select {
	case p := <-c.in:
		return p
	case err := <-c.err:
		c.t.Fatalf("%s: stream ended: %v", c.id, err)
	case <-time.After(wait):
		c.t.Fatalf("%s: no packet within %v", c.id, wait)
	}
	return nil
}

// until reads packets until one satisfies ok, returning all read.
func (c *client) until(ok func(*schedulerv1.SchedulerPacket) bool) []*schedulerv1.SchedulerPacket {
	c.t.Helper()
	var got []*schedulerv1.SchedulerPacket
	for {
		p := c.next()
		got = append(got, p)
		if ok(p) {
			return got
		}
	}
}

// ended waits for the stream to end and returns its status code.
func (c *client) ended() codes.Code {
	c.t.Helper()
	for {
		select {
		case <-c.in:
		case err := <-c.err:
			if err == io.EOF {
				return codes.OK
			}
			return status.Code(err)
		case <-time.After(wait):
			c.t.Fatalf("%s: stream did not end", c.id)
		}
	}
}

func (e *env) eventually(what string, ok func(scheduler.Snapshot) bool) {
	e.t.Helper()
	deadline := time.Now().Add(wait)
	for !ok(e.sched.Snapshot()) {
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func hasHost(s scheduler.Snapshot, id string) bool {
	return slices.ContainsFunc(s.Hosts, func(h scheduler.HostSnapshot) bool { return h.ID == id })
}

func sum(n int) []byte {
	s := sha256.Sum256([]byte(fmt.Sprint(n)))
	return s[:]
}

const task = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func register(c *client) {
	c.send(&schedulerv1.PeerPacket{Body: &schedulerv1.PeerPacket_Register{Register: &schedulerv1.RegisterTask{
		TaskId: task, Url: "https://registry.example/v2/a/blobs/" + task, Headers: map[string]string{"Authorization": "Bearer x"}}}})
}

func isParents(p *schedulerv1.SchedulerPacket) bool { return p.GetParents() != nil }

func parentIDs(p *schedulerv1.SchedulerPacket) []string {
	var ids []string
	for _, par := range p.GetParents().GetParents() {
		ids = append(ids, par.HostId)
	}
	return ids
}

// checkOrder verifies the ordering contract over one host's packets.
func checkOrder(t *testing.T, who string, ps []*schedulerv1.SchedulerPacket, known map[int]bool) {
	t.Helper()
	for _, p := range ps {
		switch {
		case p.GetTask() != nil:
			for i := range p.GetTask().PieceSha256 {
				known[int(p.GetTask().FirstPiece)+i] = true
			}
		case p.GetAvailable() != nil:
			for _, n := range p.GetAvailable().Pieces {
				if !known[int(n)] {
					t.Fatalf("%s: PieceAvailable %d before its digest", who, n)
				}
			}
		case p.GetParents() != nil:
			for _, par := range p.GetParents().Parents {
				b := piece.Bitmap(par.Bitmap)
				for n := 0; n < 8*len(b); n++ {
					if b.Has(n) && !known[n] {
						t.Fatalf("%s: ParentSet names piece %d before its digest", who, n)
					}
				}
			}
		}
	}
}

func TestSessionEndToEnd(t *testing.T) {
	e := newEnv(t, DefaultConfig())
	a := e.connect("host-a")
	b := e.connect("host-b")

	// Register: TaskInfo with a verifiable token, then ParentSet [cdn].
	register(a)
	pa := a.until(isParents)
	if len(pa) != 2 || pa[0].GetTask() == nil {
		t.Fatalf("a after register: %v", pa)
	}
	if h, err := tasktoken.Verify(e.signer.Public(), pa[0].GetTask().Token, task, time.Now()); err != nil || h != "host-a" {
		t.Fatalf("token: %q %v", h, err)
	}
	if ids := parentIDs(pa[1]); !slices.Equal(ids, []string{"cdn"}) {
		t.Fatalf("a's parents %v", ids)
	}
	register(b)
	pb := b.until(isParents)
	if e.seeder.count() != 1 {
		t.Fatalf("seeds %d, want 1", e.seeder.count())
	}
	knownA, knownB := map[int]bool{}, map[int]bool{}
	checkOrder(t, "a", pa, knownA)
	checkOrder(t, "b", pb, knownB)

	// Seeder progress reaches both, digests before availability.
	const pieces = 6
	e.sched.SeedMeta(task, pieces<<20, 1<<20)
	for n := range pieces {
		e.sched.SeedPiece(task, n, sum(n))
	}
	e.sched.SeedDone(task, pieces<<20, "")
	lastAvail := func(p *schedulerv1.SchedulerPacket) bool {
		av := p.GetAvailable()
		return av != nil && av.HostId == "cdn" && slices.Contains(av.Pieces, pieces-1)
	}
	pa = a.until(lastAvail)
	pb = b.until(lastAvail)
	checkOrder(t, "a", pa, knownA)
	checkOrder(t, "b", pb, knownB)
	for n := range pieces {
		if !knownA[n] || !knownB[n] {
			t.Fatalf("digest of piece %d missing: a %v b %v", n, knownA[n], knownB[n])
		}
	}
	var availA []uint32
	for _, p := range pa {
		if av := p.GetAvailable(); av != nil && av.HostId == "cdn" {
			availA = append(availA, av.Pieces...)
		}
	}
	if len(availA) != pieces {
		t.Fatalf("a got availability of %v from the CDN", availA)
	}

	// a downloads two pieces; b asks for parents and gets a; a's next piece
	// is forwarded to b.
	report := func(c *client, pieces ...int) {
		r := &schedulerv1.PieceReports{TaskId: task}
		for _, n := range pieces {
			r.Results = append(r.Results, &schedulerv1.PieceResult{Piece: uint32(n), ParentId: "cdn", Bytes: 1 << 20, CostMs: 20})
		}
		c.send(&schedulerv1.PeerPacket{Body: &schedulerv1.PeerPacket_Pieces{Pieces: r}})
	}
	report(a, 0, 1)
	e.eventually("a's report is in", func(s scheduler.Snapshot) bool {
		return len(s.Tasks) == 1 && slices.ContainsFunc(s.Tasks[0].Peers, func(p scheduler.PeerSnapshot) bool {
			return p.HostID == "host-a" && p.Pieces == 2
		})
	})
	b.send(&schedulerv1.PeerPacket{Body: &schedulerv1.PeerPacket_NeedParents{NeedParents: &schedulerv1.NeedParents{TaskId: task}}})
	ps := b.until(isParents)
	checkOrder(t, "b", ps, knownB)
	if ids := parentIDs(ps[len(ps)-1]); !slices.Equal(ids, []string{"host-a", "cdn"}) {
		t.Fatalf("b's parents %v, want [host-a cdn]", ids)
	}
	if par := ps[len(ps)-1].GetParents().Parents[0]; par.Addr != "127.0.0.1:40000" || par.Bitmap[0] != 0b11 || par.Zone != "z1" {
		t.Fatalf("parent a: %v", par)
	}
	report(a, 2)
	ps = b.until(func(p *schedulerv1.SchedulerPacket) bool { return p.GetAvailable().GetHostId() == "host-a" })
	if got := ps[len(ps)-1].GetAvailable().Pieces; !slices.Equal(got, []uint32{2}) {
		t.Fatalf("b got %v from a", got)
	}

	// A heartbeat is accepted; an invalid registration is answered with a
	// TaskError and does not end the session.
	a.send(&schedulerv1.PeerPacket{Body: &schedulerv1.PeerPacket_Heartbeat{Heartbeat: &schedulerv1.Heartbeat{ActiveUploads: 1}}})
	a.send(&schedulerv1.PeerPacket{Body: &schedulerv1.PeerPacket_Register{Register: &schedulerv1.RegisterTask{TaskId: "bogus", Url: "x"}}})
	if p := a.until(func(p *schedulerv1.SchedulerPacket) bool { return p.GetError() != nil }); p[len(p)-1].GetError().Code != schedulerv1.ErrorCode_ERROR_INVALID {
		t.Fatalf("bad register answered %v", p[len(p)-1])
	}

	// a disconnects: it is removed and b gets parents without it.
	a.cancel()
	e.eventually("host-a is removed", func(s scheduler.Snapshot) bool { return !hasHost(s, "host-a") })
	ps = b.until(func(p *schedulerv1.SchedulerPacket) bool {
		return isParents(p) && !slices.Contains(parentIDs(p), "host-a")
	})
	if ids := parentIDs(ps[len(ps)-1]); !slices.Equal(ids, []string{"cdn"}) {
		t.Fatalf("b's parents after a left: %v", ids)
	}
	// b half-closes: the session ends cleanly and b is removed.
	if err := b.stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if code := b.ended(); code != codes.OK {
		t.Fatalf("b's stream ended with %v", code)
	}
	e.eventually("host-b is removed", func(s scheduler.Snapshot) bool { return !hasHost(s, "host-b") })
}

func TestSessionRejectsBadStart(t *testing.T) {
	e := newEnv(t, DefaultConfig())
	tests := []struct {
		name  string
		first *schedulerv1.PeerPacket
	}{
		{"heartbeat first", &schedulerv1.PeerPacket{Body: &schedulerv1.PeerPacket_Heartbeat{Heartbeat: &schedulerv1.Heartbeat{}}}},
		{"empty packet", &schedulerv1.PeerPacket{}},
		{"empty host id", hello("")},
		{"bad host id", hello("a b")},
		{"long host id", hello(string(make([]byte, 129)))},
		{"bad ip", func() *schedulerv1.PeerPacket { p := hello("h"); p.GetHello().Ip = "999.1.1.1"; return p }()},
		{"port 0", func() *schedulerv1.PeerPacket { p := hello("h"); p.GetHello().UploadPort = 0; return p }()},
		{"port too big", func() *schedulerv1.PeerPacket { p := hello("h"); p.GetHello().UploadPort = 70000; return p }()},
		{"too many labels", func() *schedulerv1.PeerPacket {
			p := hello("h")
			for i := range 33 {
				p.GetHello().Labels[fmt.Sprint(i)] = "v"
			}
			return p
		}()},
		{"long label", func() *schedulerv1.PeerPacket {
			p := hello("h")
			p.GetHello().Labels["k"] = string(make([]byte, 257))
			return p
		}()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := e.open("x")
			c.send(tt.first)
			if code := c.ended(); code != codes.InvalidArgument {
				t.Fatalf("code %v, want InvalidArgument", code)
			}
		})
	}
	// Claiming the CDN's ID is refused.
	c := e.open("cdn")
	c.send(hello("cdn"))
	if code := c.ended(); code != codes.PermissionDenied {
		t.Fatalf("cdn impersonation: code %v, want PermissionDenied", code)
	}
	// A second Hello ends the session.
	c = e.connect("twice")
	c.send(hello("twice"))
	if code := c.ended(); code != codes.InvalidArgument {
		t.Fatalf("second hello: code %v", code)
	}
	if s := e.sched.Snapshot(); len(s.Hosts) != 1 {
		t.Fatalf("hosts left behind: %+v", s.Hosts)
	}
}

// A reconnecting host replaces its old session; the old session's end must
// not remove the new one.
func TestSessionReconnect(t *testing.T) {
	e := newEnv(t, DefaultConfig())
	old := e.connect("h")
	register(old)
	old.until(isParents)
	fresh := e.connect("h")
	if code := old.ended(); code != codes.Aborted {
		t.Fatalf("old session ended with %v, want Aborted", code)
	}
	register(fresh)
	fresh.until(isParents)
	s := e.sched.Snapshot()
	if !hasHost(s, "h") || len(s.Tasks) != 1 {
		t.Fatalf("after reconnect: %+v", s)
	}
	fresh.cancel()
	e.eventually("h is removed", func(s scheduler.Snapshot) bool { return !hasHost(s, "h") })
}

// A host that does not read its stream loses its session instead of
// blocking the scheduler.
func TestSessionQueueOverflow(t *testing.T) {
	cfg := DefaultConfig()
	cfg.QueueLen = 16
	e := newEnv(t, cfg)
	// Fixed small windows: the server's sends block once 64 KiB are unread.
	c := e.open("slow", grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	c.send(hello("slow"))
	register(c)
	e.eventually("slow has registered", func(s scheduler.Snapshot) bool { return len(s.Tasks) == 1 })
	big := make([][]byte, 1000) // 32 KB of digests per packet
	for i := range big {
		big[i] = sum(i)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 200 {
			e.srv.Send("slow", &schedulerv1.SchedulerPacket{Body: &schedulerv1.SchedulerPacket_Task{
				Task: &schedulerv1.TaskInfo{TaskId: task, PieceSha256: big}}})
		}
	}()
	select {
	case <-done:
	case <-time.After(wait):
		t.Fatal("Send blocked")
	}
	if code := c.ended(); code != codes.ResourceExhausted {
		t.Fatalf("slow reader's session ended with %v, want ResourceExhausted", code)
	}
	e.eventually("slow is removed", func(s scheduler.Snapshot) bool { return !hasHost(s, "slow") })
}
