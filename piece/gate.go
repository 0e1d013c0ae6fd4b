package piece

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strconv"
	"sync"
)

// ErrTaken is what WritePiece returns to a writer whose copy of a piece
// another, complete and verified copy took over (see writeGate): this
// copy was not stored. It is a context.Canceled: that copy lost a race,
// its source is not at fault. A caller streaming a whole content (back to
// source) skips the rest of the piece in its stream and goes on.
var ErrTaken = fmt.Errorf("another copy of the piece took it over: %w", context.Canceled)

// writeGate lets one writer at a time write a piece, so a bad copy (say,
// from a malicious parent during endgame) can never overwrite the bytes of
// a piece another writer has just verified.
//
// A writer that finds the piece busy does not wait behind the other copy,
// which may be a trickle: it reads its own copy whole first and, when that
// copy verifies against the piece's digest, takes the piece over at once;
// the overtaken writer's next write (or its commit) fails with ErrTaken.
// A copy without a digest to check waits its turn, as before.
type writeGate struct {
	mu      sync.Mutex
	writing map[string]*gateHold
}

// gateHold is one writer's claim on a piece.
type gateHold struct {
	done chan struct{} // closed on release
	mu   sync.Mutex    // held during each write and the commit
	// taken: another copy took the piece over.
	taken bool
}

// try claims (task, n) if no one writes it.
func (g *writeGate) try(task string, n int) (*gateHold, func(), bool) {
	key := task + "#" + strconv.Itoa(n)
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, busy := g.writing[key]; busy {
		return nil, nil, false
	}
	h, release := g.claimLocked(key)
	return h, release, true
}

// claimLocked makes a new claim the current one of key.
func (g *writeGate) claimLocked(key string) (*gateHold, func()) {
	if g.writing == nil {
		g.writing = map[string]*gateHold{}
	}
	h := &gateHold{done: make(chan struct{})}
	g.writing[key] = h
	return h, func() {
		g.mu.Lock()
		if g.writing[key] == h {
			delete(g.writing, key)
		}
		g.mu.Unlock()
		close(h.done)
	}
}

// acquire claims (task, n): it waits until no one else writes it, or, with
// takeOver, takes it over from the current writer at once (after a write
// of that writer in progress). It returns the claim and its release
// function, or ctx's error.
func (g *writeGate) acquire(ctx context.Context, task string, n int, takeOver bool) (*gateHold, func(), error) {
	key := task + "#" + strconv.Itoa(n)
	for {
		g.mu.Lock()
		cur := g.writing[key]
		if cur == nil || takeOver {
			h, release := g.claimLocked(key)
			if cur != nil {
				cur.mu.Lock() // after a write in progress
				cur.taken = true
				cur.mu.Unlock()
			}
			g.mu.Unlock()
			return h, release, nil
		}
		g.mu.Unlock()
		select {
		case <-cur.done:
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
	}
}

// claim is WritePiece's way in: it returns the piece's claim, its release
// function, the reader to copy from, and whether r was read already. When
// another writer holds the piece and want is set, r is first read whole
// and checked against want (a mismatch is returned as an error) and the
// verified copy takes the piece over; without want it waits for the other
// writer. A copy read whole that finds the piece stored meanwhile must
// answer ErrTaken, not the stored sum: its bytes moved but were not
// stored.
func (g *writeGate) claim(ctx context.Context, task string, n int, r io.Reader, size int64, exact bool, want []byte) (*gateHold, func(), io.Reader, bool, error) {
	if h, release, ok := g.try(task, n); ok {
		return h, release, r, false, nil
	}
	if want == nil {
		h, release, err := g.acquire(ctx, task, n, false)
		return h, release, r, false, err
	}
	var buf bytes.Buffer
	if _, err := copyPiece(&buf, ctxReader{ctx, r}, size, exact, want); err != nil {
		return nil, nil, nil, false, err
	}
	h, release, err := g.acquire(ctx, task, n, true)
	return h, release, &buf, true, err
}

// writer returns w guarded by the claim: once another copy took the
// piece over, writes fail with ErrTaken.
func (h *gateHold) writer(w io.Writer) io.Writer { return holdWriter{h, w} }

type holdWriter struct {
	h *gateHold
	w io.Writer
}

func (hw holdWriter) Write(b []byte) (int, error) {
	hw.h.mu.Lock()
	defer hw.h.mu.Unlock()
	if hw.h.taken {
		return 0, ErrTaken
	}
	return hw.w.Write(b)
}

// commit runs f (which marks the piece stored) unless another copy took
// the piece over (ErrTaken).
func (h *gateHold) commit(f func() error) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.taken {
		return ErrTaken
	}
	return f()
}
