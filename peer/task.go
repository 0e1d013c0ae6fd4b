package peer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"time"

	schedulerv1 "github.com/pouchfly/pouchfly/api/scheduler/v1"
	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/piece"
)

// Request is one download asked of the peer.
type Request struct {
	// URL is the origin URL (http or https).
	URL string
	// Header goes to the origin, through the supernode's CDN or directly
	// when going back to source (Authorization included). It never reaches
	// another peer.
	Header http.Header
	// Digest is the expected whole-content digest, if known; it is then
	// the task ID.
	Digest string
	// Range is an HTTP byte range ("bytes=0-99") for a partial task.
	Range string
	// NoBackSource forbids fetching from the origin for this request.
	NoBackSource bool
	// Prefetch marks a download ordered by a preheat job.
	Prefetch bool
}

// TaskError is a task failure with what a client needs to report it.
type TaskError struct {
	// Class is one of the errdefs sentinels.
	Class error
	// Msg says what happened.
	Msg string
	// OriginStatus is the origin's HTTP status when it decided the error.
	OriginStatus int
	// OriginHeader holds headers a client may need (WWW-Authenticate).
	OriginHeader http.Header
}

func (e *TaskError) Error() string { return e.Msg }

// Unwrap returns the error class.
func (e *TaskError) Unwrap() error { return e.Class }

type parentState struct {
	id       string
	addr     string
	cdn      bool
	bitmap   piece.Bitmap
	inflight int
	fails    int
	// busyUntil rests a parent that answered 503/429.
	busyUntil time.Time
	// bytes and busy time of finished pieces, for throughput.
	bytes int64
	busy  time.Duration
}

type pieceResult struct {
	n      int
	parent string
	err    error
	bytes  int64
	cost   time.Duration
	cdn    bool
}

// task downloads one task. Fields under mu are shared with readers
// (streams, the API); the rest belong to the run goroutine.
type task struct {
	p   *Peer
	id  string
	req Request
	log *slog.Logger

	events  chan *schedulerv1.SchedulerPacket
	results chan pieceResult
	ctl     chan bool // session up (true) / down (false)

	mu      sync.Mutex
	meta    piece.Meta // ContentLength -1 until known
	metaOK  bool       // length and piece size known and the store task made
	final   bool       // length and every digest final
	have    piece.Bitmap
	count   int
	done    bool
	err     error
	changed chan struct{} // closed and replaced on every change
	// sumsVerified: the supernode's seed matched the whole digest with the
	// piece digests we verify against (TaskInfo.sums_verified).
	sumsVerified bool
	// seedVerifying: the whole digest the supernode's seed will check the
	// content against when it ends (TaskInfo.seed_verifying), "" when no
	// such seed runs. Readers of that digest defer their own whole hash.
	seedVerifying string
	// unverified: some piece was stored without a digest to check it
	// against (back-to-source before any digest was known).
	unverified bool
	received   map[string]int64

	// run-goroutine state
	sums         [][]byte
	storedSums   [][]byte // digests of pieces kept from an earlier run
	token        string
	parents      map[string]*parentState
	inflight     map[int]map[string]*fetching
	recentRates  []float64 // bytes/s of the last pieces from peers (ring)
	recentNext   int
	reports      []*schedulerv1.PieceResult
	backSource   bool
	bsDone       chan error
	registered   bool
	lastProgress time.Time
	lastHeld     int
	localFails   int
	downSince    time.Time
	rng          *rand.Rand

	// bsCancel cancels the current back-to-source run; bsStop is it when
	// the run started because no supernode session was up (nil
	// otherwise): the task re-joins the swarm when the session returns
	// instead of streaming the rest from the origin.
	bsCancel, bsStop context.CancelFunc
}

func newTask(p *Peer, id string, req Request) *task {
	return &task{
		p: p, id: id, req: req,
		log:      p.log.With("task", id),
		events:   make(chan *schedulerv1.SchedulerPacket, 4096),
		results:  make(chan pieceResult, 512),
		ctl:      make(chan bool, 8),
		meta:     piece.Meta{TaskID: id, ContentLength: -1, Digest: req.Digest},
		changed:  make(chan struct{}),
		received: map[string]int64{},
		parents:  map[string]*parentState{},
		inflight: map[int]map[string]*fetching{},
		rng:      rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
	}
}

// notify wakes readers; the caller holds t.mu.
func (t *task) notify() {
	close(t.changed)
	t.changed = make(chan struct{})
}

