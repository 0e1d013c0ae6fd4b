// Package containerd supervises the containerd daemon that pouchd runs
// its containers through: a private instance with its own config, root,
// state and socket under pouchd's home, started as a child process,
// adopted when one started earlier is still alive (pid file + a healthy
// socket), restarted with backoff when it dies, and either stopped or left
// running (so that containers survive) when pouchd exits.
//
// The daemon is Debian's containerd 1.6 by default; pouchd drives it with
// the containerd v2 Go client (see docs/engine.md for why that pair).
package containerd

import (
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

	"github.com/containerd/containerd/v2/client"

	"github.com/pouchfly/pouchfly/internal/errdefs"
)

// Config configures the supervised containerd.
type Config struct {
	// Binary is the containerd executable (looked up in PATH when it has
	// no slash).
	Binary string `yaml:"binary"`
	// Address, when set, is the socket of a containerd managed by someone
	// else: pouchd connects to it and supervises nothing.
	Address string `yaml:"address"`
	// KeepRunning leaves the supervised containerd (and so the containers)
	// running when pouchd exits; the next pouchd adopts it.
	KeepRunning bool `yaml:"keep_running"`
	// StartTimeout bounds how long a start (or adoption) waits for the
	// socket to answer.
	StartTimeout time.Duration `yaml:"start_timeout"`
	// MaxBackoff caps the delay between restarts of a containerd that keeps
	// dying (the delay starts at 100ms and doubles).
	MaxBackoff time.Duration `yaml:"max_backoff"`
	// LogLevel is containerd's own log level (its log goes to
	// HOME/containerd/containerd.log).
	LogLevel string `yaml:"log_level"`
}

// DefaultConfig returns the defaults: Debian's containerd from PATH,
// supervised, left running on exit.
func DefaultConfig() Config {
	return Config{Binary: "containerd", KeepRunning: true, StartTimeout: 20 * time.Second, MaxBackoff: 10 * time.Second, LogLevel: "info"}
}

// Validate checks the config.
func (c Config) Validate() error {
	if c.Address == "" && c.Binary == "" {
		return fmt.Errorf("containerd: binary or address is required: %w", errdefs.ErrInvalid)
	}
	if c.StartTimeout <= 0 || c.MaxBackoff <= 0 {
		return fmt.Errorf("containerd: start_timeout and max_backoff must be positive: %w", errdefs.ErrInvalid)
	}
	switch c.LogLevel {
	case "trace", "debug", "info", "warn", "error", "fatal", "panic":
	default:
		return fmt.Errorf("containerd: log_level %q: %w", c.LogLevel, errdefs.ErrInvalid)
	}
	return nil
}

// Paths are the files of a supervised containerd under its directory.
type Paths struct {
	Dir, Config, Root, State, Socket, PIDFile, Log string
}

// PathsIn returns the layout under dir (HOME/containerd).
func PathsIn(dir string) Paths {
	return Paths{
		Dir:     dir,
		Config:  filepath.Join(dir, "config.toml"),
		Root:    filepath.Join(dir, "root"),
		State:   filepath.Join(dir, "state"),
		Socket:  filepath.Join(dir, "containerd.sock"),
		PIDFile: filepath.Join(dir, "containerd.pid"),
		Log:     filepath.Join(dir, "containerd.log"),
	}
}

// Supervisor runs one containerd. Start brings it up (or adopts it); Run
// watches it and restarts it until its context ends. Methods are safe for
// concurrent use.
type Supervisor struct {
	cfg   Config
	paths Paths
	log   *slog.Logger

	mu       sync.Mutex
	pid      int
	child    *exec.Cmd     // nil when adopted or external
	exited   chan struct{} // closed when the child exits (child only)
	adopted  bool
	restarts int
	onUp     []func()
}

// New returns a supervisor for a containerd under dir (HOME/containerd).
// It starts nothing.
func New(cfg Config, dir string, log *slog.Logger) (*Supervisor, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	return &Supervisor{cfg: cfg, paths: PathsIn(dir), log: log.With("component", "containerd")}, nil
}

