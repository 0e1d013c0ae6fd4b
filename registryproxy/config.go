// Package registryproxy is the pull side of an OCI distribution registry,
// served by the peer agent (`dfget daemon`) as a registry mirror for
// containerd, docker, skopeo and pouchd.
//
// Manifests, the /v2/ probe, tag lists and referrers pass through to the
// upstream registry with the client's own Accept and Authorization headers;
// manifests fetched by digest are verified and cached per repository and
// credentials. Blobs go peer-to-peer: after the upstream accepted the
// client's credentials for the blob (an upstream HEAD, cached briefly), the
// blob is downloaded as a peer task whose ID is its digest and streamed to
// the client in order as its pieces verify. Pushes are refused.
//
// The upstream is chosen per request: containerd's ns=<registry> query
// parameter, else a Mirrors entry matching the request's Host, else
// DefaultRegistry.
package registryproxy

import (
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/internal/units"
)

// Config is the registry mirror's configuration (the `mirror:` section of
// dfget.yaml). DefaultConfig gives working values for one host.
type Config struct {
	// Listen is the mirror's listen address; "" turns the mirror off. Keep
	// it on loopback unless clients on other hosts should use it.
	Listen string `yaml:"listen"`
	// TLSCert and TLSKey are PEM files; when both are set the mirror speaks
	// HTTPS (and HTTP/2), otherwise plain HTTP.
	TLSCert string `yaml:"tls_cert"`
	// TLSKey is the private key of TLSCert.
	TLSKey string `yaml:"tls_key"`
	// DefaultRegistry is the registry served when a request names none (no
	// ns= parameter and no Mirrors entry for its Host): Docker's
	// registry-mirrors setting sends no ns. It is looked up in Mirrors, or
	// reached at https://<registry> (docker.io: registry-1.docker.io) even
	// when AllowAnyRegistry is off. "": such requests get 404 NAME_UNKNOWN.
	DefaultRegistry string `yaml:"default_registry"`
	// Mirrors lists registries with their upstream endpoint and TLS
	// options. (A list rather than a map keyed by host: registry hosts hold
	// dots, which the config loader reads as nesting.)
	Mirrors []Upstream `yaml:"mirrors"`
	// AllowAnyRegistry lets ns= name a registry that Mirrors does not list;
	// it is reached at https://<registry> with the system CAs (docker.io:
	// https://registry-1.docker.io). Off: such requests get 403 DENIED and
	// containerd falls back to its next host.
	AllowAnyRegistry bool `yaml:"allow_any_registry"`
	// AuthCacheTTL is how long an upstream's yes to a blob HEAD (per
	// repository, digest and credentials) is reused; 0 asks every time.
	AuthCacheTTL time.Duration `yaml:"auth_cache_ttl"`
	// ManifestCacheTTL is how long a manifest fetched by digest is served
	// from memory to the same credentials on the same repository; 0 turns
	// the cache off.
	ManifestCacheTTL time.Duration `yaml:"manifest_cache_ttl"`
	// ManifestCacheEntries caps the manifest cache's entries (LRU).
	ManifestCacheEntries int `yaml:"manifest_cache_entries"`
	// ManifestCacheBytes caps the manifest cache's bytes (LRU).
	ManifestCacheBytes units.Bytes `yaml:"manifest_cache_bytes"`
	// MaxManifestSize refuses larger manifests (and tag lists, referrers)
	// from the upstream with 502.
	MaxManifestSize units.Bytes `yaml:"max_manifest_size"`
	// UpstreamTimeout bounds each upstream request for the probe,
	// manifests, tag lists and blob checks (not blob bodies: those go
	// through the peer and its own timeouts).
	UpstreamTimeout time.Duration `yaml:"upstream_timeout"`
	// MaxHeaderBytes bounds a request's header block; a larger one gets
	// 431 (an OCI error body up to twice this size, beyond that the HTTP
	// server's own plain answer).
	MaxHeaderBytes units.Bytes `yaml:"max_header_bytes"`
	// ReadHeaderTimeout bounds reading a request's headers.
	ReadHeaderTimeout time.Duration `yaml:"read_header_timeout"`
	// IdleTimeout closes keep-alive connections idle this long.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// WriteTimeout is a progress deadline: a client that takes longer than
	// this to accept one write is dropped (0: none). Whole responses have
	// no deadline, so big blobs to slow clients still work.
	WriteTimeout time.Duration `yaml:"write_timeout"`
}

