package rich

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/pouchfly/pouchfly/internal/testenv"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func need(t *testing.T, ok bool, why string) {
	t.Helper()
	testenv.Require(t, ok, why)
}

var (
	buildOnce sync.Once
	initBin   string
	buildErr  error
)

// pouchInit builds cmd/pouch-init statically, once per test binary.
func pouchInit(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "pouch-init-test-")
		if err != nil {
			buildErr = err
			return
		}
		initBin = filepath.Join(dir, "pouch-init")
		goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, goBin, "build", "-o", initBin, "github.com/pouchfly/pouchfly/cmd/pouch-init")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build pouch-init: %v: %s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return initBin
}

// needPIDNS requires what running pouch-init as PID 1 takes.
func needPIDNS(t *testing.T) {
	t.Helper()
	need(t, os.Geteuid() == 0, "needs root (PID and mount namespaces)")
	_, err := exec.LookPath("unshare")
	need(t, err == nil, "needs unshare (util-linux)")
}

// container runs pouch-init as PID 1 of a new PID namespace with its own
// /proc, like a container's init. Killing unshare kills pouch-init
// (--kill-child), and with it the whole namespace.
type container struct {
	cmd    *exec.Cmd
	stdout *bytes.Buffer
	stderr *bytes.Buffer
	lines  chan string
	done   chan struct{}
}

func startContainer(t *testing.T, args ...string) *container {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	full := append([]string{"--pid", "--fork", "--mount-proc", "--kill-child", pouchInit(t)}, args...)
	cmd := exec.CommandContext(ctx, "unshare", full...)
	c := &container{cmd: cmd, stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}, lines: make(chan string, 100), done: make(chan struct{})}
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = pw, c.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	var copied sync.WaitGroup
	copied.Add(1)
	go func() {
		defer copied.Done()
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			c.stdout.WriteString(sc.Text() + "\n")
			select {
			case c.lines <- sc.Text():
			default:
			}
		}
	}()
	go func() { cmd.Wait(); copied.Wait(); close(c.done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-c.done
	})
	return c
}

// wait returns the exit status of unshare (which is pouch-init's).
func (c *container) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-c.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("container did not exit; stdout %q stderr %q", c.stdout, c.stderr)
	}
	return c.cmd.ProcessState.ExitCode()
}

func (c *container) waitLine(t *testing.T, want string) {
	t.Helper()
	deadline := time.After(15 * time.Second)
	for {
		select {
		case l := <-c.lines:
			if l == want {
				return
			}
		case <-deadline:
			t.Fatalf("no %q line; stdout %q stderr %q", want, c.stdout, c.stderr)
		}
	}
}

