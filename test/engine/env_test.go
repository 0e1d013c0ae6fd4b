// Package enginetest holds the end-to-end tests of pouchd and pouch: real
// binaries, a real containerd (Debian's) supervised by pouchd, runc,
// lxcfs, loop-device quota, and every image pulled through a real P2P
// agent (an in-process cluster whose peer serves the registry mirror) from
// the embedded registry, which holds images built from Debian's
// busybox-static.
//
// The tests share one pouchd (and its containerd) to keep the suite
// short. They need root; outside CI they skip when it or a tool is
// missing, under CI=true that is a failure (make test installs the
// packages: containerd runc lxcfs busybox-static e2fsprogs).
package enginetest

import (
	"bytes"
	"context"
	"fmt"
	"github.com/pouchfly/pouchfly/internal/testenv"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pouchfly/pouchfly/engine/api"
	"github.com/pouchfly/pouchfly/registryproxy"
	"github.com/pouchfly/pouchfly/test/cluster"
	"github.com/pouchfly/pouchfly/test/registry"
)

// tools the suite needs, and the Debian package of each.
var tools = map[string]string{
	"containerd": "containerd", "containerd-shim-runc-v2": "containerd", "ctr": "containerd", "runc": "runc",
	"lxcfs": "lxcfs", "mkfs.ext4": "e2fsprogs", "busybox": "busybox-static",
}

// env is the shared environment: registry, agent, pouchd.
type env struct {
	dir     string
	bin     string // pouchd, pouch
	reg     *registry.Registry
	c       *cluster.Cluster
	mirror  string // http://ip:port of the agent's mirror
	mirrorC context.CancelFunc
	mirrorD chan struct{}
	home    string
	sock    string
	cfgFile string
	cgroup  string // cgroup parent
	metrics string // pouchd's metrics address
	pouchd  *exec.Cmd
	logf    *os.File
	image   string // busybox image, pulled by the first test that needs it
	richImg string // busybox image with /init.sh
	// privImg is in a protected repository; privLayer is its own layer.
	privImg, privLayer string
	pulled             sync.Once
	// procps image (busybox + the host's procps free), pushed on first use.
	procpsOnce sync.Once
	procpsErr  error
}

var (
	shared    *env
	sharedErr error
	setupOnce sync.Once
	skipWhy   string
)

func TestMain(m *testing.M) {
	testenv.RunCredentialHelper() // TestPrivateRegistryCredentialHelper's helper
	code := m.Run()
	if shared != nil {
		shared.teardown()
	}
	os.Exit(code)
}

// prerequisites returns why the suite cannot run, or "".
func prerequisites() string {
	if os.Geteuid() != 0 {
		return "needs root (containerd, runc, mounts, loop devices, cgroups)"
	}
	for bin, pkg := range tools {
		if _, err := exec.LookPath(bin); err != nil {
			return fmt.Sprintf("%s is not installed (apt-get install %s, or run make test as root)", bin, pkg)
		}
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return "/dev/fuse is missing (lxcfs needs FUSE)"
	}
	return ""
}

// need returns the shared environment, starting it on first use; it
// skips (or fails under CI=true) when a prerequisite is missing.
func need(t *testing.T) *env {
	t.Helper()
	setupOnce.Do(func() {
		if skipWhy = prerequisites(); skipWhy != "" {
			return
		}
		shared, sharedErr = setup()
	})
	testenv.Require(t, skipWhy == "", skipWhy)
	if sharedErr != nil {
		t.Fatalf("environment: %v", sharedErr)
	}
	return shared
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", err
	}
	return filepath.Dir(strings.TrimSpace(string(out))), nil
}

