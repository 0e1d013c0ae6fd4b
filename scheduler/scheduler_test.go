package scheduler

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	schedulerv1 "github.com/pouchfly/pouchfly/api/scheduler/v1"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/internal/tasktoken"
)

const (
	vNone    = schedulerv1.Failure_FAILURE_NONE
	vVerify  = schedulerv1.Failure_FAILURE_VERIFY
	vNetwork = schedulerv1.Failure_FAILURE_NETWORK
	vLocal   = schedulerv1.Failure_FAILURE_LOCAL
	vSlow    = schedulerv1.Failure_FAILURE_SLOW
)

func TestRegisterSeedsAndAnswers(t *testing.T) {
	e := newEnv(t, DefaultConfig(), &fakeSeeder{})
	e.host("a", "")
	task := taskID(1)
	e.must(e.s.Register("a", reg(task)))
	if e.seeder.count() != 1 {
		t.Fatalf("seeds = %d, want 1", e.seeder.count())
	}
	req := e.seeder.reqs[0]
	if req.TaskID != task || req.HostID != "a" || req.Headers["Authorization"] != "Bearer secret" || req.URL == "" {
		t.Fatalf("seed request %+v", req)
	}
	ps := e.rec.take("a")
	if len(ps) != 2 || ps[0].GetTask() == nil || ps[1].GetParents() == nil {
		t.Fatalf("want TaskInfo then ParentSet, got %v", ps)
	}
	ti := ps[0].GetTask()
	if ti.ContentLength != -1 || ti.Digest != task {
		t.Fatalf("TaskInfo %v", ti)
	}
	host, err := tasktoken.Verify(e.signer.Public(), ti.Token, task, t0)
	if err != nil || host != "a" {
		t.Fatalf("token: host %q err %v", host, err)
	}
	if exp := time.Unix(ti.TokenExpiryUnix, 0); !exp.Equal(t0.Add(10 * time.Minute)) {
		t.Fatalf("token expiry %v", exp)
	}
	if _, err := tasktoken.Verify(e.signer.Public(), ti.Token, task, t0.Add(11*time.Minute)); err == nil {
		t.Fatal("token valid after its TTL")
	}
	if got := lastParents(t, ps); !slices.Equal(got, []string{"cdn"}) {
		t.Fatalf("parents %v, want the seeding CDN", got)
	}
	if par := ps[1].GetParents().Parents[0]; !par.Cdn || par.Addr != "10.0.0.1:8001" {
		t.Fatalf("cdn parent %v", par)
	}
	// A second host joins: no second seed; it gets the digests known so far.
	e.s.SeedMeta(task, 3<<20, 1<<20)
	e.s.SeedPiece(task, 0, sum(task, 0))
	e.s.SeedPiece(task, 1, sum(task, 1))
	e.host("b", "")
	e.must(e.s.Register("b", reg(task)))
	if e.seeder.count() != 1 {
		t.Fatalf("seeds = %d after a join, want 1", e.seeder.count())
	}
	pb := e.rec.take("b")
	tib := infos(pb)
	if len(tib) != 1 || tib[0].ContentLength != 3<<20 || tib[0].PieceSize != 1<<20 || tib[0].FirstPiece != 0 ||
		len(tib[0].PieceSha256) != 2 || !bytes.Equal(tib[0].PieceSha256[1], sum(task, 1)) || tib[0].Token == "" {
		t.Fatalf("join TaskInfo %v", tib)
	}
	// b's parents: a (downloading too, so it will have pieces to trade)
	// and the CDN, with the pieces it holds.
	var cdnBits []byte
	for _, par := range pb[len(pb)-1].GetParents().Parents {
		if par.Cdn {
			cdnBits = par.Bitmap
		}
	}
	if got := lastParents(t, pb); !slices.Equal(got, []string{"a", "cdn"}) {
		t.Fatalf("b's parents %v, want [a cdn]", got)
	}
	if len(cdnBits) != 1 || cdnBits[0] != 0b11 {
		t.Fatalf("cdn bitmap %08b", cdnBits)
	}
	// Re-registering resends everything (agent restarted the download).
	e.must(e.s.Register("b", reg(task)))
	if pb := e.rec.take("b"); len(infos(pb)) != 1 || parentSets(pb) != 1 {
		t.Fatalf("re-register sent %v", pb)
	}
}

func TestRegisterValidation(t *testing.T) {
	e := newEnv(t, DefaultConfig(), &fakeSeeder{})
	e.host("a", "")
	good := reg(taskID(1))
	tests := []struct {
		name string
		mod  func(r *schedulerv1.RegisterTask)
	}{
		{"bad task id", func(r *schedulerv1.RegisterTask) { r.TaskId = "nope" }},
		{"empty url", func(r *schedulerv1.RegisterTask) { r.Url = "" }},
		{"huge url", func(r *schedulerv1.RegisterTask) { r.Url = "https://x/" + strings.Repeat("a", MaxURLLen) }},
		{"bad digest", func(r *schedulerv1.RegisterTask) { r.Digest = "md5:00" }},
		{"bad range", func(r *schedulerv1.RegisterTask) { r.Range = "0-1" }},
		{"too many headers", func(r *schedulerv1.RegisterTask) {
			r.Headers = map[string]string{}
			for i := range MaxHeaders + 1 {
				r.Headers[fmt.Sprint("h", i)] = "v"
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &schedulerv1.RegisterTask{TaskId: good.TaskId, Url: good.Url}
			tt.mod(r)
			err := e.s.Register("a", r)
			if !errors.Is(err, errdefs.ErrInvalid) {
				t.Fatalf("err = %v, want ErrInvalid", err)
			}
			ps := e.rec.take("a")
			if es := errs(ps); len(ps) != 1 || len(es) != 1 || es[0].Code != schedulerv1.ErrorCode_ERROR_INVALID {
				t.Fatalf("sent %v, want one ERROR_INVALID", ps)
			}
		})
	}
	if err := e.s.Register("ghost", good); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("unknown host: err = %v", err)
	}
	if e.seeder.count() != 0 {
		t.Fatal("invalid registrations reached the seeder")
	}
	if n := len(e.s.Snapshot().Tasks); n != 0 {
		t.Fatalf("%d tasks after invalid registrations", n)
	}
}

