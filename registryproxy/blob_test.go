package registryproxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/pouchfly/pouchfly/internal/clock"
)

func TestBlob(t *testing.T) {
	e := newEnv(t)
	data := randomBlob(3<<20 + 123)
	d := e.reg.addBlob("library/app", data)
	url := e.url + "/v2/library/app/blobs/" + d

	a := do(t, "HEAD", url)
	if a.status != 200 || len(a.body) != 0 || a.header.Get("Content-Length") != fmt.Sprint(len(data)) ||
		a.header.Get("Docker-Content-Digest") != d || a.header.Get("Content-Type") != "application/octet-stream" {
		t.Fatalf("HEAD: %d %v", a.status, a.header)
	}
	if n := e.reg.blobGETs.Load(); n != 0 {
		t.Errorf("HEAD fetched the blob %d times", n)
	}
	a = do(t, "GET", url)
	if a.err != nil || a.status != 200 || !bytes.Equal(a.body, data) {
		t.Fatalf("GET: %d %v, %d bytes", a.status, a.err, len(a.body))
	}
	if a.header.Get("Content-Length") != fmt.Sprint(len(data)) || a.header.Get("Docker-Content-Digest") != d ||
		a.header.Get("Content-Type") != "application/octet-stream" {
		t.Errorf("GET headers %v", a.header)
	}
	// Again: from the agent's store, the upstream only sees the check (or
	// not even that, within the cache TTL).
	if a := do(t, "GET", url); a.status != 200 || !bytes.Equal(a.body, data) {
		t.Fatalf("second GET: %d", a.status)
	}
	if n := e.reg.blobGETs.Load(); n != 1 {
		t.Errorf("upstream served the blob %d times, want 1", n)
	}
	if n := e.reg.count("HEAD", "/blobs/"+d); n < 1 {
		t.Errorf("no upstream HEAD check")
	}
	if v := settled(e.m.metrics.blobBytes, 2*float64(len(data))); v != 2*float64(len(data)) {
		t.Errorf("blob bytes metric %v", v)
	}
	if v := settled(e.m.metrics.firstByte, 2); v != 2 {
		t.Errorf("first-byte observations %v", v)
	}
	if v := settled(e.m.metrics.requests.WithLabelValues(kindBlob, "200"), 3); v != 3 {
		t.Errorf("blob 200s counted %v", v)
	}

	// An empty blob.
	empty := e.reg.addBlob("library/app", nil)
	if a := do(t, "GET", e.url+"/v2/library/app/blobs/"+empty); a.status != 200 || len(a.body) != 0 || a.header.Get("Content-Length") != "0" {
		t.Errorf("empty blob: %d %v", a.status, a.header)
	}
}

func TestBlobRange(t *testing.T) {
	e := newEnv(t)
	data := randomBlob(2<<20 + 77)
	d := e.reg.addBlob("app", data)
	url := e.url + "/v2/app/blobs/" + d
	n := int64(len(data))
	for _, tc := range []struct {
		rng         string
		first, last int64 // -1: whole, 200
	}{
		{"bytes=0-99", 0, 99},
		{"bytes=1048570-1048580", 1048570, 1048580},
		{fmt.Sprintf("bytes=%d-", n-10), n - 10, n - 1},
		{"bytes=-5", n - 5, n - 1},
		{fmt.Sprintf("bytes=%d-%d", n-3, n+100), n - 3, n - 1},
		{"bytes=0-0,5-9", -1, -1},
	} {
		a := do(t, "GET", url, "Range: "+tc.rng)
		if tc.first < 0 {
			if a.status != 200 || !bytes.Equal(a.body, data) {
				t.Errorf("%s: %d, %d bytes", tc.rng, a.status, len(a.body))
			}
			continue
		}
		want := data[tc.first : tc.last+1]
		if a.err != nil || a.status != 206 || !bytes.Equal(a.body, want) ||
			a.header.Get("Content-Range") != fmt.Sprintf("bytes %d-%d/%d", tc.first, tc.last, n) ||
			a.header.Get("Content-Length") != fmt.Sprint(len(want)) {
			t.Errorf("%s: %d %v %v, %d bytes", tc.rng, a.status, a.err, a.header, len(a.body))
		}
	}
	a := do(t, "GET", url, fmt.Sprintf("Range: bytes=%d-", n))
	wantOCI(t, "beyond the end", a, 416, codeRangeInvalid)
	if a.header.Get("Content-Range") != fmt.Sprintf("bytes */%d", n) {
		t.Errorf("416 Content-Range %q", a.header.Get("Content-Range"))
	}
}

