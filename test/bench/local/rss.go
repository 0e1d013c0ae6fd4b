package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pouchfly/pouchfly/peer"
	"github.com/pouchfly/pouchfly/test/origin"
)

// agentMem is one agent's memory over a phase.
type agentMem struct {
	PeakRSS    int64   `json:"peak_rss_bytes"`        // VmHWM at the end of the phase
	MaxSampled int64   `json:"max_sampled_rss_bytes"` // max VmRSS seen by polling
	CPUSeconds float64 `json:"cpu_seconds"`
	SysSeconds float64 `json:"sys_cpu_seconds"` // of CPUSeconds, in the kernel
}

// rssResult is the real-process scenario.
type rssResult struct {
	Bytes        int64            `json:"bytes"`
	SeedSeconds  float64          `json:"seed_seconds"`
	SeedReceived map[string]int64 `json:"seed_received"`
	Seconds      float64          `json:"seconds"`
	FirstByte    float64          `json:"first_byte_seconds"`
	Background   float64          `json:"background_busy_cores"`
	// ClientCPUSeconds is the benchmark's own CPU while it reads B's
	// socket (the stand-in for dfget or the registry mirror).
	ClientCPUSeconds float64 `json:"client_cpu_seconds"`
	// CPUSecondsPerGB is whole-machine busy CPU during B's download per GB.
	CPUSecondsPerGB float64          `json:"cpu_seconds_per_gb"`
	BytesPerSec     float64          `json:"bytes_per_sec"`
	Received        map[string]int64 `json:"received"`
	DigestOK        bool             `json:"digest_ok"`
	CDNDuringP2P    bool             `json:"cdn_during_p2p"`
	// A: the seeded agent while it downloads the task from the CDN (seed)
	// and while it serves it to B (serve); B: the downloading agent.
	ASeed     agentMem `json:"agent_a_seed"`
	AServe    agentMem `json:"agent_a_serve"`
	B         agentMem `json:"agent_b"`
	Supernode agentMem `json:"supernode"`
	PeakA     int64    `json:"agent_a_peak_rss_bytes"`
	PeakB     int64    `json:"agent_b_peak_rss_bytes"`
	Samples   int      `json:"samples"`
	Err       string   `json:"error,omitempty"`
	Logs      string   `json:"logs_dir"`
}

// proc is a child process we started.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when it has exited
}

// Pid returns its process ID.
func (p *proc) Pid() int { return p.cmd.Process.Pid }

type procs struct {
	mu   sync.Mutex
	list []*proc
}

// start runs bin with args, output to logPath. The child gets SIGKILL if
// the benchmark dies (Pdeathsig).
func (ps *procs) start(env []string, logPath, bin string, args ...string) (*proc, error) {
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, err
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); lf.Close(); close(p.done) }()
	ps.mu.Lock()
	ps.list = append(ps.list, p)
	ps.mu.Unlock()
	return p, nil
}

