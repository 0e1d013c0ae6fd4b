package scheduler

import (
	"context"
	"crypto/sha256"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	schedulerv1 "github.com/pouchfly/pouchfly/api/scheduler/v1"
	"github.com/pouchfly/pouchfly/internal/clock"
	"github.com/pouchfly/pouchfly/internal/tasktoken"
	"github.com/pouchfly/pouchfly/piece"
)

// recorder is a Sender that keeps every packet per host and checks the
// ordering contract on the fly: a piece named by a PieceAvailable or a
// ParentSet bitmap must have had its digest sent to that host before.
type recorder struct {
	mu         sync.Mutex
	pkts       map[string][]*schedulerv1.SchedulerPacket
	known      map[string]map[string]map[int]bool // host -> task -> piece
	violations []string
	disconnect []string
}

func newRecorder() *recorder {
	return &recorder{pkts: map[string][]*schedulerv1.SchedulerPacket{}, known: map[string]map[string]map[int]bool{}}
}

func (r *recorder) Send(host string, p *schedulerv1.SchedulerPacket) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pkts[host] = append(r.pkts[host], p)
	k := r.known[host]
	if k == nil {
		k = map[string]map[int]bool{}
		r.known[host] = k
	}
	check := func(task string, n int, what string) {
		if !k[task][n] {
			r.violations = append(r.violations, fmt.Sprintf("host %s task %.12s: %s names piece %d before its digest", host, task, what, n))
		}
	}
	switch b := p.Body.(type) {
	case *schedulerv1.SchedulerPacket_Task:
		if k[b.Task.TaskId] == nil {
			k[b.Task.TaskId] = map[int]bool{}
		}
		for i, sum := range b.Task.PieceSha256 {
			if len(sum) == sha256.Size {
				k[b.Task.TaskId][int(b.Task.FirstPiece)+i] = true
			}
		}
	case *schedulerv1.SchedulerPacket_Available:
		for _, n := range b.Available.Pieces {
			check(b.Available.TaskId, int(n), "PieceAvailable from "+b.Available.HostId)
		}
	case *schedulerv1.SchedulerPacket_Parents:
		for _, par := range b.Parents.Parents {
			bits := piece.Bitmap(par.Bitmap)
			for n := 0; n < len(bits)*8; n++ {
				if bits.Has(n) {
					check(b.Parents.TaskId, n, "ParentSet bitmap of "+par.HostId)
				}
			}
		}
	}
}

func (r *recorder) Disconnect(host string) {
	r.mu.Lock()
	r.disconnect = append(r.disconnect, host)
	r.mu.Unlock()
}

// take returns and forgets the packets sent to host.
func (r *recorder) take(host string) []*schedulerv1.SchedulerPacket {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := r.pkts[host]
	delete(r.pkts, host)
	return p
}

// fakeSeeder records seed requests.
type fakeSeeder struct {
	mu   sync.Mutex
	reqs []SeedRequest
}

func (f *fakeSeeder) Seed(_ context.Context, r SeedRequest) {
	f.mu.Lock()
	f.reqs = append(f.reqs, r)
	f.mu.Unlock()
}

func (f *fakeSeeder) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.reqs)
}

// authSeeder is a seeder that also authorizes joins.
type authSeeder struct {
	fakeSeeder
	auths []SeedRequest
}

func (a *authSeeder) Authorize(_ context.Context, r SeedRequest) {
	a.mu.Lock()
	a.auths = append(a.auths, r)
	a.mu.Unlock()
}

type env struct {
	t      *testing.T
	s      *Scheduler
	rec    *recorder
	seeder *fakeSeeder
	clk    *clock.Fake
	signer *tasktoken.Signer
}

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// newEnv returns a scheduler with a recorder, a fake seeder (nil if
// seeder is nil) and a CDN host "cdn" (when a seeder is given).
func newEnv(t *testing.T, cfg Config, seeder Seeder) *env {
	t.Helper()
	signer, err := tasktoken.NewSigner(nil)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, rec: newRecorder(), clk: clock.NewFake(t0), signer: signer}
	switch sd := seeder.(type) {
	case *fakeSeeder:
		e.seeder = sd
	case *authSeeder:
		e.seeder = &sd.fakeSeeder
	}
	e.s, err = New(cfg, e.rec, seeder, signer, e.clk)
	if err != nil {
		t.Fatal(err)
	}
	if seeder != nil {
		e.must(e.s.AddHost(HostInfo{ID: "cdn", IP: "10.0.0.1", UploadPort: 8001, CDN: true}))
	}
	t.Cleanup(func() {
		e.rec.mu.Lock()
		defer e.rec.mu.Unlock()
		for _, v := range e.rec.violations {
			t.Error("ordering contract:", v)
		}
	})
	return e
}

func (e *env) must(err error) {
	e.t.Helper()
	if err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) host(id, zone string) {
	e.t.Helper()
	e.must(e.s.AddHost(HostInfo{ID: id, IP: "10.0.1.1", UploadPort: 9000, Zone: zone}))
}

