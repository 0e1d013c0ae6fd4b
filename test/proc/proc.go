// Package proc supervises child processes for the demo, the testbed and
// the benchmarks: output to a log file, an own process group (a Ctrl-C on
// the terminal reaches only the harness, which stops children in order),
// SIGKILL if the harness dies without cleaning up, and a TERM-then-KILL
// stop.
package proc

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pouchfly/pouchfly/test/report"
)

// Proc is one supervised child process.
type Proc struct {
	// Name names the process in messages ("agent-h3", "supernode", …).
	Name string
	// LogPath is its log file (stderr, and stdout unless piped).
	LogPath string
	// Stdin and Stdout are set when started with Options.Pipes.
	Stdin  io.WriteCloser
	Stdout *bufio.Reader

	cmd  *exec.Cmd
	done chan struct{} // closed once the process exited and was reaped

	mu       sync.Mutex
	stopping bool
	err      error // Wait's result, valid after done
}

// Options tune Start.
type Options struct {
	// Env is added to the harness's environment.
	Env []string
	// Dir is the working directory ("" : the harness's).
	Dir string
	// Pipes connects Stdin and Stdout to the harness instead of the log.
	Pipes bool
	// Where, if set, is written into the log's first line ("[netns]").
	Where string
}

// Start runs bin with args, logging to logPath (appended).
func Start(name, logPath string, o Options, bin string, args ...string) (*Proc, error) {
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), o.Env...)
	cmd.Dir = o.Dir
	cmd.Stderr = lf
	p := &Proc{Name: name, LogPath: logPath, cmd: cmd, done: make(chan struct{})}
	if o.Pipes {
		if p.Stdin, err = cmd.StdinPipe(); err != nil {
			lf.Close()
			return nil, err
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			lf.Close()
			return nil, err
		}
		p.Stdout = bufio.NewReaderSize(out, 64<<10)
	} else {
		cmd.Stdout = lf
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	where := ""
	if o.Where != "" {
		where = "[" + o.Where + "] "
	}
	fmt.Fprintf(lf, "# %s%s %s\n", where, bin, strings.Join(args, " "))
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		err := cmd.Wait()
		lf.Close()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(p.done)
	}()
	return p, nil
}

// PID returns the process ID.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has ended, with its exit as an error.
func (p *Proc) Exited() (bool, error) {
	select {
	case <-p.done:
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.err == nil {
			return true, fmt.Errorf("%s exited (status 0)", p.Name)
		}
		return true, fmt.Errorf("%s exited: %v", p.Name, p.err)
	default:
		return false, nil
	}
}

// Unexpected is the exit error of a process that ended before Stop (nil
// while it runs or after a requested stop).
func (p *Proc) Unexpected() error {
	p.mu.Lock()
	stopping := p.stopping
	p.mu.Unlock()
	if stopping {
		return nil
	}
	_, err := p.Exited()
	return err
}

// Wait waits for the process to exit, at most d; it reports whether it
// exited.
func (p *Proc) Wait(d time.Duration) bool {
	select {
	case <-p.done:
		return true
	case <-time.After(d):
		return false
	}
}

// Stop sends SIGTERM, waits up to timeout, then SIGKILLs the process group
// and waits (at most 10 s more). It returns whether SIGKILL was needed.
// Safe to call more than once.
func (p *Proc) Stop(timeout time.Duration) (killed bool) {
	p.mu.Lock()
	p.stopping = true
	p.mu.Unlock()
	select {
	case <-p.done:
		return false
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	if p.Wait(timeout) {
		return false
	}
	syscall.Kill(-p.PID(), syscall.SIGKILL)
	p.cmd.Process.Kill()
	p.Wait(10 * time.Second)
	return true
}

// CPU returns the user+system CPU seconds the process used: from
// /proc/<pid>/stat while it runs, from its rusage once it exited.
func (p *Proc) CPU() float64 {
	select {
	case <-p.done:
		if st := p.cmd.ProcessState; st != nil {
			return (st.UserTime() + st.SystemTime()).Seconds()
		}
		return 0
	default:
	}
	v, _ := CPU(p.PID())
	return v
}

// Tail returns the last n lines of the process's log.
func (p *Proc) Tail(n int) string { return TailFile(p.LogPath, n) }

// TailFile returns the last n lines of a file.
func TailFile(path string, n int) string {
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

// CPU returns the user+system CPU seconds a running process has used, from
// /proc/<pid>/stat (pid 0: this process).
func CPU(pid int) (float64, error) {
	path := "/proc/self/stat"
	if pid != 0 {
		path = "/proc/" + strconv.Itoa(pid) + "/stat"
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces; fields after its ')'
	// start at field 3 (state); utime and stime are fields 14 and 15.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("%s: malformed", path)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("%s: short", path)
	}
	var ticks float64
	for _, s := range f[11:13] {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", path, err)
		}
		ticks += float64(v)
	}
	return ticks / report.ClockTicks, nil
}
