package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pouchfly/pouchfly/internal/hostconfig"
)

func TestMirrorExitCodes(t *testing.T) {
	dir := t.TempDir()
	daemonJSON := filepath.Join(dir, "daemon.json")
	bad := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(bad, []byte(`{"debug": tru`), 0o644); err != nil {
		t.Fatal(err)
	}
	certs := filepath.Join(dir, "certs.d")
	for _, tc := range []struct {
		name string
		args []string
		code int
	}{
		{"docker", []string{"mirror", "docker", "--daemon-json", daemonJSON}, exitOK},
		{"docker again", []string{"mirror", "docker", "--daemon-json", daemonJSON}, exitOK},
		{"docker undo", []string{"mirror", "docker", "--daemon-json", daemonJSON, "--undo"}, exitOK},
		{"invalid json", []string{"mirror", "docker", "--daemon-json", bad}, exitUsage},
		{"bad mirror", []string{"mirror", "docker", "--daemon-json", daemonJSON, "--mirror", "127.0.0.1:65001"}, exitUsage},
		{"containerd", []string{"mirror", "containerd", "--certs-dir", certs, "--registry", "docker.io", "--registry", "ghcr.io"}, exitOK},
		{"containerd undo", []string{"mirror", "containerd", "--certs-dir", certs, "--registry", "docker.io", "--registry", "ghcr.io", "--undo"}, exitOK},
		{"bad registry", []string{"mirror", "containerd", "--certs-dir", certs, "--registry", "https://ghcr.io"}, exitUsage},
		{"no runtime", []string{"mirror"}, exitUsage},
		{"unknown runtime", []string{"mirror", "podman"}, exitUsage},
		{"stray arg", []string{"mirror", "docker", "x"}, exitUsage},
		{"bad flag", []string{"mirror", "docker", "--nope"}, exitUsage},
		{"unwritable", []string{"mirror", "docker", "--daemon-json", filepath.Join(bad, "daemon.json")}, exitLocalIO},
	} {
		if got := run(tc.args); got != tc.code {
			t.Errorf("%s: exit %d, want %d", tc.name, got, tc.code)
		}
	}
	if b, _ := os.ReadFile(bad); string(b) != `{"debug": tru` {
		t.Error("invalid daemon.json was changed")
	}
	if _, err := os.Stat(daemonJSON); !os.IsNotExist(err) {
		t.Error("undo left daemon.json")
	}
	if _, err := os.Stat(filepath.Join(certs, "docker.io", "hosts.toml")); !os.IsNotExist(err) {
		t.Error("undo left hosts.toml")
	}
}

func TestMirrorDryRunOutput(t *testing.T) {
	dir := t.TempDir()
	var out bytes.Buffer
	c := mirrorCmd()
	c.SetOut(&out)
	c.SetArgs([]string{"containerd", "--certs-dir", dir, "--registry", "docker.io", "--mirror", "http://127.0.0.1:7777", "--dry-run"})
	if err := c.Execute(); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	for _, want := range []string{
		"would create " + filepath.Join(dir, "docker.io", "hosts.toml"),
		"+server = \"https://registry-1.docker.io\"",
		"+[host.\"http://127.0.0.1:7777\"]",
		"+  capabilities = [\"pull\", \"resolve\"]",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q:\n%s", want, s)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("dry run wrote %v", ents)
	}

	out.Reset()
	daemonJSON := filepath.Join(dir, "daemon.json")
	if err := os.WriteFile(daemonJSON, []byte(`{"debug": true}`), 0o644); err != nil {
		t.Fatal(err)
	}
	c = mirrorCmd()
	c.SetOut(&out)
	c.SetArgs([]string{"docker", "--daemon-json", daemonJSON})
	if err := c.Execute(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "update "+daemonJSON+" (backup "+daemonJSON+hostconfig.BackupSuffix+")") ||
		!strings.Contains(out.String(), "reload dockerd") {
		t.Errorf("output:\n%s", out.String())
	}
	if b, _ := os.ReadFile(daemonJSON); string(b) != `{"debug": true, "registry-mirrors": ["http://127.0.0.1:65001"]}` {
		t.Errorf("daemon.json: %s", b)
	}
}
