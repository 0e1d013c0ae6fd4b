package lxcfs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/pouchfly/pouchfly/internal/errdefs"
)

// staleBind is an lxcfs bind in a container that points at a dead mount.
type staleBind struct {
	target string // mount point in the container's view ("/proc/meminfo")
	source string // the file of the live mount to bind there
}

// Repair re-binds, inside the mount namespace of the running process pid
// (a container's init), every lxcfs bind that points at a dead lxcfs mount
// (any fuse.lxcfs mount of a file, whatever its destination) to the same
// file of the live mount. Binds of the live mount are left alone, so
// Repair is idempotent and cheap to call for every container. It waits
// for lxcfs to serve (bounded by ctx). Errors name the files that could
// not be repaired; a pid that does not exist is errdefs.ErrNotFound.
//
// Technique (Linux ≥ 5.2): on a dedicated OS thread that is never given
// back to the Go scheduler (it dies with its goroutine), unshare CLONE_FS,
// clone each live file's mount with open_tree(OPEN_TREE_CLONE) while still
// in the host's namespace, setns into the container's mount namespace,
// detach the stale mount (umount2 MNT_DETACH) and attach the clone with
// move_mount(MOVE_MOUNT_F_EMPTY_PATH), then make it private.
func (s *Supervisor) Repair(ctx context.Context, pid int) error {
	if err := s.Ready(ctx); err != nil {
		return fmt.Errorf("lxcfs repair of pid %d: %w", pid, err)
	}
	s.mu.Lock()
	dev := s.dev
	s.mu.Unlock()
	if dev == [2]uint32{} {
		return fmt.Errorf("lxcfs repair of pid %d: %w", pid, errNotReady)
	}
	mounts, err := readMountinfo("/proc/" + strconv.Itoa(pid) + "/mountinfo")
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("lxcfs repair: process %d: %w", pid, errdefs.ErrNotFound)
		}
		return fmt.Errorf("lxcfs repair of pid %d: %w", pid, err)
	}
	var stale []staleBind
	seen := map[string]bool{}
	for i := len(mounts) - 1; i >= 0; i-- { // topmost first
		m := mounts[i]
		if seen[m.MountPoint] {
			continue // covered by a later mount at the same place
		}
		seen[m.MountPoint] = true
		if m.FSType != "fuse.lxcfs" || m.Root == "/" || [2]uint32{m.Major, m.Minor} == dev {
			continue
		}
		stale = append(stale, staleBind{target: m.MountPoint, source: filepath.Join(s.mnt, m.Root)})
	}
	if len(stale) == 0 {
		return nil
	}
	nsFd, err := unix.Open("/proc/"+strconv.Itoa(pid)+"/ns/mnt", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("lxcfs repair of pid %d: %w", pid, err)
	}
	defer unix.Close(nsFd)

	done := make(chan error, 1)
	go onThrowawayThread(done, func() error { return rebind(nsFd, stale) })
	select {
	case err = <-done:
	case <-ctx.Done():
		return fmt.Errorf("lxcfs repair of pid %d: %w", pid, ctx.Err())
	}
	if err != nil {
		s.metrics.repairErrors.Inc()
		return fmt.Errorf("lxcfs repair of pid %d: %w", pid, err)
	}
	s.metrics.repairs.Add(float64(len(stale)))
	targets := make([]string, len(stale))
	for i, b := range stale {
		targets[i] = b.target
	}
	slog.InfoContext(ctx, "lxcfs: repaired binds", "pid", pid, "files", targets)
	return nil
}

// onThrowawayThread runs fn on an OS thread that is discarded afterwards
// (fn changes the thread's namespaces for good) and sends its result.
// A goroutine that exits while locked ends its thread, except the main
// thread, which the runtime cannot end and wedges instead: /proc/self
// shows the main thread's mount namespace, so a main thread left in a
// container's namespace would blind the whole process. On the main thread
// we keep it locked (and clean) while fn runs on another one.
func onThrowawayThread(done chan<- error, fn func() error) {
	runtime.LockOSThread()
	if unix.Gettid() != unix.Getpid() {
		done <- fn() // exits locked: the thread ends with the goroutine
		return
	}
	inner := make(chan error, 1)
	go onThrowawayThread(inner, fn) // cannot land on the main thread: it is locked to us
	err := <-inner
	runtime.UnlockOSThread()
	done <- err
}

// rebind runs on a locked OS thread that is thrown away afterwards.
func rebind(nsFd int, binds []staleBind) error {
	if err := unix.Unshare(unix.CLONE_FS); err != nil {
		return fmt.Errorf("unshare(CLONE_FS): %w", err)
	}
	trees := make([]int, len(binds))
	for i := range trees {
		trees[i] = -1
	}
	defer func() {
		for _, fd := range trees {
			if fd >= 0 {
				unix.Close(fd)
			}
		}
	}()
	for i, b := range binds {
		fd, err := unix.OpenTree(unix.AT_FDCWD, b.source, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
		if err != nil {
			if errors.Is(err, unix.ENOSYS) {
				return fmt.Errorf("open_tree: the kernel lacks the new mount API (Linux ≥ 5.2 needed to repair binds): %w", err)
			}
			return fmt.Errorf("open_tree(%s): %w", b.source, err)
		}
		trees[i] = fd
	}
	if err := unix.Setns(nsFd, unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("setns(mnt): %w", err)
	}
	// The thread's root and cwd are now the container's root.
	var errs []error
	for i, b := range binds {
		if err := unix.Unmount(b.target, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			errs = append(errs, fmt.Errorf("umount2(%s): %w", b.target, err))
			continue
		}
		if err := unix.MoveMount(trees[i], "", unix.AT_FDCWD, b.target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
			errs = append(errs, fmt.Errorf("move_mount(%s): %w", b.target, err))
			continue
		}
		if err := unix.Mount("", b.target, "", unix.MS_PRIVATE, ""); err != nil {
			errs = append(errs, fmt.Errorf("make %s private: %w", b.target, err))
		}
	}
	return errors.Join(errs...)
}
