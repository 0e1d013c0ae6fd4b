// Package registry runs a real OCI distribution registry
// (github.com/distribution/distribution/v3) in-process, for tests, the demo
// and benchmarks: filesystem storage in a directory, plain HTTP or TLS with a
// generated CA, optional token auth with an in-process token server (public
// repositories pull anonymously, private ones need a user's password), and
// egress accounting so a test can assert how many bytes the origin sent.
//
// It also generates test images in code (GenerateImage: random gzip'd tar
// layers, OCI configs, manifests and a multi-platform index) and pushes them
// over the registry HTTP API (Client, Push).
//
// Distribution logs through logrus' standard logger; Start silences it
// (process-wide) unless Options.Verbose is set.
package registry

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	"github.com/sirupsen/logrus"

	// The storage driver and access controller register themselves by name.
	_ "github.com/distribution/distribution/v3/registry/auth/token"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"

	"github.com/pouchfly/pouchfly/internal/errdefs"
)

// Default credentials of the user that Start creates when token auth is on
// and Options.Users is empty.
const (
	DefaultUser     = "pouchfly"
	DefaultPassword = "pouchfly-secret"
)

// BroadcasterGoroutine is the top function of the one goroutine per
// Registry that outlives Close: distribution's App starts an event
// broadcaster that App.Shutdown never stops (v3.1.2). It idles in a select
// and holds no socket or file. Leak checks ignore it with
// goleak.IgnoreTopFunction(registry.BroadcasterGoroutine).
const BroadcasterGoroutine = "github.com/docker/go-events.(*Broadcaster).run"

// Service is the token service name (the JWT audience and the challenge's
// service parameter).
const Service = "pouchfly-test-registry"

// Issuer is the issuer of the tokens that the in-process token server signs.
const Issuer = "pouchfly-test-token-server"

// AuthMode selects how the registry authenticates clients.
type AuthMode int

const (
	// AuthNone: anyone may pull and push.
	AuthNone AuthMode = iota
	// AuthToken: distribution's token access controller plus the
	// in-process token server at /token (Docker registry token protocol,
	// both GET with basic auth and the OAuth2 POST form).
	AuthToken
)

// Options configures Start. The zero value is a plain-HTTP registry without
// auth on 127.0.0.1 with a random port and storage in a temp directory.
type Options struct {
	// Addr to listen on, host:port (default 127.0.0.1:0). The host part can
	// be any local address, e.g. an IP inside a network namespace.
	Addr string
	// Listener, if set, is used instead of listening on Addr (Close closes it).
	Listener net.Listener
	// Dir holds the storage (and the token signing cert). Default: a new
	// temp directory, removed by Close.
	Dir string
	// TLS serves HTTPS with these files (see GenerateCerts).
	TLS *Certs
	// SelfSignedTLS generates a CA and a server certificate for the
	// listening IP (plus localhost, 127.0.0.1, ::1) into Dir and serves
	// HTTPS with it; Registry.Certs returns them. Ignored when TLS is set.
	SelfSignedTLS bool
	// Auth selects the access control (default AuthNone).
	Auth AuthMode
	// Users maps user name → password for the token server. Default (with
	// AuthToken): DefaultUser / DefaultPassword.
	Users map[string]string
	// IsPrivate tells whether a repository needs credentials to pull.
	// Default: names starting with "private/". Pushing always needs
	// credentials under AuthToken.
	IsPrivate func(repo string) bool
	// TokenTTL is how long issued tokens are valid (default 5 minutes).
	TokenTTL time.Duration
	// ExternalHost overrides the host:port used in the token realm URL
	// (default: the listening address; 127.0.0.1 when listening on an
	// unspecified address).
	ExternalHost string
	// Wrap, if set, wraps the whole handler (registry + token server), e.g.
	// to inject faults or delays. Egress is counted outside of it.
	Wrap func(http.Handler) http.Handler
	// Verbose keeps distribution's logrus output (info level, to stderr).
	// Otherwise Start discards logrus output process-wide.
	Verbose bool
}

// Registry is a running in-process registry. Its methods are safe for
// concurrent use.
type Registry struct {
	url     string
	host    string
	dir     string
	ownDir  bool
	certs   *Certs
	auth    AuthMode
	users   map[string]string
	app     *handlers.App
	srv     *http.Server
	ln      net.Listener
	egress  *egressCounter
	tokens  *tokenServer
	serveWG sync.WaitGroup
	closeMu sync.Mutex
	closed  bool
}

var logrusMu sync.Mutex

