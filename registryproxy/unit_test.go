package registryproxy

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pouchfly/pouchfly/internal/cliconfig"
	"github.com/pouchfly/pouchfly/internal/clock"
	"github.com/pouchfly/pouchfly/internal/errdefs"
)

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	for name, f := range map[string]func(*Config){
		"listen":           func(c *Config) { c.Listen = "nope" },
		"tls half":         func(c *Config) { c.TLSCert = "cert.pem" },
		"default registry": func(c *Config) { c.DefaultRegistry = "http://x" },
		"mirror host":      func(c *Config) { c.Mirrors = []Upstream{{Host: "a b", URL: "https://x"}} },
		"mirror dup": func(c *Config) {
			c.Mirrors = []Upstream{{Host: "docker.io", URL: "https://x"}, {Host: "index.docker.io", URL: "https://y"}}
		},
		"mirror scheme":      func(c *Config) { c.Mirrors = []Upstream{{Host: "a", URL: "ftp://x"}} },
		"mirror path":        func(c *Config) { c.Mirrors = []Upstream{{Host: "a", URL: "https://x/v2"}} },
		"mirror userinfo":    func(c *Config) { c.Mirrors = []Upstream{{Host: "a", URL: "https://u:p@x"}} },
		"mirror no host":     func(c *Config) { c.Mirrors = []Upstream{{Host: "a", URL: "https://"}} },
		"negative ttl":       func(c *Config) { c.AuthCacheTTL = -1 },
		"manifest size":      func(c *Config) { c.MaxManifestSize = 100 },
		"header bytes":       func(c *Config) { c.MaxHeaderBytes = 10 << 20 },
		"upstream timeout":   func(c *Config) { c.UpstreamTimeout = 0 },
		"read header":        func(c *Config) { c.ReadHeaderTimeout = 0 },
		"negative cache":     func(c *Config) { c.ManifestCacheEntries = -1 },
		"negative write ttl": func(c *Config) { c.WriteTimeout = -time.Second },
	} {
		c := DefaultConfig()
		f(&c)
		if err := c.Validate(); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("%s: Validate = %v, want invalid", name, err)
		}
	}
	c := DefaultConfig()
	c.Listen = ""
	if err := c.Validate(); err != nil {
		t.Errorf("mirror off: %v", err)
	}
}

// The daemon loads the section through cliconfig (viper): registry hosts
// hold dots, which is why Mirrors is a list.
func TestConfigLoad(t *testing.T) {
	type daemon struct {
		Mirror Config `yaml:"mirror"`
	}
	file := filepath.Join(t.TempDir(), "dfget.yaml")
	os.WriteFile(file, []byte(`mirror:
  listen: 127.0.0.1:5555
  allow_any_registry: false
  auth_cache_ttl: 30s
  manifest_cache_bytes: 8MiB
  mirrors:
    - host: docker.io
      url: https://mirror.example.com:5000
      insecure: true
    - host: registry.internal:5000
      url: http://10.0.0.5:5000
`), 0o600)
	t.Setenv("POUCHFLY_MIRROR_DEFAULT_REGISTRY", "registry.internal:5000")
	cfg := daemon{Mirror: DefaultConfig()}
	if err := cliconfig.Load(&cfg, file, nil); err != nil {
		t.Fatal(err)
	}
	c := cfg.Mirror
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.Listen != "127.0.0.1:5555" || c.AllowAnyRegistry || c.AuthCacheTTL != 30*time.Second || c.ManifestCacheBytes != 8<<20 ||
		c.DefaultRegistry != "registry.internal:5000" || c.MaxManifestSize != 4<<20 {
		t.Fatalf("loaded %+v", c)
	}
	if len(c.Mirrors) != 2 || c.Mirrors[0].Host != "docker.io" || c.Mirrors[0].URL != "https://mirror.example.com:5000" || !c.Mirrors[0].Insecure ||
		c.Mirrors[1].Host != "registry.internal:5000" {
		t.Fatalf("mirrors %+v", c.Mirrors)
	}
	// The defaults print and load back unchanged.
	out, err := cliconfig.Print(daemon{Mirror: DefaultConfig()})
	if err != nil || !strings.Contains(out, "listen: 127.0.0.1:65001") || !strings.Contains(out, "mirrors: []") {
		t.Fatalf("printed %q, %v", out, err)
	}
	os.WriteFile(file, []byte(out), 0o600)
	cfg = daemon{Mirror: DefaultConfig()}
	t.Setenv("POUCHFLY_MIRROR_DEFAULT_REGISTRY", "docker.io")
	if err := cliconfig.Load(&cfg, file, nil); err != nil || cfg.Mirror.Validate() != nil {
		t.Fatalf("round trip: %v", err)
	}
}

