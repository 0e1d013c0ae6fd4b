// Package volume keeps the engine's named volumes: directories under
// <root>/volumes/<name>/_data with their metadata in
// <root>/volumes/<name>/volume.json, optionally limited in size through a
// disk quota driver (`pouch volume create -o size=10g`).
package volume

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/pouchfly/pouchfly/engine/quota"
	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/internal/units"
)

// DriverLocal is the only volume driver: directories on the engine's disk.
const DriverLocal = "local"

// OptSize is the volume option holding its size limit ("10g").
const OptSize = "size"

// Volume is a named volume, shaped like Docker's API object.
type Volume struct {
	// Name matches [a-zA-Z0-9][a-zA-Z0-9_.-]*.
	Name string `json:"Name"`
	// Driver is "local".
	Driver string `json:"Driver"`
	// Mountpoint is the host directory bound into containers.
	Mountpoint string `json:"Mountpoint"`
	// Size is the limit in bytes; 0 means unlimited.
	Size int64 `json:"Size,omitempty"`
	// CreatedAt is when the volume was created (UTC).
	CreatedAt time.Time `json:"CreatedAt"`
	// Labels are the user's key/value labels.
	Labels map[string]string `json:"Labels"`
	// Options are the driver options it was created with (e.g. size).
	Options map[string]string `json:"Options"`
	// Scope is "local".
	Scope string `json:"Scope"`
}

// Quota is what the store needs from a disk quota driver (quota.Driver
// satisfies it).
type Quota interface {
	Name() string
	Limit(ctx context.Context, dir string, size int64) error
	Release(ctx context.Context, dir string) error
	Usage(ctx context.Context, dir string) (used, limit int64, err error)
}

var _ Quota = quota.Driver(nil)

// UsageFunc returns the IDs of the containers that use the named volume
// (created or running); the engine's container store answers it. It must
// not call back into the Store.
type UsageFunc func(name string) []string

// ErrInUse is wrapped (together with errdefs.ErrInvalid) by Remove when
// containers still use the volume; the API edge may map it to 409.
var ErrInUse = errors.New("volume is in use")

// Config holds the volume store's settings (the engine nests it as `volume:`).
type Config struct {
	// DefaultSize limits every volume created without a size option
	// ("0" or empty: unlimited). Needs a disk quota driver.
	DefaultSize units.Bytes `yaml:"default_size"`
}

// DefaultConfig returns the defaults: volumes are unlimited unless created
// with -o size.
func DefaultConfig() Config { return Config{} }

// Validate checks the configuration; errors wrap errdefs.ErrInvalid.
func (c Config) Validate() error {
	if c.DefaultSize != 0 && c.DefaultSize < quota.MinSize {
		return fmt.Errorf("volume.default_size %s is below the minimum %s: %w", units.Format(int64(c.DefaultSize)), units.Format(quota.MinSize), errdefs.ErrInvalid)
	}
	return nil
}

var nameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)

// ValidateName checks a volume name against Docker's rule
// [a-zA-Z0-9][a-zA-Z0-9_.-]* (at most 255 characters); errors wrap
// errdefs.ErrInvalid.
func ValidateName(name string) error {
	if !nameRE.MatchString(name) || len(name) > 255 {
		return fmt.Errorf("invalid volume name %q: it must match [a-zA-Z0-9][a-zA-Z0-9_.-]* (at most 255 characters): %w", name, errdefs.ErrInvalid)
	}
	return nil
}

// Store keeps named volumes on disk. Its methods are safe for concurrent
// use; they serialise on one lock (quota creation formats a filesystem and
// is the slow part).
type Store struct {
	dir   string // <root>/volumes
	cfg   Config
	quota Quota // nil: sized volumes are refused

	mu    sync.Mutex
	inUse UsageFunc
}

// New returns a store under <root>/volumes. q may be nil (no disk quota:
// sized volumes are refused with errdefs.ErrUnavailable). It creates the
// directory and nothing else; call Restore at startup.
func New(root string, cfg Config, q Quota) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(filepath.Join(root, "volumes"))
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o701); err != nil {
		return nil, fmt.Errorf("volume: %w", err)
	}
	return &Store{dir: dir, cfg: cfg, quota: q}, nil
}

// SetUsage installs the hook Remove asks whether a volume is in use. The
// engine sets it once its container store exists; without it every volume
// counts as unused.
func (s *Store) SetUsage(fn UsageFunc) {
	s.mu.Lock()
	s.inUse = fn
	s.mu.Unlock()
}

