package engine

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	dauth "github.com/containerd/containerd/v2/core/remotes/docker/auth"
	"github.com/containerd/containerd/v2/core/remotes/docker/config"
	remoteserrors "github.com/containerd/containerd/v2/core/remotes/errors"

	"github.com/pouchfly/pouchfly/engine/api"
	"github.com/pouchfly/pouchfly/internal/errdefs"
)

// Private registries. pouch keeps the user's credentials (pouch login, a
// Docker-style config.json in the user's home) and sends them with each
// pull in the X-Registry-Auth header; pouchd holds them only for that
// pull, in memory, and never logs them. They go where Docker's would: to
// the token realm (or as basic auth) named by a challenge of the
// registry, or of the agent's mirror, which relays the registry's
// challenge and passes the resulting Authorization upstream. The agent
// lets a blob into P2P only after the registry accepted that
// Authorization for the repository.

// hostsFor returns the resolver's hosts for registry (the agent's mirror
// first, then the registry's own endpoint, as hosts.toml says), with
// auth's credentials given only to those hosts.
func (e *Engine) hostsFor(ctx context.Context, registry string, auth *api.AuthConfig) ([]docker.RegistryHost, error) {
	plain := config.ConfigureHosts(ctx, config.HostOptions{HostDir: config.HostDirFromRoot(e.certsDir)})
	hosts, err := plain(registry)
	if err != nil || auth == nil {
		return hosts, err
	}
	allowed := map[string]bool{registry: true}
	for _, h := range hosts {
		allowed[h.Host] = true
	}
	creds := func(host string) (string, string, error) {
		if !allowed[host] {
			return "", "", nil
		}
		if auth.IdentityToken != "" {
			return "", auth.IdentityToken, nil
		}
		return auth.Username, auth.Password, nil
	}
	return config.ConfigureHosts(ctx, config.HostOptions{HostDir: config.HostDirFromRoot(e.certsDir), Credentials: creds})(registry)
}

// pullResolver returns the resolver of one pull of ref's registry.
func (e *Engine) pullResolver(ctx context.Context, auth *api.AuthConfig) docker.ResolverOptions {
	return docker.ResolverOptions{Hosts: func(registry string) ([]docker.RegistryHost, error) {
		return e.hostsFor(ctx, registry, auth)
	}}
}

// authFor keeps auth only when it is meant for registry (credentials for
// another registry are never sent to this one).
func authFor(registry string, auth *api.AuthConfig) *api.AuthConfig {
	if auth == nil {
		return nil
	}
	if auth.ServerAddress != "" {
		if r, err := api.NormalizeRegistry(auth.ServerAddress); err != nil || r != registry {
			return nil
		}
	}
	return auth
}

// authKey tells pulls with different credentials apart without keeping
// the credentials in the key.
func authKey(auth *api.AuthConfig) string {
	if auth == nil {
		return ""
	}
	h := sha256.Sum256([]byte(auth.Username + "\x00" + auth.Password + "\x00" + auth.IdentityToken))
	return hex.EncodeToString(h[:8])
}

// errUnauthorized is a registry's no to a login.
var errUnauthorized = errors.New("unauthorized: incorrect username or password")