// stop ends one process we started: SIGTERM, then SIGKILL after 5s.
func (p *proc) stop() {
	if p == nil {
		return
	}
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

func (ps *procs) stopAll() {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	for _, p := range ps.list {
		p.stop()
	}
	ps.list = nil
}

// freePort returns a port free on ip now.
func freePort(ip string) (int, error) {
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// buildBinaries builds dfget and supernode into dir.
func buildBinaries(ctx context.Context, goBin, modRoot, dir string) error {
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", dir+"/", "./cmd/dfget", "./cmd/supernode")
	cmd.Dir = modRoot
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go build: %v\n%s", err, out)
	}
	return nil
}

type rssOptions struct {
	dir, binDir string
	data        []byte
	cdnOn       bool
	timeout     time.Duration
	quietWait   time.Duration
}

// runRSS measures real `dfget daemon` processes: agent A downloads the
// task (from the supernode's CDN), then agent B downloads it through its
// unix socket while A holds it; VmHWM and VmRSS of both are sampled.
func runRSS(ctx context.Context, o rssOptions) (res *rssResult, err error) {
	res = &rssResult{Bytes: int64(len(o.data)), CDNDuringP2P: o.cdnOn, Logs: o.dir}
	var ps procs
	defer ps.stopAll()

	org := origin.New()
	if err := org.Start("127.0.0.1:0"); err != nil {
		return nil, err
	}
	defer org.Close()
	digest := org.Add("blob", o.data)
	url := org.URL("blob")

	snPort, err := freePort("127.0.0.2")
	if err != nil {
		return nil, err
	}
	snHTTP, err := freePort("127.0.0.2")
	if err != nil {
		return nil, err
	}
	snAddr := fmt.Sprintf("127.0.0.2:%d", snPort)
	snHTTPAddr := fmt.Sprintf("127.0.0.2:%d", snHTTP)
	startSupernode := func(cdn bool, log string) (*proc, error) {
		args := []string{"--listen", snAddr, "--piece-listen", "127.0.0.2:0", "--http-listen", snHTTPAddr,
			"--data-dir", filepath.Join(o.dir, "supernode"), "--log-level", "info"}
		if !cdn {
			args = append(args, "--no-cdn")
		}
		return ps.start(nil, filepath.Join(o.dir, log), filepath.Join(o.binDir, "supernode"), args...)
	}
	sn, err := startSupernode(true, "supernode.log")
	if err != nil {
		return nil, err
	}
	if err := waitHTTP(ctx, "http://"+snHTTPAddr+"/healthz", 30*time.Second); err != nil {
		return nil, fmt.Errorf("supernode: %w (log %s)", err, filepath.Join(o.dir, "supernode.log"))
	}
	startAgent := func(name, ip string) (*proc, string, error) {
		sock := filepath.Join(o.dir, name+".sock")
		// Every listener on the agent's own loopback address: the registry
		// mirror (127.0.0.1:65001 by default) through the environment, which
		// a build without a mirror ignores.
		env := []string{"POUCHFLY_MIRROR_LISTEN=" + ip + ":0"}
		p, err := ps.start(env, filepath.Join(o.dir, name+".log"), filepath.Join(o.binDir, "dfget"), "daemon",
			"--supernode", snAddr, "--upload-listen", ip+":0", "--data-dir", filepath.Join(o.dir, name),
			"--socket", sock, "--host-id", name, "--metrics-listen", ip+":0", "--no-back-source")
		if err != nil {
			return nil, "", err
		}
		return p, sock, nil
	}
	a, sockA, err := startAgent("agent-a", "127.0.0.21")
	if err != nil {
		return nil, err
	}
	b, sockB, err := startAgent("agent-b", "127.0.0.22")
	if err != nil {
		return nil, err
	}
	ca, cb := peer.NewClient(sockA), peer.NewClient(sockB)
	for _, c := range []*peer.Client{ca, cb} {
		if err := waitPing(ctx, c, 30*time.Second); err != nil {
			return nil, fmt.Errorf("agent: %w (logs in %s)", err, o.dir)
		}
	}
	// Both sessions up: the supernode counts the CDN and two agents.
	if err := waitMetric(ctx, "http://"+snHTTPAddr+"/metrics", "pouchfly_scheduler_hosts", 3, 30*time.Second); err != nil {
		return nil, err
	}

	// Phase 1: A takes the task from the CDN.
	sampler := newSampler(a.Pid(), b.Pid(), sn.Pid())
	sampler.start()
	cpuA0 := procCPU(a.Pid())
	t0 := time.Now()
	n, recv, err := download(ctx, ca, url, digest, o.timeout, nil)
	res.SeedSeconds = time.Since(t0).Seconds()
	res.SeedReceived = recv
	maxs := sampler.stop()
	if err != nil {
		return res, fmt.Errorf("agent A download: %w", err)
	}
	if n != int64(len(o.data)) {
		return res, fmt.Errorf("agent A got %d bytes, want %d", n, len(o.data))
	}
	_, hwmA, _ := procMem(a.Pid())
	res.ASeed = agentMem{PeakRSS: hwmA, MaxSampled: maxs[0], CPUSeconds: procCPU(a.Pid()) - cpuA0}

	if !o.cdnOn {
		// Restart the supernode without its CDN on the same address: A
		// offers the task in its Hello and is B's only possible parent.
		sn.stop()
		if sn, err = startSupernode(false, "supernode-nocdn.log"); err != nil {
			return res, err
		}
		if err := waitHTTP(ctx, "http://"+snHTTPAddr+"/healthz", 30*time.Second); err != nil {
			return res, fmt.Errorf("supernode restart: %w", err)
		}
		// The two agents reconnect (no CDN host now).
		if err := waitMetric(ctx, "http://"+snHTTPAddr+"/metrics", "pouchfly_scheduler_hosts", 2, 30*time.Second); err != nil {
			return res, err
		}
		time.Sleep(200 * time.Millisecond) // Hello's held tasks are applied with the session
	}

	// Phase 2: B downloads through its socket while A holds the task.
	// Peaks are reset first (clear_refs 5), so each phase has its own.
	syncFS(o.dir)
	res.Background = waitQuiet(ctx, o.quietWait)
	for _, pid := range []int{a.Pid(), b.Pid(), sn.Pid()} {
		resetHWM(pid)
	}
	sampler = newSampler(a.Pid(), b.Pid(), sn.Pid())
	sampler.start()
	cpuA0, cpuB0, cpuS0 := procCPU(a.Pid()), procCPU(b.Pid()), procCPU(sn.Pid())
	_, sysA0 := procCPUSplit(a.Pid())
	_, sysB0 := procCPUSplit(b.Pid())
	mach0, self0 := readCPUStat(), selfCPU()
	t0 = time.Now()
	n, recv, err = download(ctx, cb, url, digest, o.timeout, &res.FirstByte)
	res.Seconds = time.Since(t0).Seconds()
	mach, _ := readCPUStat().sub(mach0)
	res.ClientCPUSeconds = selfCPU() - self0
	maxs = sampler.stop()
	res.Samples = sampler.samples
	if n > 0 {
		res.CPUSecondsPerGB = mach / (float64(n) / 1e9)
	}
	res.Received = recv
	if err != nil {
		res.Err = err.Error()
	}
	res.DigestOK = err == nil && n == int64(len(o.data))
	if res.Seconds > 0 {
		res.BytesPerSec = float64(n) / res.Seconds
	}
	_, hwmA, _ = procMem(a.Pid())
	_, hwmB, _ := procMem(b.Pid())
	_, hwmS, _ := procMem(sn.Pid())
	_, sysA1 := procCPUSplit(a.Pid())
	_, sysB1 := procCPUSplit(b.Pid())
	res.AServe = agentMem{PeakRSS: hwmA, MaxSampled: maxs[0], CPUSeconds: procCPU(a.Pid()) - cpuA0, SysSeconds: sysA1 - sysA0}
	res.B = agentMem{PeakRSS: hwmB, MaxSampled: maxs[1], CPUSeconds: procCPU(b.Pid()) - cpuB0, SysSeconds: sysB1 - sysB0}
	res.Supernode = agentMem{PeakRSS: hwmS, MaxSampled: maxs[2], CPUSeconds: procCPU(sn.Pid()) - cpuS0}
	res.PeakA = max(res.ASeed.PeakRSS, res.AServe.PeakRSS)
	res.PeakB = res.B.PeakRSS
	return res, nil
}

// download fetches the task through an agent's local API, discarding the
// bytes (the agent checks the digest; a mismatch arrives as an error).
func download(ctx context.Context, c *peer.Client, url, digest string, timeout time.Duration, ttfb *float64) (int64, map[string]int64, error) {
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	d, err := c.Download(ctx, peer.DownloadRequest{URL: url, Digest: digest, NoBackSource: true})
	if err != nil {
		return 0, nil, err
	}
	defer d.Close()
	fb := &firstByte{r: d, t0: t0}
	n, err := io.CopyBuffer(io.Discard, fb, make([]byte, 1<<20))
	if ttfb != nil {
		*ttfb = fb.sec
	}
	return n, d.Received(), err
}

type sampler struct {
	pids    []int
	max     []int64
	samples int
	done    chan struct{}
	stopped chan struct{}
}

func newSampler(pids ...int) *sampler {
	return &sampler{pids: pids, max: make([]int64, len(pids)), done: make(chan struct{}), stopped: make(chan struct{})}
}

func (s *sampler) start() {
	go func() {
		defer close(s.stopped)
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			for i, pid := range s.pids {
				if rss, _, err := procMem(pid); err == nil && rss > s.max[i] {
					s.max[i] = rss
				}
			}
			s.samples++
			select {
			case <-s.done:
				return
			case <-t.C:
			}
		}
	}()
}

