package testbed

import (
	"context"
	"fmt"
	"github.com/pouchfly/pouchfly/internal/testenv"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	// Re-executed inside a namespace to play a role (origin, client).
	RoleMain()
	os.Exit(m.Run())
}

// requireTestbed skips (or, under CI=true, fails) when the testbed cannot
// run here.
func requireTestbed(t *testing.T) {
	t.Helper()
	err := CheckPrereqs()
	testenv.Require(t, err == nil, fmt.Sprintf("the multi-host testbed cannot run here: %v (run as root with iproute2)", err))
}

// buildBinaries builds supernode and dfget from this module into a
// temporary directory.
func buildBinaries(t *testing.T) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", dir+"/", "./cmd/supernode", "./cmd/dfget")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return dir
}

// rootState lists what could leak into the caller's namespace: links and
// qdiscs.
func rootState(t *testing.T) (links, qdiscs []string) {
	t.Helper()
	out, err := exec.Command("ip", "-o", "link", "show").Output()
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`^\d+: ([^:@]+)`)
	for _, l := range strings.Split(string(out), "\n") {
		if m := re.FindStringSubmatch(l); m != nil {
			links = append(links, m[1])
		}
	}
	out, err = exec.Command("tc", "qdisc", "show").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(l); len(f) >= 5 {
			qdiscs = append(qdiscs, f[1]+" "+f[4]) // kind, device
		}
	}
	return links, qdiscs
}

func added(before, after []string) []string {
	var out []string
	for _, a := range after {
		if !slices.Contains(before, a) {
			out = append(out, a)
		}
	}
	return out
}

// TestSmallP2P runs the smallest useful testbed — 3 hosts, an 8 MiB file,
// caps on — in p2p mode, checks digests and origin egress, and checks that
// nothing of the run is left behind: namespaces, veths, bridge, qdiscs,
// processes, directories.
func TestSmallP2P(t *testing.T) {
	requireTestbed(t)
	bin := buildBinaries(t)
	const size = 8 << 20
	links0, qdiscs0 := rootState(t)
	var log strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tb, err := New(ctx, Config{Hosts: 3, HostCapMbit: 50, OriginCapMbit: 200, SupernodeCapMbit: 200, Log: &log})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			tb.Close()
		}
	}()
	// While it runs: every namespace exists, holds its veth end with a tbf
	// qdisc, and has no default route.
	nss, err := Namespaces(ctx, tb.cfg.Prefix+"-"+tb.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(nss) != 3+3 { // bridge, origin, supernode, 3 hosts
		t.Fatalf("namespaces %v, want 6", nss)
	}
	nsInodes := map[uint64]string{}
	for _, ns := range nss {
		var st syscall.Stat_t
		if err := syscall.Stat(filepath.Join("/run/netns", ns), &st); err != nil {
			t.Fatal(err)
		}
		nsInodes[st.Ino] = ns
	}
	for _, h := range append([]*Host{tb.Origin, tb.Supernode}, tb.Hosts...) {
		out, err := runCmd(ctx, "ip", "-n", h.NS, "route", "show")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(out, "default") || strings.Count(strings.TrimSpace(out), "\n") != 0 {
			t.Errorf("%s: routes %q, want only the subnet's", h.Name, out)
		}
		for _, q := range [][]string{{"-n", h.NS, "qdisc", "show", "dev", "eth0"}, {"-n", tb.BridgeNS, "qdisc", "show", "dev", h.brIf}} {
			out, err := runCmd(ctx, "tc", q...)
			if err != nil || !strings.Contains(out, "tbf") {
				t.Errorf("tc %v: %q %v, want a tbf qdisc", q, out, err)
			}
		}
	}

	r := NewRunner(tb, RunnerOptions{BinDir: bin, RunTimeout: time.Minute, Log: &log})
	if err := r.StartOrigin(ctx); err != nil {
		t.Fatal(err)
	}
	run, err := r.RunP2P(ctx, 3, size)
	if err != nil {
		t.Fatalf("p2p run: %v\n%s", err, log.String())
	}
	rep := run.Report(tb.Config())
	t.Logf("p50 %.2fs max %.2fs (limit %.2fs) origin %d B supernode %d B; %s", rep.Seconds.P50, rep.Seconds.Max,
		rep.LimitSeconds, rep.OriginEgressBytes, rep.SupernodeEgressBytes, rep.Notes)
	for _, c := range run.Results {
		if !c.OK(run.Digest, size) {
			t.Errorf("%s: %d bytes, digest %s, error %q; want %d bytes, %s", c.Host, c.Bytes, c.Digest, c.Error, size, run.Digest)
		}
	}
	if rep.FailedHosts != 0 || !rep.DigestsOK {
		t.Errorf("failed hosts %d, digests ok %v", rep.FailedHosts, rep.DigestsOK)
	}
	if rep.OriginEgressBytes > size*105/100 {
		t.Errorf("origin egress %d bytes > 1.05 × %d", rep.OriginEgressBytes, size)
	}
	// The caps hold: no host can beat size / cap (minus tbf's burst).
	if lim := rep.LimitSeconds; rep.Seconds.P50 < 0.9*lim {
		t.Errorf("p50 %.2fs is below the physical limit %.2fs: caps not applied?", rep.Seconds.P50, lim)
	}

	// Cleanup.
	tb.mu.Lock()
	var pids []int
	for _, p := range tb.procs {
		pids = append(pids, p.PID())
	}
	dir, lock := tb.Dir, tb.lockPath(tb.ID)
	tb.mu.Unlock()
	if len(pids) < 1+1+3+3 { // origin, supernode, agents, clients
		t.Errorf("only %d processes recorded", len(pids))
	}
	if err := tb.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	closed = true
	if left, _ := Namespaces(context.Background(), tb.cfg.Prefix+"-"+tb.ID); len(left) > 0 {
		t.Errorf("namespaces left: %v", left)
	}
	for _, pid := range pids {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			if strings.Contains(string(cmdline), tb.ID) || strings.Contains(string(cmdline), dir) {
				t.Errorf("process %d left: %q", pid, cmdline)
			}
		}
	}
	// No process anywhere still holds one of the run's namespaces (which
	// would keep its veths, bridge and qdiscs alive).
	procs, _ := filepath.Glob("/proc/[0-9]*/ns/net")
	for _, p := range procs {
		var st syscall.Stat_t
		if syscall.Stat(p, &st) == nil {
			if ns, ok := nsInodes[st.Ino]; ok {
				t.Errorf("%s still in namespace %s", p, ns)
			}
		}
	}
	links1, qdiscs1 := rootState(t)
	if a := added(links0, links1); len(a) > 0 {
		t.Errorf("links appeared in the root namespace: %v", a)
	}
	if a := added(qdiscs0, qdiscs1); len(a) > 0 {
		t.Errorf("qdiscs appeared in the root namespace: %v", a)
	}
	for _, p := range []string{dir, lock} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s left behind (%v)", p, err)
		}
	}
}

