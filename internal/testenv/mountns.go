package testenv

import (
	"errors"
	"os"
	"os/exec"
	"testing"
)

// MainInPrivateMountNS is a TestMain for packages whose tests mount
// filesystems (loop devices, overlays): as root it re-executes the test
// binary under `unshare --mount --propagation private` and exits with its
// status. A process elsewhere on the host that creates a mount namespace
// meanwhile (ip netns exec, a testbed, a container) would take a copy of
// the tests' mounts, and code that rightly refuses to detach a filesystem
// still mounted in another namespace would fail for a reason outside the
// test. In a private namespace nobody else copies them; tests that want
// another namespace make it from theirs. Without root or unshare the tests
// run here, as before.
func MainInPrivateMountNS(m *testing.M) {
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
			// unshare could not be started: run here.
		}
	}
	os.Exit(m.Run())
}
