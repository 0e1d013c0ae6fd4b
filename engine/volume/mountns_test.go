package volume

import (
	"errors"
	"os"
	"os/exec"
	"testing"
)

// TestMain runs the package's tests in a private mount namespace of their
// own when root (re-executing the test binary under unshare -m
// --propagation private). The tests mount loop filesystems under temp
// directories; a process elsewhere on the host that creates a mount
// namespace meanwhile (ip netns exec, a testbed, a container) would take a
// copy of them, and Release rightly refuses to detach a filesystem still
// mounted in another namespace: the test would fail for a reason outside
// it. In a private namespace nobody else copies the tests' mounts; the
// tests that want another namespace make it from theirs.
func TestMain(m *testing.M) {
	if os.Geteuid() == 0 && os.Getenv("POUCHFLY_TEST_MOUNTNS") == "" {
		if unshare, err := exec.LookPath("unshare"); err == nil {
			cmd := exec.Command(unshare, append([]string{"--mount", "--propagation", "private", os.Args[0]}, os.Args[1:]...)...)
			cmd.Env = append(os.Environ(), "POUCHFLY_TEST_MOUNTNS=1")
			cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
			if err := cmd.Start(); err == nil {
				err = cmd.Wait()
				var xe *exec.ExitError
				switch {
				case err == nil:
					os.Exit(0)
				case errors.As(err, &xe):
					os.Exit(max(xe.ExitCode(), 1)) // -1: killed by a signal
				}
				os.Exit(1)
			}
			// unshare could not be started: run here, as before.
		}
	}
	os.Exit(m.Run())
}