// state returns a snapshot for readers.
func (t *task) state() (meta piece.Meta, metaOK bool, have piece.Bitmap, done bool, err error, changed <-chan struct{}) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.meta, t.metaOK, t.have.Clone(), t.done, t.err, t.changed
}

// trusted reports whether every stored piece was checked against digests
// the supernode's seed confirmed, so readers need not hash the whole.
func (t *task) trusted() bool {
	trusted, _, _ := t.verification("")
	return trusted
}

// verification returns trusted (see trusted), whether the supernode's seed
// is still to confirm digest (TaskInfo.seed_verifying) with no unverified
// piece stored, and a channel closed at the next change.
func (t *task) verification(digest string) (trusted, pending bool, changed <-chan struct{}) {
	t.mu.Lock()
	defer t.mu.Unlock()
	trusted = t.sumsVerified && !t.unverified
	pending = !trusted && !t.unverified && digest != "" && t.seedVerifying == digest
	return trusted, pending, t.changed
}

// awaitingSeed reports whether the supernode's seed is still to confirm
// the task's digest (TaskInfo.seed_verifying without sums_verified yet).
func (t *task) awaitingSeed() bool {
	_, pending, _ := t.verification(t.req.Digest)
	return pending
}

func (t *task) backSourceAllowed() bool { return t.p.cfg.BackSource && !t.req.NoBackSource }

// run drives the task until it completes or fails.
func (t *task) run(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, t.p.cfg.TaskTimeout)
	defer cancel()
	err := t.loop(ctx)
	// Stop every piece download still running (reporting the trickles).
	now := time.Now()
	for n, fs := range t.inflight {
		for id, f := range fs {
			t.stopCopy(n, id, f, now)
		}
	}
	t.flushReports()
	if err != nil && !errors.Is(err, errdefs.ErrUnavailable) {
		switch {
		case errors.Is(ctx.Err(), context.DeadlineExceeded):
			err = &TaskError{Class: errdefs.ErrUnavailable, Msg: fmt.Sprintf("task %s: timed out after %s", t.id, t.p.cfg.TaskTimeout)}
		case ctx.Err() != nil:
			err = &TaskError{Class: errdefs.ErrUnavailable, Msg: fmt.Sprintf("task %s: agent shutting down", t.id)}
		}
	}
	t.finish(err)
}

func (t *task) finish(err error) {
	t.mu.Lock()
	t.done = true
	t.err = err
	t.notify()
	t.mu.Unlock()
	done := &schedulerv1.TaskDone{TaskId: t.id, Success: err == nil, BackToSource: t.backSource}
	if err != nil {
		done.Error = err.Error()
		t.log.Warn("task failed", "err", err)
	} else {
		t.log.Info("task complete", "bytes", t.meta.ContentLength, "back_to_source", t.backSource)
	}
	t.p.sess.Send(&schedulerv1.PeerPacket{Body: &schedulerv1.PeerPacket_Done{Done: done}})
	t.p.taskEnded(t, err)
}

func (t *task) register() {
	h := map[string]string{}
	for k, v := range t.req.Header {
		if len(v) > 0 {
			h[k] = v[0]
		}
	}
	t.registered = t.p.sess.Send(&schedulerv1.PeerPacket{Body: &schedulerv1.PeerPacket_Register{Register: &schedulerv1.RegisterTask{
		TaskId: t.id, Url: t.req.URL, Headers: h, Digest: t.req.Digest, Range: t.req.Range, Prefetch: t.req.Prefetch,
	}}})
}

