package registryproxy

import (
	"bytes"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

const ociManifest = "application/vnd.oci.image.manifest.v1+json"

func manifestBody(seed string) []byte {
	return []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":2},"layers":[],"annotations":{"seed":%q}}`,
		ociManifest, strings.Repeat("0", 64), seed))
}

func TestPing(t *testing.T) {
	e := newEnv(t)
	a := do(t, "GET", e.url+"/v2/")
	if a.status != 200 || strings.TrimSpace(string(a.body)) != "{}" || a.header.Get("Docker-Distribution-API-Version") != "registry/2.0" {
		t.Fatalf("open upstream: %d %q %v", a.status, a.body, a.header)
	}
	e.reg.mu.Lock()
	e.reg.authAll = true
	e.reg.tokens["tok"] = "*"
	e.reg.mu.Unlock()
	a = do(t, "GET", e.url+"/v2/")
	wantOCI(t, "no token", a, 401, codeUnauthorized)
	if got, want := a.header.Values("WWW-Authenticate"), []string{e.reg.challenge("")}; !slices.Equal(got, want) {
		t.Errorf("WWW-Authenticate %q, want %q unchanged", got, want)
	}
	if a.header.Get("Docker-Distribution-API-Version") != "registry/2.0" {
		t.Error("401 without the API version header")
	}
	if a := do(t, "HEAD", e.url+"/v2/"); a.status != 401 || a.header.Get("WWW-Authenticate") == "" {
		t.Errorf("HEAD: %d %v", a.status, a.header)
	}
	if a := do(t, "GET", e.url+"/v2/", "Authorization: Bearer tok"); a.status != 200 {
		t.Errorf("with token: %d %s", a.status, a.body)
	}
	if r := e.reg.requests(); r[len(r)-1].auth != "Bearer tok" {
		t.Errorf("upstream got Authorization %q", r[len(r)-1].auth)
	}
}

func TestManifest(t *testing.T) {
	e := newEnv(t)
	body := manifestBody("tag")
	d := e.reg.addManifest("library/app", "v1", ociManifest, body)
	accept := []string{ociManifest, "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json;q=0.9"}
	hdrs := []string{"Accept: " + accept[0], "Accept: " + accept[1], "User-Agent: containerd/2.0"}

	a := do(t, "GET", e.url+"/v2/library/app/manifests/v1", hdrs...)
	if a.status != 200 || !bytes.Equal(a.body, body) || a.header.Get("Content-Type") != ociManifest ||
		a.header.Get("Docker-Content-Digest") != d || a.header.Get("Content-Length") != fmt.Sprint(len(body)) {
		t.Fatalf("by tag: %d %v %q", a.status, a.header, a.body)
	}
	last := e.reg.requests()[len(e.reg.requests())-1]
	if !slices.Equal(last.accept, accept) || last.auth != "" {
		t.Errorf("upstream got Accept %q (auth %q), want %q", last.accept, last.auth, accept)
	}
	a = do(t, "HEAD", e.url+"/v2/library/app/manifests/v1", hdrs...)
	if a.status != 200 || len(a.body) != 0 || a.header.Get("Docker-Content-Digest") != d || a.header.Get("Content-Length") != fmt.Sprint(len(body)) {
		t.Errorf("HEAD by tag: %d %v", a.status, a.header)
	}

	// The tag GET cached the manifest under its digest for anonymous use.
	before := e.reg.count("GET", "/manifests/")
	a = do(t, "GET", e.url+"/v2/library/app/manifests/"+d, hdrs...)
	if a.status != 200 || !bytes.Equal(a.body, body) || a.header.Get("Docker-Content-Digest") != d || a.header.Get("Content-Type") != ociManifest {
		t.Fatalf("by digest: %d %v", a.status, a.header)
	}
	if n := e.reg.count("GET", "/manifests/"); n != before {
		t.Errorf("by digest after by tag: upstream asked again")
	}
	// A manifest only known by digest: asked once, then cached.
	body2 := manifestBody("digest-only")
	d2 := e.reg.addManifest("library/app", "", ociManifest, body2)
	for i := 0; i < 3; i++ {
		a = do(t, "GET", e.url+"/v2/library/app/manifests/"+d2, hdrs...)
		if a.status != 200 || !bytes.Equal(a.body, body2) || a.header.Get("Docker-Content-Digest") != d2 {
			t.Fatalf("by digest #%d: %d %v", i, a.status, a.header)
		}
	}
	if n := e.reg.count("GET", "/manifests/"+d2); n != 1 {
		t.Errorf("upstream asked %d times for a cached manifest", n)
	}
	a = do(t, "HEAD", e.url+"/v2/library/app/manifests/"+d2)
	if a.status != 200 || a.header.Get("Content-Length") != fmt.Sprint(len(body2)) || a.header.Get("Docker-Content-Digest") != d2 {
		t.Errorf("HEAD from cache: %d %v", a.status, a.header)
	}
	// The cache is per repository.
	if a := do(t, "GET", e.url+"/v2/library/other/manifests/"+d2); a.status != 404 {
		t.Errorf("other repository got %d", a.status)
	}
	wantOCI(t, "unknown tag", do(t, "GET", e.url+"/v2/library/app/manifests/nope"), 404, "MANIFEST_UNKNOWN")
	if hits := settled(e.m.metrics.manifestCache.WithLabelValues("hit"), 3); hits < 3 {
		t.Errorf("manifest cache hits %v", hits)
	}
	if n := settled(e.m.metrics.requests.WithLabelValues(kindManifest, "200"), 6); n < 6 {
		t.Errorf("manifest requests counted %v", n)
	}
}

