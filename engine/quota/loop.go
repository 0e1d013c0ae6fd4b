package quota

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/internal/units"
)

// LoopDriver is the block-device driver: each limited directory is the
// mount point of an ext4 filesystem of its own, held in a sparse file
// <root>/quota/<id>.img (id: a hash of the directory's path) attached to a
// loop device with autoclear. The filesystem is made a little larger than
// the limit so that its usable size (what statfs and df show) is the limit
// itself; its inode tables count against the host disk but not against the
// limit.
//
// State lives in <root>/quota/loop.json; Recover cleans what a crash left.
// All methods are safe for concurrent use (they serialise on one lock).
type LoopDriver struct {
	dir      string // <root>/quota
	mkfs     string
	journal  bool
	prealloc bool

	mu sync.Mutex
}

var (
	_ Driver    = (*LoopDriver)(nil)
	_ Recoverer = (*LoopDriver)(nil)
)

// NewLoop returns the loop driver keeping its images under <root>/quota.
// It does no I/O besides creating that directory and resolving cfg.Mkfs;
// Probe checks that loop devices work.
func NewLoop(root string, cfg Config) (*LoopDriver, error) {
	if cfg.Mkfs == "" {
		cfg.Mkfs = DefaultConfig().Mkfs
	}
	mkfs, err := lookMkfs(cfg.Mkfs)
	if err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(stateDir(root))
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("quota: %w", err)
	}
	if r, err := filepath.EvalSymlinks(dir); err == nil {
		dir = r
	}
	return &LoopDriver{dir: dir, mkfs: mkfs, journal: cfg.Journal, prealloc: cfg.Preallocate}, nil
}

// Name returns "loop".
func (d *LoopDriver) Name() string { return DriverLoop }

// Probe attaches a scratch file to a loop device and lets it go again: an
// error (wrapping errdefs.ErrUnavailable) means loop devices cannot be
// used here (no /dev/loop-control, no CAP_SYS_ADMIN, a seccomp filter…).
func (d *LoopDriver) Probe(ctx context.Context) error {
	f, err := os.CreateTemp(d.dir, ".probe-*.img")
	if err != nil {
		return fmt.Errorf("loop quota probe: %w: %w", err, errdefs.ErrUnavailable)
	}
	name := f.Name()
	defer os.Remove(name)
	err = f.Truncate(1 << 20)
	f.Close()
	if err != nil {
		return fmt.Errorf("loop quota probe: %w: %w", err, errdefs.ErrUnavailable)
	}
	_, f, err = attachLoop(ctx, name)
	if err != nil {
		return fmt.Errorf("loop quota probe: loop devices unusable: %w: %w", err, errdefs.ErrUnavailable)
	}
	f.Close() // autoclear: closing the last descriptor detaches it
	return waitLoopsGone(ctx, name)
}

// image returns the backing file of the quota with this id.
func (d *LoopDriver) image(id string) string { return filepath.Join(d.dir, id+".img") }

func (d *LoopDriver) statePath() string { return filepath.Join(d.dir, "loop.json") }

func (d *LoopDriver) load() (*loopState, error) {
	st := &loopState{Version: 1, Entries: map[string]*loopEntry{}}
	if err := readJSON(d.statePath(), st); err != nil {
		return nil, fmt.Errorf("quota: %w", err)
	}
	if st.Entries == nil {
		st.Entries = map[string]*loopEntry{}
	}
	return st, nil
}

func (d *LoopDriver) save(st *loopState) error {
	if err := writeJSON(d.statePath(), st); err != nil {
		return fmt.Errorf("quota: save state: %w", err)
	}
	return nil
}

// imageID names the quota of dir.
func imageID(dir string) string {
	h := sha256.Sum256([]byte(dir))
	return hex.EncodeToString(h[:16])
}