// The digests of piece n reach every host before anything naming n, even
// when hosts join mid-seed and peers forward pieces. (The recorder checks
// every packet; this test drives many interleavings.)
func TestOrderingContract(t *testing.T) {
	cfg := DefaultConfig()
	cfg.CDNFanout = 0 // every child hears of every CDN piece
	e := newEnv(t, cfg, &fakeSeeder{})
	task := taskID(7)
	const count = 20
	for i := range 6 {
		e.host(fmt.Sprint("h", i), "")
	}
	e.must(e.s.Register("h0", reg(task)))
	e.s.SeedMeta(task, count<<20, 1<<20)
	for n := range count {
		e.s.SeedPiece(task, n, sum(task, n))
		if n%4 == 1 {
			h := fmt.Sprint("h", n/4+1)
			e.must(e.s.Register(h, reg(task)))
		}
		// Every registered host fetches piece n from the CDN or its first parent
		// and reports it.
		for i := 0; i <= min(n/4, 5); i++ {
			h := fmt.Sprint("h", i)
			e.report(h, task, res("cdn", n, vNone, 50))
			e.s.NeedParents(h, &schedulerv1.NeedParents{TaskId: task})
		}
	}
	e.s.SeedDone(task, count<<20, task)
	// h0 saw each digest exactly once, in order, and heard of each piece
	// from a parent (a PieceAvailable or a bitmap in a ParentSet: from
	// the CDN, or — once h0's set is full of peers, which a seeding CDN no
	// longer displaces — from the peers that got it), so the recorder
	// checked the order for every piece.
	ps := e.rec.take("h0")
	seen := map[int]int{}
	for _, ti := range infos(ps) {
		for i := range ti.PieceSha256 {
			seen[int(ti.FirstPiece)+i]++
		}
	}
	for n := range count {
		if seen[n] != 1 {
			t.Fatalf("h0 got the digest of piece %d %d times", n, seen[n])
		}
	}
	if got := heardFrom(ps, ""); len(got) != count {
		t.Fatalf("h0 heard of %d pieces, want %d", len(got), count)
	}
	if last := infos(ps); !last[len(last)-1].Complete {
		t.Fatal("final TaskInfo not complete")
	}
}

func TestPeersForwardAvailability(t *testing.T) {
	e := newEnv(t, DefaultConfig(), &fakeSeeder{})
	task := taskID(2)
	e.host("a", "z1")
	e.host("b", "z1")
	e.must(e.s.Register("a", reg(task)))
	e.seedAll(task, 8)
	e.must(e.s.Register("b", reg(task)))
	// a downloads 0..3 from the CDN.
	for n := range 4 {
		e.report("a", task, res("cdn", n, vNone, 100))
	}
	e.rec.take("b")
	e.s.NeedParents("b", &schedulerv1.NeedParents{TaskId: task})
	pb := e.rec.take("b")
	if got := lastParents(t, pb); !slices.Equal(got, []string{"a", "cdn"}) {
		t.Fatalf("b's parents %v, want [a cdn] (a first, the CDN for the gap)", got)
	}
	// Now a's new pieces are forwarded to b.
	e.report("a", task, res("cdn", 4, vNone, 100), res("cdn", 5, vNone, 100))
	if got := avail(e.rec.take("b"), "a"); !slices.Equal(got, []uint32{4, 5}) {
		t.Fatalf("b got PieceAvailable %v from a, want [4 5]", got)
	}
	// A repeated report is not forwarded again.
	e.report("a", task, res("cdn", 5, vNone, 100))
	if got := avail(e.rec.take("b"), "a"); len(got) != 0 {
		t.Fatalf("duplicate forwarded: %v", got)
	}
	// a finishes: b learns the rest at once, and with a holding everything
	// the CDN is no longer needed.
	e.s.Done("a", &schedulerv1.TaskDone{TaskId: task, Success: true})
	if got := avail(e.rec.take("b"), "a"); !slices.Equal(got, []uint32{6, 7}) {
		t.Fatalf("after Done b got %v, want [6 7]", got)
	}
	e.s.NeedParents("b", &schedulerv1.NeedParents{TaskId: task})
	if got := lastParents(t, e.rec.take("b")); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("b's parents %v, want [a]", got)
	}
	snap := e.s.Snapshot()
	var served uint64
	for _, h := range snap.Hosts {
		if h.ID == "cdn" {
			served = h.BytesServed
		}
	}
	if served != 7<<20 { // 0..5 and 5 again
		t.Fatalf("cdn served %d bytes, want 7 MiB", served)
	}
}

func TestQuarantineAcrossTasks(t *testing.T) {
	cfg := DefaultConfig()
	e := newEnv(t, cfg, &fakeSeeder{})
	t1, t2 := taskID(1), taskID(2)
	e.host("bad", "")
	e.host("good", "")
	e.host("c1", "")
	e.host("c2", "")
	e.held("bad", t1, 4)
	e.held("bad", t2, 4)
	e.held("good", t2, 4)
	e.must(e.s.Register("c1", reg(t1)))
	e.must(e.s.Register("c2", reg(t2)))
	if e.seeder.count() != 0 {
		t.Fatal("held tasks were seeded")
	}
	if got := lastParents(t, e.rec.take("c1")); !slices.Equal(got, []string{"bad"}) {
		t.Fatalf("c1 parents %v", got)
	}
	if got := lastParents(t, e.rec.take("c2")); !contains(got, "bad") {
		t.Fatalf("c2 parents %v, want bad among them", got)
	}
	// Two bad pieces on t1 (one reported twice: counted once) ...
	e.report("c1", t1, res("bad", 0, vVerify, 10), res("bad", 0, vVerify, 10))
	e.report("c1", t1, res("bad", 1, vVerify, 10))
	if q := e.s.Snapshot().Quarantined; len(q) != 0 {
		t.Fatalf("quarantined after 2 bad pieces: %v", q)
	}
	// FAILURE_LOCAL and network failures are not bad pieces.
	e.report("c2", t2, res("bad", 3, vLocal, 10), res("bad", 3, vNetwork, 10))
	if q := e.s.Snapshot().Quarantined; len(q) != 0 {
		t.Fatalf("quarantined after local/network failures: %v", q)
	}
	e.rec.take("c2")
	// ... and the third, on t2, quarantines it everywhere.
	e.report("c2", t2, res("bad", 2, vVerify, 10))
	if q := e.s.Snapshot().Quarantined; !slices.Equal(q, []string{"bad"}) {
		t.Fatalf("quarantined = %v, want [bad]", q)
	}
	pc2 := e.rec.take("c2")
	if got := lastParents(t, pc2); contains(got, "bad") || !contains(got, "good") {
		t.Fatalf("c2 parents after quarantine %v", got)
	}
	// Never chosen again, even as the only holder (c1 starves rather).
	e.s.NeedParents("c1", &schedulerv1.NeedParents{TaskId: t1})
	if got := lastParents(t, e.rec.take("c1")); contains(got, "bad") {
		t.Fatalf("c1 parents %v still include the quarantined host", got)
	}
	e.host("c3", "")
	e.must(e.s.Register("c3", reg(t2)))
	if got := lastParents(t, e.rec.take("c3")); contains(got, "bad") {
		t.Fatalf("new child got the quarantined host: %v", got)
	}
	// A quarantined host may still download.
	e.must(e.s.Register("bad", reg(taskID(3))))
	if ps := e.rec.take("bad"); len(infos(ps)) != 1 {
		t.Fatalf("quarantined host could not register: %v", ps)
	}
}