func TestManifestVerified(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxManifestSize = 4 << 10 })
	body := manifestBody("verify")
	d := e.reg.addManifest("app", "v1", ociManifest, body)
	e.reg.mu.Lock()
	e.reg.bodyFor[d] = manifestBody("tampered")
	e.reg.mu.Unlock()
	wantOCI(t, "tampered by digest", do(t, "GET", e.url+"/v2/app/manifests/"+d), 502, codeManifestInvalid)
	// By tag the body does not match the upstream's Docker-Content-Digest either.
	wantOCI(t, "tampered by tag", do(t, "GET", e.url+"/v2/app/manifests/v1"), 502, codeManifestInvalid)
	e.reg.mu.Lock()
	delete(e.reg.bodyFor, d)
	e.reg.mu.Unlock()
	// Nothing was cached from the bad answers.
	if a := do(t, "GET", e.url+"/v2/app/manifests/"+d); a.status != 200 || !bytes.Equal(a.body, body) {
		t.Fatalf("after repair: %d %q", a.status, a.body)
	}
	big := bytes.Repeat([]byte(" "), 5<<10)
	dBig := e.reg.addManifest("app", "big", ociManifest, big)
	wantOCI(t, "too large", do(t, "GET", e.url+"/v2/app/manifests/"+dBig), 502, codeManifestInvalid)
	wantOCI(t, "too large by tag", do(t, "GET", e.url+"/v2/app/manifests/big"), 502, codeManifestInvalid)
}

// A manifest cached for one client's credentials is never served to a
// client without them: the upstream decides for every other credential.
func TestPrivateManifestNotFromCache(t *testing.T) {
	e := newEnv(t)
	e.reg.mu.Lock()
	e.reg.private["team/secret"] = true
	e.reg.tokens["good"] = "team/secret"
	e.reg.tokens["other"] = "team/public"
	e.reg.mu.Unlock()
	body := manifestBody("private")
	d := e.reg.addManifest("team/secret", "v1", ociManifest, body)
	url := e.url + "/v2/team/secret/manifests/" + d
	if a := do(t, "GET", url, "Authorization: Bearer good"); a.status != 200 || !bytes.Equal(a.body, body) {
		t.Fatalf("owner: %d %s", a.status, a.body)
	}
	asked := e.reg.count("GET", "/manifests/"+d)
	for _, method := range []string{"GET", "HEAD"} {
		a := do(t, method, url)
		wantOCI(t, method+" anonymous", a, 401, codeUnauthorized)
		if a.header.Get("WWW-Authenticate") != e.reg.challenge("team/secret") {
			t.Errorf("WWW-Authenticate %q", a.header.Get("WWW-Authenticate"))
		}
		if bytes.Contains(a.body, []byte("private")) {
			t.Errorf("%s: the private manifest leaked: %s", method, a.body)
		}
		wantOCI(t, method+" other token", do(t, method, url, "Authorization: Bearer other"), 403, codeDenied)
	}
	if n := e.reg.count("GET", "/manifests/"+d); n != asked+2 {
		t.Errorf("upstream asked %d times for the anonymous and other-token GETs, want 2", n-asked)
	}
	if a := do(t, "GET", url, "Authorization: Bearer good"); a.status != 200 || e.reg.count("GET", "/manifests/"+d) != asked+2 {
		t.Errorf("owner again: %d, upstream asked %d more", a.status, e.reg.count("GET", "/manifests/"+d)-asked-2)
	}
}

