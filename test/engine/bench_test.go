package enginetest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
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
	ratio50, ratio99 := p.P50/c.P50, p.P99/c.P99
	t.Logf("\n%-28s %8s %8s %8s %8s\n%-28s %8.1f %8.1f %8.1f %8.1f\n%-28s %8.1f %8.1f %8.1f %8.1f\n%-28s %8.2f %8.2f",
		fmt.Sprintf("run --rm true (%d runs), ms", runs), "p50", "p99", "mean", "max",
		"pouch run --rm", p.P50*1e3, p.P99*1e3, p.Mean*1e3, p.Max*1e3,
		"ctr run --rm", c.P50*1e3, c.P99*1e3, c.Mean*1e3, c.Max*1e3,
		"pouch / ctr", ratio50, ratio99)
	r := report.Report{
		Scenario: "engine-run-latency", Hosts: 1,
		Seconds: report.Seconds{P50: p.P50, P99: p.P99, Max: p.Max},
		Notes: fmt.Sprintf("pouch run --rm IMAGE true, image present, %d runs alternating with ctr run --rm on the same containerd "+
			"(Debian containerd 1.6.20, runc 1.1.5): ctr p50 %.1f ms p99 %.1f ms; pouch/ctr p50 %.2fx p99 %.2fx (target <= 1.2x)",
			runs, c.P50*1e3, c.P99*1e3, ratio50, ratio99),
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
