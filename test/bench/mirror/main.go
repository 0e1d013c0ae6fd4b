// Command mirror benchmarks the registry mirror on loopback (part of
// `make bench-local`):
//
//  1. time to first byte through a host's mirror for blobs a parent already
//     holds (target p50 < 50 ms);
//  2. one host pulling a large blob (default 1 GiB) through its mirror vs
//     straight from the registry, uncapped, each client hashing what it
//     reads as a runtime does (target ≤ 1.2× the direct time).
//
// Figures are printed and written to --report; nothing is asserted.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/pouchfly/pouchfly/internal/units"
	"github.com/pouchfly/pouchfly/registryproxy"
	"github.com/pouchfly/pouchfly/test/cluster"
	"github.com/pouchfly/pouchfly/test/origin"
	"github.com/pouchfly/pouchfly/test/registry"
)

type result struct {
	Scenario string  `json:"scenario"`
	Bytes    int64   `json:"blob_bytes"`
	Blobs    int     `json:"blobs,omitempty"`
	P50ms    float64 `json:"ttfb_p50_ms,omitempty"`
	P99ms    float64 `json:"ttfb_p99_ms,omitempty"`
	Direct   float64 `json:"direct_seconds,omitempty"`
	Mirror   float64 `json:"mirror_seconds,omitempty"`
	Ratio    float64 `json:"ratio,omitempty"`
	Target   string  `json:"target"`
	Met      bool    `json:"met"`
	Notes    string  `json:"notes,omitempty"`
}

