package quota

import (
	"context"
	"errors"
	"github.com/pouchfly/pouchfly/internal/testenv"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pouchfly/pouchfly/internal/errdefs"
)

// need skips the test when a prerequisite is missing, and fails it under
// CI=true, where every prerequisite must be installed.
func need(t *testing.T, ok bool, why string) {
	t.Helper()
	testenv.Require(t, ok, why)
}

// needLoop requires root, loop devices and mkfs.ext4.
func needLoop(t *testing.T) {
	t.Helper()
	need(t, os.Geteuid() == 0, "needs root (loop devices, mount)")
	_, err := os.Stat("/dev/loop-control")
	need(t, err == nil, "needs /dev/loop-control (loop module)")
	_, err = exec.LookPath("mkfs.ext4")
	need(t, err == nil, "needs mkfs.ext4 (apt-get install e2fsprogs)")
}

// leaks lists the mounts and loop devices that involve paths under root.
func leaks(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	mounts, err := readMountinfo("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mounts {
		if m.MountPoint == root || strings.HasPrefix(m.MountPoint, root+"/") {
			out = append(out, "mount "+m.MountPoint)
		}
	}
	loops, err := listLoops()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range loops {
		if strings.HasPrefix(l.Backing, root+"/") {
			out = append(out, "loop "+l.Path+" "+l.Backing)
		}
	}
	sort.Strings(out)
	return out
}

// testRoot makes a temporary engine root and removes every mount and loop
// device under it when the test ends, whatever happened.
func testRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		mounts, _ := readMountinfo("/proc/self/mountinfo")
		for i := len(mounts) - 1; i >= 0; i-- {
			if mp := mounts[i].MountPoint; strings.HasPrefix(mp, root+"/") {
				if err := unix.Unmount(mp, 0); err != nil {
					_ = unix.Unmount(mp, unix.MNT_DETACH)
				}
			}
		}
		loops, _ := listLoops()
		for _, l := range loops {
			if strings.HasPrefix(l.Backing, root+"/") {
				_ = detachLoop(l.Path)
			}
		}
		deadline := time.Now().Add(3 * time.Second)
		for len(leaks(t, root)) > 0 && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if l := leaks(t, root); len(l) > 0 {
			t.Errorf("leaked after cleanup: %v", l)
		}
	})
	return root
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func newLoop(t *testing.T, root string) *LoopDriver {
	t.Helper()
	d, err := NewLoop(root, DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// fill writes 1 MiB chunks to path until an error, returning bytes written.
func fill(t *testing.T, path string, max int64) (int64, error) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i) | 1
	}
	var n int64
	for n < max {
		w, err := f.Write(buf)
		n += int64(w)
		if err != nil {
			return n, err
		}
	}
	return n, f.Sync()
}

func TestProjectQuotaUnsupportedHere(t *testing.T) {
	root := t.TempDir()
	var st unix.Stat_t
	if err := unix.Stat(root, &st); err != nil {
		t.Fatal(err)
	}
	mounts, err := readMountinfo("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	m, _ := mountOf(mounts, root, st.Dev)
	if projectQuotaOption(m.FSType, m.SuperOptions) {
		t.Skipf("%s (%s) has project quota enabled: this test checks the detection on hosts without it", m.MountPoint, m.FSType)
	}
	_, err = NewProject(testCtx(t), root)
	if err == nil || !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("NewProject on %s %s = %v, want ErrUnavailable", m.FSType, m.MountPoint, err)
	}
	t.Logf("project quota refused as expected: %v", err)
}

func TestDetectPicksLoopWithoutProjectQuota(t *testing.T) {
	needLoop(t)
	root := testRoot(t)
	if _, err := NewProject(testCtx(t), root); err == nil {
		t.Skip("this host has project quota: Detect picks it")
	}
	before := leaks(t, root)
	d, err := Detect(testCtx(t), root)
	if err != nil {
		t.Fatal(err)
	}
	if d.Name() != DriverLoop {
		t.Fatalf("Detect picked %q, want loop", d.Name())
	}
	if after := leaks(t, root); len(after) != len(before) {
		t.Fatalf("probe leaked: %v", after)
	}
	cfg := DefaultConfig()
	cfg.Driver = DriverProject
	if _, err := New(testCtx(t), cfg, root); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("New(driver: project) = %v, want ErrUnavailable", err)
	}
}

