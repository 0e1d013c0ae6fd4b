// Package lxcfs supervises an LXCFS daemon for the engine and gives
// containers its view of /proc (meminfo, cpuinfo, stat, uptime, diskstats,
// swaps, loadavg) and /sys/devices/system/cpu/online, sized to their
// cgroups.
//
// The daemon (Debian's lxcfs binary) is mounted at <home>/lxcfs, apart from
// any system-wide lxcfs at /var/lib/lxcfs. When it dies, the Supervisor
// unmounts the dead FUSE mount and starts a new one; the binds already in
// running containers still point at the dead mount ("Transport endpoint is
// not connected"), and Repair replaces them inside each container's mount
// namespace. OnRestart tells the engine when to call it.
package lxcfs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/pouchfly/pouchfly/internal/errdefs"
)

// candidates are the files lxcfs may offer, as container paths.
var candidates = []string{
	"/proc/cpuinfo", "/proc/diskstats", "/proc/loadavg", "/proc/meminfo",
	"/proc/stat", "/proc/swaps", "/proc/uptime",
	"/sys/devices/system/cpu/online",
}

// Config holds the LXCFS settings (the engine nests it as `lxcfs:`).
type Config struct {
	// Binary is the lxcfs executable (Debian package lxcfs).
	Binary string `yaml:"binary"`
	// LoadAvg virtualises /proc/loadavg per container (lxcfs -l); without
	// it /proc/loadavg is not bound.
	LoadAvg bool `yaml:"loadavg"`
	// CFS makes /proc/cpuinfo, /proc/stat and cpu/online follow the
	// container's CPU quota (--cpus) instead of its cpuset only
	// (lxcfs --enable-cfs).
	CFS bool `yaml:"cfs"`
	// RestartDelay is the first pause before lxcfs is started again after
	// it died; it doubles while lxcfs keeps dying within a minute, up to 30s.
	RestartDelay time.Duration `yaml:"restart_delay"`
	// ReadyTimeout bounds the wait for a started lxcfs to serve its mount.
	ReadyTimeout time.Duration `yaml:"ready_timeout"`
	// StopOnExit stops lxcfs when Run returns. Off by default: lxcfs
	// outlives pouchd like the containers that read it, and the next pouchd
	// adopts it.
	StopOnExit bool `yaml:"stop_on_exit"`
}

// DefaultConfig returns the defaults: lxcfs from PATH with loadavg and CFS
// virtualisation, a 200ms first restart delay, a 10s ready timeout.
func DefaultConfig() Config {
	return Config{Binary: "lxcfs", LoadAvg: true, CFS: true, RestartDelay: 200 * time.Millisecond, ReadyTimeout: 10 * time.Second}
}

// Validate checks the configuration; errors wrap errdefs.ErrInvalid.
func (c Config) Validate() error {
	switch {
	case c.Binary == "":
		return fmt.Errorf("lxcfs.binary: empty: %w", errdefs.ErrInvalid)
	case c.RestartDelay <= 0:
		return fmt.Errorf("lxcfs.restart_delay: %v, want > 0: %w", c.RestartDelay, errdefs.ErrInvalid)
	case c.ReadyTimeout <= 0:
		return fmt.Errorf("lxcfs.ready_timeout: %v, want > 0: %w", c.ReadyTimeout, errdefs.ErrInvalid)
	}
	return nil
}

// Supervisor runs one lxcfs mounted at <home>/lxcfs and restarts it when it
// dies. Its methods are safe for concurrent use.
type Supervisor struct {
	cfg     Config
	mnt     string // <home>/lxcfs
	pidFile string // <home>/lxcfs.pid
	logFile string // <home>/lxcfs.log

	mu      sync.Mutex
	readyCh chan struct{} // closed while lxcfs serves
	runErr  error         // why Run gave up, if it did
	dev     [2]uint32     // major:minor of the live mount
	pid     int
	files   []string
	hooks   []func()

	metrics *metrics
}

