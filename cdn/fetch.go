package cdn

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"time"

	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/piece"
)

// errTimedOut is the cancel cause of an attempt whose origin did not answer
// within OriginTimeout or sent no body bytes for StallTimeout.
var errTimedOut = errors.New("origin timed out")

// retryable marks an attempt's error as worth another attempt.
type retryable struct{ err error }

func (r *retryable) Error() string { return r.err.Error() }
func (r *retryable) Unwrap() error { return r.err }

func retry(err error) error { return &retryable{err} }

// fetch is one task's origin download: a sequence of attempts, each
// resuming at the first piece not yet stored. Only the seeding goroutine
// touches it.
type fetch struct {
	c     *CDN
	req   Request
	log   *slog.Logger
	where string // redacted URL

	// Decided by the first successful answer.
	started       bool
	absStart      int64 // origin offset of the content's first byte
	length        int64 // content length, -1 while unknown
	total         int64 // origin resource size when known, else -1
	rangeEnd      int64 // origin offset of the last byte to ask for, -1: open
	pieceSize     int32
	etag, lastMod string

	// Progress.
	next     int          // next piece to store
	offset   int64        // content bytes stored (next × pieceSize)
	whole    *wholeHasher // SHA-256 of the stored content, on its own goroutine
	attempts int
	digest   string
}

func newFetch(c *CDN, req Request, log *slog.Logger) *fetch {
	return &fetch{
		c: c, req: req, log: log, where: redactURL(req.URL),
		length: -1, total: -1, rangeEnd: -1,
		whole: newWholeHasher(c.store, req.TaskID),
	}
}

