package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pouchfly/pouchfly/test/report"
)

// child is one supervised child process. Its stdout and stderr go to a log
// file. It runs in its own process group (a Ctrl-C on the terminal reaches
// only the demo, which then stops the children in order) and gets SIGKILL
// if the demo dies without cleaning up.
type child struct {
	name    string
	logPath string
	cmd     *exec.Cmd
	done    chan struct{} // closed when the process has exited and been reaped

	mu       sync.Mutex
	stopping bool
	err      error // Wait's result, valid after done
}

// startChild starts bin with args, logging to logPath.
func startChild(name, logPath, bin string, args ...string) (*child, error) {
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.Env = os.Environ()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	fmt.Fprintf(lf, "# %s %s\n", bin, strings.Join(args, " "))
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &child{name: name, logPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		lf.Close()
		c.mu.Lock()
		c.err = err
		c.mu.Unlock()
		close(c.done)
	}()
	return c, nil
}

// pid returns the process ID.
func (c *child) pid() int { return c.cmd.Process.Pid }

// exited reports whether the process has ended, and how.
func (c *child) exited() (bool, error) {
	select {
	case <-c.done:
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.err == nil {
			return true, fmt.Errorf("%s exited unexpectedly (status 0)", c.name)
		}
		return true, fmt.Errorf("%s exited unexpectedly: %v", c.name, c.err)
	default:
		return false, nil
	}
}

// unexpectedExit is the error of a child that ended before stop was called
// (nil while it runs or after a requested stop).
func (c *child) unexpectedExit() error {
	c.mu.Lock()
	stopping := c.stopping
	c.mu.Unlock()
	if stopping {
		return nil
	}
	_, err := c.exited()
	return err
}

// stop sends SIGTERM, waits up to timeout, then SIGKILLs and waits. It
// returns whether SIGKILL was needed. Safe to call more than once.
func (c *child) stop(timeout time.Duration) (killed bool) {
	c.mu.Lock()
	c.stopping = true
	c.mu.Unlock()
	select {
	case <-c.done:
		return false
	default:
	}
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
		return false
	case <-time.After(timeout):
	}
	c.cmd.Process.Kill()
	<-c.done
	return true
}

// tail returns the last n lines of the child's log.
func (c *child) tail(n int) string {
	return tailFile(c.logPath, n)
}

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// indent prefixes every line of s.
func indent(s, prefix string) string {
	return prefix + strings.ReplaceAll(s, "\n", "\n"+prefix)
}

// errExited marks errors caused by a child that died.
var errExited = errors.New("child process exited")

// procCPU returns the user+system CPU seconds pid has used so far, from
// /proc/<pid>/stat (pid 0: this process).
func procCPU(pid int) (float64, error) {
	p := "/proc/self/stat"
	if pid != 0 {
		p = fmt.Sprintf("/proc/%d/stat", pid)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces; fields after its ')'
	// start at field 3 (state); utime and stime are fields 14 and 15.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("%s: malformed", p)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("%s: short", p)
	}
	var ticks float64
	for _, s := range f[11:13] {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", p, err)
		}
		ticks += float64(v)
	}
	return ticks / report.ClockTicks, nil
}
