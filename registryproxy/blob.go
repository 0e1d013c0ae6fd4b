package registryproxy

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/pouchfly/pouchfly/peer"
)

// checkBlob asks the upstream (HEAD, with the client's credentials)
// whether this client may have this blob of this repository, and its
// size (-1 when the upstream redirected to storage that does not answer
// HEAD). A yes is cached for AuthCacheTTL per (upstream, repository,
// digest, credentials); a no is never cached and comes back as the
// upstream said it (401 with its WWW-Authenticate, 403, 404…).
func (m *Mirror) checkBlob(q *request) (int64, *ociError) {
	key := q.cacheKey(q.rt.ref)
	if size, ok := m.checks.get(key); ok {
		m.metrics.headCache.WithLabelValues("hit").Inc()
		return size, nil
	}
	m.metrics.headCache.WithLabelValues("miss").Inc()
	resp, cancel, err := m.ups.do(q.r.Context(), q.up, http.MethodHead, "/v2/"+q.rt.name+"/blobs/"+q.rt.ref, "", q.upstreamHeader(false))
	if err != nil {
		q.log.Warn("upstream unreachable", "err", err)
		return -1, unreachable()
	}
	defer cancel()
	defer drain(resp.Body)
	size := int64(-1)
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode <= 299:
		if d := resp.Header.Get("Docker-Content-Digest"); d != "" && d != q.rt.ref {
			return -1, newError(http.StatusBadGateway, codeDigestInvalid, "upstream answered another digest")
		}
		size = resp.ContentLength
	case resp.Request != nil && !sameOrigin(resp.Request.URL, q.up.base) && resp.StatusCode >= 400:
		// The registry checked the credentials and redirected to its
		// storage, which refuses HEAD on a URL signed for GET: allowed,
		// size unknown.
	default:
		return -1, fromUpstream(resp, kindBlob)
	}
	m.checks.put(key, size, 1)
	return size, nil
}

func sameOrigin(a, b *url.URL) bool {
	return strings.EqualFold(a.Scheme, b.Scheme) && sameHostPort(a, b)
}

// serveBlob answers a blob HEAD or GET. The upstream's yes comes first
// (checkBlob); then a GET opens the P2P task and streams it in order as
// pieces verify. A full GET checks the whole digest: the last byte leaves
// only after it matched, and any failure after the headers went out
// breaks the connection rather than ending the body cleanly.
func (m *Mirror) serveBlob(q *request) {
	start := time.Now()
	size, e := m.checkBlob(q)
	if e != nil {
		q.fail(e, "blob refused")
		return
	}
	if q.r.Method == http.MethodHead && size >= 0 {
		writeBlobHeaders(q, size, 0, size, size, false)
		q.w.WriteHeader(http.StatusOK)
		return
	}
	hdr := http.Header{}
	if q.auth != "" {
		hdr.Set("Authorization", q.auth)
	}
	ctx := q.r.Context()
	s, err := m.agent.Download(ctx, peer.Request{URL: q.up.url("/v2/"+q.rt.name+"/blobs/"+q.rt.ref, ""), Header: hdr, Digest: q.rt.ref})
	if err != nil {
		q.fail(fromPeer(err, kindBlob), "p2p download failed", "err", err)
		return
	}
	defer s.Close()
	meta, err := s.Meta(ctx)
	if err != nil {
		q.fail(fromPeer(err, kindBlob), "p2p download failed", "err", err)
		return
	}
	length := meta.ContentLength
	if size >= 0 && size != length {
		q.fail(newError(http.StatusBadGateway, codeSizeInvalid, "the upstream's size for this blob disagrees with its content"), "blob size mismatch", "head", size, "content", length)
		return
	}
	if q.r.Method == http.MethodHead {
		writeBlobHeaders(q, length, 0, length, length, false)
		q.w.WriteHeader(http.StatusOK)
		return
	}
	off, n, partial, e := parseRange(q.r.Header.Get("Range"), length)
	if e != nil {
		q.fail(e, "unsatisfiable range", "range", q.r.Header.Get("Range"), "length", length)
		return
	}
	if partial {
		// A part cannot be checked against the digest: read the whole
		// blob back once (the stream checks it at the end), then seek.
		if _, ok := m.verified.get(q.rt.ref); !ok {
			if _, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{s}, make([]byte, 256<<10)); err != nil {
				q.fail(fromPeer(err, kindBlob), "p2p download failed", "err", err)
				return
			}
			m.verified.put(q.rt.ref, struct{}{}, 1)
		}
		if _, err := s.Seek(off, io.SeekStart); err != nil {
			q.fail(fromPeer(err, kindBlob), "seek failed", "err", err)
			return
		}
	}
	if n == 0 {
		// Nothing to send, but a full read still checks the digest.
		if !partial {
			if _, err := s.Read(make([]byte, 1)); err != io.EOF {
				q.fail(fromPeer(err, kindBlob), "empty blob failed", "err", err)
				return
			}
		}
		writeBlobHeaders(q, 0, 0, 0, length, false)
		q.w.WriteHeader(http.StatusOK)
		return
	}
	writeBlobHeaders(q, n, off, off+n-1, length, partial)
	if partial {
		q.w.WriteHeader(http.StatusPartialContent)
	} else {
		q.w.WriteHeader(http.StatusOK)
	}
	sent, ttfb, err := m.copyBlob(q, s, n, !partial, start)
	if err != nil {
		m.metrics.aborted.Inc()
		if q.r.Context().Err() != nil {
			q.log.Debug("client went away", "digest", q.rt.ref, "sent", sent, "want", n)
		} else {
			q.log.Warn("blob stream broken off", "digest", q.rt.ref, "sent", sent, "want", n, "err", err)
		}
		// Never end a blob body cleanly short of (or past) its digest.
		panic(http.ErrAbortHandler)
	}
	if !partial {
		m.verified.put(q.rt.ref, struct{}{}, 1)
	}
	q.log.Info("blob served", "digest", q.rt.ref, "bytes", sent, "offset", off, "first_byte", ttfb, "seconds", time.Since(start).Seconds(), "received", s.Received())
}

