package registryproxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/pouchfly/pouchfly/internal/errdefs"
)

// upstream is a registry and how to reach it.
type upstream struct {
	registry string   // as clients name it (docker.io)
	base     *url.URL // scheme://host[:port]
	client   *http.Client
}

// url returns the upstream URL of a /v2/ path (already validated, so
// it needs no escaping).
func (u *upstream) url(path, rawQuery string) string {
	v := *u.base
	v.Path = path
	v.RawQuery = rawQuery
	return v.String()
}

// newTransport returns a transport trusting the system CAs plus caFile,
// or nothing when insecure; dial, TLS and header timeouts are bounded.
func newTransport(caFile string, insecure bool) (*http.Transport, error) {
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:     true,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
		ExpectContinueTimeout: time.Second,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		ReadBufferSize:        256 << 10,
	}
	if caFile == "" && !insecure {
		return tr, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if insecure {
		tc.InsecureSkipVerify = true
	}
	if caFile != "" {
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("ca_file: %w", err)
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca_file %s holds no PEM certificate: %w", caFile, errdefs.ErrInvalid)
		}
		tc.RootCAs = pool
	}
	tr.TLSClientConfig = tc
	return tr, nil
}

// newClient wraps rt in a client that never sends credentials across
// origins on a redirect.
func newClient(rt http.RoundTripper) *http.Client {
	return &http.Client{Transport: rt, CheckRedirect: stripCredentialsOnRedirect}
}

// stripCredentialsOnRedirect drops Authorization, Proxy-Authorization and
// Cookie from a redirected request whose origin (scheme, host and port)
// differs from the first request's. Go's client strips them only when the
// host name changes, not the port or scheme. It stops after 10 redirects.
func stripCredentialsOnRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= 10 {
		return errors.New("stopped after 10 redirects")
	}
	first := via[0].URL
	if !strings.EqualFold(req.URL.Scheme, first.Scheme) || !sameHostPort(req.URL, first) {
		req.Header.Del("Authorization")
		req.Header.Del("Proxy-Authorization")
		req.Header.Del("Cookie")
	}
	return nil
}

func sameHostPort(a, b *url.URL) bool {
	return strings.EqualFold(a.Hostname(), b.Hostname()) && portOf(a) == portOf(b)
}

func portOf(u *url.URL) string {
	if p := u.Port(); p != "" {
		return p
	}
	if strings.EqualFold(u.Scheme, "https") {
		return "443"
	}
	return "80"
}

// upstreams resolves registries to upstreams.
type upstreams struct {
	cfg        Config
	configured map[string]*upstream // canonical registry → upstream
	defaultRT  http.RoundTripper
	defaultCl  *http.Client
}

func newUpstreams(cfg Config) (*upstreams, error) {
	def, err := newTransport("", false)
	if err != nil {
		return nil, err
	}
	us := &upstreams{cfg: cfg, configured: map[string]*upstream{}, defaultRT: def, defaultCl: newClient(def)}
	for _, m := range cfg.Mirrors {
		base, err := parseUpstreamURL(m.URL)
		if err != nil {
			return nil, fmt.Errorf("mirror %s: %v: %w", m.Host, err, errdefs.ErrInvalid)
		}
		cl := us.defaultCl
		if m.CAFile != "" || m.Insecure {
			tr, err := newTransport(m.CAFile, m.Insecure)
			if err != nil {
				return nil, fmt.Errorf("mirror %s: %w", m.Host, err)
			}
			cl = newClient(tr)
		}
		reg := canonicalRegistry(m.Host)
		us.configured[reg] = &upstream{registry: reg, base: base, client: cl}
	}
	return us, nil
}

// get returns the upstream for a registry: the configured one, or with
// allowAny the built-in https one; nil when not allowed.
func (us *upstreams) get(registry string, allowAny bool) *upstream {
	reg := canonicalRegistry(registry)
	if u := us.configured[reg]; u != nil {
		return u
	}
	if !allowAny {
		return nil
	}
	base, err := parseUpstreamURL(builtinUpstream(reg))
	if err != nil {
		return nil
	}
	return &upstream{registry: reg, base: base, client: us.defaultCl}
}