// cleanDir makes dir absolute, clean and free of symlinks (mountinfo shows
// resolved paths). A relative dir is errdefs.ErrInvalid.
func cleanDir(dir string) (string, error) {
	if !filepath.IsAbs(dir) {
		return "", fmt.Errorf("quota: directory %q is not absolute: %w", dir, errdefs.ErrInvalid)
	}
	dir = filepath.Clean(dir)
	if r, err := filepath.EvalSymlinks(dir); err == nil {
		return r, nil
	}
	if r, err := filepath.EvalSymlinks(filepath.Dir(dir)); err == nil {
		return filepath.Join(r, filepath.Base(dir)), nil
	}
	return dir, nil
}

// dirInfo is an empty subdirectory that Limit recreates inside the new filesystem.
type dirInfo struct {
	name     string
	mode     os.FileMode
	uid, gid int
}

// prepareDir checks that dir may be limited: it is created (0755) when
// absent; otherwise it must hold nothing but empty directories, whose
// layout is returned. Its own mode and owner come back in root.
func prepareDir(dir string) (root dirInfo, subdirs []dirInfo, err error) {
	fi, err := os.Lstat(dir)
	if errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return root, nil, fmt.Errorf("quota: %w", err)
		}
		fi, err = os.Lstat(dir)
	}
	if err != nil {
		return root, nil, fmt.Errorf("quota: %w", err)
	}
	if !fi.IsDir() {
		return root, nil, fmt.Errorf("quota: %s is not a directory: %w", dir, errdefs.ErrInvalid)
	}
	root = infoOf("", fi)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return root, nil, fmt.Errorf("quota: %w", err)
	}
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		if !e.IsDir() {
			return root, nil, fmt.Errorf("quota: %s is not empty (holds %s): only an empty directory, or one holding empty directories, can be limited: %w", dir, e.Name(), errdefs.ErrInvalid)
		}
		sub, err := os.ReadDir(p)
		if err != nil {
			return root, nil, fmt.Errorf("quota: %w", err)
		}
		if len(sub) > 0 {
			return root, nil, fmt.Errorf("quota: %s is not empty (%s holds %s): %w", dir, e.Name(), sub[0].Name(), errdefs.ErrInvalid)
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return root, nil, fmt.Errorf("quota: %w", err)
		}
		subdirs = append(subdirs, infoOf(e.Name(), fi))
	}
	return root, subdirs, nil
}

func infoOf(name string, fi os.FileInfo) dirInfo {
	di := dirInfo{name: name, mode: fi.Mode() & (os.ModePerm | os.ModeSetgid | os.ModeSticky | os.ModeSetuid)}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		di.uid, di.gid = int(st.Uid), int(st.Gid)
	}
	return di
}

// applyInfo gives path the mode and owner of di.
func applyInfo(path string, di dirInfo) error {
	if err := os.Lchown(path, di.uid, di.gid); err != nil {
		return err
	}
	return os.Chmod(path, di.mode)
}

// ourMount reports whether m is a mount of the loop image img.
func ourMount(m mountEntry, img string) bool {
	b, ok := loopBacking(m.Major, m.Minor)
	return ok && b == img
}

