package enginetest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pouchfly/pouchfly/engine/api"
)

func TestPullThroughAgent(t *testing.T) {
	e := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ref := e.reg.Host() + "/test/pull:v1"
	blobs := int64(0)
	e.reg.ResetStats()
	out := e.pouch(t, "pull", ref)
	t.Logf("pouch pull:\n%s", out)
	for _, want := range []string{"Pulling from", "/test/pull", "Pulling fs layer", "Pull complete", "Digest: sha256:", "Downloaded newer image"} {
		if !strings.Contains(out, want) {
			t.Errorf("pull output lacks %q", want)
		}
	}
	tasks, err := e.c.Peers[0].Tasks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(tasks) == 0 {
		t.Fatalf("the agent ran no task: the pull did not go through it")
	}
	blobs = e.reg.BlobEgress()
	if blobs == 0 {
		t.Errorf("the registry sent no blob bytes for a first pull")
	}
	// The layers are unpacked into overlayfs snapshots by containerd.
	snaps, err := exec.Command("ctr", "--address", filepath.Join(e.home, "containerd", "containerd.sock"), "-n", "pouchd", "snapshots", "--snapshotter", "overlayfs", "ls").CombinedOutput()
	if err != nil || strings.Count(string(snaps), "Committed") < 2 {
		t.Errorf("overlayfs snapshots after the pull (want the 2 layers committed): %v\n%s", err, snaps)
	}
	if imgs := e.pouch(t, "images"); !strings.Contains(imgs, "/test/pull") || !strings.Contains(imgs, "v1") {
		t.Errorf("pouch images:\n%s", imgs)
	}
	var ins []api.ImageInspect
	if err := json.Unmarshal([]byte(e.pouch(t, "image", "inspect", ref)), &ins); err != nil || len(ins) != 1 {
		t.Fatalf("image inspect: %v", err)
	}
	if ins[0].Os != "linux" || len(ins[0].RootFS.Layers) != 2 || ins[0].Config == nil || ins[0].Config.Cmd[0] != "/bin/sh" {
		t.Errorf("image inspect: %+v", ins[0])
	}
	// rmi, then pull again: the agent serves the blobs from its store, the
	// registry sends none.
	e.pouch(t, "rmi", ref)
	if imgs := e.pouch(t, "images"); strings.Contains(imgs, "/test/pull") {
		t.Errorf("image still listed after rmi:\n%s", imgs)
	}
	e.reg.ResetStats()
	e.pouch(t, "pull", ref)
	if eg := e.reg.BlobEgress(); eg != 0 {
		t.Errorf("second pull: registry sent %d blob bytes; the agent should have served them", eg)
	}
	if out := e.pouch(t, "pull", ref); !strings.Contains(out, "up to date") {
		t.Errorf("pull of a present image: %q", out)
	}

	// The agent down: pulls fall back to the registry (hosts.toml lists it
	// after the mirror).
	addr := strings.TrimPrefix(e.mirror, "http://")
	e.stopMirror()
	defer func() {
		if err := e.startMirror(addr); err != nil {
			t.Fatalf("mirror restart: %v", err)
		}
	}()
	e.reg.ResetStats()
	fb := e.reg.Host() + "/test/fallback:v1"
	e.pouch(t, "pull", fb)
	if e.reg.BlobEgress() == 0 {
		t.Errorf("fallback pull: no blob from the registry?")
	}
	if out := e.pouch(t, "run", "--rm", fb, "echo", "fallback"); out != "fallback\n" {
		t.Errorf("run from the fallback pull: %q", out)
	}
	e.pouch(t, "rmi", fb)
}

