package engine

import (
	"path/filepath"

	"golang.org/x/sys/unix"
)

// The rootfs hold: when a container's task is deleted, the runc shim
// unmounts its overlay rootfs, and the kernel, shutting the overlay down,
// syncs the filesystem of its upper directory: the whole host filesystem
// under pouchd's home (ovl_sync_fs → sync_filesystem of the upper
// superblock). On a busy host that sync takes from 20 ms to hundreds of
// ms, and every exit (and so `pouch run --rm`, `stop`, `restart`) waited
// for it: the long tail of `pouch run` latency.
//
// pouchd therefore keeps a detached clone of the rootfs mount
// (open_tree(OPEN_TREE_CLONE), no mount table entry, no path) while the
// task runs: the shim's unmount then only detaches its mount point
// (microseconds), and the overlay shuts down, with its sync, when pouchd
// closes the clone right after the task's deletion, in the background.
// Nothing is skipped (the sync still happens, a moment later and off the
// exit's path). Containers with a rootfs quota are left alone: the quota
// filesystem under their upper directory must be released as soon as the
// overlay is gone.

// holdRootfs returns a detached clone of c's rootfs mount (the shim's
// mount under containerd's state directory), or -1 when there is none to
// hold (a containerd pouchd does not supervise, a kernel without
// open_tree, a rootfs quota).
func (e *Engine) holdRootfs(c *container) int {
	if c.RootfsQuotaDir != "" || e.sup == nil {
		return -1
	}
	state := e.sup.Paths().State
	if state == "" {
		return -1
	}
	p := filepath.Join(state, "io.containerd.runtime.v2.task", e.cfg.Namespace, c.ID, "rootfs")
	fd, err := unix.OpenTree(unix.AT_FDCWD, p, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err != nil {
		e.log.Debug("rootfs hold unavailable", "id", short(c.ID), "err", err)
		return -1
	}
	return fd
}

// releaseRootfs closes a hold in the background (the close may take as
// long as the sync it carries) and returns a channel closed once it is
// done (nil when there was no hold). The next start of the container
// waits for it: its new overlay must not share the upper and work
// directories with the old one while that one shuts down.
func (e *Engine) releaseRootfs(fd int) chan struct{} {
	if fd < 0 {
		return nil
	}
	done := make(chan struct{})
	e.bg.Add(1)
	go func() {
		defer e.bg.Done()
		defer close(done)
		_ = unix.Close(fd)
	}()
	return done
}