// writeBlobHeaders sets the headers of a blob answer of n bytes, bytes
// first..last of total when partial.
func writeBlobHeaders(q *request, n, first, last, total int64, partial bool) {
	h := q.w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Docker-Content-Digest", q.rt.ref)
	h.Set("Etag", `"`+q.rt.ref+`"`)
	h.Set("Accept-Ranges", "bytes")
	h.Set("Content-Length", strconv.FormatInt(n, 10))
	if partial {
		h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", first, last, total))
	}
}

// copyBlob sends n bytes of s to the client, flushing as pieces arrive
// and giving each write WriteTimeout. With verify, the last byte is held
// back until the stream reported the end of a content matching its
// digest. It returns the bytes sent, the time to the first byte, and any
// failure (the caller breaks the connection).
func (m *Mirror) copyBlob(q *request, s *peer.Stream, n int64, verify bool, start time.Time) (int64, time.Duration, error) {
	rc := http.NewResponseController(q.w)
	defer rc.SetWriteDeadline(time.Time{})
	var sent int64
	var ttfb time.Duration
	deadline := func() {
		if m.cfg.WriteTimeout > 0 {
			rc.SetWriteDeadline(time.Now().Add(m.cfg.WriteTimeout))
		}
	}
	wrote := func(k int64) {
		sent += k
		m.metrics.blobBytes.Add(float64(k))
		if ttfb == 0 && k > 0 {
			ttfb = time.Since(start)
			m.metrics.firstByte.Observe(ttfb.Seconds())
		}
	}
	// With the whole digest to check, the last byte waits until it matched:
	// a mismatch then breaks the connection before the client has it all.
	body := n
	if verify && n > 0 {
		body = n - 1
	}
	chunk := int64(64 << 10) // small first, so the first bytes leave early
	for sent < body {
		deadline()
		k, err := s.CopyTo(q.w, min(chunk, body-sent))
		wrote(k)
		chunk = 4 << 20
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF // the content ended before n
			}
			return sent, ttfb, err
		}
		if k == 0 {
			return sent, ttfb, io.ErrNoProgress
		}
		if err := rc.Flush(); err != nil {
			return sent, ttfb, fmt.Errorf("client: %w", err)
		}
	}
	if body == n {
		return sent, ttfb, nil
	}
	var last [1]byte
	if _, err := io.ReadFull(s, last[:]); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return sent, ttfb, err
	}
	if _, err := s.Read(make([]byte, 1)); err != io.EOF {
		if err == nil {
			err = fmt.Errorf("content longer than %d bytes", n)
		}
		return sent, ttfb, err
	}
	deadline()
	k, err := q.w.Write(last[:])
	wrote(int64(k))
	if err != nil {
		return sent, ttfb, fmt.Errorf("client: %w", err)
	}
	if err := rc.Flush(); err != nil {
		return sent, ttfb, fmt.Errorf("client: %w", err)
	}
	return sent, ttfb, nil
}

// parseRange reads a Range header against a blob of length bytes. It
// serves one range: "bytes=a-b", "bytes=a-" or the suffix "bytes=-n".
// Several ranges, other units or malformed values are ignored (the whole
// blob, 200), as RFC 9110 allows; a range starting at or beyond the end
// is 416 with Content-Range: bytes */length.
func parseRange(h string, length int64) (off, n int64, partial bool, e *ociError) {
	spec, ok := strings.CutPrefix(strings.TrimSpace(h), "bytes=")
	if h == "" || !ok || strings.Contains(spec, ",") {
		return 0, length, false, nil
	}
	a, b, ok := strings.Cut(strings.TrimSpace(spec), "-")
	if !ok {
		return 0, length, false, nil
	}
	unsatisfiable := func() (int64, int64, bool, *ociError) {
		e := newError(http.StatusRequestedRangeNotSatisfiable, codeRangeInvalid, "range not satisfiable")
		e.header.Set("Content-Range", fmt.Sprintf("bytes */%d", length))
		return 0, 0, false, e
	}
	if a == "" {
		k, err := strconv.ParseInt(b, 10, 64)
		if err != nil || k < 0 {
			return 0, length, false, nil
		}
		if k == 0 || length == 0 {
			return unsatisfiable()
		}
		k = min(k, length)
		return length - k, k, true, nil
	}
	start, err := strconv.ParseInt(a, 10, 64)
	if err != nil || start < 0 {
		return 0, length, false, nil
	}
	end := length - 1
	if b != "" {
		if end, err = strconv.ParseInt(b, 10, 64); err != nil || end < start {
			return 0, length, false, nil
		}
		end = min(end, length-1)
	}
	if start >= length {
		return unsatisfiable()
	}
	return start, end - start + 1, true, nil
}
