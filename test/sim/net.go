package main

import "math"

// node is one network endpoint: a host's NIC (upload and download caps),
// the CDN's, or the origin's.
type node struct {
	up, down   float64 // caps in bytes/s (+Inf: none)
	ups, downs []*xfer // transfers flowing out of / into this node
	slots      int     // upload requests accepted and not finished (the upload server's concurrency)
	maxSlots   int     // beyond it a request is refused (HTTP 503); 0: no cap
	peakSlots  int
	sent       float64 // bytes sent (partial transfers included)
	refused    int     // requests refused with 503

	// Token buckets (Config.Burst): while a bucket holds tokens the
	// direction runs at burstRate; it drains at (usage − cap) and refills
	// at (cap − usage), up to burst bytes.
	burst          float64
	tokUp, tokDown float64
	tokAt          int64
	tokGen         uint32
	// dry: the bucket ran empty; the direction stays at its cap until the
	// bucket holds a chunk again (hysteresis: no burst-drain chatter).
	dryUp, dryDown bool

	// scratch of the local max-min solver
	epoch          uint64
	resUp, resDown int
}

// burstRate is the line rate of a direction whose token bucket is not
// empty (loopback, in practice bounded by the CPU).
const burstRate = 1e9

// refillChunk is how full a dry bucket must be to burst again: one chunk of
// the agents' limiters (piece.ChunkSize).
const refillChunk = 256 << 10

func (nd *node) capUp() float64 {
	if nd.burst > 0 && !nd.dryUp && nd.tokUp > 1 {
		return math.Max(nd.up, burstRate)
	}
	return nd.up
}

func (nd *node) capDown() float64 {
	if nd.burst > 0 && !nd.dryDown && nd.tokDown > 1 {
		return math.Max(nd.down, burstRate)
	}
	return nd.down
}

// settleTokens books the bucket changes since tokAt at the current rates.
func (nd *node) settleTokens(now int64) {
	if nd.burst <= 0 || now <= nd.tokAt {
		return
	}
	dt := float64(now-nd.tokAt) / 1e9
	var u, d float64
	for _, x := range nd.ups {
		u += x.rate
	}
	for _, x := range nd.downs {
		d += x.rate
	}
	nd.tokUp = math.Min(math.Max(nd.tokUp+(nd.up-u)*dt, 0), nd.burst)
	nd.tokDown = math.Min(math.Max(nd.tokDown+(nd.down-d)*dt, 0), nd.burst)
	nd.tokAt = now
	if nd.dryUp && nd.tokUp >= min(refillChunk, nd.burst) {
		nd.dryUp = false
	}
	if nd.dryDown && nd.tokDown >= min(refillChunk, nd.burst) {
		nd.dryDown = false
	}
}

// xfer states.
const (
	xfRequest  uint8 = iota // request on its way to the parent
	xfFlowing               // bytes flowing (fluid model)
	xfResult                // finished (or refused); result on its way to the child
	xfCanceled              // the child gave up on it (endgame loser, task over)
	xfFinished              // result handled
)

// xfer is one piece request (child ← parent) or one piece of the CDN's
// origin stream (CDN ← origin).
type xfer struct {
	from, to int32 // node indexes
	piece    int
	size     float64
	rem      float64
	rate     float64
	last     int64 // time rem was last settled
	upIdx    int
	downIdx  int
	mark     uint64 // solver epoch
	hidx     int    // index in the flow heap, -1 when not in it
	doneAt   int64  // completion time at the current rate
	state    uint8
	origin   bool  // the CDN's origin stream
	refused  bool  // 503: the parent's upload slots were full
	child    int32 // host index of the requester
	parentID string
	start    int64 // when the child sent the request
}

// Fluid models.
const (
	// ModelMaxMin: when a transfer starts or stops between nodes s and r,
	// the rates of every transfer at s's uplink and r's downlink are
	// re-solved max-min fair (progressive filling), each limited at its
	// other end by what that end's other transfers leave free. Spare
	// capacity elsewhere is picked up at the next event there.
	ModelMaxMin = "maxmin"
	// ModelShare: rate = min(sender's up cap / its uploads, receiver's
	// down cap / its downloads), recomputed at the two endpoints. Cheaper,
	// and wasteful when a transfer is held back at one end: the other end
	// does not give the unused share to its other transfers.
	ModelShare = "share"
)

// network is the fluid model (see ModelMaxMin and ModelShare).
type network struct {
	nodes  []node
	sim    *Sim
	maxmin bool
	flows  flowHeap // flowing transfers by completion time
	// scratch for the set of transfers to re-rate
	touched []*xfer
	set     []*xfer
	epoch   uint64
	res     []resource
	rate    []float64
	ru, rd  []int
}

