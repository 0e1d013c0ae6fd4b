package engine

import (
	"fmt"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/pouchfly/pouchfly/engine/containerd"
	"github.com/pouchfly/pouchfly/engine/lxcfs"
	"github.com/pouchfly/pouchfly/engine/quota"
	"github.com/pouchfly/pouchfly/engine/volume"
	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/internal/hostconfig"
	"github.com/pouchfly/pouchfly/internal/units"
)

// Registry is one registry's settings.
type Registry struct {
	// Host is the registry as image names spell it: "docker.io",
	// "registry.local:5000".
	Host string `yaml:"host"`
	// Endpoint is the registry's own URL, used when the agent's mirror
	// is down ("http://10.0.0.1:5000" for a plain-HTTP registry); default
	// https://HOST (https://registry-1.docker.io for docker.io).
	Endpoint string `yaml:"endpoint"`
	// Insecure reaches the registry without TLS verification; with no
	// Endpoint it means plain HTTP (http://HOST), as Docker's
	// insecure-registries do.
	Insecure bool `yaml:"insecure"`
}

// Runtime is a named OCI runtime: a runc-compatible binary driven by
// containerd's runc shim (io.containerd.runc.v2).
type Runtime struct {
	// Path of the runtime binary ("runc": looked up in PATH).
	Path string `yaml:"path"`
	// Args are extra global arguments given to the binary (e.g.
	// --systemd-cgroup is not one: use the shim's options).
	Args []string `yaml:"args"`
}

// RichConfig configures rich containers.
type RichConfig struct {
	// InitPath is the static pouch-init binary bind-mounted into rich
	// containers ("": pouch-init next to the pouchd binary).
	InitPath string `yaml:"init_path"`
}

