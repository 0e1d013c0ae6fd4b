package main

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	schedulerv1 "github.com/pouchfly/pouchfly/api/scheduler/v1"
	"github.com/pouchfly/pouchfly/piece"
	"github.com/pouchfly/pouchfly/scheduler"
)

// This file models peer/task.go: the per-task loop of a peer agent
// (handle, handleInfo, handleParents, schedule, pickParent, better, fetch,
// handleResult, flushReports, tick). Names follow that file so the two can
// be read side by side; the differences are listed in doc.go.

// parentState mirrors peer.parentState.
type parentState struct {
	id       string
	node     int32
	cdn      bool
	bitmap   piece.Bitmap
	inflight int
	fails    int
	bytes    int64
	busy     int64 // ns
	// retryAt: with Config.RetryAfter503 (the agent's busyUntil), a
	// parent that answered 503 is not asked again before this time.
	retryAt int64
	inSet   bool // in the last ParentSet (not only kept for its in-flight pieces)
}

func (p *parentState) rate() float64 {
	if p.busy <= 0 {
		return 0
	}
	return float64(p.bytes) / (float64(p.busy) / 1e9)
}

type inPkt struct {
	at int64
	p  *schedulerv1.SchedulerPacket
}

// host is one simulated peer agent with one task.
type host struct {
	idx  int32
	id   string
	node int32
	info scheduler.HostInfo
	rng  *rand.Rand

	start, doneAt int64
	refreshTicks  int
	started       bool
	registered    bool
	metaOK        bool
	final         bool
	done          bool
	length        int64
	pieceSize     int32
	count         int
	known         piece.Bitmap // pieces whose digest is known (peer: t.sums)
	token         bool
	have          piece.Bitmap
	nHave         int

	parents         []*parentState
	inflight        [][]*xfer // by piece
	nInflight       int       // transfers in flight (peer: inflightCount)
	nInflightPieces int       // pieces in flight (peer: len(t.inflight))

	reports     []*schedulerv1.PieceResult
	reportArmed bool
	inbox       []inPkt
	inboxArmed  bool

	// statistics
	fromCDN, fromPeers int64
	parentSets         int
	parentsAdded       int
	failed             int // 503s seen
	dropped            int // parents dropped after failures
	errored            string
}

// startTask is the agent's Download: register and start the tickers.
func (s *Sim) startTask(h *host) {
	h.started = true
	h.start = s.now
	h.registered = true
	reg := &schedulerv1.RegisterTask{TaskId: s.taskID, Url: s.url, Digest: s.taskID}
	id := h.id
	s.toSched(callRegister, func(sc *scheduler.Scheduler) { sc.Register(id, reg) })
	s.q.push(event{at: s.now + int64(time.Second), kind: evRefresh, h: h.idx})
}

// refresh is the agent's once-a-second refresh tick: NeedParents while
// the task is starved (starved), else only every fifth second.
func (s *Sim) refresh(h *host) {
	if h.done {
		return
	}
	h.refreshTicks++
	if h.refreshTicks%5 == 0 || s.starved(h) {
		id := h.id
		np := &schedulerv1.NeedParents{TaskId: s.taskID}
		s.toSched(callNeedParents, func(sc *scheduler.Scheduler) { sc.NeedParents(id, np) })
	}
	s.q.push(event{at: s.now + int64(time.Second), kind: evRefresh, h: h.idx})
}

// starved mirrors task.starved: fewer than two parents, or none holding a
// missing piece that is not already in flight.
func (s *Sim) starved(h *host) bool {
	if len(h.parents) < 2 {
		return true
	}
	for n := 0; n < h.count; n++ {
		if h.have.Has(n) || len(h.inflight[n]) > 0 {
			continue
		}
		for _, ps := range h.parents {
			if ps.bitmap.Has(n) {
				return false
			}
		}
	}
	return true
}

// armReport makes the report ticker (period ReportInterval from the task's
// start) flush at its next tick.
func (s *Sim) armReport(h *host) {
	if h.reportArmed {
		return
	}
	h.reportArmed = true
	iv := s.reportIv
	k := (s.now-h.start)/iv + 1
	s.q.push(event{at: h.start + k*iv, kind: evReportTick, h: h.idx})
}

func (s *Sim) flushReports(h *host) {
	if len(h.reports) == 0 {
		return
	}
	r := &schedulerv1.PieceReports{TaskId: s.taskID, Results: h.reports}
	h.reports = nil
	id := h.id
	s.toSched(callReport, func(sc *scheduler.Scheduler) { sc.ReportPieces(id, r) })
}