// Exactly QuarantineBadPieces bad pieces quarantine (table over the
// threshold).
// TestQuarantineThreshold: corrupt pieces and trickled ones (FAILURE_SLOW)
// alike quarantine a host at QuarantineBadPieces, and each drops it as
// the reporter's parent at once.
func TestQuarantineThreshold(t *testing.T) {
	for _, c := range []struct {
		thr  int
		kind schedulerv1.Failure
	}{{1, vVerify}, {3, vVerify}, {5, vVerify}, {3, vSlow}} {
		thr := c.thr
		t.Run(fmt.Sprint(c.kind, thr), func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.QuarantineBadPieces = thr
			e := newEnv(t, cfg, nil)
			e.host("bad", "")
			e.host("kid", "")
			e.held("bad", taskID(1), 10)
			e.must(e.s.Register("kid", reg(taskID(1))))
			for n := range thr {
				if q := e.s.Snapshot().Quarantined; len(q) != 0 {
					t.Fatalf("quarantined after %d bad pieces", n)
				}
				e.rec.take("kid")
				if c.kind == vSlow {
					// The kid gets its other pieces meanwhile (from the
					// origin here), or the slow piece would be excused.
					e.clk.Advance(3 * time.Second)
					e.report("kid", taskID(1), res("", 9-n, vNone, 10))
				}
				e.report("kid", taskID(1), res("bad", n, c.kind, 2000))
				if got := lastParents(t, e.rec.take("kid")); contains(got, "bad") {
					t.Fatalf("after a bad piece the kid still has it as a parent: %v", got)
				}
			}
			if q := e.s.Snapshot().Quarantined; len(q) != 1 {
				t.Fatalf("not quarantined after %d bad pieces", thr)
			}
		})
	}
}

// TestQuarantineSurvivesReconnect: a quarantined host cannot shed its
// quarantine by reconnecting (its ID is remembered); Release lifts it, and
// the host is a parent again.
func TestQuarantineSurvivesReconnect(t *testing.T) {
	e := newEnv(t, DefaultConfig(), nil)
	task := taskID(5)
	e.hosts("bad", "kid1", "kid2", "kid3")
	e.held("bad", task, 8)
	e.must(e.s.Register("kid1", reg(task)))
	for n := range 3 {
		e.report("kid1", task, res("bad", n, vVerify, 10))
	}
	if q := e.s.Snapshot().Quarantined; !slices.Equal(q, []string{"bad"}) {
		t.Fatalf("quarantined %v", q)
	}
	// A new session under the same ID: still quarantined, offered to nobody.
	e.s.RemoveHost("bad")
	e.host("bad", "")
	e.held("bad", task, 8)
	if q := e.s.Snapshot().Quarantined; !slices.Equal(q, []string{"bad"}) {
		t.Fatalf("after a reconnect: quarantined %v", q)
	}
	e.rec.take("kid2")
	e.must(e.s.Register("kid2", reg(task)))
	if got := lastParents(t, e.rec.take("kid2")); contains(got, "bad") {
		t.Fatalf("a reconnected quarantined host was offered as a parent: %v", got)
	}
	// Released: a parent again, and its pieces are copies again.
	if !e.s.Release("bad") {
		t.Fatal("Release of a quarantined host reported false")
	}
	if q := e.s.Snapshot().Quarantined; len(q) != 0 {
		t.Fatalf("after Release: quarantined %v", q)
	}
	if n := e.s.tasks[task].holders[0]; n != 1 {
		t.Errorf("after Release piece 0 has %d holders, want 1 (bad)", n)
	}
	e.rec.take("kid3")
	e.must(e.s.Register("kid3", reg(task)))
	if got := lastParents(t, e.rec.take("kid3")); !contains(got, "bad") {
		t.Fatalf("a released host is not offered as a parent: %v", got)
	}
	if e.s.Release("bad") || e.s.Release("nobody") {
		t.Error("Release of a host that is not quarantined reported true")
	}
	// Released, it starts over: three new bad pieces quarantine it again.
	for n := range 3 {
		e.report("kid3", task, res("bad", n, vVerify, 10))
	}
	if q := e.s.Snapshot().Quarantined; !slices.Equal(q, []string{"bad"}) {
		t.Fatalf("quarantined %v after three new bad pieces", q)
	}
}

// TestSlowPieceJudgement: a slow piece counts against a parent only if the
// parent delivered nothing to anyone while the reporter received other
// pieces: a busy parent (uploads queued behind its rate limit) and a
// stalled reporter are excused (no bad piece, no failure, no
// replacement).
func TestSlowPieceJudgement(t *testing.T) {
	e := newEnv(t, DefaultConfig(), nil)
	task := taskID(4)
	e.hosts("busy", "trickler", "kid", "other")
	e.held("busy", task, 16)
	e.held("trickler", task, 16)
	e.must(e.s.Register("kid", reg(task)))
	e.must(e.s.Register("other", reg(task)))
	bad := func(id string) int {
		for _, h := range e.s.Snapshot().Hosts {
			if h.ID == id {
				return h.BadPieces
			}
		}
		t.Fatalf("no host %s", id)
		return 0
	}
	// slow reports a slow piece; a bad one also replaces the parent (an
	// excused one is no failure: the kid asks for parents itself).
	slow := func(parent string, n int, isBad bool) {
		t.Helper()
		e.rec.take("kid")
		e.report("kid", task, res(parent, n, vSlow, 2000))
		replaced := false
		for _, pk := range e.rec.take("kid") {
			if ps := pk.GetParents(); ps != nil {
				replaced = true
				for _, q := range ps.Parents {
					if q.HostId == parent {
						replaced = false
					}
				}
			}
		}
		if replaced != isBad {
			t.Fatalf("slow piece from %s: replaced %v, want %v", parent, replaced, isBad)
		}
	}

	// The kid is stalled itself: it received nothing during the download.
	e.clk.Advance(5 * time.Second)
	slow("trickler", 0, false)
	if bad("trickler") != 0 {
		t.Fatal("a stalled reporter's slow piece was counted")
	}
	// "busy" delivered a piece to "other" during the kid's download.
	e.clk.Advance(5 * time.Second)
	e.report("kid", task, res("", 10, vNone, 10))
	e.report("other", task, res("busy", 11, vNone, 10))
	slow("busy", 1, false)
	if bad("busy") != 0 {
		t.Fatal("a busy parent's slow piece was counted")
	}
	// The trickler delivered nothing, the kid got other pieces: bad.
	e.clk.Advance(5 * time.Second)
	e.report("kid", task, res("", 12, vNone, 10))
	slow("trickler", 2, true)
	if bad("trickler") != 1 {
		t.Fatalf("trickler has %d bad pieces, want 1", bad("trickler"))
	}
	if v := counterValue(e.s.metrics.SlowPieces.WithLabelValues("excused")); v != 2 {
		t.Errorf("excused slow pieces metric %v, want 2", v)
	}
	if v := counterValue(e.s.metrics.SlowPieces.WithLabelValues("bad")); v != 1 {
		t.Errorf("bad slow pieces metric %v, want 1", v)
	}
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return -1
	}
	return m.GetCounter().GetValue()
}

func TestReparentOnNetworkFailures(t *testing.T) {
	e := newEnv(t, DefaultConfig(), nil)
	task := taskID(3)
	for _, h := range []string{"p1", "p2", "kid"} {
		e.host(h, "")
	}
	e.held("p1", task, 8)
	e.held("p2", task, 8)
	e.must(e.s.Register("kid", reg(task)))
	if got := lastParents(t, e.rec.take("kid")); len(got) != 2 {
		t.Fatalf("parents %v", got)
	}
	for i := range 2 {
		e.report("kid", task, res("p1", i, vNetwork, 0))
	}
	if ps := e.rec.take("kid"); parentSets(ps) != 0 {
		t.Fatal("re-parented before the failure limit")
	}
	e.report("kid", task, res("p1", 2, schedulerv1.Failure_FAILURE_REFUSED, 0))
	if got := lastParents(t, e.rec.take("kid")); !slices.Equal(got, []string{"p2"}) {
		t.Fatalf("parents after 3 failures %v, want [p2]", got)
	}
	// Kept out for AvoidTTL, back afterwards.
	e.s.NeedParents("kid", &schedulerv1.NeedParents{TaskId: task})
	if got := lastParents(t, e.rec.take("kid")); contains(got, "p1") {
		t.Fatalf("failed parent back too early: %v", got)
	}
	e.clk.Advance(DefaultConfig().AvoidTTL + time.Second)
	e.s.NeedParents("kid", &schedulerv1.NeedParents{TaskId: task})
	if got := lastParents(t, e.rec.take("kid")); !contains(got, "p1") {
		t.Fatalf("failed parent not back after AvoidTTL: %v", got)
	}
	// NeedParents.failed drops a parent at once.
	e.s.NeedParents("kid", &schedulerv1.NeedParents{TaskId: task, Failed: []string{"p2"}})
	if got := lastParents(t, e.rec.take("kid")); !slices.Equal(got, []string{"p1"}) {
		t.Fatalf("parents after giving up on p2: %v", got)
	}
}

