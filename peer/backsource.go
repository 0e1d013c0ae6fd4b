package peer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/piece"
)

// startBackSource fetches the task from the origin in the background,
// alongside any piece downloads still running (the store keeps whichever
// verified copy of a piece lands first).
func (t *task) startBackSource(ctx context.Context, reason string) {
	if t.backSource {
		return
	}
	t.backSource = true
	t.p.metrics.backSource.Inc()
	t.log.Info("going back to source", "reason", reason)
	t.bsDone = make(chan error, 1)
	t.mu.Lock()
	metaOK, meta, have := t.metaOK, t.meta, t.have.Clone()
	t.mu.Unlock()
	sums := append([][]byte(nil), t.sums...)
	ctx, t.bsCancel = context.WithCancel(ctx)
	done := t.bsDone
	go func() { done <- t.backSourceRun(ctx, metaOK, meta, have, sums) }()
}

// rejoin ends a back-to-source run that started because no supernode
// session was up, now that one is: the pieces it stored stay, the rest
// comes from the swarm again (the origin is not asked for a content
// per host while a swarm can share it). A run that already finished
// keeps the task back-to-source.
func (t *task) rejoin() {
	if t.bsStop == nil || t.bsDone == nil {
		return
	}
	t.bsStop()
	t.bsStop = nil
	if err := <-t.bsDone; err == nil {
		t.bsDone = nil
		return // it completed meanwhile
	}
	t.bsDone, t.backSource = nil, false
	t.log.Info("supernode back: stopped back-to-source, re-joining the swarm")
}

// originError turns an origin response into a TaskError.
func originError(url string, resp *http.Response) *TaskError {
	te := &TaskError{OriginStatus: resp.StatusCode, OriginHeader: http.Header{}}
	if v := resp.Header.Get("WWW-Authenticate"); v != "" {
		te.OriginHeader.Set("WWW-Authenticate", v)
	}
	switch {
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		te.Class = errdefs.ErrForbidden
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusGone:
		te.Class = errdefs.ErrNotFound
	case resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests:
		te.Class = errdefs.ErrUnavailable
	default:
		te.Class = errdefs.ErrInvalid
	}
	te.Msg = fmt.Sprintf("origin %s answered %s", redactURL(url), resp.Status)
	return te
}

// redactURL drops the query (it may carry signatures) and user info.
func redactURL(u string) string {
	if i := strings.IndexAny(u, "?#"); i >= 0 {
		u = u[:i]
	}
	if i := strings.Index(u, "://"); i >= 0 {
		if at := strings.Index(u[i+3:], "@"); at >= 0 && !strings.Contains(u[i+3:i+3+at], "/") {
			u = u[:i+3] + u[i+3+at+1:]
		}
	}
	return u
}

