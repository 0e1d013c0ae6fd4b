package hostconfig

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/pelletier/go-toml/v2"

	"github.com/pouchfly/pouchfly/internal/errdefs"
)

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func write(t *testing.T, path, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

// noTemps fails if a temp file was left in dir.
func noTemps(t *testing.T, dir string) {
	t.Helper()
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.Contains(d.Name(), ".tmp-") {
			t.Errorf("temp file left: %s", p)
		}
		return nil
	})
}

type hostsDoc struct {
	Server       string `toml:"server"`
	Capabilities []string
	CA           string `toml:"ca"`
	Host         map[string]struct {
		Capabilities []string `toml:"capabilities"`
		SkipVerify   bool     `toml:"skip_verify"`
	} `toml:"host"`
}

func parseHosts(t *testing.T, path string) hostsDoc {
	t.Helper()
	var d hostsDoc
	if err := toml.Unmarshal([]byte(read(t, path)), &d); err != nil {
		t.Fatalf("%s: %v\n%s", path, err, read(t, path))
	}
	return d
}

func TestContainerdCreateAndUndo(t *testing.T) {
	dir := t.TempDir()
	opts := ContainerdOptions{CertsDir: dir, Registries: []string{"docker.io", "ghcr.io", "10.0.0.1:5000=http://10.0.0.1:5000"}}
	changes, err := Containerd(opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(changes) != 3 {
		t.Fatalf("%d changes", len(changes))
	}
	for i, want := range []struct{ reg, server string }{
		{"docker.io", "https://registry-1.docker.io"},
		{"ghcr.io", "https://ghcr.io"},
		{"10.0.0.1:5000", "http://10.0.0.1:5000"},
	} {
		path := filepath.Join(dir, want.reg, "hosts.toml")
		if changes[i].Action != Create || changes[i].Path != path || changes[i].Backup != "" {
			t.Errorf("change %d: %+v", i, changes[i])
		}
		d := parseHosts(t, path)
		if d.Server != want.server {
			t.Errorf("%s: server %q", want.reg, d.Server)
		}
		h, ok := d.Host[DefaultMirror]
		if !ok || !reflect.DeepEqual(h.Capabilities, []string{"pull", "resolve"}) || len(d.Host) != 1 {
			t.Errorf("%s: hosts %+v", want.reg, d.Host)
		}
		if exists(path + BackupSuffix) {
			t.Errorf("%s: backup of nothing", want.reg)
		}
	}
	got := read(t, filepath.Join(dir, "docker.io", "hosts.toml"))
	if !strings.Contains(got, `server = "https://registry-1.docker.io"`) ||
		!strings.Contains(got, "[host.\"http://127.0.0.1:65001\"]\n  capabilities = [\"pull\", \"resolve\"]\n") {
		t.Errorf("docker.io hosts.toml:\n%s", got)
	}

	// Re-run: unchanged.
	again, err := Containerd(opts)
	if err != nil || again[0].Action != Unchanged {
		t.Fatalf("re-run: %v %+v", err, again)
	}
	// Another mirror: rewritten from scratch, no backup of our own file.
	opts2 := opts
	opts2.Mirror = "http://127.0.0.1:7777/"
	again, err = Containerd(opts2)
	if err != nil || again[0].Action != Update || again[0].Backup != "" {
		t.Fatalf("new mirror: %v %+v", err, again[0])
	}
	d := parseHosts(t, filepath.Join(dir, "docker.io", "hosts.toml"))
	if _, ok := d.Host["http://127.0.0.1:7777"]; !ok || len(d.Host) != 1 {
		t.Fatalf("new mirror hosts %+v", d.Host)
	}

	// Undo removes what we created.
	undone, err := UndoContainerd(ContainerdOptions{CertsDir: dir, Registries: opts.Registries})
	if err != nil {
		t.Fatal(err)
	}
	for _, ch := range undone {
		if ch.Action != Remove || exists(ch.Path) {
			t.Errorf("undo: %+v", ch)
		}
	}
	if exists(filepath.Join(dir, "docker.io")) {
		t.Error("empty registry dir left")
	}
	// Undo again: nothing.
	undone, err = UndoContainerd(ContainerdOptions{CertsDir: dir, Registries: []string{"docker.io"}})
	if err != nil || undone[0].Action != Nothing {
		t.Fatalf("second undo: %v %+v", err, undone)
	}
	noTemps(t, dir)
}

const existingHosts = `# my registry settings
server = "https://mirror.corp.example"
ca = "/etc/ssl/corp-ca.pem"

# the corp cache
[host."https://cache.corp.example"]
  capabilities = ["pull"]
  skip_verify = true

[host."http://127.0.0.1:65001"]
  capabilities = ["push"]
`

func TestContainerdMergeBackupUndo(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "docker.io", "hosts.toml")
	write(t, path, existingHosts)
	opts := ContainerdOptions{CertsDir: dir, Registries: []string{"docker.io"}}

	// Dry run: diff, nothing written.
	dry := opts
	dry.DryRun = true
	changes, err := Containerd(dry)
	if err != nil {
		t.Fatal(err)
	}
	ch := changes[0]
	if ch.Action != Update || !ch.DryRun || ch.Backup != path+BackupSuffix || read(t, path) != existingHosts || exists(path+BackupSuffix) {
		t.Fatalf("dry run: %+v", ch)
	}
	diff := ch.Diff()
	if !strings.Contains(diff, "--- "+path) || !strings.Contains(diff, "+# Written by") || !strings.Contains(diff, `-  capabilities = ["push"]`) {
		t.Errorf("diff:\n%s", diff)
	}
	if !strings.HasPrefix(ch.String(), "would update ") {
		t.Errorf("summary %q", ch.String())
	}

	changes, err = Containerd(opts)
	if err != nil {
		t.Fatal(err)
	}
	if changes[0].Action != Update || read(t, path+BackupSuffix) != existingHosts {
		t.Fatalf("apply: %+v", changes[0])
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want the original 0600", fi.Mode().Perm())
	}
	d := parseHosts(t, path)
	// The user's server and ca stay; the corp cache stays after the mirror;
	// the old table for the mirror's URL is replaced.
	if d.Server != "https://mirror.corp.example" || d.CA != "/etc/ssl/corp-ca.pem" {
		t.Errorf("top-level lost: %+v", d)
	}
	if len(d.Host) != 2 || !d.Host["https://cache.corp.example"].SkipVerify ||
		!reflect.DeepEqual(d.Host[DefaultMirror].Capabilities, []string{"pull", "resolve"}) {
		t.Errorf("hosts: %+v", d.Host)
	}
	got := read(t, path)
	if strings.Index(got, DefaultMirror) > strings.Index(got, "cache.corp.example") {
		t.Errorf("mirror must come first:\n%s", got)
	}
	if !strings.Contains(got, "# the corp cache\n[host.\"https://cache.corp.example\"]") {
		t.Errorf("comment lost:\n%s", got)
	}

	// Re-run keeps the first backup and rebuilds from it.
	changes, err = Containerd(opts)
	if err != nil || changes[0].Action != Unchanged || read(t, path+BackupSuffix) != existingHosts {
		t.Fatalf("re-run: %v %+v", err, changes)
	}

	// Someone else rewrote the file: refused while our backup exists.
	write(t, path, "server = \"https://other\"\n")
	if _, err := Containerd(opts); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("foreign file over our backup: %v", err)
	}
	write(t, path, got)

	// Undo restores the original.
	undone, err := UndoContainerd(opts)
	if err != nil || undone[0].Action != Restore {
		t.Fatalf("undo: %v %+v", err, undone)
	}
	if read(t, path) != existingHosts || exists(path+BackupSuffix) {
		t.Fatal("original not restored")
	}
	noTemps(t, dir)
}