func TestReparentSlowParent(t *testing.T) {
	e := newEnv(t, DefaultConfig(), nil)
	task := taskID(4)
	for _, h := range []string{"fast1", "fast2", "slow", "spare", "kid"} {
		e.host(h, "")
	}
	for _, h := range []string{"fast1", "fast2", "slow"} {
		e.held(h, task, 64)
	}
	cfg := DefaultConfig()
	cfg.MaxParents = 3
	e.s.cfg.MaxParents = 3
	e.must(e.s.Register("kid", reg(task)))
	got := lastParents(t, e.rec.take("kid"))
	if !slices.Equal(slices.Sorted(slices.Values(got)), []string{"fast1", "fast2", "slow"}) {
		t.Fatalf("parents %v", got)
	}
	e.held("spare", task, 64)
	// 1 MiB in 100ms vs in 1s: 10× slower, below 0.2 × median.
	n := 0
	for range 2 {
		e.report("kid", task, res("fast1", n, vNone, 100), res("fast2", n+1, vNone, 100), res("slow", n+2, vNone, 1000))
		n += 3
	}
	if ps := e.rec.take("kid"); parentSets(ps) != 0 {
		t.Fatal("judged slow before SlowParentMinSamples")
	}
	e.report("kid", task, res("fast1", n, vNone, 100), res("fast2", n+1, vNone, 100), res("slow", n+2, vNone, 1000))
	got = lastParents(t, e.rec.take("kid"))
	if contains(got, "slow") || !contains(got, "spare") {
		t.Fatalf("parents after slowness %v, want slow replaced by spare", got)
	}
	// A parent at half the median is not replaced.
	for range 5 {
		n += 2
		e.report("kid", task, res("fast1", n, vNone, 100), res("spare", n+1, vNone, 200))
	}
	if ps := e.rec.take("kid"); parentSets(ps) != 0 {
		t.Fatalf("re-parented a parent within the ratio: %v", lastParents(t, ps))
	}
}

func TestRemoveHostReparentsChildren(t *testing.T) {
	e := newEnv(t, DefaultConfig(), &fakeSeeder{})
	task := taskID(5)
	e.host("p", "")
	e.host("kid", "")
	e.must(e.s.Register("p", reg(task)))
	e.seedAll(task, 4)
	e.s.Done("p", &schedulerv1.TaskDone{TaskId: task, Success: true})
	e.must(e.s.Register("kid", reg(task)))
	if got := lastParents(t, e.rec.take("kid")); !slices.Equal(got, []string{"p"}) {
		t.Fatalf("parents %v, want [p]", got)
	}
	e.s.RemoveHost("p")
	if got := lastParents(t, e.rec.take("kid")); !slices.Equal(got, []string{"cdn"}) {
		t.Fatalf("after removal parents %v, want [cdn]", got)
	}
	// Reconnect (AddHost with the same ID) drops the old host's tasks too
	// (here the last one: the task is forgotten).
	e.must(e.s.AddHost(HostInfo{ID: "kid", IP: "10.0.1.2", UploadPort: 9000}))
	snap := e.s.Snapshot()
	if len(snap.Tasks) != 0 || len(snap.Hosts) != 2 || snap.Hosts[1].Addr != "10.0.1.2:9000" {
		t.Fatalf("after reconnect: %+v %+v", snap.Hosts, snap.Tasks)
	}
	// Leave of the last peer forgets the task at housekeeping.
	e.must(e.s.Register("kid", reg(task)))
	e.s.Leave("kid", task)
	e.s.Housekeep()
	if snap := e.s.Snapshot(); len(snap.Tasks) != 1 || snap.Tasks[0].Seed != "seeding" {
		t.Fatalf("task forgotten while seeding: %+v", snap.Tasks)
	}
	e.seedAll(task, 4)
	e.s.Housekeep()
	if snap := e.s.Snapshot(); len(snap.Tasks) != 0 {
		t.Fatalf("task kept after everyone left: %+v", snap.Tasks)
	}
}

func TestSeedFailed(t *testing.T) {
	tests := []struct {
		name    string
		code    schedulerv1.ErrorCode
		bts     bool
		wantBTS bool
	}{
		{"forbidden is an error", schedulerv1.ErrorCode_ERROR_FORBIDDEN, true, false},
		{"not found is an error", schedulerv1.ErrorCode_ERROR_NOT_FOUND, true, false},
		{"unavailable goes back to source", schedulerv1.ErrorCode_ERROR_UNAVAILABLE, true, true},
		{"unavailable without back-to-source is an error", schedulerv1.ErrorCode_ERROR_UNAVAILABLE, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.BackToSourceWhenNoSeeder = tt.bts
			e := newEnv(t, cfg, &fakeSeeder{})
			task := taskID(6)
			for _, h := range []string{"a", "b", "done"} {
				e.host(h, "")
			}
			e.must(e.s.Register("a", reg(task)))
			e.must(e.s.Register("b", reg(task)))
			e.held("done", task, 0) // holds the (empty) task already
			for _, h := range []string{"a", "b", "done"} {
				e.rec.take(h)
			}
			e.s.SeedFailed(task, &schedulerv1.TaskError{Code: tt.code, Message: "origin said no", OriginStatus: 403,
				OriginHeaders: map[string]string{"Www-Authenticate": "Bearer realm=x"}})
			for _, h := range []string{"a", "b"} {
				ps := e.rec.take(h)
				if tt.wantBTS {
					if bts(ps) != 1 || len(errs(ps)) != 0 {
						t.Fatalf("%s got %v, want BackToSource", h, ps)
					}
					continue
				}
				es := errs(ps)
				if len(es) != 1 || es[0].Code != tt.code || es[0].TaskId != task || es[0].OriginHeaders["Www-Authenticate"] == "" {
					t.Fatalf("%s got %v, want TaskError %v", h, ps, tt.code)
				}
			}
			if ps := e.rec.take("done"); len(ps) != 0 {
				t.Fatalf("finished host got %v", ps)
			}
		})
	}
}