// New returns a supervisor for an lxcfs mounted at <home>/lxcfs. It starts
// nothing: call Run.
func New(cfg Config, home string) (*Supervisor, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	home, err := filepath.Abs(home)
	if err != nil {
		return nil, err
	}
	return &Supervisor{
		cfg: cfg, mnt: filepath.Join(home, "lxcfs"),
		pidFile: filepath.Join(home, "lxcfs.pid"), logFile: filepath.Join(home, "lxcfs.log"),
		readyCh: make(chan struct{}), metrics: newMetrics(),
	}, nil
}

// MountPoint returns <home>/lxcfs, where lxcfs is mounted.
func (s *Supervisor) MountPoint() string { return s.mnt }

// Pid returns the live lxcfs process, 0 while there is none.
func (s *Supervisor) Pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pid
}

// OnRestart registers fn to run (in its own goroutine) each time Run has
// started a new lxcfs process and it serves: after a crash, and at
// startup unless a live lxcfs was adopted. The engine repairs the binds
// of its running containers there (Repair).
func (s *Supervisor) OnRestart(fn func()) {
	s.mu.Lock()
	s.hooks = append(s.hooks, fn)
	s.mu.Unlock()
}

// Ready blocks until lxcfs serves its mount, ctx ends, or Run gave up (its
// error is returned, e.g. lxcfs not installed).
func (s *Supervisor) Ready(ctx context.Context) error {
	for {
		s.mu.Lock()
		ch, err := s.readyCh, s.runErr
		s.mu.Unlock()
		if err != nil {
			return err
		}
		select {
		case <-ch:
			return nil
		case <-ctx.Done():
			return fmt.Errorf("lxcfs not ready: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond): // re-check runErr
		}
	}
}

// Files returns the container paths lxcfs offers and Binds binds: the
// /proc files (and /sys/devices/system/cpu/online when lxcfs has it;
// /proc/loadavg only with Config.LoadAvg). Before lxcfs first served it
// returns the files expected from the configuration.
func (s *Supervisor) Files() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.files != nil {
		return append([]string(nil), s.files...)
	}
	var out []string
	for _, f := range candidates {
		if f == "/proc/loadavg" && !s.cfg.LoadAvg {
			continue
		}
		out = append(out, f)
	}
	return out
}

// Binds returns the OCI mounts that put lxcfs's files over a container's
// (bind, rprivate), to be appended after the spec's /proc and /sys mounts.
func (s *Supervisor) Binds() []specs.Mount {
	var out []specs.Mount
	for _, f := range s.Files() {
		out = append(out, specs.Mount{
			Destination: f, Type: "bind", Source: filepath.Join(s.mnt, f),
			Options: []string{"bind", "rprivate"},
		})
	}
	return out
}

// scanFiles lists what the live mount offers.
func (s *Supervisor) scanFiles() []string {
	var out []string
	for _, f := range candidates {
		if f == "/proc/loadavg" && !s.cfg.LoadAvg {
			continue
		}
		if _, err := os.Stat(filepath.Join(s.mnt, f)); err == nil {
			out = append(out, f)
		}
	}
	return out
}

