package enginetest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"context"
	"github.com/pouchfly/pouchfly/engine/api"
)

// startSecondPouchd runs a pouchd sharing the first one's containerd (as
// an external containerd, namespace pouchd2) whose lxcfs binary is
// missing. It returns its socket; the test's cleanup stops it.
func (e *env) startSecondPouchd(t *testing.T) string {
	t.Helper()
	home2, sock2 := e.home+"2", filepath.Join(e.dir, "pouchd2.sock")
	cfg := fmt.Sprintf(`metrics_listen: ""
engine:
  home: %s
  listen: unix://%s
  namespace: pouchd2
  mirror: %s
  registries:
    - host: %q
      endpoint: %s
  cgroup_parent: %s
  containerd:
    address: %s
  lxcfs:
    binary: /nonexistent/lxcfs
`, home2, sock2, e.mirror, e.reg.Host(), e.reg.URL(), e.cgroup, filepath.Join(e.home, "containerd", "containerd.sock"))
	file := filepath.Join(e.dir, "pouchd2.yaml")
	if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(e.dir, "pouchd2.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(e.bin, "pouchd"), "--config", file)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		logf.Close()
		unmountUnder(home2)
		_ = os.RemoveAll(home2)
	})
	cl, _ := api.NewClient("unix://" + sock2)
	eventually(t, 30*time.Second, "second pouchd up", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := cl.Version(ctx)
		return err
	})
	return sock2
}

func TestBadInputsLeaveNothing(t *testing.T) {
	e := need(t)
	img := e.ensureImage(t)
	sock2 := e.startSecondPouchd(t)
	if _, errOut, code := e.pouchAt(sock2, nil, "pull", img); code != 0 {
		t.Fatalf("pull on the second pouchd: %s", errOut)
	}
	before := e.captureState(t)
	for _, tc := range []struct {
		name string
		sock string
		args []string
		want string
		code int
	}{
		{"unknown image", e.sock, []string{"run", "--rm", e.reg.Host() + "/test/nosuch:v1", "true"}, "not found", 0},
		{"malformed image name", e.sock, []string{"run", "--rm", "UPPER/Case", "true"}, "invalid image reference", 0},
		{"malformed quota", e.sock, []string{"run", "--rm", "--disk-quota", "10q", img, "true"}, "bad size", 0},
		{"quota below the minimum", e.sock, []string{"run", "--rm", "--disk-quota", "1m", img, "true"}, "below the minimum", 0},
		{"malformed quota path", e.sock, []string{"run", "--rm", "--disk-quota", "data=1g", img, "true"}, "disk quota", 0},
		{"memory below the minimum", e.sock, []string{"run", "--rm", "-m", "4m", img, "true"}, "minimum memory limit allowed is 6MiB", 0},
		{"malformed memory", e.sock, []string{"run", "--rm", "-m", "lots", img, "true"}, "--memory", 0},
		{"unknown runtime", e.sock, []string{"run", "--rm", "--runtime", "kata", img, "true"}, `unknown runtime "kata"`, 0},
		{"too many cpus", e.sock, []string{"run", "--rm", "--cpus", "1000", img, "true"}, "range of CPUs", 0},
		{"bad restart policy", e.sock, []string{"run", "--rm", "--restart", "sometimes", img, "true"}, "restart policy", 0},
		{"bad volume", e.sock, []string{"run", "--rm", "-v", "a:b:c:d", img, "true"}, "volume", 0},
		{"lxcfs missing", sock2, []string{"run", "--rm", "-m", "200m", "--enableLxcfs", img, "true"}, "lxcfs", 0},
		{"lxcfs missing with quota", sock2, []string{"run", "--rm", "--disk-quota", "64m", "--enableLxcfs", img, "true"}, "lxcfs", 0},
		// Failures after the rootfs snapshot, its quota filesystem and
		// the cgroup settings exist: everything is undone.
		{"unknown user (late failure)", e.sock, []string{"run", "--rm", "--disk-quota", "64m", "-m", "64m", "-v", "/anon", "-u", "nosuchuser", img, "true"}, "nosuchuser", 0},
		{"missing command (at start)", e.sock, []string{"run", "--rm", "--disk-quota", "64m", "-m", "64m", "--enableLxcfs", "-v", "/anon", img, "/no/such/cmd"}, "no such file or directory", 127},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := e.pouchAt(tc.sock, nil, tc.args...)
			if tc.code == 0 {
				tc.code = 125
			}
			if code != tc.code {
				t.Errorf("exit %d, want %d\nstdout %s\nstderr %s", code, tc.code, out, errOut)
			}
			if !strings.Contains(errOut, tc.want) {
				t.Errorf("stderr %q does not say %q", errOut, tc.want)
			}
			t.Logf("%s", strings.TrimSpace(errOut))
		})
	}
	after := e.captureState(t)
	t.Logf("before: %s", before)
	sameState(t, "bad inputs", before, after)
	if out, _, _ := e.pouchAt(sock2, nil, "ps", "-aq"); strings.TrimSpace(out) != "" {
		t.Errorf("containers left on the second pouchd: %s", out)
	}
	// The second pouchd says why lxcfs is off.
	if info, _, _ := e.pouchAt(sock2, nil, "info"); !strings.Contains(info, "Lxcfs: disabled") {
		t.Errorf("info on a host without lxcfs:\n%s", info)
	}
	_ = context.Background
}
