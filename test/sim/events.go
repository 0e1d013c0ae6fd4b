package main

// Event kinds. Every event carries a time in virtual nanoseconds and a
// sequence number; ties run in the order they were scheduled, so a run is
// deterministic for a seed (up to the scheduler's own map iteration order).
const (
	evHostStart   uint8 = iota // a host starts its download (Register)
	evInbox                    // packets from the scheduler reach a host
	evReportTick               // a host's report ticker fires
	evRefresh                  // a host's 1 s NeedParents refresh
	evRequest                  // a piece request reaches its parent
	evFlowDone                 // a fluid transfer finished (from the flow heap)
	evResult                   // a piece (or its failure) reaches the child
	evSchedArrive              // a packet reaches the scheduler
	evSchedWake                // the busy scheduler takes its next call (measured cost)
	evHousekeep                // scheduler.Housekeep, every HousekeepingInterval
	evOriginStart              // the origin answers the CDN's request
	evReconnect                // a timed-out host's session comes back
	evSample                   // utilisation sampler
	evRetry                    // a parent's Retry-After ran out: schedule again
	evTokens                   // a node's token bucket ran dry
)

type event struct {
	at   int64
	seq  uint64
	kind uint8
	h    int32
	x    *xfer
	c    *schedCall
}

// eventQueue is a binary min-heap on (at, seq), values not pointers (no
// allocation per event).
type eventQueue struct {
	ev  []event
	seq uint64
}

func (q *eventQueue) less(i, j int) bool {
	a, b := &q.ev[i], &q.ev[j]
	if a.at != b.at {
		return a.at < b.at
	}
	return a.seq < b.seq
}

func (q *eventQueue) push(e event) {
	q.seq++
	e.seq = q.seq
	q.ev = append(q.ev, e)
	i := len(q.ev) - 1
	for i > 0 {
		p := (i - 1) / 2
		if !q.less(i, p) {
			break
		}
		q.ev[i], q.ev[p] = q.ev[p], q.ev[i]
		i = p
	}
}

func (q *eventQueue) pop() event {
	e := q.ev[0]
	n := len(q.ev) - 1
	q.ev[0] = q.ev[n]
	q.ev[n] = event{}
	q.ev = q.ev[:n]
	i := 0
	for {
		l := 2*i + 1
		if l >= n {
			break
		}
		m := l
		if r := l + 1; r < n && q.less(r, l) {
			m = r
		}
		if !q.less(m, i) {
			break
		}
		q.ev[i], q.ev[m] = q.ev[m], q.ev[i]
		i = m
	}
	return e
}

func (q *eventQueue) len() int { return len(q.ev) }