func (t *task) loop(ctx context.Context) error {
	// A task the store already holds completely needs nothing.
	if st, err := t.p.store.Stat(ctx, t.id); err == nil && st.Complete {
		t.mu.Lock()
		t.meta, t.metaOK, t.final, t.have, t.count = st.Meta, true, true, st.Bitmap, st.Count()
		t.mu.Unlock()
		return nil
	}
	t.lastProgress = time.Now()
	if t.p.sess.Up() {
		t.register()
	} else {
		t.downSince = time.Now()
	}
	report := time.NewTicker(t.p.reportInterval())
	defer report.Stop()
	refresh := time.NewTicker(250 * time.Millisecond)
	defer refresh.Stop()
	ticks := 0
	var sealed bool
	var confirmBy time.Time
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case up := <-t.ctl:
			if up {
				t.downSince = time.Time{}
				t.rejoin()
				t.register()
			} else if t.downSince.IsZero() {
				t.downSince = time.Now()
			}
		case pk := <-t.events:
			if err := t.handle(ctx, pk); err != nil {
				return err
			}
		case r := <-t.results:
			if err := t.handleResult(r); err != nil {
				return err
			}
		case err := <-t.bsDone:
			t.bsDone = nil
			if err != nil {
				return err
			}
		case <-report.C:
			t.flushReports()
		case <-refresh.C:
			if sealed {
				break // only waiting for the seed's confirmation
			}
			ticks++
			// Ask for fresh parents each second while starved or short of
			// parents, else every five seconds: at thousands of hosts per
			// task the scheduler's cost is per request.
			refresh := ticks%4 == 0 && (ticks%20 == 0 || t.starved())
			if err := t.tick(ctx, refresh); err != nil {
				return err
			}
		}
		if t.complete() {
			if !sealed {
				if err := t.seal(ctx); err != nil {
					return err
				}
				sealed, confirmBy = true, time.Now().Add(confirmWait)
			}
			// Readers that deferred their whole-content hash to the
			// supernode's seed (Stream.decide) wait for its confirmation,
			// which only reaches tasks still running: stay until it comes
			// (or, bounded, until readers hash the store themselves).
			if !t.awaitingSeed() || !time.Now().Before(confirmBy) {
				return nil
			}
			continue
		}
		t.schedule(ctx)
	}
}

// tick runs four times a second: supernode loss, stalls and trickling
// parents; with refresh (once a second) it also asks for a fresh parent
// set.
func (t *task) tick(ctx context.Context, refresh bool) error {
	if !t.downSince.IsZero() && time.Since(t.downSince) >= t.p.cfg.SupernodeWait && !t.backSource {
		if t.backSourceAllowed() {
			t.startBackSource(ctx, "no supernode session")
			t.bsStop = t.bsCancel
		} else if !t.canFinishWithParents() {
			return &TaskError{Class: errdefs.ErrUnavailable, Msg: fmt.Sprintf("no supernode reachable (%v) and back-to-source is off", t.p.cfg.Supernodes)}
		}
	}
	if !t.registered && t.p.sess.Up() {
		t.register()
	}
	if refresh && t.registered && !t.backSource && t.p.sess.Up() {
		t.p.sess.Send(&schedulerv1.PeerPacket{Body: &schedulerv1.PeerPacket_NeedParents{NeedParents: &schedulerv1.NeedParents{TaskId: t.id}}})
	}
	// Progress is any new piece, from a parent or from the origin.
	t.mu.Lock()
	held := t.have.Count()
	t.mu.Unlock()
	if held != t.lastHeld {
		t.lastHeld, t.lastProgress = held, time.Now()
	}
	if time.Since(t.lastProgress) > t.p.cfg.StallTimeout {
		return &TaskError{Class: errdefs.ErrUnavailable, Msg: fmt.Sprintf("task %s: no progress for %s", t.id, t.p.cfg.StallTimeout)}
	}
	t.checkSlow()
	return nil
}

// starved reports whether the task lacks useful parents: fewer than two,
// or none holding a missing piece that is not already in flight.
func (t *task) starved() bool {
	if len(t.parents) < 2 {
		return true
	}
	t.mu.Lock()
	have, count := t.have.Clone(), t.count
	t.mu.Unlock()
	for n := 0; n < count; n++ {
		if have.Has(n) || len(t.inflight[n]) > 0 {
			continue
		}
		for _, ps := range t.parents {
			if ps.bitmap.Has(n) {
				return false
			}
		}
	}
	return true
}

