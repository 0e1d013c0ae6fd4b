package security

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pouchfly/pouchfly/peer"
	"github.com/pouchfly/pouchfly/registryproxy"
	"github.com/pouchfly/pouchfly/supernode"
	"github.com/pouchfly/pouchfly/test/cluster"
	"github.com/pouchfly/pouchfly/test/origin"
)

const slowHeader = 600 * time.Millisecond

// slowloris opens n connections to addr from the local address from and
// sends a request's headers one byte every tick, never finishing them. It
// returns when every connection was closed by the server (or ctx ended)
// and reports how long the longest one lived.
func slowloris(ctx context.Context, from, addr string, n int, tick time.Duration) (closed int, longest time.Duration) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 2 * time.Second}
	head := []byte("GET /tasks/sha256:" + fmt.Sprintf("%064d", 0) + "/pieces/0 HTTP/1.1\r\nHost: victim\r\nX-Slow: ")
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := d.DialContext(ctx, "tcp", addr)
			if err != nil {
				return
			}
			defer c.Close()
			start := time.Now()
			buf := make([]byte, 512)
			for j := 0; ctx.Err() == nil; j++ {
				b := head[j%len(head) : j%len(head)+1]
				if j >= len(head) {
					b = []byte("a")
				}
				if _, err := c.Write(b); err != nil {
					break
				}
				c.SetReadDeadline(time.Now().Add(tick))
				if _, err := c.Read(buf); err != nil {
					if ne, ok := err.(net.Error); ok && ne.Timeout() {
						continue // still open
					}
					break // closed by the server (EOF or reset)
				}
				// Any answer (a 408) means the server gave up on us too.
				break
			}
			mu.Lock()
			if ctx.Err() == nil {
				closed++
			}
			longest = max(longest, time.Since(start))
			mu.Unlock()
		}()
	}
	wg.Wait()
	return closed, longest
}