// Limit implements Driver: see the interface. A fresh quota: a sparse image
// is made and formatted (mkfs.ext4), attached to a free loop device and
// mounted on dir; dir's mode and owner and its empty subdirectories are
// recreated inside, lost+found is removed. A quota made before (the image
// exists, e.g. after a reboot) is checked with e2fsck -p and mounted again
// with its contents.
func (d *LoopDriver) Limit(ctx context.Context, dir string, size int64) error {
	dir, err := cleanDir(dir)
	if err != nil {
		return err
	}
	if size < MinSize {
		return fmt.Errorf("quota: size %s for %s is below the minimum %s: %w", units.Format(size), dir, units.Format(MinSize), errdefs.ErrInvalid)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	st, err := d.load()
	if err != nil {
		return err
	}
	id := imageID(dir)
	img := d.image(id)
	e := st.Entries[id]

	mounts, err := readMountinfo("/proc/self/mountinfo")
	if err != nil {
		return fmt.Errorf("quota: %w", err)
	}
	if m, ok := mountAt(mounts, dir); ok {
		if ourMount(m, img) && e != nil && e.Ready {
			if e.Size == size {
				return nil
			}
			return fmt.Errorf("quota: %s is already limited to %s (asked %s); release it first: %w", dir, units.Format(e.Size), units.Format(size), errdefs.ErrInvalid)
		}
		return fmt.Errorf("quota: %s is already a mount point (%s from %s): %w", dir, m.FSType, m.Source, errdefs.ErrInvalid)
	}
	rootInfo, subdirs, err := prepareDir(dir)
	if err != nil {
		return err
	}

	if e != nil && e.Ready && fileExists(img) {
		if e.Size != size {
			return fmt.Errorf("quota: %s was limited to %s before (asked %s); release it first: %w", dir, units.Format(e.Size), units.Format(size), errdefs.ErrInvalid)
		}
		if loops, err := listLoops(); err == nil {
			for _, l := range loops {
				if l.Backing == img {
					return fmt.Errorf("quota: %s: its image is still attached to %s (mounted in another mount namespace?): %w", dir, l.Path, unix.EBUSY)
				}
			}
		}
		d.fsck(ctx, img)
		dev, err := d.mountImage(ctx, img, dir)
		if err != nil {
			return err
		}
		slog.InfoContext(ctx, "quota: remounted", "dir", dir, "size", size, "dev", dev)
		return nil
	}

	// A fresh quota. Anything left of an unfinished one goes first.
	if fileExists(img) {
		if err := waitLoopsGone(ctx, img); err != nil {
			return fmt.Errorf("quota: stale image %s: %w", img, err)
		}
		os.Remove(img)
	}
	e = &loopEntry{Dir: dir, Size: size, Created: time.Now().UTC()}
	st.Entries[id] = e
	if err := d.save(st); err != nil {
		return err
	}
	done := false
	defer func() {
		if done {
			return
		}
		if ms, err := readMountinfo("/proc/self/mountinfo"); err == nil {
			if m, ok := mountAt(ms, dir); ok && ourMount(m, img) {
				_ = unix.Unmount(dir, 0)
			}
		}
		_ = waitLoopsGone(context.WithoutCancel(ctx), img)
		os.Remove(img)
		delete(st.Entries, id)
		_ = d.save(st)
	}()
	if e.ImageSize, err = d.makeImage(ctx, img, size); err != nil {
		return err
	}
	if d.prealloc {
		if err := preallocate(img, e.ImageSize); err != nil {
			return fmt.Errorf("quota: preallocate %s for %s: %w", units.Format(e.ImageSize), dir, err)
		}
	}
	dev, err := d.mountImage(ctx, img, dir)
	if err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(dir, "lost+found")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("quota: %w", err)
	}
	if err := applyInfo(dir, rootInfo); err != nil {
		return fmt.Errorf("quota: %w", err)
	}
	for _, s := range subdirs {
		p := filepath.Join(dir, s.name)
		if err := os.Mkdir(p, 0o700); err != nil {
			return fmt.Errorf("quota: %w", err)
		}
		if err := applyInfo(p, s); err != nil {
			return fmt.Errorf("quota: %w", err)
		}
	}
	e.Ready = true
	if err := d.save(st); err != nil {
		return err
	}
	done = true
	slog.InfoContext(ctx, "quota: limited", "driver", DriverLoop, "dir", dir, "size", size, "image_size", e.ImageSize, "dev", dev)
	return nil
}

// mountImage attaches img to a loop device and mounts it on dir; the
// device detaches by itself when the mount goes (autoclear).
func (d *LoopDriver) mountImage(ctx context.Context, img, dir string) (string, error) {
	dev, f, err := attachLoop(ctx, img)
	if err != nil {
		return "", fmt.Errorf("quota: %w", err)
	}
	defer f.Close()
	// noinit_itable: the image is sparse, its inode tables read as zeros
	// already; without it the kernel would write them all out.
	// discard: space freed inside the quota is punched out of the image
	// (not with Preallocate, which wants the blocks kept).
	opts := "noinit_itable,discard"
	if d.prealloc {
		opts = "noinit_itable"
	}
	if err := unix.Mount(dev, dir, "ext4", 0, opts); err != nil {
		return "", fmt.Errorf("quota: mount %s on %s: %w", dev, dir, err)
	}
	return dev, nil
}

