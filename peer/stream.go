package peer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"

	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/piece"
)

// Stream reads a task's content in order as its pieces verify: the first
// bytes are readable long before the last piece arrives. When the
// whole-content digest is known it is checked on the way, and a mismatch
// is returned instead of io.EOF. A Stream is not safe for concurrent use;
// Close it when done.
type Stream struct {
	ctx    context.Context
	p      *Peer
	t      *task
	digest string
	pos    int64
	cur    *piece.Reader
	curEnd int64
	hash   hash.Hash
	// trusted: the whole digest is vouched for by the pieces' verification
	// (see task.trusted); hash is dropped then.
	trusted bool
	closed  bool
}

func newStream(ctx context.Context, p *Peer, t *task, digest string) *Stream {
	s := &Stream{ctx: ctx, p: p, t: t, digest: digest}
	if digest != "" {
		s.hash = sha256.New()
	}
	return s
}

// TaskID returns the task's ID.
func (s *Stream) TaskID() string { return s.t.id }

// Meta waits until the content length is known (or the task fails) and
// returns the task's metadata.
func (s *Stream) Meta(ctx context.Context) (piece.Meta, error) {
	for {
		meta, ok, _, done, err, ch := s.t.state()
		if ok && meta.ContentLength >= 0 {
			return meta, nil
		}
		if done {
			if err == nil {
				err = fmt.Errorf("task %s ended without content: %w", s.t.id, errdefs.ErrUnavailable)
			}
			return meta, err
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return meta, ctx.Err()
		case <-s.ctx.Done():
			return meta, s.ctx.Err()
		}
	}
}

// WaitDone waits until the task has ended and returns its error.
func (s *Stream) WaitDone(ctx context.Context) error {
	for {
		_, _, _, done, err, ch := s.t.state()
		if done {
			return err
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Received returns the bytes this host's task took from each source
// ("peer", "cdn", "origin") so far.
func (s *Stream) Received() map[string]int64 { return s.t.receivedCopy() }

// Seek moves to offset off (whence io.SeekStart only), for Range requests.
// Seeking turns off the whole-content digest check, which needs every byte.
func (s *Stream) Seek(off int64, whence int) (int64, error) {
	if whence != io.SeekStart || off < 0 {
		return s.pos, fmt.Errorf("seek: %w", errdefs.ErrInvalid)
	}
	if s.cur != nil {
		s.cur.Close()
		s.cur = nil
	}
	if off != 0 {
		s.hash = nil
	}
	s.pos = off
	return off, nil
}

// Read implements io.Reader.
func (s *Stream) Read(b []byte) (int, error) {
	for {
		if s.cur != nil && s.pos < s.curEnd {
			n, err := s.cur.Read(b)
			if n > 0 {
				if s.hash != nil && !s.trusted && s.t.trusted() {
					// The supernode confirmed the digests every piece was
					// checked against: hashing the whole again adds nothing.
					s.trusted, s.hash = true, nil
				}
				if s.hash != nil {
					s.hash.Write(b[:n])
				}
				s.pos += int64(n)
				return n, nil
			}
			if err != nil && err != io.EOF {
				return 0, err
			}
			if n == 0 {
				// The store gave less than promised.
				return 0, fmt.Errorf("task %s: store ended early at %d: %w", s.t.id, s.pos, io.ErrUnexpectedEOF)
			}
		}
		if s.cur != nil {
			s.cur.Close()
			s.cur = nil
		}
		if err := s.next(); err != nil {
			return 0, err
		}
	}
}

// next opens the store at s.pos over the longest run of held pieces, or
// waits for the piece at s.pos, or reports the end.
func (s *Stream) next() error {
	for {
		meta, ok, have, done, terr, ch := s.t.state()
		if ok && meta.ContentLength >= 0 && s.pos >= meta.ContentLength {
			return s.end(meta)
		}
		if ok && meta.PieceSize > 0 {
			n := int(s.pos / int64(meta.PieceSize))
			if have.Has(n) {
				end := n + 1
				for have.Has(end) {
					end++
				}
				stop := int64(end) * int64(meta.PieceSize)
				if meta.ContentLength >= 0 && stop > meta.ContentLength {
					stop = meta.ContentLength
				}
				if meta.ContentLength < 0 && !done {
					// Unknown length: the last held piece may be short; read
					// only up to the last piece known full.
					stop = int64(end-1) * int64(meta.PieceSize)
				}
				if stop > s.pos {
					r, err := s.p.store.ReadAt(s.ctx, s.t.id, s.pos, stop-s.pos)
					if err != nil {
						// The task may have failed and dropped its pieces.
						if _, _, _, done, terr, _ := s.t.state(); done && terr != nil {
							return terr
						}
						return err
					}
					s.cur, s.curEnd = r, stop
					return nil
				}
			}
		}
		if done {
			if terr != nil {
				return terr
			}
			if ok && meta.ContentLength >= 0 && s.pos >= meta.ContentLength {
				return s.end(meta)
			}
			return fmt.Errorf("task %s ended before offset %d: %w", s.t.id, s.pos, io.ErrUnexpectedEOF)
		}
		select {
		case <-ch:
		case <-s.ctx.Done():
			return s.ctx.Err()
		}
	}
}

func (s *Stream) end(meta piece.Meta) error {
	if s.hash != nil {
		want := s.digest
		got := "sha256:" + hex.EncodeToString(s.hash.Sum(nil))
		s.hash = nil
		if got != want {
			// Never let this copy be served again.
			s.p.store.Delete(context.WithoutCancel(s.ctx), s.t.id)
			return fmt.Errorf("task %s: content is %s, want %s: %w", s.t.id, got, want, errdefs.ErrDigestMismatch)
		}
	}
	return io.EOF
}

// Close releases the stream; the task itself goes on.
func (s *Stream) Close() error {
	if s.closed {
		return nil
	}
	s.closed = true
	if s.cur != nil {
		s.cur.Close()
	}
	s.p.streamClosed(s.t.id)
	return nil
}