// Address is the socket to dial.
func (s *Supervisor) Address() string {
	if s.cfg.Address != "" {
		return s.cfg.Address
	}
	return s.paths.Socket
}

// Paths returns the file layout (empty fields for an external containerd).
func (s *Supervisor) Paths() Paths {
	if s.cfg.Address != "" {
		return Paths{Socket: s.cfg.Address}
	}
	return s.paths
}

// PID is the supervised containerd's pid (0 when external or down).
func (s *Supervisor) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pid
}

// Adopted reports whether the running containerd was found alive at start
// rather than spawned by this supervisor.
func (s *Supervisor) Adopted() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.adopted
}

// Restarts counts the restarts after a crash.
func (s *Supervisor) Restarts() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.restarts
}

// OnRestart registers f, called (in Run's goroutine) each time containerd
// came back after dying.
func (s *Supervisor) OnRestart(f func()) {
	s.mu.Lock()
	s.onUp = append(s.onUp, f)
	s.mu.Unlock()
}

// Start makes containerd available: it adopts a live one started earlier
// (pid file names a containerd process using our config and the socket
// answers) or spawns a new one, and waits until the socket answers.
func (s *Supervisor) Start(ctx context.Context) error {
	if s.cfg.Address != "" {
		return waitServing(ctx, s.cfg.Address, s.cfg.StartTimeout)
	}
	if err := s.writeConfig(); err != nil {
		return err
	}
	if pid := s.livePID(); pid > 0 {
		if err := waitServing(ctx, s.paths.Socket, 5*time.Second); err == nil {
			s.mu.Lock()
			s.pid, s.adopted = pid, true
			s.mu.Unlock()
			s.log.Info("adopted running containerd", "pid", pid, "socket", s.paths.Socket)
			return nil
		}
		s.log.Warn("containerd from the pid file does not answer; replacing it", "pid", pid)
		_ = syscall.Kill(pid, syscall.SIGKILL)
		waitGone(pid, 5*time.Second)
	}
	return s.spawn(ctx)
}

func (s *Supervisor) spawn(ctx context.Context) error {
	bin, err := exec.LookPath(s.cfg.Binary)
	if err != nil {
		return fmt.Errorf("containerd binary %q: %v (apt-get install containerd): %w", s.cfg.Binary, err, errdefs.ErrNotFound)
	}
	_ = os.Remove(s.paths.Socket)
	logf, err := os.OpenFile(s.paths.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, "--config", s.paths.Config)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = s.paths.Dir
	// Its own session: signals to pouchd's terminal or process group do
	// not reach it, and it outlives pouchd when KeepRunning.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start containerd: %w", err)
	}
	logf.Close()
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	if err := os.WriteFile(s.paths.PIDFile, []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		_ = cmd.Process.Kill()
		<-exited
		return err
	}
	s.mu.Lock()
	s.pid, s.child, s.exited, s.adopted = cmd.Process.Pid, cmd, exited, false
	s.mu.Unlock()
	wctx, cancel := context.WithTimeout(ctx, s.cfg.StartTimeout)
	defer cancel()
	for {
		if err := ping(wctx, s.paths.Socket); err == nil {
			s.log.Info("containerd started", "pid", cmd.Process.Pid, "socket", s.paths.Socket)
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("containerd exited at start (%s); see %s: %w", cmd.ProcessState, s.paths.Log, errdefs.ErrUnavailable)
		case <-wctx.Done():
			_ = cmd.Process.Kill()
			<-exited
			return fmt.Errorf("containerd did not answer within %s; see %s: %w", s.cfg.StartTimeout, s.paths.Log, errdefs.ErrUnavailable)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Run watches containerd until ctx ends, restarting it (with backoff)
// when it dies; then it stops it unless KeepRunning. It returns nil on
// ctx's end.
func (s *Supervisor) Run(ctx context.Context) error {
	if s.cfg.Address != "" {
		<-ctx.Done()
		return nil
	}
	backoff := 100 * time.Millisecond
	for {
		s.mu.Lock()
		exited, pid := s.exited, s.pid
		s.mu.Unlock()
		if exited == nil { // adopted: not our child, poll it
			exited = make(chan struct{})
			go func(ch chan struct{}) {
				for s.alive(pid) {
					select {
					case <-ctx.Done():
						return
					case <-time.After(250 * time.Millisecond):
					}
				}
				close(ch)
			}(exited)
		}
		upSince := time.Now()
		select {
		case <-ctx.Done():
			if !s.cfg.KeepRunning {
				s.Stop(context.Background())
			}
			return nil
		case <-exited:
		}
		s.log.Warn("containerd died; restarting", "pid", pid, "backoff", backoff)
		if time.Since(upSince) > time.Minute {
			backoff = 100 * time.Millisecond
		}
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, s.cfg.MaxBackoff)
			if err := s.spawn(ctx); err != nil {
				s.log.Error("containerd restart failed", "err", err)
				continue
			}
			break
		}
		s.mu.Lock()
		s.restarts++
		hooks := append([]func(){}, s.onUp...)
		s.mu.Unlock()
		for _, f := range hooks {
			f()
		}
	}
}

