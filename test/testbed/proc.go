package testbed

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/pouchfly/pouchfly/test/proc"
)

// Proc is a process the testbed started inside a host's namespace (a
// test/proc process plus its host). Its stderr (and stdout unless piped)
// go to a log file in the host's directory; Close stops it in any case.
type Proc struct {
	*proc.Proc
	// Host is where it runs.
	Host *Host
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
	dir := o.Dir
	if dir == "" {
		dir = h.Dir
	}
	pp, err := proc.Start(name, filepath.Join(h.Dir, name+".log"), proc.Options{Env: o.Env, Dir: dir, Pipes: o.Pipes, Where: h.NS},
		"ip", append([]string{"netns", "exec", h.NS, bin}, args...)...)
	if err != nil {
		return nil, fmt.Errorf("in %s: %w", h.NS, err)
	}
	p := &Proc{Proc: pp, Host: h}
	tb.mu.Lock()
	tb.procs = append(tb.procs, p)
	tb.mu.Unlock()
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
