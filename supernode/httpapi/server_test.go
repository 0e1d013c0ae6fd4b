package httpapi

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	schedulerv1 "github.com/pouchfly/pouchfly/api/scheduler/v1"
	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/scheduler"
	"github.com/pouchfly/pouchfly/supernode/dashboard"
	"github.com/pouchfly/pouchfly/supernode/preheat"
)

type fakeSched struct{}

func (fakeSched) Snapshot() scheduler.Snapshot {
	return scheduler.Snapshot{Time: time.Now(), Hosts: []scheduler.HostSnapshot{
		{ID: "cdn-x", CDN: true, State: "active"},
		{ID: "<script>alert(1)</script>", State: "quarantined", BadPieces: 3, QuarantinedAfter: 3},
	}, Tasks: []scheduler.TaskSnapshot{{ID: "sha256:" + strings.Repeat("b", 64), ContentLength: 10, PieceSize: 4, PieceCount: 3, Seed: "done",
		Peers: []scheduler.PeerSnapshot{{HostID: "cdn-x", CDN: true, Pieces: 3}, {HostID: "h", Pieces: 3, Done: true}}}},
		Quarantined: []string{"<script>alert(1)</script>"}}
}
func (fakeSched) Release(id string) bool                       { return id == "liar" }
func (fakeSched) Preseed(scheduler.SeedRequest) (bool, error)  { return false, nil }
func (fakeSched) Prefetch(string, *schedulerv1.Prefetch) error { return nil }

func newServer(t *testing.T, mod func(*Config)) (*Server, string) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.EventsInterval = 100 * time.Millisecond
	if mod != nil {
		mod(&cfg)
	}
	m, err := preheat.New(cfg.Preheat, fakeSched{}, preheat.Options{})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	s, err := New(cfg, fakeSched{}, m, Options{Gatherer: reg, SupernodeID: "sn-test"})
	if err != nil {
		t.Fatal(err)
	}
	reg.MustRegister(s.Collectors()...)
	mux := http.NewServeMux()
	s.Register(mux)
	srv := httptest.NewServer(mux)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	go func() { m.Run(ctx); done <- struct{}{} }()
	go func() { s.Run(ctx); done <- struct{}{} }()
	t.Cleanup(func() { cancel(); <-done; <-done; srv.Close() })
	return s, srv.URL
}