// handleInbox processes the packets that have arrived, in order, then runs
// the loop's epilogue once (complete → finish, else schedule).
func (s *Sim) handleInbox(h *host) {
	i := 0
	for ; i < len(h.inbox) && h.inbox[i].at <= s.now; i++ {
		if !h.done {
			s.handle(h, h.inbox[i].p)
		}
		h.inbox[i].p = nil
	}
	h.inbox = h.inbox[i:]
	if len(h.inbox) == 0 {
		h.inbox = nil
		h.inboxArmed = false
	} else {
		s.q.push(event{at: h.inbox[0].at, kind: evInbox, h: h.idx})
	}
	s.epilogue(h)
}

func (s *Sim) epilogue(h *host) {
	if h.done || !h.started {
		return
	}
	if s.complete(h) {
		s.finish(h)
		return
	}
	s.schedule(h)
}

func (s *Sim) handle(h *host, pk *schedulerv1.SchedulerPacket) {
	switch b := pk.Body.(type) {
	case *schedulerv1.SchedulerPacket_Task:
		s.handleInfo(h, b.Task)
	case *schedulerv1.SchedulerPacket_Parents:
		if s.trace != nil {
			var ids []string
			for _, p := range b.Parents.Parents {
				ids = append(ids, fmt.Sprintf("%s:%x", p.HostId, p.Bitmap))
			}
			s.tracef("%s parents %v", h.id, ids)
		}
		s.handleParents(h, b.Parents)
	case *schedulerv1.SchedulerPacket_Available:
		s.tracef("%s avail %s %v", h.id, b.Available.HostId, b.Available.Pieces)
		if ps := findParent(h, b.Available.HostId); ps != nil {
			for _, n := range b.Available.Pieces {
				if int(n) < piece.MaxCount {
					ps.bitmap.Set(int(n))
				}
			}
		}
	case *schedulerv1.SchedulerPacket_BackToSource:
		// Never expected here (the CDN never fails): a model error.
		h.errored = "back to source: " + b.BackToSource.Reason
		s.stats.unexpected++
	case *schedulerv1.SchedulerPacket_Error:
		h.errored = "task error: " + b.Error.Message
		s.stats.unexpected++
	}
}

func (s *Sim) handleInfo(h *host, in *schedulerv1.TaskInfo) {
	if in.Token != "" {
		h.token = true
	}
	if in.PieceSize == 0 || in.PieceSize > piece.MaxSize {
		return
	}
	needCreate := !h.metaOK || (h.length < 0 && in.ContentLength >= 0)
	h.pieceSize = int32(in.PieceSize)
	if in.ContentLength >= 0 {
		h.length = in.ContentLength
	}
	if needCreate {
		h.metaOK = true
		h.count = 0
		if h.length >= 0 {
			h.count = piece.Count(h.length, h.pieceSize)
		}
		if len(h.inflight) < h.count {
			h.inflight = make([][]*xfer, h.count)
		}
	}
	for i, sum := range in.PieceSha256 {
		n := int(in.FirstPiece) + i
		if n >= piece.MaxCount || len(sum) != 32 {
			continue
		}
		h.known.Set(n)
	}
	if in.Complete {
		h.final = h.length >= 0
	}
}

func findParent(h *host, id string) *parentState {
	for _, ps := range h.parents {
		if ps.id == id {
			return ps
		}
	}
	return nil
}

func (s *Sim) handleParents(h *host, ps *schedulerv1.ParentSet) {
	h.parentSets++
	next := make([]*parentState, 0, len(ps.Parents)+1)
	for _, p := range ps.Parents {
		if p.HostId == "" || p.HostId == h.id || p.Addr == "" {
			continue
		}
		old := findParent(h, p.HostId)
		st := &parentState{id: p.HostId, cdn: p.Cdn, bitmap: piece.Bitmap(append([]byte(nil), p.Bitmap...)), inSet: true}
		st.node = s.nodeOf(p.HostId)
		if old != nil {
			// As the agent: the rest of a parent that answered 503
			// (busyUntil, here retryAt) carries over to the new entry.
			st.inflight, st.fails, st.bytes, st.busy, st.retryAt = old.inflight, old.fails, old.bytes, old.busy, old.retryAt
			for i, b := range old.bitmap {
				if i < len(st.bitmap) {
					st.bitmap[i] |= b
				} else {
					st.bitmap = append(st.bitmap, b)
				}
			}
		} else {
			h.parentsAdded++
			s.stats.parentsAdded++
		}
		next = append(next, st)
	}
	for _, old := range h.parents {
		if old.inflight > 0 && !slices.ContainsFunc(next, func(p *parentState) bool { return p.id == old.id }) {
			old.bitmap = nil
			old.inSet = false
			next = append(next, old)
		}
	}
	h.parents = next
}

func (s *Sim) complete(h *host) bool {
	return h.metaOK && h.length >= 0 && h.final && h.count > 0 && h.nHave == h.count ||
		h.metaOK && h.length == 0
}

