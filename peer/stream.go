package peer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"os"
	"time"

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
	// check: the whole digest is to be checked (a digest is known and the
	// stream was read from offset 0). decided: how is settled (at the first
	// byte): hash as we go, or — deferred — not at all when the supernode's
	// seed confirms the digest (TaskInfo.seed_verifying, then
	// sums_verified), which on a cold pull saves a whole SHA-256 pass of a
	// CPU-bound path; the content is hashed from the store at the end only
	// if that confirmation never comes.
	check, decided, deferred bool
	rehashed                 bool   // the deferred check hashed the store (tests)
	how                      string // how decide settled it: trusted, deferred, hash (tests)
	// trusted: the whole digest is vouched for by the pieces' verification
	// (see task.trusted); hash is dropped then.
	trusted bool
	closed  bool
}

// confirmWait bounds how long a deferred stream waits at its end for the
// seed's confirmation before hashing the content from the store itself.
var confirmWait = 10 * time.Second

func newStream(ctx context.Context, p *Peer, t *task, digest string) *Stream {
	return &Stream{ctx: ctx, p: p, t: t, digest: digest, check: digest != ""}
}

// decide settles, at the stream's first byte, how the whole digest is
// checked.
func (s *Stream) decide() {
	s.decided = true
	if !s.check {
		return
	}
	trusted, pending, _ := s.t.verification(s.digest)
	switch {
	case trusted:
		s.trusted, s.how = true, "trusted"
	case pending:
		s.deferred, s.how = true, "deferred"
	default:
		s.hash, s.how = sha256.New(), "hash"
	}
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
		s.hash, s.check, s.deferred = nil, false, false
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
				s.settle()
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

// settle, before bytes leave, decides how the whole digest is checked
// (once) and drops a running hash as soon as the supernode confirmed the
// digests every piece was checked against: hashing the whole again adds
// nothing then.
func (s *Stream) settle() {
	if !s.decided {
		s.decide()
	}
	if s.hash != nil && !s.trusted && s.t.trusted() {
		s.trusted, s.hash = true, nil
	}
}

// CopyTo copies at most max bytes of the content to w and returns how
// many it copied. When no whole hash has to be computed on the way and w
// is an io.ReaderFrom (a TCP connection, net/http's response writer), the
// bytes go from the store's file to w by sendfile, never through this
// process. At the end of the content it returns io.EOF (after the digest
// check, like Read).
func (s *Stream) CopyTo(w io.Writer, max int64) (int64, error) {
	if max <= 0 {
		return 0, nil
	}
	rf, ok := w.(io.ReaderFrom)
	if !ok {
		return io.CopyN(w, s, max)
	}
	if s.cur == nil || s.pos >= s.curEnd {
		if s.cur != nil {
			s.cur.Close()
			s.cur = nil
		}
		if err := s.next(); err != nil {
			return 0, err
		}
	}
	s.settle()
	lr, ok := s.cur.R.(*io.LimitedReader)
	var f *os.File
	if ok {
		f, ok = lr.R.(*os.File)
	}
	if !ok || s.hash != nil {
		return io.CopyN(w, s, min(max, s.curEnd-s.pos))
	}
	k := min(max, s.curEnd-s.pos, lr.N)
	n, err := rf.ReadFrom(&io.LimitedReader{R: f, N: k})
	lr.N -= n
	s.pos += n
	if err == nil && n < k {
		err = fmt.Errorf("task %s: store ended early at %d: %w", s.t.id, s.pos, io.ErrUnexpectedEOF)
	}
	return n, err
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
	if !s.decided {
		s.decide() // empty content
	}
	if s.deferred {
		s.deferred = false
		if err := s.confirm(meta); err != nil {
			return err
		}
	}
	if s.hash != nil {
		got := "sha256:" + hex.EncodeToString(s.hash.Sum(nil))
		s.hash = nil
		if err := s.compare(got); err != nil {
			return err
		}
	}
	return io.EOF
}

// confirm waits (bounded by confirmWait) for the seed to confirm the
// digest of a deferred stream; without that, it hashes the content from
// the store.
func (s *Stream) confirm(meta piece.Meta) error {
	timer := time.NewTimer(confirmWait)
	defer timer.Stop()
	for {
		trusted, pending, ch := s.t.verification(s.digest)
		if trusted {
			return nil
		}
		if _, _, _, done, terr, _ := s.t.state(); done && terr != nil {
			return terr // the seed failed: its pieces may be gone
		}
		if !pending {
			break
		}
		select {
		case <-ch:
			continue
		case <-timer.C:
		case <-s.ctx.Done():
			return s.ctx.Err()
		}
		break
	}
	s.p.log.Debug("whole digest not confirmed by the seed; hashing the stored content", "task", s.t.id)
	s.rehashed = true
	r, err := s.p.store.ReadAt(s.ctx, s.t.id, 0, meta.ContentLength)
	if err != nil {
		return fmt.Errorf("task %s: hash stored content: %w", s.t.id, err)
	}
	defer r.Close()
	h := sha256.New()
	n, err := io.Copy(h, r)
	if err == nil && n != meta.ContentLength {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		return fmt.Errorf("task %s: hash stored content: %w", s.t.id, err)
	}
	return s.compare("sha256:" + hex.EncodeToString(h.Sum(nil)))
}

// compare checks the content's digest got against the stream's.
func (s *Stream) compare(got string) error {
	if got != s.digest {
		// Never let this copy be served again.
		s.p.store.Delete(context.WithoutCancel(s.ctx), s.t.id)
		return fmt.Errorf("task %s: content is %s, want %s: %w", s.t.id, got, s.digest, errdefs.ErrDigestMismatch)
	}
	return nil
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