// Start runs a registry as configured by opts and returns once it accepts
// connections. The caller must Close it. ctx bounds only the start-up; the
// registry runs until Close.
func Start(ctx context.Context, opts Options) (reg *Registry, err error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	logrusMu.Lock()
	if opts.Verbose {
		logrus.SetOutput(os.Stderr)
		logrus.SetLevel(logrus.InfoLevel)
	} else {
		logrus.SetOutput(io.Discard)
		logrus.SetLevel(logrus.PanicLevel)
	}
	logrusMu.Unlock()

	r := &Registry{auth: opts.Auth, dir: opts.Dir}
	defer func() {
		if err != nil {
			r.cleanup()
		}
	}()
	if r.dir == "" {
		if r.dir, err = os.MkdirTemp("", "pouchfly-registry-*"); err != nil {
			return nil, fmt.Errorf("registry: temp dir: %w", err)
		}
		r.ownDir = true
	}
	if err := os.MkdirAll(filepath.Join(r.dir, "storage"), 0o755); err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}

	r.ln = opts.Listener
	if r.ln == nil {
		addr := opts.Addr
		if addr == "" {
			addr = "127.0.0.1:0"
		}
		var lc net.ListenConfig
		if r.ln, err = lc.Listen(ctx, "tcp", addr); err != nil {
			return nil, fmt.Errorf("registry: listen %s: %w", addr, err)
		}
	}
	tcpAddr, _ := r.ln.Addr().(*net.TCPAddr)
	r.host = r.ln.Addr().String()
	if tcpAddr != nil && tcpAddr.IP.IsUnspecified() {
		r.host = net.JoinHostPort("127.0.0.1", fmt.Sprint(tcpAddr.Port))
	}
	if opts.ExternalHost != "" {
		r.host = opts.ExternalHost
	}

	r.certs = opts.TLS
	if r.certs == nil && opts.SelfSignedTLS {
		hosts := []string{"localhost", "127.0.0.1", "::1"}
		if h, _, err := net.SplitHostPort(r.host); err == nil {
			hosts = append(hosts, h)
		}
		if tcpAddr != nil && !tcpAddr.IP.IsUnspecified() {
			hosts = append(hosts, tcpAddr.IP.String())
		}
		if r.certs, err = GenerateCerts(filepath.Join(r.dir, "tls"), hosts...); err != nil {
			return nil, err
		}
	}
	scheme := "http"
	if r.certs != nil {
		scheme = "https"
	}
	r.url = scheme + "://" + r.host

	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return nil, err
	}
	cfg := &configuration.Configuration{
		Storage: configuration.Storage{
			"filesystem": configuration.Parameters{"rootdirectory": filepath.Join(r.dir, "storage")},
			"maintenance": configuration.Parameters{
				"uploadpurging": map[any]any{"enabled": false},
			},
			"delete": configuration.Parameters{"enabled": true},
		},
	}
	cfg.HTTP.Secret = hex.EncodeToString(secret)
	cfg.Catalog.MaxEntries = 1000

	switch opts.Auth {
	case AuthNone:
	case AuthToken:
		r.users = opts.Users
		if len(r.users) == 0 {
			r.users = map[string]string{DefaultUser: DefaultPassword}
		}
		isPrivate := opts.IsPrivate
		if isPrivate == nil {
			isPrivate = DefaultIsPrivate
		}
		ttl := opts.TokenTTL
		if ttl <= 0 {
			ttl = 5 * time.Minute
		}
		if r.tokens, err = newTokenServer(r.users, isPrivate, ttl); err != nil {
			return nil, err
		}
		bundle := filepath.Join(r.dir, "token-signer.pem")
		if err := os.WriteFile(bundle, r.tokens.certPEM, 0o644); err != nil {
			return nil, fmt.Errorf("registry: %w", err)
		}
		cfg.Auth = configuration.Auth{"token": configuration.Parameters{
			"realm":          r.url + TokenPath,
			"service":        Service,
			"issuer":         Issuer,
			"rootcertbundle": bundle,
		}}
	default:
		return nil, fmt.Errorf("registry: unknown auth mode %d: %w", opts.Auth, errdefs.ErrInvalid)
	}

	if r.app, err = newApp(cfg); err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	if r.tokens != nil {
		mux.Handle(TokenPath, r.tokens)
	}
	mux.Handle("/", r.app)
	var h http.Handler = mux
	if opts.Wrap != nil {
		h = opts.Wrap(h)
	}
	var tlsCfg *tls.Config
	if r.certs != nil {
		if tlsCfg, err = r.certs.ServerTLS(); err != nil {
			return nil, err
		}
	}
	r.egress = newEgressCounter()
	r.srv = &http.Server{
		Handler:           r.egress.wrap(h),
		ReadHeaderTimeout: 30 * time.Second,
		TLSConfig:         tlsCfg,
	}
	if !opts.Verbose {
		r.srv.ErrorLog = log.New(io.Discard, "", 0)
	}
	ln := r.ln
	r.serveWG.Add(1)
	go func() {
		defer r.serveWG.Done()
		var err error
		if r.certs != nil {
			err = r.srv.ServeTLS(ln, "", "")
		} else {
			err = r.srv.Serve(ln)
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			logrus.Errorf("pouchfly test registry: serve: %v", err)
		}
	}()
	return r, nil
}