func (s *sampler) stop() []int64 {
	close(s.done)
	<-s.stopped
	return s.max
}

func waitHTTP(ctx context.Context, url string, d time.Duration) error {
	deadline := time.Now().Add(d)
	var last error
	for time.Now().Before(deadline) && ctx.Err() == nil {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = errors.New(resp.Status)
		}
		last = err
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s not up after %s: %v", url, d, last)
}

func waitPing(ctx context.Context, c *peer.Client, d time.Duration) error {
	deadline := time.Now().Add(d)
	var last error
	for time.Now().Before(deadline) && ctx.Err() == nil {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		last = c.Ping(pctx)
		cancel()
		if last == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("socket not answering after %s: %v", d, last)
}

// waitMetric waits until a gauge on a Prometheus text page reaches want.
func waitMetric(ctx context.Context, url, name string, want float64, d time.Duration) error {
	deadline := time.Now().Add(d)
	var got float64 = -1
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if v, err := scrape(url, name); err == nil {
			got = v
			if v == want {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s = %v, want %v after %s", name, got, want, d)
}

func scrape(url, name string) (float64, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if strings.HasPrefix(l, name+" ") {
			return strconv.ParseFloat(strings.TrimSpace(strings.TrimPrefix(l, name)), 64)
		}
	}
	return 0, fmt.Errorf("%s not found", name)
}