func TestTagsAndReferrers(t *testing.T) {
	e := newEnv(t)
	e.reg.addManifest("app", "v1", ociManifest, manifestBody("t1"))
	a := do(t, "GET", e.url+"/v2/app/tags/list?n=1&last=a&evil=1")
	if a.status != 200 || !strings.Contains(string(a.body), `"v1"`) || a.header.Get("Link") == "" {
		t.Fatalf("tags: %d %v %s", a.status, a.header, a.body)
	}
	r := e.reg.requests()
	if q := r[len(r)-1].query; q != "n=1&last=a" {
		t.Errorf("upstream query %q", q)
	}
	d := "sha256:" + strings.Repeat("1", 64)
	a = do(t, "GET", e.url+"/v2/app/referrers/"+d+"?artifactType=application%2Fexample")
	if a.status != 200 || a.header.Get("Content-Type") != "application/vnd.oci.image.index.v1+json" {
		t.Fatalf("referrers: %d %v", a.status, a.header)
	}
	r = e.reg.requests()
	if q := r[len(r)-1].query; q != "artifactType=application%2Fexample" {
		t.Errorf("upstream query %q", q)
	}
}

func TestBadRequests(t *testing.T) {
	e := newEnv(t)
	before := len(e.reg.requests())
	d := strings.Repeat("ab", 32)
	for _, tc := range []struct {
		path   string
		status int
		code   string
	}{
		{"/v2/Library/app/manifests/v1", 400, codeNameInvalid},
		{"/v2/library/../app/manifests/v1", 400, codeNameInvalid},
		{"/v2/library/%2e%2e/app/manifests/v1", 400, codeNameInvalid},
		{"/v2/library%2Fapp/manifests/v1", 400, codeNameInvalid},
		{"/v2/app/manifests/v1?ns=a..b", 400, codeNameInvalid},
		{"/v2/app/manifests/v1?ns=bad_host!", 400, codeNameInvalid},
		{"/v2/app/manifests/v1?ns=a.test&ns=b.test", 400, codeNameInvalid},
		{"/v2/app/manifests/sha256:abc", 400, codeDigestInvalid},
		{"/v2/app/blobs/sha512:" + d + d, 400, codeDigestInvalid},
		{"/v2/app/blobs/sha256:" + strings.ToUpper(d), 400, codeDigestInvalid},
		{"/v2/app/manifests/.v1", 400, codeTagInvalid},
		{"/v2/" + strings.Repeat("a/", 127) + "ab/manifests/v1", 400, codeNameInvalid},
		{"/v2/app/whatever", 404, codeUnsupported},
		{"/etc/passwd", 404, codeUnsupported},
	} {
		wantOCI(t, tc.path, do(t, "GET", e.url+tc.path), tc.status, tc.code)
	}
	wantOCI(t, "two Authorization headers", do(t, "GET", e.url+"/v2/", "Authorization: Bearer a", "Authorization: Bearer b"), 400, codeUnsupported)
	// Headers over the limit: an OCI 431; far over it: the server's own 431.
	wantOCI(t, "big header", do(t, "GET", e.url+"/v2/", "X-Big: "+strings.Repeat("x", 40<<10)), 431, codeSizeInvalid)
	if a := do(t, "GET", e.url+"/v2/", "X-Big: "+strings.Repeat("x", 200<<10)); a.status != 431 {
		t.Errorf("huge header: %d", a.status)
	}
	if n := len(e.reg.requests()); n != before {
		t.Errorf("bad requests reached the upstream %d times", n-before)
	}
}