// Run supervises lxcfs until ctx ends: it adopts a live lxcfs of an
// earlier pouchd (per <home>/lxcfs.pid) or starts one, and starts it again
// whenever it dies, unmounting the dead FUSE mount first. It returns nil
// when ctx ends (stopping lxcfs only with Config.StopOnExit), or an error
// wrapping errdefs.ErrUnavailable at once when the lxcfs binary is
// missing. Call it once.
func (s *Supervisor) Run(ctx context.Context) error {
	bin, err := exec.LookPath(s.cfg.Binary)
	if err != nil {
		err = fmt.Errorf("lxcfs: %s not found (apt-get install lxcfs): %w: %w", s.cfg.Binary, err, errdefs.ErrUnavailable)
		s.mu.Lock()
		s.runErr = err
		s.mu.Unlock()
		return err
	}
	delay := s.cfg.RestartDelay
	for {
		p, adopted := s.adopt()
		if !adopted {
			p, err = s.start(ctx, bin)
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				slog.ErrorContext(ctx, "lxcfs: start failed", "err", err, "retry_in", delay)
				if !sleepCtx(ctx, delay) {
					return nil
				}
				delay = min(2*delay, 30*time.Second)
				continue
			}
		}
		started := time.Now()
		s.setReady(p.pid)
		if !adopted {
			s.runHooks()
		}
		select {
		case <-p.exited:
		case <-ctx.Done():
			if s.cfg.StopOnExit {
				s.stop(p)
			}
			s.setNotReady()
			return nil
		}
		s.setNotReady()
		slog.WarnContext(ctx, "lxcfs: died; starting it again", "pid", p.pid, "status", p.status(), "log", s.logFile)
		if time.Since(started) > time.Minute {
			delay = s.cfg.RestartDelay
		}
		if !sleepCtx(ctx, delay) {
			return nil
		}
		delay = min(2*delay, 30*time.Second)
	}
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func (s *Supervisor) setReady(pid int) {
	files := s.scanFiles()
	var dev [2]uint32
	if m, ok := s.liveMount(); ok {
		dev = [2]uint32{m.Major, m.Minor}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pid, s.files, s.dev = pid, files, dev
	s.metrics.up.Set(1)
	select {
	case <-s.readyCh:
	default:
		close(s.readyCh)
	}
	slog.Info("lxcfs: serving", "pid", pid, "mount", s.mnt, "files", len(files))
}

func (s *Supervisor) setNotReady() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pid = 0
	s.metrics.up.Set(0)
	select {
	case <-s.readyCh:
		s.readyCh = make(chan struct{})
	default:
	}
}

func (s *Supervisor) runHooks() {
	s.mu.Lock()
	hooks := append([]func(){}, s.hooks...)
	s.mu.Unlock()
	for _, h := range hooks {
		go h()
	}
}

// proc is a supervised lxcfs: a child of ours or an adopted one.
type proc struct {
	pid    int
	exited chan struct{}
	cmd    *exec.Cmd // nil when adopted
}

func (p *proc) status() string {
	if p.cmd != nil && p.cmd.ProcessState != nil {
		return p.cmd.ProcessState.String()
	}
	return "unknown"
}

// liveMount returns the lxcfs mount at s.mnt if it answers reads.
func (s *Supervisor) liveMount() (mountEntry, bool) {
	mounts, err := readMountinfo("/proc/self/mountinfo")
	if err != nil {
		return mountEntry{}, false
	}
	m, ok := mountAt(mounts, s.mnt)
	if !ok || m.FSType != "fuse.lxcfs" {
		return mountEntry{}, false
	}
	f, err := os.Open(filepath.Join(s.mnt, "proc", "meminfo"))
	if err != nil {
		return mountEntry{}, false
	}
	defer f.Close()
	if _, err := f.Read(make([]byte, 64)); err != nil {
		return mountEntry{}, false
	}
	return m, true
}

// adopt takes over a live lxcfs serving s.mnt that an earlier pouchd started.
func (s *Supervisor) adopt() (*proc, bool) {
	b, err := os.ReadFile(s.pidFile)
	if err != nil {
		return nil, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return nil, false
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !bytes.Contains(cmdline, []byte(s.mnt+"\x00")) || !strings.Contains(string(bytes.SplitN(cmdline, []byte{0}, 2)[0]), "lxcfs") {
		return nil, false
	}
	if _, ok := s.liveMount(); !ok {
		return nil, false
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, false
	}
	p := &proc{pid: pid, exited: make(chan struct{})}
	go func() {
		defer unix.Close(fd)
		defer close(p.exited)
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			n, err := unix.Poll(fds, -1)
			if err == unix.EINTR {
				continue
			}
			if err != nil || n > 0 {
				return
			}
		}
	}()
	slog.Info("lxcfs: adopted a running lxcfs", "pid", pid, "mount", s.mnt)
	return p, true
}

