package piece

import (
	"context"
	"strconv"
	"sync"
)

// writeGate lets one writer at a time work on a piece, so a bad copy (say,
// from a malicious parent during endgame) can never overwrite the bytes of
// a piece another writer has just verified.
type writeGate struct {
	mu      sync.Mutex
	writing map[string]chan struct{}
}

// acquire waits until no one else writes (task, n) and returns the release
// function, or the context's error.
func (g *writeGate) acquire(ctx context.Context, task string, n int) (func(), error) {
	key := task + "#" + strconv.Itoa(n)
	for {
		g.mu.Lock()
		if g.writing == nil {
			g.writing = map[string]chan struct{}{}
		}
		ch, busy := g.writing[key]
		if !busy {
			done := make(chan struct{})
			g.writing[key] = done
			g.mu.Unlock()
			return func() {
				g.mu.Lock()
				delete(g.writing, key)
				g.mu.Unlock()
				close(done)
			}, nil
		}
		g.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}
