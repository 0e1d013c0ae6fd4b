package enginetest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pouchfly/pouchfly/internal/testenv"
)

// pty is the master side of a pseudo-terminal whose slave is the
// controlling terminal of a pouch process: what a user's terminal
// emulator is to pouch.
type pty struct {
	t      *testing.T
	master *os.File
	cmd    *exec.Cmd
	mu     sync.Mutex
	buf    bytes.Buffer
	read   chan struct{} // closed when the reader ended
	waited chan struct{}
	code   int
}

// openPTY opens a pseudo-terminal pair (posix_openpt, unlockpt, ptsname)
// sized rows x cols.
func openPTY(t *testing.T, rows, cols uint16) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY|syscall.O_CLOEXEC, 0)
	testenv.Require(t, err == nil, fmt.Sprintf("no pseudo-terminals here (/dev/ptmx: %v)", err))
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		m.Close()
		t.Fatalf("unlockpt: %v", err)
	}
	n, err := unix.IoctlGetUint32(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		m.Close()
		t.Fatalf("ptsname: %v", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY|syscall.O_CLOEXEC, 0)
	if err != nil {
		m.Close()
		t.Fatalf("open slave: %v", err)
	}
	if err := unix.IoctlSetWinsize(int(m.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols}); err != nil {
		t.Fatalf("TIOCSWINSZ: %v", err)
	}
	return m, s
}

// startPTY runs pouch ARGS with a new pseudo-terminal of rows x cols as
// its controlling terminal and stdin, stdout and stderr (as a shell in a
// terminal emulator would).
func (e *env) startPTY(t *testing.T, rows, cols uint16, args ...string) *pty {
	t.Helper()
	m, s := openPTY(t, rows, cols)
	cmd := exec.Command(filepath.Join(e.bin, "pouch"), append([]string{"-H", "unix://" + e.sock}, args...)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = s, s, s
	// A session of its own with the pty as controlling terminal: window
	// changes send it SIGWINCH, as in a real terminal.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		m.Close()
		s.Close()
		t.Fatal(err)
	}
	s.Close()
	p := &pty{t: t, master: m, cmd: cmd, read: make(chan struct{}), waited: make(chan struct{})}
	go func() {
		defer close(p.read)
		b := make([]byte, 4096)
		for {
			n, err := m.Read(b)
			p.mu.Lock()
			p.buf.Write(b[:n])
			p.mu.Unlock()
			if err != nil { // EIO once every slave fd is closed
				return
			}
		}
	}()
	go func() {
		err := cmd.Wait()
		p.code = cmd.ProcessState.ExitCode()
		if err != nil && p.code < 0 {
			p.code = -1
		}
		close(p.waited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.waited:
		default:
			_ = cmd.Process.Kill()
			<-p.waited
		}
		m.Close()
	})
	return p
}

// output is everything pouch wrote to the terminal so far.
func (p *pty) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.buf.String()
}

// typeIn writes s as typed keys.
func (p *pty) typeIn(s string) {
	p.t.Helper()
	if _, err := p.master.Write([]byte(s)); err != nil {
		p.t.Fatalf("typing %q: %v", s, err)
	}
}

// expect waits until the output contains want.
func (p *pty) expect(want string, d time.Duration) {
	p.t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if strings.Contains(p.output(), want) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.t.Fatalf("terminal never showed %q; it shows:\n%q", want, p.output())
}

// resize changes the terminal's size (the kernel sends SIGWINCH to pouch).
func (p *pty) resize(rows, cols uint16) {
	p.t.Helper()
	if err := unix.IoctlSetWinsize(int(p.master.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols}); err != nil {
		p.t.Fatal(err)
	}
}

// exitCode waits for pouch to exit.
func (p *pty) exitCode(d time.Duration) int {
	p.t.Helper()
	select {
	case <-p.waited:
		return p.code
	case <-time.After(d):
		p.t.Fatalf("pouch did not exit within %v; the terminal shows:\n%q", d, p.output())
	}
	return -1
}

