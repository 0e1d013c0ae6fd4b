// Package quota limits the disk space of a container's rootfs and of its
// volumes, with PouchContainer's --disk-quota syntax (ParseSpec) and two
// drivers behind one interface:
//
//   - "project": XFS or ext4 project quota (FS_IOC_FSSETXATTR sets a project
//     ID with PROJINHERIT on the directory, quotactl sets the project's block
//     limit). Used when the filesystem under the engine's root has project
//     quota enabled (ext4 mounted with prjquota, XFS with pquota/prjquota).
//   - "loop": the block-device driver. The directory becomes the mount point
//     of an ext4 filesystem held in a sparse file <root>/quota/<id>.img and
//     attached to a loop device. Works on any kernel with loop devices.
//
// Detect chooses between them. Every driver refuses to limit a directory
// that already holds files; the container rootfs is limited by calling
// Limit on containerd's active overlay snapshot directory right after the
// snapshot is prepared (its fs/ and work/ subdirectories are still empty
// then, and are preserved).
package quota

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"

	"github.com/pouchfly/pouchfly/internal/errdefs"
)

// Driver limits the disk space a directory's contents may use.
// Implementations are safe for concurrent use.
type Driver interface {
	// Name is the driver's name as `pouch info` shows it: "project" or "loop".
	Name() string
	// Limit makes dir a directory whose contents cannot exceed size bytes:
	// writes past it fail (ENOSPC; EDQUOT for ext4 project quota). dir must
	// be absent (it is created, 0755), empty, or hold only empty
	// subdirectories (kept with their modes and owners); anything else is
	// errdefs.ErrInvalid. Limit is idempotent for the same size; another
	// size on a limited dir is errdefs.ErrInvalid. A dir limited before a
	// reboot is limited again with its contents kept.
	Limit(ctx context.Context, dir string, size int64) error
	// Release undoes Limit completely and keeps dir (empty for the loop
	// driver: the contents lived in its filesystem and are gone). Releasing
	// a dir that is not limited is a no-op. A dir still in use (a running
	// container's rootfs) is an error wrapping unix.EBUSY; nothing is
	// detached lazily.
	Release(ctx context.Context, dir string) error
	// Usage returns the bytes used under dir and its limit;
	// errdefs.ErrNotFound if dir is not limited by this driver.
	Usage(ctx context.Context, dir string) (used, limit int64, err error)
}

// Recoverer is implemented by drivers that keep state across restarts.
// The engine calls Recover once at startup, before any Limit: it removes
// what a crash left half-made (backing files, mounts and loop devices of
// quotas never finished or whose directory is gone) and keeps every
// finished quota, mounted or not.
type Recoverer interface {
	Recover(ctx context.Context) error
}

// Driver names.
const (
	DriverAuto    = "auto"
	DriverProject = "project"
	DriverLoop    = "loop"
)

// Config selects and tunes the quota driver. The engine nests it as
// `quota:` in its configuration.
type Config struct {
	// Driver is "auto" (project quota where the filesystem under the
	// engine's root supports it, else loop), "project" or "loop".
	Driver string `yaml:"driver"`
	// Mkfs is the mkfs.ext4 binary the loop driver formats its images with
	// (Debian package e2fsprogs).
	Mkfs string `yaml:"mkfs"`
	// Journal gives the loop driver's filesystems an ext4 journal. Off by
	// default: a journal costs 4 MiB or more of every quota and doubles
	// metadata writes, and these filesystems are checked with `e2fsck -p`
	// before they are mounted again after a crash.
	Journal bool `yaml:"journal"`
	// Preallocate reserves each loop image's blocks on the host disk
	// (fallocate) when the quota is made. Off by default: images are
	// sparse and grow with their contents, and space freed inside is given
	// back (mount -o discard), but quotas can then over-commit the host
	// disk, and a full host disk shows up inside as I/O errors rather than
	// ENOSPC.
	Preallocate bool `yaml:"preallocate"`
}

// DefaultConfig returns the defaults: auto-detection, mkfs.ext4 from PATH,
// no journal.
func DefaultConfig() Config {
	return Config{Driver: DriverAuto, Mkfs: "mkfs.ext4"}
}

// Validate checks the configuration; errors wrap errdefs.ErrInvalid.
func (c Config) Validate() error {
	switch c.Driver {
	case DriverAuto, DriverProject, DriverLoop:
	default:
		return fmt.Errorf("quota.driver %q: want auto, project or loop: %w", c.Driver, errdefs.ErrInvalid)
	}
	if c.Mkfs == "" {
		return fmt.Errorf("quota.mkfs: empty: %w", errdefs.ErrInvalid)
	}
	return nil
}

// Detect returns the best driver for the filesystem under root with the
// default configuration; see New.
func Detect(ctx context.Context, root string) (Driver, error) {
	return New(ctx, DefaultConfig(), root)
}

// New returns the driver cfg asks for, keeping its state under
// <root>/quota. With "auto" it is the project driver when the filesystem
// under root has project quota enabled and a probe (set a project ID and a
// limit on a scratch directory) succeeds, else the loop driver when loop
// devices and mkfs.ext4 work; otherwise an error wrapping
// errdefs.ErrUnavailable says why each was refused.
func New(ctx context.Context, cfg Config, root string) (Driver, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(stateDir(root), 0o700); err != nil {
		return nil, fmt.Errorf("quota: %w", err)
	}
	var perr, lerr error
	if cfg.Driver != DriverLoop {
		p, err := NewProject(ctx, root)
		if err == nil {
			return p, nil
		}
		perr = err
		if cfg.Driver == DriverProject {
			return nil, err
		}
		slog.InfoContext(ctx, "quota: project quota unavailable, trying loop devices", "reason", err)
	}
	l, err := NewLoop(root, cfg)
	if err == nil {
		if err = l.Probe(ctx); err == nil {
			return l, nil
		}
	}
	lerr = err
	if perr != nil {
		return nil, fmt.Errorf("quota: no usable driver: project: %v; loop: %w", perr, lerr)
	}
	return nil, lerr
}

// stateDir is where drivers keep images and state files.
func stateDir(root string) string { return root + "/quota" }

// lookMkfs resolves the mkfs binary.
func lookMkfs(mkfs string) (string, error) {
	p, err := exec.LookPath(mkfs)
	if err != nil {
		return "", fmt.Errorf("%s not found (install e2fsprogs): %w: %w", mkfs, err, errdefs.ErrUnavailable)
	}
	return p, nil
}
