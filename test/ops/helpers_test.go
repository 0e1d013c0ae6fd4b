// Package ops tests the operator's side of a cluster end to end: preheat
// through the supernode's API, the dashboard in a real browser, and the
// Prometheus metrics of the supernode and the agents.
package ops

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pouchfly/pouchfly/peer"
	"github.com/pouchfly/pouchfly/supernode"
	"github.com/pouchfly/pouchfly/supernode/httpapi"
	"github.com/pouchfly/pouchfly/supernode/preheat"
	"github.com/pouchfly/pouchfly/test/cluster"
	"github.com/pouchfly/pouchfly/test/registry"
)

// apiToken is the admin token of every test cluster.
const apiToken = "test-admin-token-0123456789"

// logBuffer collects every log line of a cluster (to check that no
// credential reaches the logs).
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(b)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// env is a token-auth registry holding a generated multi-platform image
// and a cluster whose supernode knows the registry.
type env struct {
	reg  *registry.Registry
	img  *registry.Image
	c    *cluster.Cluster
	logs *logBuffer
	api  *httpapi.Client
	base string // http://supernode-http
}

type envOptions struct {
	peers   int
	labels  func(i int) map[string]string
	image   registry.ImageOptions
	repo    string // pushed as repo:v1 (default private/app)
	nodeCfg func(*supernode.NodeConfig)
}

func startEnv(t *testing.T, o envOptions) *env {
	t.Helper()
	ctx := context.Background()
	e := &env{logs: &logBuffer{}}
	ln, err := net.Listen("tcp", "127.0.0.3:0")
	if err != nil {
		t.Fatal(err)
	}
	e.reg, err = registry.Start(ctx, registry.Options{Listener: ln, Auth: registry.AuthToken})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.reg.Close() })
	if e.img, err = registry.GenerateImage(o.image); err != nil {
		t.Fatal(err)
	}
	if o.repo == "" {
		o.repo = "private/app"
	}
	if err := e.reg.Push(ctx, o.repo, "v1", e.img); err != nil {
		t.Fatal(err)
	}
	e.reg.ResetStats()
	level := slog.LevelDebug
	handler := slog.Handler(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: level}))
	if os.Getenv("POUCHFLY_TEST_LOG") != "" {
		handler = slog.NewTextHandler(io.MultiWriter(e.logs, os.Stderr), &slog.HandlerOptions{Level: level})
	}
	e.c = cluster.Start(t, cluster.Options{
		Peers:  o.peers,
		Logger: slog.New(handler),
		Node: func(c *supernode.NodeConfig) {
			c.API.Token = apiToken
			c.API.EventsInterval = 300 * time.Millisecond
			c.API.Preheat.PollInterval = 200 * time.Millisecond
			c.API.Preheat.Registries = []preheat.Registry{{Host: e.reg.Host(), URL: e.reg.URL()}}
			if o.nodeCfg != nil {
				o.nodeCfg(c)
			}
		},
		Peer: func(i int, c *peer.Config) {
			if o.labels != nil {
				c.Labels = o.labels(i)
			}
		},
	})
	e.base = "http://" + e.c.Node.HTTPAddr()
	e.api = &httpapi.Client{Base: e.base, Token: apiToken}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := e.c.WaitConnected(wctx); err != nil {
		t.Fatal(err)
	}
	// Hosts are in the scheduler once their Hello went through.
	waitFor(t, 10*time.Second, "all hosts registered", func() bool {
		return len(e.c.Node.Scheduler().Snapshot().Hosts) == o.peers+1
	})
	return e
}

// waitFor polls cond every 50 ms until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// rawCall sends a request to the supernode's API and returns the status
// and body.
func rawCall(t *testing.T, method, url, token, ctype, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// errorMessage checks that body is a JSON error and returns its message.
func errorMessage(t *testing.T, body string) string {
	t.Helper()
	var e struct {
		Error string `json:"error"`
	}
	if err := json.Unmarshal([]byte(body), &e); err != nil || e.Error == "" {
		t.Fatalf("want a JSON error body, got %q", body)
	}
	return e.Error
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func mib(n int64) string { return fmt.Sprintf("%.2f MiB", float64(n)/(1<<20)) }

type supernodeConfig = supernode.NodeConfig
