package main

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pouchfly/pouchfly/test/report"
)

// buildBinaries builds supernode and dfget from the module root into dir.
func buildBinaries(t *testing.T, dir string) {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root not found at %s: %v", root, err)
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to build the binaries: %v", err)
	}
	cmd := exec.Command(goBin, "build", "-buildvcs=false", "-o", dir+string(filepath.Separator), "./cmd/supernode", "./cmd/dfget")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
}

// lineWriter sends each line to t.Log.
type lineWriter struct {
	t   *testing.T
	mu  sync.Mutex
	buf bytes.Buffer
}

func (w *lineWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(b)
	for {
		line, err := w.buf.ReadString('\n')
		if err != nil {
			w.buf.WriteString(line)
			return len(b), nil
		}
		w.t.Log(strings.TrimRight(line, "\n"))
	}
}

// smallOptions is a small run: 3 peers, a 16 MiB file, an image of 2
// layers of 1–2 MiB per platform.
func smallOptions(t *testing.T, binDir string) (options, *trace) {
	tr := &trace{}
	o := defaultOptions()
	o.Size, o.Peers, o.BinDir, o.Timeout = 16<<20, 3, binDir, 90*time.Second
	o.ImageLayers, o.ImageLayerMin, o.ImageLayerMax = 2, 1<<20, 2<<20
	o.Report = filepath.Join(t.TempDir(), "demo-report.json")
	o.Out = &lineWriter{t: t}
	o.trace = tr
	return o, tr
}

// checkCleanedUp checks that nothing of a run is left: child processes,
// listeners (registry, mirrors), the temporary directory.
func checkCleanedUp(t *testing.T, tr *trace, wantPIDs int) {
	t.Helper()
	if len(tr.PIDs) != wantPIDs {
		t.Errorf("traced %d child pids, want %d", len(tr.PIDs), wantPIDs)
	}
	for _, pid := range tr.PIDs {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("child pid %d is still there (kill 0: %v)", pid, err)
		}
	}
	for _, addr := range tr.Listeners {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			t.Errorf("%s still accepts connections", addr)
		}
	}
	if tr.TempDir == "" {
		t.Error("no temp dir traced")
	} else if _, err := os.Stat(tr.TempDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temp dir %s not removed (stat: %v)", tr.TempDir, err)
	}
}

func TestDemoRun(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binaries and runs real processes (skipped with -short)")
	}
	binDir := t.TempDir()
	buildBinaries(t, binDir)

	const size = 16 << 20
	o, tr := smallOptions(t, binDir)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	reps, err := run(ctx, o)
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	if len(reps) != 2 || reps[0].Scenario != "demo-file" || reps[1].Scenario != "demo-image" {
		t.Fatalf("run returned %d reports %+v; want demo-file and demo-image", len(reps), reps)
	}

	// The file.
	rep := reps[0]
	if !rep.DigestsOK || rep.FailedHosts != 0 {
		t.Errorf("file: digests_ok %v, failed_hosts %d", rep.DigestsOK, rep.FailedHosts)
	}
	if rep.Hosts != 3 || rep.BlobBytes != size || rep.Layers != nil {
		t.Errorf("file: report header: %+v", rep)
	}
	if float64(rep.OriginEgressBytes) > 1.05*size {
		t.Errorf("file: origin sent %d bytes, more than 1.05 × %d", rep.OriginEgressBytes, size)
	}
	if rep.SupernodeEgressBytes <= 0 {
		t.Errorf("file: supernode egress %d: the CDN metric was not read", rep.SupernodeEgressBytes)
	}
	if rep.Seconds.Max <= 0 || rep.Seconds.P50 > rep.Seconds.P99 || rep.Seconds.P99 > rep.Seconds.Max {
		t.Errorf("file: seconds %+v", rep.Seconds)
	}
	if rep.HostCapMbit != 0 || rep.OriginCapMbit != 0 || rep.LimitSeconds != 0 || rep.Notes == "" {
		t.Errorf("file: caps/limit/notes: %+v", rep)
	}

	// The image.
	img := reps[1]
	if !img.DigestsOK || img.FailedHosts != 0 || img.Hosts != 3 {
		t.Errorf("image: digests_ok %v, failed_hosts %d, hosts %d", img.DigestsOK, img.FailedHosts, img.Hosts)
	}
	if img.Layers == nil || len(*img.Layers) != 2 {
		t.Fatalf("image: layers %v, want 2", img.Layers)
	}
	var layerBytes, layerEgress int64
	for _, l := range *img.Layers {
		if !strings.HasPrefix(l.Digest, "sha256:") || l.Bytes < 1<<20 || l.Seconds.Max <= 0 || l.Seconds.P50 > l.Seconds.Max {
			t.Errorf("image: layer %+v", l)
		}
		if l.RegistryEgressBytes <= 0 || float64(l.RegistryEgressBytes) > 1.05*float64(l.Bytes) {
			t.Errorf("image: registry sent %d bytes of layer %s (%d bytes)", l.RegistryEgressBytes, l.Digest, l.Bytes)
		}
		layerBytes += l.Bytes
		layerEgress += l.RegistryEgressBytes
	}
	// blob_bytes is layers + config (a few hundred bytes).
	if img.BlobBytes <= layerBytes || img.BlobBytes > layerBytes+64<<10 {
		t.Errorf("image: blob_bytes %d for %d bytes of layers", img.BlobBytes, layerBytes)
	}
	if img.OriginEgressBytes < layerEgress || float64(img.OriginEgressBytes) > 1.05*float64(img.BlobBytes) {
		t.Errorf("image: registry blob egress %d, want ≤ 1.05 × %d (and ≥ the layers' %d)", img.OriginEgressBytes, img.BlobBytes, layerEgress)
	}
	if img.SupernodeEgressBytes <= 0 {
		t.Errorf("image: supernode egress %d: the CDN metric was not read", img.SupernodeEgressBytes)
	}
	if img.Seconds.Max <= 0 || img.Seconds.P50 > img.Seconds.Max || img.Notes == "" || img.CPUSecondsPerGB <= 0 {
		t.Errorf("image: %+v", img)
	}

	got, err := report.Read(o.Report)
	if err != nil {
		t.Fatalf("report file: %v", err)
	}
	if len(got) != 2 || got[0] != reps[0] || !reflect.DeepEqual(got[1], reps[1]) {
		t.Errorf("report file holds %+v, run returned %+v", got, reps)
	}
	checkCleanedUp(t, tr, 1+3)
}