// hosts adds hosts without a zone.
func (e *env) hosts(ids ...string) {
	e.t.Helper()
	for _, id := range ids {
		e.host(id, "")
	}
}

func taskID(i int) string { return fmt.Sprintf("sha256:%064x", i) }

func sum(task string, n int) []byte {
	s := sha256.Sum256([]byte(fmt.Sprint(task, n)))
	return s[:]
}

func sums(task string, count int) [][]byte {
	var out [][]byte
	for n := range count {
		out = append(out, sum(task, n))
	}
	return out
}

func reg(task string) *schedulerv1.RegisterTask {
	return &schedulerv1.RegisterTask{TaskId: task, Url: "https://registry.example/v2/x/blobs/" + task,
		Headers: map[string]string{"Authorization": "Bearer secret"}}
}

// seedAll makes the CDN hold every piece of task: count pieces of 1 MiB.
func (e *env) seedAll(task string, count int) {
	e.s.SeedMeta(task, int64(count)<<20, 1<<20)
	for n := range count {
		e.s.SeedPiece(task, n, sum(task, n))
	}
	e.s.SeedDone(task, int64(count)<<20, "")
}

// held makes host hold task completely.
func (e *env) held(host, task string, count int) {
	e.t.Helper()
	e.must(e.s.Held(host, &schedulerv1.HeldTask{TaskId: task, ContentLength: int64(count) << 20,
		PieceSize: 1 << 20, PieceSha256: sums(task, count)}))
}

func (e *env) report(host, task string, rs ...*schedulerv1.PieceResult) {
	e.s.ReportPieces(host, &schedulerv1.PieceReports{TaskId: task, Results: rs})
}

func res(parent string, n int, f schedulerv1.Failure, costMs uint32) *schedulerv1.PieceResult {
	return &schedulerv1.PieceResult{Piece: uint32(n), ParentId: parent, Failure: f, Bytes: 1 << 20, CostMs: costMs}
}

// Packet accessors.

func infos(ps []*schedulerv1.SchedulerPacket) []*schedulerv1.TaskInfo {
	var out []*schedulerv1.TaskInfo
	for _, p := range ps {
		if x := p.GetTask(); x != nil {
			out = append(out, x)
		}
	}
	return out
}

func lastParents(t *testing.T, ps []*schedulerv1.SchedulerPacket) []string {
	t.Helper()
	var last *schedulerv1.ParentSet
	for _, p := range ps {
		if x := p.GetParents(); x != nil {
			last = x
		}
	}
	if last == nil {
		t.Fatal("no ParentSet sent")
	}
	out := []string{}
	for _, par := range last.Parents {
		out = append(out, par.HostId)
	}
	return out
}

func parentSets(ps []*schedulerv1.SchedulerPacket) int {
	n := 0
	for _, p := range ps {
		if p.GetParents() != nil {
			n++
		}
	}
	return n
}

func errs(ps []*schedulerv1.SchedulerPacket) []*schedulerv1.TaskError {
	var out []*schedulerv1.TaskError
	for _, p := range ps {
		if x := p.GetError(); x != nil {
			out = append(out, x)
		}
	}
	return out
}

func bts(ps []*schedulerv1.SchedulerPacket) int {
	n := 0
	for _, p := range ps {
		if p.GetBackToSource() != nil {
			n++
		}
	}
	return n
}

func avail(ps []*schedulerv1.SchedulerPacket, from string) []uint32 {
	var out []uint32
	for _, p := range ps {
		if x := p.GetAvailable(); x != nil && x.HostId == from {
			out = append(out, x.Pieces...)
		}
	}
	return out
}

// cdnHeard returns the pieces the packets named as held by the CDN: in a
// PieceAvailable from it or in its bitmap in a ParentSet.
func cdnHeard(ps []*schedulerv1.SchedulerPacket) map[int]bool { return heardFrom(ps, "cdn") }

// heardFrom returns the pieces the packets named as held by host from (""
// for any host): in a PieceAvailable or in a parent's bitmap in a
// ParentSet.
func heardFrom(ps []*schedulerv1.SchedulerPacket, from string) map[int]bool {
	out := map[int]bool{}
	for _, p := range ps {
		if x := p.GetAvailable(); x != nil && (from == "" || x.HostId == from) {
			for _, n := range x.Pieces {
				out[int(n)] = true
			}
		}
		for _, par := range p.GetParents().GetParents() {
			if from == "" || par.HostId == from {
				b := piece.Bitmap(par.Bitmap)
				for n := range len(b) * 8 {
					if b.Has(n) {
						out[n] = true
					}
				}
			}
		}
	}
	return out
}

func contains(xs []string, x string) bool { return slices.Contains(xs, x) }

func TestMain(m *testing.M) {
	flag.Parse()
	if !testing.Verbose() {
		slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil)))
	}
	os.Exit(m.Run())
}
