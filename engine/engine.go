// Package engine is pouchd: a PouchContainer-style container engine on top
// of a containerd it supervises (engine/containerd). It pulls images
// through the local Pouchfly agent's registry mirror, unpacks them into
// overlayfs snapshots with containerd's own code, and runs containers with
// runc (or another named runtime) through containerd's runc shim, with
// memory/CPU/pids limits, lxcfs-backed /proc files (engine/lxcfs), disk
// quota for the rootfs and volumes (engine/quota, engine/volume) and rich
// containers (engine/rich). Server serves its Docker-v1.24-style HTTP API
// (engine/api holds the types and the client).
//
// State lives under Config.Home: containers/<id>/ holds each container's
// metadata (config.json), its log (json lines) and its stdio FIFOs;
// containerd/ the supervised containerd; certs.d/ the hosts.toml files
// that route every registry through the agent's mirror.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"golang.org/x/sys/unix"

	"github.com/pouchfly/pouchfly/engine/api"
	"github.com/pouchfly/pouchfly/engine/containerd"
	"github.com/pouchfly/pouchfly/engine/quota"
	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/internal/hostconfig"
)

// Version is pouchd's version, reported by /version.
var Version = "0.5.0-dev"

// ErrConflict classifies requests that conflict with the current state (a
// name in use, removing a running container, an image in use). The HTTP
// edge maps it to 409.
var ErrConflict = api.ErrConflict

// errNotModified: start of a running container, stop of a stopped one (304).
var errNotModified = errors.New("not modified")

// Options are the engine's optional dependencies.
type Options struct {
	// Logger (default slog.Default()).
	Logger *slog.Logger
	// Quota is the disk quota driver; nil detects one under Home (and
	// --disk-quota fails with a clear error when none works).
	Quota quota.Driver
	// SkipQuota disables disk quota (tests of other features).
	SkipQuota bool
}

// Engine is pouchd's core. New builds it, Start brings up containerd and
// restores the containers, Close releases it. Methods are safe for
// concurrent use.
type Engine struct {
	cfg  Config
	log  *slog.Logger
	opts Options

	sup      *containerd.Supervisor
	client   *client.Client
	certsDir string

	quota    quota.Driver
	quotaErr error
	metrics  *metrics
	// homeShared: the home is a shared mount (see makeShared).
	homeShared bool
	ext        extensions

	mu         sync.Mutex
	containers map[string]*container // by ID
	names      map[string]string     // name → ID
	execs      map[string]*execProc
	pulls      map[string]*pullOp

	bg     sync.WaitGroup
	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	closed bool
}

// New checks cfg and returns an engine; it starts nothing.
func New(cfg Config, opts Options) (*Engine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	sup, err := containerd.New(cfg.Containerd, filepath.Join(cfg.Home, "containerd"), opts.Logger)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Engine{
		cfg: cfg, log: opts.Logger, opts: opts, sup: sup,
		certsDir:   filepath.Join(cfg.Home, "certs.d"),
		containers: map[string]*container{}, names: map[string]string{},
		execs: map[string]*execProc{}, pulls: map[string]*pullOp{},
		ctx: ctx, cancel: cancel, metrics: newMetrics(),
	}, nil
}

// Config returns the engine's configuration.
func (e *Engine) Config() Config { return e.cfg }

// Supervisor returns the containerd supervisor.
func (e *Engine) Supervisor() *containerd.Supervisor { return e.sup }

// Client returns the containerd client (valid after Start).
func (e *Engine) Client() *client.Client { return e.client }

// nsCtx returns ctx in pouchd's containerd namespace.
func (e *Engine) nsCtx(ctx context.Context) context.Context {
	return namespaces.WithNamespace(ctx, e.cfg.Namespace)
}

