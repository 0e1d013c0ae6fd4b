package testbed

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/pouchfly/pouchfly/test/report"
)

// ClientSpec is one client process of RunClients: a role (see
// RegisterRole; "fetch" is built in) run with Args inside Host's namespace.
type ClientSpec struct {
	Host *Host
	Role string
	Args []string
}

// Window is the measured phase of RunClients: from the common "go" to
// the last result.
type Window struct {
	Start, End time.Time
	// MachineCPU is the whole machine's busy CPU seconds over the window
	// (/proc/stat: user+nice+system+irq+softirq+steal).
	MachineCPU float64
	// SoftirqCPU is the softirq part of MachineCPU (the kernel's packet
	// processing: veth, bridge, tbf, TCP receive).
	SoftirqCPU float64
	// ClientCPU is the client processes' CPU seconds over the window
	// (their setup before the go excluded).
	ClientCPU float64
	// KernelCPU is what kernel threads (ksoftirqd: packet processing;
	// kworkers: writeback) used over the window.
	KernelCPU float64
	// HarnessCPU is what the harness process itself used.
	HarnessCPU float64
	// BackgroundCPUs is how many CPUs the machine kept busy during the
	// second before the go, with every testbed process idle: other work
	// on a shared machine.
	BackgroundCPUs float64
}

// Wall is the window's length.
func (w Window) Wall() time.Duration { return w.End.Sub(w.Start) }

// RunClients starts one client process per spec, waits until every one
// is ready (at most readyTimeout), tells them all to go at once and
// collects their results (at most timeout after the go). A client that
// fails, dies or runs out of time gets a result with Error set; err is
// only for failures of the harness itself (or ctx ending). progress, if
// not nil, is called every 2 s while downloads run.
func (tb *Testbed) RunClients(ctx context.Context, specs []ClientSpec, readyTimeout, timeout time.Duration,
	progress func(done int, elapsed time.Duration)) ([]ClientResult, Window, error) {
	var w Window
	results := make([]ClientResult, len(specs))
	procs := make([]*Proc, len(specs))
	type line struct {
		i    int
		text string
		err  error
		at   time.Time
	}
	lines := make(chan line, 2*len(specs))
	defer func() {
		for _, p := range procs {
			if p != nil {
				p.Stop(3 * time.Second)
			}
		}
	}()
	tb.mu.Lock()
	tb.clientSeq++
	seq := tb.clientSeq
	tb.mu.Unlock()
	for i, s := range specs {
		results[i].Host = s.Host.Name
		p, err := tb.StartRole(s.Host, fmt.Sprintf("client%d-%s", seq, s.Role), ProcOptions{Pipes: true}, s.Role, s.Args...)
		if err != nil {
			return results, w, err
		}
		procs[i] = p
		go func() {
			for {
				t, err := p.Stdout.ReadString('\n')
				lines <- line{i, strings.TrimSpace(t), err, time.Now()}
				if err != nil {
					return
				}
			}
		}()
	}
	// Ready?
	ready := 0
	readyDeadline := time.NewTimer(readyTimeout)
	defer readyDeadline.Stop()
	for ready < len(specs) {
		select {
		case <-ctx.Done():
			return results, w, ctx.Err()
		case <-readyDeadline.C:
			return results, w, fmt.Errorf("only %d of %d clients ready after %v", ready, len(specs), readyTimeout)
		case l := <-lines:
			if l.err != nil || l.text != "ready" {
				p := procs[l.i]
				p.Wait(2 * time.Second)
				return results, w, fmt.Errorf("client on %s did not get ready (%q, %v); log %s:\n%s",
					specs[l.i].Host.Name, l.text, l.err, p.LogPath, p.Tail(10))
			}
			ready++
		}
	}
	// The machine's load just before the go (other work on a shared
	// machine shows up in MachineCPU).
	b0, _, _ := machineCPU()
	t0 := time.Now()
	select {
	case <-ctx.Done():
		return results, w, ctx.Err()
	case <-time.After(time.Second):
	}
	if b1, _, err := machineCPU(); err == nil {
		w.BackgroundCPUs = (b1 - b0) / time.Since(t0).Seconds()
	}
	// Go.
	var err error
	if w.MachineCPU, w.SoftirqCPU, err = machineCPU(); err != nil {
		return results, w, err
	}
	cpu0, soft0 := w.MachineCPU, w.SoftirqCPU
	kthreads := func(_ int, k bool) bool { return k }
	self := os.Getpid()
	harness := func(pid int, _ bool) bool { return pid == self }
	kern0, harness0 := takeCPUSnapshot(kthreads), takeCPUSnapshot(harness)
	pcpu0 := make([]float64, len(procs))
	for i, p := range procs {
		pcpu0[i] = p.CPU()
	}
	w.Start = time.Now()
	for _, p := range procs {
		io.WriteString(p.Stdin, "go\n")
	}
	got := make([]bool, len(specs))
	left := len(specs)
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	var runErr error
collect:
	for left > 0 {
		select {
		case <-ctx.Done():
			runErr = ctx.Err()
			break collect
		case <-deadline.C:
			break collect
		case <-tick.C:
			if progress != nil {
				progress(len(specs)-left, time.Since(w.Start))
			}
		case l := <-lines:
			if got[l.i] {
				continue
			}
			got[l.i] = true
			left--
			r := &results[l.i]
			if l.err != nil {
				p := procs[l.i]
				p.Wait(2 * time.Second)
				r.Error = fmt.Sprintf("client exited without a result (%v); log %s: %s", l.err, p.LogPath, p.Tail(5))
			} else if err := json.Unmarshal([]byte(l.text), r); err != nil {
				r.Error = fmt.Sprintf("bad result line %q: %v", l.text, err)
			}
			r.Host = specs[l.i].Host.Name
			r.Seconds = l.at.Sub(w.Start).Seconds()
		}
	}
	w.End = time.Now()
	w.KernelCPU = takeCPUSnapshot(kthreads).since(kern0)
	w.HarnessCPU = takeCPUSnapshot(harness).since(harness0)
	cpu1, soft1, err := machineCPU()
	if err != nil {
		return results, w, err
	}
	w.MachineCPU, w.SoftirqCPU = cpu1-cpu0, soft1-soft0
	for i := range results {
		if !got[i] {
			results[i].Error = fmt.Sprintf("no result within %v", timeout)
			if runErr != nil {
				results[i].Error = "interrupted"
			}
			results[i].Seconds = w.End.Sub(w.Start).Seconds()
		}
	}
	// The clients' CPU over the window (a client that exited counts until
	// its exit).
	for i, p := range procs {
		results[i].CPUSeconds = p.CPU() - pcpu0[i]
		w.ClientCPU += results[i].CPUSeconds
	}
	// Everyone is done: let the clients go, and stop those that linger.
	for _, p := range procs {
		p.Stdin.Close()
	}
	var wg sync.WaitGroup
	for i, p := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if !got[i] || !p.Wait(10*time.Second) {
				p.Stop(3 * time.Second)
			}
		}()
	}
	wg.Wait()
	return results, w, runErr
}

// machineCPU returns the busy CPU seconds since boot (as report.CPUTime)
// and the softirq part.
func machineCPU() (busy, softirq float64, err error) {
	busy, err = report.CPUTime()
	if err != nil {
		return 0, 0, err
	}
	softirq, err = procStatField(6)
	return busy, softirq, err
}
