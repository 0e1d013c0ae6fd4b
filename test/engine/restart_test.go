package enginetest

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pouchfly/pouchfly/engine/api"
)

func (e *env) inspect(t *testing.T, name string) api.ContainerJSON {
	t.Helper()
	var j []api.ContainerJSON
	if err := json.Unmarshal([]byte(e.pouch(t, "inspect", name)), &j); err != nil || len(j) != 1 {
		t.Fatalf("inspect %s: %v", name, err)
	}
	return j[0]
}

var tickRE = regexp.MustCompile(`tick (\d+)`)

// lastTick is the highest "tick N" in a log.
func lastTick(log string) int {
	n := -1
	for _, m := range tickRE.FindAllStringSubmatch(log, -1) {
		if v, _ := strconv.Atoi(m[1]); v > n {
			n = v
		}
	}
	return n
}

func alive(pid int) bool { return pid > 0 && syscall.Kill(pid, 0) == nil }

func TestContainersSurvivePouchdRestart(t *testing.T) {
	e := need(t)
	img := e.ensureImage(t)
	suffix := fmt.Sprint(time.Now().UnixNano() % 100000)
	always, plain := "always-"+suffix, "plain-"+suffix
	e.pouch(t, "run", "-d", "--name", always, "--restart", "always", img, "sh", "-c",
		"i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done")
	e.pouch(t, "run", "-d", "--name", plain, "-m", "64m", "--disk-quota", "32m", img, "sleep", "1000")
	defer e.pouchRaw("rm", "-f", always, plain)
	pidA, pidP := e.inspect(t, always).State.Pid, e.inspect(t, plain).State.Pid
	time.Sleep(300 * time.Millisecond)

	for round, kill := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		before := lastTick(e.pouch(t, "logs", always))
		// pouchd goes away (gracefully, then crashing): the containers
		// and containerd stay.
		if kill == syscall.SIGKILL {
			_ = e.pouchd.Process.Kill()
			for e.pouchd.ProcessState == nil {
				time.Sleep(10 * time.Millisecond)
			}
			e.pouchd = nil
		} else if err := e.stopPouchd(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(500 * time.Millisecond)
		if !alive(pidA) || !alive(pidP) {
			t.Fatalf("round %d: containers died with pouchd (%v %v)", round, alive(pidA), alive(pidP))
		}
		if err := e.startPouchd(); err != nil {
			t.Fatal(err)
		}
		info := e.pouch(t, "info")
		if !strings.Contains(info, "(adopted)") {
			t.Errorf("round %d: containerd not adopted:\n%s", round, info)
		}
		ps := e.pouch(t, "ps")
		if !strings.Contains(ps, always) || !strings.Contains(ps, plain) {
			t.Fatalf("round %d: ps after the restart:\n%s", round, ps)
		}
		if j := e.inspect(t, always); j.State.Pid != pidA || !j.State.Running {
			t.Errorf("round %d: %s state after restart: %+v (pid was %d)", round, always, j.State, pidA)
		}
		// The log has what was written while pouchd was away, and goes on.
		eventually(t, 10*time.Second, "logs continue", func() error {
			if n := lastTick(e.pouch(t, "logs", always)); n < before+5 {
				return fmt.Errorf("last tick %d, was %d before the restart", n, before)
			}
			return nil
		})
		// exec still works on a re-attached container.
		if out := e.pouch(t, "exec", plain, "df", "-k", "/"); dfKB(t, out) > 34*1024 {
			t.Errorf("quota after restart: %s", out)
		}
	}

	// --restart always still applies: the process dies, pouchd starts it
	// again.
	if err := syscall.Kill(pidA, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "restarted by its policy", func() error {
		j := e.inspect(t, always)
		if !j.State.Running || j.State.Pid == pidA || j.RestartCount < 1 {
			return fmt.Errorf("state %+v restarts %d", j.State, j.RestartCount)
		}
		return nil
	})
	// It dies while pouchd is away: the next pouchd restarts it.
	pidA = e.inspect(t, always).State.Pid
	if err := e.stopPouchd(); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pidA, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if err := e.startPouchd(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "restarted at pouchd's start", func() error {
		j := e.inspect(t, always)
		if !j.State.Running || j.State.Pid == pidA || j.RestartCount < 2 {
			return fmt.Errorf("state %+v restarts %d", j.State, j.RestartCount)
		}
		return nil
	})
	// stop works on re-attached containers (and stops the policy).
	e.pouch(t, "stop", "-t", "1", plain)
	e.pouch(t, "stop", "-t", "1", always)
	time.Sleep(500 * time.Millisecond)
	if j := e.inspect(t, always); j.State.Running || j.State.Restarting {
		t.Errorf("%s after stop: %+v", always, j.State)
	}
	if alive(pidP) {
		t.Errorf("%s's process survived stop", plain)
	}
}

