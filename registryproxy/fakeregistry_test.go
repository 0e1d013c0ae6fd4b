package registryproxy

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeRegistry is a tiny pull-only OCI registry for tests: manifests by
// tag and digest, blobs (with Range), optional bearer-token auth per
// repository with a token endpoint, and fault injection.
type fakeRegistry struct {
	t   testing.TB
	srv *httptest.Server

	mu        sync.Mutex
	manifests map[string]fakeManifest      // "repo:tag" and "repo@digest"
	blobs     map[string]map[string][]byte // repo → digest → data
	private   map[string]bool              // repositories needing a token
	authAll   bool                         // /v2/ and every repository need a token
	tokens    map[string]string            // token → repository it grants ("*": all)
	user      string                       // basic credentials the token endpoint wants
	pass      string
	bodyFor   map[string][]byte // digest → bytes served instead (corruption)
	status    int               // if set, every /v2/ request gets this status
	realm     string            // token endpoint base URL (default: the server's URL)
	redirect  string            // if set, blob GETs redirect to redirect+path
	reqs      []fakeReq

	// Blob GETs stall after StallAfter bytes until Release is closed.
	stallAfter int64
	release    chan struct{}
	stalled    chan struct{} // closed when a GET reached the stall
	blobGETs   atomic.Int64
	egress     atomic.Int64
}

type fakeManifest struct {
	mediaType string
	body      []byte
}

type fakeReq struct {
	method, path, query, auth string
	accept                    []string
}

func newFakeRegistry(t testing.TB) *fakeRegistry {
	f := &fakeRegistry{t: t, manifests: map[string]fakeManifest{}, blobs: map[string]map[string][]byte{},
		private: map[string]bool{}, tokens: map[string]string{}, bodyFor: map[string][]byte{}}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// addManifest stores a manifest under its digest and, if tag != "", the
// tag; it returns the digest.
func (f *fakeRegistry) addManifest(repo, tag, mediaType string, body []byte) string {
	d := sha(body)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.manifests[repo+"@"+d] = fakeManifest{mediaType, body}
	if tag != "" {
		f.manifests[repo+":"+tag] = fakeManifest{mediaType, body}
	}
	return d
}

func (f *fakeRegistry) addBlob(repo string, data []byte) string {
	d := sha(data)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.blobs[repo] == nil {
		f.blobs[repo] = map[string][]byte{}
	}
	f.blobs[repo][d] = data
	return d
}

func (f *fakeRegistry) requests() []fakeReq {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]fakeReq(nil), f.reqs...)
}

func (f *fakeRegistry) count(method, pathPart string) int {
	n := 0
	for _, r := range f.requests() {
		if r.method == method && strings.Contains(r.path, pathPart) {
			n++
		}
	}
	return n
}

func (f *fakeRegistry) challenge(repo string) string {
	scope := ""
	if repo != "" {
		scope = fmt.Sprintf(`,scope="repository:%s:pull"`, repo)
	}
	base := f.srv.URL
	if f.realm != "" {
		base = f.realm
	}
	return fmt.Sprintf(`Bearer realm="%s/token",service="fake-registry"%s`, base, scope)
}

func ociErr(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	fmt.Fprintf(w, `{"errors":[{"code":%q,"message":%q}]}`, code, msg)
}

// authorize answers 0 when the request may read repo, else writes the
// refusal and returns its status.
func (f *fakeRegistry) authorize(w http.ResponseWriter, r *http.Request, repo string) int {
	f.mu.Lock()
	need := f.authAll || f.private[repo]
	tok, hasBearer := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	grant, known := f.tokens[tok]
	f.mu.Unlock()
	if !need {
		return 0
	}
	if !hasBearer || !known {
		w.Header().Set("WWW-Authenticate", f.challenge(repo))
		ociErr(w, http.StatusUnauthorized, "UNAUTHORIZED", "authentication required")
		return http.StatusUnauthorized
	}
	if grant != "*" && grant != repo && repo != "" {
		ociErr(w, http.StatusForbidden, "DENIED", "requested access to the resource is denied")
		return http.StatusForbidden
	}
	return 0
}