func TestRunLogsExecStopRm(t *testing.T) {
	e := need(t)
	img := e.ensureImage(t)

	// Foreground run: output and exit code are the container's.
	out, errOut, code := e.pouchRaw("run", "--rm", img, "sh", "-c", "echo hello; echo oops >&2; exit 3")
	if code != 3 || out != "hello\n" || errOut != "oops\n" {
		t.Fatalf("run: code %d stdout %q stderr %q", code, out, errOut)
	}
	// Environment, workdir, user, entrypoint.
	out = e.pouch(t, "run", "--rm", "-e", "FOO=bar", "-w", "/tmp", "-u", "nobody", img, "sh", "-c", "echo $FOO $(pwd) $(id -u)")
	if out != "bar /tmp 65534\n" {
		t.Errorf("env/workdir/user: %q", out)
	}
	out = e.pouch(t, "run", "--rm", "--entrypoint", "/bin/echo", img, "from", "entrypoint")
	if out != "from entrypoint\n" {
		t.Errorf("entrypoint: %q", out)
	}
	// A command that does not exist: 127, nothing left.
	if _, errOut, code := e.pouchRaw("run", "--rm", img, "/no/such/cmd"); code != 127 {
		t.Errorf("missing command: exit %d, want 127 (%s)", code, errOut)
	}

	// Detached: logs, exec, ps, inspect, stop, rm.
	name := "basic-" + fmt.Sprint(time.Now().UnixNano()%100000)
	id := strings.TrimSpace(e.pouch(t, "run", "-d", "--name", name, img, "sh", "-c", "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.2; done"))
	if len(id) != 64 {
		t.Fatalf("run -d printed %q", id)
	}
	eventually(t, 10*time.Second, "logs", func() error {
		if l := e.pouch(t, "logs", name); !strings.Contains(l, "line 2\n") {
			return fmt.Errorf("logs so far: %q", l)
		}
		return nil
	})
	if out := e.pouch(t, "exec", name, "cat", "/proc/1/cmdline"); !strings.Contains(out, "while true") {
		t.Errorf("exec: %q", out)
	}
	if _, _, code := e.pouchRaw("exec", name, "sh", "-c", "exit 7"); code != 7 {
		t.Errorf("exec exit code %d, want 7", code)
	}
	if out := e.pouch(t, "exec", "-i", name, "cat"); out != "" {
		t.Errorf("exec -i with empty stdin: %q", out)
	}
	ps := e.pouch(t, "ps")
	if !strings.Contains(ps, name) || !strings.Contains(ps, "runc") || !strings.Contains(ps, "Up ") {
		t.Errorf("ps:\n%s", ps)
	}
	var j []api.ContainerJSON
	if err := json.Unmarshal([]byte(e.pouch(t, "inspect", name)), &j); err != nil || len(j) != 1 || !j[0].State.Running || j[0].State.Pid == 0 {
		t.Fatalf("inspect: %v %+v", err, j)
	}
	if _, errOut, code := e.pouchRaw("rm", name); code == 0 || !strings.Contains(errOut, "stop it first") {
		t.Errorf("rm of a running container: exit %d %s", code, errOut)
	}
	// logs -f follows until the container stops.
	follow := exec.Command(filepath.Join(e.bin, "pouch"), "-H", "unix://"+e.sock, "logs", "-f", "--tail", "1", name)
	var fout strings.Builder
	follow.Stdout = &fout
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(700 * time.Millisecond)
	e.pouch(t, "stop", "-t", "1", name)
	fdone := make(chan error, 1)
	go func() { fdone <- follow.Wait() }()
	select {
	case err := <-fdone:
		if err != nil {
			t.Errorf("logs -f: %v", err)
		}
	case <-time.After(10 * time.Second):
		follow.Process.Kill()
		t.Errorf("logs -f did not end when the container stopped")
	}
	if n := strings.Count(fout.String(), "line "); n < 3 {
		t.Errorf("logs -f --tail 1 saw %d lines: %q", n, fout.String())
	}
	ps = e.pouch(t, "ps", "-a")
	if !strings.Contains(ps, "Exited (137)") {
		t.Errorf("ps -a after stop:\n%s", ps)
	}
	// Logs survive the stop; -f ends at once for a stopped container.
	if l := e.pouch(t, "logs", "-f", name); !strings.Contains(l, "line 0\n") {
		t.Errorf("logs after stop: %q", l)
	}
	e.pouch(t, "start", name)
	e.pouch(t, "restart", "-t", "0", name)
	e.pouch(t, "kill", name)
	if out := e.pouch(t, "wait", name); out != "137\n" {
		t.Errorf("wait after kill: %q", out)
	}
	// start -a attaches and exits with the container's code.
	short := name + "-a"
	e.pouch(t, "create", "--name", short, img, "sh", "-c", "echo attached; exit 4")
	if out, _, code := e.pouchRaw("start", "-a", short); code != 4 || out != "attached\n" {
		t.Errorf("start -a: exit %d %q", code, out)
	}
	e.pouch(t, "rm", short)
	e.pouch(t, "rm", "-f", name)
	// pouchd's metrics count what happened.
	resp, err := http.Get("http://" + e.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, m := range []string{"pouchfly_engine_container_starts_total", "pouchfly_engine_containers_running", "pouchfly_lxcfs_up 1"} {
		if !strings.Contains(string(body), m) {
			t.Errorf("metrics lack %s", m)
		}
	}
	if _, _, code := e.pouchRaw("inspect", name); code == 0 {
		t.Errorf("container still there after rm")
	}
}