func TestPushRefused(t *testing.T) {
	e := newEnv(t)
	d := "sha256:" + strings.Repeat("cd", 32)
	for _, tc := range []struct{ method, path string }{
		{"POST", "/v2/app/blobs/uploads/"},
		{"PATCH", "/v2/app/blobs/uploads/123"},
		{"PUT", "/v2/app/blobs/uploads/123?digest=" + d},
		{"PUT", "/v2/app/manifests/v1"},
		{"DELETE", "/v2/app/manifests/" + d},
		{"DELETE", "/v2/app/blobs/" + d},
		{"POST", "/v2/"},
		{"OPTIONS", "/v2/app/manifests/v1"},
		{"GET", "/v2/app/blobs/uploads/123"},
		{"GET", "/v2/_catalog"},
	} {
		a := do(t, tc.method, e.url+tc.path)
		wantOCI(t, tc.method+" "+tc.path, a, 405, codeUnsupported)
	}
	if n := len(e.reg.requests()); n != 0 {
		t.Errorf("refused requests reached the upstream %d times", n)
	}
}

func TestUpstreamSelection(t *testing.T) {
	c := agents(t)
	a, b := newFakeRegistry(t), newFakeRegistry(t)
	a.addManifest("x", "v1", ociManifest, []byte(`{"from":"a"}`))
	b.addManifest("x", "v1", ociManifest, []byte(`{"from":"b"}`))
	cfg := baseConfig(nil)
	cfg.DefaultRegistry = "a.test"
	cfg.Mirrors = []Upstream{{Host: "a.test", URL: a.srv.URL}, {Host: "b.test:5000", URL: b.srv.URL}, {Host: "index.docker.io", URL: b.srv.URL}}
	_, u := startMirror(t, cfg, c.Peers[0].Peer, Options{})
	from := func(what string, a answer) string {
		t.Helper()
		if a.status != 200 {
			t.Errorf("%s: %d %s", what, a.status, a.body)
		}
		return string(a.body)
	}
	for _, tc := range []struct{ query, host, want string }{
		{"", "", `{"from":"a"}`},
		{"?ns=b.test:5000", "", `{"from":"b"}`},
		{"?ns=B.Test:5000", "", `{"from":"b"}`},
		{"?ns=a.test", "b.test:5000", `{"from":"a"}`},
		{"", "b.test:5000", `{"from":"b"}`},
		{"?ns=docker.io", "", `{"from":"b"}`},
		{"?ns=registry-1.docker.io", "", `{"from":"b"}`},
	} {
		req, _ := http.NewRequest("GET", u+"/v2/x/manifests/v1"+tc.query, nil)
		if tc.host != "" {
			req.Host = tc.host
		}
		resp, err := testClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if got := from(tc.query+" host "+tc.host, answer{status: resp.StatusCode, body: body}); got != tc.want {
			t.Errorf("%q host %q: got %s, want %s", tc.query, tc.host, got, tc.want)
		}
	}
	wantOCI(t, "unlisted registry", do(t, "GET", u+"/v2/x/manifests/v1?ns=c.test"), 403, codeDenied)

	// allow_any_registry: an unlisted registry is reached over https.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	first := make(chan byte, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		var b [1]byte
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := conn.Read(b[:]); err == nil {
			first <- b[0]
		}
	}()
	cfg.AllowAnyRegistry = true
	cfg.DefaultRegistry = ""
	cfg.UpstreamTimeout = 2 * time.Second
	_, u2 := startMirror(t, cfg, c.Peers[0].Peer, Options{})
	wantOCI(t, "any registry", do(t, "GET", u2+"/v2/x/manifests/v1?ns="+ln.Addr().String()), 502, codeUnavailable)
	select {
	case b := <-first:
		if b != 0x16 {
			t.Errorf("the unlisted registry got %#x first, want a TLS handshake", b)
		}
	default:
		t.Error("the unlisted registry was not contacted")
	}
	wantOCI(t, "no default registry", do(t, "GET", u2+"/v2/x/manifests/v1"), 404, codeNameUnknown)
	if a := do(t, "GET", u2+"/v2/x/manifests/v1?ns=b.test:5000"); a.status != 200 {
		t.Errorf("listed registry with allow_any: %d", a.status)
	}
}