// Config is pouchd's engine configuration (the `engine` half of
// pouchd.yaml; the binary adds the log level).
type Config struct {
	// Home holds everything pouchd keeps: containers' metadata and logs,
	// volumes, quota images, lxcfs's mount point and the supervised
	// containerd's config, root, state and socket.
	Home string `yaml:"home"`
	// Listen is the API address: unix:///path.sock (or tcp://host:port,
	// unauthenticated: loopback only).
	Listen string `yaml:"listen"`
	// Namespace is the containerd namespace of pouchd's images and
	// containers.
	Namespace string `yaml:"namespace"`
	// Mirror is the local agent's registry mirror (dfget daemon); every
	// registry resolves through it first, then through its own endpoint.
	// "" pulls from the registries directly.
	Mirror string `yaml:"mirror"`
	// Registries sets per-registry endpoints and TLS (the rest use
	// https://HOST behind the mirror).
	Registries []Registry `yaml:"registries"`
	// Snapshotter unpacks layers and holds container root filesystems.
	Snapshotter string `yaml:"snapshotter"`
	// Containerd is the supervised containerd.
	Containerd containerd.Config `yaml:"containerd"`
	// Runtimes are the OCI runtimes containers may pick with --runtime.
	// "runc" is always defined (Path "runc") unless overridden.
	Runtimes map[string]Runtime `yaml:"runtimes"`
	// DefaultRuntime is used when a container names none.
	DefaultRuntime string `yaml:"default_runtime"`
	// CgroupParent is the cgroup (cgroupfs path) under which every
	// container gets its own, named by its ID.
	CgroupParent string `yaml:"cgroup_parent"`
	// MinMemory is the smallest accepted -m (as Docker's 6 MiB: below it
	// the runtime itself cannot start).
	MinMemory units.Bytes `yaml:"min_memory"`
	// StopTimeout is how long stop waits after SIGTERM before SIGKILL.
	StopTimeout time.Duration `yaml:"stop_timeout"`
	// Quota configures --disk-quota and sized volumes.
	Quota quota.Config `yaml:"quota"`
	// Volume configures named volumes.
	Volume volume.Config `yaml:"volume"`
	// Lxcfs configures the lxcfs pouchd supervises (for --enableLxcfs).
	Lxcfs lxcfs.Config `yaml:"lxcfs"`
	// Rich configures --rich containers.
	Rich RichConfig `yaml:"rich"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		Home:           "/var/lib/pouchd",
		Listen:         "unix:///var/run/pouchd.sock",
		Namespace:      "pouchd",
		Mirror:         hostconfig.DefaultMirror,
		Registries:     []Registry{},
		Snapshotter:    "overlayfs",
		Containerd:     containerd.DefaultConfig(),
		Runtimes:       map[string]Runtime{"runc": {Path: "runc"}},
		DefaultRuntime: "runc",
		CgroupParent:   "/pouchd",
		MinMemory:      6 << 20,
		StopTimeout:    10 * time.Second,
		Quota:          quota.DefaultConfig(),
		Volume:         volume.DefaultConfig(),
		Lxcfs:          lxcfs.DefaultConfig(),
	}
}

var (
	nameRE    = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)
	runtimeRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)
)

// Validate checks the config; errors wrap errdefs.ErrInvalid.
func (c Config) Validate() error {
	if c.Home == "" || !filepath.IsAbs(c.Home) {
		return fmt.Errorf("home %q: want an absolute path: %w", c.Home, errdefs.ErrInvalid)
	}
	if _, _, err := ParseListen(c.Listen); err != nil {
		return err
	}
	if !nameRE.MatchString(c.Namespace) {
		return fmt.Errorf("namespace %q: %w", c.Namespace, errdefs.ErrInvalid)
	}
	if c.Mirror != "" {
		if _, err := hostconfig.ValidateMirror(c.Mirror); err != nil {
			return fmt.Errorf("mirror: %w", err)
		}
	}
	seen := map[string]bool{}
	for _, r := range c.Registries {
		if r.Host == "" || strings.ContainsAny(r.Host, "/ ") {
			return fmt.Errorf("registries: host %q: want host[:port] as in image names: %w", r.Host, errdefs.ErrInvalid)
		}
		if seen[r.Host] {
			return fmt.Errorf("registries: %s named twice: %w", r.Host, errdefs.ErrInvalid)
		}
		seen[r.Host] = true
		if r.Endpoint != "" {
			u, err := url.Parse(r.Endpoint)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				return fmt.Errorf("registries: %s endpoint %q: want http(s)://host[:port]: %w", r.Host, r.Endpoint, errdefs.ErrInvalid)
			}
		}
	}
	if c.Snapshotter == "" {
		return fmt.Errorf("snapshotter: empty: %w", errdefs.ErrInvalid)
	}
	if err := c.Containerd.Validate(); err != nil {
		return err
	}
	for name, rt := range c.Runtimes {
		if !runtimeRE.MatchString(name) {
			return fmt.Errorf("runtimes: name %q: %w", name, errdefs.ErrInvalid)
		}
		if rt.Path == "" {
			return fmt.Errorf("runtimes: %s: path is required: %w", name, errdefs.ErrInvalid)
		}
	}
	if _, ok := c.runtimes()[c.DefaultRuntime]; !ok {
		return fmt.Errorf("default_runtime %q is not among the runtimes: %w", c.DefaultRuntime, errdefs.ErrInvalid)
	}
	if !strings.HasPrefix(c.CgroupParent, "/") || strings.Contains(c.CgroupParent, "..") {
		return fmt.Errorf("cgroup_parent %q: want an absolute cgroup path like /pouchd: %w", c.CgroupParent, errdefs.ErrInvalid)
	}
	if c.MinMemory < 0 || c.StopTimeout <= 0 {
		return fmt.Errorf("min_memory and stop_timeout must be positive: %w", errdefs.ErrInvalid)
	}
	if err := c.Volume.Validate(); err != nil {
		return err
	}
	if err := c.Lxcfs.Validate(); err != nil {
		return err
	}
	return c.Quota.Validate()
}

// runtimes returns the configured runtimes, runc included.
func (c Config) runtimes() map[string]Runtime {
	out := map[string]Runtime{"runc": {Path: "runc"}}
	for k, v := range c.Runtimes {
		out[k] = v
	}
	return out
}

// ParseListen splits unix:///path or tcp://host:port.
func ParseListen(s string) (network, addr string, err error) {
	switch {
	case strings.HasPrefix(s, "unix://") && len(s) > len("unix://"):
		return "unix", strings.TrimPrefix(s, "unix://"), nil
	case strings.HasPrefix(s, "tcp://") && len(s) > len("tcp://"):
		return "tcp", strings.TrimPrefix(s, "tcp://"), nil
	}
	return "", "", fmt.Errorf("listen %q: want unix:///path.sock or tcp://host:port: %w", s, errdefs.ErrInvalid)
}