func call(t *testing.T, method, url string, hdr map[string]string, body string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mod := range map[string]func(*Config){
		"short token":     func(c *Config) { c.Token = "short" },
		"tiny body":       func(c *Config) { c.MaxBodyBytes = 10 },
		"no clients":      func(c *Config) { c.EventsMaxClients = 0 },
		"fast events":     func(c *Config) { c.EventsInterval = time.Millisecond },
		"webhook scope":   func(c *Config) { c.Webhook.Scope = "x" },
		"registry url":    func(c *Config) { c.Preheat.Registries = []preheat.Registry{{Host: "r:5000", URL: "ftp://r"}} },
		"active > kept":   func(c *Config) { c.Preheat.MaxActiveJobs = c.Preheat.MaxJobs + 1 },
		"cdn + selector":  func(c *Config) { c.Webhook.Scope, c.Webhook.Selector = "cdn", "a=b" },
		"webhook platfrm": func(c *Config) { c.Webhook.Platforms = []string{"linux"} },
	} {
		c := DefaultConfig()
		mod(&c)
		if err := c.Validate(); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestQuarantineRelease: lifting a quarantine is an admin route (token;
// refused read-only); an unknown or unquarantined host is 404.
func TestQuarantineRelease(t *testing.T) {
	const tok = "admin-token-0123456789"
	_, base := newServer(t, func(c *Config) { c.Token = tok })
	auth := map[string]string{"Authorization": "Bearer " + tok}
	for _, tc := range []struct {
		host string
		hdr  map[string]string
		code int
	}{
		{"liar", nil, 401},
		{"liar", map[string]string{"Authorization": "Bearer wrong-token-0123456789"}, 401},
		{"honest", auth, 404},
		{"liar", auth, 200},
	} {
		resp, body := call(t, http.MethodDelete, base+"/api/v1/quarantine/"+tc.host, tc.hdr, "")
		if resp.StatusCode != tc.code {
			t.Errorf("%s %v: %d %s, want %d", tc.host, tc.hdr, resp.StatusCode, body, tc.code)
		}
		if tc.code == 200 && body != `{"released":"liar"}`+"\n" {
			t.Errorf("body %q", body)
		}
	}
	_, ro := newServer(t, func(c *Config) { c.ReadOnly = true })
	if resp, body := call(t, http.MethodDelete, ro+"/api/v1/quarantine/liar", nil, ""); resp.StatusCode != 403 {
		t.Errorf("read-only: %d %s", resp.StatusCode, body)
	}
}

func TestTokenFileAndWebhook(t *testing.T) {
	dir := t.TempDir()
	tokFile, secFile, credFile := filepath.Join(dir, "token"), filepath.Join(dir, "secret"), filepath.Join(dir, "creds.yaml")
	os.WriteFile(tokFile, []byte("  file-token-0123456789abcdef\n"), 0o600)
	os.WriteFile(secFile, []byte("hook-secret\n"), 0o600)
	os.WriteFile(credFile, []byte("username: u\npassword: p\n"), 0o600)
	_, base := newServer(t, func(c *Config) {
		c.Token = "config-token-is-ignored"
		c.TokenFile = tokFile
		c.Webhook.Enabled, c.Webhook.SecretFile, c.Webhook.CredentialsFile = true, secFile, credFile
	})
	env := `{"events":[{"id":"1","action":"push","target":{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"sha256:` +
		strings.Repeat("c", 64) + `","repository":"team/app","tag":"v2","size":1,"url":"x"},"request":{"host":"reg.example:5000","method":"PUT"},"actor":{},"source":{}}]}`
	ct := "application/vnd.docker.distribution.events.v1+json"
	for _, tc := range []struct {
		hdr  map[string]string
		code int
	}{
		{map[string]string{"Content-Type": ct}, 401},
		{map[string]string{"Content-Type": ct, "Authorization": "Bearer config-token-is-ignored", WebhookSecretHeader: "hook-secret"}, 401},
		{map[string]string{"Content-Type": ct, "Authorization": "Bearer file-token-0123456789abcdef"}, 401},
		{map[string]string{"Content-Type": ct, "Authorization": "Bearer file-token-0123456789abcdef", WebhookSecretHeader: "wrong"}, 401},
		{map[string]string{"Content-Type": "text/plain", "Authorization": "Bearer file-token-0123456789abcdef", WebhookSecretHeader: "hook-secret"}, 415},
		{map[string]string{"Content-Type": ct, "Authorization": "Bearer file-token-0123456789abcdef", WebhookSecretHeader: "hook-secret"}, 200},
	} {
		resp, body := call(t, http.MethodPost, base+"/api/v1/webhooks/registry", tc.hdr, env)
		if resp.StatusCode != tc.code {
			t.Errorf("%v: %d %s, want %d", tc.hdr, resp.StatusCode, body, tc.code)
			continue
		}
		if tc.code == 401 && resp.Header.Get("WWW-Authenticate") == "" && !strings.Contains(body, WebhookSecretHeader) {
			t.Errorf("401 without a challenge: %s", body)
		}
		if tc.code == 200 {
			var res preheat.WebhookResult
			if err := json.Unmarshal([]byte(body), &res); err != nil || len(res.Jobs) != 1 {
				t.Fatalf("webhook result %s", body)
			}
			_, jb := call(t, http.MethodGet, base+"/api/v1/preheats/"+res.Jobs[0], nil, "")
			if !strings.Contains(jb, `"source":"webhook"`) || !strings.Contains(jb, "reg.example:5000/team/app:v2@sha256:") || strings.Contains(jb, `"p"`) {
				t.Errorf("webhook job %s", jb)
			}
		}
	}
	resp, body := call(t, http.MethodPost, base+"/api/v1/webhooks/registry", map[string]string{"Content-Type": ct,
		"Authorization": "Bearer file-token-0123456789abcdef", WebhookSecretHeader: "hook-secret"}, `{"events":`)
	if resp.StatusCode != 400 {
		t.Errorf("bad envelope: %d %s", resp.StatusCode, body)
	}
	// A token file with a short token refuses to start.
	os.WriteFile(tokFile, []byte("short"), 0o600)
	cfg := DefaultConfig()
	cfg.TokenFile = tokFile
	m, _ := preheat.New(cfg.Preheat, fakeSched{}, preheat.Options{})
	if _, err := New(cfg, fakeSched{}, m, Options{}); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("short token file: %v", err)
	}
}

// readEvent reads one SSE event's data.
func readEvent(t *testing.T, r *bufio.Reader) string {
	t.Helper()
	var data string
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("event stream: %v", err)
		}
		line = strings.TrimRight(line, "\n")
		if d, ok := strings.CutPrefix(line, "data: "); ok {
			data = d
		}
		if line == "" && data != "" {
			return data
		}
	}
}