func TestSeedFailureCacheAndRetry(t *testing.T) {
	e := newEnv(t, DefaultConfig(), &fakeSeeder{})
	task := taskID(8)
	e.host("a", "")
	e.host("b", "")
	e.must(e.s.Register("a", reg(task)))
	e.s.SeedFailed(task, &schedulerv1.TaskError{Code: schedulerv1.ErrorCode_ERROR_NOT_FOUND, OriginStatus: 404})
	e.rec.take("a")
	// Within the cache TTL, b gets the same error without a new fetch.
	e.clk.Advance(2 * time.Second)
	e.must(e.s.Register("b", reg(task)))
	if es := errs(e.rec.take("b")); len(es) != 1 || es[0].Code != schedulerv1.ErrorCode_ERROR_NOT_FOUND {
		t.Fatalf("b got %v", es)
	}
	if e.seeder.count() != 1 {
		t.Fatalf("seeds = %d, want 1", e.seeder.count())
	}
	// After it, a registration seeds again and succeeds.
	e.clk.Advance(4 * time.Second)
	e.must(e.s.Register("b", reg(task)))
	if e.seeder.count() != 2 {
		t.Fatalf("seeds = %d after the failure expired, want 2", e.seeder.count())
	}
	pb := e.rec.take("b")
	if len(errs(pb)) != 0 || len(infos(pb)) != 1 || !slices.Equal(lastParents(t, pb), []string{"cdn"}) {
		t.Fatalf("retry sent %v", pb)
	}
}

func TestNoSeeder(t *testing.T) {
	for _, bts := range []bool{true, false} {
		t.Run(fmt.Sprint("back_to_source=", bts), func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.BackToSourceWhenNoSeeder = bts
			e := newEnv(t, cfg, nil)
			e.host("a", "")
			e.must(e.s.Register("a", reg(taskID(9))))
			ps := e.rec.take("a")
			if bts && bts != (countBTS(ps) == 1) {
				t.Fatalf("got %v, want BackToSource", ps)
			}
			if !bts && (len(errs(ps)) != 1 || errs(ps)[0].Code != schedulerv1.ErrorCode_ERROR_UNAVAILABLE) {
				t.Fatalf("got %v, want ERROR_UNAVAILABLE", ps)
			}
			// A held copy is a source without any seeder.
			e.host("holder", "")
			e.held("holder", taskID(10), 3)
			e.must(e.s.Register("a", reg(taskID(10))))
			if got := lastParents(t, e.rec.take("a")); !slices.Equal(got, []string{"holder"}) {
				t.Fatalf("parents %v", got)
			}
		})
	}
}

func countBTS(ps []*schedulerv1.SchedulerPacket) int { return bts(ps) }

func TestHeldConflicts(t *testing.T) {
	e := newEnv(t, DefaultConfig(), nil)
	e.host("a", "")
	e.host("b", "")
	e.held("a", taskID(1), 3)
	bad := sums(taskID(1), 3)
	bad[1] = sum("other", 1)
	err := e.s.Held("b", &schedulerv1.HeldTask{TaskId: taskID(1), ContentLength: 3 << 20, PieceSize: 1 << 20, PieceSha256: bad})
	if !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("conflicting digests: err = %v", err)
	}
	err = e.s.Held("b", &schedulerv1.HeldTask{TaskId: taskID(2), ContentLength: 3 << 20, PieceSize: 1 << 20, PieceSha256: bad[:2]})
	if !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("digest count mismatch: err = %v", err)
	}
	if snap := e.s.Snapshot(); len(snap.Tasks) != 1 || len(snap.Tasks[0].Peers) != 1 {
		t.Fatalf("bad held tasks changed state: %+v", snap.Tasks)
	}
}

func TestHousekeeping(t *testing.T) {
	e := newEnv(t, DefaultConfig(), &fakeSeeder{})
	task := taskID(11)
	e.host("a", "")
	e.host("quiet", "")
	e.must(e.s.Register("a", reg(task)))
	e.must(e.s.Register("quiet", reg(task)))
	first := infos(e.rec.take("a"))[0]
	// Token refresh after half the TTL, only then.
	e.clk.Advance(4 * time.Minute)
	e.s.Heartbeat("a", &schedulerv1.Heartbeat{ActiveUploads: 2})
	e.s.Housekeep()
	// (a may get a new ParentSet: quiet, its parent, timed out.)
	if ti := infos(e.rec.take("a")); len(ti) != 0 {
		t.Fatalf("refresh too early: %v", ti)
	}
	e.clk.Advance(2 * time.Minute)
	e.s.Heartbeat("a", nil)
	e.s.Housekeep()
	ti := infos(e.rec.take("a"))
	if len(ti) != 1 || ti[0].Token == "" || ti[0].Token == first.Token || ti[0].TokenExpiryUnix != t0.Add(16*time.Minute).Unix() {
		t.Fatalf("refresh %v", ti)
	}
	if _, err := tasktoken.Verify(e.signer.Public(), ti[0].Token, task, t0.Add(15*time.Minute)); err != nil {
		t.Fatal(err)
	}
	// quiet sent nothing for HostTimeout: removed and disconnected; the CDN
	// never times out.
	e.clk.Advance(25 * time.Second)
	e.s.Heartbeat("a", nil)
	e.s.Housekeep()
	snap := e.s.Snapshot()
	var hosts []string
	for _, h := range snap.Hosts {
		hosts = append(hosts, h.ID)
	}
	if !slices.Equal(hosts, []string{"a", "cdn"}) {
		t.Fatalf("hosts %v, want [a cdn]", hosts)
	}
	if !slices.Equal(e.rec.disconnect, []string{"quiet"}) {
		t.Fatalf("disconnected %v", e.rec.disconnect)
	}
}

func TestAuthorizerGatesJoins(t *testing.T) {
	sd := &authSeeder{}
	e := newEnv(t, DefaultConfig(), sd)
	task := taskID(12)
	e.host("a", "")
	e.host("b", "")
	e.host("c", "")
	e.must(e.s.Register("a", reg(task))) // starts the seed with a's credentials
	e.seedAll(task, 2)
	e.must(e.s.Register("b", reg(task)))
	if ps := e.rec.take("b"); len(ps) != 0 {
		t.Fatalf("b got %v before authorization", ps)
	}
	if len(sd.auths) != 1 || sd.auths[0].HostID != "b" {
		t.Fatalf("authorize calls %+v", sd.auths)
	}
	e.s.Admit(task, "b", nil)
	if pb := e.rec.take("b"); len(infos(pb)) != 1 || !slices.Equal(lastParents(t, pb), []string{"a", "cdn"}) {
		t.Fatalf("b after admission got %v", pb)
	}
	e.must(e.s.Register("c", reg(task)))
	e.s.Admit(task, "c", &schedulerv1.TaskError{Code: schedulerv1.ErrorCode_ERROR_FORBIDDEN, OriginStatus: 401})
	if es := errs(e.rec.take("c")); len(es) != 1 || es[0].Code != schedulerv1.ErrorCode_ERROR_FORBIDDEN {
		t.Fatalf("c got %v", es)
	}
	// A task first fetched without credentials is public: no gate.
	pub := taskID(13)
	e.must(e.s.Register("a", &schedulerv1.RegisterTask{TaskId: pub, Url: "https://example.com/f"}))
	e.must(e.s.Register("b", reg(pub)))
	if pb := e.rec.take("b"); len(infos(pb)) != 1 {
		t.Fatalf("public task was gated: %v", pb)
	}
}

