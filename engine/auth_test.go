package engine

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/pouchfly/pouchfly/engine/api"
	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/test/registry"
)

// loginEngine returns an engine (not started: Login needs only the
// hosts files) whose registry reg resolves to url.
func loginEngine(t *testing.T, reg, url string) *Engine {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Home = t.TempDir()
	cfg.Mirror = ""
	cfg.Registries = []Registry{{Host: reg, Endpoint: url}}
	e, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.writeHosts(); err != nil {
		t.Fatal(err)
	}
	return e
}

func TestLoginTokenRegistry(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	reg, err := registry.Start(ctx, registry.Options{Auth: registry.AuthToken})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	e := loginEngine(t, reg.Host(), reg.URL())
	creds := reg.AdminCredentials()
	resp, err := e.Login(ctx, api.AuthConfig{Username: creds.Username, Password: creds.Password, ServerAddress: "http://" + reg.Host() + "/"})
	if err != nil || resp.Status != "Login Succeeded" {
		t.Fatalf("login with the right password: %+v, %v", resp, err)
	}
	_, err = e.Login(ctx, api.AuthConfig{Username: creds.Username, Password: "not-it", ServerAddress: reg.Host()})
	if !errors.Is(err, errdefs.ErrForbidden) || !strings.Contains(err.Error(), "incorrect username or password") {
		t.Errorf("login with a wrong password: %v, want ErrForbidden", err)
	}
	if strings.Contains(err.Error(), "not-it") {
		t.Errorf("the error shows the password: %v", err)
	}
	if _, err := e.Login(ctx, api.AuthConfig{Username: creds.Username, ServerAddress: reg.Host()}); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("login without a password: %v, want ErrInvalid", err)
	}
}

func TestLoginBasicAndUnreachable(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); ok && u == "alice" && p == "s3cret" {
			w.WriteHeader(http.StatusOK)
			return
		}
		w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
		w.WriteHeader(http.StatusUnauthorized)
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	e := loginEngine(t, host, srv.URL)
	ctx := context.Background()
	if _, err := e.Login(ctx, api.AuthConfig{Username: "alice", Password: "s3cret", ServerAddress: host}); err != nil {
		t.Errorf("basic login: %v", err)
	}
	if _, err := e.Login(ctx, api.AuthConfig{Username: "alice", Password: "nope", ServerAddress: host}); !errors.Is(err, errdefs.ErrForbidden) {
		t.Errorf("basic login, wrong password: %v", err)
	}
	// Nothing listens: unavailable, not forbidden.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	e = loginEngine(t, dead, "http://"+dead)
	if _, err := e.Login(ctx, api.AuthConfig{Username: "alice", Password: "s3cret", ServerAddress: dead}); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("login to a dead registry: %v, want ErrUnavailable", err)
	}
}

func TestAuthFor(t *testing.T) {
	a := &api.AuthConfig{Username: "u", Password: "p", ServerAddress: "https://Reg.Example:5000/"}
	if authFor("reg.example:5000", a) != a {
		t.Errorf("credentials for the registry were dropped")
	}
	if authFor("other.example", a) != nil {
		t.Errorf("credentials for reg.example:5000 would go to other.example")
	}
	if authFor("docker.io", &api.AuthConfig{Username: "u", Password: "p", ServerAddress: "https://index.docker.io/v1/"}) == nil {
		t.Errorf("Docker Hub's spellings do not match docker.io")
	}
	if authKey(nil) != "" || len(authKey(a)) != 16 || authKey(a) == authKey(&api.AuthConfig{Username: "u", Password: "q"}) {
		t.Errorf("authKey does not tell credentials apart: %q", authKey(a))
	}
}

func TestClassifyPullError(t *testing.T) {
	ref := "reg.example:5000/private/app:v1"
	for _, tc := range []struct {
		msg      string
		withAuth bool
		class    error
		hint     string
	}{
		{`failed to resolve reference: pull access denied, repository does not exist or may require authorization: server message: insufficient_scope: authorization failed`, false, errdefs.ErrForbidden, "requires credentials (pouch login reg.example:5000)"},
		{`failed to authorize: failed to fetch oauth token: unexpected status from GET request to http://reg.example:5000/token: 401 Unauthorized`, true, errdefs.ErrForbidden, "refused the credentials"},
		{`reg.example:5000/private/app:v1: not found`, false, errdefs.ErrNotFound, "image not found"},
		{`failed to extract layer: mkdir /x: permission denied`, false, errdefs.ErrUnavailable, ""},
		{`dial tcp 127.0.0.1:5000: connect: connection refused`, true, errdefs.ErrUnavailable, ""},
	} {
		err := classifyPullError(ref, tc.withAuth, errors.New(tc.msg))
		if !errors.Is(err, tc.class) || !strings.Contains(err.Error(), tc.hint) {
			t.Errorf("%q (credentials %v) → %v; want class %v and %q", tc.msg, tc.withAuth, err, tc.class, tc.hint)
		}
	}
}
