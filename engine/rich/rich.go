// Package rich turns a container into a "rich container" without a forked
// runc: the engine bind-mounts the static pouch-init binary (cmd/pouch-init)
// into the container and makes it PID 1 by rewriting the OCI spec (Apply).
// pouch-init then, depending on the mode, reaps orphans and forwards
// signals to the command (dumb-init), or hands over to the image's own
// init (sbin-init, systemd) after running the --initscript and exporting
// the container's environment to login shells.
package rich

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/pouchfly/pouchfly/internal/errdefs"
)

// Rich modes (--rich-mode).
const (
	// ModeDumbInit runs the container's command under pouch-init, which
	// reaps orphaned processes and forwards signals to the command's
	// process group; the container exits with the command's status. The
	// default.
	ModeDumbInit = "dumb-init"
	// ModeSbinInit runs the initscript, then execs the image's /sbin/init
	// (the container's command is not run).
	ModeSbinInit = "sbin-init"
	// ModeSystemd runs the initscript, then execs systemd
	// (/lib/systemd/systemd, else /sbin/init). Requires --privileged.
	ModeSystemd = "systemd"
)

// Paths inside the container.
const (
	// InitPath is where Apply binds pouch-init (read-only).
	InitPath = "/.pouch/init"
	// RunDir is where Apply binds Options.StatusDir (read-write).
	RunDir = "/.pouch/run"
	// StatusFile is pouch-init's status file inside RunDir.
	StatusFile = "status.json"
	// EnvFile is where pouch-init writes the container's environment for
	// login shells.
	EnvFile = "/etc/profile.d/pouchenv.sh"
)

// ExitInitScriptFailed is pouch-init's exit status when the initscript
// failed (its own status and output are in the status file and on the
// container's stderr); ExitInitFailed when pouch-init itself could not
// start the command or init (not found, bad flags).
const (
	ExitInitScriptFailed = 125
	ExitInitFailed       = 127
)

// SystemdStopSignal is the signal that asks systemd to shut down
// (SIGRTMIN+3); the engine stops ModeSystemd containers with it.
const SystemdStopSignal = syscall.Signal(37)

// Options are a container's rich-mode settings.
type Options struct {
	// Mode is ModeDumbInit (also when empty), ModeSbinInit or ModeSystemd.
	Mode string `json:"mode,omitempty"`
	// InitScript is an absolute path inside the container, run with
	// /bin/sh before the command; its failure fails the start.
	InitScript string `json:"initscript,omitempty"`
	// StatusDir is a host directory (per container, made by the engine)
	// bound at RunDir, where pouch-init reports whether the command
	// started (WaitStarted reads it). Empty: no status is reported.
	StatusDir string `json:"status_dir,omitempty"`
}

// mode returns the effective mode.
func (o Options) mode() string {
	if o.Mode == "" {
		return ModeDumbInit
	}
	return o.Mode
}

// Validate checks opts for a container; privileged is --privileged.
// Errors wrap errdefs.ErrInvalid: an unknown mode, a relative initscript
// path, and systemd without privileged ("rich mode systemd requires
// --privileged").
func Validate(opts Options, privileged bool) error {
	switch opts.mode() {
	case ModeDumbInit, ModeSbinInit:
	case ModeSystemd:
		if !privileged {
			return fmt.Errorf("rich mode systemd requires --privileged: %w", errdefs.ErrInvalid)
		}
	default:
		return fmt.Errorf("unknown rich mode %q (want dumb-init, sbin-init or systemd): %w", opts.Mode, errdefs.ErrInvalid)
	}
	if opts.InitScript != "" && !path.IsAbs(opts.InitScript) {
		return fmt.Errorf("initscript %q: want an absolute path inside the container: %w", opts.InitScript, errdefs.ErrInvalid)
	}
	if opts.StatusDir != "" && !filepath.IsAbs(opts.StatusDir) {
		return fmt.Errorf("rich status dir %q is not absolute: %w", opts.StatusDir, errdefs.ErrInvalid)
	}
	return nil
}