// newApp builds distribution's handler; NewApp panics on bad config.
func newApp(cfg *configuration.Configuration) (app *handlers.App, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("registry: distribution refused the config: %v", p)
		}
	}()
	return handlers.NewApp(context.Background(), cfg), nil
}

// DefaultIsPrivate is the default Options.IsPrivate: repositories whose
// name starts with "private/" need credentials to pull; every other one
// (e.g. "public/app", "library/busybox") pulls anonymously.
func DefaultIsPrivate(repo string) bool {
	return strings.HasPrefix(repo, "private/")
}

// URL is the registry base URL, e.g. http://127.0.0.1:40123 (no /v2/).
func (r *Registry) URL() string { return r.url }

// Host is the registry's host:port as clients address it (the reference
// prefix, e.g. 127.0.0.1:40123/public/app:v1).
func (r *Registry) Host() string { return r.host }

// Dir is the directory holding the registry's storage.
func (r *Registry) Dir() string { return r.dir }

// Certs returns the TLS files the registry serves with (nil for plain HTTP).
func (r *Registry) Certs() *Certs { return r.certs }

// TokenRealm is the token server URL given in challenges ("" without auth).
func (r *Registry) TokenRealm() string {
	if r.tokens == nil {
		return ""
	}
	return r.url + TokenPath
}

// AdminCredentials returns credentials that may push and pull everything:
// the first user in sorted order (DefaultUser by default), or empty
// credentials without auth.
func (r *Registry) AdminCredentials() Credentials {
	if r.auth == AuthNone {
		return Credentials{}
	}
	var best string
	for u := range r.users {
		if best == "" || u < best {
			best = u
		}
	}
	return Credentials{Username: best, Password: r.users[best]}
}

// HTTPClient returns a client that trusts the registry's CA (a plain client
// for HTTP registries).
func (r *Registry) HTTPClient() *http.Client {
	c := &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	if r.certs != nil {
		c.Transport.(*http.Transport).TLSClientConfig = r.certs.ClientTLS()
	}
	return c
}

// Client returns a registry API client with creds, trusting the
// registry's CA.
func (r *Registry) Client(creds Credentials) *Client {
	c, err := NewClient(r.url, creds, r.HTTPClient())
	if err != nil {
		panic(err) // r.url always parses
	}
	return c
}

// Push pushes img as repo:tag with the admin credentials (see Client.Push).
func (r *Registry) Push(ctx context.Context, repo, tag string, img *Image) error {
	return r.Client(r.AdminCredentials()).Push(ctx, repo, tag, img)
}

// Stats returns a snapshot of the egress counters.
func (r *Registry) Stats() Stats { return r.egress.snapshot() }

// Egress is the total number of response body bytes sent (registry and
// token server, every method), since Start or the last ResetStats.
func (r *Registry) Egress() int64 { return r.egress.total.Load() }

// BlobEgress is the number of body bytes sent for blob GETs
// (/v2/<name>/blobs/<digest>), the "origin egress" of a P2P run.
func (r *Registry) BlobEgress() int64 { return r.egress.blob.Load() }

// ResetStats zeroes every counter (e.g. after pushing the test images).
func (r *Registry) ResetStats() { r.egress.reset() }

// Close stops serving (waiting up to 5 s for requests in flight, then
// dropping them), shuts the app down and removes the temp directory if
// Start made it. Close is idempotent.
func (r *Registry) Close() error {
	r.closeMu.Lock()
	defer r.closeMu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := r.srv.Shutdown(ctx)
	if err != nil {
		err = r.srv.Close()
	}
	r.serveWG.Wait()
	if aerr := r.app.Shutdown(); aerr != nil && err == nil {
		err = aerr
	}
	r.cleanup()
	return err
}

func (r *Registry) cleanup() {
	if r.srv == nil {
		// Start failed before serving: nothing owns the listener yet.
		if r.ln != nil {
			_ = r.ln.Close()
		}
		if r.app != nil {
			_ = r.app.Shutdown()
		}
	}
	if r.ownDir && r.dir != "" {
		_ = os.RemoveAll(r.dir)
	}
}