// makeImage creates img as a sparse file holding an ext4 filesystem whose
// usable size is at least size, and returns the file's size. The ext4
// overhead (inode tables, bitmaps, group descriptors) is read from the
// superblock and added, a few rounds until it is covered.
func (d *LoopDriver) makeImage(ctx context.Context, img string, size int64) (int64, error) {
	imgSize := size
	for round := 0; ; round++ {
		if err := d.mkfs1(ctx, img, imgSize); err != nil {
			return 0, err
		}
		overhead, err := ext4Overhead(img)
		if err != nil {
			return 0, fmt.Errorf("quota: %s: %w", img, err)
		}
		if imgSize-overhead >= size || round == 4 {
			return imgSize, nil
		}
		imgSize = roundUp(size+overhead+overhead/64, 64<<10)
	}
}

// preallocate reserves the image's blocks (unwritten extents: no zeroing).
func preallocate(img string, size int64) error {
	f, err := os.OpenFile(img, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_KEEP_SIZE, 0, size)
}

func roundUp(n, to int64) int64 { return (n + to - 1) / to * to }

func (d *LoopDriver) mkfs1(ctx context.Context, img string, imgSize int64) error {
	f, err := os.OpenFile(img, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("quota: %w", err)
	}
	err = f.Truncate(0)
	if err == nil {
		err = f.Truncate(imgSize)
	}
	f.Close()
	if err != nil {
		return fmt.Errorf("quota: %w", err)
	}
	args := []string{"-q", "-F", "-m", "0", "-L", "pouch-quota",
		// The file is new and sparse: nothing to discard, every block reads
		// as zeros, so inode tables need no initialisation either.
		"-E", "nodiscard,lazy_itable_init=1,lazy_journal_init=1"}
	if !d.journal {
		args = append(args, "-O", "^has_journal")
	}
	args = append(args, img)
	cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(cctx, d.mkfs, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("quota: %s %s: %v: %s", d.mkfs, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// ext4Overhead reads the filesystem overhead (s_overhead_clusters, in
// bytes) from img's superblock.
func ext4Overhead(img string) (int64, error) {
	f, err := os.Open(img)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sb := make([]byte, 1024)
	if _, err := f.ReadAt(sb, 1024); err != nil && err != io.EOF {
		return 0, err
	}
	if binary.LittleEndian.Uint16(sb[0x38:]) != 0xEF53 {
		return 0, fmt.Errorf("no ext4 superblock")
	}
	bs := int64(1024) << binary.LittleEndian.Uint32(sb[0x18:])
	clusterShift := binary.LittleEndian.Uint32(sb[0x1C:]) - binary.LittleEndian.Uint32(sb[0x18:]) // s_log_cluster_size - s_log_block_size
	over := int64(binary.LittleEndian.Uint32(sb[0x248:]))
	if over == 0 {
		return 0, fmt.Errorf("superblock has no overhead figure (mkfs.ext4 older than 1.46?)")
	}
	return (over << clusterShift) * bs, nil
}

// fsck runs e2fsck -p on an image before it is mounted again; problems it
// cannot fix are logged, and the mount is tried anyway.
func (d *LoopDriver) fsck(ctx context.Context, img string) {
	bin := filepath.Join(filepath.Dir(d.mkfs), "e2fsck")
	if _, err := os.Stat(bin); err != nil {
		if bin, err = exec.LookPath("e2fsck"); err != nil {
			slog.WarnContext(ctx, "quota: e2fsck not found; mounting without a check", "image", img)
			return
		}
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(cctx, bin, "-p", img).CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() < 4 { // 1: fixed, 2: fixed, reboot advised (root fs only)
		err = nil
	}
	if err != nil {
		slog.WarnContext(ctx, "quota: e2fsck failed", "image", img, "err", err, "output", string(bytes.TrimSpace(out)))
	}
}

func fileExists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// busyOverlay returns an overlay mount using a directory under dir as its
// upper or work dir (a running container's rootfs), if any.
func busyOverlay(mounts []mountEntry, dir string) (mountEntry, bool) {
	for _, m := range mounts {
		if m.FSType != "overlay" {
			continue
		}
		for _, o := range strings.Split(m.SuperOptions, ",") {
			k, v, _ := strings.Cut(o, "=")
			if (k == "upperdir" || k == "workdir") && (v == dir || strings.HasPrefix(v, dir+"/")) {
				return m, true
			}
		}
	}
	return mountEntry{}, false
}

// Release implements Driver: it unmounts dir (never lazily: a busy dir is
// an error wrapping unix.EBUSY: open files, an overlay using it as upper
// dir, or another mount of its filesystem such as a bind), waits for the loop device to detach, and removes the
// image and its state entry. dir itself is kept, as it was before Limit.
func (d *LoopDriver) Release(ctx context.Context, dir string) error {
	dir, err := cleanDir(dir)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	st, err := d.load()
	if err != nil {
		return err
	}
	id := imageID(dir)
	img := d.image(id)
	mounts, err := readMountinfo("/proc/self/mountinfo")
	if err != nil {
		return fmt.Errorf("quota: %w", err)
	}
	if m, ok := mountAt(mounts, dir); ok && ourMount(m, img) {
		if o, busy := busyOverlay(mounts, dir); busy {
			return fmt.Errorf("quota: release %s: in use by the overlay mount at %s (stop the container first): %w", dir, o.MountPoint, unix.EBUSY)
		}
		for _, o := range mounts {
			if o.ID != m.ID && o.Major == m.Major && o.Minor == m.Minor {
				return fmt.Errorf("quota: release %s: its filesystem is also mounted at %s: %w", dir, o.MountPoint, unix.EBUSY)
			}
		}
		if pid, mp, ok := mountedInOtherNS(m.Major, m.Minor); ok {
			return fmt.Errorf("quota: release %s: its filesystem is mounted at %s in the mount namespace of pid %d (a running container?): %w", dir, mp, pid, unix.EBUSY)
		}
		if err := unix.Unmount(dir, 0); err != nil {
			return fmt.Errorf("quota: release %s: unmount: %w", dir, err)
		}
	}
	if fileExists(img) {
		if err := waitLoopsGone(ctx, img); err != nil {
			return fmt.Errorf("quota: release %s: %w", dir, err)
		}
		if err := os.Remove(img); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("quota: release %s: %w", dir, err)
		}
	}
	if _, ok := st.Entries[id]; ok {
		delete(st.Entries, id)
		if err := d.save(st); err != nil {
			return err
		}
		slog.InfoContext(ctx, "quota: released", "driver", DriverLoop, "dir", dir)
	}
	return nil
}

// Usage implements Driver: used bytes from statfs(dir), limit as asked.
// A quota recorded but not mounted (after a reboot, before Limit is called
// again) is an error wrapping errdefs.ErrUnavailable.
func (d *LoopDriver) Usage(ctx context.Context, dir string) (used, limit int64, err error) {
	dir, err = cleanDir(dir)
	if err != nil {
		return 0, 0, err
	}
	d.mu.Lock()
	st, err := d.load()
	d.mu.Unlock()
	if err != nil {
		return 0, 0, err
	}
	id := imageID(dir)
	e := st.Entries[id]
	if e == nil || !e.Ready {
		return 0, 0, fmt.Errorf("quota: %s is not limited: %w", dir, errdefs.ErrNotFound)
	}
	mounts, err := readMountinfo("/proc/self/mountinfo")
	if err != nil {
		return 0, 0, fmt.Errorf("quota: %w", err)
	}
	if m, ok := mountAt(mounts, dir); !ok || !ourMount(m, d.image(id)) {
		return 0, e.Size, fmt.Errorf("quota: %s is limited but not mounted (call Limit again): %w", dir, errdefs.ErrUnavailable)
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(dir, &sfs); err != nil {
		return 0, 0, fmt.Errorf("quota: statfs %s: %w", dir, err)
	}
	return int64(sfs.Blocks-sfs.Bfree) * sfs.Bsize, e.Size, nil
}

// Recover implements Recoverer. It keeps every finished quota whose
// directory exists (mounted or not: the engine calls Limit again to mount
// it), and removes: entries left unfinished by a crash, entries whose
// directory or image is gone, images with no entry, mounts of our images
// anywhere but their own directory, and loop devices attached to our
// images that no mount holds.
func (d *LoopDriver) Recover(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	st, err := d.load()
	if err != nil {
		return err
	}
	mounts, err := readMountinfo("/proc/self/mountinfo")
	if err != nil {
		return fmt.Errorf("quota: %w", err)
	}
	var errs []error
	keep := map[string]string{} // image → its dir
	for id, e := range st.Entries {
		img := d.image(id)
		why := ""
		switch {
		case !e.Ready:
			why = "unfinished"
		case !fileExists(img):
			why = "image missing"
		case !fileExists(e.Dir):
			why = "directory gone"
		case imageID(e.Dir) != id:
			why = "entry does not match its directory"
		}
		if why == "" {
			keep[img] = e.Dir
			continue
		}
		slog.InfoContext(ctx, "quota: recover: dropping quota", "dir", e.Dir, "reason", why)
		delete(st.Entries, id)
	}
	// Mounts of our images: keep only the one on each kept image's own dir.
	// Unmount deepest first.
	for i := len(mounts) - 1; i >= 0; i-- {
		m := mounts[i]
		b, ok := loopBacking(m.Major, m.Minor)
		if !ok || filepath.Dir(b) != d.dir {
			continue
		}
		if dir, kept := keep[b]; kept && dir == m.MountPoint {
			continue
		}
		slog.InfoContext(ctx, "quota: recover: unmounting orphan", "mount", m.MountPoint, "image", b)
		if err := unix.Unmount(m.MountPoint, 0); err != nil {
			errs = append(errs, fmt.Errorf("unmount orphan quota %s: %w", m.MountPoint, err))
		}
	}
	// Images without an entry.
	imgs, _ := filepath.Glob(filepath.Join(d.dir, "*.img"))
	probes, _ := filepath.Glob(filepath.Join(d.dir, ".probe-*.img"))
	for _, img := range append(imgs, probes...) {
		if _, kept := keep[img]; kept {
			continue
		}
		slog.InfoContext(ctx, "quota: recover: removing orphan image", "image", img)
		if err := waitLoopsGone(ctx, img); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := os.Remove(img); err != nil {
			errs = append(errs, err)
		}
	}
	// Loop devices on our (possibly deleted) images that nothing mounts.
	mounts, _ = readMountinfo("/proc/self/mountinfo")
	loops, _ := listLoops()
	for _, l := range loops {
		if filepath.Dir(l.Backing) != d.dir {
			continue
		}
		if dir, kept := keep[l.Backing]; kept && !l.Deleted {
			if m, ok := mountAt(mounts, dir); ok && m.Source == l.Path {
				continue
			}
		}
		held := false
		for _, m := range mounts {
			if m.Source == l.Path {
				held = true
			}
		}
		if held {
			continue
		}
		slog.InfoContext(ctx, "quota: recover: detaching orphan loop device", "dev", l.Path, "image", l.Backing)
		if err := detachLoop(l.Path); err != nil {
			errs = append(errs, err)
		}
	}
	if err := d.save(st); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("quota: recover: %w", err)
	}
	return nil
}

// mountedInOtherNS looks for a mount of device maj:min in any mount
// namespace but ours (one process per namespace is read), e.g. a volume
// bound into a running container.
func mountedInOtherNS(maj, min uint32) (pid int, mountPoint string, ok bool) {
	self, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		return 0, "", false
	}
	seen := map[string]bool{self: true}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0, "", false
	}
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		ns, err := os.Readlink("/proc/" + e.Name() + "/ns/mnt")
		if err != nil || seen[ns] {
			continue
		}
		seen[ns] = true
		mounts, err := readMountinfo("/proc/" + e.Name() + "/mountinfo")
		if err != nil {
			continue
		}
		for _, m := range mounts {
			if m.Major == maj && m.Minor == min {
				return p, m.MountPoint, true
			}
		}
	}
	return 0, "", false
}
