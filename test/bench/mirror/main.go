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
	"cmp"
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
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"sort"
	"syscall"
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
	// Process CPU (user+system) during the pull: everything here runs in
	// this one process (registry, supernode, CDN, agents, mirror, client).
	DirectCPU float64 `json:"direct_cpu_seconds,omitempty"`
	MirrorCPU float64 `json:"mirror_cpu_seconds,omitempty"`
	Runs      int     `json:"runs,omitempty"`
	Target    string  `json:"target"`
	Met       bool    `json:"met"`
	Notes     string  `json:"notes,omitempty"`
}

func main() {
	size := flag.String("size", "1GiB", "blob size for the mirror-vs-direct pull")
	blobs := flag.Int("ttfb-blobs", 20, "blobs measured for time to first byte")
	report := flag.String("report", "bench-mirror-report.json", "JSON report")
	cpuProfile := flag.String("cpuprofile", "", "write CPU profiles of the large pulls to FILE.<run>.cold and FILE.<run>.warm")
	discard := flag.Bool("client-discard", false, "the pulling client only hashes each large blob (by default it also writes it to a file, as a runtime's content store does)")
	runs := flag.Int("runs", 3, "runs of the large-blob comparison (a fresh blob each); the median ratio is reported")
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

	reg, mirrors, closeEnv := startEnv(ctx, filepath.Join(dir, "ttfb"))
	cl := reg.Client(registry.Credentials{})
	var out []result

	// 1. Time to first byte for blobs a parent holds.
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
	// CDN fetches it from the registry while the host streams it), then the
	// same blob on the second host, now held by the first (the usual case
	// in a fleet: one host's pull serves the next). Each run uses a fresh
	// blob; ratios are per run (same machine state), the median reported.
	if !*discard {
		saveDir = filepath.Join(dir, "client")
		if err := os.Mkdir(saveDir, 0o755); err != nil {
			fail(err)
		}
	}
	closeEnv()
	var cold, warm []pull
	for run := 0; run < *runs; run++ {
		// A fresh registry, supernode and agents each run, all removed
		// after it: earlier runs' gigabytes must not fill memory or keep
		// the disk busy under this one.
		reg, mirrors, closeEnv := startEnv(ctx, filepath.Join(dir, fmt.Sprint("run", run+1)))
		cl := reg.Client(registry.Credentials{})
		data := origin.Random(n, uint64(7+run))
		d := digest.FromBytes(data)
		if err := cl.PushBlob(ctx, "bench/big", d, data); err != nil {
			fail(err)
		}
		data = nil
		runtime.GC()
		// The push is setup: let its dirty pages (and the last run's) reach
		// the disk so that writeback does not throttle this run's writes.
		syscall.Sync()
		direct := measure(ctx, reg.Host(), d, "")
		c := measure(ctx, mirrors[0], d, profileName(*cpuProfile, run, "cold"))
		w := measure(ctx, mirrors[1], d, profileName(*cpuProfile, run, "warm"))
		c.direct, w.direct = direct, direct
		cold, warm = append(cold, *c), append(warm, *w)
		closeEnv()
		fmt.Fprintf(os.Stderr, "run %d: direct %.2fs %.2f CPU-s | cold %.2fs %.2f CPU-s (%.2f×) | warm %.2fs %.2f CPU-s (%.2f×)\n", run+1,
			direct.wall.Seconds(), direct.cpu, c.wall.Seconds(), c.cpu, c.ratio(), w.wall.Seconds(), w.cpu, w.ratio())
	}
	mc, mw := median(cold), median(warm)
	out = append(out, mc.result("mirror-vs-direct", n, len(cold),
		"one host, uncapped loopback, both clients hash the blob"+clientNote()+"; mirror cold (CDN seeds while the host streams); median of per-run ratios"))
	out = append(out, mw.result("mirror-vs-direct-warm", n, len(warm),
		"second host: the blob comes from the first host's upload server; the client hashes the blob"+clientNote()+"; median of per-run ratios"))

	fmt.Printf("%-18s %s\n", "scenario", "figures")
	fmt.Printf("%-18s p50 %.1f ms, p99 %.1f ms over %d blobs (target p50 < 50 ms: %v)\n", "mirror-ttfb", p50, p99, len(ds), p50 < 50)
	for _, x := range []struct {
		name string
		p    pull
	}{{"mirror-vs-direct", mc}, {"mirror-warm", mw}} {
		fmt.Printf("%-18s %s, median of %d: direct %.2fs (%.2f GB/s, %.2f CPU-s), mirror %.2fs (%.2f GB/s, %.2f CPU-s), ratio %.2f (target ≤ 1.2: %v)\n",
			x.name, units.Format(n), *runs, x.p.direct.wall.Seconds(), float64(n)/x.p.direct.wall.Seconds()/1e9, x.p.direct.cpu,
			x.p.wall.Seconds(), float64(n)/x.p.wall.Seconds()/1e9, x.p.cpu, x.p.ratio(), x.p.ratio() <= 1.2)
	}
	b, _ := json.MarshalIndent(out, "", "  ")
	if err := os.WriteFile(*report, append(b, '\n'), 0o644); err != nil {
		fail(err)
	}
}