// finish is seal + finish: stop the downloads still running, flush the
// reports, send Done.
func (s *Sim) finish(h *host) {
	h.done = true
	h.doneAt = s.now
	s.stats.finished++
	for n := range h.inflight {
		for _, x := range h.inflight[n] {
			s.cancel(h, x)
		}
		h.inflight[n] = nil
	}
	h.nInflight, h.nInflightPieces = 0, 0
	s.flushReports(h)
	id := h.id
	d := &schedulerv1.TaskDone{TaskId: s.taskID, Success: true}
	s.toSched(callDone, func(sc *scheduler.Scheduler) { sc.Done(id, d) })
}

type cand struct{ n, holders int }

// schedule mirrors task.schedule: rarest first among the parents' pieces
// (random among equals), up to MaxParallelPieces in flight, then endgame.
func (s *Sim) schedule(h *host) {
	if !h.metaOK || h.count == 0 || !h.token || len(h.parents) == 0 {
		return
	}
	budget := s.cfg.MaxParallelPieces - h.nInflight
	if budget <= 0 {
		return
	}
	cands := s.candScratch[:0]
	missing := 0
	for n := 0; n < h.count; n++ {
		if h.have.Has(n) {
			continue
		}
		missing++
		if len(h.inflight[n]) > 0 || !h.known.Has(n) {
			continue
		}
		c := 0
		for _, ps := range h.parents {
			if ps.bitmap.Has(n) {
				c++
			}
		}
		if c > 0 {
			cands = append(cands, cand{n, c})
		}
	}
	h.rng.Shuffle(len(cands), func(i, j int) { cands[i], cands[j] = cands[j], cands[i] })
	slices.SortStableFunc(cands, func(a, b cand) int { return a.holders - b.holders })
	for _, c := range cands {
		if budget == 0 {
			break
		}
		if ps := s.pickParent(h, c.n, nil); ps != nil {
			s.fetch(h, c.n, ps)
			budget--
		}
	}
	s.candScratch = cands[:0]
	// Endgame: everything missing is in flight; duplicate the stragglers.
	if budget > 0 && missing > 0 && missing == h.nInflightPieces && missing <= s.cfg.MaxParallelPieces {
		// The peer ranges over a map: random order.
		order := s.orderScratch[:0]
		for n := range h.inflight {
			if len(h.inflight[n]) > 0 {
				order = append(order, n)
			}
		}
		h.rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		for _, n := range order {
			if budget == 0 {
				break
			}
			fs := h.inflight[n]
			if len(fs) >= 2 {
				continue
			}
			if ps := s.pickParent(h, n, fs); ps != nil {
				s.fetch(h, n, ps)
				budget--
				s.stats.endgameDups++
			}
		}
		s.orderScratch = order[:0]
	}
}

