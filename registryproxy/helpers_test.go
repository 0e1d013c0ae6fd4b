package registryproxy

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/pouchfly/pouchfly/test/cluster"
	"github.com/pouchfly/pouchfly/test/origin"
)

// One in-process cluster (supernode + 2 agents) serves every test that
// needs real P2P downloads; tests use distinct blobs, so they do not
// interfere.
var (
	clusterOnce sync.Once
	testCluster *cluster.Cluster
	clusterErr  error
	clusterDir  string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if testCluster != nil {
		testCluster.Close()
	}
	if clusterDir != "" {
		os.RemoveAll(clusterDir)
	}
	os.Exit(code)
}

func agents(t testing.TB) *cluster.Cluster {
	t.Helper()
	clusterOnce.Do(func() {
		clusterDir, clusterErr = os.MkdirTemp("", "registryproxy-test-")
		if clusterErr != nil {
			return
		}
		testCluster, clusterErr = cluster.New(clusterDir, cluster.Options{Peers: 2})
		if clusterErr != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		clusterErr = testCluster.WaitConnected(ctx)
	})
	if clusterErr != nil {
		t.Fatal(clusterErr)
	}
	return testCluster
}

func testLogger() *slog.Logger {
	if os.Getenv("POUCHFLY_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// baseConfig serves fake.test (the default registry) from reg.
func baseConfig(reg *fakeRegistry) Config {
	cfg := DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.DefaultRegistry = "fake.test"
	cfg.AllowAnyRegistry = false
	cfg.UpstreamTimeout = 15 * time.Second
	if reg != nil {
		cfg.Mirrors = []Upstream{{Host: "fake.test", URL: reg.srv.URL}}
	}
	return cfg
}

// startMirror serves a mirror on a loopback port until the test ends.
func startMirror(t testing.TB, cfg Config, agent Agent, opts Options) (*Mirror, string) {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger()
	}
	m, err := New(cfg, agent, opts)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	scheme := "http://"
	if cfg.TLSCert != "" {
		scheme = "https://"
	}
	return m, scheme + ln.Addr().String()
}

// env is a fake upstream and a mirror in front of it on agent 0.
type env struct {
	t   *testing.T
	reg *fakeRegistry
	m   *Mirror
	url string
}

func newEnv(t *testing.T, adjust ...func(*Config)) *env {
	t.Helper()
	c := agents(t)
	reg := newFakeRegistry(t)
	cfg := baseConfig(reg)
	for _, f := range adjust {
		f(&cfg)
	}
	m, u := startMirror(t, cfg, c.Peers[0].Peer, Options{})
	return &env{t: t, reg: reg, m: m, url: u}
}

var testClient = &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{DisableCompression: true}}

type answer struct {
	status int
	header http.Header
	body   []byte
	err    error // reading the body
}

// do sends a request (headers as "K: V" strings) and reads the answer.
func do(t testing.TB, method, url string, headers ...string) answer {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range headers {
		k, v, _ := strings.Cut(h, ":")
		req.Header.Add(strings.TrimSpace(k), strings.TrimSpace(v))
	}
	resp, err := testClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return answer{status: resp.StatusCode, header: resp.Header, body: b, err: err}
}

// wantOCI checks an OCI error answer.
func wantOCI(t testing.TB, what string, a answer, status int, code string) {
	t.Helper()
	if a.status != status {
		t.Errorf("%s: status %d, want %d (body %.200s)", what, a.status, status, a.body)
		return
	}
	if ct := a.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s: Content-Type %q, want application/json", what, ct)
	}
	var body struct {
		Errors []struct{ Code, Message string }
	}
	if len(a.body) == 0 {
		return // HEAD
	}
	if err := json.Unmarshal(a.body, &body); err != nil || len(body.Errors) == 0 {
		t.Errorf("%s: not an OCI error body: %q", what, a.body)
		return
	}
	if code != "" && body.Errors[0].Code != code {
		t.Errorf("%s: code %s, want %s (%s)", what, body.Errors[0].Code, code, body.Errors[0].Message)
	}
}

func x509MarshalKey(k any) ([]byte, error) { return x509.MarshalPKCS8PrivateKey(k) }

// metricValue reads a counter's (or a histogram's sample count) value.
// settled returns m's value once it reaches want, or its last value after 5 s.
// A handler counts its request after the response is written, so a client
// can read the whole answer before the count moves.
func settled(m prometheus.Metric, want float64) float64 {
	deadline := time.Now().Add(5 * time.Second)
	for {
		v := metricValue(m)
		if v >= want || time.Now().After(deadline) {
			return v
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func metricValue(m prometheus.Metric) float64 {
	var pb dto.Metric
	if err := m.Write(&pb); err != nil {
		return -1
	}
	switch {
	case pb.Counter != nil:
		return pb.Counter.GetValue()
	case pb.Histogram != nil:
		return float64(pb.Histogram.GetSampleCount())
	case pb.Gauge != nil:
		return pb.Gauge.GetValue()
	}
	return -1
}

// randomBlob returns n fresh random bytes: blobs differ between tests and
// between -count runs, which share one cluster (and its stores).
func randomBlob(n int64) []byte { return origin.Random(n, rand.Uint64()) }