// N hosts on one task, a CDN with every piece, peers at various stages:
// the cost of one NeedParents (candidate build, choice, ParentSet), which
// must not grow with N (candidate sampling).
func BenchmarkNeedParents(b *testing.B) {
	for _, n := range []int{100, 1000, 10000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) { benchNeedParents(b, n) })
	}
}

func benchNeedParents(b *testing.B, hosts int) {
	signer, _ := tasktoken.NewSigner(nil)
	s, err := New(DefaultConfig(), nopSender{}, &fakeSeeder{}, signer, nil)
	if err != nil {
		b.Fatal(err)
	}
	s.AddHost(HostInfo{ID: "cdn", IP: "10.0.0.1", UploadPort: 1, CDN: true})
	task := taskID(1)
	const pieces = 256
	for i := range hosts {
		id := fmt.Sprintf("host-%04d", i)
		s.AddHost(HostInfo{ID: id, IP: "10.1.0.1", UploadPort: 2, Zone: fmt.Sprint("z", i%4)})
		if err := s.Register(id, reg(task)); err != nil {
			b.Fatal(err)
		}
		if i == 0 {
			s.SeedMeta(task, pieces<<20, 1<<20)
			s.SeedPieces(task, 0, sums(task, pieces))
			s.SeedDone(task, pieces<<20, "")
		}
		var rs []*schedulerv1.PieceResult
		for n := range pieces {
			if (n*7+i)%3 == 0 {
				rs = append(rs, res("cdn", n, vNone, 100))
			}
		}
		s.ReportPieces(id, &schedulerv1.PieceReports{TaskId: task, Results: rs})
	}
	np := &schedulerv1.NeedParents{TaskId: task}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		s.NeedParents(fmt.Sprintf("host-%04d", i%hosts), np)
		i++
	}
}

// BenchmarkRegister1000 measures registrations of a 1000-host swarm.
func BenchmarkRegister1000(b *testing.B) {
	signer, _ := tasktoken.NewSigner(nil)
	for b.Loop() {
		s, _ := New(DefaultConfig(), nopSender{}, &fakeSeeder{}, signer, nil)
		s.AddHost(HostInfo{ID: "cdn", CDN: true})
		task := taskID(1)
		for i := range 1000 {
			id := fmt.Sprintf("host-%04d", i)
			s.AddHost(HostInfo{ID: id})
			s.Register(id, reg(task))
			if i == 0 {
				s.SeedMeta(task, 256<<20, 1<<20)
				s.SeedPieces(task, 0, sums(task, 256))
				s.SeedDone(task, 256<<20, "")
			}
		}
	}
}

type nopSender struct{}

func (nopSender) Send(string, *schedulerv1.SchedulerPacket) {}

// A task served only by a held copy is seeded once its holder leaves and a
// child starves.
func TestStarvingTaskIsSeeded(t *testing.T) {
	e := newEnv(t, DefaultConfig(), &fakeSeeder{})
	task := taskID(14)
	e.host("holder", "")
	e.host("kid", "")
	e.held("holder", task, 4)
	e.must(e.s.Register("kid", reg(task)))
	if e.seeder.count() != 0 {
		t.Fatal("seeded while a holder exists")
	}
	e.s.RemoveHost("holder")
	if got := lastParents(t, e.rec.take("kid")); len(got) != 0 {
		t.Fatalf("parents %v after the holder left", got)
	}
	e.s.NeedParents("kid", &schedulerv1.NeedParents{TaskId: task})
	if e.seeder.count() != 1 || e.seeder.reqs[0].HostID != "kid" {
		t.Fatalf("seed requests %+v", e.seeder.reqs)
	}
	if got := lastParents(t, e.rec.take("kid")); !slices.Equal(got, []string{"cdn"}) {
		t.Fatalf("parents %v, want [cdn]", got)
	}
	// The seeder's digests agree with the held ones: nothing is re-sent.
	e.seedAll(task, 4)
	if ps := e.rec.take("kid"); len(avail(ps, "cdn")) != 4 {
		t.Fatalf("kid got %v", ps)
	}
}

func TestRunStopsWithContext(t *testing.T) {
	cfg := DefaultConfig()
	cfg.HousekeepingInterval = time.Millisecond
	e := newEnv(t, cfg, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.s.Run(ctx) }()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Run returned %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return")
	}
}

func TestAddHostRules(t *testing.T) {
	e := newEnv(t, DefaultConfig(), &fakeSeeder{})
	if err := e.s.AddHost(HostInfo{ID: "cdn"}); !errors.Is(err, errdefs.ErrForbidden) {
		t.Fatalf("peer replacing the CDN: %v", err)
	}
	if err := e.s.AddHost(HostInfo{ID: ""}); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("empty id: %v", err)
	}
	if err := e.s.Prefetch("nobody", &schedulerv1.Prefetch{}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("prefetch to unknown host: %v", err)
	}
}

func TestSeedEvicted(t *testing.T) {
	e := newEnv(t, DefaultConfig(), &fakeSeeder{})
	task := taskID(15)
	e.host("kid", "")
	e.must(e.s.Register("kid", reg(task)))
	e.seedAll(task, 4)
	e.rec.take("kid")
	e.s.SeedEvicted(task)
	if got := lastParents(t, e.rec.take("kid")); len(got) != 0 {
		t.Fatalf("parents after eviction %v", got)
	}
	e.s.NeedParents("kid", &schedulerv1.NeedParents{TaskId: task})
	if e.seeder.count() != 2 {
		t.Fatalf("seeds = %d, want a second one after eviction", e.seeder.count())
	}
	if got := lastParents(t, e.rec.take("kid")); !slices.Equal(got, []string{"cdn"}) {
		t.Fatalf("parents %v", got)
	}
}

// Super-seeding: the CDN hands each piece to CDNFanout downloading hosts,
// first copies of every piece it holds before any second copy, with at most
// CDNGrants of them being sent at once. A grantee hears of its pieces (a
// PieceAvailable when the CDN is already its parent, else the CDN's
// bitmap in a new ParentSet); nobody sees a piece in the CDN's bitmap
// that was not handed to it.
func TestCDNSuperSeeding(t *testing.T) {
	cfg := DefaultConfig()
	cfg.CDNFanout = 2
	cfg.CDNGrants = 4
	e := newEnv(t, cfg, &fakeSeeder{})
	task := taskID(21)
	const hosts, count = 6, 12
	for i := range hosts {
		h := fmt.Sprint("h", i)
		e.host(h, "")
		e.must(e.s.Register(h, reg(task)))
	}
	e.s.SeedMeta(task, count<<20, 1<<20)
	for i := range hosts {
		e.rec.take(fmt.Sprint("h", i))
	}
	// All at once, so that the order of grants shows (one piece at a time,
	// each gets its copies as it arrives, budget allowing).
	e.s.SeedPieces(task, 0, sums(task, count))
	seen := map[string]map[int]bool{} // host -> CDN pieces it heard of
	to := map[int][]string{}          // piece -> hosts it was handed to
	// heard returns the CDN pieces each host newly heard of.
	heard := func() map[string][]int {
		out := map[string][]int{}
		for i := range hosts {
			h := fmt.Sprint("h", i)
			if seen[h] == nil {
				seen[h] = map[int]bool{}
			}
			for n := range cdnHeard(e.rec.take(h)) {
				if !seen[h][n] {
					seen[h][n] = true
					out[h] = append(out[h], n)
					to[n] = append(to[n], h)
				}
			}
		}
		return out
	}
	for round := 0; ; round++ {
		if round == 10 {
			t.Fatal("grants did not settle")
		}
		firstsBefore := len(to)
		got := heard()
		grants := 0
		for _, ns := range got {
			grants += len(ns)
		}
		if grants == 0 {
			break
		}
		if grants > cfg.CDNGrants {
			t.Fatalf("round %d: %d grants at once, want at most %d", round, grants, cfg.CDNGrants)
		}
		for _, ns := range got {
			for _, n := range ns {
				if len(to[n]) > 1 && firstsBefore < count {
					t.Fatalf("round %d: second copy of piece %d while pieces had none", round, n)
				}
			}
		}
		// The grantees fetch their pieces from the CDN.
		for h, ns := range got {
			for _, n := range ns {
				e.report(h, task, res("cdn", n, vNone, 100))
			}
		}
	}
	for n := range count {
		if len(to[n]) != 2 || to[n][0] == to[n][1] {
			t.Errorf("piece %d handed to %v, want 2 hosts", n, to[n])
		}
	}
}