func TestEventsBounded(t *testing.T) {
	_, base := newServer(t, func(c *Config) { c.EventsMaxClients = 1; c.EventsMaxAge = 2 * time.Second })
	resp, err := http.Get(base + "/api/v1/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	r := bufio.NewReader(resp.Body)
	var st dashboard.State
	for i := 0; i < 3; i++ { // the first at once, then one per interval
		if err := json.Unmarshal([]byte(readEvent(t, r)), &st); err != nil {
			t.Fatal(err)
		}
	}
	if st.Supernode != "sn-test" || len(st.Hosts) != 2 || len(st.Tasks) != 1 || st.Tasks[0].Percent != 100 || len(st.Quarantined) != 1 || st.AuthRequired {
		t.Errorf("state %+v", st)
	}
	// A second stream is refused while the first is open.
	r2, body := call(t, http.MethodGet, base+"/api/v1/events", nil, "")
	if r2.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "events_max_clients") {
		t.Errorf("second stream: %d %s", r2.StatusCode, body)
	}
	// The stream ends at events_max_age.
	start := time.Now()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("stream lasted %v past its max age", d)
	}
}

func TestDashboardAssets(t *testing.T) {
	_, base := newServer(t, nil)
	resp, body := call(t, http.MethodGet, base+"/", nil, "")
	if resp.StatusCode != 200 || !strings.Contains(body, "<title>Pouchfly") || !strings.Contains(resp.Header.Get("Content-Security-Policy"), "default-src 'self'") {
		t.Errorf("index: %d %q %.100s", resp.StatusCode, resp.Header.Get("Content-Security-Policy"), body)
	}
	for _, p := range []string{"/assets/app.js", "/assets/app.css"} {
		resp, body := call(t, http.MethodGet, base+p, nil, "")
		if resp.StatusCode != 200 || len(body) < 1000 {
			t.Errorf("%s: %d (%d bytes)", p, resp.StatusCode, len(body))
		}
		// Nothing comes from elsewhere.
		if strings.Contains(body, "http://") || strings.Contains(body, "https://") && !strings.Contains(body, `/^https?:\/\//`) {
			t.Errorf("%s references another origin", p)
		}
	}
	if resp, _ := call(t, http.MethodGet, base+"/assets/nope.js", nil, ""); resp.StatusCode != 404 {
		t.Errorf("unknown asset: %d", resp.StatusCode)
	}
	_, base = newServer(t, func(c *Config) { c.Dashboard = false })
	if resp, _ := call(t, http.MethodGet, base+"/", nil, ""); resp.StatusCode != 404 {
		t.Errorf("dashboard off: %d", resp.StatusCode)
	}
}

func TestTotalsFrom(t *testing.T) {
	reg := prometheus.NewRegistry()
	origin := prometheus.NewCounter(prometheus.CounterOpts{Name: dashboard.MetricCDNOrigin})
	up := prometheus.NewCounter(prometheus.CounterOpts{Name: dashboard.MetricCDNUpload})
	pb := prometheus.NewCounterVec(prometheus.CounterOpts{Name: dashboard.MetricPieceBytes}, []string{"source"})
	reg.MustRegister(origin, up, pb)
	origin.Add(100)
	up.Add(210)
	pb.WithLabelValues("cdn").Add(200)
	pb.WithLabelValues("p2p").Add(700)
	pb.WithLabelValues("origin").Add(100)
	tot, err := dashboard.TotalsFrom(reg)
	if err != nil {
		t.Fatal(err)
	}
	want := dashboard.Totals{OriginBytes: 200, CDNOriginBytes: 100, HostOriginBytes: 100, CDNBytes: 200, CDNServedBytes: 210, P2PBytes: 700,
		DeliveredBytes: 1000, SavedBytes: 800, SavedPercent: 80}
	if tot != want {
		t.Errorf("totals %+v, want %+v", tot, want)
	}
}
