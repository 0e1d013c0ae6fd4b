package chaos

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pouchfly/pouchfly/internal/mountinfo"
	"github.com/pouchfly/pouchfly/internal/testenv"
)

// The loopback variant of the chaos suite: every scenario of Scenarios on
// test/cluster (real supernode and agents in this process on 127.0.0.x),
// sized by LoopbackProfile. Each writes its report (DESIGN.md §5 objects
// with the scenario's figures), reads it back and asserts on what it read
// (Verify). `make chaos` runs the same scenarios on the testbed.

// loopbackRates: each agent is capped at 8 MiB/s both ways (a "host cap"
// that makes transfers take a while and the swarm matter), the origin at
// 32 MiB/s in all.
const (
	loopbackHostRate   = 8 << 20
	loopbackOriginRate = 32 << 20
)

func runLoopback(t *testing.T, short string) {
	s, ok := scenarioByShort(short)
	if !ok {
		t.Fatalf("no scenario %q", short)
	}
	if s.Root {
		testenv.Require(t, os.Geteuid() == 0, "the "+short+" scenario mounts a tmpfs, which needs root")
	}
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	dir := t.TempDir()
	env := &LoopbackEnv{Dir: dir, Hosts: 16, HostRate: loopbackHostRate, OriginRate: loopbackOriginRate}
	if path := os.Getenv("POUCHFLY_CHAOS_LOG"); path != "" {
		// The cluster's logs, for a failure's post-mortem.
		f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		env.Logger = slog.New(slog.NewTextHandler(f, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	p := LoopbackProfile()
	ctx, cancel := context.WithTimeout(context.Background(), p.Timeout+30*time.Second)
	defer cancel()
	start := time.Now()
	rs, err := Run(ctx, env, p, s)
	if err != nil {
		t.Fatalf("scenario %s could not run: %v", short, err)
	}
	if len(rs) == 0 {
		t.Fatal("no result")
	}
	// Write the report, read it back and judge what was read.
	path := filepath.Join(t.TempDir(), "chaos-report.json")
	if err := WriteResults(path, rs); err != nil {
		t.Fatal(err)
	}
	back, err := ReadResults(path)
	if err != nil {
		t.Fatal(err)
	}
	var tbl bytes.Buffer
	Table(&tbl, back)
	t.Logf("%s in %.1fs\n%s", short, time.Since(start).Seconds(), tbl.String())
	for _, r := range back {
		if r.Scenario == "" || r.Hosts < 1 || r.BlobBytes < 1 || r.Env != "loopback" {
			t.Errorf("report incomplete: %+v", r.Report)
		}
		checks := Verify(r)
		if len(checks) == 0 {
			t.Errorf("%s: no checks", r.Scenario)
		}
		for _, c := range checks {
			if !c.OK {
				t.Errorf("%s: %s: %s", r.Scenario, c.Name, c.Detail)
			} else {
				t.Logf("%s: ok: %s: %s", r.Scenario, c.Name, c.Detail)
			}
		}
		if t.Failed() {
			t.Logf("%s notes: %s", r.Scenario, r.Notes)
		}
	}
	// Nothing of the run is left mounted.
	if ms, err := mountinfo.Read("/proc/self/mountinfo"); err == nil {
		for _, m := range ms {
			if strings.HasPrefix(m.MountPoint, dir) {
				t.Errorf("left mounted: %s", m.MountPoint)
			}
		}
	}
}

func scenarioByShort(short string) (Scenario, bool) {
	for _, s := range Scenarios() {
		if s.Short == short {
			return s, true
		}
	}
	return Scenario{}, false
}

func TestKillRestart(t *testing.T)      { runLoopback(t, "kill") }
func TestSupernodeRestart(t *testing.T) { runLoopback(t, "supernode") }
func TestMaliciousHost(t *testing.T)    { runLoopback(t, "malicious") }
func TestTricklingHost(t *testing.T)    { runLoopback(t, "trickler") }
func TestOriginFaults(t *testing.T)     { runLoopback(t, "origin") }
func TestDiskFull(t *testing.T)         { runLoopback(t, "disk") }
func TestThousandRequests(t *testing.T) { runLoopback(t, "requests") }
