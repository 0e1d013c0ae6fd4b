package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pouchfly/pouchfly/test/cluster"
	"github.com/pouchfly/pouchfly/test/origin"
)

// listDir returns the names in dir.
func listDir(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func TestDfgetExitCodesAndNoLeftovers(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	c, err := cluster.New(t.TempDir(), cluster.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	data := origin.Random(3<<20+17, 5)
	digest := c.Origin.Add("f", data)
	// The embedded peer's temp dirs must go too: point TMPDIR at a dir we watch.
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	out := t.TempDir()
	sn := "--supernode=" + c.Node.Addr()
	sock := "--socket=" + filepath.Join(tmp, "nosuch.sock")
	wrong := "sha256:" + strings.Repeat("0", 64)

	for _, tc := range []struct {
		name string
		args []string
		code int
		file bool
	}{
		{"ok", []string{c.Origin.URL("f"), "-O", filepath.Join(out, "ok"), "--digest", digest, sn, sock, "-q"}, exitOK, true},
		{"ok without digest", []string{c.Origin.URL("f"), "-O", filepath.Join(out, "ok2"), sn, sock, "-q"}, exitOK, true},
		{"404", []string{c.Origin.URL("missing"), "-O", filepath.Join(out, "a"), sn, sock, "-q"}, exitNotFound, false},
		{"digest mismatch", []string{c.Origin.URL("f") + "?v=2", "-O", filepath.Join(out, "b"), "--digest", wrong, sn, sock, "-q"}, exitDigest, false},
		{"bad digest", []string{c.Origin.URL("f"), "-O", filepath.Join(out, "c"), "--digest", "md5:x", sn, sock}, exitUsage, false},
		{"bad url", []string{"ftp://x/y", "-O", filepath.Join(out, "d"), sn, sock}, exitUsage, false},
		{"no output", []string{c.Origin.URL("f"), sn, sock}, exitUsage, false},
		{"unknown flag", []string{c.Origin.URL("f"), "-O", filepath.Join(out, "e"), "--frobnicate"}, exitUsage, false},
		{"bad header", []string{c.Origin.URL("f"), "-O", filepath.Join(out, "g"), "--header", "NoColon", sn, sock}, exitUsage, false},
		{"output dir missing", []string{c.Origin.URL("f"), "-O", filepath.Join(out, "nodir", "h"), sn, sock, "-q"}, exitLocalIO, false},
		{"no supernode, no back-source", []string{c.Origin.URL("f"), "-O", filepath.Join(out, "i"), "--supernode=127.0.0.1:1", "--no-back-source", sock, "-q"}, exitUnavailable, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if code := run(tc.args); code != tc.code {
				t.Fatalf("exit %d, want %d", code, tc.code)
			}
			_, err := os.Stat(tc.args[2])
			if tc.file != (err == nil) {
				t.Fatalf("output exists = %v, want %v", err == nil, tc.file)
			}
			if tc.file {
				b, _ := os.ReadFile(tc.args[2])
				if string(b) != string(data) {
					t.Fatal("output differs from the origin's file")
				}
			}
		})
	}
	// No temp file under any name, no embedded-peer dir left behind.
	for _, n := range listDir(t, out) {
		if n != "ok" && n != "ok2" {
			t.Errorf("left behind in the output dir: %s", n)
		}
	}
	if left := listDir(t, tmp); len(left) != 0 {
		t.Errorf("left behind in TMPDIR: %v", left)
	}
}

func TestDfgetTimeout(t *testing.T) {
	o := origin.New()
	o.Add("f", origin.Random(1<<20, 1))
	o.Delay = 3 * time.Second
	if err := o.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	out := filepath.Join(t.TempDir(), "f")
	start := time.Now()
	code := run([]string{o.URL("f"), "-O", out, "--timeout", "500ms", "--supernode=127.0.0.1:1", "--socket=/nonexistent.sock", "-q"})
	if code != exitTimeout {
		t.Fatalf("exit %d, want %d (timeout)", code, exitTimeout)
	}
	if _, err := os.Stat(out); err == nil {
		t.Fatal("output exists after a timeout")
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("took %v to give up after a 500ms timeout", d)
	}
}

func TestDfgetThroughDaemon(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Peers: 1})
	data := origin.Random(5<<20, 8)
	digest := c.Origin.Add("f", data)
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- c.Peers[0].ServeAPI(ctx, sock) }()
	defer func() { cancel(); <-served }()
	for i := 0; i < 100; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	out := t.TempDir()
	if code := run([]string{c.Origin.URL("f"), "-O", filepath.Join(out, "f"), "--digest", digest, "--socket", sock, "-q"}); code != exitOK {
		t.Fatalf("exit %d", code)
	}
	if b, _ := os.ReadFile(filepath.Join(out, "f")); string(b) != string(data) {
		t.Fatal("content differs")
	}
	ts, err := c.Peers[0].Tasks(ctx)
	if err != nil || len(ts) != 1 || ts[0].ID != digest || !ts[0].Complete {
		t.Fatalf("the daemon did not do the download: %+v %v", ts, err)
	}
	for _, tc := range []struct {
		args []string
		code int
	}{
		{[]string{c.Origin.URL("nope"), "-O", filepath.Join(out, "x")}, exitNotFound},
		{[]string{c.Origin.URL("f") + "?v=3", "-O", filepath.Join(out, "y"), "--digest", "sha256:" + strings.Repeat("1", 64)}, exitDigest},
	} {
		if code := run(append(tc.args, "--socket", sock, "-q")); code != tc.code {
			t.Errorf("%v: exit %d, want %d", tc.args, code, tc.code)
		}
	}
	if left := listDir(t, out); len(left) != 1 {
		t.Errorf("output dir holds %v, want only f", left)
	}
}