func (f *fakeRegistry) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.reqs = append(f.reqs, fakeReq{method: r.Method, path: r.URL.Path, query: r.URL.RawQuery, auth: r.Header.Get("Authorization"), accept: r.Header.Values("Accept")})
	status := f.status
	f.mu.Unlock()
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	if r.URL.Path == "/token" {
		f.serveToken(w, r)
		return
	}
	if status != 0 {
		w.Header().Set("Retry-After", "7")
		code := "UNAVAILABLE"
		if status == http.StatusTooManyRequests {
			code = "TOOMANYREQUESTS"
		}
		ociErr(w, status, code, "injected")
		return
	}
	p := strings.TrimPrefix(r.URL.Path, "/v2/")
	if r.URL.Path == "/v2/" {
		if f.authorize(w, r, "") == 0 {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, "{}")
		}
		return
	}
	var repo, kind, ref string
	for _, k := range []string{"/manifests/", "/blobs/", "/tags/", "/referrers/"} {
		if i := strings.LastIndex(p, k); i > 0 {
			repo, kind, ref = p[:i], strings.Trim(k, "/"), p[i+len(k):]
			break
		}
	}
	if repo == "" {
		ociErr(w, http.StatusNotFound, "NAME_UNKNOWN", "no such endpoint")
		return
	}
	if f.authorize(w, r, repo) != 0 {
		return
	}
	switch kind {
	case "manifests":
		f.mu.Lock()
		m, ok := f.manifests[repo+":"+ref]
		if strings.HasPrefix(ref, "sha256:") {
			m, ok = f.manifests[repo+"@"+ref]
		}
		body := m.body
		if alt, bad := f.bodyFor[sha(m.body)]; bad && ok {
			body = alt
		}
		f.mu.Unlock()
		if !ok {
			ociErr(w, http.StatusNotFound, "MANIFEST_UNKNOWN", "manifest unknown")
			return
		}
		w.Header().Set("Content-Type", m.mediaType)
		w.Header().Set("Docker-Content-Digest", sha(m.body))
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		if r.Method == http.MethodGet {
			w.Write(body)
		}
	case "tags":
		f.mu.Lock()
		var tags []string
		for k := range f.manifests {
			if t, ok := strings.CutPrefix(k, repo+":"); ok {
				tags = append(tags, t)
			}
		}
		f.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Link", `</v2/`+repo+`/tags/list?n=1&last=a>; rel="next"`)
		json.NewEncoder(w).Encode(map[string]any{"name": repo, "tags": tags})
	case "referrers":
		w.Header().Set("Content-Type", "application/vnd.oci.image.index.v1+json")
		io.WriteString(w, `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`)
	case "blobs":
		f.serveBlob(w, r, repo, ref)
	}
}

func (f *fakeRegistry) serveBlob(w http.ResponseWriter, r *http.Request, repo, digest string) {
	f.mu.Lock()
	data, ok := f.blobs[repo][digest]
	if alt, bad := f.bodyFor[digest]; bad && ok {
		data = alt
	}
	redirect := f.redirect
	stallAfter, release, stalled := f.stallAfter, f.release, f.stalled
	f.mu.Unlock()
	if !ok {
		ociErr(w, http.StatusNotFound, "BLOB_UNKNOWN", "blob unknown to registry")
		return
	}
	if r.Method == http.MethodGet && redirect != "" {
		http.Redirect(w, r, redirect+r.URL.Path, http.StatusTemporaryRedirect)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Docker-Content-Digest", digest)
	w.Header().Set("Accept-Ranges", "bytes")
	start, end := int64(0), int64(len(data))
	if rg, ok := strings.CutPrefix(r.Header.Get("Range"), "bytes="); ok && r.Method == http.MethodGet {
		a, b, _ := strings.Cut(rg, "-")
		start, _ = strconv.ParseInt(a, 10, 64)
		if b != "" {
			e, _ := strconv.ParseInt(b, 10, 64)
			end = min(e+1, end)
		}
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end-1, len(data)))
		w.Header().Set("Content-Length", strconv.FormatInt(end-start, 10))
		w.WriteHeader(http.StatusPartialContent)
	} else {
		w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	}
	if r.Method != http.MethodGet {
		return
	}
	f.blobGETs.Add(1)
	body := data[start:end]
	if stallAfter > 0 && start < stallAfter && int64(len(data)) > stallAfter {
		n, _ := w.Write(body[:stallAfter-start])
		f.egress.Add(int64(n))
		w.(http.Flusher).Flush()
		f.mu.Lock()
		if stalled != nil {
			select {
			case <-stalled:
			default:
				close(stalled)
			}
		}
		f.mu.Unlock()
		select {
		case <-release:
		case <-time.After(30 * time.Second):
		case <-r.Context().Done():
			return
		}
		body = body[stallAfter-start:]
	}
	n, _ := w.Write(body)
	f.egress.Add(int64(n))
}

func (f *fakeRegistry) serveToken(w http.ResponseWriter, r *http.Request) {
	user, pass, ok := r.BasicAuth()
	f.mu.Lock()
	defer f.mu.Unlock()
	if !ok || user != f.user || pass != f.pass {
		w.Header().Set("WWW-Authenticate", `Basic realm="fake"`)
		http.Error(w, "bad credentials", http.StatusUnauthorized)
		return
	}
	repo := "*"
	if scope := r.URL.Query().Get("scope"); scope != "" {
		parts := strings.Split(scope, ":")
		if len(parts) == 3 {
			repo = parts[1]
		}
	}
	tok := base64.RawURLEncoding.EncodeToString([]byte(fmt.Sprintf("tok-%s-%d", repo, len(f.tokens))))
	f.tokens[tok] = repo
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"token": tok, "access_token": tok, "expires_in": 300})
}