func setup() (e *env, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir, err := os.MkdirTemp("/tmp", "pf-engine-")
	if err != nil {
		return nil, err
	}
	e = &env{dir: dir, bin: filepath.Join(dir, "bin"), home: filepath.Join(dir, "home"), sock: filepath.Join(dir, "pouchd.sock")}
	defer func() {
		if err != nil {
			e.teardown()
		}
	}()
	root, err := moduleRoot()
	if err != nil {
		return e, err
	}
	args := []string{"build", "-o", e.bin + "/"}
	if os.Getenv("POUCHFLY_RACE") == "1" {
		args = append(args, "-race") // pouchd and pouch with the race detector
	}
	build := exec.Command("go", append(args, "./cmd/pouchd", "./cmd/pouch")...)
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		return e, fmt.Errorf("go build: %v\n%s", err, out)
	}
	// pouch-init runs inside containers: static.
	build = exec.Command("go", "build", "-o", e.bin+"/", "./cmd/pouch-init")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return e, fmt.Errorf("go build pouch-init: %v\n%s", err, out)
	}
	// The registry and its images.
	// Token auth as on a real registry: test/… pulls anonymously,
	// private/… needs registry.DefaultUser's password.
	e.reg, err = registry.Start(ctx, registry.Options{Dir: filepath.Join(dir, "registry"), Auth: registry.AuthToken})
	if err != nil {
		return e, err
	}
	img, err := registry.BusyboxImage(registry.BusyboxOptions{})
	if err != nil {
		return e, err
	}
	if err := e.reg.Push(ctx, "test/busybox", "v1", img); err != nil {
		return e, err
	}
	e.image = e.reg.Host() + "/test/busybox:v1"
	rich, err := registry.BusyboxImage(registry.BusyboxOptions{Files: map[string]string{
		"/init.sh": "#!/bin/sh\necho initscript ran as $$ > /tmp/initscript.out\n",
	}})
	if err != nil {
		return e, err
	}
	if err := e.reg.Push(ctx, "test/rich", "v1", rich); err != nil {
		return e, err
	}
	e.richImg = e.reg.Host() + "/test/rich:v1"
	// A protected repository, with a layer of its own.
	priv, err := registry.BusyboxImage(registry.BusyboxOptions{Files: map[string]string{"/etc/private": "private image\n"}})
	if err != nil {
		return e, err
	}
	if err := e.reg.Push(ctx, "private/busybox", "v1", priv); err != nil {
		return e, err
	}
	e.privImg = e.reg.Host() + "/private/busybox:v1"
	e.privLayer = priv.Platforms[0].Manifest.Layers[1].Digest.String()
	// The agent: a one-peer cluster whose peer serves the registry mirror.
	e.c, err = cluster.New(filepath.Join(dir, "cluster"), cluster.Options{Peers: 1})
	if err != nil {
		return e, err
	}
	// Images of their own (a layer nobody else has) for the pull tests.
	for _, repo := range []string{"test/pull", "test/fallback"} {
		own, err := registry.BusyboxImage(registry.BusyboxOptions{Files: map[string]string{"/etc/" + filepath.Base(repo): repo + "\n"}})
		if err != nil {
			return e, err
		}
		if err := e.reg.Push(ctx, repo, "v1", own); err != nil {
			return e, err
		}
	}
	if err := e.startMirror(e.c.Peers[0].Addr + ":0"); err != nil {
		return e, err
	}

	e.cgroup = fmt.Sprintf("/pouchfly-test-%d", os.Getpid())
	e.cfgFile = filepath.Join(dir, "pouchd.yaml")
	mln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return e, err
	}
	e.metrics = mln.Addr().String()
	mln.Close()
	cfg := fmt.Sprintf(`log_level: debug
metrics_listen: %s
engine:
  home: %s
  listen: unix://%s
  mirror: %s
  registries:
    - host: %q
      endpoint: %s
  cgroup_parent: %s
  stop_timeout: 2s
  runtimes:
    runc-debug:
      path: runc
      args: [--debug]
  rich:
    init_path: %s
`, e.metrics, e.home, e.sock, e.mirror, e.reg.Host(), e.reg.URL(), e.cgroup, filepath.Join(e.bin, "pouch-init"))
	if err := os.WriteFile(e.cfgFile, []byte(cfg), 0o600); err != nil {
		return e, err
	}
	if err := e.startPouchd(); err != nil {
		return e, err
	}
	return e, nil
}

// startMirror serves the agent's registry mirror on addr (the peer's IP).
func (e *env) startMirror(addr string) error {
	p := e.c.Peers[0]
	mcfg := registryproxy.DefaultConfig()
	mcfg.Listen = addr
	mcfg.DefaultRegistry = e.reg.Host()
	mcfg.Mirrors = []registryproxy.Upstream{{Host: e.reg.Host(), URL: e.reg.URL()}}
	mm, err := registryproxy.New(mcfg, p.Peer, registryproxy.Options{})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", mcfg.Listen)
	if err != nil {
		return err
	}
	mctx, mcancel := context.WithCancel(context.Background())
	e.mirrorC, e.mirrorD = mcancel, make(chan struct{})
	go func() { _ = mm.Serve(mctx, ln); close(e.mirrorD) }()
	e.mirror = "http://" + ln.Addr().String()
	return nil
}

// stopMirror takes the agent's mirror down (the agent is "down").
func (e *env) stopMirror() {
	if e.mirrorC != nil {
		e.mirrorC()
		<-e.mirrorD
		e.mirrorC = nil
	}
}