// Start prepares the home, writes the registry hosts files, starts (or
// adopts) containerd, connects to it, sets up quota, lxcfs and volumes,
// and restores the containers found under the home: running ones are
// re-attached (their logs continue), those that exited meanwhile are
// recorded, and restart policies apply.
func (e *Engine) Start(ctx context.Context) error {
	for _, d := range []string{e.cfg.Home, filepath.Join(e.cfg.Home, "containers"), filepath.Join(e.cfg.Home, "exec"), filepath.Join(e.cfg.Home, "runtimes")} {
		if err := os.MkdirAll(d, 0o711); err != nil {
			return fmt.Errorf("home: %w", err)
		}
	}
	if os.Geteuid() == 0 {
		if home, err := filepath.EvalSymlinks(e.cfg.Home); err == nil {
			if changed, err := makeShared(home); err != nil {
				e.log.Warn("home stays as mounted", "err", err)
			} else if e.homeShared = true; changed {
				e.log.Info("home bind-mounted onto itself as a shared mount (unmounts under it reach other namespaces' copies)", "home", home)
			}
		}
	}
	if err := e.writeHosts(); err != nil {
		return err
	}
	if err := e.writeRuntimeWrappers(); err != nil {
		return err
	}
	if err := e.sup.Start(ctx); err != nil {
		return err
	}
	c, err := client.New(e.sup.Address(), client.WithDefaultNamespace(e.cfg.Namespace), client.WithTimeout(10*time.Second))
	if err != nil {
		return fmt.Errorf("containerd client: %v: %w", err, errdefs.ErrUnavailable)
	}
	e.client = c
	e.bg.Add(1)
	go func() { defer e.bg.Done(); _ = e.sup.Run(e.ctx) }()

	switch {
	case e.opts.Quota != nil:
		e.quota = e.opts.Quota
	case e.opts.SkipQuota:
		e.quotaErr = fmt.Errorf("disk quota is disabled in this pouchd: %w", errdefs.ErrUnavailable)
	default:
		d, err := quota.New(ctx, e.cfg.Quota, e.cfg.Home)
		if err != nil {
			e.quotaErr = err
			e.log.Warn("disk quota unavailable", "err", err)
		} else {
			e.quota = d
		}
	}
	if r, ok := e.quota.(quota.Recoverer); ok {
		if err := r.Recover(ctx); err != nil {
			e.log.Warn("quota recovery", "err", err)
		}
	}
	if err := e.ext.start(ctx, e); err != nil {
		return err
	}
	if err := e.restore(ctx); err != nil {
		return err
	}
	e.log.Info("engine started", "home", e.cfg.Home, "containerd", e.sup.Address(), "adopted", e.sup.Adopted(),
		"mirror", e.cfg.Mirror, "quota", e.QuotaDriverName(), "containers", len(e.containers))
	return nil
}

// Close stops background work and disconnects. Running containers keep
// running; containerd is stopped unless its KeepRunning is set.
func (e *Engine) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	cs := make([]*container, 0, len(e.containers))
	for _, c := range e.containers {
		cs = append(cs, c)
	}
	e.mu.Unlock()
	e.cancel()
	for _, c := range cs {
		c.detach()
	}
	e.bg.Wait()
	e.ext.close()
	if e.client != nil {
		return e.client.Close()
	}
	return nil
}

// QuotaDriverName is the disk quota driver's name ("" when unavailable).
func (e *Engine) QuotaDriverName() string {
	if e.quota == nil {
		return ""
	}
	return e.quota.Name()
}