// resource is one link direction in the local max-min problem.
type resource struct {
	rem float64 // capacity left
	n   int     // unfrozen transfers on it
}

func (n *network) rateOf(x *xfer) float64 {
	s, r := &n.nodes[x.from], &n.nodes[x.to]
	return math.Min(s.capUp()/float64(len(s.ups)), r.capDown()/float64(len(r.downs)))
}

// settle books the bytes x moved since x.last at its current rate.
func settle(x *xfer, now int64) {
	if now > x.last {
		x.rem -= x.rate * float64(now-x.last) / 1e9
		x.last = now
	}
	if x.rem < 0 {
		x.rem = 0
	}
}

// start puts x on the wire at now.
func (n *network) start(x *xfer, now int64) {
	s, r := &n.nodes[x.from], &n.nodes[x.to]
	x.state = xfFlowing
	x.rem, x.last, x.rate, x.hidx = x.size, now, 0, -1
	x.upIdx = len(s.ups)
	s.ups = append(s.ups, x)
	x.downIdx = len(r.downs)
	r.downs = append(r.downs, x)
	n.rerate(x.from, x.to, now)
}

// stop takes x off the wire at now (finished or canceled) and returns the
// bytes it moved.
func (n *network) stop(x *xfer, now int64) float64 {
	settle(x, now)
	s, r := &n.nodes[x.from], &n.nodes[x.to]
	last := s.ups[len(s.ups)-1]
	s.ups[x.upIdx] = last
	last.upIdx = x.upIdx
	s.ups = s.ups[:len(s.ups)-1]
	last = r.downs[len(r.downs)-1]
	r.downs[x.downIdx] = last
	last.downIdx = x.downIdx
	r.downs = r.downs[:len(r.downs)-1]
	n.flows.remove(x)
	moved := x.size - x.rem
	s.sent += moved
	n.rerate(x.from, x.to, now)
	return moved
}

// rerate recomputes the rates of the transfers leaving from (if ≥ 0) and
// entering to (if ≥ 0), and reschedules the completion of those whose rate
// changed.
func (n *network) rerate(from, to int32, now int64) {
	t := n.touched[:0]
	if from >= 0 {
		t = append(t, n.nodes[from].ups...)
	}
	if to >= 0 {
		t = append(t, n.nodes[to].downs...)
	}
	n.touched = t[:0]
	if n.maxmin {
		n.rerateMaxMin(t, now)
	} else {
		for _, y := range t {
			n.setRate(y, n.rateOf(y), now)
		}
	}
	if n.sim != nil && n.sim.cfg.Burst > 0 {
		for _, y := range t {
			n.armTokens(y.from, now)
			n.armTokens(y.to, now)
		}
		if from >= 0 {
			n.armTokens(from, now)
		}
		if to >= 0 {
			n.armTokens(to, now)
		}
	}
	clear(t)
}

// armTokens schedules the moment node i's bucket (up or down) that is
// being drained runs dry, when the rates change then.
func (n *network) armTokens(i int32, now int64) {
	nd := &n.nodes[i]
	if nd.burst <= 0 {
		return
	}
	nd.settleTokens(now)
	var u, d float64
	for _, x := range nd.ups {
		u += x.rate
	}
	for _, x := range nd.downs {
		d += x.rate
	}
	at := int64(math.MaxInt64)
	if !nd.dryUp && nd.tokUp > 1 && u > nd.up {
		at = min(at, now+int64(math.Ceil(nd.tokUp/(u-nd.up)*1e9)))
	}
	if !nd.dryDown && nd.tokDown > 1 && d > nd.down {
		at = min(at, now+int64(math.Ceil(nd.tokDown/(d-nd.down)*1e9)))
	}
	nd.tokGen++
	if at != math.MaxInt64 {
		n.sim.q.push(event{at: at, kind: evTokens, h: i, x: &xfer{piece: int(nd.tokGen)}})
	}
}

// tokensOut: a bucket of node i ran dry; its transfers fall back to the
// cap.
func (n *network) tokensOut(i int32, gen uint32, now int64) {
	nd := &n.nodes[i]
	if gen != nd.tokGen {
		return
	}
	nd.settleTokens(now)
	if nd.tokUp <= 1 {
		nd.tokUp, nd.dryUp = 0, true
	}
	if nd.tokDown <= 1 {
		nd.tokDown, nd.dryDown = 0, true
	}
	n.rerate(i, i, now)
}

