package enginetest

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// mountsUnder lists the mount points under dir (deepest first), from
// /proc/self/mountinfo.
func mountsUnder(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescape(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%o", &v); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// hostState is what a request could leave behind on the host.
type hostState struct {
	Mounts    []string // mount points under pouchd's home (lxcfs excluded)
	Loops     []string // loop devices backed by files under the home
	Cgroups   []string // cgroups under pouchd's cgroup parent
	Snapshots []string // containerd snapshots (active ones)
	Tasks     []string // containerd tasks
	Ctrs      []string // containerd containers
	Procs     []string // shims of pouchd's containerd
	Files     []string // container directories under the home
}

func (h hostState) String() string {
	return fmt.Sprintf("mounts=%v loops=%v cgroups=%v snapshots=%v tasks=%v containers=%v shims=%v dirs=%v",
		h.Mounts, h.Loops, h.Cgroups, h.Snapshots, h.Tasks, h.Ctrs, h.Procs, h.Files)
}

// captureState lists the host objects pouchd could leak.
func (e *env) captureState(t *testing.T) hostState {
	t.Helper()
	var s hostState
	for _, m := range mountsUnder(e.dir) {
		if filepath.Base(m) == "lxcfs" {
			continue
		}
		s.Mounts = append(s.Mounts, m)
	}
	if out, err := exec.Command("losetup", "-l", "-n", "-O", "NAME,BACK-FILE").Output(); err == nil {
		for _, l := range strings.Split(string(out), "\n") {
			if strings.Contains(l, e.dir) {
				s.Loops = append(s.Loops, strings.TrimSpace(l))
			}
		}
	}
	for _, ctrl := range []string{"memory", "pids", "cpu"} {
		ents, _ := os.ReadDir(filepath.Join("/sys/fs/cgroup", ctrl, e.cgroup))
		for _, en := range ents {
			if en.IsDir() {
				s.Cgroups = append(s.Cgroups, ctrl+":"+en.Name())
			}
		}
	}
	for _, ns := range []string{"pouchd", "pouchd2"} {
		s.Snapshots = append(s.Snapshots, e.ctrList(t, ns, "snapshots", "ls")...)
		s.Tasks = append(s.Tasks, e.ctrList(t, ns, "tasks", "ls")...)
		s.Ctrs = append(s.Ctrs, e.ctrList(t, ns, "containers", "ls")...)
	}
	if out, err := exec.Command("pgrep", "-f", "containerd-shim-runc-v2 -namespace pouchd").Output(); err == nil {
		s.Procs = strings.Fields(string(out))
	}
	for _, home := range []string{e.home, e.home + "2"} {
		ents, _ := os.ReadDir(filepath.Join(home, "containers"))
		for _, en := range ents {
			s.Files = append(s.Files, en.Name())
		}
	}
	return s
}

// ctrList runs ctr against pouchd's containerd and returns the first
// column of each row (header dropped); active snapshots only.
func (e *env) ctrList(t *testing.T, ns string, args ...string) []string {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	full := append([]string{"--address", filepath.Join(e.home, "containerd", "containerd.sock"), "-n", ns}, args...)
	out, err := exec.CommandContext(ctx, "ctr", full...).Output()
	if err != nil {
		t.Logf("ctr %v: %v", args, err)
		return nil
	}
	var rows []string
	for i, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(l)
		if i == 0 || len(f) == 0 {
			continue
		}
		if args[0] == "snapshots" && !strings.Contains(l, "Active") {
			continue
		}
		rows = append(rows, ns+"/"+f[0])
	}
	sort.Strings(rows)
	return rows
}

// sameState fails the test when after holds anything before did not.
func sameState(t *testing.T, what string, before, after hostState) {
	t.Helper()
	diff := func(name string, a, b []string) {
		have := map[string]bool{}
		for _, x := range a {
			have[x] = true
		}
		for _, x := range b {
			if !have[x] {
				t.Errorf("%s left %s behind: %s", what, name, x)
			}
		}
	}
	diff("a mount", before.Mounts, after.Mounts)
	diff("a loop device", before.Loops, after.Loops)
	diff("a cgroup", before.Cgroups, after.Cgroups)
	diff("a snapshot", before.Snapshots, after.Snapshots)
	diff("a task", before.Tasks, after.Tasks)
	diff("a containerd container", before.Ctrs, after.Ctrs)
	diff("a shim process", before.Procs, after.Procs)
	diff("a container directory", before.Files, after.Files)
}