func TestContainerdInvalid(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ghcr.io", "hosts.toml")
	write(t, path, "server = \n[[[")
	if _, err := Containerd(ContainerdOptions{CertsDir: dir, Registries: []string{"ghcr.io"}}); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("invalid TOML: %v", err)
	}
	if read(t, path) != "server = \n[[[" || exists(path+BackupSuffix) {
		t.Fatal("invalid file touched")
	}
	for _, o := range []ContainerdOptions{
		{CertsDir: dir},
		{CertsDir: dir, Registries: []string{"https://ghcr.io"}},
		{CertsDir: dir, Registries: []string{"../etc"}},
		{CertsDir: dir, Registries: []string{"a/b"}},
		{CertsDir: dir, Registries: []string{"ghcr.io", "ghcr.io"}},
		{CertsDir: dir, Registries: []string{"ghcr.io=ftp://x"}},
		{CertsDir: dir, Registries: []string{"ghcr.io:99999"}},
		{CertsDir: dir, Registries: []string{"docker.io"}, Mirror: "127.0.0.1:65001"},
		{CertsDir: dir, Registries: []string{"docker.io"}, Mirror: "http://127.0.0.1:65001/v2"},
		{CertsDir: dir, Registries: []string{"docker.io"}, Mirror: "http://u:p@127.0.0.1:65001"},
	} {
		if _, err := Containerd(o); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("%+v: %v, want ErrInvalid", o, err)
		}
	}
	for _, ok := range []string{"docker.io", "localhost:5000", "[::1]:5000", "_default", "10.1.2.3", "my-reg.example.com"} {
		if !validRegistryHost(ok) {
			t.Errorf("%s refused", ok)
		}
	}
	// _default has no server line.
	if _, err := Containerd(ContainerdOptions{CertsDir: dir, Registries: []string{"_default"}}); err != nil {
		t.Fatal(err)
	}
	if d := parseHosts(t, filepath.Join(dir, "_default", "hosts.toml")); d.Server != "" || len(d.Host) != 1 {
		t.Fatalf("_default: %+v", d)
	}
}