// startEnv starts a registry (storage in dir), a supernode and two agents
// with their mirrors; the returned func stops them and removes dir.
func startEnv(ctx context.Context, dir string) (*registry.Registry, []string, func()) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		fail(err)
	}
	reg, err := registry.Start(ctx, registry.Options{Dir: filepath.Join(dir, "registry")})
	if err != nil {
		fail(err)
	}
	c, err := cluster.New(filepath.Join(dir, "cluster"), cluster.Options{Peers: 2})
	if err != nil {
		fail(err)
	}
	if err := c.WaitConnected(ctx); err != nil {
		fail(err)
	}
	mctx, stop := context.WithCancel(ctx)
	mirrors := make([]string, 2)
	for i, p := range c.Peers {
		mirrors[i] = startMirror(mctx, p, reg)
	}
	return reg, mirrors, func() {
		stop()
		c.Close()
		reg.Close()
		os.RemoveAll(dir)
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

// saveDir, when set, is where get writes each blob it pulls (then removes
// it), as a runtime writes a pulled layer into its content store.
var saveDir string

// get GETs a blob, hashing it (and with saveDir writing it to a file) as a
// runtime does, and returns the time to the first body byte and the total
// time.
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
	var sink io.Writer = h
	if saveDir != "" {
		f, err := os.CreateTemp(saveDir, "blob-")
		if err != nil {
			return 0, 0, err
		}
		defer os.Remove(f.Name())
		defer f.Close()
		sink = io.MultiWriter(h, f)
	}
	buf := make([]byte, 1<<20)
	k, err := resp.Body.Read(buf)
	first = time.Since(start)
	sink.Write(buf[:k])
	if err == nil {
		_, err = io.CopyBuffer(sink, resp.Body, buf)
	}
	if err != nil && err != io.EOF {
		return 0, 0, err
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != d.String() {
		return 0, 0, fmt.Errorf("GET %s from %s: content is %s", d, host, got)
	}
	return first, time.Since(start), nil
}

// pull is one timed GET with the CPU this process spent on it.
type pull struct {
	wall   time.Duration
	cpu    float64
	direct *pull // the direct pull of the same run
}

func (p pull) ratio() float64 { return p.wall.Seconds() / p.direct.wall.Seconds() }

func (p pull) result(scenario string, n int64, runs int, notes string) result {
	return result{Scenario: scenario, Bytes: n, Direct: p.direct.wall.Seconds(), Mirror: p.wall.Seconds(), Ratio: p.ratio(),
		DirectCPU: p.direct.cpu, MirrorCPU: p.cpu, Runs: runs, Target: "mirror ≤ 1.2 × direct", Met: p.ratio() <= 1.2, Notes: notes}
}

// median returns the run with the median ratio.
func median(ps []pull) pull {
	s := slices.Clone(ps)
	slices.SortFunc(s, func(a, b pull) int { return cmp.Compare(a.ratio(), b.ratio()) })
	return s[len(s)/2]
}

func profileName(base string, run int, kind string) string {
	if base == "" {
		return ""
	}
	return fmt.Sprintf("%s.%d.%s", base, run+1, kind)
}

// measure GETs blob d from host (hashing it) and returns the wall time and
// this process's CPU time, with a CPU profile to profile when set.
func measure(ctx context.Context, host string, d digest.Digest, profile string) *pull {
	if profile != "" {
		f, err := os.Create(profile)
		if err != nil {
			fail(err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fail(err)
		}
		defer pprof.StopCPUProfile()
	}
	before := processCPU()
	_, total, err := get(ctx, host, "bench/big", d)
	if err != nil {
		fail(err)
	}
	return &pull{wall: total, cpu: processCPU() - before}
}

func processCPU() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		fail(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

func clientNote() string {
	if saveDir == "" {
		return " (and discard it)"
	}
	return " and write it to a file as a runtime's content store does"
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