// killStale kills an lxcfs of ours (per the pid file) that is alive but
// does not serve: it holds the pid file's lock and would stop a new one.
func (s *Supervisor) killStale() {
	b, err := os.ReadFile(s.pidFile)
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !bytes.Contains(cmdline, []byte(s.mnt+"\x00")) {
		return
	}
	slog.Warn("lxcfs: killing a stale lxcfs that does not serve", "pid", pid)
	_ = unix.Kill(pid, unix.SIGKILL)
	for i := 0; i < 100; i++ {
		if err := unix.Kill(pid, 0); err != nil {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// cleanMount unmounts whatever is left at s.mnt (a dead lxcfs's FUSE mount,
// maybe several stacked) and makes sure the directory exists.
func (s *Supervisor) cleanMount(ctx context.Context) error {
	for i := 0; i < 8; i++ {
		mounts, err := readMountinfo("/proc/self/mountinfo")
		if err != nil {
			return err
		}
		if _, ok := mountAt(mounts, s.mnt); !ok {
			break
		}
		if err := unix.Unmount(s.mnt, unix.MNT_DETACH); err != nil {
			if out, ferr := exec.CommandContext(ctx, "fusermount", "-u", "-z", s.mnt).CombinedOutput(); ferr != nil {
				return fmt.Errorf("unmount stale lxcfs at %s: %v; fusermount: %s", s.mnt, err, bytes.TrimSpace(out))
			}
		}
	}
	return os.MkdirAll(s.mnt, 0o755)
}

// start runs a new lxcfs and waits until its mount serves.
func (s *Supervisor) start(ctx context.Context, bin string) (*proc, error) {
	s.killStale()
	if err := s.cleanMount(ctx); err != nil {
		return nil, err
	}
	args := []string{"-f", "-p", s.pidFile}
	if s.cfg.LoadAvg {
		args = append(args, "-l")
	}
	if s.cfg.CFS {
		args = append(args, "--enable-cfs")
	}
	args = append(args, s.mnt)
	// lxcfs may outlive us: its output goes to a file, not to our pipes.
	logf, err := os.OpenFile(s.logFile, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(bin, args...) // not CommandContext: ctx ending must not kill it
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // no signals from our terminal or process group
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("lxcfs: start %s: %w", bin, err)
	}
	p := &proc{pid: cmd.Process.Pid, exited: make(chan struct{}), cmd: cmd}
	go func() { _ = cmd.Wait(); close(p.exited) }()

	deadline := time.NewTimer(s.cfg.ReadyTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if _, ok := s.liveMount(); ok {
			s.metrics.restarts.Inc()
			slog.InfoContext(ctx, "lxcfs: started", "pid", p.pid, "args", strings.Join(args, " "))
			return p, nil
		}
		select {
		case <-p.exited:
			return nil, fmt.Errorf("lxcfs exited at start (%s): %s", p.status(), s.logTail())
		case <-deadline.C:
			s.stop(p)
			return nil, fmt.Errorf("lxcfs did not serve %s within %v: %s", s.mnt, s.cfg.ReadyTimeout, s.logTail())
		case <-ctx.Done():
			s.stop(p)
			return nil, ctx.Err()
		case <-tick.C:
		}
	}
}

func (s *Supervisor) logTail() string {
	b, _ := os.ReadFile(s.logFile)
	b = bytes.TrimSpace(b)
	if len(b) > 512 {
		b = b[len(b)-512:]
	}
	return string(b)
}

// stop ends lxcfs: SIGTERM (it unmounts itself), SIGKILL after 10s, then
// whatever mount is left is detached.
func (s *Supervisor) stop(p *proc) {
	_ = unix.Kill(p.pid, unix.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second): // with -l, lxcfs waits for its 5s loadavg tick
		_ = unix.Kill(p.pid, unix.SIGKILL)
		select {
		case <-p.exited:
		case <-time.After(5 * time.Second):
		}
	}
	if err := s.cleanMount(context.Background()); err != nil {
		slog.Warn("lxcfs: stop", "err", err)
	}
}

// errNotReady is returned by Repair when lxcfs does not serve.
var errNotReady = errors.New("lxcfs is not serving")
