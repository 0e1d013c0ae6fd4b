package lxcfs

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"github.com/pouchfly/pouchfly/internal/testenv"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pouchfly/pouchfly/internal/errdefs"
)

func need(t *testing.T, ok bool, why string) {
	t.Helper()
	testenv.Require(t, ok, why)
}

func needLxcfs(t *testing.T) {
	t.Helper()
	need(t, os.Geteuid() == 0, "needs root (FUSE mounts, setns)")
	_, err := exec.LookPath("lxcfs")
	need(t, err == nil, "needs lxcfs (apt-get install lxcfs)")
	_, err = os.Stat("/dev/fuse")
	need(t, err == nil, "needs /dev/fuse")
}

func TestConfigAndBinds(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	bad := DefaultConfig()
	bad.RestartDelay = 0
	if err := bad.Validate(); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("Validate = %v", err)
	}
	cfg := DefaultConfig()
	cfg.LoadAvg = false
	s, err := New(cfg, "/var/lib/pouchd")
	if err != nil {
		t.Fatal(err)
	}
	binds := s.Binds()
	if len(binds) != 7 {
		t.Fatalf("Binds = %+v", binds)
	}
	for _, b := range binds {
		if b.Destination == "/proc/loadavg" {
			t.Error("loadavg bound without Config.LoadAvg")
		}
		if b.Type != "bind" || b.Source != "/var/lib/pouchd/lxcfs"+b.Destination || strings.Join(b.Options, ",") != "bind,rprivate" {
			t.Errorf("bind %+v", b)
		}
	}
}

func TestMissingBinary(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Binary = "/nonexistent/lxcfs"
	s, err := New(cfg, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Run(ctx); !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), "apt-get install lxcfs") {
		t.Fatalf("Run = %v", err)
	}
	if err := s.Ready(ctx); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("Ready = %v", err)
	}
}

// startSupervisor runs a supervisor in a temp home; at the end of the test
// it is stopped and nothing of it may remain.
func startSupervisor(t *testing.T, home string, stopOnExit bool) (*Supervisor, context.CancelFunc, <-chan error) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.StopOnExit = stopOnExit
	s, err := New(cfg, home)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	rctx, rcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer rcancel()
	if err := s.Ready(rctx); err != nil {
		cancel()
		t.Fatalf("Ready: %v (log: %s)", err, s.logTail())
	}
	return s, cancel, done
}

func stopAndCheck(t *testing.T, s *Supervisor, cancel context.CancelFunc, done <-chan error) {
	t.Helper()
	pid := s.Pid()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return")
	}
	if pid > 0 {
		if err := unix.Kill(pid, 0); err == nil {
			unix.Kill(pid, unix.SIGKILL)
			t.Errorf("lxcfs %d still running after Run returned", pid)
		}
	}
	if mountedAt(t, s.mnt) {
		unix.Unmount(s.mnt, unix.MNT_DETACH)
		t.Errorf("lxcfs still mounted at %s", s.mnt)
	}
}