// The first bytes reach the client while the upstream still withholds
// the rest of the blob.
func TestBlobStreamsBeforeComplete(t *testing.T) {
	e := newEnv(t)
	data := randomBlob(4 << 20)
	d := e.reg.addBlob("app", data)
	release := make(chan struct{})
	e.reg.mu.Lock()
	e.reg.stallAfter, e.reg.release, e.reg.stalled = 1<<20, release, make(chan struct{})
	e.reg.mu.Unlock()
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", e.url+"/v2/app/blobs/"+d, nil)
	resp, err := testClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	first := make([]byte, 64<<10)
	got := make(chan error, 1)
	go func() { _, err := io.ReadFull(resp.Body, first); got <- err }()
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no bytes while the upstream withholds the rest")
	}
	if e.reg.egress.Load() >= int64(len(data)) {
		t.Fatal("the upstream had sent everything already")
	}
	close(release)
	rest, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(append(first, rest...), data) {
		t.Fatal("content differs")
	}
}

// Upstream bytes that do not match the digest never end as a clean body:
// the connection breaks.
func TestCorruptBlobBreaksConnection(t *testing.T) {
	e := newEnv(t)
	data := randomBlob(4 << 20)
	d := e.reg.addBlob("app", data)
	bad := bytes.Clone(data)
	bad[len(bad)-10] ^= 0xff
	release := make(chan struct{})
	e.reg.mu.Lock()
	e.reg.bodyFor[d] = bad
	e.reg.stallAfter, e.reg.release, e.reg.stalled = 1<<20, release, make(chan struct{})
	e.reg.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", e.url+"/v2/app/blobs/"+d, nil)
	resp, err := testClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d (want the stream to have started)", resp.StatusCode)
	}
	head := make([]byte, 1024)
	if _, err := io.ReadFull(resp.Body, head); err != nil {
		t.Fatal(err)
	}
	close(release)
	rest, err := io.ReadAll(resp.Body)
	if err == nil {
		t.Fatalf("clean EOF after %d bytes of a corrupt blob", len(head)+len(rest))
	}
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Logf("read error: %v", err)
	}
	if got := int64(len(head) + len(rest)); got >= int64(len(data)) {
		t.Errorf("the client got all %d bytes", got)
	}
	if v := settled(e.m.metrics.aborted, 1); v != 1 {
		t.Errorf("aborted metric %v", v)
	}
	// Nothing of the bad copy is kept as content: the agent holds no
	// complete copy, and asking again (upstream still corrupt, no stall)
	// never ends in a clean 200 either.
	if st, err := agents(t).Peers[0].Store().Stat(context.Background(), d); err == nil && st.Complete {
		t.Error("the agent kept a complete copy of corrupt content")
	}
	e.reg.mu.Lock()
	e.reg.stallAfter = 0
	e.reg.mu.Unlock()
	if a := do(t, "GET", e.url+"/v2/app/blobs/"+d); a.status == 200 && a.err == nil {
		t.Errorf("second GET of a corrupt blob ended cleanly with %d bytes", len(a.body))
	} else if a.status != 200 {
		wantOCI(t, "second GET", a, a.status, "")
	}
}

