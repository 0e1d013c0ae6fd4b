package main

import (
	"bytes"
	"fmt"
	"image/color"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"

	"github.com/pouchfly/pouchfly/test/report"
)

// row is one mode × N: the report and the testbed-only CPU estimate.
type row struct {
	Rep        report.Report
	TestbedCPU float64
	// Background is how many CPUs other work kept busy just before the run.
	Background float64
}

// Plot file names (under --img-dir).
const (
	plotCompletion = "bench-completion.png"
	plotEgress     = "bench-origin-egress.png"
	plotCPU        = "bench-cpu.png"
)

var modeColor = map[string]color.Color{
	"direct":     color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff},
	"p2p":        color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
	"bittorrent": color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff},
}

var modeOrder = []string{"direct", "p2p", "bittorrent"}

// writeOutputs writes the JSON report, the markdown table, the plots and
// the docs page, as configured.
func writeOutputs(o options, rows []row) error {
	reps := make([]report.Report, len(rows))
	for i, r := range rows {
		reps[i] = r.Rep
	}
	if o.report != "" {
		if err := report.WriteAll(o.report, reps); err != nil {
			return err
		}
		fmt.Printf("report: %s\n", o.report)
	}
	table := markdownTable(rows)
	targets := targetStatus(rows)
	fmt.Println()
	fmt.Print(table)
	fmt.Println()
	fmt.Print(targets)
	if o.table != "" {
		if err := os.WriteFile(o.table, []byte(table+"\n"+targets), 0o644); err != nil {
			return err
		}
		fmt.Printf("table: %s\n", o.table)
	}
	if o.imgDir != "" {
		if err := os.MkdirAll(o.imgDir, 0o755); err != nil {
			return err
		}
		if err := writePlots(o.imgDir, rows); err != nil {
			return err
		}
		fmt.Printf("plots: %s/{%s,%s,%s}\n", o.imgDir, plotCompletion, plotEgress, plotCPU)
	}
	if o.docs != "" {
		if err := writeDocs(o, rows, table, targets); err != nil {
			return err
		}
		fmt.Printf("docs: %s\n", o.docs)
	}
	return nil
}