func (s *Store) volDir(name string) string   { return filepath.Join(s.dir, name) }
func (s *Store) dataDir(name string) string  { return filepath.Join(s.dir, name, "_data") }
func (s *Store) metaPath(name string) string { return filepath.Join(s.dir, name, "volume.json") }

// parseOptions checks the driver options and returns the size they ask for.
func (s *Store) parseOptions(opts map[string]string) (int64, error) {
	var size int64
	for k, v := range opts {
		switch k {
		case OptSize:
			n, err := units.ParseBytes(v)
			if err != nil {
				return 0, fmt.Errorf("volume option size=%q: want a size such as 512m or 10g: %w", v, errdefs.ErrInvalid)
			}
			if n != 0 && n < quota.MinSize {
				return 0, fmt.Errorf("volume option size=%s is below the minimum %s: %w", v, units.Format(quota.MinSize), errdefs.ErrInvalid)
			}
			size = n
		default:
			return 0, fmt.Errorf("unknown volume option %q for driver local (supported: size): %w", k, errdefs.ErrInvalid)
		}
	}
	if _, given := opts[OptSize]; !given {
		size = int64(s.cfg.DefaultSize)
	}
	return size, nil
}

// Create makes the named volume. driver must be "local" (or empty). opts
// may hold "size" (e.g. "10g", at least quota.MinSize): the volume's
// contents are then limited to it through the quota driver, and writes
// past it fail with ENOSPC. Creating a volume that exists returns it
// unchanged when opts are empty or equal to its own (so `-v NAME:/path`
// can create on first use), else errdefs.ErrInvalid.
func (s *Store) Create(ctx context.Context, name, driver string, opts, labels map[string]string) (Volume, error) {
	if err := ValidateName(name); err != nil {
		return Volume{}, err
	}
	if driver == "" {
		driver = DriverLocal
	}
	if driver != DriverLocal {
		return Volume{}, fmt.Errorf("volume driver %q is not supported (only local): %w", driver, errdefs.ErrInvalid)
	}
	size, err := s.parseOptions(opts)
	if err != nil {
		return Volume{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if v, err := s.read(name); err == nil {
		if len(opts) == 0 || maps.Equal(opts, v.Options) {
			return v, nil
		}
		return Volume{}, fmt.Errorf("volume %s already exists with options %v: %w", name, v.Options, errdefs.ErrInvalid)
	} else if !errors.Is(err, errdefs.ErrNotFound) {
		return Volume{}, err
	}
	if size > 0 && s.quota == nil {
		return Volume{}, fmt.Errorf("volume %s: size needs a disk quota driver, and none is configured: %w", name, errdefs.ErrUnavailable)
	}
	v := Volume{
		Name: name, Driver: driver, Mountpoint: s.dataDir(name), Size: size,
		CreatedAt: time.Now().UTC().Truncate(time.Second),
		Labels:    nonNil(labels), Options: nonNil(opts), Scope: "local",
	}
	// A leftover directory without metadata is a half-made volume: clear it.
	if _, err := os.Lstat(s.volDir(name)); err == nil {
		if err := s.destroy(ctx, name); err != nil {
			return Volume{}, err
		}
	}
	if err := os.MkdirAll(v.Mountpoint, 0o755); err != nil {
		return Volume{}, fmt.Errorf("volume %s: %w", name, err)
	}
	ok := false
	defer func() {
		if !ok {
			_ = s.destroy(context.WithoutCancel(ctx), name)
		}
	}()
	if size > 0 {
		if err := s.quota.Limit(ctx, v.Mountpoint, size); err != nil {
			return Volume{}, fmt.Errorf("volume %s: %w", name, err)
		}
	}
	if err := writeJSON(s.metaPath(name), v); err != nil { // last: the volume exists once this is written
		return Volume{}, fmt.Errorf("volume %s: %w", name, err)
	}
	ok = true
	slog.InfoContext(ctx, "volume: created", "volume", name, "size", size)
	return v, nil
}

func nonNil(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return maps.Clone(m)
}

// read loads a volume's metadata; errdefs.ErrNotFound if it has none.
func (s *Store) read(name string) (Volume, error) {
	var v Volume
	if err := readJSON(s.metaPath(name), &v); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return Volume{}, fmt.Errorf("volume %s: %w", name, errdefs.ErrNotFound)
		}
		return Volume{}, fmt.Errorf("volume %s: %w", name, err)
	}
	v.Mountpoint = s.dataDir(name) // follows the store if the root moved
	return v, nil
}

