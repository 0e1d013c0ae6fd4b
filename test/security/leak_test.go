package security

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"io/fs"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"

	schedulerv1 "github.com/pouchfly/pouchfly/api/scheduler/v1"
	"github.com/pouchfly/pouchfly/peer"
	"github.com/pouchfly/pouchfly/registryproxy"
	"github.com/pouchfly/pouchfly/test/cluster"
	"github.com/pouchfly/pouchfly/test/origin"
	"github.com/pouchfly/pouchfly/test/registry"
)

// Distinctive credentials: a hit on any of them is a leak, never chance.
const (
	regUser    = "leaktest"
	regPass    = "Leak-Registry-Pw-7f3a9c"
	originUser = "alice"
	originPass = "Leak-Origin-Pw-51be02"
)

// lockedBuffer collects the logs of every component.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]byte(nil), b.buf.Bytes()...)
}

// authRecorder remembers every Authorization a client sent (the basic
// strings and the bearer tokens the registry issued).
type authRecorder struct {
	mu    sync.Mutex
	seen  map[string]bool
	inner http.RoundTripper
}

func (a *authRecorder) RoundTrip(r *http.Request) (*http.Response, error) {
	if v := r.Header.Get("Authorization"); v != "" {
		a.mu.Lock()
		a.seen[v] = true
		a.mu.Unlock()
	}
	return a.inner.RoundTrip(r)
}

// secret is one credential and the name it is reported by.
type secret struct{ name, value string }

