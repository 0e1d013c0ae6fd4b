package registryproxy

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// servePing answers /v2/ as the upstream does for these credentials: 200
// {} when it lets the client in, else its answer (401 with its
// WWW-Authenticate unchanged, so clients find the token realm).
func (m *Mirror) servePing(q *request) {
	resp, cancel, err := m.ups.do(q.r.Context(), q.up, http.MethodGet, "/v2/", "", q.upstreamHeader(false))
	if err != nil {
		q.fail(unreachable(), "upstream unreachable", "err", err)
		return
	}
	defer cancel()
	defer drain(resp.Body)
	if resp.StatusCode != http.StatusOK {
		q.fail(fromUpstream(resp, kindPing), "upstream refused the probe", "upstream_status", resp.StatusCode)
		return
	}
	h := q.w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", "3")
	q.w.WriteHeader(http.StatusOK)
	if q.r.Method == http.MethodGet {
		io.WriteString(q.w, "{}\n")
	}
}

// serveManifest proxies a manifest with the client's Accept and
// Authorization. By digest: served from the cache when the same
// credentials fetched it from the same repository before; otherwise the
// body is checked against the digest and cached. By tag: always asked
// upstream; the body is cached under its computed digest.
func (m *Mirror) serveManifest(q *request) {
	byDigest := q.rt.isDigest()
	if byDigest && m.cfg.ManifestCacheTTL > 0 {
		if c, ok := m.manifests.get(q.cacheKey(q.rt.ref)); ok {
			m.metrics.manifestCache.WithLabelValues("hit").Inc()
			writeManifest(q, c.body, int64(len(c.body)), c.mediaType, q.rt.ref)
			return
		}
		m.metrics.manifestCache.WithLabelValues("miss").Inc()
	}
	path := "/v2/" + q.rt.name + "/manifests/" + q.rt.ref
	resp, cancel, err := m.ups.do(q.r.Context(), q.up, q.r.Method, path, "", q.upstreamHeader(true))
	if err != nil {
		q.fail(unreachable(), "upstream unreachable", "err", err)
		return
	}
	defer cancel()
	defer drain(resp.Body)
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		q.fail(fromUpstream(resp, kindManifest), "upstream refused the manifest", "upstream_status", resp.StatusCode)
		return
	}
	mediaType := resp.Header.Get("Content-Type")
	upDigest := resp.Header.Get("Docker-Content-Digest")
	max := int64(m.cfg.MaxManifestSize)
	if resp.ContentLength > max {
		q.fail(newError(http.StatusBadGateway, codeManifestInvalid, fmt.Sprintf("upstream manifest is larger than %d bytes", max)), "manifest too large", "length", resp.ContentLength)
		return
	}
	if q.r.Method == http.MethodHead {
		d := upDigest
		if byDigest {
			if d != "" && d != q.rt.ref {
				q.fail(newError(http.StatusBadGateway, codeManifestInvalid, "upstream answered another digest"), "upstream digest differs", "upstream_digest", d)
				return
			}
			d = q.rt.ref
		}
		writeManifest(q, nil, resp.ContentLength, mediaType, d)
		return
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, max+1))
	if err != nil {
		q.fail(newError(http.StatusBadGateway, codeUnavailable, "reading the upstream manifest failed"), "upstream manifest body", "err", err)
		return
	}
	if int64(len(body)) > max {
		q.fail(newError(http.StatusBadGateway, codeManifestInvalid, fmt.Sprintf("upstream manifest is larger than %d bytes", max)), "manifest too large")
		return
	}
	if resp.ContentLength >= 0 && int64(len(body)) != resp.ContentLength {
		q.fail(newError(http.StatusBadGateway, codeUnavailable, "upstream manifest was cut short"), "short manifest", "got", len(body), "want", resp.ContentLength)
		return
	}
	sum := sha256.Sum256(body)
	got := "sha256:" + hex.EncodeToString(sum[:])
	if isSchema1(mediaType) && !byDigest {
		// A signed schema1 manifest's digest covers its payload without
		// the signatures, not these bytes: relay it, unverified and
		// uncached (by digest it cannot be verified, and fails above).
		writeManifest(q, body, int64(len(body)), mediaType, upDigest)
		return
	}
	switch {
	case byDigest && got != q.rt.ref:
		q.fail(newError(http.StatusBadGateway, codeManifestInvalid, fmt.Sprintf("upstream manifest is %s, not the requested digest", got)), "manifest digest mismatch", "got", got)
		return
	case strings.HasPrefix(upDigest, "sha256:") && upDigest != got:
		q.fail(newError(http.StatusBadGateway, codeManifestInvalid, fmt.Sprintf("upstream manifest is %s, not %s as its header says", got, upDigest)), "manifest digest header mismatch", "got", got, "upstream_digest", upDigest)
		return
	}
	if upDigest == "" || byDigest {
		upDigest = got
	}
	// The upstream accepted these credentials (or none) for this
	// repository: cache under the content's digest for exactly them.
	m.manifests.put(q.cacheKey(got), cachedManifest{body: body, mediaType: mediaType}, int64(len(body))+256)
	writeManifest(q, body, int64(len(body)), mediaType, upDigest)
}

