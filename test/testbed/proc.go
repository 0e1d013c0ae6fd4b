package testbed

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Proc is a process the testbed started inside a host's namespace. Its
// stderr (and stdout unless piped) go to a log file in the host's
// directory. It runs in its own process group and gets SIGKILL if the
// harness dies without cleaning up (parent-death signal); Close stops it
// in any case.
type Proc struct {
	// Name names the process in logs ("agent-h3", "supernode", …).
	Name string
	// Host is where it runs.
	Host *Host
	// LogPath is its log file.
	LogPath string
	// Stdin and Stdout are set when started with Pipes.
	Stdin  io.WriteCloser
	Stdout *bufio.Reader

	cmd  *exec.Cmd
	done chan struct{}

	mu       sync.Mutex
	stopping bool
	err      error
}

// ProcOptions tune Start.
type ProcOptions struct {
	// Env is added to the harness's environment.
	Env []string
	// Pipes connects Stdin and Stdout to the harness.
	Pipes bool
	// Dir is the working directory (default: the host's directory).
	Dir string
}

// Start runs bin with args inside h's namespace (`ip netns exec`, which
// execs bin in place, so the process ID is bin's). It is stopped by Close
// if still running.
func (tb *Testbed) Start(h *Host, name string, o ProcOptions, bin string, args ...string) (*Proc, error) {
	tb.mu.Lock()
	closed := tb.closed
	tb.mu.Unlock()
	if closed {
		return nil, fmt.Errorf("testbed closed")
	}
	logPath := filepath.Join(h.Dir, name+".log")
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", h.NS, bin}, args...)...)
	cmd.Env = append(os.Environ(), o.Env...)
	cmd.Dir = o.Dir
	if cmd.Dir == "" {
		cmd.Dir = h.Dir
	}
	cmd.Stderr = lf
	p := &Proc{Name: name, Host: h, LogPath: logPath, cmd: cmd, done: make(chan struct{})}
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
	fmt.Fprintf(lf, "# [%s] %s %s\n", h.NS, bin, strings.Join(args, " "))
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s in %s: %w", name, h.NS, err)
	}
	tb.mu.Lock()
	tb.procs = append(tb.procs, p)
	tb.mu.Unlock()
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

// StartRole runs this executable in role (see RegisterRole) inside h's
// namespace.
func (tb *Testbed) StartRole(h *Host, name string, o ProcOptions, role string, args ...string) (*Proc, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	o.Env = append(o.Env, RoleEnv+"="+role)
	return tb.Start(h, name, o, self, args...)
}

// PID returns the process ID.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has ended, with its exit error.
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

// Unexpected is the exit error of a process that ended before Stop.
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

// Wait waits for the process to exit, at most d; it returns whether it
// exited.
func (p *Proc) Wait(d time.Duration) bool {
	select {
	case <-p.done:
		return true
	case <-time.After(d):
		return false
	}
}

// Stop sends SIGTERM, waits up to timeout, then SIGKILLs the process
// group and waits. It returns whether SIGKILL was needed.
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
	select {
	case <-p.done:
		return false
	case <-time.After(timeout):
	}
	syscall.Kill(-p.PID(), syscall.SIGKILL)
	p.cmd.Process.Kill()
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
	}
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
	v, err := ProcCPU(p.PID())
	if err != nil {
		return 0
	}
	return v
}

// Tail returns the last n lines of the process's log.
func (p *Proc) Tail(n int) string {
	b, err := os.ReadFile(p.LogPath)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// ProcCPU returns the user+system CPU seconds of a running process from
// /proc/<pid>/stat.
func ProcCPU(pid int) (float64, error) {
	p := "/proc/" + strconv.Itoa(pid) + "/stat"
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, err
	}
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
			return 0, err
		}
		ticks += float64(v)
	}
	return ticks / 100, nil
}

// IOStats are a process's system-call counters (/proc/<pid>/io and the
// context switches of /proc/<pid>/status).
type IOStats struct {
	ReadCalls, WriteCalls, ReadBytes, WriteBytes int64
	CtxSwitches                                  int64
}

// Sub returns s - o.
func (s IOStats) Sub(o IOStats) IOStats {
	return IOStats{s.ReadCalls - o.ReadCalls, s.WriteCalls - o.WriteCalls, s.ReadBytes - o.ReadBytes,
		s.WriteBytes - o.WriteBytes, s.CtxSwitches - o.CtxSwitches}
}

// Add returns s + o.
func (s IOStats) Add(o IOStats) IOStats {
	return IOStats{s.ReadCalls + o.ReadCalls, s.WriteCalls + o.WriteCalls, s.ReadBytes + o.ReadBytes,
		s.WriteBytes + o.WriteBytes, s.CtxSwitches + o.CtxSwitches}
}

// String summarizes the counters.
func (s IOStats) String() string {
	avg := func(b, n int64) int64 {
		if n == 0 {
			return 0
		}
		return b / n
	}
	return fmt.Sprintf("%d read calls (avg %d B), %d write calls (avg %d B), %d context switches",
		s.ReadCalls, avg(s.ReadBytes, s.ReadCalls), s.WriteCalls, avg(s.WriteBytes, s.WriteCalls), s.CtxSwitches)
}

// IO reads the process's counters (zero once it exited).
func (p *Proc) IO() IOStats {
	var s IOStats
	b, err := os.ReadFile("/proc/" + strconv.Itoa(p.PID()) + "/io")
	if err != nil {
		return s
	}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		switch k {
		case "rchar":
			s.ReadBytes = n
		case "wchar":
			s.WriteBytes = n
		case "syscr":
			s.ReadCalls = n
		case "syscw":
			s.WriteCalls = n
		}
	}
	// Context switches are per thread.
	tasks, _ := filepath.Glob("/proc/" + strconv.Itoa(p.PID()) + "/task/*/status")
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.HasSuffix(k, "voluntary_ctxt_switches") {
				n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				s.CtxSwitches += n
			}
		}
	}
	return s
}

// cpuSnapshot is the CPU time (utime+stime, tick-sampled like
// /proc/stat) of a set of processes by PID, with their start times to tell
// reused PIDs apart.
type cpuSnapshot map[int][2]uint64 // pid → {starttime, ticks}

// takeCPUSnapshot reads every process for which keep(pid, kernelThread)
// is true.
func takeCPUSnapshot(keep func(pid int, kthread bool) bool) cpuSnapshot {
	s := cpuSnapshot{}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return s
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		// f[0] is field 3 (state); flags is field 9, utime and stime 14
		// and 15, starttime 22.
		if len(f) < 20 {
			continue
		}
		flags, _ := strconv.ParseUint(f[6], 10, 64)
		if !keep(pid, flags&0x00200000 != 0) { // PF_KTHREAD
			continue
		}
		var ticks uint64
		for _, x := range f[11:13] {
			v, _ := strconv.ParseUint(x, 10, 64)
			ticks += v
		}
		start, _ := strconv.ParseUint(f[19], 10, 64)
		s[pid] = [2]uint64{start, ticks}
	}
	return s
}

// since returns the CPU seconds the processes of s used after base.
func (s cpuSnapshot) since(base cpuSnapshot) float64 {
	var ticks uint64
	for pid, v := range s {
		if b, ok := base[pid]; ok && b[0] == v[0] {
			if v[1] > b[1] {
				ticks += v[1] - b[1]
			}
		} else {
			ticks += v[1] // started during the window
		}
	}
	return float64(ticks) / 100
}