func (n *network) setRate(y *xfer, nr float64, now int64) {
	if nr == y.rate {
		return
	}
	if n.sim != nil && n.sim.cfg.Burst > 0 {
		n.nodes[y.from].settleTokens(now)
		n.nodes[y.to].settleTokens(now)
	}
	settle(y, now)
	y.rate = nr
	switch {
	case nr > 0:
		y.doneAt = now + int64(math.Ceil(y.rem/nr*1e9))
	case y.rem > 0:
		y.doneAt = math.MaxInt64
	default:
		y.doneAt = now
	}
	if y.hidx < 0 {
		n.flows.push(y)
	} else {
		n.flows.fix(y)
	}
}

// rerateMaxMin solves the local max-min problem of ModelMaxMin for the
// transfers in cand (duplicates allowed).
func (n *network) rerateMaxMin(cand []*xfer, now int64) {
	n.epoch++
	ep := n.epoch
	set := n.set[:0]
	for _, x := range cand {
		if x.mark != ep {
			x.mark = ep
			set = append(set, x)
		}
	}
	if len(set) == 0 {
		return
	}
	res := n.res[:0]
	// resource index of node i's uplink (up) or downlink, made on first use
	// with the capacity the transfers outside the set leave.
	get := func(i int32, up bool) int {
		nd := &n.nodes[i]
		if nd.epoch != ep {
			nd.epoch, nd.resUp, nd.resDown = ep, -1, -1
		}
		if up {
			if nd.resUp < 0 {
				nd.settleTokens(now)
				c := nd.capUp()
				for _, y := range nd.ups {
					if y.mark != ep {
						c -= y.rate
					}
				}
				nd.resUp = len(res)
				res = append(res, resource{rem: max(c, 0)})
			}
			return nd.resUp
		}
		if nd.resDown < 0 {
			nd.settleTokens(now)
			c := nd.capDown()
			for _, y := range nd.downs {
				if y.mark != ep {
					c -= y.rate
				}
			}
			nd.resDown = len(res)
			res = append(res, resource{rem: max(c, 0)})
		}
		return nd.resDown
	}
	ru, rd, rate := n.ru[:0], n.rd[:0], n.rate[:0]
	for _, x := range set {
		u, d := get(x.from, true), get(x.to, false)
		res[u].n++
		res[d].n++
		ru, rd, rate = append(ru, u), append(rd, d), append(rate, -1)
	}
	// Progressive filling: the tightest link fixes the rate of its
	// transfers, which then use capacity at their other link.
	left := len(set)
	for left > 0 {
		best, lvl := -1, math.Inf(1)
		for k := range res {
			if res[k].n > 0 {
				if l := res[k].rem / float64(res[k].n); best < 0 || l < lvl {
					best, lvl = k, l
				}
			}
		}
		if math.IsInf(lvl, 1) {
			for i := range set {
				if rate[i] < 0 {
					rate[i] = lvl
				}
			}
			break
		}
		lvl = max(lvl, 0)
		for i := range set {
			if rate[i] >= 0 || (ru[i] != best && rd[i] != best) {
				continue
			}
			rate[i] = lvl
			left--
			res[ru[i]].rem -= lvl
			res[ru[i]].n--
			res[rd[i]].rem -= lvl
			res[rd[i]].n--
		}
	}
	for i, x := range set {
		n.setRate(x, rate[i], now)
	}
	clear(set)
	n.set, n.res, n.ru, n.rd, n.rate = set[:0], res[:0], ru[:0], rd[:0], rate[:0]
}

// flowHeap is an indexed min-heap of flowing transfers on doneAt, so a
// rate change moves a transfer instead of leaving a stale event behind.
type flowHeap []*xfer

func (h flowHeap) less(i, j int) bool { return h[i].doneAt < h[j].doneAt }

func (h flowHeap) swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].hidx = i
	h[j].hidx = j
}

func (h *flowHeap) push(x *xfer) {
	x.hidx = len(*h)
	*h = append(*h, x)
	h.up(x.hidx)
}

func (h *flowHeap) remove(x *xfer) {
	i := x.hidx
	if i < 0 {
		return
	}
	n := len(*h) - 1
	if i != n {
		h.swap(i, n)
	}
	(*h)[n] = nil
	*h = (*h)[:n]
	x.hidx = -1
	if i != n {
		if !h.down(i) {
			h.up(i)
		}
	}
}

func (h *flowHeap) fix(x *xfer) {
	if !h.down(x.hidx) {
		h.up(x.hidx)
	}
}

func (h flowHeap) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if !h.less(i, p) {
			break
		}
		h.swap(i, p)
		i = p
	}
}

func (h flowHeap) down(i0 int) bool {
	i, n := i0, len(h)
	for {
		l := 2*i + 1
		if l >= n {
			break
		}
		m := l
		if r := l + 1; r < n && h.less(r, l) {
			m = r
		}
		if !h.less(m, i) {
			break
		}
		h.swap(i, m)
		i = m
	}
	return i > i0
}