func TestRuntimesAndStreams(t *testing.T) {
	e := need(t)
	img := e.ensureImage(t)
	// A named runtime with extra args (a wrapper around runc --debug).
	if out := e.pouch(t, "run", "--rm", "--runtime", "runc-debug", img, "echo", "hi"); out != "hi\n" {
		t.Errorf("--runtime runc-debug: %q", out)
	}
	name := fmt.Sprintf("rt-%d", time.Now().UnixNano()%100000)
	e.pouch(t, "run", "-d", "--name", name, "--runtime", "runc-debug", img, "sleep", "1000")
	defer e.pouchRaw("rm", "-f", name)
	if ps := e.pouch(t, "ps"); !strings.Contains(ps, "runc-debug") {
		t.Errorf("ps does not show the runtime:\n%s", ps)
	}
	if info := e.pouch(t, "info"); !strings.Contains(info, "Runtimes: runc runc-debug") {
		t.Errorf("info runtimes:\n%s", info)
	}
	// stdin with -i, a TTY with -t.
	out, _, code := e.pouchAt(e.sock, strings.NewReader("from stdin\n"), "run", "--rm", "-i", img, "cat")
	if code != 0 || out != "from stdin\n" {
		t.Errorf("run -i: exit %d %q", code, out)
	}
	out, _, code = e.pouchAt(e.sock, strings.NewReader("x\n"), "exec", "-i", name, "sh", "-c", "cat; echo done")
	if code != 0 || out != "x\ndone\n" {
		t.Errorf("exec -i: exit %d %q", code, out)
	}
	out = e.pouch(t, "run", "--rm", "-t", img, "sh", "-c", "tty; echo $TERM")
	if !strings.Contains(out, "/dev/pts/") || !strings.Contains(out, "xterm") {
		t.Errorf("run -t: %q", out)
	}
	out = e.pouch(t, "exec", "-t", name, "tty")
	if !strings.Contains(out, "/dev/pts/") {
		t.Errorf("exec -t: %q", out)
	}
	// version shows both sides and containerd.
	if v := e.pouch(t, "version"); !strings.Contains(v, "Containerd:  1.6") {
		t.Errorf("version:\n%s", v)
	}
}

func TestContainerdCrashIsRepaired(t *testing.T) {
	e := need(t)
	img := e.ensureImage(t)
	name := fmt.Sprintf("cdcrash-%d", time.Now().UnixNano()%100000)
	e.pouch(t, "run", "-d", "--name", name, img, "sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done")
	defer e.pouchRaw("rm", "-f", name)
	pid := e.inspect(t, name).State.Pid
	b, err := os.ReadFile(filepath.Join(e.home, "containerd", "containerd.pid"))
	if err != nil {
		t.Fatal(err)
	}
	cpid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if err := syscall.Kill(cpid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	t.Logf("killed containerd pid %d", cpid)
	eventually(t, 30*time.Second, "containerd restarted", func() error {
		info, _, code := e.pouchRaw("info")
		if code != 0 || strings.Contains(info, fmt.Sprintf("pid %d ", cpid)) || strings.Contains(info, "pid 0 ") {
			return fmt.Errorf("info:\n%s", info)
		}
		return nil
	})
	if !alive(pid) {
		t.Fatalf("the container died with containerd")
	}
	// The container is still supervised: exec, logs, and its exit is seen.
	eventually(t, 20*time.Second, "exec after the containerd restart", func() error {
		if _, errOut, code := e.pouchRaw("exec", name, "true"); code != 0 {
			return fmt.Errorf("exit %d: %s", code, errOut)
		}
		return nil
	})
	before := lastTick(e.pouch(t, "logs", name))
	time.Sleep(400 * time.Millisecond)
	if after := lastTick(e.pouch(t, "logs", name)); after <= before {
		t.Errorf("logs stopped after the containerd restart (%d → %d)", before, after)
	}
	e.pouch(t, "stop", "-t", "1", name)
	if j := e.inspect(t, name); j.State.Running || j.State.ExitCode != 137 {
		t.Errorf("after stop: %+v", j.State)
	}
}