// pick chooses the upstream of a request: ns=<registry>, else a Mirrors
// entry for the request's Host, else DefaultRegistry.
func (us *upstreams) pick(r *http.Request) (*upstream, *ociError) {
	if ns := r.URL.Query()["ns"]; len(ns) > 0 {
		if len(ns) > 1 || !validHost(ns[0]) {
			return nil, newError(http.StatusBadRequest, codeNameInvalid, "ns must be one registry host[:port]")
		}
		u := us.get(ns[0], us.cfg.AllowAnyRegistry)
		if u == nil {
			return nil, newError(http.StatusForbidden, codeDenied, fmt.Sprintf("registry %s is not mirrored here", canonicalRegistry(ns[0])))
		}
		return u, nil
	}
	if validHost(r.Host) {
		if u := us.configured[canonicalRegistry(r.Host)]; u != nil {
			return u, nil
		}
	}
	if us.cfg.DefaultRegistry == "" {
		return nil, newError(http.StatusNotFound, codeNameUnknown, "no registry named (ns=) and no default registry")
	}
	if u := us.get(us.cfg.DefaultRegistry, true); u != nil {
		return u, nil
	}
	return nil, newError(http.StatusNotFound, codeNameUnknown, "the default registry has no usable address")
}

// do sends one request upstream with the given headers, bounded by the
// upstream timeout (which also covers reading the body: close it before
// cancel runs). The caller closes the body and calls cancel.
func (us *upstreams) do(ctx context.Context, u *upstream, method, path, rawQuery string, h http.Header) (*http.Response, context.CancelFunc, error) {
	ctx, cancel := context.WithTimeout(ctx, us.cfg.UpstreamTimeout)
	req, err := http.NewRequestWithContext(ctx, method, u.url(path, rawQuery), nil)
	if err != nil {
		cancel()
		return nil, nil, err
	}
	req.Header = h
	resp, err := u.client.Do(req)
	if err != nil {
		cancel()
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // its text holds the URL
		}
		return nil, nil, err
	}
	return resp, cancel, nil
}

// drain reads a little of an unwanted body so the connection can be
// reused, and closes it.
func drain(b io.ReadCloser) {
	io.Copy(io.Discard, io.LimitReader(b, 64<<10))
	b.Close()
}

// OriginClient returns an HTTP client for the peer agent's back-to-source
// fetches (peer.Options.OriginClient): requests to a configured upstream
// use that upstream's TLS settings (CA file, insecure), others the system
// CAs; credentials never follow a redirect to another scheme, host or
// port. It reads the CA files; cfg should be valid.
func OriginClient(cfg Config) (*http.Client, error) {
	us, err := newUpstreams(cfg)
	if err != nil {
		return nil, err
	}
	rt := &routingTransport{def: us.defaultRT, byOrigin: map[string]http.RoundTripper{}}
	for _, u := range us.configured {
		if u.client != us.defaultCl {
			rt.byOrigin[originKey(u.base)] = u.client.Transport
		}
	}
	return newClient(rt), nil
}

// routingTransport picks a transport by the request's origin.
type routingTransport struct {
	def      http.RoundTripper
	byOrigin map[string]http.RoundTripper
}

func originKey(u *url.URL) string {
	return strings.ToLower(u.Scheme) + "://" + strings.ToLower(u.Hostname()) + ":" + portOf(u)
}

// RoundTrip implements http.RoundTripper.
func (t *routingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if rt := t.byOrigin[originKey(req.URL)]; rt != nil {
		return rt.RoundTrip(req)
	}
	return t.def.RoundTrip(req)
}

// CloseIdleConnections closes the idle connections of every transport.
func (t *routingTransport) CloseIdleConnections() {
	type closer interface{ CloseIdleConnections() }
	if c, ok := t.def.(closer); ok {
		c.CloseIdleConnections()
	}
	for _, rt := range t.byOrigin {
		if c, ok := rt.(closer); ok {
			c.CloseIdleConnections()
		}
	}
}
