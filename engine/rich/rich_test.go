package rich

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/pouchfly/pouchfly/internal/errdefs"
)

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		opts       Options
		privileged bool
		errSub     string
	}{
		{Options{}, false, ""},
		{Options{Mode: ModeDumbInit, InitScript: "/init.sh"}, false, ""},
		{Options{Mode: ModeSbinInit}, false, ""},
		{Options{Mode: ModeSystemd}, true, ""},
		{Options{Mode: ModeSystemd}, false, "rich mode systemd requires --privileged"},
		{Options{Mode: "upstart"}, true, "unknown rich mode"},
		{Options{InitScript: "init.sh"}, false, "absolute path"},
		{Options{StatusDir: "run"}, false, "not absolute"},
	} {
		err := Validate(tc.opts, tc.privileged)
		if tc.errSub == "" {
			if err != nil {
				t.Errorf("Validate(%+v, %v) = %v", tc.opts, tc.privileged, err)
			}
			continue
		}
		if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), tc.errSub) {
			t.Errorf("Validate(%+v, %v) = %v, want ErrInvalid with %q", tc.opts, tc.privileged, err, tc.errSub)
		}
	}
}

func baseSpec(args ...string) *specs.Spec {
	return &specs.Spec{
		Process: &specs.Process{Args: args, Env: []string{"PATH=/bin"}},
		Mounts:  []specs.Mount{{Destination: "/proc", Type: "proc", Source: "proc"}},
	}
}

func TestApplyDumbInit(t *testing.T) {
	s := baseSpec("sh", "-c", "echo hi")
	if err := Apply(s, "/usr/libexec/pouch-init", Options{InitScript: "/etc/init.sh", StatusDir: "/var/lib/pouchd/c/1/rich"}); err != nil {
		t.Fatal(err)
	}
	want := []string{InitPath, "--mode", "dumb-init", "--initscript", "/etc/init.sh", "--env-file", EnvFile,
		"--status-file", "/.pouch/run/status.json", "--", "sh", "-c", "echo hi"}
	if !slices.Equal(s.Process.Args, want) {
		t.Fatalf("args = %q\nwant   %q", s.Process.Args, want)
	}
	if len(s.Mounts) != 3 {
		t.Fatalf("mounts = %+v", s.Mounts)
	}
	m := s.Mounts[1]
	if m.Destination != InitPath || m.Source != "/usr/libexec/pouch-init" || m.Type != "bind" || !slices.Contains(m.Options, "ro") {
		t.Errorf("init mount = %+v", m)
	}
	r := s.Mounts[2]
	if r.Destination != RunDir || r.Source != "/var/lib/pouchd/c/1/rich" || !slices.Contains(r.Options, "rw") {
		t.Errorf("run dir mount = %+v", r)
	}
	if err := Apply(s, "/usr/libexec/pouch-init", Options{}); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("second Apply = %v, want ErrInvalid", err)
	}
}

func TestApplyModes(t *testing.T) {
	s := baseSpec()
	if err := Apply(s, "/pouch-init", Options{}); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("dumb-init without a command = %v", err)
	}
	s = baseSpec("/bin/true")
	if err := Apply(s, "relative", Options{}); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("relative init path = %v", err)
	}
	if err := Apply(&specs.Spec{}, "/pouch-init", Options{}); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("no process = %v", err)
	}

	s = baseSpec()
	if err := Apply(s, "/pouch-init", Options{Mode: ModeSbinInit}); err != nil {
		t.Fatal(err)
	}
	if want := []string{InitPath, "--mode", "sbin-init", "--env-file", EnvFile, "--"}; !slices.Equal(s.Process.Args, want) {
		t.Errorf("sbin-init args = %q", s.Process.Args)
	}

	s = baseSpec("/sbin/init")
	s.Mounts = append(s.Mounts, specs.Mount{Destination: "/tmp", Type: "bind", Source: "/host/tmp"})
	if err := Apply(s, "/pouch-init", Options{Mode: ModeSystemd}); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(s.Process.Env, "container=pouch") {
		t.Errorf("systemd env = %q", s.Process.Env)
	}
	var tmpfs []string
	for _, m := range s.Mounts {
		if m.Type == "tmpfs" {
			tmpfs = append(tmpfs, m.Destination)
		}
	}
	if !slices.Equal(tmpfs, []string{"/run", "/run/lock"}) {
		t.Errorf("systemd tmpfs mounts = %q (the spec's own /tmp must stay)", tmpfs)
	}
}

func TestWaitStarted(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	go func() {
		time.Sleep(50 * time.Millisecond)
		WriteStatus(filepath.Join(dir, StatusFile), Status{State: StateRunning, Pid: 7})
	}()
	st, err := WaitStarted(ctx, dir, nil)
	if err != nil || st.Pid != 7 {
		t.Fatalf("WaitStarted = %+v, %v", st, err)
	}
	WriteStatus(filepath.Join(dir, StatusFile), Status{State: StateInitScriptFailed, ExitCode: 3})
	if _, err := WaitStarted(ctx, dir, nil); !errors.Is(err, ErrInitScript) || !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("WaitStarted after a failed initscript = %v", err)
	}
	os.Remove(filepath.Join(dir, StatusFile))
	exited := make(chan struct{})
	close(exited)
	if _, err := WaitStarted(ctx, dir, exited); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("WaitStarted after exit = %v", err)
	}
	short, c2 := context.WithTimeout(ctx, 30*time.Millisecond)
	defer c2()
	if _, err := WaitStarted(short, dir, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitStarted timeout = %v", err)
	}
}
