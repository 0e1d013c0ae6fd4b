package httpapi

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pouchfly/pouchfly/internal/httpserver"
	"github.com/pouchfly/pouchfly/supernode/preheat"
)

const fuzzToken = "fuzz-admin-token-0123456789"

type noNetwork struct{}

func (noNetwork) RoundTrip(*http.Request) (*http.Response, error) {
	return nil, errors.New("fuzz: no network")
}

// FuzzAPI sends any request to the supernode's HTTP API as the node
// serves it (body bounds included), with the admin token required: it
// never panics, admin actions never pass without the token, and every
// answer is a valid status.
func FuzzAPI(f *testing.F) {
	cfg := DefaultConfig()
	cfg.Token = fuzzToken
	cfg.Webhook.Enabled = true
	cfg.Webhook.SecretFile = filepath.Join(f.TempDir(), "secret")
	if err := os.WriteFile(cfg.Webhook.SecretFile, []byte("fuzz-webhook-secret"), 0o600); err != nil {
		f.Fatal(err)
	}
	m, err := preheat.New(cfg.Preheat, fakeSched{}, preheat.Options{Client: &http.Client{Transport: noNetwork{}}})
	if err != nil {
		f.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	s, err := New(cfg, fakeSched{}, m, Options{Gatherer: reg, SupernodeID: "sn-fuzz"})
	if err != nil {
		f.Fatal(err)
	}
	reg.MustRegister(s.Collectors()...)
	mux := http.NewServeMux()
	s.Register(mux)
	h := httpserver.BoundBody(mux, int64(cfg.MaxBodyBytes), time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	go func() { m.Run(ctx); done <- struct{}{} }()
	go func() { s.Run(ctx); done <- struct{}{} }()
	f.Cleanup(func() { cancel(); <-done; <-done })
	f.Fuzz(func(t *testing.T, method, target, hk, hv string, body []byte, admin bool) {
		var b strings.Builder
		fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: fuzz\r\n", method, target)
		if hk != "" {
			fmt.Fprintf(&b, "%s: %s\r\n", hk, hv)
		}
		if admin {
			b.WriteString("Authorization: Bearer " + fuzzToken + "\r\n")
		}
		if len(body) > 0 {
			fmt.Fprintf(&b, "Content-Length: %d\r\n", len(body))
		}
		b.WriteString("\r\n")
		b.Write(body)
		r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(b.String())))
		if err != nil {
			return
		}
		r.RemoteAddr = "127.0.0.1:40000"
		// Event streams end with the request.
		rctx, rcancel := context.WithTimeout(r.Context(), 150*time.Millisecond)
		defer rcancel()
		r = r.WithContext(rctx)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code < 200 || w.Code > 599 {
			t.Fatalf("status %d", w.Code)
		}
		tokenOK := strings.TrimSpace(strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")) == fuzzToken
		if (r.Method == http.MethodPost || r.Method == http.MethodDelete) && strings.HasPrefix(r.URL.Path, "/api/") &&
			w.Code < 300 && !tokenOK {
			t.Fatalf("%s %s passed without the admin token: %d", method, target, w.Code)
		}
	})
}
