package quota

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/internal/units"
)

// firstProjectID is where the project driver starts numbering; IDs below
// are left to the administrator's /etc/projects.
const firstProjectID = 100000

// ProjectDriver limits directories with XFS or ext4 project quota: each
// directory gets a project ID of its own with PROJINHERIT (so everything
// created below inherits it) and the project gets a hard block limit.
// Directories must be on the filesystem that holds the engine's root.
// Project IDs are recorded in <root>/quota/project.json. Writes past the
// limit fail with ENOSPC on XFS and EDQUOT on ext4. Safe for concurrent use.
type ProjectDriver struct {
	root    string
	dir     string // <root>/quota
	fsType  string // "xfs" or "ext4"
	dev     uint64 // st_dev of root's filesystem
	devNode string // block device node for quotactl without quotactl_fd

	mu sync.Mutex
}

var (
	_ Driver    = (*ProjectDriver)(nil)
	_ Recoverer = (*ProjectDriver)(nil)
)

type projectEntry struct {
	ID   uint32 `json:"id"`
	Size int64  `json:"size"`
}

type projectState struct {
	Next    uint32                   `json:"next"`
	Entries map[string]*projectEntry `json:"entries"` // dir → entry
}

// NewProject returns the project driver for the filesystem under root, or
// an error wrapping errdefs.ErrUnavailable that says why it cannot be used:
// not XFS or ext4, mounted without project quota (ext4: -o prjquota with
// the project and quota features; XFS: -o prjquota), accounting off, or a
// failed probe (a scratch directory under <root>/quota gets a project ID
// and a limit that must read back).
func NewProject(ctx context.Context, root string) (*ProjectDriver, error) {
	root, err := filepath.Abs(root)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(stateDir(root), 0o700); err != nil {
		return nil, fmt.Errorf("quota: %w", err)
	}
	if r, err := filepath.EvalSymlinks(root); err == nil {
		root = r
	}
	p := &ProjectDriver{root: root, dir: stateDir(root)}
	if err := p.detect(ctx); err != nil {
		return nil, fmt.Errorf("project quota under %s: %w: %w", root, err, errdefs.ErrUnavailable)
	}
	return p, nil
}