// isSchema1 reports whether a media type is Docker's deprecated schema1.
func isSchema1(mediaType string) bool {
	mt, _, _ := strings.Cut(mediaType, ";")
	switch strings.TrimSpace(strings.ToLower(mt)) {
	case "application/vnd.docker.distribution.manifest.v1+prettyjws", "application/vnd.docker.distribution.manifest.v1+json":
		return true
	}
	return false
}

// writeManifest answers 200 with a manifest (body nil for HEAD; length -1
// when unknown).
func writeManifest(q *request, body []byte, length int64, mediaType, digest string) {
	h := q.w.Header()
	if mediaType != "" {
		h.Set("Content-Type", mediaType)
	}
	if digest != "" {
		h.Set("Docker-Content-Digest", digest)
		h.Set("Etag", `"`+digest+`"`)
	}
	if length >= 0 {
		h.Set("Content-Length", strconv.FormatInt(length, 10))
	}
	q.w.WriteHeader(http.StatusOK)
	if q.r.Method == http.MethodGet && body != nil {
		q.w.Write(body)
	}
	q.log.Debug("manifest served", "digest", digest, "bytes", len(body))
}

// servePassthrough proxies tag lists and referrers: read-only, with the
// client's credentials, bounded like manifests; the pagination query (n,
// last) and artifactType filter are kept, and Link (pagination) and
// OCI-Filters-Applied relayed.
func (m *Mirror) servePassthrough(q *request) {
	path := "/v2/" + q.rt.name + "/tags/list"
	keep := []string{"n", "last"}
	if q.rt.kind == kindReferrers {
		path = "/v2/" + q.rt.name + "/referrers/" + q.rt.ref
		keep = []string{"artifactType"}
	}
	in := q.r.URL.Query()
	out := make([]string, 0, len(keep))
	for _, k := range keep {
		if v := in.Get(k); v != "" {
			out = append(out, k+"="+url.QueryEscape(v))
		}
	}
	resp, cancel, err := m.ups.do(q.r.Context(), q.up, q.r.Method, path, strings.Join(out, "&"), q.upstreamHeader(true))
	if err != nil {
		q.fail(unreachable(), "upstream unreachable", "err", err)
		return
	}
	defer cancel()
	defer drain(resp.Body)
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		q.fail(fromUpstream(resp, q.rt.kind), "upstream refused", "upstream_status", resp.StatusCode)
		return
	}
	max := int64(m.cfg.MaxManifestSize)
	var body []byte
	if q.r.Method == http.MethodGet {
		body, err = io.ReadAll(io.LimitReader(resp.Body, max+1))
		if err != nil || int64(len(body)) > max {
			q.fail(newError(http.StatusBadGateway, codeUnavailable, "the upstream answer is unreadable or too large"), "upstream body", "err", err, "bytes", len(body))
			return
		}
	}
	h := q.w.Header()
	for _, k := range []string{"Content-Type", "Link", "OCI-Filters-Applied"} {
		if v := resp.Header.Get(k); v != "" {
			h.Set(k, v)
		}
	}
	if q.r.Method == http.MethodGet {
		h.Set("Content-Length", strconv.Itoa(len(body)))
	} else if resp.ContentLength >= 0 {
		h.Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
	}
	q.w.WriteHeader(http.StatusOK)
	q.w.Write(body)
}