func markdownTable(rows []row) string {
	var b strings.Builder
	b.WriteString("| mode | N | p50 s | p99 s | max s | limit s | max/limit | origin egress ×blob | supernode egress ×blob | from peers | CPU-s/GB machine | CPU-s/GB testbed-only | other load (CPUs) | failed |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	sorted := slices.Clone(rows)
	slices.SortStableFunc(sorted, func(a, b row) int {
		if c := slices.Index(modeOrder, a.Rep.Scenario) - slices.Index(modeOrder, b.Rep.Scenario); c != 0 {
			return c
		}
		return a.Rep.Hosts - b.Rep.Hosts
	})
	for _, r := range sorted {
		rep := r.Rep
		blob := float64(rep.BlobBytes)
		delivered := float64(rep.Hosts) * blob
		fmt.Fprintf(&b, "| %s | %d | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.0f%% | %.2f | %.2f | %.1f | %d |\n",
			rep.Scenario, rep.Hosts, rep.Seconds.P50, rep.Seconds.P99, rep.Seconds.Max, rep.LimitSeconds,
			ratio(rep.Seconds.Max, rep.LimitSeconds), float64(rep.OriginEgressBytes)/blob, float64(rep.SupernodeEgressBytes)/blob,
			100*float64(rep.P2PBytes)/delivered, rep.CPUSecondsPerGB, r.TestbedCPU, r.Background, rep.FailedHosts)
	}
	return b.String()
}

func find(rows []row, mode string, n int) *row {
	for i := range rows {
		if rows[i].Rep.Scenario == mode && rows[i].Rep.Hosts == n {
			return &rows[i]
		}
	}
	return nil
}

// targetStatus checks issue #4's targets at the largest N run.
func targetStatus(rows []row) string {
	var ns []int
	for _, r := range rows {
		if r.Rep.Scenario == "p2p" {
			ns = append(ns, r.Rep.Hosts)
		}
	}
	if len(ns) == 0 {
		return "targets: no p2p runs\n"
	}
	n := slices.Max(ns)
	p := find(rows, "p2p", n)
	var b strings.Builder
	fmt.Fprintf(&b, "Targets (issue #4) at N=%d:\n\n", n)
	mark := func(ok bool) string {
		if ok {
			return "met"
		}
		return "MISSED"
	}
	lim := p.Rep.LimitSeconds
	fmt.Fprintf(&b, "- p2p max completion ≤ 1.25 × limit: %.2fs = %.2f × %.2fs — %s\n", p.Rep.Seconds.Max, ratio(p.Rep.Seconds.Max, lim), lim, mark(p.Rep.Seconds.Max <= 1.25*lim))
	fmt.Fprintf(&b, "- p2p p50 completion ≤ 1.1 × limit: %.2fs = %.2f × — %s\n", p.Rep.Seconds.P50, ratio(p.Rep.Seconds.P50, lim), mark(p.Rep.Seconds.P50 <= 1.1*lim))
	worst, worstN := 0.0, 0
	for _, r := range rows {
		if r.Rep.Scenario == "p2p" {
			if e := float64(r.Rep.OriginEgressBytes) / float64(r.Rep.BlobBytes); e > worst {
				worst, worstN = e, r.Rep.Hosts
			}
		}
	}
	fmt.Fprintf(&b, "- p2p origin egress ≤ 1.05 × blob at every N: worst %.3f × (N=%d) — %s\n", worst, worstN, mark(worst <= 1.05))
	if bt := find(rows, "bittorrent", n); bt != nil && bt.Rep.FailedHosts == 0 {
		sp := ratio(bt.Rep.Seconds.Max, p.Rep.Seconds.Max)
		fmt.Fprintf(&b, "- ≥ 1.5 × faster than BitTorrent (max completion): %.2fs vs %.2fs = %.2f × — %s\n", p.Rep.Seconds.Max, bt.Rep.Seconds.Max, sp, mark(sp >= 1.5))
	} else {
		fmt.Fprintf(&b, "- ≥ 1.5 × faster than BitTorrent: no successful bittorrent run at N=%d\n", n)
	}
	fmt.Fprintf(&b, "- ≤ 4 CPU-s per GB (whole machine): %.2f — %s (testbed-only estimate %.2f — %s)\n",
		p.Rep.CPUSecondsPerGB, mark(p.Rep.CPUSecondsPerGB <= 4), p.TestbedCPU, mark(p.TestbedCPU <= 4))
	return b.String()
}

// series returns (N, f(row)) for mode, sorted by N.
func series(rows []row, mode string, f func(row) float64) plotter.XYs {
	var xys plotter.XYs
	for _, r := range rows {
		if r.Rep.Scenario == mode && r.Rep.FailedHosts == 0 {
			xys = append(xys, plotter.XY{X: float64(r.Rep.Hosts), Y: f(r)})
		}
	}
	slices.SortFunc(xys, func(a, b plotter.XY) int { return int(a.X - b.X) })
	return xys
}

func newPlot(title, ylabel string, rows []row) *plot.Plot {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "hosts (N)"
	p.Y.Label.Text = ylabel
	p.X.Scale = plot.LogScale{}
	var ticks plot.ConstantTicks
	var ns []int
	for _, r := range rows {
		if !slices.Contains(ns, r.Rep.Hosts) {
			ns = append(ns, r.Rep.Hosts)
		}
	}
	slices.Sort(ns)
	for _, n := range ns {
		ticks = append(ticks, plot.Tick{Value: float64(n), Label: strconv.Itoa(n)})
	}
	p.X.Tick.Marker = ticks
	if len(ns) > 0 {
		p.X.Min, p.X.Max = float64(ns[0])/1.15, float64(ns[len(ns)-1])*1.15
	}
	p.Legend.Top = true
	p.Legend.Left = true
	p.Add(plotter.NewGrid())
	return p
}

var dashed = []vg.Length{vg.Points(5), vg.Points(3)}

func addLine(p *plot.Plot, xys plotter.XYs, c color.Color, dash []vg.Length, label string) error {
	if len(xys) == 0 {
		return nil
	}
	l, s, err := plotter.NewLinePoints(xys)
	if err != nil {
		return err
	}
	l.Color, l.Width, l.Dashes = c, vg.Points(1.5), dash
	s.Color, s.Shape = c, draw.CircleGlyph{}
	p.Add(l, s)
	p.Legend.Add(label, l, s)
	return nil
}

func hline(p *plot.Plot, rows []row, y float64, label string) error {
	var lo, hi float64 = math.Inf(1), 0
	for _, r := range rows {
		lo, hi = math.Min(lo, float64(r.Rep.Hosts)), math.Max(hi, float64(r.Rep.Hosts))
	}
	l, err := plotter.NewLine(plotter.XYs{{X: lo / 1.15, Y: y}, {X: hi * 1.15, Y: y}})
	if err != nil {
		return err
	}
	l.Color, l.Width, l.Dashes = color.Gray{Y: 0x40}, vg.Points(1), []vg.Length{vg.Points(2), vg.Points(2)}
	p.Add(l)
	p.Legend.Add(label, l)
	return nil
}

func writePlots(dir string, rows []row) error {
	if len(rows) == 0 {
		return nil
	}
	r0 := rows[0].Rep
	cond := fmt.Sprintf("%s blob, hosts %g Mbit/s, origin %g Mbit/s", report.FormatBytes(r0.BlobBytes), r0.HostCapMbit, r0.OriginCapMbit)
	// 1. Completion time.
	p := newPlot("Completion time vs N ("+cond+")", "seconds (solid p50, dashed max)", rows)
	for _, m := range modeOrder {
		if err := addLine(p, series(rows, m, func(r row) float64 { return r.Rep.Seconds.P50 }), modeColor[m], nil, m+" p50"); err != nil {
			return err
		}
		if err := addLine(p, series(rows, m, func(r row) float64 { return r.Rep.Seconds.Max }), modeColor[m], dashed, m+" max"); err != nil {
			return err
		}
	}
	if r0.LimitSeconds > 0 {
		if err := hline(p, rows, r0.LimitSeconds, fmt.Sprintf("physical limit %.2fs (blob / host cap)", r0.LimitSeconds)); err != nil {
			return err
		}
	}
	p.Y.Min = 0
	if err := p.Save(9*vg.Inch, 5.5*vg.Inch, filepath.Join(dir, plotCompletion)); err != nil {
		return err
	}
	// 2. Origin egress.
	p = newPlot("Origin egress vs N ("+cond+")", "bytes sent by the origin / blob size (log)", rows)
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	for _, m := range modeOrder {
		if err := addLine(p, series(rows, m, func(r row) float64 {
			return math.Max(float64(r.Rep.OriginEgressBytes)/float64(r.Rep.BlobBytes), 0.01)
		}), modeColor[m], nil, m+" origin"); err != nil {
			return err
		}
	}
	if err := addLine(p, series(rows, "p2p", func(r row) float64 {
		return math.Max(float64(r.Rep.SupernodeEgressBytes)/float64(r.Rep.BlobBytes), 0.01)
	}), modeColor["p2p"], dashed, "p2p supernode (CDN)"); err != nil {
		return err
	}
	if err := hline(p, rows, 1.05, "target 1.05 × blob"); err != nil {
		return err
	}
	if err := p.Save(9*vg.Inch, 5.5*vg.Inch, filepath.Join(dir, plotEgress)); err != nil {
		return err
	}
	// 3. CPU.
	p = newPlot("CPU-s per GB delivered vs N, solid whole machine, dashed testbed-only ("+cond+")", "CPU-s per GB (log)", rows)
	for _, m := range modeOrder {
		if err := addLine(p, series(rows, m, func(r row) float64 { return math.Max(r.Rep.CPUSecondsPerGB, 0.01) }), modeColor[m], nil, m+" machine"); err != nil {
			return err
		}
		if err := addLine(p, series(rows, m, func(r row) float64 { return math.Max(r.TestbedCPU, 0.01) }), modeColor[m], dashed, m+" testbed-only"); err != nil {
			return err
		}
	}
	if err := hline(p, rows, 4, "target 4 CPU-s/GB"); err != nil {
		return err
	}
	p.Legend.Left = false // the top left holds the N=1 points
	// Log scale: on a shared machine "machine" can be 10× "testbed-only".
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	return p.Save(9*vg.Inch, 5.5*vg.Inch, filepath.Join(dir, plotCPU))
}

// machine describes the machine for the docs.
func machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	kernel := "?"
	if out, err := exec.Command("uname", "-r").Output(); err == nil {
		kernel = strings.TrimSpace(string(out))
	}
	mem := "?"
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		f := strings.Fields(string(b))
		if len(f) > 1 {
			if kb, err := strconv.ParseFloat(f[1], 64); err == nil {
				mem = fmt.Sprintf("%.0f GiB", kb/(1<<20))
			}
		}
	}
	return fmt.Sprintf("%d CPUs (nproc), %s, kernel %s, %s RAM, %s", runtime.NumCPU(), model, kernel, mem, runtime.Version())
}

