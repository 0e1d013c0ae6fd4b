package enginetest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// rootfsHolds lists pouchd's descriptors of detached overlay mounts: the
// rootfs clones it keeps while containers run (engine/rootfs.go), so that
// the shim's unmount at exit does not sync the host's filesystem. Such a
// mount appears in no mount table; its descriptor reads as "/".
func (e *env) rootfsHolds(t *testing.T) []string {
	t.Helper()
	if e.pouchd == nil || e.pouchd.Process == nil {
		t.Fatal("pouchd is not running")
	}
	dir := fmt.Sprintf("/proc/%d/fd", e.pouchd.Process.Pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, en := range ents {
		p := filepath.Join(dir, en.Name())
		if l, err := os.Readlink(p); err != nil || l != "/" {
			continue
		}
		fd, err := unix.Open(p, unix.O_PATH|unix.O_CLOEXEC, 0)
		if err != nil {
			continue // closed meanwhile
		}
		var st unix.Statfs_t
		err = unix.Fstatfs(fd, &st)
		unix.Close(fd)
		if err == nil && st.Type == unix.OVERLAYFS_SUPER_MAGIC {
			out = append(out, en.Name())
		}
	}
	return out
}

// TestRootfsHold: while a container runs pouchd holds one detached clone
// of its rootfs (the shim's unmount at exit then only detaches a mount
// point; the overlay's sync of the host filesystem happens when pouchd
// lets go, off the exit's path), and it lets go of it when the task is
// deleted: no hold outlives its container, and nothing is left mounted.
func TestRootfsHold(t *testing.T) {
	e := need(t)
	img := e.ensureImage(t)
	before := e.rootfsHolds(t)
	mounts := len(mountsUnder(e.dir))
	name := fmt.Sprintf("hold-%d", time.Now().UnixNano()%100000)
	e.pouch(t, "run", "-d", "--name", name, img, "sleep", "1000")
	defer e.pouchRaw("rm", "-f", name)
	if got := e.rootfsHolds(t); len(got) != len(before)+1 {
		t.Errorf("running container: pouchd holds %d rootfs clones, want %d", len(got), len(before)+1)
	}
	// Output and exit code are unaffected; the container's files reach
	// its rootfs as usual.
	if out := e.pouch(t, "exec", name, "sh", "-c", "echo data > /tmp/f; cat /tmp/f"); out != "data\n" {
		t.Errorf("exec: %q", out)
	}
	e.pouch(t, "stop", "-t", "0", name)
	eventually(t, 30*time.Second, "the hold released after the stop", func() error {
		if got := e.rootfsHolds(t); len(got) != len(before) {
			return fmt.Errorf("pouchd holds %d rootfs clones, want %d", len(got), len(before))
		}
		return nil
	})
	// A restarted container gets a new one; rm lets it go.
	e.pouch(t, "start", name)
	if got := e.rootfsHolds(t); len(got) != len(before)+1 {
		t.Errorf("restarted container: %d holds, want %d", len(got), len(before)+1)
	}
	if out := e.pouch(t, "exec", name, "cat", "/tmp/f"); out != "data\n" {
		t.Errorf("the rootfs lost a file across stop/start: %q", out)
	}
	// restart: the new run waits for the old overlay to be gone (two
	// overlays on one upper directory are undefined behaviour).
	for i := 0; i < 3; i++ {
		e.pouch(t, "restart", "-t", "0", name)
		if out := e.pouch(t, "exec", name, "sh", "-c", fmt.Sprintf("cat /tmp/f; echo %d >> /tmp/f", i)); !strings.HasPrefix(out, "data\n") {
			t.Errorf("restart %d: the rootfs holds %q", i, out)
		}
		if got := e.rootfsHolds(t); len(got) != len(before)+1 {
			t.Errorf("restart %d: %d holds, want %d", i, len(got), len(before)+1)
		}
	}
	e.pouch(t, "rm", "-f", name)
	for i := 0; i < 3; i++ {
		if out, _, code := e.pouchRaw("run", "--rm", img, "sh", "-c", "echo run; exit 5"); code != 5 || out != "run\n" {
			t.Errorf("run --rm: exit %d %q", code, out)
		}
	}
	eventually(t, 30*time.Second, "no hold outlives its container", func() error {
		if got := e.rootfsHolds(t); len(got) != len(before) {
			return fmt.Errorf("pouchd holds %d rootfs clones, want %d", len(got), len(before))
		}
		return nil
	})
	if n := len(mountsUnder(e.dir)); n != mounts {
		t.Errorf("mounts under the test dir: %d, was %d: %s", n, mounts, strings.Join(mountsUnder(e.dir), " "))
	}
}