func TestUpstreamTLS(t *testing.T) {
	c := agents(t)
	reg := newFakeRegistry(t)
	body := []byte(`{"tls":true}`)
	reg.addManifest("x", "v1", ociManifest, body)
	tlsSrv := quietTLSServer(reg.srv.Config.Handler)
	defer tlsSrv.Close()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tlsSrv.Certificate().Raw}), 0o600)
	for _, tc := range []struct {
		name string
		up   Upstream
		ok   bool
	}{
		{"system CAs", Upstream{Host: "fake.test", URL: tlsSrv.URL}, false},
		{"ca_file", Upstream{Host: "fake.test", URL: tlsSrv.URL, CAFile: ca}, true},
		{"insecure", Upstream{Host: "fake.test", URL: tlsSrv.URL, Insecure: true}, true},
	} {
		cfg := baseConfig(nil)
		cfg.Mirrors = []Upstream{tc.up}
		_, u := startMirror(t, cfg, c.Peers[0].Peer, Options{})
		a := do(t, "GET", u+"/v2/x/manifests/v1")
		if tc.ok && (a.status != 200 || !bytes.Equal(a.body, body)) {
			t.Errorf("%s: %d %s", tc.name, a.status, a.body)
		}
		if !tc.ok {
			wantOCI(t, tc.name, a, 502, codeUnavailable)
		}
	}
	bad := baseConfig(nil)
	bad.Mirrors = []Upstream{{Host: "fake.test", URL: tlsSrv.URL, CAFile: filepath.Join(t.TempDir(), "missing.pem")}}
	if _, err := New(bad, c.Peers[0].Peer, Options{}); err == nil {
		t.Error("New accepted a missing CA file")
	}
}

// The mirror itself over HTTPS.
func TestServeTLS(t *testing.T) {
	c := agents(t)
	reg := newFakeRegistry(t)
	srv := httptest.NewTLSServer(http.NotFoundHandler()) // borrow its certificate
	defer srv.Close()
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	tc := srv.TLS.Certificates[0]
	os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tc.Certificate[0]}), 0o600)
	kb, err := x509MarshalKey(tc.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), 0o600)
	cfg := baseConfig(reg)
	cfg.TLSCert, cfg.TLSKey = cert, key
	_, u := startMirror(t, cfg, c.Peers[0].Peer, Options{})
	cl := srv.Client()
	cl.Transport.(*http.Transport).TLSClientConfig.NextProtos = []string{"h2", "http/1.1"}
	cl.Transport.(*http.Transport).ForceAttemptHTTP2 = true
	resp, err := cl.Get(u + "/v2/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.TLS == nil || resp.ProtoMajor != 2 {
		t.Fatalf("https: %d %s %v", resp.StatusCode, resp.Proto, resp.TLS)
	}
}

func TestUpstreamErrors(t *testing.T) {
	e := newEnv(t)
	d := "sha256:" + strings.Repeat("ef", 32)
	for _, tc := range []struct {
		status     int
		want       int
		code       string
		retryAfter bool
	}{
		{503, 503, codeUnavailable, true},
		{429, 429, codeTooManyRequests, true},
		{500, 502, codeUnavailable, false},
		{502, 502, codeUnavailable, false},
	} {
		e.reg.mu.Lock()
		e.reg.status = tc.status
		e.reg.mu.Unlock()
		for _, p := range []string{"/v2/", "/v2/app/manifests/v1", "/v2/app/manifests/" + d, "/v2/app/blobs/" + d} {
			for _, method := range []string{"GET", "HEAD"} {
				a := do(t, method, e.url+p)
				wantOCI(t, fmt.Sprintf("%d %s %s", tc.status, method, p), a, tc.want, tc.code)
				if tc.retryAfter && a.header.Get("Retry-After") != "7" {
					t.Errorf("%d %s: Retry-After %q", tc.status, p, a.header.Get("Retry-After"))
				}
			}
		}
	}
	e.reg.mu.Lock()
	e.reg.status = 0
	e.reg.mu.Unlock()
	wantOCI(t, "missing blob", do(t, "GET", e.url+"/v2/app/blobs/"+d), 404, codeBlobUnknown)
	wantOCI(t, "missing blob HEAD", do(t, "HEAD", e.url+"/v2/app/blobs/"+d), 404, "")
	// Errors are not cached: the blob appears, and is served.
	data := []byte("now it exists")
	d2 := e.reg.addBlob("app", data)
	e.reg.mu.Lock()
	e.reg.status = 503
	e.reg.mu.Unlock()
	wantOCI(t, "blob while down", do(t, "GET", e.url+"/v2/app/blobs/"+d2), 503, codeUnavailable)
	e.reg.mu.Lock()
	e.reg.status = 0
	e.reg.mu.Unlock()
	if a := do(t, "GET", e.url+"/v2/app/blobs/"+d2); a.status != 200 || !bytes.Equal(a.body, data) {
		t.Errorf("after recovery: %d %q", a.status, a.body)
	}

	// Down: nothing listens.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := "http://" + ln.Addr().String()
	ln.Close()
	cfg := baseConfig(nil)
	cfg.Mirrors = []Upstream{{Host: "fake.test", URL: dead}}
	_, u := startMirror(t, cfg, agents(t).Peers[0].Peer, Options{})
	for _, p := range []string{"/v2/", "/v2/app/manifests/v1", "/v2/app/blobs/" + d} {
		wantOCI(t, "down "+p, do(t, "GET", u+p), 502, codeUnavailable)
	}
}

