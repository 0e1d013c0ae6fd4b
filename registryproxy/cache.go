package registryproxy

import (
	"container/list"
	"sync"
	"time"

	"github.com/pouchfly/pouchfly/internal/clock"
)

// lru is a cache bounded by entries and by a cost (bytes), least recently
// used first out, whose entries expire after a TTL. Safe for concurrent
// use.
type lru[V any] struct {
	mu         sync.Mutex
	clk        clock.Clock
	ttl        time.Duration
	maxEntries int
	maxCost    int64
	cost       int64
	ll         *list.List // front: most recent
	items      map[string]*list.Element
}

type lruEntry[V any] struct {
	key     string
	val     V
	cost    int64
	expires time.Time
}

func newLRU[V any](clk clock.Clock, ttl time.Duration, maxEntries int, maxCost int64) *lru[V] {
	return &lru[V]{clk: clk, ttl: ttl, maxEntries: maxEntries, maxCost: maxCost, ll: list.New(), items: map[string]*list.Element{}}
}

// get returns the live value under key.
func (c *lru[V]) get(key string) (V, bool) {
	var zero V
	c.mu.Lock()
	defer c.mu.Unlock()
	el := c.items[key]
	if el == nil {
		return zero, false
	}
	e := el.Value.(*lruEntry[V])
	if !c.clk.Now().Before(e.expires) {
		c.remove(el)
		return zero, false
	}
	c.ll.MoveToFront(el)
	return e.val, true
}

// put stores val under key for the TTL; a value costing more than the
// whole budget, or any value when the cache is off, is not stored.
func (c *lru[V]) put(key string, val V, cost int64) {
	if c.ttl <= 0 || c.maxEntries <= 0 || cost > c.maxCost {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el := c.items[key]; el != nil {
		c.remove(el)
	}
	c.items[key] = c.ll.PushFront(&lruEntry[V]{key: key, val: val, cost: cost, expires: c.clk.Now().Add(c.ttl)})
	c.cost += cost
	for c.ll.Len() > c.maxEntries || c.cost > c.maxCost {
		c.remove(c.ll.Back())
	}
}

// len returns the entry count and total cost.
func (c *lru[V]) len() (int, int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ll.Len(), c.cost
}

func (c *lru[V]) remove(el *list.Element) {
	e := el.Value.(*lruEntry[V])
	c.ll.Remove(el)
	delete(c.items, e.key)
	c.cost -= e.cost
}