// Apply rewrites spec so that pouch-init (the host file initPath) is the
// container's PID 1: it binds initPath read-only at InitPath (and
// opts.StatusDir at RunDir), and sets the process args to
//
//	/.pouch/init --mode MODE [--initscript PATH] --env-file /etc/profile.d/pouchenv.sh
//	             [--status-file /.pouch/run/status.json] -- ORIGINAL ARGS...
//
// ModeSystemd also gets container=pouch in the environment and tmpfs on
// /run, /run/lock and /tmp unless the spec mounts them. Apply does not
// check privileges (Validate does). Errors wrap errdefs.ErrInvalid: bad
// options, no process, a dumb-init container without a command, or a
// spec already rewritten.
func Apply(spec *specs.Spec, initPath string, opts Options) error {
	if err := Validate(opts, true); err != nil {
		return err
	}
	if spec == nil || spec.Process == nil {
		return fmt.Errorf("rich: spec has no process: %w", errdefs.ErrInvalid)
	}
	if !filepath.IsAbs(initPath) {
		return fmt.Errorf("rich: pouch-init path %q is not absolute: %w", initPath, errdefs.ErrInvalid)
	}
	if len(spec.Process.Args) > 0 && spec.Process.Args[0] == InitPath {
		return fmt.Errorf("rich: spec already runs %s: %w", InitPath, errdefs.ErrInvalid)
	}
	mode := opts.mode()
	if mode == ModeDumbInit && len(spec.Process.Args) == 0 {
		return fmt.Errorf("rich mode dumb-init: the container has no command: %w", errdefs.ErrInvalid)
	}
	spec.Mounts = append(spec.Mounts, specs.Mount{
		Destination: InitPath, Type: "bind", Source: initPath,
		Options: []string{"bind", "ro", "nosuid", "nodev", "rprivate"},
	})
	args := []string{InitPath, "--mode", mode}
	if opts.InitScript != "" {
		args = append(args, "--initscript", opts.InitScript)
	}
	args = append(args, "--env-file", EnvFile)
	if opts.StatusDir != "" {
		spec.Mounts = append(spec.Mounts, specs.Mount{
			Destination: RunDir, Type: "bind", Source: opts.StatusDir,
			Options: []string{"bind", "rw", "nosuid", "nodev", "noexec", "rprivate"},
		})
		args = append(args, "--status-file", RunDir+"/"+StatusFile)
	}
	args = append(args, "--")
	spec.Process.Args = append(args, spec.Process.Args...)

	if mode == ModeSystemd {
		if !slices.ContainsFunc(spec.Process.Env, func(e string) bool { return strings.HasPrefix(e, "container=") }) {
			spec.Process.Env = append(spec.Process.Env, "container=pouch")
		}
		for _, dir := range []string{"/run", "/run/lock", "/tmp"} {
			if slices.ContainsFunc(spec.Mounts, func(m specs.Mount) bool { return path.Clean(m.Destination) == dir }) {
				continue
			}
			spec.Mounts = append(spec.Mounts, specs.Mount{
				Destination: dir, Type: "tmpfs", Source: "tmpfs",
				Options: []string{"nosuid", "nodev", "mode=1777"},
			})
		}
	}
	return nil
}

// Status is what pouch-init reports in the status file.
type Status struct {
	// State is StateRunning, StateInitScriptFailed or StateFailed.
	State string `json:"state"`
	// Pid is the command's (or init's) PID inside the container.
	Pid int `json:"pid,omitempty"`
	// ExitCode is the initscript's exit status when it failed (its output
	// went to the container's stdout and stderr, i.e. its logs).
	ExitCode int `json:"exit_code,omitempty"`
	// Error says why pouch-init failed.
	Error string `json:"error,omitempty"`
}

// Status states.
const (
	StateRunning          = "running"
	StateInitScriptFailed = "initscript-failed"
	StateFailed           = "failed"
)

// WriteStatus writes st to path atomically (pouch-init's side).
func WriteStatus(path string, st Status) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// ErrInitScript is wrapped by WaitStarted when the initscript failed.
var ErrInitScript = errors.New("initscript failed")

// WaitStarted waits until pouch-init reported in statusDir (the host
// directory given as Options.StatusDir) and returns its status: nil error
// when the command (or init) runs; an error wrapping ErrInitScript and
// errdefs.ErrInvalid, with the script's exit status, when the initscript
// failed (the engine adds the tail of the container's log: the script's
// output); an error wrapping errdefs.ErrInvalid when pouch-init
// failed. exited, when it fires first (the task ended before reporting),
// ends the wait with an error; ctx bounds it.
func WaitStarted(ctx context.Context, statusDir string, exited <-chan struct{}) (Status, error) {
	p := filepath.Join(statusDir, StatusFile)
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		b, err := os.ReadFile(p)
		if err == nil {
			var st Status
			if err := json.Unmarshal(b, &st); err != nil {
				return Status{}, fmt.Errorf("rich: %s: %w", p, err)
			}
			switch st.State {
			case StateRunning:
				return st, nil
			case StateInitScriptFailed:
				return st, fmt.Errorf("%w (exit status %d; its output is in the container's logs): %w", ErrInitScript, st.ExitCode, errdefs.ErrInvalid)
			default:
				return st, fmt.Errorf("rich container init failed: %s: %w", st.Error, errdefs.ErrInvalid)
			}
		}
		select {
		case <-ctx.Done():
			return Status{}, fmt.Errorf("rich: waiting for pouch-init: %w", ctx.Err())
		case <-exited:
			// One last look: it may have written just before exiting.
			if _, err := os.Stat(p); err == nil {
				exited = nil
				continue
			}
			return Status{}, fmt.Errorf("rich: the container exited before pouch-init reported: %w", errdefs.ErrInvalid)
		case <-t.C:
		}
	}
}
