package volume

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"github.com/pouchfly/pouchfly/internal/testenv"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pouchfly/pouchfly/engine/quota"
	"github.com/pouchfly/pouchfly/internal/errdefs"
)

// fakeQuota records limits in memory.
type fakeQuota struct {
	mu      sync.Mutex
	limits  map[string]int64
	failDir string // Limit on this dir fails
}

func newFake() *fakeQuota { return &fakeQuota{limits: map[string]int64{}} }

func (f *fakeQuota) Name() string { return "fake" }
func (f *fakeQuota) Limit(_ context.Context, dir string, size int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if dir == f.failDir {
		return fmt.Errorf("fake failure: %w", errdefs.ErrUnavailable)
	}
	if old, ok := f.limits[dir]; ok && old != size {
		return errdefs.ErrInvalid
	}
	f.limits[dir] = size
	return nil
}
func (f *fakeQuota) Release(_ context.Context, dir string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.limits, dir)
	return nil
}
func (f *fakeQuota) Usage(_ context.Context, dir string) (int64, int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if l, ok := f.limits[dir]; ok {
		return 1, l, nil
	}
	return 0, 0, errdefs.ErrNotFound
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func TestValidateName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"a", true}, {"data", true}, {"my_vol-1.2", true}, {"0abc", true},
		{"", false}, {"_x", false}, {".x", false}, {"-x", false}, {"a/b", false}, {"..", false},
		{"a b", false}, {"ä", false}, {strings.Repeat("a", 256), false},
	} {
		err := ValidateName(tc.name)
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, errdefs.ErrInvalid)) {
			t.Errorf("ValidateName(%q) = %v", tc.name, err)
		}
	}
}

func TestStoreLifecycle(t *testing.T) {
	ctx := ctxT(t)
	root := t.TempDir()
	q := newFake()
	s, err := New(root, DefaultConfig(), q)
	if err != nil {
		t.Fatal(err)
	}
	users := map[string][]string{}
	s.SetUsage(func(name string) []string { return users[name] })

	v, err := s.Create(ctx, "data", "", map[string]string{"size": "10g"}, map[string]string{"team": "a"})
	if err != nil {
		t.Fatal(err)
	}
	if v.Name != "data" || v.Driver != "local" || v.Size != 10<<30 || v.Mountpoint != filepath.Join(root, "volumes", "data", "_data") ||
		v.Labels["team"] != "a" || v.Options["size"] != "10g" || v.Scope != "local" || v.CreatedAt.IsZero() {
		t.Fatalf("Create = %+v", v)
	}
	if q.limits[v.Mountpoint] != 10<<30 {
		t.Fatalf("quota limits = %v", q.limits)
	}
	if fi, err := os.Stat(v.Mountpoint); err != nil || !fi.IsDir() {
		t.Fatalf("mountpoint: %v", err)
	}
	// Idempotent create: no options, or the same ones.
	for _, opts := range []map[string]string{nil, {"size": "10g"}} {
		v2, err := s.Create(ctx, "data", "local", opts, nil)
		if err != nil || !v2.CreatedAt.Equal(v.CreatedAt) || v2.Size != v.Size {
			t.Fatalf("re-Create(%v) = %+v, %v", opts, v2, err)
		}
	}
	if _, err := s.Create(ctx, "data", "", map[string]string{"size": "1g"}, nil); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("re-Create with other options = %v, want ErrInvalid", err)
	}
	if _, err := s.Create(ctx, "plain", "", nil, nil); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(ctx, "data")
	if err != nil || got.Size != v.Size || got.Labels["team"] != "a" {
		t.Fatalf("Get = %+v, %v", got, err)
	}
	if _, err := s.Get(ctx, "nope"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("Get(nope) = %v", err)
	}
	if _, err := s.Get(ctx, "../etc"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("Get(../etc) = %v", err)
	}
	list, err := s.List(ctx)
	if err != nil || len(list) != 2 || list[0].Name != "data" || list[1].Name != "plain" {
		t.Fatalf("List = %+v, %v", list, err)
	}
	if used, limit, err := s.Usage(ctx, "data"); err != nil || used != 1 || limit != 10<<30 {
		t.Fatalf("Usage(data) = %d %d %v", used, limit, err)
	}
	if used, limit, err := s.Usage(ctx, "plain"); err != nil || used != -1 || limit != 0 {
		t.Fatalf("Usage(plain) = %d %d %v", used, limit, err)
	}

	users["data"] = []string{"0123456789abcdef0123"}
	err = s.Remove(ctx, "data", false)
	if !errors.Is(err, ErrInUse) || !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "0123456789ab") {
		t.Fatalf("Remove in use = %v", err)
	}
	if err := s.Remove(ctx, "data", true); err != nil {
		t.Fatalf("Remove force = %v", err)
	}
	if len(q.limits) != 0 {
		t.Fatalf("quota not released: %v", q.limits)
	}
	if _, err := os.Stat(filepath.Join(root, "volumes", "data")); !os.IsNotExist(err) {
		t.Fatalf("volume dir left: %v", err)
	}
	if err := s.Remove(ctx, "data", false); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("Remove missing = %v", err)
	}
	if err := s.Remove(ctx, "data", true); err != nil {
		t.Fatalf("Remove missing, force = %v", err)
	}
}

