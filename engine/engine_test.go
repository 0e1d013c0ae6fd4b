package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/pelletier/go-toml/v2"

	"github.com/pouchfly/pouchfly/engine/api"
	"github.com/pouchfly/pouchfly/internal/errdefs"
)

func TestParseBind(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want bindSpec
		err  bool
	}{
		{in: "/host:/data", want: bindSpec{Source: "/host", Dest: "/data"}},
		{in: "/host/../h:/data/:ro", want: bindSpec{Source: "/h", Dest: "/data", ReadOnly: true}},
		{in: "vol:/data:rw", want: bindSpec{Volume: "vol", Dest: "/data"}},
		{in: "/anon", want: bindSpec{Dest: "/anon", Anonymous: true}},
		{in: "vol:data", err: true},
		{in: "vol:/", err: true},
		{in: "/a:/b:rx", err: true},
		{in: "a:b:c:d", err: true},
		{in: ":/data", err: true},
	} {
		got, err := parseBind(tc.in)
		if tc.err {
			if !errors.Is(err, errdefs.ErrInvalid) {
				t.Errorf("%q: err = %v, want ErrInvalid", tc.in, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}

func TestValidRestart(t *testing.T) {
	for _, tc := range []struct {
		p    api.RestartPolicy
		rm   bool
		good bool
	}{
		{api.RestartPolicy{}, true, true},
		{api.RestartPolicy{Name: "no"}, true, true},
		{api.RestartPolicy{Name: "always"}, false, true},
		{api.RestartPolicy{Name: "always"}, true, false},
		{api.RestartPolicy{Name: "always", MaximumRetryCount: 2}, false, false},
		{api.RestartPolicy{Name: "on-failure", MaximumRetryCount: 3}, false, true},
		{api.RestartPolicy{Name: "on-failure", MaximumRetryCount: -1}, false, false},
		{api.RestartPolicy{Name: "unless-stopped"}, false, true},
		{api.RestartPolicy{Name: "sometimes"}, false, false},
	} {
		if err := validRestart(tc.p, tc.rm); (err == nil) != tc.good {
			t.Errorf("%+v rm=%v: err = %v", tc.p, tc.rm, err)
		}
	}
}

func TestShouldRestart(t *testing.T) {
	e := &Engine{ctx: context.Background()}
	for _, tc := range []struct {
		policy   api.RestartPolicy
		code     int
		restarts int
		manual   bool
		want     bool
	}{
		{api.RestartPolicy{Name: "always"}, 0, 0, false, true},
		{api.RestartPolicy{Name: "always"}, 0, 0, true, false},
		{api.RestartPolicy{Name: "unless-stopped"}, 1, 5, false, true},
		{api.RestartPolicy{Name: "on-failure"}, 0, 0, false, false},
		{api.RestartPolicy{Name: "on-failure"}, 1, 100, false, true},
		{api.RestartPolicy{Name: "on-failure", MaximumRetryCount: 2}, 1, 2, false, false},
		{api.RestartPolicy{Name: "on-failure", MaximumRetryCount: 2}, 1, 1, false, true},
		{api.RestartPolicy{Name: "no"}, 1, 0, false, false},
	} {
		c := newContainer(t.TempDir(), containerMeta{HostConfig: api.HostConfig{RestartPolicy: tc.policy}, RestartCount: tc.restarts, ManualStop: tc.manual})
		got, delay := e.shouldRestartLocked(c, tc.code, 0)
		if got != tc.want {
			t.Errorf("%+v code %d restarts %d manual %v: %v, want %v", tc.policy, tc.code, tc.restarts, tc.manual, got, tc.want)
		}
		if got && (delay < 100e6 || delay > 10e9) {
			t.Errorf("delay %v out of range", delay)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	for name, mod := range map[string]func(*Config){
		"relative home":      func(c *Config) { c.Home = "var/lib/pouchd" },
		"bad listen":         func(c *Config) { c.Listen = "/var/run/x.sock" },
		"bad mirror":         func(c *Config) { c.Mirror = "ftp://x" },
		"registry no host":   func(c *Config) { c.Registries = []Registry{{Endpoint: "http://x"}} },
		"registry twice":     func(c *Config) { c.Registries = []Registry{{Host: "a"}, {Host: "a"}} },
		"registry bad url":   func(c *Config) { c.Registries = []Registry{{Host: "a", Endpoint: "a:5000"}} },
		"runtime no path":    func(c *Config) { c.Runtimes = map[string]Runtime{"kata": {}} },
		"unknown default rt": func(c *Config) { c.DefaultRuntime = "kata" },
		"relative cgroup":    func(c *Config) { c.CgroupParent = "pouchd" },
		"bad namespace":      func(c *Config) { c.Namespace = "a/b" },
		"bad quota driver":   func(c *Config) { c.Quota.Driver = "zfs" },
	} {
		c := DefaultConfig()
		mod(&c)
		if err := c.Validate(); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("%s: err = %v, want ErrInvalid", name, err)
		}
	}
}

func TestRegistryEndpoint(t *testing.T) {
	for _, tc := range []struct {
		r    Registry
		ep   string
		skip bool
	}{
		{Registry{Host: "docker.io"}, "https://registry-1.docker.io", false},
		{Registry{Host: "reg:5000"}, "https://reg:5000", false},
		{Registry{Host: "reg:5000", Insecure: true}, "http://reg:5000", false},
		{Registry{Host: "reg", Endpoint: "https://10.0.0.1", Insecure: true}, "https://10.0.0.1", true},
		{Registry{Host: "reg", Endpoint: "http://10.0.0.1:5000"}, "http://10.0.0.1:5000", false},
	} {
		ep, skip := registryEndpoint(tc.r)
		if ep != tc.ep || skip != tc.skip {
			t.Errorf("%+v = %s %v, want %s %v", tc.r, ep, skip, tc.ep, tc.skip)
		}
	}
}

func TestWriteHosts(t *testing.T) {
	dir := t.TempDir()
	cfg := DefaultConfig()
	cfg.Home = dir
	cfg.Mirror = "http://127.0.0.1:65001"
	cfg.Registries = []Registry{{Host: "10.0.0.1:5000", Endpoint: "http://10.0.0.1:5000"}, {Host: "secure.local", Endpoint: "https://secure.local", Insecure: true}}
	e, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	// A stale file from an earlier config goes.
	os.MkdirAll(filepath.Join(e.certsDir, "old.registry"), 0o755)
	if err := e.writeHosts(); err != nil {
		t.Fatal(err)
	}
	type hostsFile struct {
		Server     string `toml:"server"`
		SkipVerify bool   `toml:"skip_verify"`
		Host       map[string]struct {
			Capabilities []string `toml:"capabilities"`
		} `toml:"host"`
	}
	for reg, want := range map[string]struct {
		server string
		skip   bool
	}{
		"_default":      {"", false},
		"docker.io":     {"https://registry-1.docker.io", false},
		"10.0.0.1:5000": {"http://10.0.0.1:5000", false},
		"secure.local":  {"https://secure.local", true},
	} {
		b, err := os.ReadFile(filepath.Join(e.certsDir, reg, "hosts.toml"))
		if err != nil {
			t.Fatalf("%s: %v", reg, err)
		}
		var h hostsFile
		if err := toml.Unmarshal(b, &h); err != nil {
			t.Fatalf("%s: %v\n%s", reg, err, b)
		}
		if h.Server != want.server || h.SkipVerify != want.skip {
			t.Errorf("%s: server %q skip %v, want %q %v\n%s", reg, h.Server, h.SkipVerify, want.server, want.skip, b)
		}
		if _, ok := h.Host["http://127.0.0.1:65001"]; !ok {
			t.Errorf("%s: the mirror is not a host:\n%s", reg, b)
		}
	}
	if _, err := os.Stat(filepath.Join(e.certsDir, "old.registry")); err == nil {
		t.Errorf("stale registry directory kept")
	}
}

func TestStatusOf(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int
	}{
		{fmt.Errorf("x: %w", errdefs.ErrNotFound), http.StatusNotFound},
		{fmt.Errorf("x: %w", errdefs.ErrInvalid), http.StatusBadRequest},
		{fmt.Errorf("x: %w", ErrConflict), http.StatusConflict},
		{fmt.Errorf("x: %w", errdefs.ErrUnavailable), http.StatusServiceUnavailable},
		{fmt.Errorf("x: %w", errNotModified), http.StatusNotModified},
		{fmt.Errorf("x: %w", cerrdefs.ErrNotFound), http.StatusNotFound},
		{fmt.Errorf("x: %w", cerrdefs.ErrAlreadyExists), http.StatusConflict},
		{errors.New("boom"), http.StatusInternalServerError},
	} {
		if got := statusOf(tc.err); got != tc.want {
			t.Errorf("statusOf(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
	if m := errorMessage(fmt.Errorf("no such container: x: %w", errdefs.ErrNotFound)); m != "no such container: x" {
		t.Errorf("errorMessage = %q", m)
	}
}

func TestNormalizeRef(t *testing.T) {
	for in, want := range map[string]string{
		"busybox":            "docker.io/library/busybox:latest",
		"reg:5000/app:v1":    "reg:5000/app:v1",
		"127.0.0.1:5000/t/b": "127.0.0.1:5000/t/b:latest",
		"ghcr.io/o/app@sha256:" + strings.Repeat("a", 64): "ghcr.io/o/app@sha256:" + strings.Repeat("a", 64),
	} {
		got, err := NormalizeRef(in)
		if err != nil || got != want {
			t.Errorf("NormalizeRef(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "Busybox", "a b"} {
		if _, err := NormalizeRef(bad); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("NormalizeRef(%q): err = %v", bad, err)
		}
	}
}

func TestMergeEnvAndTail(t *testing.T) {
	got := mergeEnv([]string{"PATH=/bin", "A=1"}, []string{"A=2", "B=3"})
	if strings.Join(got, ",") != "PATH=/bin,A=2,B=3" {
		t.Errorf("mergeEnv = %v", got)
	}
	for in, want := range map[string]int{"": -1, "all": -1, "5": 5, "0": 0, "x": -1, "-2": -1} {
		if got := parseTail(in); got != want {
			t.Errorf("parseTail(%q) = %d, want %d", in, got, want)
		}
	}
	if execExitCode(errors.New(`exec: "x": executable file not found in $PATH`)) != 127 ||
		execExitCode(errors.New("permission denied")) != 126 || execExitCode(errors.New("other")) != 128 {
		t.Errorf("execExitCode")
	}
}

// TestLogs writes a log through logWriter and reads it back with Logs
// (stream filter, tail), without containerd.
func TestLogs(t *testing.T) {
	dir := t.TempDir()
	e := &Engine{containers: map[string]*container{}, names: map[string]string{}, ctx: context.Background()}
	c := newContainer(dir, containerMeta{ID: strings.Repeat("ab", 32), Name: "logs"})
	c.State.StartedAt = c.Created.AddDate(1, 0, 0) // "exited"
	e.containers[c.ID] = c
	e.names["logs"] = c.ID
	lw, err := openLog(c.logPath())
	if err != nil {
		t.Fatal(err)
	}
	lw.write("stdout", []byte("one\ntwo\nthr"))
	lw.write("stdout", []byte("ee\n"))
	lw.write("stderr", []byte("err1\n"))
	lw.close()
	for _, tc := range []struct {
		o            LogsOptions
		stdout, serr string
	}{
		{LogsOptions{Stdout: true, Stderr: true, Tail: -1}, "one\ntwo\nthree\n", "err1\n"},
		{LogsOptions{Stdout: true, Tail: -1}, "one\ntwo\nthree\n", ""},
		{LogsOptions{Stderr: true, Tail: -1}, "", "err1\n"},
		{LogsOptions{Stdout: true, Stderr: true, Tail: 2}, "ee\n", "err1\n"},
		{LogsOptions{Stdout: true, Stderr: true, Tail: 0}, "", ""},
		{LogsOptions{Stdout: true, Stderr: true, Tail: -1, Follow: true}, "one\ntwo\nthree\n", "err1\n"},
	} {
		var o, se bytes.Buffer
		if err := e.Logs(context.Background(), "logs", tc.o, &o, &se); err != nil {
			t.Fatal(err)
		}
		if o.String() != tc.stdout || se.String() != tc.serr {
			t.Errorf("%+v: stdout %q stderr %q, want %q %q", tc.o, o.String(), se.String(), tc.stdout, tc.serr)
		}
	}
	if _, err := e.get("nosuch"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("get(nosuch) = %v", err)
	}
	if got, err := e.get("abab"); err != nil || got != c {
		t.Errorf("get by prefix: %v", err)
	}
}

// FuzzParseBind: any -v value parses or fails with ErrInvalid; a parsed
// bind has a clean absolute container path other than /, and exactly one
// of a clean absolute host path, a volume name or an anonymous volume.
func FuzzParseBind(f *testing.F) {
	for _, s := range []string{"/data", "/host:/data", "/host:/data:ro", "vol:/data:rw,z", "vol:/", ":/x", "a:b:c:d", "/h:rel", "/h:/d:bogus", "/h/../x:/d/./e/"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b, err := parseBind(s)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalid) {
				t.Fatalf("%q: error %v is not ErrInvalid", s, err)
			}
			return
		}
		if !path.IsAbs(b.Dest) || b.Dest == "/" || path.Clean(b.Dest) != b.Dest {
			t.Fatalf("%q: container path %q", s, b.Dest)
		}
		kinds := 0
		if b.Anonymous {
			kinds++
		}
		if b.Volume != "" {
			kinds++ // its name is the volume store's to validate
		}
		if b.Source != "" {
			kinds++
			if !filepath.IsAbs(b.Source) || filepath.Clean(b.Source) != b.Source {
				t.Fatalf("%q: host path %q", s, b.Source)
			}
		}
		if kinds != 1 {
			t.Fatalf("%q: %+v is not exactly one of a host path, a volume, an anonymous volume", s, b)
		}
	})
}