// Credentials never follow a redirect to another origin, even one that
// differs only by port; a same-origin redirect keeps them.
func TestRedirectDropsCredentials(t *testing.T) {
	c := agents(t)
	type seen struct{ path, auth string }
	got := make(chan seen, 64)
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- seen{r.URL.Path, r.Header.Get("Authorization")}
		w.Header().Set("Content-Type", ociManifest)
		io.WriteString(w, `{"redirected":true}`)
	}))
	defer target.Close()
	var upURL string
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasPrefix(r.URL.Path, "/same/"):
			got <- seen{r.URL.Path, r.Header.Get("Authorization")}
			w.Header().Set("Content-Type", ociManifest)
			io.WriteString(w, `{"redirected":true}`)
		case strings.Contains(r.URL.Path, "/manifests/same"):
			http.Redirect(w, r, upURL+"/same/x", http.StatusTemporaryRedirect)
		default:
			http.Redirect(w, r, target.URL+"/other"+r.URL.Path, http.StatusTemporaryRedirect)
		}
	}))
	defer up.Close()
	upURL = up.URL
	if !strings.HasPrefix(target.URL, "http://127.0.0.1:") || !strings.HasPrefix(up.URL, "http://127.0.0.1:") {
		t.Fatal("want both on 127.0.0.1, differing by port")
	}
	cfg := baseConfig(nil)
	cfg.Mirrors = []Upstream{{Host: "fake.test", URL: up.URL}}
	_, u := startMirror(t, cfg, c.Peers[0].Peer, Options{})
	if a := do(t, "GET", u+"/v2/x/manifests/v1", "Authorization: Bearer secret"); a.status != 200 {
		t.Fatalf("redirected manifest: %d %s", a.status, a.body)
	}
	if s := <-got; s.auth != "" {
		t.Errorf("other port got Authorization %q", s.auth)
	}
	if a := do(t, "GET", u+"/v2/x/manifests/same", "Authorization: Bearer secret"); a.status != 200 {
		t.Fatalf("same-origin redirect: %d", a.status)
	}
	if s := <-got; s.auth != "Bearer secret" {
		t.Errorf("same origin lost Authorization: %q", s.auth)
	}

	// The client handed to the peer for back-to-source does the same.
	oc, err := OriginClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("GET", up.URL+"/v2/x/blobs/y", nil)
	req.Header.Set("Authorization", "Bearer secret")
	resp, err := oc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if s := <-got; s.auth != "" || s.path != "/other/v2/x/blobs/y" {
		t.Errorf("origin client: %+v", s)
	}
}

// OriginClient trusts a configured upstream's CA for that upstream only.
func TestOriginClientTLS(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	listed, unlisted := quietTLSServer(h), quietTLSServer(h)
	defer listed.Close()
	defer unlisted.Close()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: listed.Certificate().Raw}), 0o600)
	cfg := DefaultConfig()
	cfg.Mirrors = []Upstream{{Host: "r.test", URL: listed.URL, CAFile: ca}}
	oc, err := OriginClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := oc.Get(listed.URL + "/x")
	if err != nil {
		t.Fatalf("listed upstream: %v", err)
	}
	resp.Body.Close()
	if _, err := oc.Get(unlisted.URL + "/x"); err == nil {
		t.Error("an unlisted host was trusted")
	}
}

// quietTLSServer is an httptest TLS server that does not log refused
// handshakes (the tests cause them on purpose).
func quietTLSServer(h http.Handler) *httptest.Server {
	s := httptest.NewUnstartedServer(h)
	s.Config.ErrorLog = log.New(io.Discard, "", 0)
	s.StartTLS()
	return s
}