// Without credentials the upstream accepts, a client gets the upstream's
// 401 (or 403) and no byte of a private blob — even when this agent
// already holds the blob for an authorized client.
func TestPrivateBlob(t *testing.T) {
	e := newEnv(t)
	c := agents(t)
	e.reg.mu.Lock()
	e.reg.private["team/secret"] = true
	e.reg.tokens["good"] = "team/secret"
	e.reg.tokens["other"] = "team/public"
	e.reg.mu.Unlock()
	data := randomBlob(1<<20 + 5)
	d := e.reg.addBlob("team/secret", data)
	url := e.url + "/v2/team/secret/blobs/" + d
	check := func(stage string) {
		t.Helper()
		for _, method := range []string{"GET", "HEAD"} {
			a := do(t, method, url)
			wantOCI(t, stage+" "+method+" anonymous", a, 401, codeUnauthorized)
			if got := a.header.Values("WWW-Authenticate"); len(got) != 1 || got[0] != e.reg.challenge("team/secret") {
				t.Errorf("%s: WWW-Authenticate %q", stage, got)
			}
			if len(a.body) > 1024 || bytes.Contains(a.body, data[:32]) {
				t.Errorf("%s: body of %d bytes", stage, len(a.body))
			}
			wantOCI(t, stage+" "+method+" other token", do(t, method, url, "Authorization: Bearer other"), 403, codeDenied)
			wantOCI(t, stage+" "+method+" bad token", do(t, method, url, "Authorization: Bearer forged"), 401, codeUnauthorized)
		}
	}
	check("before")
	if _, err := c.Peers[0].Store().Stat(context.Background(), d); err == nil {
		t.Fatal("refused requests started a download")
	}
	a := do(t, "GET", url, "Authorization: Bearer good")
	if a.status != 200 || !bytes.Equal(a.body, data) {
		t.Fatalf("owner: %d %s", a.status, a.body[:min(len(a.body), 200)])
	}
	if st, err := c.Peers[0].Store().Stat(context.Background(), d); err != nil || !st.Complete {
		t.Fatalf("the agent does not hold the blob: %v", err)
	}
	check("held")
	// The upstream saw the owner's token on the CDN's fetch, never a
	// forged one on a GET.
	for _, r := range e.reg.requests() {
		if r.method == "GET" && strings.Contains(r.path, "/blobs/") && r.auth != "Bearer good" {
			t.Errorf("blob GET with Authorization %q", r.auth)
		}
	}
}

// A yes from the upstream is reused for auth_cache_ttl per credentials; a
// no is never cached.
func TestBlobCheckCache(t *testing.T) {
	clk := clock.NewFake(time.Now())
	c := agents(t)
	reg := newFakeRegistry(t)
	cfg := baseConfig(reg)
	m, u := startMirror(t, cfg, c.Peers[0].Peer, Options{Clock: clk})
	reg.mu.Lock()
	reg.private["p"] = true
	reg.tokens["t1"] = "p"
	reg.tokens["t2"] = "p"
	reg.mu.Unlock()
	d := reg.addBlob("p", []byte("cached check"))
	url := u + "/v2/p/blobs/" + d
	heads := func() int { return reg.count("HEAD", "/blobs/"+d) }
	for i := 0; i < 3; i++ {
		if a := do(t, "HEAD", url, "Authorization: Bearer t1"); a.status != 200 {
			t.Fatalf("HEAD: %d", a.status)
		}
	}
	if heads() != 1 {
		t.Errorf("%d upstream HEADs for 3 within the TTL", heads())
	}
	do(t, "HEAD", url, "Authorization: Bearer t2") // other credentials: asked
	if heads() != 2 {
		t.Errorf("other credentials reused a cached check")
	}
	for i := 0; i < 2; i++ {
		do(t, "HEAD", url) // refused, never cached
	}
	if heads() != 4 {
		t.Errorf("refusals cached: %d HEADs", heads())
	}
	clk.Advance(cfg.AuthCacheTTL)
	do(t, "HEAD", url, "Authorization: Bearer t1")
	if heads() != 5 {
		t.Errorf("expired check reused")
	}
	if v := settled(m.metrics.headCache.WithLabelValues("hit"), 2); v != 2 {
		t.Errorf("hit metric %v", v)
	}
}