// pickParent mirrors task.pickParent: a parent holding n with spare
// capacity, not in exclude: peers before the CDN, then the least busy, then
// the fewest failures, then the fastest. The peer ranges over a map; ties
// go to whichever comes first, so the walk starts at a random parent.
func (s *Sim) pickParent(h *host, n int, exclude []*xfer) *parentState {
	var best *parentState
	cdnCap := s.cfg.PerParentPieces
	for _, ps := range h.parents {
		if !ps.cdn && ps.bitmap != nil {
			cdnCap = min(cdnCap, s.cfg.CDNParallelPieces)
			break
		}
	}
	k := len(h.parents)
	off := h.rng.IntN(k)
	for i := 0; i < k; i++ {
		ps := h.parents[(off+i)%k]
		if !ps.bitmap.Has(n) || ps.inflight >= s.cfg.PerParentPieces || ps.cdn && ps.inflight >= cdnCap {
			continue
		}
		if slices.ContainsFunc(exclude, func(x *xfer) bool { return x.parentID == ps.id }) {
			continue
		}
		if ps.retryAt > s.now {
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

// fetch sends a piece request to ps; it reaches the parent one way later.
func (s *Sim) fetch(h *host, n int, ps *parentState) {
	_, size := piece.Range(n, h.length, h.pieceSize)
	x := &xfer{from: ps.node, to: h.node, piece: n, size: float64(size), child: h.idx, parentID: ps.id, start: s.now}
	if len(h.inflight[n]) == 0 {
		h.nInflightPieces++
	}
	h.inflight[n] = append(h.inflight[n], x)
	h.nInflight++
	ps.inflight++
	s.stats.requests++
	s.tracef("%s fetch %d from %s", h.id, n, ps.id)
	s.q.push(event{at: s.now + s.oneWay, kind: evRequest, x: x})
}

// request: the parent's upload server takes the request, or answers 503
// when all its upload slots are taken.
func (s *Sim) request(x *xfer) {
	if x.state == xfCanceled {
		return
	}
	nd := &s.net.nodes[x.from]
	if nd.maxSlots > 0 && nd.slots >= nd.maxSlots {
		nd.refused++
		x.refused = true
		x.state = xfResult
		s.q.push(event{at: s.now + s.oneWay, kind: evResult, x: x})
		return
	}
	nd.slots++
	nd.peakSlots = max(nd.peakSlots, nd.slots)
	s.net.start(x, s.now)
}

// flowDone: the last byte left the parent.
func (s *Sim) flowDone(x *xfer) {
	s.net.stop(x, s.now)
	s.net.nodes[x.from].slots--
	if x.origin {
		s.originPiece(x)
		return
	}
	x.state = xfResult
	s.q.push(event{at: s.now + s.oneWay, kind: evResult, x: x})
}

// cancel drops a transfer the child no longer wants (endgame loser, task
// over): bytes already sent stay counted at the parent. The peer gets the
// canceled download's result back at once and ignores it but for the
// in-flight counts, which is what this does.
func (s *Sim) cancel(h *host, x *xfer) {
	switch x.state {
	case xfFlowing:
		s.net.stop(x, s.now)
		s.net.nodes[x.from].slots--
	case xfFinished, xfCanceled:
		return
	}
	x.state = xfCanceled
	if ps := findParent(h, x.parentID); ps != nil {
		ps.inflight--
	}
	s.stats.canceled++
}

func removeX(fs []*xfer, x *xfer) []*xfer {
	for i, y := range fs {
		if y == x {
			fs[i] = fs[len(fs)-1]
			fs[len(fs)-1] = nil
			return fs[:len(fs)-1]
		}
	}
	return fs
}

// result mirrors task.handleResult.
func (s *Sim) result(x *xfer) {
	if x.state == xfCanceled {
		return
	}
	x.state = xfFinished
	h := s.hosts[x.child]
	if h.done {
		return
	}
	ps := findParent(h, x.parentID)
	if ps != nil {
		ps.inflight--
	}
	fs := removeX(h.inflight[x.piece], x)
	h.inflight[x.piece] = fs
	h.nInflight--
	if len(fs) == 0 {
		h.nInflightPieces--
	}
	cost := s.now - x.start
	if !x.refused {
		s.stats.costSum += cost
		s.stats.costN++
	}
	s.tracef("%s got %d from %s refused=%v cost=%.3f", h.id, x.piece, x.parentID, x.refused, float64(cost)/1e9)
	res := &schedulerv1.PieceResult{Piece: uint32(x.piece), ParentId: x.parentID, Bytes: uint64(x.size), CostMs: uint32(cost / int64(time.Millisecond))}
	if !x.refused {
		for _, y := range fs {
			s.cancel(h, y)
			h.nInflight--
		}
		if len(fs) > 0 {
			h.inflight[x.piece] = nil
			h.nInflightPieces--
		}
		if ps != nil {
			ps.bytes += int64(x.size)
			ps.busy += cost
		}
		if s.isCDN(x.from) {
			h.fromCDN += int64(x.size)
		} else {
			h.fromPeers += int64(x.size)
		}
		h.have.Set(x.piece)
		h.nHave++
		h.reports = append(h.reports, res)
		s.armReport(h)
		s.epilogue(h)
		return
	}
	h.failed++
	if s.cfg.RetryAfter503 > 0 {
		// The agent (piece.ErrBusy): a healthy parent at its upload limit
		// is rested, not reported and not counted as a failure.
		if ps != nil {
			ps.retryAt = s.now + int64(s.cfg.RetryAfter503)
			s.q.push(event{at: ps.retryAt, kind: evRetry, h: h.idx})
		}
		s.epilogue(h)
		return
	}
	// The agent before 1bee27a: a 503 was a network failure.
	res.Failure = schedulerv1.Failure_FAILURE_NETWORK
	h.reports = append(h.reports, res)
	s.armReport(h)
	if ps != nil {
		ps.fails++
		if ps.fails >= 3 {
			h.dropped++
			s.stats.parentsDropped++
			h.parents = slices.DeleteFunc(h.parents, func(p *parentState) bool { return p == ps })
			if ps.inflight > 0 {
				ps.bitmap = nil
				ps.inSet = false
				h.parents = append(h.parents, ps)
			}
			s.flushReports(h)
			id, pid := h.id, ps.id
			np := &schedulerv1.NeedParents{TaskId: s.taskID, Failed: []string{pid}}
			s.toSched(callNeedParents, func(sc *scheduler.Scheduler) { sc.NeedParents(id, np) })
		}
	}
	s.epilogue(h)
}