// run makes attempts until the content is stored, a final error, or the
// retry budget is spent.
func (f *fetch) run(ctx context.Context) error {
	c := f.c
	failures := 0
	for {
		f.attempts++
		before := f.next
		err := f.attempt(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var re *retryable
		if !errors.As(err, &re) {
			return err
		}
		if f.next > before {
			failures = 0 // progress: a fresh budget
		}
		failures++
		if failures > c.cfg.Retries {
			return fmt.Errorf("giving up after %d attempts: %w", f.attempts, re.err)
		}
		wait := f.backoff(failures, re.err)
		f.log.Info("origin attempt failed, retrying", "err", re.err, "attempt", f.attempts, "offset", f.offset, "wait", wait)
		c.retries.Add(1)
		c.metrics.retries.Inc()
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// backoff returns the wait before retry n (1-based): BackoffBase doubling,
// capped, with jitter in [d/2, d], and at least a Retry-After the origin
// asked for (capped too).
func (f *fetch) backoff(n int, err error) time.Duration {
	cfg := f.c.cfg
	d := cfg.BackoffMax
	if n <= 30 {
		if x := cfg.BackoffBase << (n - 1); x > 0 && x < d {
			d = x
		}
	}
	d = d/2 + rand.N(d/2+1)
	var oe *OriginError
	if errors.As(err, &oe) {
		if ra := retryAfter(oe); ra > d {
			d = min(ra, cfg.BackoffMax)
		}
	}
	return d
}

// skipHeaders are requester headers not passed to the origin: hop-by-hop
// ones, and those the CDN sets itself (a conditional request could turn the
// answer into a 304, an encoding would change the bytes).
var skipHeaders = map[string]bool{
	"Connection": true, "Keep-Alive": true, "Proxy-Connection": true, "Te": true,
	"Trailer": true, "Transfer-Encoding": true, "Upgrade": true, "Host": true,
	"Content-Length": true, "Expect": true, "Range": true, "If-Range": true,
	"If-Match": true, "If-None-Match": true, "If-Modified-Since": true,
	"If-Unmodified-Since": true, "Accept-Encoding": true, "Proxy-Authorization": true,
}

// attempt sends one origin request and stores pieces from its body until
// the content is complete (nil) or something fails.
func (f *fetch) attempt(ctx context.Context) error {
	c := f.c
	actx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	timer := time.AfterFunc(c.cfg.OriginTimeout, func() { cancel(errTimedOut) })
	defer timer.Stop()

	hreq, err := http.NewRequestWithContext(actx, http.MethodGet, f.req.URL, nil)
	if err != nil {
		return fmt.Errorf("origin %s: %v: %w", f.where, netErr(err), errdefs.ErrInvalid)
	}
	for k, v := range f.req.Header {
		if k = http.CanonicalHeaderKey(k); !skipHeaders[k] {
			hreq.Header[k] = v
		}
	}
	hreq.Header.Set("Accept-Encoding", "identity")
	if hreq.Header.Get("User-Agent") == "" {
		hreq.Header.Set("User-Agent", "pouchfly-cdn")
	}
	pos := f.absStart + f.offset
	switch {
	case !f.started:
		if f.req.Range != "" {
			hreq.Header.Set("Range", f.req.Range)
		}
	case f.rangeEnd >= 0 && f.req.Range != "":
		hreq.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", pos, f.rangeEnd))
	case pos > 0:
		hreq.Header.Set("Range", fmt.Sprintf("bytes=%d-", pos))
	}

	resp, err := c.client.Do(hreq)
	c.originReqs.Add(1)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if context.Cause(actx) == errTimedOut {
			c.metrics.originRequests.WithLabelValues(outcomeTimeout).Inc()
			return retry(fmt.Errorf("origin %s: no answer within %s: %w", f.where, c.cfg.OriginTimeout, errdefs.ErrUnavailable))
		}
		c.metrics.originRequests.WithLabelValues(outcomeNetworkError).Inc()
		return retry(fmt.Errorf("origin %s: %v: %w", f.where, netErr(err), errdefs.ErrUnavailable))
	}
	defer resp.Body.Close()
	timer.Reset(c.cfg.StallTimeout) // from now on: the stall watchdog

	switch code := resp.StatusCode; {
	case code == http.StatusOK || code == http.StatusPartialContent:
		c.metrics.originRequests.WithLabelValues(outcomeOK).Inc()
	case code >= 500:
		c.metrics.originRequests.WithLabelValues(outcomeServerError).Inc()
		return retry(newOriginError(resp, f.where))
	default:
		c.metrics.originRequests.WithLabelValues(outcomeClientError).Inc()
		oe := newOriginError(resp, f.where)
		if retryableStatus(code) {
			return retry(oe)
		}
		return oe
	}

	var skip int64
	if f.started {
		skip, err = f.checkResume(resp, pos)
	} else {
		skip, err = f.decide(resp)
	}
	if err != nil {
		return err
	}
	if !f.started {
		meta := piece.Meta{TaskID: f.req.TaskID, ContentLength: f.length, PieceSize: f.pieceSize, Digest: f.req.Digest}
		if err := c.store.Create(ctx, meta); err != nil {
			return fmt.Errorf("store: %w", err)
		}
		f.started = true
		f.log.Info("origin answered", "status", resp.StatusCode, "length", f.length, "piece_size", f.pieceSize, "start", f.absStart)
		c.rep.SeedMeta(f.req.TaskID, f.length, f.pieceSize)
	} else {
		f.log.Info("origin resumed", "status", resp.StatusCode, "offset", f.offset, "discard", skip)
	}

	body := bufio.NewReaderSize(&bodyReader{r: resp.Body, timer: timer, stall: c.cfg.StallTimeout, c: c}, 32<<10)
	if skip > 0 {
		if _, err := io.CopyN(io.Discard, body, skip); err != nil {
			return f.bodyErr(actx, err)
		}
	}
	for {
		if f.length >= 0 && f.offset >= f.length {
			return nil
		}
		size, exact := int64(f.pieceSize), false
		if f.length >= 0 {
			_, size = piece.Range(f.next, f.length, f.pieceSize)
			exact = true
		} else {
			if _, err := body.Peek(1); err == io.EOF {
				f.length = f.offset
				return nil
			} else if err != nil {
				return f.bodyErr(actx, err)
			}
			if f.offset >= c.cfg.MaxContentLength {
				return fmt.Errorf("origin %s: content exceeds max_content_length %d: %w", f.where, c.cfg.MaxContentLength, errdefs.ErrInvalid)
			}
		}
		pr := &pieceReader{r: body, left: size, exact: exact}
		sum, err := c.store.WritePiece(ctx, f.req.TaskID, f.next, pr, nil)
		if err == nil && pr.left > 0 && !pr.eof && pr.err == nil {
			// The store held the piece already and did not read it: keep
			// the stream in step.
			_, err = io.Copy(io.Discard, pr)
		}
		if err != nil || pr.err != nil {
			if pr.err != nil {
				return f.bodyErr(actx, pr.err)
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("store piece %d: %w", f.next, err)
		}
		n := f.next
		f.offset += pr.n
		f.next++
		f.whole.advance(f.offset)
		c.rep.SeedPiece(f.req.TaskID, n, sum)
		if !exact && pr.eof {
			f.length = f.offset
			return nil
		}
	}
}

// decide reads the first successful answer: where the content starts in
// the origin's resource, its length and piece size. It returns how many
// body bytes precede the content.
func (f *fetch) decide(resp *http.Response) (skip int64, err error) {
	f.etag, f.lastMod = resp.Header.Get("ETag"), resp.Header.Get("Last-Modified")
	partial := resp.StatusCode == http.StatusPartialContent
	var cr contentRange
	if partial {
		if cr, err = f.contentRange(resp); err != nil {
			return 0, err
		}
	}
	var first, last int64
	switch {
	case f.req.Range == "" && !partial:
		f.total = resp.ContentLength
		first, last = 0, f.total-1
	case f.req.Range == "": // a 206 we did not ask for: accept only the whole
		if cr.first != 0 || cr.total < 0 || cr.last != cr.total-1 {
			return 0, retry(fmt.Errorf("origin %s: unasked partial answer %d-%d/%d: %w", f.where, cr.first, cr.last, cr.total, errdefs.ErrUnavailable))
		}
		f.total = cr.total
		first, last = 0, cr.last
	case partial:
		r, _ := parseRange(f.req.Range)
		if r.start >= 0 && cr.first != r.start {
			return 0, retry(fmt.Errorf("origin %s: asked %s, got bytes %d-%d: %w", f.where, f.req.Range, cr.first, cr.last, errdefs.ErrUnavailable))
		}
		f.total = cr.total
		first, last = cr.first, cr.last
		f.rangeEnd = last
	default: // a range asked, the whole resource answered
		f.total = resp.ContentLength
		r, _ := parseRange(f.req.Range)
		if first, last, err = r.resolve(f.total); err != nil {
			return 0, fmt.Errorf("origin %s: %w", f.where, err)
		}
		f.rangeEnd = last
		skip = first
	}
	f.absStart = first
	if last >= first {
		f.length = last - first + 1
	} else if last >= 0 || f.total == 0 {
		f.length = 0
	}
	if f.length > f.c.cfg.MaxContentLength {
		return 0, fmt.Errorf("origin %s: content length %d exceeds max_content_length %d: %w", f.where, f.length, f.c.cfg.MaxContentLength, errdefs.ErrInvalid)
	}
	f.pieceSize = piece.SizeFor(f.length)
	return skip, nil
}

// checkResume checks that a resumed answer continues the same content at
// pos, and returns how many body bytes to discard (a 200 restarts at 0).
func (f *fetch) checkResume(resp *http.Response, pos int64) (int64, error) {
	changed := func(was, now string) bool { return was != "" && now != "" && was != now }
	if changed(f.etag, resp.Header.Get("ETag")) || changed(f.lastMod, resp.Header.Get("Last-Modified")) {
		return 0, fmt.Errorf("origin %s: content changed during the fetch (validators differ): %w", f.where, errdefs.ErrUnavailable)
	}
	if resp.StatusCode == http.StatusPartialContent {
		cr, err := f.contentRange(resp)
		if err != nil {
			return 0, err
		}
		if cr.total >= 0 && f.total >= 0 && cr.total != f.total {
			return 0, fmt.Errorf("origin %s: content changed during the fetch (size %d, was %d): %w", f.where, cr.total, f.total, errdefs.ErrUnavailable)
		}
		if cr.first != pos {
			return 0, retry(fmt.Errorf("origin %s: asked bytes from %d, got %d-%d: %w", f.where, pos, cr.first, cr.last, errdefs.ErrUnavailable))
		}
		return 0, nil
	}
	if resp.ContentLength >= 0 && f.total >= 0 && resp.ContentLength != f.total {
		return 0, fmt.Errorf("origin %s: content changed during the fetch (size %d, was %d): %w", f.where, resp.ContentLength, f.total, errdefs.ErrUnavailable)
	}
	return pos, nil
}

func (f *fetch) contentRange(resp *http.Response) (contentRange, error) {
	cr, err := parseContentRange(resp.Header.Get("Content-Range"))
	if err == nil && resp.ContentLength >= 0 && resp.ContentLength != cr.last-cr.first+1 {
		err = fmt.Errorf("content-length %d disagrees", resp.ContentLength)
	}
	if err != nil {
		return cr, retry(fmt.Errorf("origin %s: bad 206 answer: %v: %w", f.where, err, errdefs.ErrUnavailable))
	}
	return cr, nil
}

// bodyErr classifies a failed body read.
func (f *fetch) bodyErr(actx context.Context, err error) error {
	if context.Cause(actx) == errTimedOut {
		return retry(fmt.Errorf("origin %s: no body bytes for %s at offset %d: %w", f.where, f.c.cfg.StallTimeout, f.offset, errdefs.ErrUnavailable))
	}
	if actx.Err() != nil {
		return actx.Err()
	}
	return retry(fmt.Errorf("origin %s: body broke at offset %d: %v: %w", f.where, f.offset, netErr(err), errdefs.ErrUnavailable))
}

// finish verifies the whole content and marks the task complete.
func (f *fetch) finish(ctx context.Context) error {
	c := f.c
	sum, hashed, err := f.whole.sum(ctx)
	if err != nil {
		return fmt.Errorf("hash content: %w", err)
	}
	if hashed != f.offset {
		return fmt.Errorf("hash content: hashed %d bytes of %d", hashed, f.offset)
	}
	f.digest = "sha256:" + hex.EncodeToString(sum)
	if f.req.Digest != "" && f.req.Digest != f.digest {
		return fmt.Errorf("origin %s: content is %s, want %s: %w", f.where, f.digest, f.req.Digest, errdefs.ErrDigestMismatch)
	}
	// Record the length (if it was unknown) and the computed digest, so a
	// replay from the store needs no rehash.
	meta := piece.Meta{TaskID: f.req.TaskID, ContentLength: f.length, PieceSize: f.pieceSize, Digest: f.digest}
	if err := c.store.Create(ctx, meta); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	if err := c.store.Finish(ctx, f.req.TaskID, f.length); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	return nil
}

// bodyReader counts origin bytes and feeds the stall watchdog.
type bodyReader struct {
	r     io.Reader
	timer *time.Timer
	stall time.Duration
	c     *CDN
}

func (b *bodyReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if n > 0 {
		b.timer.Reset(b.stall)
		b.c.originBytes.Add(int64(n))
		b.c.metrics.originBytes.Add(float64(n))
	}
	return n, err
}

// pieceReader yields one piece from the body. With exact set, an early end of the body is an error; otherwise
// (unknown length) it ends the content.
type pieceReader struct {
	r     io.Reader
	left  int64
	n     int64 // bytes yielded
	exact bool
	eof   bool  // the body ended
	err   error // the body's error, if it failed
}

func (p *pieceReader) Read(b []byte) (int, error) {
	if p.err != nil {
		return 0, p.err
	}
	if p.left <= 0 || p.eof {
		return 0, io.EOF
	}
	if int64(len(b)) > p.left {
		b = b[:p.left]
	}
	n, err := p.r.Read(b)
	if n > 0 {
		p.left -= int64(n)
		p.n += int64(n)
	}
	switch {
	case err == io.EOF && p.exact && p.left > 0:
		p.err = io.ErrUnexpectedEOF
		return n, p.err
	case err == io.EOF:
		p.eof = true
	case err != nil:
		p.err = err
	}
	return n, err
}
