package cdn

import (
	"context"
	"crypto/sha256"
	"fmt"
	"hash"
	"io"
	"sync"

	"github.com/pouchfly/pouchfly/piece"
)

// wholeHasher computes the SHA-256 of a task's content from the store, in
// order, on its own goroutine, while the fetch goes on cutting, hashing and
// writing pieces. The fetch's loop would otherwise hash every byte twice
// in a row (piece and whole), which made it the slowest stage of a cold
// pull; the page-cache read this costs is far cheaper than the hash.
//
// Only stored pieces are hashed, so a failed attempt needs no rollback:
// the hasher simply has not been told about bytes that were not stored.
type wholeHasher struct {
	store  piece.Store
	taskID string

	mu     sync.Mutex
	stored int64 // content bytes stored, in order from 0
	closed bool  // no more bytes will be stored
	wake   chan struct{}
	done   chan struct{}
	h      hash.Hash
	hashed int64
	err    error
}

func newWholeHasher(store piece.Store, taskID string) *wholeHasher {
	return &wholeHasher{store: store, taskID: taskID, wake: make(chan struct{}, 1), done: make(chan struct{}), h: sha256.New()}
}

// start runs the hasher until ctx ends, close is called and every stored
// byte is hashed, or reading the store fails.
func (w *wholeHasher) start(ctx context.Context) { go w.run(ctx) }

// advance records that the content is stored up to offset end.
func (w *wholeHasher) advance(end int64) {
	w.mu.Lock()
	if end > w.stored {
		w.stored = end
	}
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// sum waits until every stored byte is hashed and returns the digest of
// the content. The content must be complete: nothing is stored after sum.
func (w *wholeHasher) sum(ctx context.Context) ([]byte, int64, error) {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
	select {
	case <-w.done:
	case <-ctx.Done():
		return nil, 0, ctx.Err()
	}
	if w.err != nil {
		return nil, 0, w.err
	}
	return w.h.Sum(nil), w.hashed, nil
}

func (w *wholeHasher) run(ctx context.Context) {
	defer close(w.done)
	buf := make([]byte, 256<<10)
	for {
		w.mu.Lock()
		stored, closed := w.stored, w.closed
		w.mu.Unlock()
		if w.hashed < stored {
			if err := w.hashRange(ctx, w.hashed, stored-w.hashed, buf); err != nil {
				w.err = err
				return
			}
			continue
		}
		if closed {
			return
		}
		select {
		case <-w.wake:
		case <-ctx.Done():
			w.err = ctx.Err()
			return
		}
	}
}

func (w *wholeHasher) hashRange(ctx context.Context, off, size int64, buf []byte) error {
	r, err := w.store.ReadAt(ctx, w.taskID, off, size)
	if err != nil {
		return fmt.Errorf("hash stored content at %d: %w", off, err)
	}
	defer r.Close()
	n, err := io.CopyBuffer(w.h, r, buf)
	w.hashed += n
	if err != nil {
		return fmt.Errorf("hash stored content at %d: %w", off+n, err)
	}
	if n != size {
		return fmt.Errorf("hash stored content: store gave %d of %d bytes at %d: %w", n, size, off, io.ErrUnexpectedEOF)
	}
	return nil
}

// wait returns when the hasher's goroutine has ended (start must have run;
// it ends once its context is cancelled or sum returned).
func (w *wholeHasher) wait() { <-w.done }
