package containerd

import (
	"context"
	"errors"
	"github.com/pouchfly/pouchfly/internal/testenv"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pouchfly/pouchfly/internal/errdefs"
)

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mod := range map[string]func(*Config){
		"no binary nor address": func(c *Config) { c.Binary = "" },
		"zero timeout":          func(c *Config) { c.StartTimeout = 0 },
		"zero backoff":          func(c *Config) { c.MaxBackoff = 0 },
		"bad level":             func(c *Config) { c.LogLevel = "loud" },
	} {
		c := DefaultConfig()
		mod(&c)
		if err := c.Validate(); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestMissingBinary(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Binary = "/nonexistent/containerd"
	s, err := New(cfg, t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); !errors.Is(err, errdefs.ErrNotFound) || !strings.Contains(err.Error(), "apt-get install containerd") {
		t.Fatalf("Start = %v", err)
	}
}

// needContainerd skips (fails under CI) without root and containerd.
func needContainerd(t *testing.T) {
	t.Helper()
	why := ""
	if os.Geteuid() != 0 {
		why = "needs root to run containerd"
	} else if _, err := exec.LookPath("containerd"); err != nil {
		why = "containerd is not installed (apt-get install containerd)"
	}
	testenv.Require(t, why == "", why)
}

// TestSpawnAdoptRestartStop: a supervisor spawns containerd; a second one
// (a restarted pouchd) adopts it; when it dies the second restarts it;
// stopping ends it.
func TestSpawnAdoptRestartStop(t *testing.T) {
	needContainerd(t)
	dir, err := os.MkdirTemp("/tmp", "pf-cd-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	cfg := DefaultConfig()
	cfg.KeepRunning = false
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s1, _ := New(cfg, dir, nil)
	if err := s1.Start(ctx); err != nil {
		t.Fatal(err)
	}
	pid1 := s1.PID()
	if pid1 == 0 || s1.Adopted() {
		t.Fatalf("spawned pid %d adopted %v", pid1, s1.Adopted())
	}
	defer syscall.Kill(pid1, syscall.SIGKILL)
	b, _ := os.ReadFile(s1.Paths().Config)
	for _, want := range []string{"io.containerd.grpc.v1.cri", s1.Paths().Socket, s1.Paths().Root} {
		if !strings.Contains(string(b), want) {
			t.Errorf("config.toml lacks %q", want)
		}
	}

	s2, _ := New(cfg, dir, nil)
	if err := s2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if !s2.Adopted() || s2.PID() != pid1 {
		t.Fatalf("second supervisor: adopted %v pid %d (want %d)", s2.Adopted(), s2.PID(), pid1)
	}
	restarted := make(chan struct{}, 1)
	s2.OnRestart(func() { restarted <- struct{}{} })
	rctx, rcancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s2.Run(rctx) }()
	syscall.Kill(pid1, syscall.SIGKILL)
	select {
	case <-restarted:
	case <-ctx.Done():
		t.Fatal("containerd not restarted")
	}
	pid2 := s2.PID()
	if pid2 == pid1 || pid2 == 0 || s2.Restarts() != 1 {
		t.Fatalf("after the restart: pid %d restarts %d", pid2, s2.Restarts())
	}
	defer syscall.Kill(pid2, syscall.SIGKILL)
	if err := ping(ctx, s2.Address()); err != nil {
		t.Fatalf("restarted containerd does not answer: %v", err)
	}
	rcancel() // KeepRunning off: Run stops it
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if waitGone(pid2, 5*time.Second) == false {
		t.Errorf("containerd %d still running after Run returned", pid2)
	}
}