func TestLoopLimitENOSPCAndRelease(t *testing.T) {
	needLoop(t)
	ctx := testCtx(t)
	root := testRoot(t)
	d := newLoop(t, root)
	dir := filepath.Join(root, "c1")
	const size = 64 << 20

	var hostBefore unix.Statfs_t
	if err := unix.Statfs(root, &hostBefore); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := d.Limit(ctx, dir, size); err != nil {
		t.Fatal(err)
	}
	t.Logf("Limit 64MiB took %v", time.Since(start))

	// statfs (what df shows) says the directory is a 64 MiB filesystem.
	var sfs unix.Statfs_t
	if err := unix.Statfs(dir, &sfs); err != nil {
		t.Fatal(err)
	}
	total := int64(sfs.Blocks) * sfs.Bsize
	if total < size*99/100 || total > size*105/100 {
		t.Fatalf("statfs size = %d, want ~%d", total, size)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("fresh quota dir holds %v (lost+found should be gone)", ents)
	}
	// Writing past the limit fails with ENOSPC.
	n, err := fill(t, filepath.Join(dir, "big"), 2*size)
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("writing %d bytes: %v, want ENOSPC", n, err)
	}
	if n > size || n < size*90/100 {
		t.Fatalf("wrote %d bytes before ENOSPC, want just under %d", n, size)
	}
	used, limit, err := d.Usage(ctx, dir)
	if err != nil || limit != size || used < n*95/100 {
		t.Fatalf("Usage = %d, %d, %v (wrote %d)", used, limit, err, n)
	}
	// The host filesystem only holds the image, whose blocks stay within its size.
	var st unix.Stat_t
	img := d.image(imageID(dir))
	if err := unix.Stat(img, &st); err != nil {
		t.Fatal(err)
	}
	if alloc := st.Blocks * 512; alloc > st.Size {
		t.Fatalf("image uses %d bytes on the host, more than its %d", alloc, st.Size)
	}
	t.Logf("wrote %d before ENOSPC; image %d bytes, %d allocated; statfs size %d", n, st.Size, st.Blocks*512, total)

	if err := d.Release(ctx, dir); err != nil {
		t.Fatal(err)
	}
	if l := leaks(t, root); len(l) != 0 {
		t.Fatalf("after Release: %v", l)
	}
	if fileExists(img) {
		t.Fatal("image still there after Release")
	}
	ents, err := os.ReadDir(dir)
	if err != nil || len(ents) != 0 {
		t.Fatalf("dir after Release: %v, %v (want kept and empty)", ents, err)
	}
	if err := d.Release(ctx, dir); err != nil {
		t.Fatalf("second Release: %v", err)
	}
	if _, _, err := d.Usage(ctx, dir); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("Usage after Release = %v, want ErrNotFound", err)
	}
}

func TestLoopIdempotentAndInvalid(t *testing.T) {
	needLoop(t)
	ctx := testCtx(t)
	root := testRoot(t)
	d := newLoop(t, root)
	dir := filepath.Join(root, "v", "_data")
	if err := d.Limit(ctx, dir, 16<<20); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "keep"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := d.Limit(ctx, dir, 16<<20); err != nil {
		t.Fatalf("second Limit, same size: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "keep")); err != nil {
		t.Fatalf("second Limit lost the contents: %v", err)
	}
	if err := d.Limit(ctx, dir, 32<<20); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("Limit with another size = %v, want ErrInvalid", err)
	}
	if err := d.Limit(ctx, filepath.Join(root, "small"), 1<<20); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("Limit 1MiB = %v, want ErrInvalid", err)
	}
	if err := d.Limit(ctx, "relative/dir", 16<<20); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("Limit relative = %v, want ErrInvalid", err)
	}
	full := filepath.Join(root, "full")
	os.MkdirAll(filepath.Join(full, "sub"), 0o755)
	os.WriteFile(filepath.Join(full, "sub", "f"), nil, 0o644)
	if err := d.Limit(ctx, full, 16<<20); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("Limit on a non-empty dir = %v, want ErrInvalid", err)
	}
	if err := d.Release(ctx, dir); err != nil {
		t.Fatal(err)
	}
	if l := leaks(t, root); len(l) != 0 {
		t.Fatalf("after Release: %v", l)
	}
}