// TestCleanStaleRemovesDeadRuns simulates a crashed run (namespaces and a
// lock file nobody holds) and checks that the next run's CleanStale
// removes it, and leaves a live run alone.
func TestCleanStaleRemovesDeadRuns(t *testing.T) {
	requireTestbed(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const prefix = "pftbt"
	// A live testbed.
	live, err := New(ctx, Config{Prefix: prefix, Hosts: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	// A dead one: namespaces, a work dir and an unlocked lock file.
	deadID := "dead00"
	dir := t.TempDir()
	workDir := filepath.Join(dir, prefix+"-"+deadID+"-x")
	os.MkdirAll(workDir, 0o755)
	if err := os.WriteFile(filepath.Join(lockDir, prefix+"-"+deadID+".lock"), []byte("dir "+workDir+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"br", "h1"} {
		if _, err := runCmd(ctx, "ip", "netns", "add", prefix+"-"+deadID+"-"+s); err != nil {
			t.Fatal(err)
		}
	}
	// A process left inside the dead host namespace.
	sleeper := exec.Command("ip", "netns", "exec", prefix+"-"+deadID+"-h1", "sleep", "300")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	go sleeper.Wait()
	// ip netns exec enters the namespace, then execs sleep: wait for both,
	// or CleanStale may look before the process is in there.
	var nsStat syscall.Stat_t
	if err := syscall.Stat("/run/netns/"+prefix+"-"+deadID+"-h1", &nsStat); err != nil {
		t.Fatal(err)
	}
	inside := func() bool {
		var st syscall.Stat_t
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", sleeper.Process.Pid))
		return syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", sleeper.Process.Pid), &st) == nil && st.Ino == nsStat.Ino &&
			strings.TrimSpace(string(comm)) == "sleep"
	}
	for deadline := time.Now().Add(10 * time.Second); !inside(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the sleeper never got into the dead namespace")
		}
	}
	removed, err := CleanStale(ctx, prefix, nil)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(removed)
	if want := []string{prefix + "-" + deadID + "-br", prefix + "-" + deadID + "-h1"}; !slices.Equal(removed, want) {
		t.Errorf("removed %v, want %v", removed, want)
	}
	// Killed, it is reaped by sleeper.Wait (until then a zombie answers
	// signal 0): allow for a loaded machine.
	for deadline := time.Now().Add(5 * time.Second); syscall.Kill(sleeper.Process.Pid, 0) == nil; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Errorf("the process in the stale namespace survived")
			break
		}
	}
	if _, err := os.Stat(workDir); !os.IsNotExist(err) {
		t.Errorf("stale work dir left: %v", err)
	}
	left, _ := Namespaces(ctx, prefix)
	if len(left) != 4 { // the live one: br, o, sn, h1
		t.Errorf("namespaces after clean: %v, want the live testbed's 4", left)
	}
}