func writeDocs(o options, rows []row, table, targets string) error {
	rel := o.imgDir
	if r, err := filepath.Rel(filepath.Dir(o.docs), o.imgDir); err == nil {
		rel = r
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, `# Benchmarks

The multi-host testbed benchmark (issue #4): one Linux machine, every host a
network namespace on a bridge (in its own namespace), no route out, `+"`tc tbf`"+`
caps in both directions of every host's link, real processes inside — the
origin (generated content, counting its egress), the supernode, one `+"`dfget daemon`"+`
per host, and for the baseline `+"`anacrolix/torrent`"+` v1.59.1 (a tracker and a seeder
on the origin host, one client per host). For every N the same testbed runs:

- **direct** — every host GETs the blob from the origin;
- **p2p** — Pouchfly: a fresh supernode and one agent per host; every host
  downloads through its own agent (local socket, with the digest);
- **bittorrent** — every host downloads the torrent from the seeder and each
  other (library defaults for piece selection; TCP only, no DHT, clients keep
  seeding until everyone is done).

Every download is SHA-256-checked end to end by a client process on its host.
Times run from a common start to each host's verified last byte. The physical
limit is blob size / host cap; tbf counts wire bytes, so with Ethernet, IP and
TCP headers (66 of every 1514 bytes) the best possible payload time is about
1.045 × that limit. TCP uses the machine's default congestion control (here
bbr); the bridge does not call iptables (br_netfilter off in its namespace).

CPU is measured over each run. "machine" is `+"`/proc/stat`"+` busy time of the
whole machine (DESIGN.md §5). On a shared machine that includes other people's
work, so the "other load" column gives how many CPUs were busy with other work
just before each run, and "testbed-only": the CPU of every process the testbed
ran (origin, supernode, agents, seeder, clients, harness — with the softirq work
the kernel charged to them) plus kernel threads (ksoftirqd, kworkers); softirq
that hit an idle CPU is left out, so it slightly underestimates. Both include
the simulated network (veth, bridge, tbf), which real hosts do not pay.

## Latest run

- command: `+"`%s`"+`
- machine: %s
- date: %s
- raw results: `+"`bench-report.json`"+` (one DESIGN.md §5 object per mode and N)

%s
%s
![completion time vs N](%s)

![origin egress vs N](%s)

![CPU-seconds per GB vs N](%s)

Why the figures are what they are — where the CPU goes, what the simulator
says the scheduler does without a CPU ceiling, and the loopback (mirror,
throughput) benchmarks — is in [performance.md](performance.md).

## Reproduce

`+"```sh"+`
make bench                                   # defaults: 64 MiB, N = 1 2 4 8 16 32, hosts 50 Mbit/s, origin and supernode 200 Mbit/s
make bench BENCH_HOSTS=1,8 BENCH_SIZE=16MiB  # any flag: BENCH_SIZE BENCH_HOSTS BENCH_MODES BENCH_HOST_CAP BENCH_ORIGIN_CAP BENCH_SN_CAP BENCH_FLAGS
make build && go run ./test/testbed/cmd/pouchfly-testbed run --hosts 8 --mode p2p --keep   # one scenario, logs kept
go run ./test/testbed/cmd/pouchfly-testbed clean                            # remove stale testbeds
POUCHFLY_PROFILE_DIR=/tmp/prof bin/pouchfly-testbed run --hosts 32 --mode p2p  # CPU profile of every agent and the supernode
`+"```"+`
`, o.command, machine(), o.date.UTC().Format("2006-01-02 15:04 UTC"), table, targets,
		filepath.Join(rel, plotCompletion), filepath.Join(rel, plotEgress), filepath.Join(rel, plotCPU))
	if err := os.MkdirAll(filepath.Dir(o.docs), 0o755); err != nil {
		return err
	}
	return os.WriteFile(o.docs, b.Bytes(), 0o644)
}

var (
	testbedCPURe = regexp.MustCompile(`([0-9.]+) CPU-s/GB testbed-only`)
	backgroundRe = regexp.MustCompile(`([0-9.]+) CPUs were busy with other work`)
)

// rowsFromReport reads an earlier bench report; the testbed-only CPU and
// the other load come from the notes the runs wrote.
func rowsFromReport(path string) ([]row, error) {
	reps, err := report.Read(path)
	if err != nil {
		return nil, err
	}
	rows := make([]row, len(reps))
	for i, r := range reps {
		rows[i].Rep = r
		if m := testbedCPURe.FindStringSubmatch(r.Notes); m != nil {
			rows[i].TestbedCPU, _ = strconv.ParseFloat(m[1], 64)
		}
		if m := backgroundRe.FindStringSubmatch(r.Notes); m != nil {
			rows[i].Background, _ = strconv.ParseFloat(m[1], 64)
		}
	}
	return rows, nil
}