// The registry redirects blob GETs to storage on another port, which
// refuses HEAD (URLs signed for GET): the blob is still served, and
// storage never sees the client's credentials.
func TestBlobRedirectToStorage(t *testing.T) {
	c := agents(t)
	data := randomBlob(1<<20 + 99)
	sum := sha256.Sum256(data)
	d := "sha256:" + hex.EncodeToString(sum[:])
	type seen struct{ method, auth string }
	storageSaw := make(chan seen, 64)
	storage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		storageSaw <- seen{r.Method, r.Header.Get("Authorization")}
		if r.Method != http.MethodGet {
			http.Error(w, "signature does not match", http.StatusForbidden)
			return
		}
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(data))
	}))
	defer storage.Close()
	reg := newFakeRegistry(t)
	reg.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer good" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="x"`)
			http.Error(w, "", http.StatusUnauthorized)
			return
		}
		http.Redirect(w, r, storage.URL+"/blob?sig=1", http.StatusTemporaryRedirect)
	})
	_, u := startMirror(t, baseConfig(reg), c.Peers[0].Peer, Options{})
	url := u + "/v2/app/blobs/" + d
	a := do(t, "HEAD", url, "Authorization: Bearer good")
	if a.status != 200 || a.header.Get("Content-Length") != fmt.Sprint(len(data)) {
		t.Fatalf("HEAD: %d %v", a.status, a.header)
	}
	a = do(t, "GET", url, "Authorization: Bearer good")
	if a.status != 200 || !bytes.Equal(a.body, data) {
		t.Fatalf("GET: %d %v", a.status, a.err)
	}
	wantOCI(t, "anonymous", do(t, "GET", url), 401, codeUnauthorized)
	close(storageSaw)
	n := 0
	for s := range storageSaw {
		n++
		if s.auth != "" {
			t.Errorf("storage got Authorization %q on %s", s.auth, s.method)
		}
	}
	if n == 0 {
		t.Error("storage never asked")
	}
}

// Two hosts' mirrors pull the same blob: the upstream sends it once.
func TestTwoHosts(t *testing.T) {
	c := agents(t)
	reg := newFakeRegistry(t)
	data := randomBlob(6 << 20)
	d := reg.addBlob("app", data)
	_, u0 := startMirror(t, baseConfig(reg), c.Peers[0].Peer, Options{})
	_, u1 := startMirror(t, baseConfig(reg), c.Peers[1].Peer, Options{})
	res := make(chan answer, 2)
	for _, u := range []string{u0, u1} {
		go func() { res <- do(t, "GET", u+"/v2/app/blobs/"+d) }()
	}
	for i := 0; i < 2; i++ {
		if a := <-res; a.status != 200 || !bytes.Equal(a.body, data) {
			t.Fatalf("host %d: %d %v", i, a.status, a.err)
		}
	}
	if n := reg.blobGETs.Load(); n != 1 {
		t.Errorf("upstream served the blob %d times", n)
	}
	if eg := reg.egress.Load(); eg != int64(len(data)) {
		t.Errorf("upstream egress %d, want %d", eg, len(data))
	}
}

// A client that stops reading is dropped after write_timeout instead of
// holding the stream forever.
func TestStalledClientDropped(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.WriteTimeout = 300 * time.Millisecond })
	data := randomBlob(24 << 20)
	d := e.reg.addBlob("app", data)
	req, _ := http.NewRequest("GET", e.url+"/v2/app/blobs/"+d, nil)
	tr := &http.Transport{ReadBufferSize: 4 << 10}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	deadline := time.Now().Add(30 * time.Second)
	for metricValue(e.m.metrics.aborted) < 1 {
		if time.Now().After(deadline) {
			t.Fatal("a client that reads nothing was not dropped")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := io.ReadAll(resp.Body); err == nil {
		t.Error("the dropped client saw a clean end")
	}
}
