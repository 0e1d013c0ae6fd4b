package e2e

import (
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
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"

	"github.com/pouchfly/pouchfly/internal/hostconfig"
	"github.com/pouchfly/pouchfly/registryproxy"
	"github.com/pouchfly/pouchfly/test/cluster"
	"github.com/pouchfly/pouchfly/test/registry"
)

// need returns the path of a tool the test drives. Outside CI a missing
// tool skips the test (saying why); under CI=true it fails: `make test`
// installs them.
func need(t *testing.T, tool string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	testenv.Require(t, err == nil, tool+" is not installed (make test installs it with test/deps.sh)")
	return p
}

// needRoot fails under CI and skips elsewhere when not root.
func needRoot(t *testing.T, why string) {
	t.Helper()
	testenv.Require(t, os.Geteuid() == 0, "needs root: "+why)
}

// mirrorEnv is a registry with a public and a private image, and a cluster
// whose every host serves the registry mirror.
type mirrorEnv struct {
	reg     *registry.Registry
	img     *registry.Image
	c       *cluster.Cluster
	mirrors []string // host:port of each host's mirror
}

func startMirrorEnv(t *testing.T, hosts int) *mirrorEnv {
	t.Helper()
	ctx := context.Background()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	// The token realm names localhost: some clients refuse token servers
	// on IP literals.
	reg, err := registry.Start(ctx, registry.Options{Listener: ln, Auth: registry.AuthToken, ExternalHost: fmt.Sprintf("localhost:%d", port)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	img, err := registry.GenerateImage(registry.ImageOptions{Layers: 3, MinLayerSize: 2 << 20, MaxLayerSize: 6 << 20, Seed: 77})
	if err != nil {
		t.Fatal(err)
	}
	for _, repo := range []string{"public/app", "private/app"} {
		if err := reg.Push(ctx, repo, "v1", img); err != nil {
			t.Fatal(err)
		}
	}
	reg.ResetStats()
	e := &mirrorEnv{reg: reg, img: img, c: cluster.Start(t, cluster.Options{Peers: hosts})}
	for _, p := range e.c.Peers {
		cfg := registryproxy.DefaultConfig()
		cfg.Listen = p.Addr + ":0"
		cfg.DefaultRegistry = reg.Host()
		cfg.Mirrors = []registryproxy.Upstream{{Host: reg.Host(), URL: reg.URL()}}
		m, err := registryproxy.New(cfg, p.Peer, registryproxy.Options{})
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", cfg.Listen)
		if err != nil {
			t.Fatal(err)
		}
		mctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { m.Serve(mctx, ln); close(done) }()
		t.Cleanup(func() { cancel(); <-done })
		e.mirrors = append(e.mirrors, ln.Addr().String())
	}
	return e
}

// pull fetches the linux/amd64 image through base, checking every digest.
func (e *mirrorEnv) pull(ctx context.Context, base, repo string, creds registry.Credentials) error {
	c, err := registry.NewClient("http://"+base, creds, nil)
	if err != nil {
		return err
	}
	p := e.img.Platform("linux", "amd64")
	if _, _, _, err := c.GetManifest(ctx, repo, "v1"); err != nil {
		return fmt.Errorf("index: %w", err)
	}
	if _, _, _, err := c.GetManifest(ctx, repo, p.Descriptor.Digest.String()); err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	blobs := []digest.Digest{p.Manifest.Config.Digest}
	for _, l := range p.Manifest.Layers {
		blobs = append(blobs, l.Digest)
	}
	for _, d := range blobs {
		if _, err := c.GetBlob(ctx, repo, d); err != nil { // GetBlob checks the digest
			return fmt.Errorf("blob %s: %w", d, err)
		}
	}
	return nil
}

func TestMirrorEightHostsPullOnce(t *testing.T) {
	e := startMirrorEnv(t, 8)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := e.c.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make([]error, len(e.mirrors))
	for i, m := range e.mirrors {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = e.pull(ctx, m, "public/app", registry.Credentials{}) }()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("host %d: %v", i, err)
		}
	}
	size := e.img.Platform("linux", "amd64").BlobBytes()
	egress := e.reg.BlobEgress()
	t.Logf("registry blob egress %d for %d bytes of blobs × 8 hosts (%.2fx)", egress, size, float64(egress)/float64(size))
	if float64(egress) > 1.05*float64(size) {
		t.Errorf("registry sent %d blob bytes, more than 1.05 × %d", egress, size)
	}
}