// Login answers POST /auth: it checks a's credentials with the registry
// (through the agent's mirror when it is up, as pulls go) the way docker
// login does: GET /v2/, and on a challenge fetch a token (or retry with
// basic auth) with the credentials. pouchd stores nothing; pouch keeps
// the credentials. Wrong credentials are errdefs.ErrForbidden; an
// unreachable registry errdefs.ErrUnavailable.
func (e *Engine) Login(ctx context.Context, a api.AuthConfig) (api.AuthResponse, error) {
	registry, err := api.NormalizeRegistry(a.ServerAddress)
	if err != nil {
		return api.AuthResponse{}, err
	}
	if a.Username == "" || (a.Password == "" && a.IdentityToken == "") {
		return api.AuthResponse{}, fmt.Errorf("login to %s: a username and a password are required: %w", registry, errdefs.ErrInvalid)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	hosts, err := e.hostsFor(ctx, registry, nil)
	if err != nil {
		return api.AuthResponse{}, fmt.Errorf("login to %s: %w", registry, err)
	}
	var lastErr error
	for _, h := range hosts {
		err := loginHost(ctx, h, registry, a)
		if err == nil {
			e.log.Info("login succeeded", "registry", registry, "via", h.Host)
			return api.AuthResponse{Status: "Login Succeeded"}, nil
		}
		if errors.Is(err, errUnauthorized) {
			e.log.Info("login refused", "registry", registry, "via", h.Host)
			return api.AuthResponse{}, fmt.Errorf("login to %s: %w: %w", registry, err, errdefs.ErrForbidden)
		}
		e.log.Debug("login: host unusable, trying the next", "registry", registry, "host", h.Host, "err", err)
		lastErr = err
	}
	if lastErr == nil {
		lastErr = errors.New("no host configured")
	}
	return api.AuthResponse{}, fmt.Errorf("login to %s: %v: %w", registry, lastErr, errdefs.ErrUnavailable)
}

// loginHost tries the login on one host: nil when the registry accepted
// the credentials, errUnauthorized when it refused them, another error
// when the host could not tell (down, not a registry).
func loginHost(ctx context.Context, h docker.RegistryHost, registry string, a api.AuthConfig) error {
	cl := h.Client
	if cl == nil {
		cl = http.DefaultClient
	}
	u := url.URL{Scheme: h.Scheme, Host: h.Host, Path: strings.TrimSuffix(h.Path, "/") + "/"}
	if h.Host != registry && !(registry == "docker.io" && h.Host == "registry-1.docker.io") {
		u.RawQuery = url.Values{"ns": {registry}}.Encode() // a mirror: name the upstream
	}
	get := func(user, pass string) (*http.Response, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
		if err != nil {
			return nil, err
		}
		if user != "" {
			req.SetBasicAuth(user, pass)
		}
		resp, err := cl.Do(req)
		if err != nil {
			return nil, err
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		return resp, nil
	}
	resp, err := get("", "")
	if err != nil {
		return err
	}
	switch resp.StatusCode {
	case http.StatusOK:
		return nil // the registry needs no credentials
	case http.StatusUnauthorized:
	default:
		return fmt.Errorf("GET %s: %s", u.Redacted(), resp.Status)
	}
	secret := a.Password
	if a.IdentityToken != "" {
		secret = a.IdentityToken
	}
	for _, c := range dauth.ParseAuthHeader(resp.Header) {
		switch c.Scheme {
		case dauth.BearerAuth:
			to, err := dauth.GenerateTokenOptions(ctx, h.Host, a.Username, secret, c)
			if err != nil {
				return err
			}
			if a.IdentityToken != "" {
				_, err = dauth.FetchTokenWithOAuth(ctx, cl, nil, "pouch", to)
			} else {
				_, err = dauth.FetchToken(ctx, cl, nil, to)
			}
			if err == nil {
				return nil
			}
			var re remoteserrors.ErrUnexpectedStatus
			if errors.As(err, &re) && (re.StatusCode == http.StatusUnauthorized || re.StatusCode == http.StatusForbidden) {
				return errUnauthorized
			}
			return fmt.Errorf("token: %w", err)
		case dauth.BasicAuth:
			resp, err := get(a.Username, secret)
			if err != nil {
				return err
			}
			switch resp.StatusCode {
			case http.StatusOK:
				return nil
			case http.StatusUnauthorized, http.StatusForbidden:
				return errUnauthorized
			}
			return fmt.Errorf("GET %s: %s", u.Redacted(), resp.Status)
		}
	}
	return fmt.Errorf("GET %s: 401 without a usable challenge", u.Redacted())
}