// The engine limits containerd's active overlay snapshot directory, which
// already holds empty fs/ and work/ subdirectories.
func TestLoopSnapshotDirLayout(t *testing.T) {
	needLoop(t)
	ctx := testCtx(t)
	root := testRoot(t)
	d := newLoop(t, root)
	snap := filepath.Join(root, "snapshots", "7")
	for _, s := range []struct {
		name     string
		mode     os.FileMode
		uid, gid int
	}{{"", 0o700, 0, 0}, {"fs", 0o755, 1000, 1000}, {"work", 0o711, 0, 0}} {
		p := filepath.Join(snap, s.name)
		if err := os.MkdirAll(p, 0o700); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, s.mode)
		os.Chown(p, s.uid, s.gid)
	}
	if err := d.Limit(ctx, snap, 32<<20); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string][3]int{"": {0o700, 0, 0}, "fs": {0o755, 1000, 1000}, "work": {0o711, 0, 0}} {
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join(snap, name), &st); err != nil {
			t.Fatal(err)
		}
		if int(st.Mode&0o7777) != want[0] || int(st.Uid) != want[1] || int(st.Gid) != want[2] {
			t.Errorf("%q: mode %o uid %d gid %d, want %o %d %d", name, st.Mode&0o7777, st.Uid, st.Gid, want[0], want[1], want[2])
		}
	}
	ents, _ := os.ReadDir(snap)
	if len(ents) != 2 {
		t.Errorf("snapshot dir holds %v, want fs and work", ents)
	}
	// An overlay with its upper dir in the quota works, and keeps Release from
	// pulling the filesystem away underneath it.
	lower := filepath.Join(root, "lower")
	merged := filepath.Join(root, "merged")
	os.MkdirAll(lower, 0o755)
	os.MkdirAll(merged, 0o755)
	os.WriteFile(filepath.Join(lower, "from-lower"), []byte("l"), 0o644)
	opts := "lowerdir=" + lower + ",upperdir=" + filepath.Join(snap, "fs") + ",workdir=" + filepath.Join(snap, "work")
	if err := unix.Mount("overlay", merged, "overlay", 0, opts); err != nil {
		t.Fatalf("overlay on the quota: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(merged, unix.MNT_DETACH) })
	n, err := fill(t, filepath.Join(merged, "big"), 64<<20)
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("write through the overlay: %d bytes, %v; want ENOSPC", n, err)
	}
	var sfs unix.Statfs_t
	unix.Statfs(merged, &sfs)
	t.Logf("overlay rootfs: wrote %d before ENOSPC; statfs size %d", n, int64(sfs.Blocks)*sfs.Bsize)
	if err := d.Release(ctx, snap); !errors.Is(err, unix.EBUSY) {
		t.Fatalf("Release under a mounted overlay = %v, want EBUSY", err)
	}
	if err := unix.Unmount(merged, 0); err != nil {
		t.Fatal(err)
	}
	// A bind of the upper dir (containerd's mount for a snapshot without
	// parents) keeps it busy too.
	if err := unix.Mount(filepath.Join(snap, "fs"), merged, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	if err := d.Release(ctx, snap); !errors.Is(err, unix.EBUSY) {
		t.Fatalf("Release under a bind mount = %v, want EBUSY", err)
	}
	if err := unix.Unmount(merged, 0); err != nil {
		t.Fatal(err)
	}
	if err := d.Release(ctx, snap); err != nil {
		t.Fatal(err)
	}
	if l := leaks(t, root); len(l) != 0 {
		t.Fatalf("after Release: %v", l)
	}
	// Release keeps the directory as it was: the host-side empty fs/ and work/.
	if ents, _ := os.ReadDir(snap); len(ents) != 2 {
		t.Errorf("after Release the snapshot dir holds %v", ents)
	}
}

func TestLoopRecover(t *testing.T) {
	needLoop(t)
	ctx := testCtx(t)
	root := testRoot(t)
	d := newLoop(t, root)
	keep := filepath.Join(root, "keep")
	unmounted := filepath.Join(root, "unmounted")
	noEntry := filepath.Join(root, "no-entry")
	gone := filepath.Join(root, "gone")
	for _, dir := range []string{keep, unmounted, noEntry, gone} {
		if err := d.Limit(ctx, dir, 8<<20); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(unmounted, "data"), []byte("survives"), 0o644)
	// A crash: "unmounted" lost its mount (a reboot), "no-entry" lost its
	// state entry (a crash before the state was written), "gone" lost its
	// directory, and a half-made image lies around.
	if err := unix.Unmount(unmounted, 0); err != nil {
		t.Fatal(err)
	}
	if err := unix.Unmount(gone, 0); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(gone)
	st, _ := d.load()
	delete(st.Entries, imageID(noEntry))
	st.Entries["deadbeef"] = &loopEntry{Dir: filepath.Join(root, "half"), Size: 8 << 20}
	d.save(st)
	os.WriteFile(d.image("deadbeef"), []byte("half"), 0o600)
	// Let autoclear settle, then check what the crash left.
	waitLoopsGone(ctx, d.image(imageID(gone)))

	if err := d.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	got := leaks(t, root)
	if len(got) != 2 || !strings.HasPrefix(got[0], "loop ") || got[1] != "mount "+keep {
		t.Fatalf("after Recover: %v, want only keep's mount and loop device", got)
	}
	imgs, _ := filepath.Glob(filepath.Join(d.dir, "*.img"))
	sort.Strings(imgs)
	want := []string{d.image(imageID(keep)), d.image(imageID(unmounted))}
	sort.Strings(want)
	if strings.Join(imgs, " ") != strings.Join(want, " ") {
		t.Fatalf("images after Recover: %v, want %v", imgs, want)
	}
	// The unmounted quota comes back with its contents.
	if err := d.Limit(ctx, unmounted, 8<<20); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(unmounted, "data")); err != nil || string(b) != "survives" {
		t.Fatalf("remounted quota: %q, %v", b, err)
	}
	for _, dir := range []string{keep, unmounted} {
		if err := d.Release(ctx, dir); err != nil {
			t.Fatal(err)
		}
	}
	if l := leaks(t, root); len(l) != 0 {
		t.Fatalf("after Release: %v", l)
	}
	if imgs, _ := filepath.Glob(filepath.Join(d.dir, "*.img")); len(imgs) != 0 {
		t.Fatalf("images left: %v", imgs)
	}
}

