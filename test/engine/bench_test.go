package enginetest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/pouchfly/pouchfly/test/report"
)

// latency summarizes samples (seconds).
type latency struct {
	P50  float64 `json:"p50"`
	P99  float64 `json:"p99"`
	Mean float64 `json:"mean"`
	Max  float64 `json:"max"`
}

func summarize(d []time.Duration) latency {
	s := make([]float64, len(d))
	var sum float64
	for i, x := range d {
		s[i] = x.Seconds()
		sum += s[i]
	}
	sort.Float64s(s)
	q := func(p float64) float64 {
		i := int(p*float64(len(s))+0.5) - 1
		return s[min(max(i, 0), len(s)-1)]
	}
	return latency{P50: q(0.50), P99: q(0.99), Mean: sum / float64(len(s)), Max: s[len(s)-1]}
}

// TestBenchRunLatency is the engine benchmark (make bench-local): the
// latency of `pouch run --rm IMAGE true` with the image present, p50/p99
// over POUCHFLY_BENCH_RUNS runs (default 50), side by side with
// `ctr run --rm` on the same containerd (target: pouch ≤ 1.2× ctr). Runs
// alternate between the two so that load on the machine hits both alike.
// It writes POUCHFLY_BENCH_REPORT (default bench-engine-report.json).
// With POUCHFLY_BENCH_DIRTY=1 a writer keeps about 16 MiB of dirty page
// cache on the filesystem of the test directory during the runs (a busy
// host: builds, logs), where every sync of that filesystem costs.
// Skipped unless POUCHFLY_BENCH=1.
func TestBenchRunLatency(t *testing.T) {
	if os.Getenv("POUCHFLY_BENCH") != "1" {
		t.Skip("benchmark: set POUCHFLY_BENCH=1 (make bench-local)")
	}
	e := need(t)
	img := e.ensureImage(t)
	runs := 50
	if v := os.Getenv("POUCHFLY_BENCH_RUNS"); v != "" {
		fmt.Sscan(v, &runs)
	}
	sock := filepath.Join(e.home, "containerd", "containerd.sock")
	pouchRun := func() error {
		cmd := exec.Command(filepath.Join(e.bin, "pouch"), "-H", "unix://"+e.sock, "run", "--rm", img, "true")
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("pouch run: %v: %s", err, out)
		}
		return nil
	}
	n := 0
	ctrRun := func() error {
		n++
		cmd := exec.Command("ctr", "--address", sock, "-n", "pouchd", "run", "--rm", img, fmt.Sprintf("ctr-bench-%d-%d", os.Getpid(), n), "true")
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("ctr run: %v: %s", err, out)
		}
		return nil
	}
	// Warm up both paths (page cache, shim binary, runc).
	for i := 0; i < 3; i++ {
		if err := pouchRun(); err != nil {
			t.Fatal(err)
		}
		if err := ctrRun(); err != nil {
			t.Fatal(err)
		}
	}
	dirty := os.Getenv("POUCHFLY_BENCH_DIRTY") == "1"
	if dirty {
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			buf := make([]byte, 1<<20)
			f, err := os.Create(filepath.Join(e.dir, "bench-dirty"))
			if err != nil {
				return
			}
			defer os.Remove(f.Name())
			defer f.Close()
			for {
				for i := int64(0); i < 16; i++ {
					_, _ = f.WriteAt(buf, i<<20)
				}
				select {
				case <-stop:
					return
				case <-time.After(200 * time.Millisecond):
				}
			}
		}()
		defer func() { close(stop); <-done }()
	}
	phasesBefore := e.phaseTotals(t)
	var pd, cd []time.Duration
	for i := 0; i < runs; i++ {
		start := time.Now()
		if err := pouchRun(); err != nil {
			t.Fatal(err)
		}
		pd = append(pd, time.Since(start))
		start = time.Now()
		if err := ctrRun(); err != nil {
			t.Fatal(err)
		}
		cd = append(cd, time.Since(start))
	}
	p, c := summarize(pd), summarize(cd)
	phases := e.phaseTotals(t)
	var phaseLine string
	for _, ph := range []string{"create", "start", "exit"} {
		d := phases[ph].sub(phasesBefore[ph])
		if d.n > 0 {
			phaseLine += fmt.Sprintf(" %s %.1f ms,", ph, d.sum/float64(d.n)*1e3)
		}
	}
	phaseLine = strings.TrimSuffix(phaseLine, ",")
	ratio50, ratio99 := p.P50/c.P50, p.P99/c.P99
	title := fmt.Sprintf("run --rm true (%d runs), ms", runs)
	if dirty {
		title = fmt.Sprintf("run --rm true (%d, dirty), ms", runs)
	}
	t.Logf("\n%-28s %8s %8s %8s %8s\n%-28s %8.1f %8.1f %8.1f %8.1f\n%-28s %8.1f %8.1f %8.1f %8.1f\n%-28s %8.2f %8.2f",
		title, "p50", "p99", "mean", "max",
		"pouch run --rm", p.P50*1e3, p.P99*1e3, p.Mean*1e3, p.Max*1e3,
		"ctr run --rm", c.P50*1e3, c.P99*1e3, c.Mean*1e3, c.Max*1e3,
		"pouch / ctr", ratio50, ratio99)
	t.Logf("pouchd's phases (mean per run, from its metrics):%s; the rest is pouch's process and API round trips", phaseLine)
	r := report.Report{
		Scenario: "engine-run-latency", Hosts: 1,
		Seconds: report.Seconds{P50: p.P50, P99: p.P99, Max: p.Max},
		Notes: fmt.Sprintf("pouch run --rm IMAGE true, image present, %d runs alternating with ctr run --rm on the same containerd "+
			"(Debian containerd 1.6.20, runc 1.1.5)%s: ctr p50 %.1f ms p99 %.1f ms; pouch/ctr p50 %.2fx p99 %.2fx (target <= 1.2x); pouchd means:%s",
			runs, map[bool]string{true: ", 16 MiB kept dirty on the host filesystem", false: ""}[dirty], c.P50*1e3, c.P99*1e3, ratio50, ratio99, phaseLine),
	}
	out := os.Getenv("POUCHFLY_BENCH_REPORT")
	if out == "" {
		out = "bench-engine-report.json"
	}
	b, _ := json.MarshalIndent(struct {
		report.Report
		Ctr   latency `json:"ctr_seconds"`
		Pouch latency `json:"pouch_seconds"`
		Ratio float64 `json:"pouch_over_ctr_p50"`
	}{r, c, p, ratio50}, "", "  ")
	if err := os.WriteFile(out, append(b, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("report: %s", out)
	if ratio50 > 1.2 {
		t.Logf("NOTE: pouch p50 is %.2fx ctr's (target 1.2x)", ratio50)
	}
	_ = context.Background
}

// phaseTotal is a histogram's sum (seconds) and count.
type phaseTotal struct {
	sum float64
	n   int64
}

func (a phaseTotal) sub(b phaseTotal) phaseTotal { return phaseTotal{a.sum - b.sum, a.n - b.n} }

// phaseTotals reads pouchd's create/start/exit histograms (sum and count)
// from its /metrics.
func (e *env) phaseTotals(t *testing.T) map[string]phaseTotal {
	t.Helper()
	resp, err := http.Get("http://" + e.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	out := map[string]phaseTotal{}
	for _, l := range strings.Split(string(b), "\n") {
		for _, ph := range []string{"create", "start", "exit"} {
			pre := "pouchfly_engine_" + ph + "_seconds_"
			if v, ok := strings.CutPrefix(l, pre+"sum "); ok {
				x := out[ph]
				fmt.Sscan(v, &x.sum)
				out[ph] = x
			} else if v, ok := strings.CutPrefix(l, pre+"count "); ok {
				x := out[ph]
				fmt.Sscan(v, &x.n)
				out[ph] = x
			}
		}
	}
	return out
}