const existingDaemonJSON = `{
    "log-driver": "json-file",
    "log-opts": {"max-size": "10m", "max-file": "3"},
    "registry-mirrors": ["https://mirror.gcr.io", "http://127.0.0.1:65001/", "https://b.example"],
    "default-ulimits": {"nofile": {"Name": "nofile", "Hard": 65536, "Soft": 65536}},
    "data-root": "/var/lib/docker"
}
`

func decodeJSON(t *testing.T, s string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		t.Fatalf("%v\n%s", err, s)
	}
	return m
}

func TestDockerMerge(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     []any
	}{
		{"existing mirrors", existingDaemonJSON, []any{DefaultMirror, "https://mirror.gcr.io", "https://b.example"}},
		{"no mirrors key", "{\n\t\"debug\": true,\n\t\"hosts\": [\"unix:///var/run/docker.sock\"]\n}\n", []any{DefaultMirror}},
		{"one line", `{"debug":true}`, []any{DefaultMirror}},
		{"empty object", "{}\n", []any{DefaultMirror}},
		{"empty mirrors", `{"registry-mirrors": [], "x": 1}`, []any{DefaultMirror}},
		{"empty file", "", []any{DefaultMirror}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "daemon.json")
			write(t, path, tc.in)
			ch, err := Docker(DockerOptions{DaemonJSON: path})
			if err != nil {
				t.Fatal(err)
			}
			if ch.Action != Update || ch.Backup != path+BackupSuffix || read(t, path+BackupSuffix) != tc.in {
				t.Fatalf("change %+v", ch)
			}
			out := read(t, path)
			got := decodeJSON(t, out)
			if !reflect.DeepEqual(got["registry-mirrors"], tc.want) {
				t.Errorf("mirrors %v, want %v\n%s", got["registry-mirrors"], tc.want, out)
			}
			if strings.TrimSpace(tc.in) != "" {
				before := decodeJSON(t, tc.in)
				delete(before, "registry-mirrors")
				delete(got, "registry-mirrors")
				if !reflect.DeepEqual(before, got) {
					t.Errorf("other keys changed:\n%s", out)
				}
			}
			// Idempotent.
			if ch, err := Docker(DockerOptions{DaemonJSON: path}); err != nil || ch.Action != Unchanged {
				t.Fatalf("re-run: %v %+v", err, ch)
			}
			// Undo restores the exact bytes.
			if ch, err := UndoDocker(DockerOptions{DaemonJSON: path}); err != nil || ch.Action != Restore {
				t.Fatalf("undo: %v %+v", err, ch)
			}
			if read(t, path) != tc.in || exists(path+BackupSuffix) {
				t.Fatal("not restored")
			}
		})
	}
}

func TestDockerKeepsFormatting(t *testing.T) {
	path := filepath.Join(t.TempDir(), "daemon.json")
	write(t, path, existingDaemonJSON)
	if _, err := Docker(DockerOptions{DaemonJSON: path, Mirror: "http://10.9.9.9:65001"}); err != nil {
		t.Fatal(err)
	}
	want := strings.Replace(existingDaemonJSON,
		`["https://mirror.gcr.io", "http://127.0.0.1:65001/", "https://b.example"]`,
		"[\n        \"http://10.9.9.9:65001\",\n        \"https://mirror.gcr.io\",\n        \"http://127.0.0.1:65001/\",\n        \"https://b.example\"\n    ]", 1)
	if got := read(t, path); got != want {
		t.Fatalf("got:\n%s\nwant:\n%s", got, want)
	}
}