func TestMirrorPrivateImage(t *testing.T) {
	e := startMirrorEnv(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := e.c.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.pull(ctx, e.mirrors[0], "private/app", e.reg.AdminCredentials()); err != nil {
		t.Fatalf("with credentials: %v", err)
	}
	before := e.reg.BlobEgress()
	err := e.pull(ctx, e.mirrors[1], "private/app", registry.Credentials{})
	if err == nil || !strings.Contains(err.Error(), "401") && !strings.Contains(err.Error(), "403") {
		t.Fatalf("without credentials: err = %v, want 401/403", err)
	}
	// The outsider's agent holds no piece of any private blob.
	ts, _ := e.c.Peers[1].Tasks(ctx)
	for _, ti := range ts {
		if ti.Have > 0 {
			t.Errorf("outsider holds %d pieces of %s", ti.Have, ti.ID)
		}
	}
	if err := e.pull(ctx, e.mirrors[1], "private/app", e.reg.AdminCredentials()); err != nil {
		t.Fatalf("second host with credentials: %v", err)
	}
	if extra := e.reg.BlobEgress() - before; extra > 0 {
		t.Errorf("registry sent %d more blob bytes for the second host (want them from the first)", extra)
	}
}

func TestMirrorGoContainerRegistry(t *testing.T) {
	e := startMirrorEnv(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, tc := range []struct {
		repo string
		auth authn.Authenticator
	}{
		{"public/app", authn.Anonymous},
		{"private/app", &authn.Basic{Username: e.reg.AdminCredentials().Username, Password: e.reg.AdminCredentials().Password}},
	} {
		ref, err := name.ParseReference(e.mirrors[0]+"/"+tc.repo+":v1", name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		img, err := remote.Image(ref, remote.WithContext(ctx), remote.WithAuth(tc.auth))
		if err != nil {
			t.Fatalf("%s: %v", tc.repo, err)
		}
		layers, err := img.Layers()
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range layers {
			rc, err := l.Compressed() // verifies the digest on read
			if err != nil {
				t.Fatal(err)
			}
			_, err = io.Copy(io.Discard, rc)
			rc.Close()
			if err != nil {
				t.Fatalf("%s layer: %v", tc.repo, err)
			}
		}
	}
	ref, _ := name.ParseReference(e.mirrors[0]+"/private/app:v1", name.Insecure)
	if _, err := remote.Image(ref, remote.WithContext(ctx)); err == nil {
		t.Fatal("anonymous pull of the private image succeeded")
	}
}

func TestMirrorSkopeo(t *testing.T) {
	skopeo := need(t, "skopeo")
	e := startMirrorEnv(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	creds := e.reg.AdminCredentials()
	for _, tc := range []struct {
		repo string
		args []string
		ok   bool
	}{
		{"public/app", nil, true},
		{"private/app", []string{"--src-creds", creds.Username + ":" + creds.Password}, true},
		{"private/app", nil, false},
	} {
		dir := t.TempDir()
		args := append([]string{"copy", "--src-tls-verify=false", "--retry-times", "0"}, tc.args...)
		args = append(args, "docker://"+e.mirrors[0]+"/"+tc.repo+":v1", "oci:"+dir+":v1")
		out, err := exec.CommandContext(ctx, skopeo, args...).CombinedOutput()
		if (err == nil) != tc.ok {
			t.Fatalf("skopeo %s (ok=%v): %v\n%s", tc.repo, tc.ok, err, out)
		}
		if !tc.ok {
			continue
		}
		// skopeo verified every blob's digest while copying; check the
		// layout holds the layers.
		for _, l := range e.img.Platform("linux", "amd64").Manifest.Layers {
			if _, err := os.Stat(filepath.Join(dir, "blobs", "sha256", l.Digest.Encoded())); err != nil {
				t.Errorf("%s: layer %s missing from the OCI layout", tc.repo, l.Digest)
			}
		}
	}
}

func TestMirrorContainerd(t *testing.T) {
	needRoot(t, "containerd runs as root")
	ctrBin, containerd := need(t, "ctr"), need(t, "containerd")
	e := startMirrorEnv(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// A private containerd: own config, root, state and socket.
	dir, err := os.MkdirTemp("", "pf-containerd-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "containerd.sock")
	cfg := fmt.Sprintf("version = 2\nroot = %q\nstate = %q\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = %q\n[ttrpc]\n  address = %q\n",
		filepath.Join(dir, "root"), filepath.Join(dir, "state"), sock, sock+".ttrpc")
	os.WriteFile(filepath.Join(dir, "config.toml"), []byte(cfg), 0o600)
	cd := exec.Command(containerd, "--config", filepath.Join(dir, "config.toml"))
	logf, _ := os.Create(filepath.Join(dir, "containerd.log"))
	cd.Stdout, cd.Stderr = logf, logf
	if err := cd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cd.Process.Kill(); cd.Wait(); logf.Close() }()
	for i := 0; ; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if i > 200 {
			b, _ := os.ReadFile(filepath.Join(dir, "containerd.log"))
			t.Fatalf("containerd did not start:\n%s", b)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// hosts.toml written by our own `dfget mirror containerd` code.
	hosts := filepath.Join(dir, "certs.d")
	if _, err := hostconfig.Containerd(hostconfig.ContainerdOptions{CertsDir: hosts,
		Registries: []string{e.reg.Host() + "=" + e.reg.URL()}, Mirror: "http://" + e.mirrors[0]}); err != nil {
		t.Fatal(err)
	}
	ctr := func(args ...string) ([]byte, error) {
		return exec.CommandContext(ctx, ctrBin, append([]string{"--address", sock, "-n", "pouchfly-test"}, args...)...).CombinedOutput()
	}
	creds := e.reg.AdminCredentials()
	before := e.reg.BlobEgress()
	for _, tc := range []struct {
		repo string
		args []string
		ok   bool
	}{
		{"public/app", nil, true},
		{"private/app", nil, false},
		{"private/app", []string{"--user", creds.Username + ":" + creds.Password}, true},
	} {
		args := append([]string{"images", "pull", "--hosts-dir", hosts, "--platform", "linux/amd64"}, tc.args...)
		out, err := ctr(append(args, e.reg.Host()+"/"+tc.repo+":v1")...)
		if (err == nil) != tc.ok {
			t.Fatalf("ctr pull %s (ok=%v): %v\n%s", tc.repo, tc.ok, err, out)
		}
	}
	// containerd verified every digest; its content store holds the layers.
	out, err := ctr("content", "ls", "-q")
	if err != nil {
		t.Fatalf("ctr content ls: %v\n%s", err, out)
	}
	for _, l := range e.img.Platform("linux", "amd64").Manifest.Layers {
		if !strings.Contains(string(out), l.Digest.String()) {
			t.Errorf("layer %s not in containerd's content store", l.Digest)
		}
	}
	// The blobs went through the agent: the registry sent each once at most
	// (public and private share the layers' content, one swarm per digest).
	size := e.img.Platform("linux", "amd64").BlobBytes()
	if eg := e.reg.BlobEgress() - before; float64(eg) > 1.05*float64(size) {
		t.Errorf("registry blob egress %d for %d bytes of blobs", eg, size)
	}
	ts, _ := e.c.Peers[0].Tasks(ctx)
	if len(ts) < len(e.img.Platform("linux", "amd64").Manifest.Layers) {
		t.Errorf("the agent ran %d tasks; the layers did not go through it", len(ts))
	}
}