func mountedAt(t *testing.T, mp string) bool {
	mounts, err := readMountinfo("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	_, ok := mountAt(mounts, mp)
	return ok
}

func tempHome(t *testing.T) string {
	home, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return home
}

func readMeminfo(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	if !strings.HasPrefix(string(b), "MemTotal:") {
		return "", fmt.Errorf("%s: unexpected content %.40q", path, b)
	}
	return string(b), nil
}

// waitRestart waits until a new lxcfs (not old) serves.
func waitRestart(t *testing.T, s *Supervisor, old int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if p := s.Pid(); p != 0 && p != old {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err := s.Ready(ctx)
			cancel()
			if err == nil {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("lxcfs was not restarted (log: %s)", s.logTail())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestSupervisorRestartsLxcfs(t *testing.T) {
	needLxcfs(t)
	home := tempHome(t)
	s, cancel, done := startSupervisor(t, home, true)
	defer stopAndCheck(t, s, cancel, done)

	if _, err := readMeminfo(filepath.Join(s.MountPoint(), "proc/meminfo")); err != nil {
		t.Fatal(err)
	}
	files := s.Files()
	for _, want := range []string{"/proc/meminfo", "/proc/cpuinfo", "/proc/stat", "/proc/uptime", "/proc/diskstats", "/proc/swaps", "/proc/loadavg"} {
		if !strings.Contains(strings.Join(files, " "), want) {
			t.Errorf("Files() = %v, lacks %s", files, want)
		}
	}
	t.Logf("lxcfs %d serves %v", s.Pid(), files)

	restarted := make(chan struct{}, 4)
	s.OnRestart(func() { restarted <- struct{}{} })
	old := s.Pid()
	if err := unix.Kill(old, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitRestart(t, s, old)
	select {
	case <-restarted:
	case <-time.After(10 * time.Second):
		t.Fatal("OnRestart hook not called")
	}
	if _, err := readMeminfo(filepath.Join(s.MountPoint(), "proc/meminfo")); err != nil {
		t.Fatalf("after restart: %v", err)
	}
	// Exactly one lxcfs mount at the mount point (the dead one was removed).
	mounts, _ := readMountinfo("/proc/self/mountinfo")
	n := 0
	for _, m := range mounts {
		if m.MountPoint == s.MountPoint() {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d mounts at %s after restart", n, s.MountPoint())
	}
}

func TestSupervisorAdoptsLiveLxcfs(t *testing.T) {
	needLxcfs(t)
	home := tempHome(t)
	s1, cancel1, done1 := startSupervisor(t, home, false)
	pid := s1.Pid()
	cancel1()
	<-done1
	t.Cleanup(func() { // in case the test fails before s2 stops it
		unix.Kill(pid, unix.SIGKILL)
		unix.Unmount(filepath.Join(home, "lxcfs"), unix.MNT_DETACH)
	})
	if err := unix.Kill(pid, 0); err != nil {
		t.Fatalf("lxcfs %d did not outlive Run without StopOnExit: %v", pid, err)
	}
	s2, cancel2, done2 := startSupervisor(t, home, true)
	hooked := make(chan struct{}, 1)
	s2.OnRestart(func() { hooked <- struct{}{} })
	if s2.Pid() != pid {
		t.Fatalf("second supervisor runs lxcfs %d, want the adopted %d", s2.Pid(), pid)
	}
	// An adopted lxcfs that dies is restarted too.
	unix.Kill(pid, unix.SIGKILL)
	waitRestart(t, s2, pid)
	select {
	case <-hooked:
	case <-time.After(10 * time.Second):
		t.Fatal("OnRestart hook not called after the adopted lxcfs died")
	}
	stopAndCheck(t, s2, cancel2, done2)
}

// A "container": a process in its own mount namespace with lxcfs's
// meminfo bound over its /proc/meminfo. lxcfs is killed (the bind goes
// stale: ENOTCONN), restarted by the supervisor, and Repair makes the
// bind read again, first called by hand and then from the OnRestart hook.
func TestRepairAfterRestart(t *testing.T) {
	needLxcfs(t)
	_, err := exec.LookPath("unshare")
	need(t, err == nil, "needs unshare (util-linux)")
	home := tempHome(t)
	s, cancel, done := startSupervisor(t, home, true)
	defer stopAndCheck(t, s, cancel, done)

	src := filepath.Join(s.MountPoint(), "proc/meminfo")
	cmd := exec.Command("unshare", "-m", "--propagation", "private", "sh", "-c",
		"mount --bind "+src+" /proc/meminfo && echo ready && exec sleep 120")
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	defer func() { cmd.Process.Kill(); <-exited }()
	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Scan()
		line <- sc.Text()
	}()
	select {
	case l := <-line:
		if l != "ready" {
			t.Fatalf("container said %q", l)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("container did not start")
	}
	pid := cmd.Process.Pid
	inside := fmt.Sprintf("/proc/%d/root/proc/meminfo", pid)
	if _, err := readMeminfo(inside); err != nil {
		t.Fatalf("before the crash: %v", err)
	}
	// Healthy binds are left alone.
	if err := s.Repair(context.Background(), pid); err != nil {
		t.Fatalf("Repair of a healthy container: %v", err)
	}
	// The host's /proc/meminfo is untouched by the container's bind.
	if b, _ := os.ReadFile("/proc/meminfo"); !strings.Contains(string(b), "MemTotal") {
		t.Fatal("host /proc/meminfo unreadable")
	}

	old := s.Pid()
	unix.Kill(old, unix.SIGKILL)
	waitRestart(t, s, old)
	_, err = os.ReadFile(inside)
	if !errors.Is(err, syscall.ENOTCONN) {
		t.Fatalf("stale bind read: %v, want ENOTCONN (Transport endpoint is not connected)", err)
	}
	t.Logf("after the crash, inside the container: %v", err)
	ctx, rcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer rcancel()
	if err := s.Repair(ctx, pid); err != nil {
		t.Fatalf("Repair: %v", err)
	}
	if _, err := readMeminfo(inside); err != nil {
		t.Fatalf("after Repair: %v", err)
	}

	// The engine's way: repair from the OnRestart hook.
	repaired := make(chan error, 4)
	s.OnRestart(func() { repaired <- s.Repair(ctx, pid) })
	old = s.Pid()
	unix.Kill(old, unix.SIGKILL)
	select {
	case err := <-repaired:
		if err != nil {
			t.Fatalf("Repair from hook: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("hook did not run")
	}
	if _, err := readMeminfo(inside); err != nil {
		t.Fatalf("after hook Repair: %v", err)
	}
	if err := s.Repair(ctx, 1<<22+12345); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("Repair of a missing pid = %v", err)
	}
}