// startPouchd starts the pouchd process and waits for its API.
func (e *env) startPouchd() error {
	var err error
	if e.logf == nil {
		if e.logf, err = os.OpenFile(filepath.Join(e.dir, "pouchd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600); err != nil {
			return err
		}
	}
	cmd := exec.Command(filepath.Join(e.bin, "pouchd"), "--config", e.cfgFile)
	cmd.Stdout, cmd.Stderr = e.logf, e.logf
	if err := cmd.Start(); err != nil {
		return err
	}
	e.pouchd = cmd
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	cl, _ := api.NewClient("unix://" + e.sock)
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return fmt.Errorf("pouchd exited at start:\n%s", e.logTail())
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := cl.Version(ctx)
		cancel()
		if err == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("pouchd did not answer within 60s:\n%s", e.logTail())
}

// stopPouchd stops pouchd with SIGTERM (containers and containerd stay).
func (e *env) stopPouchd() error {
	if e.pouchd == nil || e.pouchd.Process == nil {
		return nil
	}
	_ = e.pouchd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		for e.pouchd.ProcessState == nil {
			time.Sleep(20 * time.Millisecond)
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = e.pouchd.Process.Kill()
		return fmt.Errorf("pouchd did not stop within 30s")
	}
	e.pouchd = nil
	return nil
}

func (e *env) logTail() string {
	b, _ := os.ReadFile(filepath.Join(e.dir, "pouchd.log"))
	if len(b) > 6000 {
		b = b[len(b)-6000:]
	}
	return string(b)
}

// teardown removes every container, stops pouchd, containerd and lxcfs,
// and removes the directory.
func (e *env) teardown() {
	if e.pouchd != nil {
		if out, _, _ := e.pouchRaw("ps", "-aq"); out != "" {
			args := append([]string{"rm", "-f"}, strings.Fields(out)...)
			_, _, _ = e.pouchRaw(args...)
		}
		if vols, _, _ := e.pouchRaw("volume", "ls", "-q"); vols != "" {
			_, _, _ = e.pouchRaw(append([]string{"volume", "rm", "-f"}, strings.Fields(vols)...)...)
		}
		_ = e.stopPouchd()
	}
	for _, pf := range []string{filepath.Join(e.home, "containerd", "containerd.pid"), filepath.Join(e.home, "lxcfs.pid")} {
		killPIDFile(pf)
	}
	if e.home != "" {
		_ = syscall.Unmount(filepath.Join(e.home, "lxcfs"), syscall.MNT_DETACH)
		unmountUnder(e.home)
	}
	if e.cgroup != "" {
		removeCgroups(e.cgroup)
	}
	e.stopMirror()
	if e.c != nil {
		e.c.Close()
	}
	if e.reg != nil {
		_ = e.reg.Close()
	}
	if e.logf != nil {
		e.logf.Close()
	}
	if os.Getenv("POUCHFLY_KEEP") == "" && e.dir != "" {
		_ = os.RemoveAll(e.dir)
	}
}

func killPIDFile(path string) {
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	var pid int
	if _, err := fmt.Sscan(strings.TrimSpace(string(b)), &pid); err != nil || pid <= 1 {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	for i := 0; i < 100; i++ {
		if syscall.Kill(pid, 0) != nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
}

// unmountUnder lazily unmounts whatever is still mounted under dir.
func unmountUnder(dir string) {
	for _, m := range mountsUnder(dir) {
		_ = syscall.Unmount(m, syscall.MNT_DETACH)
	}
}

func removeCgroups(parent string) {
	for _, ctrl := range []string{"memory", "cpu", "cpuacct", "cpuset", "pids", "blkio", "devices", "freezer", "systemd", "unified"} {
		base := filepath.Join("/sys/fs/cgroup", ctrl, parent)
		ents, _ := os.ReadDir(base)
		for _, e := range ents {
			if e.IsDir() {
				_ = os.Remove(filepath.Join(base, e.Name()))
			}
		}
		_ = os.Remove(base)
	}
}

// pouchRaw runs pouch and returns stdout, stderr and the exit code.
func (e *env) pouchRaw(args ...string) (string, string, int) {
	return e.pouchAt(e.sock, nil, args...)
}

// pouchAt runs pouch against the pouchd at sock, with stdin (may be nil).
func (e *env) pouchAt(sock string, stdin io.Reader, args ...string) (string, string, int) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return e.runPouch(ctx, sock, stdin, nil, args...)
}

// runPouch runs pouch against the pouchd at sock with stdin (may be nil)
// and env (nil: this process's), until ctx ends; it returns stdout,
// stderr and the exit code (-1 when it did not exit by itself).
func (e *env) runPouch(ctx context.Context, sock string, stdin io.Reader, env []string, args ...string) (string, string, int) {
	cmd := exec.CommandContext(ctx, filepath.Join(e.bin, "pouch"), append([]string{"-H", "unix://" + sock}, args...)...)
	cmd.Stdin, cmd.Env = stdin, env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if err != nil {
		code = -1
		if xe, ok := err.(*exec.ExitError); ok {
			code = xe.ExitCode()
		}
	}
	return out.String(), errb.String(), code
}

// pouch runs pouch and fails the test unless it exits 0.
func (e *env) pouch(t *testing.T, args ...string) string {
	t.Helper()
	out, errs, code := e.pouchRaw(args...)
	if code != 0 {
		t.Fatalf("pouch %s: exit %d\nstdout: %s\nstderr: %s\npouchd log:\n%s", strings.Join(args, " "), code, out, errs, e.logTail())
	}
	return out
}

// client returns an API client.
func (e *env) client(t *testing.T) *api.Client {
	cl, err := api.NewClient("unix://" + e.sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// ensureImage pulls the busybox image once (through the agent).
func (e *env) ensureImage(t *testing.T) string {
	t.Helper()
	e.pulled.Do(func() { e.pouch(t, "pull", e.image) })
	return e.image
}

// eventually retries f until it returns nil or d passes.
func eventually(t *testing.T, d time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	var err error
	for time.Now().Before(deadline) {
		if err = f(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: %v", what, err)
}
