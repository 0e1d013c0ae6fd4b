// Package ratelimit limits requests per client (a remote IP, a host ID)
// with one token bucket each, keeping the most recently seen clients in a
// bounded LRU map so that many clients cost bounded memory.
package ratelimit

import (
	"container/list"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Keyed is a set of per-client token buckets. The zero value is not
// usable; create it with New. Safe for concurrent use.
type Keyed struct {
	limit rate.Limit
	burst int
	max   int
	now   func() time.Time

	mu    sync.Mutex
	ll    *list.List // front: most recently used
	items map[string]*list.Element
}

type entry struct {
	key      string
	lim      *rate.Limiter
	inflight int
}

// New returns buckets of perSecond requests with burst, for at most
// maxClients clients at once (the least recently seen is forgotten
// beyond: it starts again with a full bucket). now may be nil for the
// wall clock.
func New(perSecond float64, burst, maxClients int, now func() time.Time) *Keyed {
	if now == nil {
		now = time.Now
	}
	return &Keyed{limit: rate.Limit(perSecond), burst: max(burst, 1), max: max(maxClients, 1), now: now,
		ll: list.New(), items: map[string]*list.Element{}}
}

// get returns key's entry, creating it (and evicting the least recently
// used idle one) as needed; the caller holds k.mu.
func (k *Keyed) get(key string) *entry {
	if el := k.items[key]; el != nil {
		k.ll.MoveToFront(el)
		return el.Value.(*entry)
	}
	for k.ll.Len() >= k.max {
		el := k.ll.Back()
		// Clients with requests in flight stay: their release must find them.
		for el != nil && el.Value.(*entry).inflight > 0 {
			el = el.Prev()
		}
		if el == nil {
			break
		}
		delete(k.items, el.Value.(*entry).key)
		k.ll.Remove(el)
	}
	e := &entry{key: key, lim: rate.NewLimiter(k.limit, k.burst)}
	k.items[key] = k.ll.PushFront(e)
	return e
}

// Allow takes one request from key's bucket. When the bucket is empty it
// returns false and how long until a request would be allowed.
func (k *Keyed) Allow(key string) (ok bool, retryAfter time.Duration) {
	k.mu.Lock()
	defer k.mu.Unlock()
	e := k.get(key)
	now := k.now()
	r := e.lim.ReserveN(now, 1)
	if !r.OK() {
		return false, time.Second
	}
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}

// Acquire counts a request in flight for key unless key already has
// maxInflight (≤ 0: no cap); release must be called once when it ends.
func (k *Keyed) Acquire(key string, maxInflight int) (release func(), ok bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	e := k.get(key)
	if maxInflight > 0 && e.inflight >= maxInflight {
		return nil, false
	}
	e.inflight++
	var once sync.Once
	return func() {
		once.Do(func() {
			k.mu.Lock()
			e.inflight--
			k.mu.Unlock()
		})
	}, true
}

// Len returns the number of clients remembered.
func (k *Keyed) Len() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.ll.Len()
}
