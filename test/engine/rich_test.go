package enginetest

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// zombies returns the ps lines in state Z.
func zombies(ps string) []string {
	var z []string
	for _, l := range strings.Split(ps, "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 && strings.HasPrefix(f[0], "Z") {
			z = append(z, l)
		}
	}
	return z
}

func TestRichContainer(t *testing.T) {
	e := need(t)
	e.pouch(t, "pull", e.richImg)
	name := fmt.Sprintf("rich-%d", time.Now().UnixNano()%100000)
	e.pouch(t, "run", "-d", "--name", name, "-e", "FOO=bar", "--rich", "--rich-mode", "dumb-init", "--initscript", "/init.sh", e.richImg, "sleep", "1000")
	defer e.pouchRaw("rm", "-f", name)
	// The initscript ran before the command.
	if out := e.pouch(t, "exec", name, "cat", "/tmp/initscript.out"); !strings.HasPrefix(out, "initscript ran") {
		t.Errorf("initscript output: %q", out)
	}
	// PID 1 is pouch-init; an orphan that exits is reaped.
	if out := e.pouch(t, "exec", name, "cat", "/proc/1/cmdline"); !strings.HasPrefix(out, "/.pouch/init") {
		t.Errorf("PID 1 is %q", out)
	}
	e.pouch(t, "exec", name, "sh", "-c", "(sleep 0.1 &)")
	time.Sleep(600 * time.Millisecond)
	if z := zombies(e.pouch(t, "exec", name, "ps", "-o", "stat,pid,comm")); len(z) > 0 {
		t.Errorf("zombies in the rich container: %v", z)
	}
	// Login shells see the container's environment.
	if out := e.pouch(t, "exec", name, "sh", "-c", "env -i /bin/sh -l -c 'echo $FOO'"); out != "bar\n" {
		t.Errorf("login shell FOO=%q", out)
	}
	// Signals reach the command: it dies of the SIGTERM (143), not of
	// the SIGKILL that follows the stop timeout (137).
	e.pouch(t, "stop", name)
	if j := e.inspect(t, name); j.State.ExitCode != 143 {
		t.Errorf("exit code after stop %d, want 143 (SIGTERM forwarded to the command)", j.State.ExitCode)
	}

	// The control: sleep as PID 1 leaves the orphan a zombie.
	plain := name + "-plain"
	e.pouch(t, "run", "-d", "--name", plain, e.richImg, "sleep", "1000")
	defer e.pouchRaw("rm", "-f", plain)
	e.pouch(t, "exec", plain, "sh", "-c", "(sleep 0.1 &)")
	time.Sleep(600 * time.Millisecond)
	if z := zombies(e.pouch(t, "exec", plain, "ps", "-o", "stat,pid,comm")); len(z) == 0 {
		t.Logf("no zombie without --rich either (the kernel reaped it?)")
	}

	// Bad rich options: clear errors.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--rich", "--rich-mode", "systemd"}, "requires --privileged"},
		{[]string{"--rich", "--rich-mode", "upstart"}, "unknown rich mode"},
		{[]string{"--rich-mode", "dumb-init"}, "need --rich"},
		{[]string{"--rich", "--initscript", "/no/such/script"}, "initscript"},
	} {
		args := append(append([]string{"run", "--rm"}, tc.args...), e.richImg, "true")
		_, errOut, code := e.pouchRaw(args...)
		if code == 0 || !strings.Contains(errOut, tc.want) {
			t.Errorf("run %v: exit %d, stderr %q (want %q)", tc.args, code, errOut, tc.want)
		}
	}
}