// A piece handed to a host that does not fetch it within CDNFreshness has
// stalled: the CDN hands it to another host (and the first may still take
// it).
func TestCDNGrantStalls(t *testing.T) {
	cfg := DefaultConfig()
	cfg.CDNFanout = 1
	e := newEnv(t, cfg, &fakeSeeder{})
	task := taskID(22)
	for _, h := range []string{"a", "b", "c"} {
		e.host(h, "")
		e.must(e.s.Register(h, reg(task)))
	}
	e.s.SeedMeta(task, 1<<20, 1<<20)
	e.s.SeedPiece(task, 0, sum(task, 0))
	var first string
	for _, h := range []string{"a", "b", "c"} {
		if cdnHeard(e.rec.take(h))[0] {
			if first != "" {
				t.Fatalf("piece 0 handed to %s and %s, want one host", first, h)
			}
			first = h
		}
	}
	if first == "" {
		t.Fatal("piece 0 handed to nobody")
	}
	e.s.Housekeep()
	for _, h := range []string{"a", "b", "c"} {
		if h != first && cdnHeard(e.rec.take(h))[0] {
			t.Fatalf("piece 0 handed to %s before the grant to %s stalled", h, first)
		}
	}
	e.clk.Advance(cfg.CDNFreshness)
	e.s.Housekeep()
	again := 0
	for _, h := range []string{"a", "b", "c"} {
		if h != first && cdnHeard(e.rec.take(h))[0] {
			again++
		}
	}
	if again != 1 {
		t.Fatalf("after the grant stalled piece 0 was handed to %d more hosts, want 1", again)
	}
	e.s.NeedParents(first, &schedulerv1.NeedParents{TaskId: task})
	if !cdnHeard(e.rec.take(first))[0] {
		t.Fatalf("%s no longer sees its stalled grant", first)
	}
}

// In a large swarm one decision scores a bounded set of candidates: the
// CDN, the current parents, recent holders of the rarest missing pieces
// and CandidateSample random peers; a small swarm scores everyone.
func TestCandidatesBounded(t *testing.T) {
	cfg := DefaultConfig()
	cfg.CandidateSample = 8
	e := newEnv(t, cfg, &fakeSeeder{})
	task := taskID(23)
	const pieces = 32
	for i := range 500 {
		h := fmt.Sprintf("h%04d", i)
		e.host(h, "")
		e.must(e.s.Register(h, reg(task)))
		if i == 0 {
			e.seedAll(task, pieces)
		}
		if i%3 == 0 {
			e.report(h, task, res("cdn", i%pieces, vNone, 100))
		}
		if i == 2*cfg.CandidateSample-2 {
			// 2×CandidateSample peers with the CDN: small, everyone scored.
			e.s.lock()
			p := e.s.tasks[task].peers[h]
			if got, want := len(e.s.candidatesLocked(p, e.clk.Now())), len(e.s.tasks[task].list)-1; got != want {
				e.s.unlock()
				t.Fatalf("small swarm: %d candidates, want all %d", got, want)
			}
			e.s.unlock()
		}
	}
	e.s.lock()
	defer e.s.unlock()
	tk := e.s.tasks[task]
	limit := 1 + cfg.MaxParents + rarePieces*recentHolders + cfg.CandidateSample
	for _, h := range []string{"h0001", "h0277", "h0499"} {
		p := tk.peers[h]
		got := e.s.candidatesLocked(p, e.clk.Now())
		if len(got) > limit || len(got) < cfg.CandidateSample {
			t.Fatalf("%s: %d candidates, want %d..%d", h, len(got), cfg.CandidateSample, limit)
		}
		// The holders of its rarest missing pieces are among them.
		rare := RarestMissing(p.bitmap, tk.known, tk.holders, 1, 0)
		found := false
		for _, q := range got {
			if q.bitmap.Has(rare[0]) {
				found = true
			}
		}
		if !found {
			t.Fatalf("%s: no holder of its rarest missing piece %d among the candidates", h, rare[0])
		}
	}
}

// Per-piece holder counts follow reports, completions and departures.
func TestHolderCounts(t *testing.T) {
	e := newEnv(t, DefaultConfig(), &fakeSeeder{})
	task := taskID(24)
	for _, h := range []string{"a", "b", "c"} {
		e.host(h, "")
		e.must(e.s.Register(h, reg(task)))
	}
	e.seedAll(task, 4)
	e.report("a", task, res("cdn", 0, vNone, 100), res("cdn", 1, vNone, 100))
	e.report("b", task, res("a", 1, vNone, 100), res("a", 1, vNone, 100))
	e.s.Done("c", &schedulerv1.TaskDone{TaskId: task, Success: true})
	check := func(want ...int32) {
		t.Helper()
		e.s.lock()
		defer e.s.unlock()
		if got := e.s.tasks[task].holders; !slices.Equal(got, want) {
			t.Fatalf("holders %v, want %v", got, want)
		}
	}
	check(2, 3, 1, 1)
	e.s.RemoveHost("c")
	check(1, 2, 0, 0)
	e.s.Leave("a", task)
	check(0, 1, 0, 0)
}

// A registration re-assigns at most maxAdopters of the downloading hosts
// that have a free parent slot, whatever the swarm's size.
func TestAdoptionBounded(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MaxParents = 64 // everyone keeps a free slot
	e := newEnv(t, cfg, &fakeSeeder{})
	task := taskID(25)
	const n = 40
	for i := range n {
		h := fmt.Sprint("h", i)
		e.host(h, "")
		e.must(e.s.Register(h, reg(task)))
	}
	for i := range n {
		e.rec.take(fmt.Sprint("h", i))
	}
	e.host("new", "")
	e.must(e.s.Register("new", reg(task)))
	adopted := 0
	for i := range n {
		if parentSets(e.rec.take(fmt.Sprint("h", i))) > 0 {
			adopted++
		}
	}
	if adopted == 0 || adopted > maxAdopters {
		t.Fatalf("%d hosts adopted the newcomer, want 1..%d", adopted, maxAdopters)
	}
}