// initPid returns pouch-init's PID on the host: unshare's only child.
func (c *container) initPid(t *testing.T) int {
	t.Helper()
	p := c.cmd.Process.Pid
	for i := 0; i < 200; i++ {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", p, p))
		if f := strings.Fields(string(b)); len(f) == 1 {
			n, _ := strconv.Atoi(f[0])
			return n
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("pouch-init not found under unshare")
	return 0
}

// The command orphans two children (their parent subshells exit at once);
// they are reparented to PID 1 and must be reaped when they end. The
// command then lists the states of all processes of the namespace and
// exits 7, which must come out of pouch-init.
func TestInitReapsZombiesAndPropagatesStatus(t *testing.T) {
	needPIDNS(t)
	script := `(sleep 0.2 &); (sleep 0.3 &); sleep 1
for f in /proc/[0-9]*/stat; do read -r l < "$f" && echo "STAT $l"; done
exit 7`
	c := startContainer(t, "--mode", "dumb-init", "--", "sh", "-c", script)
	if code := c.wait(t); code != 7 {
		t.Fatalf("exit status %d, want 7; stderr %q", code, c.stderr)
	}
	var states []string
	for _, l := range strings.Split(c.stdout.String(), "\n") {
		if !strings.HasPrefix(l, "STAT ") {
			continue
		}
		// "pid (comm) S ..." — comm may hold spaces, the state follows ')'.
		i := strings.LastIndex(l, ")")
		f := strings.Fields(l[i+1:])
		states = append(states, strings.TrimPrefix(l[:i+1], "STAT ")+" "+f[0])
		if f[0] == "Z" {
			t.Errorf("zombie in the container: %s", l)
		}
	}
	if len(states) < 2 || !strings.HasPrefix(states[0], "1 (pouch-init)") {
		t.Fatalf("process list %q: want pouch-init as PID 1 and the command", states)
	}
	t.Logf("processes at the end: %q", states)
}

func TestInitSignalExitStatus(t *testing.T) {
	needPIDNS(t)
	c := startContainer(t, "--", "sh", "-c", "kill -KILL $$")
	if code := c.wait(t); code != 128+9 {
		t.Fatalf("exit status %d, want 137", code)
	}
}

func TestInitForwardsSIGTERM(t *testing.T) {
	needPIDNS(t)
	status := t.TempDir()
	c := startContainer(t, "--status-file", filepath.Join(status, StatusFile), "--",
		"sh", "-c", `trap 'echo got-term; exit 42' TERM; echo ready; while :; do sleep 0.05; done`)
	c.waitLine(t, "ready")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := WaitStarted(ctx, status, c.done)
	if err != nil || st.State != StateRunning || st.Pid <= 1 {
		t.Fatalf("WaitStarted = %+v, %v", st, err)
	}
	pid := c.initPid(t)
	if err := unix.Kill(pid, unix.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := c.wait(t); code != 42 {
		t.Fatalf("exit status %d, want 42; stdout %q stderr %q", code, c.stdout, c.stderr)
	}
	if !strings.Contains(c.stdout.String(), "got-term") {
		t.Fatalf("the command did not get SIGTERM: %q", c.stdout)
	}
}

func TestInitScriptAndEnvFile(t *testing.T) {
	needPIDNS(t)
	dir := t.TempDir()
	marker := filepath.Join(dir, "marker")
	script := filepath.Join(dir, "init.sh")
	os.WriteFile(script, []byte("echo initscript-ran > "+marker+"\n(sleep 0.1 &)\n"), 0o644)
	envFile := filepath.Join(dir, "profile.d", "pouchenv.sh")
	t.Setenv("FOO", "bar baz")
	c := startContainer(t, "--initscript", script, "--env-file", envFile, "--",
		"sh", "-c", "cat "+marker+"; . "+envFile+"; echo \"FOO=$FOO\"")
	if code := c.wait(t); code != 0 {
		t.Fatalf("exit status %d; stderr %q", code, c.stderr)
	}
	out := c.stdout.String()
	if !strings.Contains(out, "initscript-ran") {
		t.Fatalf("initscript did not run before the command: %q", out)
	}
	// The environment came from the test process (unshare passes it on).
	if !strings.Contains(out, "FOO=bar baz") {
		t.Fatalf("env file not sourced: %q", out)
	}
}

func TestEnvFileQuoting(t *testing.T) {
	dir := t.TempDir()
	envFile := filepath.Join(dir, "pouchenv.sh")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, pouchInit(t), "--env-file", envFile, "--", "true")
	cmd.Env = []string{"PATH=/usr/bin:/bin", `TRICKY=it's "quoted" $HOME ;x`, "EMPTY=", "HOME=/root", "bad-name=1"}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	b, err := os.ReadFile(envFile)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "HOME=") || strings.Contains(string(b), "bad-name") {
		t.Errorf("env file holds what it should skip:\n%s", b)
	}
	out, err := exec.CommandContext(ctx, "sh", "-c", ". "+envFile+`; printf '%s|%s' "$TRICKY" "$EMPTY"`).Output()
	if err != nil || string(out) != `it's "quoted" $HOME ;x|` {
		t.Fatalf("sourced: %q, %v\n%s", out, err, b)
	}
}

func TestInitScriptFailureFailsStart(t *testing.T) {
	needPIDNS(t)
	dir := t.TempDir()
	script := filepath.Join(dir, "init.sh")
	os.WriteFile(script, []byte("echo boom >&2\nexit 3\n"), 0o644)
	marker := filepath.Join(dir, "command-ran")
	c := startContainer(t, "--initscript", script, "--status-file", filepath.Join(dir, StatusFile), "--", "touch", marker)
	if code := c.wait(t); code != ExitInitScriptFailed {
		t.Fatalf("exit status %d, want %d", code, ExitInitScriptFailed)
	}
	if !strings.Contains(c.stderr.String(), "boom") || !strings.Contains(c.stderr.String(), "initscript") {
		t.Fatalf("stderr %q lacks the script's output and the reason", c.stderr)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the command ran although the initscript failed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := WaitStarted(ctx, dir, c.done)
	if !errors.Is(err, ErrInitScript) || st.ExitCode != 3 {
		t.Fatalf("WaitStarted = %+v, %v", st, err)
	}
}

func TestInitBadUsage(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, args := range [][]string{{"--mode", "dumb-init"}, {"--mode", "upstart", "--", "true"}, {"--", "/no/such/command"}} {
		cmd := exec.CommandContext(ctx, pouchInit(t), args...)
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != ExitInitFailed {
			t.Errorf("pouch-init %q: %v, want exit %d: %s", args, err, ExitInitFailed, out)
		}
	}
	// Not PID 1 (no namespace): the subreaper still reaps and the status comes out.
	cmd := exec.CommandContext(ctx, pouchInit(t), "--", "sh", "-c", "exit 5")
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 5 {
		t.Fatalf("exit 5 → %v", err)
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	if initBin != "" {
		os.RemoveAll(filepath.Dir(initBin))
	}
	os.Exit(code)
}