// writeHosts writes certs.d/<registry>/hosts.toml for every registry
// (and _default): the agent's mirror first, the registry's endpoint as the
// fallback. The directory is rebuilt at every start.
func (e *Engine) writeHosts() error {
	if err := os.RemoveAll(e.certsDir); err != nil {
		return err
	}
	if err := os.MkdirAll(e.certsDir, 0o755); err != nil {
		return err
	}
	if e.cfg.Mirror == "" {
		// No mirror: only the per-registry endpoints.
		for _, r := range e.cfg.Registries {
			ep, skip := registryEndpoint(r)
			body := fmt.Sprintf("server = %q\n", ep)
			if skip {
				body += "skip_verify = true\n"
			}
			if err := writeHostsFile(e.certsDir, r.Host, body); err != nil {
				return err
			}
		}
		return nil
	}
	regs := []string{"_default"}
	insecure := map[string]bool{}
	have := map[string]bool{}
	for _, r := range e.cfg.Registries {
		ep, skip := registryEndpoint(r)
		regs = append(regs, r.Host+"="+ep)
		insecure[r.Host] = skip
		have[r.Host] = true
	}
	if !have["docker.io"] {
		regs = append(regs, "docker.io")
	}
	if _, err := hostconfig.Containerd(hostconfig.ContainerdOptions{CertsDir: e.certsDir, Registries: regs, Mirror: e.cfg.Mirror}); err != nil {
		return fmt.Errorf("hosts.toml: %w", err)
	}
	// skip_verify applies to the registry's own endpoint (the top-level
	// server), so it goes before the first host table.
	for host, skip := range insecure {
		if !skip {
			continue
		}
		p := filepath.Join(e.certsDir, host, "hosts.toml")
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		s := string(b)
		if i := strings.Index(s, "\n[host."); i >= 0 {
			s = s[:i] + "\nskip_verify = true\n" + s[i:]
		}
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// registryEndpoint returns r's own endpoint and whether TLS verification
// is skipped.
func registryEndpoint(r Registry) (string, bool) {
	ep := r.Endpoint
	switch {
	case ep != "":
	case r.Insecure:
		return "http://" + r.Host, false
	case r.Host == "docker.io":
		ep = "https://registry-1.docker.io"
	default:
		ep = "https://" + r.Host
	}
	return ep, r.Insecure && strings.HasPrefix(ep, "https://")
}

func writeHostsFile(dir, host, body string) error {
	d := filepath.Join(dir, host)
	if err := os.MkdirAll(d, 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(d, "hosts.toml"), []byte(body), 0o644)
}

// CertsDir is the hosts directory pouchd's resolver reads (for
// `ctr --hosts-dir` and tests).
func (e *Engine) CertsDir() string { return e.certsDir }

// Version answers /version.
func (e *Engine) Version(ctx context.Context) api.Version {
	v := api.Version{Version: Version, APIVersion: api.APIVersion, GoVersion: runtime.Version(), Os: runtime.GOOS, Arch: runtime.GOARCH, KernelVersion: kernelVersion()}
	if e.client != nil {
		if cv, err := e.client.Version(ctx); err == nil {
			v.Containerd = cv.Version
		}
	}
	return v
}

func kernelVersion() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

// Info answers /info.
func (e *Engine) Info(ctx context.Context) api.Info {
	ctx = e.nsCtx(ctx)
	in := api.Info{
		Name: hostname(), ServerVersion: Version, Driver: e.cfg.Snapshotter, CgroupDriver: "cgroupfs",
		CgroupVersion: cgroupVersion(), KernelVersion: kernelVersion(), OSType: runtime.GOOS, Architecture: runtime.GOARCH,
		NCPU: runtime.NumCPU(), MemTotal: memTotal(), PouchRootDir: e.cfg.Home, OperatingSystem: osRelease(),
		ContainerdAddress: e.sup.Address(), ContainerdPID: e.sup.PID(), ContainerdAdopted: e.sup.Adopted(),
		ContainerdRestarts: e.sup.Restarts(), DefaultRuntime: e.cfg.DefaultRuntime, RegistryMirror: e.cfg.Mirror,
		QuotaDriver: e.QuotaDriverName(), Runtimes: map[string]api.Runtime{},
	}
	for name, rt := range e.cfg.runtimes() {
		in.Runtimes[name] = api.Runtime{Path: rt.Path, Args: rt.Args}
	}
	if cv, err := e.client.Version(ctx); err == nil {
		in.ContainerdVersion = cv.Version
	}
	e.mu.Lock()
	for _, c := range e.containers {
		in.Containers++
		switch c.status() {
		case "running":
			in.ContainersRunning++
		default:
			in.ContainersStopped++
		}
	}
	e.mu.Unlock()
	if imgs, err := e.client.ImageService().List(ctx); err == nil {
		in.Images = len(imgs)
	}
	in.LxcfsEnabled, in.LxcfsStatus = e.ext.lxcfsStatus()
	in.RichInit = e.ext.richInit()
	if e.quota == nil && e.quotaErr != nil {
		in.QuotaDriver = ""
	}
	return in
}

func hostname() string {
	h, _ := os.Hostname()
	return h
}

func cgroupVersion() string {
	var st unix.Statfs_t
	if unix.Statfs("/sys/fs/cgroup", &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
		return "2"
	}
	return "1"
}

func memTotal() int64 {
	var si unix.Sysinfo_t
	if unix.Sysinfo(&si) != nil {
		return 0
	}
	return int64(si.Totalram) * int64(si.Unit)
}

func osRelease() string {
	b, err := os.ReadFile("/etc/os-release")
	if err != nil {
		return runtime.GOOS
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "PRETTY_NAME="); ok {
			return strings.Trim(v, `"`)
		}
	}
	return runtime.GOOS
}