// secrets lists every form a credential may leak in: the passwords, the
// base64 basic strings, each bearer token, and the signature part of each
// token (a truncated log would still hold it).
func (a *authRecorder) secrets() []secret {
	b64 := func(u, p string) string { return base64.StdEncoding.EncodeToString([]byte(u + ":" + p)) }
	out := []secret{
		{"registry password", regPass}, {"origin password", originPass},
		{"registry basic string", b64(regUser, regPass)}, {"origin basic string", b64(originUser, originPass)},
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for v := range a.seen {
		if tok, ok := strings.CutPrefix(v, "Bearer "); ok {
			out = append(out, secret{"bearer token", tok})
			if i := strings.LastIndex(tok, "."); i >= 0 && len(tok)-i > 24 {
				out = append(out, secret{"bearer token signature", tok[i+1:]})
			}
		}
	}
	return out
}

// A private pull through the mirror (registry token auth) and dfget
// downloads with credentials (an Authorization header, and user info in
// the URL) against a basic-auth origin, each on two hosts so that the
// second host gets the content from the first: afterwards no credential
// appears in any component's logs, in any /metrics output, in the
// dashboard's state, in any file under any data directory, or in any
// packet the supernode sent to any host.
func TestCredentialsNeverLeak(t *testing.T) {
	logs := &lockedBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	prevDefault := slog.Default()
	slog.SetDefault(logger)
	log.SetOutput(logs) // servers' ErrorLog default
	t.Cleanup(func() { slog.SetDefault(prevDefault); log.SetOutput(os.Stderr) })

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	reg, err := registry.Start(ctx, registry.Options{Listener: ln, Auth: registry.AuthToken,
		ExternalHost: fmt.Sprintf("localhost:%d", ln.Addr().(*net.TCPAddr).Port), Users: map[string]string{regUser: regPass}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	img, err := registry.GenerateImage(registry.ImageOptions{Layers: 2, MinLayerSize: 1 << 20, MaxLayerSize: 3 << 20, Seed: 41})
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Push(ctx, "private/app", "v1", img); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	c, err := cluster.New(dir, cluster.Options{Peers: 2, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	var pmu sync.Mutex
	var packets []*schedulerv1.SchedulerPacket
	c.Node.Sessions().SetTap(func(_ string, p *schedulerv1.SchedulerPacket) {
		pmu.Lock()
		packets = append(packets, proto.Clone(p).(*schedulerv1.SchedulerPacket))
		pmu.Unlock()
	})
	if err := c.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}

	// Every host serves the mirror and the local API (as dfget daemon does).
	var mirrors []*registryproxy.Mirror
	var mirrorAddrs, sockets []string
	for i, p := range c.Peers {
		cfg := registryproxy.DefaultConfig()
		cfg.DefaultRegistry = reg.Host()
		cfg.Mirrors = []registryproxy.Upstream{{Host: reg.Host(), URL: reg.URL()}}
		m, err := registryproxy.New(cfg, p.Peer, registryproxy.Options{Logger: logger.With("host", p.HostID())})
		if err != nil {
			t.Fatal(err)
		}
		mln, err := net.Listen("tcp", peerIP(i)+":0")
		if err != nil {
			t.Fatal(err)
		}
		sock := filepath.Join(dir, fmt.Sprintf("api%d", i), "dfget.sock")
		sctx, scancel := context.WithCancel(context.Background())
		done := make(chan struct{}, 2)
		go func() { m.Serve(sctx, mln); done <- struct{}{} }()
		go func() { p.ServeAPI(sctx, sock); done <- struct{}{} }()
		t.Cleanup(func() { scancel(); <-done; <-done })
		mirrors = append(mirrors, m)
		mirrorAddrs = append(mirrorAddrs, mln.Addr().String())
		sockets = append(sockets, sock)
	}
	for _, s := range sockets {
		for peer.NewClient(s).Ping(ctx) != nil {
			time.Sleep(20 * time.Millisecond)
		}
	}

	// The private pull, on both hosts.
	rec := &authRecorder{seen: map[string]bool{}, inner: http.DefaultTransport}
	for i, m := range mirrorAddrs {
		rc, err := registry.NewClient("http://"+m, registry.Credentials{Username: regUser, Password: regPass}, &http.Client{Transport: rec})
		if err != nil {
			t.Fatal(err)
		}
		p := img.Platform("linux", "amd64")
		if _, _, _, err := rc.GetManifest(ctx, "private/app", "v1"); err != nil {
			t.Fatalf("host %d: index: %v", i, err)
		}
		if _, _, _, err := rc.GetManifest(ctx, "private/app", p.Descriptor.Digest.String()); err != nil {
			t.Fatalf("host %d: manifest: %v", i, err)
		}
		for _, d := range append([]digest.Digest{p.Manifest.Config.Digest}, layerDigests(p)...) {
			if _, err := rc.GetBlob(ctx, "private/app", d); err != nil {
				t.Fatalf("host %d: blob %s: %v", i, d, err)
			}
		}
	}

	// dfget downloads with credentials through each host's agent.
	c.Origin.User, c.Origin.Password = originUser, originPass
	c.Origin.Add("secret.bin", origin.Random(6<<20, 5))
	c.Origin.Add("userinfo.bin", origin.Random(3<<20, 6))
	hdr := http.Header{}
	hdr.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(originUser+":"+originPass)))
	withUser := strings.Replace(c.Origin.URL("userinfo.bin"), "http://", "http://"+originUser+":"+originPass+"@", 1)
	for i, s := range sockets {
		for _, dr := range []peer.DownloadRequest{
			{URL: c.Origin.URL("secret.bin"), Header: hdr},
			{URL: withUser},
		} {
			d, err := peer.NewClient(s).Download(ctx, dr)
			if err != nil {
				t.Fatalf("host %d: dfget: %v", i, err)
			}
			n, err := io.Copy(io.Discard, d)
			d.Close()
			if err != nil || n == 0 {
				t.Fatalf("host %d: dfget: %d bytes, %v", i, n, err)
			}
		}
	}
	// A wrong password too: its refusal travels through logs and packets.
	bad := http.Header{}
	bad.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(originUser+":"+originPass+"-wrong")))
	if d, err := peer.NewClient(sockets[1]).Download(ctx, peer.DownloadRequest{URL: c.Origin.URL("secret.bin"), Header: bad, NoBackSource: true}); err == nil {
		io.Copy(io.Discard, d)
		d.Close()
	}

	secrets := rec.secrets()
	secrets = append(secrets, secret{"wrong origin basic string", strings.TrimPrefix(bad.Get("Authorization"), "Basic ")})
	if len(secrets) < 6 {
		t.Fatalf("only %d secrets recorded: the pull sent no bearer token?", len(secrets))
	}

	// Everything a credential could leak into.
	places := map[string][]byte{"logs": logs.Bytes()}
	get := func(u string) []byte {
		resp, err := http.Get(u)
		if err != nil {
			t.Fatalf("GET %s: %v", u, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %s", u, resp.Status)
		}
		return b
	}
	places["supernode /metrics"] = get("http://" + c.Node.HTTPAddr() + "/metrics")
	places["dashboard state"] = get("http://" + c.Node.HTTPAddr() + "/api/v1/state")
	places["preheat jobs"] = get("http://" + c.Node.HTTPAddr() + "/api/v1/preheats")
	for i, p := range c.Peers {
		r := prometheus.NewRegistry()
		r.MustRegister(p.Collectors()...)
		r.MustRegister(mirrors[i].Collectors()...)
		w := httptest.NewRecorder()
		promhttp.HandlerFor(r, promhttp.HandlerOpts{}).ServeHTTP(w, httptest.NewRequest("GET", "/metrics", nil))
		places[fmt.Sprintf("%s /metrics (agent and mirror)", p.HostID())] = w.Body.Bytes()
		ts, err := p.Tasks(ctx)
		if err != nil {
			t.Fatal(err)
		}
		places[fmt.Sprintf("%s local API task list", p.HostID())] = []byte(fmt.Sprintf("%+v", ts))
	}
	files := 0
	filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Errorf("read %s: %v", path, err)
			return nil
		}
		files++
		places["file "+strings.TrimPrefix(path, dir)] = b
		return nil
	})
	pmu.Lock()
	for i, p := range packets {
		raw, _ := proto.Marshal(p)
		places[fmt.Sprintf("packet %d to a host (%T)", i, p.Body)] = append(raw, []byte(prototext.Format(p))...)
		if pf := p.GetPrefetch(); pf != nil {
			for _, rt := range pf.Tasks {
				if len(rt.Headers) > 0 {
					t.Errorf("a Prefetch carried request headers to a host")
				}
			}
		}
	}
	npackets := len(packets)
	pmu.Unlock()

	leaks := 0
	for where, b := range places {
		for _, s := range secrets {
			if bytes.Contains(b, []byte(s.value)) {
				leaks++
				i := bytes.Index(b, []byte(s.value))
				ctxt := b[max(0, i-120):min(len(b), i+len(s.value)+40)]
				t.Errorf("LEAK: %s found in %s: …%q…", s.name, where, ctxt)
			}
		}
	}
	t.Logf("searched %d places (%d KiB of logs, %d files under the data dirs, %d packets to hosts) for %d secrets: %d leaks",
		len(places), len(places["logs"])>>10, files, npackets, len(secrets), leaks)
	if len(places["logs"]) == 0 || files == 0 || npackets == 0 {
		t.Fatal("nothing captured: the sweep would prove nothing")
	}
}

func layerDigests(p *registry.PlatformImage) []digest.Digest {
	var out []digest.Digest
	for _, l := range p.Manifest.Layers {
		out = append(out, l.Digest)
	}
	return out
}
