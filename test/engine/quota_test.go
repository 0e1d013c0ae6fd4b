package enginetest

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pouchfly/pouchfly/engine/api"
)

// dfKB returns the size column (1K blocks) of `df -k PATH` output.
func dfKB(t *testing.T, out string) int64 {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) < 2 {
		t.Fatalf("df output: %q", out)
	}
	f := strings.Fields(lines[len(lines)-1])
	if len(f) < 2 {
		t.Fatalf("df output: %q", out)
	}
	n, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		t.Fatalf("df output: %q", out)
	}
	return n
}

// allocatedUnder sums the disk blocks allocated to files under dir on
// dir's own filesystem (what the host's disk holds; mounted quota
// filesystems are not entered, their backing files count).
func allocatedUnder(dir string) int64 {
	var root syscall.Stat_t
	if syscall.Stat(dir, &root) != nil {
		return 0
	}
	var n int64
	_ = filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return nil
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return nil
		}
		if st.Dev != root.Dev {
			if fi.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if fi.Mode().IsRegular() {
			n += st.Blocks * 512
		}
		return nil
	})
	return n
}

func TestDiskQuotaRootfs(t *testing.T) {
	e := need(t)
	img := e.ensureImage(t)
	info := e.pouch(t, "info")
	if !strings.Contains(info, "Disk Quota Driver: loop") && !strings.Contains(info, "Disk Quota Driver: project") {
		t.Fatalf("pouch info shows no quota driver:\n%s", info)
	}
	before := e.captureState(t)
	name := fmt.Sprintf("quota-%d", time.Now().UnixNano()%100000)
	e.pouch(t, "run", "-d", "--name", name, "--disk-quota", "64m", img, "sleep", "1000")
	size := dfKB(t, e.pouch(t, "exec", name, "df", "-k", "/"))
	if size < 50*1024 || size > 66*1024 {
		t.Errorf("df / shows %d KiB, want about 64 MiB (ext4 metadata takes a little)", size)
	}
	var j []api.ContainerJSON
	_ = json.Unmarshal([]byte(e.pouch(t, "inspect", name)), &j)
	if len(j) != 1 || j[0].RootfsQuota != "64MiB" {
		t.Errorf("inspect RootfsQuota: %+v", j)
	}
	hostBefore := allocatedUnder(e.home)
	out, errOut, code := e.pouchRaw("exec", name, "dd", "if=/dev/zero", "of=/big", "bs=1M", "count=100")
	if code == 0 || !strings.Contains(errOut, "No space left on device") {
		t.Errorf("writing 100 MiB into a 64 MiB rootfs: exit %d\n%s%s", code, out, errOut)
	}
	// The bytes went into the container's own filesystem, bounded by the
	// quota: the host's disk grew by at most the quota.
	if grew := allocatedUnder(e.home) - hostBefore; grew > 66<<20 {
		t.Errorf("the host disk under pouchd's home grew by %d MiB", grew>>20)
	}
	// The image's files are still there and the container still works.
	if out := e.pouch(t, "exec", name, "sh", "-c", "rm /big && echo ok > /ok && cat /ok"); out != "ok\n" {
		t.Errorf("after freeing space: %q", out)
	}
	e.pouch(t, "rm", "-f", name)
	sameState(t, "a container with --disk-quota", before, e.captureState(t))

	// --rm with a quota: df inside, then nothing left.
	out = e.pouch(t, "run", "--rm", "--disk-quota", "/=32m", img, "df", "-k", "/")
	if kb := dfKB(t, out); kb > 34*1024 || kb < 24*1024 {
		t.Errorf("/=32m: df shows %d KiB", kb)
	}
	sameState(t, "run --rm --disk-quota", before, e.captureState(t))
}

func TestSizedVolume(t *testing.T) {
	e := need(t)
	img := e.ensureImage(t)
	before := e.captureState(t)
	vol := fmt.Sprintf("vol%d", time.Now().UnixNano()%100000)
	e.pouch(t, "volume", "create", "-d", "local", "-o", "size=48m", vol)
	if ls := e.pouch(t, "volume", "ls"); !strings.Contains(ls, vol) || !strings.Contains(ls, "48MiB") {
		t.Errorf("volume ls:\n%s", ls)
	}
	var vs []api.Volume
	if err := json.Unmarshal([]byte(e.pouch(t, "volume", "inspect", vol)), &vs); err != nil || len(vs) != 1 || vs[0].Status["size"] != "48MiB" {
		t.Fatalf("volume inspect: %v %+v", err, vs)
	}
	out, errOut, code := e.pouchRaw("run", "--rm", "-v", vol+":/data", img, "sh", "-c",
		"df -k /data | tail -1; echo persisted > /data/keep; dd if=/dev/zero of=/data/big bs=1M count=80")
	if code == 0 || !strings.Contains(errOut, "No space left on device") {
		t.Errorf("writing 80 MiB into a 48 MiB volume: exit %d\n%s%s", code, out, errOut)
	}
	if kb := dfKB(t, "hdr\n"+strings.Split(out, "\n")[0]); kb > 50*1024 || kb < 38*1024 {
		t.Errorf("df /data shows %d KiB, want about 48 MiB", kb)
	}
	// The volume outlives the container; a bind mount and an anonymous
	// volume work alongside it.
	host := t.TempDir()
	os.WriteFile(filepath.Join(host, "from-host"), []byte("hi\n"), 0o644)
	out = e.pouch(t, "run", "--rm", "-v", vol+":/data:ro", "-v", host+":/host", "-v", "/anon", img, "sh", "-c",
		"cat /data/keep /host/from-host; touch /data/x 2>/dev/null || echo read-only; echo hi > /anon/f && cat /anon/f")
	if out != "persisted\nhi\nread-only\nhi\n" {
		t.Errorf("volume, bind and anonymous volume: %q", out)
	}
	// In use: rm refused; then removed.
	name := fmt.Sprintf("voluser%d", time.Now().UnixNano()%100000)
	e.pouch(t, "create", "--name", name, "-v", vol+":/data", img, "true")
	if _, errOut, code := e.pouchRaw("volume", "rm", vol); code == 0 {
		t.Errorf("removing a volume in use succeeded")
	} else if !strings.Contains(errOut, "in use") {
		t.Errorf("volume rm in use: %s", errOut)
	}
	e.pouch(t, "rm", name)
	e.pouch(t, "volume", "rm", vol)
	if _, _, code := e.pouchRaw("volume", "inspect", vol); code == 0 {
		t.Errorf("volume still there")
	}
	// --disk-quota sizes a volume the container creates.
	vol2 := vol + "b"
	out = e.pouch(t, "run", "--rm", "--disk-quota", "/data=24m", "-v", vol2+":/data", img, "df", "-k", "/data")
	if kb := dfKB(t, out); kb > 26*1024 || kb < 16*1024 {
		t.Errorf("--disk-quota /data=24m: df shows %d KiB", kb)
	}
	e.pouch(t, "volume", "rm", vol2)
	sameState(t, "volumes", before, e.captureState(t))
}
