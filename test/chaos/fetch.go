package chaos

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/pouchfly/pouchfly/peer"
	"github.com/pouchfly/pouchfly/test/origin"
	"github.com/pouchfly/pouchfly/test/testbed"
)

// Request is one download asked of a host's agent, with what is needed to
// check every byte of it.
type Request struct {
	URL    string `json:"url"`
	Digest string `json:"digest"`
	// Size and Seed regenerate the expected content (origin.Random), so
	// the client counts every byte that differs, not only the digest.
	Size int64  `json:"size"`
	Seed uint64 `json:"seed"`
}

// Fetched is one download's outcome.
type Fetched struct {
	URL string `json:"url"`
	// Host is the host index.
	Host int `json:"host"`
	// Seconds is from the common start of the batch to the end of this
	// download (its error included).
	Seconds float64 `json:"seconds"`
	// Bytes is what the client received.
	Bytes int64 `json:"bytes"`
	// Digest is the SHA-256 of what was received.
	Digest string `json:"digest"`
	// Corrupt counts received bytes that differ from the origin's content
	// at their offset, plus bytes past its end.
	Corrupt int64 `json:"corrupt"`
	// Received splits the bytes by source (peer, cdn, origin) as the agent
	// reported them at the end of the stream.
	Received map[string]int64 `json:"received,omitempty"`
	// Error is the download's error ("" on success).
	Error string `json:"error,omitempty"`
	// End is when the download ended (the machine's wall clock, so the
	// harness can order it with the origin's request log).
	End time.Time `json:"end"`
}

// OK reports whether the download got exactly the content.
func (f Fetched) OK(r Request) bool {
	return f.Error == "" && f.Digest == r.Digest && f.Bytes == r.Size && f.Corrupt == 0
}

// expected caches generated contents by (size, seed).
var expected struct {
	sync.Mutex
	m map[[2]uint64][]byte
}

func content(size int64, seed uint64) []byte {
	expected.Lock()
	defer expected.Unlock()
	if expected.m == nil {
		expected.m = map[[2]uint64][]byte{}
	}
	k := [2]uint64{uint64(size), seed}
	if b, ok := expected.m[k]; ok {
		return b
	}
	b := origin.Random(size, seed)
	expected.m[k] = b
	return b
}

// fetchOne downloads r through the agent's local API (what `dfget` does
// with a running agent) and checks every byte.
func fetchOne(ctx context.Context, c *peer.Client, r Request) Fetched {
	out := Fetched{URL: r.URL}
	want := content(r.Size, r.Seed)
	d, err := c.Download(ctx, peer.DownloadRequest{URL: r.URL, Digest: r.Digest})
	if err != nil {
		out.Error = err.Error()
		return out
	}
	defer d.Close()
	h := sha256.New()
	buf := make([]byte, 256<<10)
	for {
		n, rerr := d.Read(buf)
		if n > 0 {
			b := buf[:n]
			h.Write(b)
			out.Corrupt += differing(b, want, out.Bytes)
			out.Bytes += int64(n)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			out.Error = rerr.Error()
			break
		}
	}
	out.Digest = "sha256:" + hex.EncodeToString(h.Sum(nil))
	out.Received = d.Received()
	if out.Error == "" && out.Bytes != r.Size {
		out.Error = fmt.Sprintf("stream ended after %d of %d bytes", out.Bytes, r.Size)
	}
	return out
}

// differing counts the bytes of b that differ from want at offset off
// (bytes past its end count).
func differing(b, want []byte, off int64) int64 {
	if off+int64(len(b)) <= int64(len(want)) && bytes.Equal(b, want[off:off+int64(len(b))]) {
		return 0
	}
	var n int64
	for i := range b {
		if off+int64(i) >= int64(len(want)) || b[i] != want[off+int64(i)] {
			n++
		}
	}
	return n
}

// fetchBatch runs reqs against the agent on socket all at once; Seconds
// count from start.
func fetchBatch(ctx context.Context, socket string, host int, reqs []Request, start time.Time) []Fetched {
	c := peer.NewClient(socket)
	out := make([]Fetched, len(reqs))
	var wg sync.WaitGroup
	for i, r := range reqs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = fetchOne(ctx, c, r)
			out[i].Host = host
			out[i].End = time.Now()
			out[i].Seconds = out[i].End.Sub(start).Seconds()
		}()
	}
	wg.Wait()
	return out
}

// apiClient is an HTTP client over an agent's unix socket.
func apiClient(socket string) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		DisableKeepAlives: true,
	}}
}

// agentTasks lists the agent's tasks (GET /v1/tasks on its socket).
func agentTasks(ctx context.Context, socket string) ([]peer.TaskInfo, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://agent/v1/tasks", nil)
	resp, err := apiClient(socket).Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("agent tasks: %s", resp.Status)
	}
	var ts []peer.TaskInfo
	return ts, json.NewDecoder(resp.Body).Decode(&ts)
}

// agentTask returns the agent's task id (ok false when it has none).
func agentTask(ctx context.Context, socket, id string) (peer.TaskInfo, bool, error) {
	ts, err := agentTasks(ctx, socket)
	if err != nil {
		return peer.TaskInfo{}, false, err
	}
	for _, t := range ts {
		if t.ID == id {
			return t, true, nil
		}
	}
	return peer.TaskInfo{}, false, nil
}

// ---- the client role of the testbed ------------------------------------

// FetchRole is the role of the testbed's client processes: it reads a
// JSON []Request from --reqs, waits for the harness's go, runs them all
// at once against the agent on --socket and writes []Fetched to --out.
const FetchRole = "chaos-fetch"

func fetchRole(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet(FetchRole, flag.ContinueOnError)
	socket := fs.String("socket", "", "agent socket")
	reqsPath := fs.String("reqs", "", "JSON requests")
	outPath := fs.String("out", "", "JSON results")
	host := fs.Int("host", 0, "host index")
	if err := fs.Parse(args); err != nil {
		return err
	}
	b, err := os.ReadFile(*reqsPath)
	if err != nil {
		return err
	}
	var reqs []Request
	if err := json.Unmarshal(b, &reqs); err != nil {
		return err
	}
	return testbed.ServeClient(ctx, func(ctx context.Context) (func(context.Context) testbed.ClientResult, error) {
		for _, r := range reqs {
			content(r.Size, r.Seed) // generate before the go
		}
		return func(ctx context.Context) testbed.ClientResult {
			res := fetchBatch(ctx, *socket, *host, reqs, time.Now())
			var sum testbed.ClientResult
			for _, f := range res {
				sum.Bytes += f.Bytes
				if f.Error != "" && sum.Error == "" {
					sum.Error = f.Error
				}
			}
			b, _ := json.Marshal(res)
			if err := os.WriteFile(*outPath, b, 0o644); err != nil {
				sum.Error = errors.Join(errors.New(sum.Error), err).Error()
			}
			return sum
		}, nil
	})
}