// Slowloris clients that trickle headers on many connections hold no
// server for long: each connection is closed after the header timeout,
// and while they attack, a normal host downloads from the very servers
// under attack (the CDN piece server and a peer's upload server) and the
// registry mirror answers.
func TestSlowlorisDoesNotStarve(t *testing.T) {
	c := cluster.Start(t, cluster.Options{
		Peers: 2,
		Node:  func(c *supernode.NodeConfig) { c.PieceServer.ReadHeaderTimeout = slowHeader },
		Peer:  func(i int, c *peer.Config) { c.UploadServer.ReadHeaderTimeout = slowHeader },
	})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := c.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	mcfg := registryproxy.DefaultConfig()
	mcfg.ReadHeaderTimeout = slowHeader
	mcfg.DefaultRegistry = ""
	m, err := registryproxy.New(mcfg, c.Peers[1].Peer, registryproxy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	mln, err := net.Listen("tcp", peerIP(1)+":0")
	if err != nil {
		t.Fatal(err)
	}
	mctx, mcancel := context.WithCancel(ctx)
	mdone := make(chan error, 1)
	go func() { mdone <- m.Serve(mctx, mln) }()
	defer func() { mcancel(); <-mdone }()

	data := origin.Random(16<<20, 11)
	digest := c.Origin.Add("f", data)
	req := peer.Request{URL: c.Origin.URL("f"), Digest: digest, NoBackSource: true}
	if r := c.Peers[0].Fetch(ctx, req); r.Err != nil {
		t.Fatal(r.Err)
	}

	const conns = 100
	type result struct {
		name    string
		closed  int
		longest time.Duration
	}
	results := make(chan result, 3)
	actx, acancel := context.WithTimeout(ctx, 20*time.Second)
	defer acancel()
	for name, addr := range map[string]string{"CDN piece server": c.Node.PieceAddr(), "peer upload server": c.Peers[0].UploadAddr(),
		"registry mirror": mln.Addr().String()} {
		go func() {
			n, l := slowloris(actx, "127.0.0.99", addr, conns, 100*time.Millisecond)
			results <- result{name, n, l}
		}()
	}
	time.Sleep(200 * time.Millisecond) // the attack is under way

	start := time.Now()
	r := c.Peers[1].Fetch(ctx, req)
	if r.Err != nil || r.Digest != digest {
		t.Fatalf("download under attack: %v", r.Err)
	}
	if r.Received["peer"] == 0 {
		t.Errorf("the download took nothing from the attacked peer: %v", r.Received)
	}
	resp, err := http.Get("http://" + mln.Addr().String() + "/v2/")
	if err != nil {
		t.Fatalf("mirror under attack: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	t.Logf("16 MiB downloaded under attack in %v (%v from peers)", time.Since(start), r.Received)

	for i := 0; i < 3; i++ {
		res := <-results
		t.Logf("%s: %d/%d slowloris connections closed by the server, the longest after %v", res.name, res.closed, conns, res.longest)
		if res.closed != conns {
			t.Errorf("%s: only %d of %d slowloris connections were closed", res.name, res.closed, conns)
		}
		if res.longest > slowHeader+2*time.Second {
			t.Errorf("%s: a slowloris connection lived %v (read_header_timeout %v)", res.name, res.longest, slowHeader)
		}
	}
}

// An abusive client hammering a peer's upload server gets 429 with
// Retry-After beyond its rate, while a normal host's piece fetches from
// that peer still succeed.
func TestAbusiveClientIsRateLimited(t *testing.T) {
	c := cluster.Start(t, cluster.Options{
		Peers: 2,
		Peer: func(i int, c *peer.Config) {
			c.UploadClientRate, c.UploadClientBurst = 100, 100
		},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := c.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	data := origin.Random(16<<20, 12)
	digest := c.Origin.Add("f", data)
	req := peer.Request{URL: c.Origin.URL("f"), Digest: digest, NoBackSource: true}
	if r := c.Peers[0].Fetch(ctx, req); r.Err != nil {
		t.Fatal(r.Err)
	}

	var statuses sync.Map // code → *atomic.Int64
	var retryAfterOK atomic.Bool
	actx, acancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	tr := &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.99")}}).DialContext,
		MaxIdleConnsPerHost: 32}
	hc := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	url := "http://" + c.Peers[0].UploadAddr() + "/tasks/" + digest + "/pieces/0"
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for actx.Err() == nil {
				rq, _ := http.NewRequestWithContext(actx, http.MethodGet, url, nil)
				rq.Header.Set("X-Pouchfly-Token", "forged")
				resp, err := hc.Do(rq)
				if err != nil {
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				v, _ := statuses.LoadOrStore(resp.StatusCode, new(atomic.Int64))
				v.(*atomic.Int64).Add(1)
				if resp.StatusCode == http.StatusTooManyRequests {
					if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s >= 1 {
						retryAfterOK.Store(true)
					}
				}
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	r := c.Peers[1].Fetch(ctx, req)
	acancel()
	wg.Wait()
	tr.CloseIdleConnections()
	if r.Err != nil || r.Digest != digest {
		t.Fatalf("normal host under abuse: %v", r.Err)
	}
	if r.Received["peer"] == 0 {
		t.Errorf("the normal host took nothing from the abused peer: %v", r.Received)
	}
	count := func(code int) int64 {
		if v, ok := statuses.Load(code); ok {
			return v.(*atomic.Int64).Load()
		}
		return 0
	}
	t.Logf("abusive client: %d × 429, %d × 403; normal host got %v", count(429), count(403), r.Received)
	if count(429) == 0 || !retryAfterOK.Load() {
		t.Errorf("the abusive client got no 429 with Retry-After (429: %d)", count(429))
	}
	if count(200) > 0 {
		t.Errorf("the abusive client was served %d pieces with a forged token", count(200))
	}
}