func TestParseRoute(t *testing.T) {
	d := "sha256:" + strings.Repeat("ab", 32)
	for _, tc := range []struct {
		path       string
		kind, name string
		ref        string
		status     int
		code       string
	}{
		{path: "/v2/", kind: kindPing},
		{path: "/v2", kind: kindPing},
		{path: "/v2/library/alpine/manifests/3.20", kind: kindManifest, name: "library/alpine", ref: "3.20"},
		{path: "/v2/a/b/c/manifests/" + d, kind: kindManifest, name: "a/b/c", ref: d},
		{path: "/v2/a/manifests/sha256%3A" + d[7:], kind: kindManifest, name: "a", ref: d},
		{path: "/v2/my-app/blobs/" + d, kind: kindBlob, name: "my-app", ref: d},
		{path: "/v2/x/manifests/manifests/v1", kind: kindManifest, name: "x/manifests", ref: "v1"},
		{path: "/v2/a__b/c.d/e--f/tags/list", kind: kindTags, name: "a__b/c.d/e--f"},
		{path: "/v2/a/referrers/" + d, kind: kindReferrers, name: "a", ref: d},
		{path: "/v2/_catalog", kind: kindCatalog},
		{path: "/v2/a/blobs/uploads/", kind: kindUpload},
		{path: "/v2/a/blobs/uploads/abc-123", kind: kindUpload},
		{path: "/v2/a/blobs/uploads", kind: kindUpload},
		{path: "/v2/Library/alpine/manifests/1", status: 400, code: codeNameInvalid},
		{path: "/v2/a/../b/manifests/1", status: 400, code: codeNameInvalid},
		{path: "/v2/a/%2e%2e/b/manifests/1", status: 400, code: codeNameInvalid},
		{path: "/v2/a%2fb/manifests/1", status: 400, code: codeNameInvalid},
		{path: "/v2/a/manifests/v1..2", status: 400, code: codeNameInvalid},
		{path: `/v2/a\b/manifests/1`, status: 400, code: codeNameInvalid},
		{path: "/v2/a//b/manifests/1", status: 400, code: codeNameInvalid},
		{path: "/v2/./a/manifests/1", status: 400, code: codeNameInvalid},
		{path: "/v2/a-/manifests/1", status: 400, code: codeNameInvalid},
		{path: "/v2/a/manifests/-x", status: 400, code: codeTagInvalid},
		{path: "/v2/a/manifests/" + strings.Repeat("t", 129), status: 400, code: codeTagInvalid},
		{path: "/v2/" + strings.Repeat("a/", 127) + "ab/manifests/1", status: 400, code: codeNameInvalid},
		{path: "/v2/a/manifests/sha256:abc", status: 400, code: codeDigestInvalid},
		{path: "/v2/a/manifests/sha512:" + strings.Repeat("ab", 64), status: 400, code: codeDigestInvalid},
		{path: "/v2/a/blobs/sha256:" + strings.Repeat("AB", 32), status: 400, code: codeDigestInvalid},
		{path: "/v2/a/blobs/latest", status: 400, code: codeDigestInvalid},
		{path: "/v2/a/tags/other", status: 404, code: codeUnsupported},
		{path: "/v2/a/b", status: 404, code: codeUnsupported},
		{path: "/v3/", status: 404, code: codeUnsupported},
	} {
		r := httptest.NewRequest(http.MethodGet, "http://mirror"+tc.path, nil)
		rt, e := parseRoute(r)
		if e == nil && rt.kind != kindPing && rt.kind != kindUpload && rt.kind != kindCatalog {
			e = rt.validate()
		}
		if tc.status != 0 {
			if e == nil || e.status != tc.status || e.code() != tc.code {
				t.Errorf("%s: got %+v %v, want %d %s", tc.path, rt, e, tc.status, tc.code)
			}
			continue
		}
		if e != nil || rt.kind != tc.kind || rt.name != tc.name || rt.ref != tc.ref {
			t.Errorf("%s: got %+v %v, want %s %q %q", tc.path, rt, e, tc.kind, tc.name, tc.ref)
		}
	}
}

func TestParseRange(t *testing.T) {
	for _, tc := range []struct {
		h       string
		off, n  int64
		partial bool
		status  int
	}{
		{"", 0, 100, false, 0},
		{"bytes=0-9", 0, 10, true, 0},
		{"bytes=90-", 90, 10, true, 0},
		{"bytes=90-1000", 90, 10, true, 0},
		{"bytes=-10", 90, 10, true, 0},
		{"bytes=-1000", 0, 100, true, 0},
		{"bytes=0-0,5-9", 0, 100, false, 0},
		{"items=0-9", 0, 100, false, 0},
		{"bytes=9-0", 0, 100, false, 0},
		{"bytes=x-", 0, 100, false, 0},
		{"bytes=100-", 0, 0, false, 416},
		{"bytes=-0", 0, 0, false, 416},
	} {
		off, n, partial, e := parseRange(tc.h, 100)
		if tc.status != 0 {
			if e == nil || e.status != tc.status || e.header.Get("Content-Range") != "bytes */100" {
				t.Errorf("%q: got %v", tc.h, e)
			}
			continue
		}
		if e != nil || off != tc.off || n != tc.n || partial != tc.partial {
			t.Errorf("%q: got %d %d %v %v, want %d %d %v", tc.h, off, n, partial, e, tc.off, tc.n, tc.partial)
		}
	}
}

func TestLRU(t *testing.T) {
	clk := clock.NewFake(time.Unix(1000, 0))
	c := newLRU[string](clk, time.Minute, 3, 100)
	c.put("a", "A", 10)
	c.put("b", "B", 10)
	c.put("c", "C", 10)
	c.get("a") // a is now the most recent
	c.put("d", "D", 10)
	if _, ok := c.get("b"); ok {
		t.Error("b survived an entry-count eviction")
	}
	for _, k := range []string{"a", "c", "d"} {
		if _, ok := c.get(k); !ok {
			t.Errorf("%s evicted", k)
		}
	}
	c.put("big", "X", 95) // evicts down to the byte budget
	if n, cost := c.len(); n != 1 || cost != 95 {
		t.Errorf("after a big entry: %d entries, %d bytes", n, cost)
	}
	c.put("huge", "Y", 101) // more than the whole budget: not stored
	if _, ok := c.get("huge"); ok {
		t.Error("an entry over the budget was stored")
	}
	clk.Advance(time.Minute)
	if _, ok := c.get("big"); ok {
		t.Error("an expired entry was served")
	}
	off := newLRU[string](clk, 0, 3, 100)
	off.put("a", "A", 1)
	if _, ok := off.get("a"); ok {
		t.Error("a cache with TTL 0 stored something")
	}
}
