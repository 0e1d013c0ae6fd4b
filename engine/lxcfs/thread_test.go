package lxcfs

import (
	"os"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// mainThreadResult is what TestMain saw when it ran onThrowawayThread on
// the main thread (the case that wedges the main thread if done wrong).
var mainThreadResult struct {
	ran      bool
	err      error
	nsBefore string
	nsAfter  string
	fnOnMain bool
}

// init locks the main goroutine to the main thread, so that TestMain
// surely runs there (the documented way to keep main on the main thread).
func init() { runtime.LockOSThread() }

func TestMain(m *testing.M) {
	if os.Geteuid() == 0 && unix.Gettid() == unix.Getpid() {
		r := &mainThreadResult
		r.ran = true
		r.nsBefore, _ = os.Readlink("/proc/self/ns/mnt")
		done := make(chan error, 1)
		onThrowawayThread(done, func() error {
			r.fnOnMain = unix.Gettid() == unix.Getpid()
			if err := unix.Unshare(unix.CLONE_FS | unix.CLONE_NEWNS); err != nil {
				return err
			}
			return nil
		})
		r.err = <-done
		r.nsAfter, _ = os.Readlink("/proc/self/ns/mnt")
	}
	runtime.UnlockOSThread()
	os.Exit(m.Run())
}

func TestThrowawayThreadSparesMainThread(t *testing.T) {
	r := mainThreadResult
	need(t, r.ran, "needs root, and TestMain on the main thread")
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.fnOnMain {
		t.Fatal("fn ran on the main thread")
	}
	if r.nsBefore == "" || r.nsBefore != r.nsAfter {
		t.Fatalf("main thread's mount namespace changed: %s → %s", r.nsBefore, r.nsAfter)
	}
	// From an ordinary goroutine the thread is discarded too.
	before, _ := os.Readlink("/proc/self/ns/mnt")
	for i := 0; i < 20; i++ {
		done := make(chan error, 1)
		go onThrowawayThread(done, func() error { return unix.Unshare(unix.CLONE_FS | unix.CLONE_NEWNS) })
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if after, _ := os.Readlink("/proc/self/ns/mnt"); after != before {
		t.Fatalf("process mount namespace changed: %s → %s", before, after)
	}
}