// The first host of a swarm (whose only parent was the CDN) takes later
// hosts as parents as soon as they join.
func TestEarlyHostAdoptsNewcomers(t *testing.T) {
	e := newEnv(t, DefaultConfig(), &fakeSeeder{})
	task := taskID(31)
	for _, h := range []string{"a", "b", "c"} {
		e.host(h, "")
	}
	e.must(e.s.Register("a", reg(task)))
	if got := lastParents(t, e.rec.take("a")); !slices.Equal(got, []string{"cdn"}) {
		t.Fatalf("a's first parents %v", got)
	}
	e.must(e.s.Register("b", reg(task)))
	if got := lastParents(t, e.rec.take("a")); !slices.Contains(got, "b") {
		t.Fatalf("a's parents after b joined: %v, want b among them", got)
	}
	e.must(e.s.Register("c", reg(task)))
	if got := lastParents(t, e.rec.take("a")); !slices.Contains(got, "c") {
		t.Fatalf("a's parents after c joined: %v, want c among them", got)
	}
}

// A seed refused by the origin (401) is replayed only to hosts with the
// same credentials; a host with other credentials gets its own seed.
func TestForbiddenFailureIsPerCredentials(t *testing.T) {
	sd := &fakeSeeder{}
	e := newEnv(t, DefaultConfig(), sd)
	task := taskID(41)
	for _, h := range []string{"a", "b", "c"} {
		e.host(h, "")
	}
	bad := reg(task)
	bad.Headers = map[string]string{"Authorization": "Bearer wrong"}
	e.must(e.s.Register("a", bad))
	e.s.SeedFailed(task, &schedulerv1.TaskError{TaskId: task, Code: schedulerv1.ErrorCode_ERROR_FORBIDDEN, OriginStatus: 401})
	if es := errs(e.rec.take("a")); len(es) != 1 || es[0].Code != schedulerv1.ErrorCode_ERROR_FORBIDDEN {
		t.Fatalf("a got %v", es)
	}
	e.must(e.s.Register("c", bad)) // same wrong credentials: replayed, no new seed
	if es := errs(e.rec.take("c")); len(es) != 1 || sd.count() != 1 {
		t.Fatalf("c got %v, seeds %d", es, sd.count())
	}
	e.must(e.s.Register("b", reg(task))) // good credentials: seeds again
	if sd.count() != 2 {
		t.Fatalf("seeds = %d, want a second seed for other credentials", sd.count())
	}
	if es := errs(e.rec.take("b")); len(es) != 0 {
		t.Fatalf("b got the other host's refusal: %v", es)
	}
}

// After a seed fails its whole-content digest, a new seed (origin
// repaired) is not judged against the failed seed's piece digests.
func TestReseedAfterDigestMismatchStartsClean(t *testing.T) {
	sd := &fakeSeeder{}
	cfg := DefaultConfig()
	cfg.FailureCacheTTL = time.Second
	e := newEnv(t, cfg, sd)
	task := taskID(51)
	e.host("a", "")
	e.must(e.s.Register("a", reg(task)))
	e.s.SeedMeta(task, 2<<20, 1<<20)
	badSum := bytes.Repeat([]byte{9}, 32)
	e.s.SeedPiece(task, 0, badSum)
	e.s.SeedFailed(task, &schedulerv1.TaskError{TaskId: task, Code: schedulerv1.ErrorCode_ERROR_DIGEST_MISMATCH})
	e.rec.take("a")
	e.clk.Advance(2 * time.Second)
	e.must(e.s.Register("a", reg(task)))
	if sd.count() != 2 {
		t.Fatalf("seeds = %d, want a re-seed", sd.count())
	}
	e.s.SeedMeta(task, 2<<20, 1<<20)
	e.s.SeedPiece(task, 0, sum(task, 0))
	var got [][]byte
	for _, ti := range infos(e.rec.take("a")) {
		if ti.FirstPiece == 0 && len(ti.PieceSha256) > 0 {
			got = append(got, ti.PieceSha256[0])
		}
	}
	if len(got) == 0 || !bytes.Equal(got[len(got)-1], sum(task, 0)) {
		t.Fatalf("piece 0 digests sent after the re-seed: %x, want the new one", got)
	}
}

// TaskInfo.sums_verified is set only when our own seed matched the task's
// digest, never for digests a host offered.
func TestSumsVerified(t *testing.T) {
	final := func(ps []*schedulerv1.SchedulerPacket) *schedulerv1.TaskInfo {
		ti := infos(ps)
		if len(ti) == 0 {
			return nil
		}
		return ti[len(ti)-1]
	}
	for _, tc := range []struct {
		name   string
		digest func(task string) string
		held   bool
		want   bool
	}{
		{"seed matched the task digest", func(task string) string { return task }, false, true},
		{"seed reported another digest", func(string) string { return taskID(99) }, false, false},
		{"seed reported no digest", func(string) string { return "" }, false, false},
		{"digests offered by a host", func(task string) string { return task }, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, DefaultConfig(), &fakeSeeder{})
			task := taskID(61)
			e.host("a", "")
			if tc.held {
				e.host("h", "")
				e.held("h", task, 2)
			}
			e.must(e.s.Register("a", reg(task)))
			e.s.SeedMeta(task, 2<<20, 1<<20)
			for n := range 2 {
				e.s.SeedPiece(task, n, sum(task, n))
			}
			e.s.SeedDone(task, 2<<20, tc.digest(task))
			ti := final(e.rec.take("a"))
			if ti == nil || ti.SumsVerified != tc.want {
				t.Fatalf("final TaskInfo %v, want sums_verified %v", ti, tc.want)
			}
		})
	}
}

// A parent answering "not held" for pieces it reported holding is lying
// (or lost them without leaving the task): each such piece is a bad
// piece, and QuarantineBadPieces of them quarantine it. "Not found" for a
// piece it never claimed, or after it left the task, is only a failure.
func TestNotHeldIsBadPiece(t *testing.T) {
	cfg := DefaultConfig()
	e := newEnv(t, cfg, &fakeSeeder{})
	t1, t2 := taskID(1), taskID(2)
	e.host("liar", "")
	e.host("gc", "")
	e.host("kid", "")
	e.held("liar", t1, 8)
	e.held("gc", t2, 8)
	e.must(e.s.Register("kid", reg(t1)))
	nf := schedulerv1.Failure_FAILURE_NOT_FOUND
	// Piece 9 is past the liar's held count: it never claimed it.
	e.report("kid", t1, res("liar", 9, nf, 10))
	e.report("kid", t1, res("liar", 0, nf, 10), res("liar", 1, nf, 10))
	if q := e.s.Snapshot().Quarantined; len(q) != 0 {
		t.Fatalf("quarantined after 2 not-held pieces: %v", q)
	}
	e.report("kid", t1, res("liar", 2, nf, 10))
	if q := e.s.Snapshot().Quarantined; !slices.Equal(q, []string{"liar"}) {
		t.Fatalf("quarantined = %v, want [liar]", q)
	}
	// A host that left the task before its files went (GC) is not blamed.
	e.must(e.s.Register("kid", reg(t2)))
	e.s.Leave("gc", t2)
	e.report("kid", t2, res("gc", 0, nf, 10), res("gc", 1, nf, 10), res("gc", 2, nf, 10), res("gc", 3, nf, 10))
	if q := e.s.Snapshot().Quarantined; !slices.Equal(q, []string{"liar"}) {
		t.Fatalf("quarantined = %v after a host that left answered not held", q)
	}
}