// sizeAfterResize types "echo S=$(stty size)=" until the container's
// pseudo-terminal reports want (the resize travels SIGWINCH → pouch →
// pouchd → containerd → the pty).
func (p *pty) sizeAfterResize(want string) {
	p.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		mark := fmt.Sprintf("S%d=", i)
		p.typeIn("echo " + mark + "$(stty size)=\r")
		p.expect(mark+"", 10*time.Second)
		time.Sleep(50 * time.Millisecond)
		out := p.output()
		if j := strings.LastIndex(out, mark); j >= 0 && strings.HasPrefix(out[j:], mark+want+"=") {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	p.t.Fatalf("the container's tty never became %q after the resize:\n%q", want, p.output())
}

// TestTTYRunInteractive drives `pouch run -i -t IMAGE sh` from a real
// pseudo-terminal: the container sees a TTY of the terminal's size from
// its first instruction, typed keys reach it and its output comes back,
// a window change while it runs is applied, and `exit 3` is pouch's exit
// code.
func TestTTYRunInteractive(t *testing.T) {
	e := need(t)
	img := e.ensureImage(t)
	p := e.startPTY(t, 30, 100, "run", "-i", "-t", "--rm", img, "sh")
	p.expect("# ", 30*time.Second) // the shell's prompt
	p.typeIn("tty; [ -t 0 ] && [ -t 1 ] && echo IS-A-TTY; echo N=$((6*7)); stty size\r")
	p.expect("/dev/pts/0", 10*time.Second)
	p.expect("IS-A-TTY", 10*time.Second)
	p.expect("N=42", 10*time.Second)
	p.expect("30 100", 10*time.Second)
	p.resize(40, 120)
	p.sizeAfterResize("40 120")
	p.typeIn("exit 3\r")
	if code := p.exitCode(20 * time.Second); code != 3 {
		t.Errorf("pouch exited %d, want the container's 3; terminal:\n%q", code, p.output())
	}
}

// TestTTYSizeFromTheStart is the "stty size under script" case: a command
// that asks for its terminal's size at once (`pouch run -t IMAGE stty
// size`, no -i; `pouch start -a -i` of a created TTY container) must see
// the terminal's size, not a 0x0 pseudo-terminal that a resize reaches
// too late ("stty: standard input").
func TestTTYSizeFromTheStart(t *testing.T) {
	e := need(t)
	img := e.ensureImage(t)
	for i := 0; i < 3; i++ { // it was a race: try a few times
		p := e.startPTY(t, 25, 91, "run", "-t", "--rm", img, "sh", "-c", "stty size; tty")
		if code := p.exitCode(30 * time.Second); code != 0 {
			t.Fatalf("run -t: exit %d:\n%q", code, p.output())
		}
		<-p.read
		// Without -i pouch leaves its terminal cooked: \r\n becomes \r\r\n.
		if out := strings.ReplaceAll(p.output(), "\r", ""); !strings.Contains(out, "25 91\n/dev/pts/0\n") {
			t.Fatalf("run -t: stty size; tty printed %q, want 25 91 and /dev/pts/0", out)
		}
	}
	name := fmt.Sprintf("tty-start-%d", time.Now().UnixNano()%100000)
	e.pouch(t, "create", "-i", "-t", "--name", name, img, "sh", "-c", "stty size; exit 6")
	defer e.pouchRaw("rm", "-f", name)
	p := e.startPTY(t, 33, 99, "start", "-a", "-i", name)
	if code := p.exitCode(30 * time.Second); code != 6 {
		t.Errorf("start -a -i: exit %d, want 6:\n%q", code, p.output())
	}
	<-p.read
	if out := p.output(); !strings.Contains(out, "33 99") {
		t.Errorf("start -a -i: stty size printed %q, want 33 99", out)
	}
}

// TestTTYExecInteractive drives `pouch exec -it CONTAINER sh`: a TTY of
// the terminal's size, input and output, a resize while it runs, and
// Ctrl-D ending the shell with the status of its last command as pouch's
// exit code.
func TestTTYExecInteractive(t *testing.T) {
	e := need(t)
	img := e.ensureImage(t)
	name := fmt.Sprintf("tty-exec-%d", time.Now().UnixNano()%100000)
	e.pouch(t, "run", "-d", "--name", name, img, "sleep", "1000")
	defer e.pouchRaw("rm", "-f", name)
	p := e.startPTY(t, 24, 81, "exec", "-it", name, "sh")
	p.expect("# ", 30*time.Second)
	p.typeIn("[ -t 0 ] && echo EXEC-TTY; echo N=$((7*6)); stty size\r")
	p.expect("EXEC-TTY", 10*time.Second)
	p.expect("N=42", 10*time.Second)
	p.expect("24 81", 10*time.Second)
	p.resize(50, 132)
	p.sizeAfterResize("50 132")
	prompts := strings.Count(p.output(), "# ")
	p.typeIn("(exit 4)\r")
	eventually(t, 10*time.Second, "the prompt after (exit 4)", func() error {
		if strings.Count(p.output(), "# ") <= prompts {
			return fmt.Errorf("terminal: %q", p.output())
		}
		return nil
	})
	p.typeIn("\x04") // Ctrl-D: EOF for the container's line discipline
	if code := p.exitCode(20 * time.Second); code != 4 {
		t.Errorf("pouch exec exited %d after Ctrl-D, want 4 (the last status); terminal:\n%q", code, p.output())
	}
	// The exec's end left the container running.
	if j := e.inspect(t, name); !j.State.Running {
		t.Errorf("container stopped with the exec")
	}
	// Non-TTY exec in the same container: stdin is not a terminal.
	if out, _, code := e.pouchRaw("exec", name, "sh", "-c", "[ -t 0 ] || echo NO-TTY"); code != 0 || out != "NO-TTY\n" {
		t.Errorf("exec without -t: exit %d %q", code, out)
	}
}
