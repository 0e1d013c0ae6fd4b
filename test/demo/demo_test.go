package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
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

func TestDemoRun(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binaries and runs real processes (skipped with -short)")
	}
	binDir := t.TempDir()
	buildBinaries(t, binDir)

	const size = 16 << 20
	reportPath := filepath.Join(t.TempDir(), "demo-report.json")
	tr := &trace{}
	o := defaultOptions()
	o.Size, o.Peers, o.BinDir, o.Report, o.Timeout = size, 3, binDir, reportPath, 60*time.Second
	o.Out = &lineWriter{t: t}
	o.trace = tr

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	rep, err := run(ctx, o)
	if err != nil {
		t.Fatalf("run: %v", err)
	}

	if !rep.DigestsOK || rep.FailedHosts != 0 {
		t.Errorf("digests_ok %v, failed_hosts %d", rep.DigestsOK, rep.FailedHosts)
	}
	if rep.Hosts != 3 || rep.BlobBytes != size || rep.Scenario != "demo" {
		t.Errorf("report header: %+v", rep)
	}
	if float64(rep.OriginEgressBytes) > 1.05*size {
		t.Errorf("origin sent %d bytes, more than 1.05 × %d", rep.OriginEgressBytes, size)
	}
	if rep.SupernodeEgressBytes <= 0 {
		t.Errorf("supernode egress %d: the CDN metric was not read", rep.SupernodeEgressBytes)
	}
	if rep.Seconds.Max <= 0 || rep.Seconds.P50 > rep.Seconds.P99 || rep.Seconds.P99 > rep.Seconds.Max {
		t.Errorf("seconds %+v", rep.Seconds)
	}
	if rep.HostCapMbit != 0 || rep.OriginCapMbit != 0 || rep.LimitSeconds != 0 || rep.Notes == "" {
		t.Errorf("caps/limit/notes: %+v", rep)
	}

	got, err := report.Read(reportPath)
	if err != nil {
		t.Fatalf("report file: %v", err)
	}
	if len(got) != 1 || got[0] != rep {
		t.Errorf("report file holds %+v, run returned %+v", got, rep)
	}

	if len(tr.PIDs) != 1+3 {
		t.Errorf("traced %d child pids, want 4", len(tr.PIDs))
	}
	for _, pid := range tr.PIDs {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("child pid %d is still there (kill 0: %v)", pid, err)
		}
	}
	if tr.TempDir == "" {
		t.Error("no temp dir traced")
	} else if _, err := os.Stat(tr.TempDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temp dir %s not removed (stat: %v)", tr.TempDir, err)
	}
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
	tr := &trace{}
	o := defaultOptions()
	o.Size, o.Peers, o.BinDir, o.Report, o.Timeout = 1<<20, 2, binDir, "", 20*time.Second
	o.Out = &lineWriter{t: t}
	o.trace = tr
	_, err := run(context.Background(), o)
	if err == nil || !errors.Is(err, errExited) || !strings.Contains(err.Error(), "cannot start (fake)") {
		t.Fatalf("run = %v; want the supernode's exit with its log tail", err)
	}
	if _, err := os.Stat(tr.TempDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temp dir %s not removed (stat: %v)", tr.TempDir, err)
	}
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
}