func main() {
	size := flag.String("size", "1GiB", "blob size for the mirror-vs-direct pull")
	blobs := flag.Int("ttfb-blobs", 20, "blobs measured for time to first byte")
	report := flag.String("report", "bench-mirror-report.json", "JSON report")
	flag.Parse()
	n, err := units.ParseBytes(*size)
	if err != nil {
		fail(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	dir, err := os.MkdirTemp("", "pf-bench-mirror-")
	if err != nil {
		fail(err)
	}
	defer os.RemoveAll(dir)

	reg, err := registry.Start(ctx, registry.Options{})
	if err != nil {
		fail(err)
	}
	defer reg.Close()
	c, err := cluster.New(dir, cluster.Options{Peers: 2})
	if err != nil {
		fail(err)
	}
	defer c.Close()
	if err := c.WaitConnected(ctx); err != nil {
		fail(err)
	}
	mirrors := make([]string, 2)
	for i, p := range c.Peers {
		mirrors[i] = startMirror(ctx, p, reg)
	}
	var out []result

	// 1. Time to first byte for blobs a parent holds.
	cl := reg.Client(registry.Credentials{})
	var ds []digest.Digest
	for i := 0; i < *blobs; i++ {
		data := origin.Random(4<<20, uint64(1000+i))
		d := digest.FromBytes(data)
		if err := cl.PushBlob(ctx, "bench/ttfb", d, data); err != nil {
			fail(err)
		}
		ds = append(ds, d)
	}
	for _, d := range ds { // host 0 pulls everything first
		if _, _, err := get(ctx, mirrors[0], "bench/ttfb", d); err != nil {
			fail(err)
		}
	}
	var ttfb []float64
	for _, d := range ds {
		first, _, err := get(ctx, mirrors[1], "bench/ttfb", d)
		if err != nil {
			fail(err)
		}
		ttfb = append(ttfb, first.Seconds()*1000)
	}
	sort.Float64s(ttfb)
	p50, p99 := pct(ttfb, 0.5), pct(ttfb, 0.99)
	out = append(out, result{Scenario: "mirror-ttfb", Bytes: 4 << 20, Blobs: len(ds), P50ms: p50, P99ms: p99,
		Target: "p50 < 50 ms", Met: p50 < 50, Notes: "4 MiB blobs held by the other host; fresh task on this host (supernode registration, parent choice, first piece)"})

	// 2. A large blob, direct vs through the mirror (cold: the supernode's
	// CDN fetches it from the registry while the host streams it).
	data := origin.Random(n, 7)
	d := digest.FromBytes(data)
	if err := cl.PushBlob(ctx, "bench/big", d, data); err != nil {
		fail(err)
	}
	data = nil
	_, direct, err := get(ctx, reg.Host(), "bench/big", d)
	if err != nil {
		fail(err)
	}
	_, viaMirror, err := get(ctx, mirrors[0], "bench/big", d)
	if err != nil {
		fail(err)
	}
	ratio := viaMirror.Seconds() / direct.Seconds()
	out = append(out, result{Scenario: "mirror-vs-direct", Bytes: n, Direct: direct.Seconds(), Mirror: viaMirror.Seconds(), Ratio: ratio,
		Target: "mirror ≤ 1.2 × direct", Met: ratio <= 1.2, Notes: "one host, uncapped loopback, both clients hash the blob; mirror cold (CDN seeds while the host streams)"})
	// The same blob on the second host, now held by the first (the usual
	// case in a fleet: one host's pull serves the next).
	_, warm, err := get(ctx, mirrors[1], "bench/big", d)
	if err != nil {
		fail(err)
	}
	wratio := warm.Seconds() / direct.Seconds()
	out = append(out, result{Scenario: "mirror-vs-direct-warm", Bytes: n, Direct: direct.Seconds(), Mirror: warm.Seconds(), Ratio: wratio,
		Target: "mirror ≤ 1.2 × direct", Met: wratio <= 1.2, Notes: "second host: the blob comes from the first host's upload server"})

	fmt.Printf("%-18s %s\n", "scenario", "figures")
	fmt.Printf("%-18s p50 %.1f ms, p99 %.1f ms over %d blobs (target p50 < 50 ms: %v)\n", "mirror-ttfb", p50, p99, len(ds), p50 < 50)
	fmt.Printf("%-18s %s: direct %.2fs (%.2f GB/s), mirror %.2fs (%.2f GB/s), ratio %.2f (target ≤ 1.2: %v)\n", "mirror-vs-direct",
		units.Format(n), direct.Seconds(), float64(n)/direct.Seconds()/1e9, viaMirror.Seconds(), float64(n)/viaMirror.Seconds()/1e9, ratio, ratio <= 1.2)
	fmt.Printf("%-18s %s: direct %.2fs, mirror (blob on a parent) %.2fs (%.2f GB/s), ratio %.2f (target ≤ 1.2: %v)\n", "mirror-warm",
		units.Format(n), direct.Seconds(), warm.Seconds(), float64(n)/warm.Seconds()/1e9, wratio, wratio <= 1.2)
	b, _ := json.MarshalIndent(out, "", "  ")
	if err := os.WriteFile(*report, append(b, '\n'), 0o644); err != nil {
		fail(err)
	}
}

func startMirror(ctx context.Context, p *cluster.Peer, reg *registry.Registry) string {
	cfg := registryproxy.DefaultConfig()
	cfg.Listen = p.Addr + ":0"
	cfg.DefaultRegistry = reg.Host()
	cfg.Mirrors = []registryproxy.Upstream{{Host: reg.Host(), URL: reg.URL()}}
	m, err := registryproxy.New(cfg, p.Peer, registryproxy.Options{})
	if err != nil {
		fail(err)
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		fail(err)
	}
	go m.Serve(ctx, ln)
	return ln.Addr().String()
}

var client = &http.Client{Transport: &http.Transport{DisableCompression: true, ReadBufferSize: 1 << 20}}

// get GETs a blob, hashing it as a runtime does, and returns the time to
// the first body byte and the total time.
func get(ctx context.Context, host, repo string, d digest.Digest) (first, total time.Duration, err error) {
	start := time.Now()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+host+"/v2/"+repo+"/blobs/"+d.String(), nil)
	resp, err := client.Do(req)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, 0, fmt.Errorf("GET %s from %s: %s", d, host, resp.Status)
	}
	h := sha256.New()
	buf := make([]byte, 1<<20)
	k, err := resp.Body.Read(buf)
	first = time.Since(start)
	h.Write(buf[:k])
	if err == nil {
		_, err = io.CopyBuffer(h, resp.Body, buf)
	}
	if err != nil && err != io.EOF {
		return 0, 0, err
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != d.String() {
		return 0, 0, fmt.Errorf("GET %s from %s: content is %s", d, host, got)
	}
	return first, time.Since(start), nil
}

func pct(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted)-1) + 0.5)
	return sorted[i]
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "bench-mirror:", err)
	os.Exit(1)
}