// Upstream is one registry the mirror serves and where to reach it.
type Upstream struct {
	// Host is the registry as clients name it (host[:port], as in
	// ns=docker.io or an image reference).
	Host string `yaml:"host"`
	// URL is the upstream endpoint: http:// or https://, host and port
	// only, no path.
	URL string `yaml:"url"`
	// CAFile is a PEM bundle trusted for this upstream besides the system
	// CAs.
	CAFile string `yaml:"ca_file"`
	// Insecure skips TLS verification for this upstream.
	Insecure bool `yaml:"insecure"`
}

// DefaultConfig returns the defaults `dfget config default` prints: the
// mirror on 127.0.0.1:65001 (plain HTTP), docker.io by default and any
// registry through ns=, 60s blob access checks, a 64 MiB manifest cache.
func DefaultConfig() Config {
	return Config{
		Listen:               "127.0.0.1:65001",
		DefaultRegistry:      "docker.io",
		Mirrors:              []Upstream{},
		AllowAnyRegistry:     true,
		AuthCacheTTL:         time.Minute,
		ManifestCacheTTL:     5 * time.Minute,
		ManifestCacheEntries: 1024,
		ManifestCacheBytes:   64 << 20,
		MaxManifestSize:      4 << 20,
		UpstreamTimeout:      30 * time.Second,
		MaxHeaderBytes:       32 << 10,
		ReadHeaderTimeout:    10 * time.Second,
		IdleTimeout:          2 * time.Minute,
		WriteTimeout:         time.Minute,
	}
}

// Validate reports the first invalid field, wrapping errdefs.ErrInvalid.
// It does not read the TLS or CA files (New does).
func (c Config) Validate() error {
	bad := func(f string, args ...any) error {
		return fmt.Errorf("mirror config: "+f+": %w", append(args, errdefs.ErrInvalid)...)
	}
	if c.Listen != "" {
		if _, _, err := net.SplitHostPort(c.Listen); err != nil {
			return bad("listen %q: %v", c.Listen, err)
		}
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return bad("tls_cert and tls_key go together")
	}
	if c.DefaultRegistry != "" && !validHost(c.DefaultRegistry) {
		return bad("default_registry %q is not a registry host[:port]", c.DefaultRegistry)
	}
	seen := map[string]bool{}
	for i, u := range c.Mirrors {
		if !validHost(u.Host) {
			return bad("mirrors[%d].host %q is not a registry host[:port]", i, u.Host)
		}
		h := canonicalRegistry(u.Host)
		if seen[h] {
			return bad("mirrors[%d].host %q is listed twice", i, u.Host)
		}
		seen[h] = true
		if _, err := parseUpstreamURL(u.URL); err != nil {
			return bad("mirrors[%d].url: %v", i, err)
		}
	}
	switch {
	case c.AuthCacheTTL < 0 || c.ManifestCacheTTL < 0:
		return bad("cache TTLs must not be negative")
	case c.ManifestCacheEntries < 0 || c.ManifestCacheBytes < 0:
		return bad("manifest cache bounds must not be negative")
	case c.MaxManifestSize < 1<<10 || c.MaxManifestSize > 64<<20:
		return bad("max_manifest_size %s: want 1KiB..64MiB", c.MaxManifestSize)
	case c.UpstreamTimeout <= 0:
		return bad("upstream_timeout must be positive")
	case c.MaxHeaderBytes < 1<<10 || c.MaxHeaderBytes > 1<<20:
		return bad("max_header_bytes %s: want 1KiB..1MiB", c.MaxHeaderBytes)
	case c.ReadHeaderTimeout <= 0 || c.IdleTimeout <= 0:
		return bad("read_header_timeout and idle_timeout must be positive")
	case c.WriteTimeout < 0:
		return bad("write_timeout must not be negative")
	}
	return nil
}

// parseUpstreamURL checks an upstream endpoint: http or https, a host, no
// user info, path, query or fragment.
func parseUpstreamURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%q: %v", raw, err)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("%q: want http:// or https://", raw)
	case u.Host == "" || u.Hostname() == "":
		return nil, fmt.Errorf("%q has no host", raw)
	case u.User != nil:
		return nil, fmt.Errorf("%q: no credentials in the URL (clients send their own)", raw)
	case strings.Trim(u.Path, "/") != "" || u.RawQuery != "" || u.Fragment != "":
		return nil, fmt.Errorf("%q: want scheme://host[:port] only", raw)
	}
	return &url.URL{Scheme: u.Scheme, Host: strings.ToLower(u.Host)}, nil
}