func (t *task) backSourceRun(ctx context.Context, metaOK bool, meta piece.Meta, have piece.Bitmap, sums [][]byte) error {
	start := int64(0)
	first := 0
	if metaOK && t.req.Range == "" {
		for first < meta.Count() && have.Has(first) {
			first++
		}
		start = int64(first) * int64(meta.PieceSize)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, t.req.URL, nil)
	if err != nil {
		return &TaskError{Class: errdefs.ErrInvalid, Msg: fmt.Sprintf("origin request: %v", err)}
	}
	for k, vs := range t.req.Header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	if t.req.Range != "" {
		req.Header.Set("Range", t.req.Range)
	} else if start > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(start, 10)+"-")
	}
	resp, err := t.p.origin.Do(req)
	if err != nil {
		return &TaskError{Class: errdefs.ErrUnavailable, Msg: fmt.Sprintf("origin %s: %v", redactURL(t.req.URL), err)}
	}
	defer resp.Body.Close()
	body := io.Reader(resp.Body)
	length := resp.ContentLength
	switch {
	case resp.StatusCode == http.StatusOK:
		if start > 0 { // the origin ignored our Range: skip what we hold
			if _, err := io.CopyN(io.Discard, body, start); err != nil {
				return &TaskError{Class: errdefs.ErrUnavailable, Msg: fmt.Sprintf("origin %s: %v", redactURL(t.req.URL), err)}
			}
			t.p.metrics.bytes.WithLabelValues("origin").Add(float64(start))
			length -= start
		}
	case resp.StatusCode == http.StatusPartialContent && (start > 0 || t.req.Range != ""):
		if t.req.Range == "" {
			s, total, ok := parseContentRange(resp.Header.Get("Content-Range"))
			if !ok || s != start || (meta.ContentLength >= 0 && total != meta.ContentLength) {
				return &TaskError{Class: errdefs.ErrUnavailable, Msg: "origin answered a range that was not asked for"}
			}
		}
	default:
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return originError(t.req.URL, resp)
	}
	total := length
	if length >= 0 {
		total = start + length
	}
	if !metaOK {
		meta = piece.Meta{TaskID: t.id, ContentLength: total, PieceSize: piece.SizeFor(total), Digest: t.req.Digest}
		if err := t.p.store.Create(ctx, meta); err != nil {
			return &TaskError{Class: errdefs.ErrInvalid, Msg: fmt.Sprintf("store: %v", err)}
		}
		t.mu.Lock()
		t.meta, t.metaOK, t.count = meta, true, meta.Count()
		t.notify()
		t.mu.Unlock()
	}
	var whole hash.Hash
	if t.req.Digest != "" && start == 0 && t.req.Range == "" {
		whole = sha256.New()
		body = io.TeeReader(body, whole)
	}
	pos := start
	for n := first; ; n++ {
		size := int64(meta.PieceSize)
		if meta.ContentLength >= 0 {
			if n >= meta.Count() {
				break
			}
			_, size = piece.Range(n, meta.ContentLength, meta.PieceSize)
		}
		t.mu.Lock()
		held := t.have.Has(n)
		t.mu.Unlock()
		taken := false
		lr := &countingReader{r: t.p.limitDownload(ctx, io.LimitReader(body, size))}
		if held {
			_, err = io.Copy(io.Discard, lr)
		} else {
			var sum []byte
			if n < len(sums) {
				sum = sums[n]
			}
			if meta.ContentLength < 0 {
				// Unknown length: a piece that reads nothing is the end.
				var peek [1]byte
				k, _ := io.ReadFull(body, peek[:])
				if k == 0 {
					break
				}
				lr = &countingReader{r: io.MultiReader(strings.NewReader(string(peek[:k])), io.LimitReader(body, size-1))}
			}
			if sum == nil {
				t.mu.Lock()
				t.unverified = true
				t.mu.Unlock()
			}
			_, err = t.p.store.WritePiece(ctx, t.id, n, lr, sum)
			if errors.Is(err, piece.ErrTaken) {
				// A parent's verified copy took the piece over: skip the
				// rest of it in the stream (it was stored, not by us).
				taken = true
				_, err = io.Copy(io.Discard, lr)
			}
		}
		t.p.metrics.bytes.WithLabelValues("origin").Add(float64(lr.n.Load()))
		pos += lr.n.Load()
		if err != nil {
			if errors.Is(err, errdefs.ErrNoSpace) {
				return &TaskError{Class: errdefs.ErrNoSpace, Msg: fmt.Sprintf("local store full: %v", err)}
			}
			if errors.Is(err, errdefs.ErrDigestMismatch) {
				return &TaskError{Class: errdefs.ErrDigestMismatch, Msg: fmt.Sprintf("origin piece %d does not match the digest the supernode announced", n)}
			}
			return &TaskError{Class: errdefs.ErrUnavailable, Msg: fmt.Sprintf("origin %s: piece %d: %v", redactURL(t.req.URL), n, err)}
		}
		if !taken {
			t.mu.Lock()
			t.have.Set(n)
			t.received["origin"] += lr.n.Load()
			t.notify()
			t.mu.Unlock()
		}
		if meta.ContentLength < 0 && lr.n.Load() < size {
			break
		}
	}
	if meta.ContentLength < 0 {
		t.mu.Lock()
		t.meta.ContentLength = pos
		t.count = piece.Count(pos, meta.PieceSize)
		t.notify()
		t.mu.Unlock()
	}
	if whole != nil {
		got := "sha256:" + hex.EncodeToString(whole.Sum(nil))
		if got != t.req.Digest {
			t.mu.Lock()
			t.have = nil
			t.mu.Unlock()
			t.p.store.Delete(context.WithoutCancel(ctx), t.id)
			return &TaskError{Class: errdefs.ErrDigestMismatch, Msg: fmt.Sprintf("origin content is %s, want %s", got, t.req.Digest)}
		}
	}
	return nil
}

// parseContentRange reads "bytes START-END/TOTAL".
func parseContentRange(v string) (start, total int64, ok bool) {
	v, found := strings.CutPrefix(v, "bytes ")
	if !found {
		return 0, 0, false
	}
	rng, tot, found := strings.Cut(v, "/")
	if !found {
		return 0, 0, false
	}
	s, e, found := strings.Cut(rng, "-")
	if !found {
		return 0, 0, false
	}
	start, err1 := strconv.ParseInt(s, 10, 64)
	total, err2 := strconv.ParseInt(tot, 10, 64)
	end, err3 := strconv.ParseInt(e, 10, 64)
	if err1 != nil || err2 != nil || err3 != nil || start < 0 || end < start || end >= total {
		return 0, 0, false
	}
	return start, total, true
}

// countingReader counts bytes read; the count may be read while the
// reader runs (the slow-piece check).
type countingReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}