func TestStoreInvalid(t *testing.T) {
	ctx := ctxT(t)
	q := newFake()
	s, err := New(t.TempDir(), DefaultConfig(), q)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, driver string
		opts         map[string]string
	}{
		{"bad/name", "", nil},
		{"x", "nfs", nil},
		{"x", "", map[string]string{"size": "big"}},
		{"x", "", map[string]string{"size": "1m"}},
		{"x", "", map[string]string{"type": "tmpfs"}},
	} {
		if _, err := s.Create(ctx, tc.name, tc.driver, tc.opts, nil); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("Create(%q, %q, %v) = %v, want ErrInvalid", tc.name, tc.driver, tc.opts, err)
		}
	}
	// A failing quota leaves nothing behind.
	q.failDir = s.dataDir("broken")
	if _, err := s.Create(ctx, "broken", "", map[string]string{"size": "8m"}, nil); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("Create with failing quota = %v", err)
	}
	if _, err := os.Stat(s.volDir("broken")); !os.IsNotExist(err) {
		t.Fatalf("failed Create left %s: %v", s.volDir("broken"), err)
	}
	// No quota driver: sized volumes are refused, plain ones work.
	s2, _ := New(t.TempDir(), DefaultConfig(), nil)
	if _, err := s2.Create(ctx, "sized", "", map[string]string{"size": "8m"}, nil); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("sized volume without quota = %v", err)
	}
	if _, err := s2.Create(ctx, "plain", "", nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := (Config{DefaultSize: 1 << 20}).Validate(); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("Validate(default_size 1m) = %v", err)
	}
}

func TestStoreRestore(t *testing.T) {
	ctx := ctxT(t)
	root := t.TempDir()
	q := newFake()
	cfg := DefaultConfig()
	cfg.DefaultSize = 16 << 20
	s, err := New(root, cfg, q)
	if err != nil {
		t.Fatal(err)
	}
	v, err := s.Create(ctx, "sized", "", nil, nil) // gets the default size
	if err != nil || v.Size != 16<<20 {
		t.Fatalf("Create with default size = %+v, %v", v, err)
	}
	if _, err := s.Create(ctx, "unlimited", "", map[string]string{"size": "0"}, nil); err != nil {
		t.Fatal(err)
	}
	// A crash halfway through Create: a directory without metadata.
	os.MkdirAll(s.dataDir("half"), 0o755)
	// A reboot: the quota mounts are gone.
	q2 := newFake()
	s2, _ := New(root, cfg, q2)
	if err := s2.Restore(ctx); err != nil {
		t.Fatal(err)
	}
	if q2.limits[v.Mountpoint] != 16<<20 || len(q2.limits) != 1 {
		t.Fatalf("Restore limits = %v", q2.limits)
	}
	if _, err := os.Stat(s.volDir("half")); !os.IsNotExist(err) {
		t.Fatalf("half-made volume kept: %v", err)
	}
	if list, _ := s2.List(ctx); len(list) != 2 {
		t.Fatalf("List after Restore = %+v", list)
	}
}

// A sized volume on the real quota driver of this host (loop devices here).
func TestSizedVolumeENOSPC(t *testing.T) {
	need := func(ok bool, why string) {
		t.Helper()
		testenv.Require(t, ok, why)
	}
	need(os.Geteuid() == 0, "needs root (loop devices, mount)")
	_, err := exec.LookPath("mkfs.ext4")
	need(err == nil, "needs mkfs.ext4 (e2fsprogs)")
	ctx := ctxT(t)
	root, _ := filepath.EvalSymlinks(t.TempDir())
	t.Cleanup(func() { cleanupMounts(t, root) })
	q, err := quota.Detect(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(root, DefaultConfig(), q)
	if err != nil {
		t.Fatal(err)
	}
	v, err := s.Create(ctx, "sized", "local", map[string]string{"size": "16m"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(v.Mountpoint, &sfs); err != nil {
		t.Fatal(err)
	}
	if total := int64(sfs.Blocks) * sfs.Bsize; total < 15<<20 || total > 17<<20 {
		t.Fatalf("statfs of the volume = %d, want ~16MiB", total)
	}
	if ents, _ := os.ReadDir(v.Mountpoint); len(ents) != 0 {
		t.Fatalf("fresh volume holds %v", ents)
	}
	f, err := os.Create(filepath.Join(v.Mountpoint, "big"))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	var n int64
	for n < 64<<20 {
		w, err := f.Write(buf)
		n += int64(w)
		if err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("write: %v, want ENOSPC", err)
			}
			break
		}
	}
	f.Close()
	if n > 16<<20 || n < 14<<20 {
		t.Fatalf("wrote %d bytes before ENOSPC", n)
	}
	used, limit, err := s.Usage(ctx, "sized")
	if err != nil || limit != 16<<20 || used < 14<<20 {
		t.Fatalf("Usage = %d %d %v", used, limit, err)
	}
	t.Logf("quota driver %s: wrote %d bytes before ENOSPC", q.Name(), n)
	if err := s.Remove(ctx, "sized", false); err != nil {
		t.Fatal(err)
	}
	if l := mountsUnder(t, root); len(l) != 0 {
		t.Fatalf("left after Remove: %v", l)
	}
}

// mountsUnder lists mounts and loop devices involving paths under root.
func mountsUnder(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fs := strings.Fields(sc.Text()); len(fs) > 4 && strings.HasPrefix(fs[4], root+"/") {
			out = append(out, "mount "+fs[4])
		}
	}
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, bf := range files {
		if b, err := os.ReadFile(bf); err == nil && strings.HasPrefix(string(b), root+"/") {
			out = append(out, "loop "+bf+" "+strings.TrimSpace(string(b)))
		}
	}
	return out
}

func cleanupMounts(t *testing.T, root string) {
	for _, l := range mountsUnder(t, root) {
		if mp, ok := strings.CutPrefix(l, "mount "); ok {
			_ = unix.Unmount(mp, unix.MNT_DETACH)
		}
	}
	deadline := time.Now().Add(3 * time.Second)
	for len(mountsUnder(t, root)) > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if l := mountsUnder(t, root); len(l) > 0 {
		t.Errorf("leaked after cleanup: %v", l)
	}
}
