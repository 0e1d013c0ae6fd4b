package registryproxy

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/peer"
)

// FuzzParseRoute reads the request target of a client's request: routing
// never panics, and what it accepts names a valid repository and
// reference with no way out of /v2/<name>/.
func FuzzParseRoute(f *testing.F) {
	f.Fuzz(func(t *testing.T, target string) {
		u, err := url.ParseRequestURI(target)
		if err != nil {
			return
		}
		r := &http.Request{Method: http.MethodGet, URL: u, RequestURI: target, Header: http.Header{}}
		rt, e := parseRoute(r)
		if e != nil {
			if e.status < 400 || e.status > 499 {
				t.Fatalf("parseRoute(%q): status %d", target, e.status)
			}
			return
		}
		switch rt.kind {
		case kindPing, kindUpload, kindCatalog:
			return
		}
		if e := rt.validate(); e != nil {
			if e.status != http.StatusBadRequest {
				t.Fatalf("validate(%q): status %d", target, e.status)
			}
			return
		}
		if !validName(rt.name) || strings.Contains(rt.name, "..") || strings.HasPrefix(rt.name, "/") {
			t.Fatalf("parseRoute(%q) accepted the name %q", target, rt.name)
		}
		switch rt.kind {
		case kindBlob, kindReferrers:
			if !validDigest(rt.ref) {
				t.Fatalf("parseRoute(%q) accepted the digest %q", target, rt.ref)
			}
		case kindManifest:
			if !validDigest(rt.ref) && !validTag(rt.ref) {
				t.Fatalf("parseRoute(%q) accepted the reference %q", target, rt.ref)
			}
		case kindTags:
		default:
			t.Fatalf("parseRoute(%q): kind %q passed validation", target, rt.kind)
		}
	})
}

// FuzzParseRange reads a client's Range header on a blob.
func FuzzParseRange(f *testing.F) {
	f.Fuzz(func(t *testing.T, h string, length int64) {
		if length < 0 {
			length = -(length + 1)
		}
		off, n, partial, e := parseRange(h, length)
		if e != nil {
			if e.status != http.StatusRequestedRangeNotSatisfiable {
				t.Fatalf("parseRange(%q, %d): status %d", h, length, e.status)
			}
			return
		}
		if !partial {
			if off != 0 || n != length {
				t.Fatalf("parseRange(%q, %d) = whole with %d+%d", h, length, off, n)
			}
			return
		}
		if off < 0 || n < 1 || off > length-n {
			t.Fatalf("parseRange(%q, %d) = %d+%d, outside the blob", h, length, off, n)
		}
	})
}

// FuzzRegistryHost reads registry names from ns= and the Host header.
func FuzzRegistryHost(f *testing.F) {
	f.Fuzz(func(t *testing.T, h string) {
		if !validHost(h) {
			return
		}
		c := canonicalRegistry(h)
		if !validHost(c) {
			t.Fatalf("canonical form %q of %q is not a host", c, h)
		}
		u, err := url.Parse(builtinUpstream(c))
		if err != nil || u.Host == "" || u.Path != "" || u.User != nil {
			t.Fatalf("upstream of %q: %v %+v", h, err, u)
		}
	})
}

// failingAgent refuses every download: the fuzz covers the mirror's own
// parsing and upstream handling, not P2P (tested elsewhere).
type failingAgent struct{}

func (failingAgent) Download(context.Context, peer.Request) (*peer.Stream, error) {
	return nil, fmt.Errorf("fuzz agent: %w", errdefs.ErrUnavailable)
}

// FuzzMirror sends any request to the mirror in front of a fake registry
// (a public and a private repository): it never panics, every error is
// an OCI error body, and nothing but GET and HEAD is ever served.
func FuzzMirror(f *testing.F) {
	reg := newFakeRegistry(f)
	manifest := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"digest":"sha256:` +
		strings.Repeat("a", 64) + `","size":2},"layers":[]}`)
	for _, repo := range []string{"public/app", "private/app"} {
		reg.addManifest(repo, "v1", "application/vnd.oci.image.manifest.v1+json", manifest)
		reg.addBlob(repo, []byte("{}"))
	}
	reg.private["private/app"] = true
	reg.tokens["good-token"] = "private/app"
	cfg := baseConfig(reg)
	cfg.UpstreamTimeout = 2 * time.Second
	m, err := New(cfg, failingAgent{}, Options{Logger: testLogger()})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, method, target, hk, hv string, body []byte) {
		r, ok := fuzzRequest(method, target, hk, hv, body)
		if !ok {
			return
		}
		w := httptest.NewRecorder()
		m.ServeHTTP(w, r)
		if w.Code < 200 || w.Code > 599 {
			t.Fatalf("status %d", w.Code)
		}
		if w.Code < 400 {
			if r.Method != http.MethodGet && r.Method != http.MethodHead {
				t.Fatalf("%s %s answered %d", method, target, w.Code)
			}
			return
		}
		if r.Method == http.MethodHead {
			return
		}
		var oe struct {
			Errors []struct{ Code string } `json:"errors"`
		}
		if err := json.Unmarshal(w.Body.Bytes(), &oe); err != nil || len(oe.Errors) == 0 {
			// Upstream error bodies pass through only when they are OCI
			// errors; anything else must be the mirror's own.
			t.Fatalf("%s %s: %d with a body that is not an OCI error: %q", method, target, w.Code, w.Body.String())
		}
	})
}

// fuzzRequest builds a request as a server would read it off the wire.
func fuzzRequest(method, target, hk, hv string, body []byte) (*http.Request, bool) {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: fuzz\r\n", method, target)
	if hk != "" {
		fmt.Fprintf(&b, "%s: %s\r\n", hk, hv)
	}
	if len(body) > 0 {
		fmt.Fprintf(&b, "Content-Length: %d\r\n", len(body))
	}
	b.WriteString("\r\n")
	b.Write(body)
	r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(b.String())))
	if err != nil {
		return nil, false
	}
	r.RemoteAddr = "127.0.0.1:40000"
	return r, true
}
