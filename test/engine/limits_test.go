package enginetest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pouchfly/pouchfly/internal/testenv"
	"github.com/pouchfly/pouchfly/test/registry"
)

// memTotalKB reads MemTotal from a /proc/meminfo text.
func memTotalKB(meminfo string) int64 {
	for _, l := range strings.Split(meminfo, "\n") {
		if v, ok := strings.CutPrefix(l, "MemTotal:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return -1
}

func TestMemoryCPUPidsLimits(t *testing.T) {
	e := need(t)
	img := e.ensureImage(t)
	// -m 200m: the cgroup inside the container says so (cgroup v1 here;
	// the v2 file on v2 hosts).
	out := e.pouch(t, "run", "--rm", "-m", "200m", "--cpus", "0.5", "--pids-limit", "42", img, "sh", "-c",
		"cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/cpu.max /sys/fs/cgroup/pids.max")
	f := strings.Fields(out)
	if len(f) < 3 || f[0] != "209715200" {
		t.Fatalf("memory limit inside the container: %q, want 209715200 first", out)
	}
	if strings.Join(f, " ") != "209715200 50000 100000 42" && strings.Join(f, " ") != "209715200 50000 100000 42" {
		t.Errorf("cpu/pids limits inside: %q, want 209715200 50000 100000 42", out)
	}
	// Without lxcfs /proc/meminfo shows the host's memory; with it, 200 MiB.
	host := e.pouch(t, "run", "--rm", "-m", "200m", img, "cat", "/proc/meminfo")
	if kb := memTotalKB(host); kb <= 204800 {
		t.Errorf("without lxcfs MemTotal = %d kB, expected the host's", kb)
	}
	lx := e.pouch(t, "run", "--rm", "-m", "200m", "--enableLxcfs", img, "cat", "/proc/meminfo")
	if kb := memTotalKB(lx); kb != 204800 {
		t.Errorf("with --enableLxcfs MemTotal = %d kB, want 204800\n%s", kb, lx)
	}
	// (busybox's free asks sysinfo(2), which lxcfs cannot virtualise;
	// procps's free reads /proc/meminfo and shows 200 MiB: TestFreeShows200m.)
	// A memory hog is killed by the limit (exit 137, OOMKilled).
	hog := fmt.Sprintf("hog-%d", time.Now().UnixNano()%100000)
	if _, _, code := e.pouchRaw("run", "--name", hog, "-m", "16m", img, "sh", "-c", "tail /dev/zero"); code != 137 {
		t.Errorf("memory hog exit %d, want 137 (OOM kill)", code)
	}
	if j := e.inspect(t, hog); !j.State.OOMKilled {
		t.Errorf("memory hog: OOMKilled not set: %+v", j.State)
	}
	e.pouch(t, "rm", hog)
}

func TestLxcfsRestartRepairsBinds(t *testing.T) {
	e := need(t)
	img := e.ensureImage(t)
	name := fmt.Sprintf("lxcfs-%d", time.Now().UnixNano()%100000)
	e.pouch(t, "run", "-d", "--name", name, "-m", "200m", "--enableLxcfs", img, "sleep", "1000")
	defer e.pouchRaw("rm", "-f", name)
	if kb := memTotalKB(e.pouch(t, "exec", name, "cat", "/proc/meminfo")); kb != 204800 {
		t.Fatalf("MemTotal before = %d", kb)
	}
	pidFile := filepath.Join(e.home, "lxcfs.pid")
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if pid <= 1 {
		t.Fatalf("lxcfs pid %q", b)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	t.Logf("killed lxcfs pid %d", pid)
	// PouchContainer's users saw "Transport endpoint is not connected"
	// here for good; pouchd restarts lxcfs and repairs the binds.
	eventually(t, 30*time.Second, "meminfo readable again", func() error {
		out, errOut, code := e.pouchRaw("exec", name, "cat", "/proc/meminfo")
		if code != 0 {
			return fmt.Errorf("exit %d: %s", code, errOut)
		}
		if kb := memTotalKB(out); kb != 204800 {
			return fmt.Errorf("MemTotal %d", kb)
		}
		return nil
	})
	b2, _ := os.ReadFile(pidFile)
	if strings.TrimSpace(string(b2)) == strings.TrimSpace(string(b)) {
		t.Errorf("lxcfs pid file unchanged: not restarted?")
	}
	// New containers get the new lxcfs too.
	if kb := memTotalKB(e.pouch(t, "run", "--rm", "-m", "100m", "--enableLxcfs", img, "cat", "/proc/meminfo")); kb != 102400 {
		t.Errorf("new container after the restart: MemTotal %d", kb)
	}
}

// ensureProcpsImage pushes (once) a busybox image that also holds the
// host's procps free with its shared libraries and loader, and returns
// its name.
func (e *env) ensureProcpsImage(t *testing.T) string {
	t.Helper()
	_, err := os.Stat(registry.DefaultProcpsFree)
	testenv.Require(t, err == nil, registry.DefaultProcpsFree+" is missing (apt-get install procps)")
	e.procpsOnce.Do(func() {
		base, err := registry.BusyboxImage(registry.BusyboxOptions{})
		if err == nil {
			var img *registry.Image
			if img, err = registry.AddHostBinaries(base, registry.DefaultProcpsFree); err == nil {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				err = e.reg.Push(ctx, "test/procps", "v1", img)
			}
		}
		e.procpsErr = err
	})
	if e.procpsErr != nil {
		t.Fatalf("procps image: %v", e.procpsErr)
	}
	return e.reg.Host() + "/test/procps:v1"
}

// freeMemTotal reads the total of free -m's "Mem:" line.
func freeMemTotal(out string) int {
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[0] == "Mem:" {
			n, err := strconv.Atoi(f[1])
			if err == nil {
				return n
			}
		}
	}
	return -1
}

// TestFreeShows200m is PouchContainer's headline example with a real
// free: `pouch run -m 200m --enableLxcfs IMAGE free -m` shows the
// container's 200 MiB. procps's free reads /proc/meminfo, which lxcfs
// serves per container; busybox's free asks sysinfo(2), which no FUSE
// filesystem can answer for a container (it keeps showing the host:
// docs/engine.md).
func TestFreeShows200m(t *testing.T) {
	e := need(t)
	img := e.ensureProcpsImage(t)
	e.pouch(t, "pull", img)
	if v := e.pouch(t, "run", "--rm", img, "free", "-V"); !strings.Contains(v, "procps") {
		t.Fatalf("free in the image is not procps's: %q", v)
	}
	out := e.pouch(t, "run", "--rm", "-m", "200m", "--enableLxcfs", img, "free", "-m")
	t.Logf("pouch run -m 200m --enableLxcfs %s free -m:\n%s", img, out)
	if total := freeMemTotal(out); total < 195 || total > 200 {
		t.Errorf("free -m inside -m 200m --enableLxcfs: Mem total %d MiB, want about 200:\n%s", total, out)
	}
	// Without lxcfs the same free shows the host's memory.
	host := e.pouch(t, "run", "--rm", "-m", "200m", img, "free", "-m")
	if total := freeMemTotal(host); total <= 200 {
		t.Errorf("free -m without lxcfs: Mem total %d MiB, expected the host's:\n%s", total, host)
	}
	// busybox's free (sysinfo(2)) cannot be virtualised by lxcfs.
	bb := e.pouch(t, "run", "--rm", "-m", "200m", "--enableLxcfs", img, "/bin/free", "-m")
	t.Logf("busybox free -m under lxcfs (sysinfo(2): the host's numbers):\n%s", bb)
}