// Get returns the named volume, or an error wrapping errdefs.ErrNotFound.
func (s *Store) Get(ctx context.Context, name string) (Volume, error) {
	if err := ValidateName(name); err != nil {
		return Volume{}, fmt.Errorf("volume %s: %w", name, errdefs.ErrNotFound)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.read(name)
}

// List returns every volume, sorted by name.
func (s *Store) List(ctx context.Context) ([]Volume, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("volume: %w", err)
	}
	var out []Volume
	for _, e := range ents {
		if !e.IsDir() || ValidateName(e.Name()) != nil {
			continue
		}
		v, err := s.read(e.Name())
		if errors.Is(err, errdefs.ErrNotFound) {
			continue // half-made; Restore clears it
		}
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Usage returns the bytes used by the volume's contents and its limit
// (0 when unlimited; used is then not measured and returned as -1).
func (s *Store) Usage(ctx context.Context, name string) (used, limit int64, err error) {
	v, err := s.Get(ctx, name)
	if err != nil {
		return 0, 0, err
	}
	if v.Size == 0 || s.quota == nil {
		return -1, 0, nil
	}
	return s.quota.Usage(ctx, v.Mountpoint)
}

// Remove deletes the volume and its contents. A volume that containers
// use (per the UsageFunc) is refused with an error wrapping ErrInUse and
// errdefs.ErrInvalid, unless force is set. Even with force, a sized
// volume whose filesystem is still mounted in a running container cannot
// be removed (the quota driver's error, wrapping unix.EBUSY). A missing
// volume is errdefs.ErrNotFound (force: nil).
func (s *Store) Remove(ctx context.Context, name string, force bool) error {
	if err := ValidateName(name); err != nil {
		if force {
			return nil
		}
		return fmt.Errorf("volume %s: %w", name, errdefs.ErrNotFound)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := s.read(name); err != nil {
		if force && errors.Is(err, errdefs.ErrNotFound) {
			return nil
		}
		return err
	}
	if !force && s.inUse != nil {
		if ids := s.inUse(name); len(ids) > 0 {
			return fmt.Errorf("volume %s is in use by container(s) %s: %w: %w", name, strings.Join(short(ids), ", "), ErrInUse, errdefs.ErrInvalid)
		}
	}
	if err := s.destroy(ctx, name); err != nil {
		return err
	}
	slog.InfoContext(ctx, "volume: removed", "volume", name)
	return nil
}

func short(ids []string) []string {
	out := slices.Clone(ids)
	for i, id := range out {
		if len(id) > 12 {
			out[i] = id[:12]
		}
	}
	return out
}

// destroy releases a volume's quota and deletes its directory; the
// metadata goes first so that a crash halfway leaves a half-made volume
// that Restore clears, never a listed volume without its data.
func (s *Store) destroy(ctx context.Context, name string) error {
	if s.quota != nil {
		if err := s.quota.Release(ctx, s.dataDir(name)); err != nil {
			return fmt.Errorf("volume %s: %w", name, err)
		}
	}
	if err := os.Remove(s.metaPath(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("volume %s: %w", name, err)
	}
	if err := os.RemoveAll(s.volDir(name)); err != nil {
		return fmt.Errorf("volume %s: %w", name, err)
	}
	return nil
}

// Restore runs once at engine startup, after the quota driver's Recover:
// it mounts the quota of every sized volume again (after a reboot the
// quota filesystems are not mounted; contents are kept) and clears
// half-made volumes (a directory without metadata). Errors of single
// volumes are joined; the others are restored anyway.
func (s *Store) Restore(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return fmt.Errorf("volume: %w", err)
	}
	var errs []error
	for _, e := range ents {
		name := e.Name()
		if !e.IsDir() || ValidateName(name) != nil {
			continue
		}
		v, err := s.read(name)
		if errors.Is(err, errdefs.ErrNotFound) {
			slog.InfoContext(ctx, "volume: removing half-made volume", "volume", name)
			errs = append(errs, s.destroy(ctx, name))
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if v.Size > 0 {
			if s.quota == nil {
				errs = append(errs, fmt.Errorf("volume %s has size %s but no disk quota driver is configured: %w", name, units.Format(v.Size), errdefs.ErrUnavailable))
				continue
			}
			if err := s.quota.Limit(ctx, v.Mountpoint, v.Size); err != nil {
				errs = append(errs, fmt.Errorf("volume %s: %w", name, err))
			}
		}
	}
	return errors.Join(errs...)
}