// TestDemoInterrupted checks Ctrl-C during the image pull: run returns the
// cancellation and still leaves nothing behind.
func TestDemoInterrupted(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binaries and runs real processes (skipped with -short)")
	}
	binDir := t.TempDir()
	buildBinaries(t, binDir)
	o, tr := smallOptions(t, binDir)
	o.ImageLayerMin, o.ImageLayerMax = 64<<20, 64<<20 // still pulling when the cancel lands
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tr.phase = func(name string) {
		if name == "image" {
			time.AfterFunc(300*time.Millisecond, cancel)
		}
	}
	_, err := run(ctx, o)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("run = %v, want context.Canceled", err)
	}
	if _, err := os.Stat(o.Report); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("an interrupted run wrote %s (stat: %v)", o.Report, err)
	}
	checkCleanedUp(t, tr, 1+3)
}

// TestDemoFailsCleanly checks the failure path: a supernode binary that
// exits at once fails the run with its log, and still nothing is left.
func TestDemoFailsCleanly(t *testing.T) {
	binDir := t.TempDir()
	fake := "#!/bin/sh\necho 'supernode: cannot start (fake)' >&2\nexit 3\n"
	for _, name := range []string{"supernode", "dfget"} {
		if err := os.WriteFile(filepath.Join(binDir, name), []byte(fake), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	o, tr := smallOptions(t, binDir)
	o.Size, o.Peers, o.Report, o.Timeout = 1<<20, 2, "", 20*time.Second
	_, err := run(context.Background(), o)
	if err == nil || !errors.Is(err, errExited) || !strings.Contains(err.Error(), "cannot start (fake)") {
		t.Fatalf("run = %v; want the supernode's exit with its log tail", err)
	}
	if len(tr.Listeners) != 1 {
		t.Errorf("traced listeners %v, want the registry's", tr.Listeners)
	}
	checkCleanedUp(t, tr, 1)
}

func TestParseMetric(t *testing.T) {
	text := `# HELP pouchfly_cdn_upload_bytes_total Piece bytes.
# TYPE pouchfly_cdn_upload_bytes_total counter
pouchfly_cdn_upload_bytes_total 3.3554432e+07
pouchfly_cdn_upload_bytes_total_extra 5
pouchfly_scheduler_piece_bytes_total{source="cdn"} 10
pouchfly_scheduler_piece_bytes_total{source="p2p"} 32
`
	for name, want := range map[string]int64{
		"pouchfly_cdn_upload_bytes_total":      33554432,
		"pouchfly_scheduler_piece_bytes_total": 42,
	} {
		if got, err := parseMetric(strings.NewReader(text), name); err != nil || got != want {
			t.Errorf("%s = %d, %v; want %d", name, got, err, want)
		}
	}
	if _, err := parseMetric(strings.NewReader(text), "pouchfly_missing"); err == nil {
		t.Error("missing metric: want an error")
	}
	by, err := parseMetricBy(strings.NewReader(text+`pouchfly_scheduler_piece_bytes_total{kind="x",source="cdn"} 5
`), "pouchfly_scheduler_piece_bytes_total", "source")
	if err != nil || len(by) != 2 || by["cdn"] != 15 || by["p2p"] != 32 {
		t.Errorf("parseMetricBy = %v, %v; want cdn 15, p2p 32", by, err)
	}
	if by, err := parseMetricBy(strings.NewReader(text), "pouchfly_missing", "source"); err != nil || len(by) != 0 {
		t.Errorf("parseMetricBy of a missing metric = %v, %v; want empty", by, err)
	}
}

func TestParseSizeRange(t *testing.T) {
	for in, want := range map[string][2]int64{
		"16MiB":      {16 << 20, 16 << 20},
		"8MiB-32MiB": {8 << 20, 32 << 20},
		"1k-1k":      {1 << 10, 1 << 10},
	} {
		lo, hi, err := parseSizeRange(in)
		if err != nil || lo != want[0] || hi != want[1] {
			t.Errorf("parseSizeRange(%q) = %d, %d, %v; want %v", in, lo, hi, err, want)
		}
		if back := formatSizeRange(lo, hi); back != in && in != "1k-1k" {
			t.Errorf("formatSizeRange(%d, %d) = %q, want %q", lo, hi, back, in)
		}
	}
	for _, bad := range []string{"", "32MiB-8MiB", "x", "8MiB-", "-1"} {
		if _, _, err := parseSizeRange(bad); err == nil {
			t.Errorf("parseSizeRange(%q): want an error", bad)
		}
	}
}