func TestDockerCreateAndUndo(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "docker", "daemon.json")
	dry, err := Docker(DockerOptions{DaemonJSON: path, DryRun: true})
	if err != nil || dry.Action != Create || exists(path) {
		t.Fatalf("dry run: %v %+v", err, dry)
	}
	if !strings.Contains(dry.Diff(), "--- /dev/null") || !strings.Contains(dry.Diff(), `+    "http://127.0.0.1:65001"`) {
		t.Errorf("diff:\n%s", dry.Diff())
	}
	ch, err := Docker(DockerOptions{DaemonJSON: path})
	if err != nil || ch.Action != Create || ch.Backup != "" {
		t.Fatalf("create: %v %+v", err, ch)
	}
	if got := decodeJSON(t, read(t, path)); !reflect.DeepEqual(got, map[string]any{"registry-mirrors": []any{DefaultMirror}}) {
		t.Fatalf("created %v", got)
	}
	if !exists(path+CreatedSuffix) || exists(path+BackupSuffix) {
		t.Fatal("want the created marker and no backup")
	}
	// A second mirror run: our own file, no backup.
	if ch, err := Docker(DockerOptions{DaemonJSON: path, Mirror: "http://127.0.0.1:1"}); err != nil || ch.Backup != "" || ch.Action != Update {
		t.Fatalf("re-run: %v %+v", err, ch)
	}
	// Dry-run undo says remove, does nothing.
	if ch, err := UndoDocker(DockerOptions{DaemonJSON: path, DryRun: true}); err != nil || ch.Action != Remove || !exists(path) {
		t.Fatalf("dry undo: %v %+v", err, ch)
	}
	if ch, err := UndoDocker(DockerOptions{DaemonJSON: path}); err != nil || ch.Action != Remove {
		t.Fatalf("undo: %v %+v", err, ch)
	}
	if exists(path) || exists(path+CreatedSuffix) {
		t.Fatal("created file or marker left")
	}
	// Undo with nothing to undo.
	if ch, err := UndoDocker(DockerOptions{DaemonJSON: path}); err != nil || ch.Action != Nothing {
		t.Fatalf("second undo: %v %+v", err, ch)
	}
	// Created by us, then someone added settings: undo refuses to delete.
	if _, err := Docker(DockerOptions{DaemonJSON: path}); err != nil {
		t.Fatal(err)
	}
	write(t, path, `{"registry-mirrors": ["http://127.0.0.1:65001"], "debug": true}`)
	if _, err := UndoDocker(DockerOptions{DaemonJSON: path}); !errors.Is(err, errdefs.ErrInvalid) || !exists(path) {
		t.Fatalf("undo over user settings: %v", err)
	}
	noTemps(t, dir)
}

func TestDockerInvalidUntouched(t *testing.T) {
	for _, in := range []string{
		`{"debug": true,}`,
		`["registry-mirrors"]`,
		`{"registry-mirrors": "http://x"}`,
		`{"registry-mirrors": [1]}`,
		`{"registry-mirrors": [], "registry-mirrors": []}`,
		`{"a": 1} {"b": 2}`,
		"not json",
	} {
		path := filepath.Join(t.TempDir(), "daemon.json")
		write(t, path, in)
		_, err := Docker(DockerOptions{DaemonJSON: path})
		if !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", in, err)
		}
		if read(t, path) != in || exists(path+BackupSuffix) {
			t.Errorf("%s: file touched", in)
		}
	}
	if _, err := Docker(DockerOptions{DaemonJSON: filepath.Join(t.TempDir(), "d.json"), Mirror: "ftp://x"}); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("bad mirror: %v", err)
	}
	// A directory where the file should be.
	dir := t.TempDir()
	if _, err := Docker(DockerOptions{DaemonJSON: dir}); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("directory: %v", err)
	}
}

func TestUnifiedDiff(t *testing.T) {
	a := "1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\n12\n"
	b := "1\n2\nthree\n4\n5\n6\n7\n8\n9\n10\n11\n12\n13\n"
	got := UnifiedDiff("a", "b", a, b)
	want := `--- a
+++ b
@@ -1,6 +1,6 @@
 1
 2
-3
+three
 4
 5
 6
@@ -10,3 +10,4 @@
 10
 11
 12
+13
`
	if got != want {
		t.Fatalf("got:\n%s\nwant:\n%s", got, want)
	}
	if UnifiedDiff("a", "b", "x\n", "x\n") != "" {
		t.Fatal("equal inputs")
	}
}