// A volume bound into a running container is mounted in the container's
// mount namespace: Release must refuse rather than leave the loop device
// attached behind an unmounted directory.
func TestLoopReleaseBusyInOtherNamespace(t *testing.T) {
	needLoop(t)
	_, err := exec.LookPath("unshare")
	need(t, err == nil, "needs unshare (util-linux)")
	ctx := testCtx(t)
	root := testRoot(t)
	d := newLoop(t, root)
	dir := filepath.Join(root, "vol")
	if err := d.Limit(ctx, dir, 8<<20); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("unshare", "-m", "--propagation", "private", "sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-done })
	// Wait until the child is in its own namespace.
	self, _ := os.Readlink("/proc/self/ns/mnt")
	for i := 0; ; i++ {
		ns, _ := os.Readlink("/proc/" + itoa(cmd.Process.Pid) + "/ns/mnt")
		if ns != "" && ns != self {
			break
		}
		if i > 200 {
			t.Fatal("unshare did not enter a new mount namespace")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := d.Release(ctx, dir); !errors.Is(err, unix.EBUSY) {
		t.Fatalf("Release while mounted in another namespace = %v, want EBUSY", err)
	} else {
		t.Log(err)
	}
	cmd.Process.Kill()
	<-done
	if err := d.Release(ctx, dir); err != nil {
		t.Fatal(err)
	}
	if l := leaks(t, root); len(l) != 0 {
		t.Fatalf("after Release: %v", l)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