// canFinishWithParents reports whether every missing piece has a known
// digest and a parent holding it.
func (t *task) canFinishWithParents() bool {
	t.mu.Lock()
	ok, count, have := t.final, t.count, t.have.Clone()
	t.mu.Unlock()
	if !ok {
		return false
	}
	for n := 0; n < count; n++ {
		if have.Has(n) {
			continue
		}
		found := false
		for _, ps := range t.parents {
			if ps.bitmap.Has(n) {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

func (t *task) handle(ctx context.Context, pk *schedulerv1.SchedulerPacket) error {
	switch b := pk.Body.(type) {
	case *schedulerv1.SchedulerPacket_Task:
		return t.handleInfo(ctx, b.Task)
	case *schedulerv1.SchedulerPacket_Parents:
		t.handleParents(b.Parents)
	case *schedulerv1.SchedulerPacket_Available:
		if ps := t.parents[b.Available.HostId]; ps != nil {
			for _, n := range b.Available.Pieces {
				if int(n) < piece.MaxCount {
					ps.bitmap.Set(int(n))
				}
			}
		}
	case *schedulerv1.SchedulerPacket_BackToSource:
		if t.backSourceAllowed() {
			t.startBackSource(ctx, b.BackToSource.Reason)
		} else {
			return &TaskError{Class: errdefs.ErrUnavailable, Msg: fmt.Sprintf("supernode cannot serve the task (%s) and back-to-source is off", b.BackToSource.Reason)}
		}
	case *schedulerv1.SchedulerPacket_Error:
		if t.backSource {
			return nil // the origin decides now
		}
		te := taskErrorFromProto(b.Error)
		if errors.Is(te, errdefs.ErrDigestMismatch) {
			// Pieces verified against the failed seed's digests are not the
			// task's content: drop them.
			t.mu.Lock()
			t.have, t.metaOK = nil, false
			t.mu.Unlock()
			t.p.store.Delete(context.WithoutCancel(ctx), t.id)
		}
		return te
	}
	return nil
}

func taskErrorFromProto(e *schedulerv1.TaskError) *TaskError {
	te := &TaskError{Msg: e.Message, OriginStatus: int(e.OriginStatus), OriginHeader: http.Header{}}
	for k, v := range e.OriginHeaders {
		te.OriginHeader.Set(k, v)
	}
	switch e.Code {
	case schedulerv1.ErrorCode_ERROR_INVALID:
		te.Class = errdefs.ErrInvalid
	case schedulerv1.ErrorCode_ERROR_NOT_FOUND:
		te.Class = errdefs.ErrNotFound
	case schedulerv1.ErrorCode_ERROR_FORBIDDEN:
		te.Class = errdefs.ErrForbidden
	case schedulerv1.ErrorCode_ERROR_DIGEST_MISMATCH:
		te.Class = errdefs.ErrDigestMismatch
	default:
		te.Class = errdefs.ErrUnavailable
	}
	if te.Msg == "" {
		te.Msg = "supernode: " + e.Code.String()
	}
	return te
}

func (t *task) handleInfo(ctx context.Context, in *schedulerv1.TaskInfo) error {
	if in.Token != "" {
		t.token = in.Token
	}
	t.mu.Lock()
	if sv := in.SeedVerifying && in.Digest != ""; sv != (t.seedVerifying != "") {
		t.seedVerifying = ""
		if sv {
			t.seedVerifying = in.Digest
		}
		t.notify()
	}
	t.mu.Unlock()
	if in.PieceSize == 0 || in.PieceSize > piece.MaxSize {
		return nil // nothing known yet
	}
	t.mu.Lock()
	needCreate := !t.metaOK || (t.meta.ContentLength < 0 && in.ContentLength >= 0)
	if t.metaOK && t.meta.PieceSize != int32(in.PieceSize) {
		t.mu.Unlock()
		if t.backSource {
			return nil // our own origin copy wins
		}
		// The store holds pieces of another cut (an earlier back-to-source):
		// start over with the scheduler's.
		t.p.store.Delete(ctx, t.id)
		t.mu.Lock()
		t.have, t.metaOK, needCreate = nil, false, true
	}
	m := t.meta
	m.PieceSize = int32(in.PieceSize)
	if in.ContentLength >= 0 {
		m.ContentLength = in.ContentLength
	}
	if in.Digest != "" && m.Digest == "" && piece.ValidDigest(in.Digest) == nil {
		m.Digest = in.Digest
	}
	t.mu.Unlock()
	if needCreate {
		if err := t.p.store.Create(ctx, m); err != nil {
			return &TaskError{Class: errdefs.ErrInvalid, Msg: fmt.Sprintf("task %s: store: %v", t.id, err)}
		}
		st, err := t.p.store.Stat(ctx, t.id)
		if err != nil {
			return err
		}
		t.mu.Lock()
		t.meta, t.metaOK, t.have = st.Meta, true, st.Bitmap
		t.count = st.Meta.Count()
		t.notify()
		t.mu.Unlock()
		if st.Bitmap.Count() > 0 {
			// Pieces kept from an earlier run: check them against the
			// digests this run announces.
			t.storedSums, _ = t.p.store.PieceSums(ctx, t.id)
		}
	}
	stale := false
	for i, s := range in.PieceSha256 {
		n := int(in.FirstPiece) + i
		if n >= piece.MaxCount || len(s) != 32 {
			continue
		}
		for len(t.sums) <= n {
			t.sums = append(t.sums, nil)
		}
		t.sums[n] = s
		if n < len(t.storedSums) && t.storedSums[n] != nil && !bytes.Equal(t.storedSums[n], s) {
			stale = true
		}
	}
	if stale {
		// What we kept is not what the task is now: start over.
		t.log.Warn("stored pieces do not match the announced digests; dropping them")
		t.storedSums = nil
		t.mu.Lock()
		t.have, t.metaOK = nil, false
		t.mu.Unlock()
		t.p.store.Delete(ctx, t.id)
		return t.handleInfo(ctx, in)
	}
	if in.Complete || in.SumsVerified {
		t.mu.Lock()
		t.final = t.final || in.Complete && t.meta.ContentLength >= 0
		if in.SumsVerified && !t.sumsVerified {
			t.sumsVerified = true
			t.notify() // readers waiting at the end for this
		}
		t.mu.Unlock()
	}
	return nil
}

func (t *task) handleParents(ps *schedulerv1.ParentSet) {
	next := make(map[string]*parentState, len(ps.Parents))
	for _, p := range ps.Parents {
		if p.HostId == "" || p.HostId == t.p.hostID || p.Addr == "" {
			continue
		}
		old := t.parents[p.HostId]
		st := &parentState{id: p.HostId, addr: p.Addr, cdn: p.Cdn, bitmap: piece.Bitmap(append([]byte(nil), p.Bitmap...))}
		if old != nil {
			st.inflight, st.fails, st.bytes, st.busy, st.busyUntil = old.inflight, old.fails, old.bytes, old.busy, old.busyUntil
			// Hosts only gain pieces (a lost one shows as NOT_FOUND and is
			// cleared then): keep what we heard in PieceAvailable since.
			for i, b := range old.bitmap {
				if i < len(st.bitmap) {
					st.bitmap[i] |= b
				} else {
					st.bitmap = append(st.bitmap, b)
				}
			}
		}
		next[p.HostId] = st
	}
	// Parents dropped by the scheduler keep their in-flight pieces; results
	// still arrive and are accounted to them.
	for id, old := range t.parents {
		if _, ok := next[id]; !ok && old.inflight > 0 {
			old.bitmap = nil
			next[id] = old
		}
	}
	t.parents = next
}

func (t *task) complete() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.metaOK && t.meta.ContentLength >= 0 && (t.final || t.backSource) && t.count > 0 && t.have.Full(t.count) ||
		t.metaOK && t.meta.ContentLength == 0
}

// seal marks the stored task complete.
func (t *task) seal(ctx context.Context) error {
	t.mu.Lock()
	length := t.meta.ContentLength
	t.mu.Unlock()
	if err := t.p.store.Finish(ctx, t.id, length); err != nil {
		return &TaskError{Class: errdefs.ErrInvalid, Msg: fmt.Sprintf("task %s: finish: %v", t.id, err)}
	}
	return nil
}

// schedule starts piece downloads: rarest first among the parents'
// pieces, preferring peers over the CDN and idle parents over busy ones;
// when every missing piece is in flight (endgame) it asks a second parent
// for the same piece and keeps whichever copy verifies first.
func (t *task) schedule(ctx context.Context) {
	t.mu.Lock()
	ok, count, have := t.metaOK, t.count, t.have.Clone()
	t.mu.Unlock()
	if !ok || count == 0 || t.token == "" || len(t.parents) == 0 {
		return
	}
	budget := t.p.cfg.MaxParallelPieces - t.inflightCount()
	if budget <= 0 {
		return
	}
	type cand struct{ n, holders int }
	var cands []cand
	missing := 0
	for n := 0; n < count; n++ {
		if have.Has(n) {
			continue
		}
		missing++
		if len(t.inflight[n]) > 0 || n >= len(t.sums) || t.sums[n] == nil {
			continue
		}
		h := 0
		for _, ps := range t.parents {
			if ps.bitmap.Has(n) {
				h++
			}
		}
		if h > 0 {
			cands = append(cands, cand{n, h})
		}
	}
	t.rng.Shuffle(len(cands), func(i, j int) { cands[i], cands[j] = cands[j], cands[i] })
	// Stable sort by rarity keeps the shuffle among equals. While someone
	// reads the content in order, the pieces just ahead of the reader come
	// first (rarest first among them, then in order), so the stream keeps
	// pace with the download instead of waiting for the last piece.
	window := -1
	if t.p.readers(t.id) > 0 {
		first := 0
		for first < count && have.Has(first) {
			first++
		}
		window = first + 2*t.p.cfg.MaxParallelPieces
	}
	inWindow := func(c cand) bool { return c.n < window }
	slices.SortStableFunc(cands, func(a, b cand) int {
		if wa, wb := inWindow(a), inWindow(b); wa != wb {
			if wa {
				return -1
			}
			return 1
		}
		if a.holders != b.holders {
			return a.holders - b.holders
		}
		if inWindow(a) {
			return a.n - b.n
		}
		return 0
	})
	for _, c := range cands {
		if budget == 0 {
			break
		}
		if ps := t.pickParent(c.n, nil); ps != nil {
			t.fetch(ctx, c.n, ps)
			budget--
		}
	}
	// Endgame: everything missing is in flight; duplicate the stragglers.
	if budget > 0 && missing > 0 && missing == t.inflightPieces() && missing <= t.p.cfg.MaxParallelPieces {
		for n, fs := range t.inflight {
			if budget == 0 {
				break
			}
			if len(fs) >= 2 {
				continue
			}
			if ps := t.pickParent(n, fs); ps != nil {
				t.fetch(ctx, n, ps)
				budget--
			}
		}
	}
}

func (t *task) inflightCount() int {
	c := 0
	for _, fs := range t.inflight {
		c += len(fs)
	}
	return c
}

func (t *task) inflightPieces() int { return len(t.inflight) }

// pickParent chooses a parent holding piece n with spare capacity, not in
// exclude: peers before the CDN, then the least busy, then the fastest.
func (t *task) pickParent(n int, exclude map[string]*fetching) *parentState {
	var best *parentState
	cdnCap := t.p.cfg.PerParentPieces
	for _, ps := range t.parents {
		if !ps.cdn && ps.bitmap != nil {
			// Other peers are in the swarm: take from the CDN only a few
			// pieces at a time and trade the rest, so the supernode sends
			// each piece to few hosts.
			cdnCap = min(cdnCap, t.p.cfg.CDNParallelPieces)
			break
		}
	}
	now := time.Now()
	for _, ps := range t.parents {
		if !ps.bitmap.Has(n) || ps.inflight >= t.p.cfg.PerParentPieces || ps.cdn && ps.inflight >= cdnCap || now.Before(ps.busyUntil) {
			continue
		}
		if _, ex := exclude[ps.id]; ex {
			continue
		}
		if best == nil || better(ps, best) {
			best = ps
		}
	}
	return best
}

func better(a, b *parentState) bool {
	if a.cdn != b.cdn {
		return !a.cdn
	}
	if a.inflight != b.inflight {
		return a.inflight < b.inflight
	}
	if a.fails != b.fails {
		return a.fails < b.fails
	}
	return a.rate() > b.rate()
}

func (p *parentState) rate() float64 {
	if p.busy <= 0 {
		return 0
	}
	return float64(p.bytes) / p.busy.Seconds()
}

// fetching is a piece download in flight.
type fetching struct {
	cancel context.CancelCauseFunc
	start  time.Time
	cdn    bool
	read   countingReader // bytes of the piece body read so far
}

// errSlowPiece is the cause of a download cancelled by checkSlow.
var errSlowPiece = errors.New("the parent trickled the piece")

// fetch downloads piece n from ps in a goroutine; the result comes back on
// t.results.
func (t *task) fetch(ctx context.Context, n int, ps *parentState) {
	cctx, cancel := context.WithCancelCause(ctx)
	fctx, stop := context.WithTimeout(cctx, t.p.cfg.PieceTimeout)
	f := &fetching{cancel: cancel, start: time.Now(), cdn: ps.cdn}
	if t.inflight[n] == nil {
		t.inflight[n] = map[string]*fetching{}
	}
	t.inflight[n][ps.id] = f
	ps.inflight++
	sum, addr, token, cdn, id := t.sums[n], ps.addr, t.token, ps.cdn, ps.id
	go func() {
		defer cancel(nil)
		defer stop()
		body, _, err := t.p.fetchPiece(fctx, addr, t.id, n, token)
		if err == nil {
			f.read.r = t.p.limitDownload(fctx, body)
			_, err = t.p.store.WritePiece(fctx, t.id, n, &f.read, sum)
			body.Close()
		}
		if err != nil && errors.Is(context.Cause(cctx), errSlowPiece) {
			err = fmt.Errorf("piece %d from %s: %w after %d bytes in %s", n, id, errSlowPiece, f.read.n.Load(), time.Since(f.start).Round(time.Millisecond))
		}
		r := pieceResult{n: n, parent: id, err: err, bytes: f.read.n.Load(), cost: time.Since(f.start), cdn: cdn}
		select {
		case t.results <- r:
		case <-ctx.Done():
		}
	}()
}

// maxLocalFailures is how many pieces in a row may fail to be stored (disk
// full even after GC) before the task gives up.
const maxLocalFailures = 3

// handleResult accounts a finished piece download; an error ends the task.
func (t *task) handleResult(r pieceResult) error {
	ps := t.parents[r.parent]
	if ps != nil {
		ps.inflight--
	}
	fs := t.inflight[r.n]
	delete(fs, r.parent)
	if len(fs) == 0 {
		delete(t.inflight, r.n)
	}
	if errors.Is(r.err, context.Canceled) {
		return nil // an endgame loser, or shutdown
	}
	res := &schedulerv1.PieceResult{Piece: uint32(r.n), ParentId: r.parent, Bytes: uint64(r.bytes), CostMs: uint32(r.cost.Milliseconds())}
	if r.err == nil && r.bytes == 0 {
		return nil // another copy of the piece landed first: nothing moved
	}
	if r.err == nil {
		// Stop the other copies of this piece (reporting the trickles).
		now := time.Now()
		for id, f := range fs {
			t.stopCopy(r.n, id, f, now)
		}
		t.lastProgress = time.Now()
		src := "peer"
		if r.cdn {
			src = "cdn"
		}
		t.p.metrics.bytes.WithLabelValues(src).Add(float64(r.bytes))
		t.p.metrics.pieceSeconds.Observe(r.cost.Seconds())
		if !r.cdn {
			t.notePace(r.bytes, r.cost)
		}
		if ps != nil {
			ps.bytes += r.bytes
			ps.busy += r.cost
		}
		t.mu.Lock()
		t.have.Set(r.n)
		t.received[src] += r.bytes
		t.notify()
		t.mu.Unlock()
		t.reports = append(t.reports, res)
		t.localFails = 0
		return nil
	}
	if errors.Is(r.err, piece.ErrBusy) {
		// A healthy parent at its upload limit: rest it a second, do not
		// count it as a failure (at thousands of hosts the CDN's slots are
		// full all the time).
		if ps != nil {
			ps.busyUntil = time.Now().Add(time.Second)
		}
		return nil
	}
	res.Failure = classify(r.err)
	t.reports = append(t.reports, res)
	t.p.metrics.pieceFailures.WithLabelValues(res.Failure.String()).Inc()
	if res.Failure == schedulerv1.Failure_FAILURE_LOCAL {
		t.localFails++
		t.p.gcSoon()
		if t.localFails >= maxLocalFailures {
			return &TaskError{Class: errdefs.ErrNoSpace, Msg: fmt.Sprintf("task %s: cannot store pieces: %v", t.id, r.err)}
		}
	}
	if ps == nil {
		return nil
	}
	ps.fails++
	drop := false
	switch res.Failure {
	case schedulerv1.Failure_FAILURE_VERIFY:
		t.log.Warn("parent sent a corrupt piece", "peer", r.parent, "piece", r.n, "err", r.err)
		drop = true
	case schedulerv1.Failure_FAILURE_SLOW:
		// A trickler, or a parent whose uploads queue far behind the
		// others': the supernode tells them apart (ReportPieces).
		t.log.Info("parent too slow for a piece, dropped", "peer", r.parent, "piece", r.n, "err", r.err)
		drop = true
	case schedulerv1.Failure_FAILURE_NOT_FOUND:
		ps.bitmap.Clear(r.n)
	case schedulerv1.Failure_FAILURE_LOCAL:
		ps.fails-- // not the parent's fault
	default:
		drop = ps.fails >= 3
	}
	if drop {
		delete(t.parents, r.parent)
		if ps.inflight > 0 {
			// keep counting its in-flight pieces, but offer it nothing more
			ps.bitmap = nil
			t.parents[r.parent] = ps
		}
		t.flushReports()
		t.p.sess.Send(&schedulerv1.PeerPacket{Body: &schedulerv1.PeerPacket_NeedParents{NeedParents: &schedulerv1.NeedParents{TaskId: t.id, Failed: []string{r.parent}}}})
	}
	return nil
}

// checkSlow cancels downloads from peers that trickle (see
// Config.SlowPieceRate); their results report FAILURE_SLOW.
func (t *task) checkSlow() {
	now := time.Now()
	for _, fs := range t.inflight {
		for _, f := range fs {
			if t.trickling(f, now, t.p.cfg.SlowPieceGrace) {
				f.cancel(errSlowPiece)
			}
		}
	}
}

// trickling reports whether download f from a peer has run for minAge at
// under slow_piece_rate and under a tenth of the task's pace (the median
// rate of its last pieces from peers; without enough of them, no verdict).
func (t *task) trickling(f *fetching, now time.Time, minAge time.Duration) bool {
	floor := float64(t.p.cfg.SlowPieceRate)
	age := now.Sub(f.start)
	if floor <= 0 || f.cdn || age < minAge || len(t.recentRates) < slowBaselinePieces/2 {
		return false
	}
	rate := float64(f.read.n.Load()) / age.Seconds()
	return rate < floor && rate < median(t.recentRates)/10
}

// stopCopy cancels download f of piece n from parent id, which is no
// longer needed (another copy won, or the task ends). A trickle caught
// this way, past a quarter of slow_piece_grace, is reported as
// FAILURE_SLOW all the same: a trickler asked only near the end of a
// download would otherwise never be reported.
func (t *task) stopCopy(n int, id string, f *fetching, now time.Time) {
	if t.trickling(f, now, t.p.cfg.SlowPieceGrace/4) {
		age := now.Sub(f.start)
		t.log.Debug("a cancelled copy was trickling", "peer", id, "piece", n, "bytes", f.read.n.Load(), "after", age.Round(time.Millisecond))
		t.reports = append(t.reports, &schedulerv1.PieceResult{Piece: uint32(n), ParentId: id, Failure: schedulerv1.Failure_FAILURE_SLOW,
			Bytes: uint64(f.read.n.Load()), CostMs: uint32(age.Milliseconds())})
		t.p.metrics.pieceFailures.WithLabelValues(schedulerv1.Failure_FAILURE_SLOW.String()).Inc()
	}
	f.cancel(context.Canceled)
}

// slowBaselinePieces is how many recent piece rates make a task's pace.
const slowBaselinePieces = 16

// notePace records a piece's rate from a peer for checkSlow.
func (t *task) notePace(bytes int64, cost time.Duration) {
	if bytes <= 0 || cost <= 0 {
		return
	}
	r := float64(bytes) / cost.Seconds()
	if len(t.recentRates) < slowBaselinePieces {
		t.recentRates = append(t.recentRates, r)
		return
	}
	t.recentRates[t.recentNext] = r
	t.recentNext = (t.recentNext + 1) % slowBaselinePieces
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

func classify(err error) schedulerv1.Failure {
	switch {
	case errors.Is(err, errSlowPiece):
		return schedulerv1.Failure_FAILURE_SLOW
	case errors.Is(err, errdefs.ErrDigestMismatch), errors.Is(err, errdefs.ErrInvalid):
		return schedulerv1.Failure_FAILURE_VERIFY
	case errors.Is(err, errdefs.ErrNoSpace):
		return schedulerv1.Failure_FAILURE_LOCAL
	case errors.Is(err, errdefs.ErrNotFound):
		return schedulerv1.Failure_FAILURE_NOT_FOUND
	case errors.Is(err, errdefs.ErrForbidden):
		return schedulerv1.Failure_FAILURE_REFUSED
	}
	return schedulerv1.Failure_FAILURE_NETWORK
}

func (t *task) flushReports() {
	if len(t.reports) == 0 {
		return
	}
	if t.p.sess.Send(&schedulerv1.PeerPacket{Body: &schedulerv1.PeerPacket_Pieces{Pieces: &schedulerv1.PieceReports{TaskId: t.id, Results: t.reports}}}) {
		t.reports = nil
	} else if len(t.reports) > 4096 {
		t.reports = nil
	}
}