func (p *ProjectDriver) detect(ctx context.Context) error {
	var sfs unix.Statfs_t
	if err := unix.Statfs(p.root, &sfs); err != nil {
		return err
	}
	switch sfs.Type {
	case xfsSuperMagic:
		p.fsType = "xfs"
	case ext4SuperMagic:
		p.fsType = "ext4"
	default:
		return fmt.Errorf("filesystem type 0x%x has no project quota (want xfs or ext4)", sfs.Type)
	}
	var st unix.Stat_t
	if err := unix.Stat(p.root, &st); err != nil {
		return err
	}
	p.dev = st.Dev
	mounts, err := readMountinfo("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	m, ok := mountOf(mounts, p.root, st.Dev)
	if !ok {
		return fmt.Errorf("no mount found for %s", p.root)
	}
	if !projectQuotaOption(p.fsType, m.SuperOptions) {
		hint := "mount it with -o prjquota"
		if p.fsType == "ext4" {
			hint = "enable the features with `tune2fs -O project,quota` and mount it with -o prjquota"
		}
		return fmt.Errorf("%s on %s (%s) is mounted without project quota (%s)", p.fsType, m.Source, m.MountPoint, hint)
	}
	if err := p.quotaOn(); err != nil {
		return err
	}
	return p.probe(ctx)
}

// mountOf returns the mount holding path on device dev: the longest
// mount point that prefixes path with the same device numbers.
func mountOf(mounts []mountEntry, path string, dev uint64) (mountEntry, bool) {
	var best mountEntry
	found := false
	for _, m := range mounts {
		if unix.Mkdev(m.Major, m.Minor) != dev {
			continue
		}
		if m.MountPoint == path || m.MountPoint == "/" || strings.HasPrefix(path, m.MountPoint+"/") {
			if !found || len(m.MountPoint) >= len(best.MountPoint) {
				best, found = m, true
			}
		}
	}
	return best, found
}

// projectQuotaOption reports whether superblock options enable enforced
// project quota.
func projectQuotaOption(fsType, opts string) bool {
	switch fsType {
	case "xfs":
		return hasOption(opts, "prjquota") || hasOption(opts, "pquota") // not pqnoenforce: accounting only
	case "ext4":
		return hasOption(opts, "prjquota")
	}
	return false
}

// withRoot runs fn with a descriptor on root for quotactl.
func (p *ProjectDriver) withRoot(fn func(fd int) error) error {
	fd, err := unix.Open(p.root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return fn(fd)
}

// devPath makes (once) the block device node quotactl needs when the
// kernel lacks quotactl_fd.
func (p *ProjectDriver) devPath() string {
	if p.devNode != "" {
		return p.devNode
	}
	node := filepath.Join(p.dir, "backingFsBlockDev")
	os.Remove(node)
	if err := unix.Mknod(node, unix.S_IFBLK|0o600, int(p.dev)); err != nil {
		return ""
	}
	p.devNode = node
	return node
}

func (p *ProjectDriver) q(cmd uint32, id uint32, addr unsafe.Pointer) error {
	return p.withRoot(func(fd int) error {
		err := quotactl(fd, "", cmd, id, addr)
		if errors.Is(err, unix.ENOSYS) {
			err = quotactl(-1, p.devPath(), cmd, id, addr)
		}
		if errors.Is(err, unix.ESRCH) {
			return errQuotaOff
		}
		return err
	})
}

// quotaOn checks that project quota accounting is on (Q_GETINFO).
func (p *ProjectDriver) quotaOn() error {
	var info ifDqinfo
	if err := p.q(qGetInfo, 0, unsafe.Pointer(&info)); err != nil {
		return fmt.Errorf("quotactl(Q_GETINFO, PRJQUOTA): %w", err)
	}
	return nil
}

// setLimit sets project id's hard (and soft) block limit; 0 removes it.
func (p *ProjectDriver) setLimit(id uint32, size int64) error {
	if p.fsType == "xfs" {
		d := fsDiskQuota{Version: fsDquotVer, Flags: fsProjQuota, FieldMask: fsDqBHard | fsDqBSoft, ID: id,
			BlkHardLimit: uint64((size + xfsBBSize - 1) / xfsBBSize)}
		d.BlkSoftLimit = d.BlkHardLimit
		if err := p.q(qxSetQLim, id, unsafe.Pointer(&d)); err != nil {
			return fmt.Errorf("quotactl(Q_XSETQLIM, project %d): %w", id, err)
		}
		return nil
	}
	d := ifDqblk{BHardLimit: uint64((size + qifBlockSz - 1) / qifBlockSz), Valid: qifBLimits}
	d.BSoftLimit = d.BHardLimit
	if err := p.q(qSetQuota, id, unsafe.Pointer(&d)); err != nil {
		return fmt.Errorf("quotactl(Q_SETQUOTA, project %d): %w", id, err)
	}
	return nil
}

// getQuota returns project id's used bytes and hard limit in bytes.
func (p *ProjectDriver) getQuota(id uint32) (used, limit int64, err error) {
	if p.fsType == "xfs" {
		var d fsDiskQuota
		if err := p.q(qxGetQuota, id, unsafe.Pointer(&d)); err != nil {
			return 0, 0, fmt.Errorf("quotactl(Q_XGETQUOTA, project %d): %w", id, err)
		}
		return int64(d.BCount) * xfsBBSize, int64(d.BlkHardLimit) * xfsBBSize, nil
	}
	var d ifDqblk
	if err := p.q(qGetQuota, id, unsafe.Pointer(&d)); err != nil {
		return 0, 0, fmt.Errorf("quotactl(Q_GETQUOTA, project %d): %w", id, err)
	}
	return int64(d.CurSpace), int64(d.BHardLimit) * qifBlockSz, nil
}

// probe sets a project ID and a limit on a scratch directory and reads
// them back.
func (p *ProjectDriver) probe(ctx context.Context) error {
	dir, err := os.MkdirTemp(p.dir, ".probe-")
	if err != nil {
		return err
	}
	defer os.Remove(dir)
	const probeID, probeSize = firstProjectID - 1, 8 << 20
	if err := setProject(dir, probeID); err != nil {
		return err
	}
	defer p.setLimit(probeID, 0)
	if err := p.setLimit(probeID, probeSize); err != nil {
		return err
	}
	if _, lim, err := p.getQuota(probeID); err != nil {
		return err
	} else if lim != probeSize {
		return fmt.Errorf("probe limit reads back as %d, want %d", lim, probeSize)
	}
	slog.DebugContext(ctx, "quota: project quota probe ok", "root", p.root, "fs", p.fsType)
	return nil
}

// Name returns "project".
func (p *ProjectDriver) Name() string { return DriverProject }

func (p *ProjectDriver) statePath() string { return filepath.Join(p.dir, "project.json") }

func (p *ProjectDriver) load() (*projectState, error) {
	st := &projectState{Next: firstProjectID, Entries: map[string]*projectEntry{}}
	if err := readJSON(p.statePath(), st); err != nil {
		return nil, fmt.Errorf("quota: %w", err)
	}
	if st.Entries == nil {
		st.Entries = map[string]*projectEntry{}
	}
	if st.Next < firstProjectID {
		st.Next = firstProjectID
	}
	return st, nil
}

// Limit implements Driver: dir (and its empty subdirectories) get a fresh
// project ID with PROJINHERIT, and the project a hard limit of size.
// dir must be on the filesystem of the engine's root.
func (p *ProjectDriver) Limit(ctx context.Context, dir string, size int64) error {
	dir, err := cleanDir(dir)
	if err != nil {
		return err
	}
	if size < MinSize {
		return fmt.Errorf("quota: size %s for %s is below the minimum %s: %w", units.Format(size), dir, units.Format(MinSize), errdefs.ErrInvalid)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	st, err := p.load()
	if err != nil {
		return err
	}
	if e := st.Entries[dir]; e != nil {
		if e.Size != size {
			return fmt.Errorf("quota: %s is already limited to %s (asked %s); release it first: %w", dir, units.Format(e.Size), units.Format(size), errdefs.ErrInvalid)
		}
		return p.setLimit(e.ID, size) // idempotent; re-applies after a restore
	}
	_, subdirs, err := prepareDir(dir)
	if err != nil {
		return err
	}
	var sst unix.Stat_t
	if err := unix.Stat(dir, &sst); err != nil {
		return fmt.Errorf("quota: %w", err)
	}
	if sst.Dev != p.dev {
		return fmt.Errorf("quota: %s is not on the filesystem of %s (project quota works within one filesystem): %w", dir, p.root, errdefs.ErrInvalid)
	}
	id := st.Next
	st.Next++
	e := &projectEntry{ID: id, Size: size}
	st.Entries[dir] = e
	if err := writeJSON(p.statePath(), st); err != nil {
		return fmt.Errorf("quota: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			_ = setProject(dir, 0)
			_ = p.setLimit(id, 0)
			delete(st.Entries, dir)
			_ = writeJSON(p.statePath(), st)
		}
	}()
	if err := p.setLimit(id, size); err != nil {
		return fmt.Errorf("quota: %w", err)
	}
	for _, d := range append([]string{dir}, subdirNames(dir, subdirs)...) {
		if err := setProject(d, id); err != nil {
			return fmt.Errorf("quota: %w", err)
		}
	}
	ok = true
	slog.InfoContext(ctx, "quota: limited", "driver", DriverProject, "dir", dir, "size", size, "project", id)
	return nil
}

func subdirNames(dir string, subs []dirInfo) []string {
	var out []string
	for _, s := range subs {
		out = append(out, filepath.Join(dir, s.name))
	}
	return out
}

// Release implements Driver: the project's limit is removed and dir's
// project ID cleared (files below keep the ID; the engine deletes them).
func (p *ProjectDriver) Release(ctx context.Context, dir string) error {
	dir, err := cleanDir(dir)
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	st, err := p.load()
	if err != nil {
		return err
	}
	e := st.Entries[dir]
	if e == nil {
		return nil
	}
	if err := p.setLimit(e.ID, 0); err != nil {
		return fmt.Errorf("quota: release %s: %w", dir, err)
	}
	if err := setProject(dir, 0); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("quota: release %s: %w", dir, err)
	}
	delete(st.Entries, dir)
	if err := writeJSON(p.statePath(), st); err != nil {
		return fmt.Errorf("quota: %w", err)
	}
	return nil
}

// Usage implements Driver from the project's quota accounting.
func (p *ProjectDriver) Usage(ctx context.Context, dir string) (used, limit int64, err error) {
	dir, err = cleanDir(dir)
	if err != nil {
		return 0, 0, err
	}
	p.mu.Lock()
	st, err := p.load()
	p.mu.Unlock()
	if err != nil {
		return 0, 0, err
	}
	e := st.Entries[dir]
	if e == nil {
		return 0, 0, fmt.Errorf("quota: %s is not limited: %w", dir, errdefs.ErrNotFound)
	}
	return p.getQuota(e.ID)
}

// Recover implements Recoverer: entries whose directory is gone lose their
// limit and are forgotten.
func (p *ProjectDriver) Recover(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	st, err := p.load()
	if err != nil {
		return err
	}
	var errs []error
	for dir, e := range st.Entries {
		if fileExists(dir) {
			continue
		}
		if err := p.setLimit(e.ID, 0); err != nil {
			errs = append(errs, err)
			continue
		}
		delete(st.Entries, dir)
	}
	if err := writeJSON(p.statePath(), st); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