// Stop terminates the supervised containerd (SIGTERM, then SIGKILL after
// 10 s). Shims and containers keep running; they are containerd's
// children only in name.
func (s *Supervisor) Stop(ctx context.Context) {
	if s.cfg.Address != "" {
		return
	}
	s.mu.Lock()
	pid, exited := s.pid, s.exited
	s.mu.Unlock()
	if pid == 0 || !s.alive(pid) {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	if exited != nil {
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(pid, syscall.SIGKILL)
			<-exited
		}
	} else if !waitGone(pid, 10*time.Second) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
		waitGone(pid, 5*time.Second)
	}
	_ = os.Remove(s.paths.PIDFile)
	s.log.Info("containerd stopped", "pid", pid)
}

// livePID returns the pid from the pid file when that process is a
// containerd running our config, else 0.
func (s *Supervisor) livePID() int {
	b, err := os.ReadFile(s.paths.PIDFile)
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 || !s.alive(pid) {
		return 0
	}
	return pid
}

// alive reports whether pid is a (non-zombie) containerd using our config.
func (s *Supervisor) alive(pid int) bool {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		if i := strings.LastIndexByte(string(st), ')'); i > 0 && i+2 < len(st) && st[i+2] == 'Z' {
			return false
		}
	}
	return strings.Contains(string(cmdline), s.paths.Config)
}

func waitGone(pid int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			return true
		}
		if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
			if i := strings.LastIndexByte(string(st), ')'); i > 0 && i+2 < len(st) && st[i+2] == 'Z' {
				return true
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

func ping(ctx context.Context, sock string) error {
	if _, err := os.Stat(sock); err != nil {
		return err
	}
	c, err := client.New(sock, client.WithTimeout(2*time.Second))
	if err != nil {
		return err
	}
	defer c.Close()
	ok, err := c.IsServing(ctx)
	if err != nil {
		return err
	}
	if !ok {
		return errors.New("not serving")
	}
	return nil
}

func waitServing(ctx context.Context, sock string, d time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	for {
		err := ping(ctx, sock)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("containerd at %s: %v: %w", sock, err, errdefs.ErrUnavailable)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// writeConfig writes config.toml (containerd 1.6, config version 2):
// private root, state and socket, CRI and unused snapshotters off.
func (s *Supervisor) writeConfig() error {
	for _, d := range []string{s.paths.Dir, s.paths.Root, s.paths.State} {
		if err := os.MkdirAll(d, 0o711); err != nil {
			return err
		}
	}
	cfg := fmt.Sprintf(`# Written by pouchd at every start; edits are lost.
version = 2
root = %q
state = %q
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = %q

[ttrpc]
  address = %q

[debug]
  level = %q

[plugins."io.containerd.internal.v1.opt"]
  path = %q
`, s.paths.Root, s.paths.State, s.paths.Socket, s.paths.Socket+".ttrpc", s.cfg.LogLevel, filepath.Join(s.paths.Root, "opt"))
	return writeFileAtomic(s.paths.Config, []byte(cfg), 0o600)
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	if cur, err := os.ReadFile(path); err == nil && string(cur) == string(data) {
		return nil
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
