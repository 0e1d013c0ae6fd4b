// Command pouch-init is the PID 1 of pouchd's rich containers. It is a
// static binary (build with CGO_ENABLED=0) that pouchd bind-mounts into
// the container at /.pouch/init (see engine/rich).
//
//	pouch-init [--mode dumb-init|sbin-init|systemd] [--initscript PATH]
//	           [--env-file PATH] [--status-file PATH] -- COMMAND [ARG...]
//
// It writes the container's environment to --env-file (as `export` lines
// for login shells), runs --initscript with /bin/sh (its failure ends
// pouch-init with status 125), and then:
//
//   - dumb-init: runs COMMAND in a session of its own (with the terminal,
//     if any), forwards the signals it gets to COMMAND's process group,
//     reaps every orphan that is reparented to it, and exits with
//     COMMAND's status (128+N if killed by signal N);
//   - sbin-init: execs /sbin/init;
//   - systemd: execs /lib/systemd/systemd (or /sbin/init).
//
// --status-file receives a JSON rich.Status once COMMAND (or init) runs
// or pouch-init failed; pouchd waits for it to report the start.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pouchfly/pouchfly/engine/rich"
)

func main() { os.Exit(run(os.Args[1:])) }

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "pouch-init: "+format+"\n", args...)
}

// forwarded are the signals passed on to the command. SIGCHLD drives
// reaping; SIGKILL and SIGSTOP cannot be caught; SIGURG is the Go
// runtime's own.
var forwarded = []os.Signal{
	unix.SIGHUP, unix.SIGINT, unix.SIGQUIT, unix.SIGTERM, unix.SIGUSR1, unix.SIGUSR2,
	unix.SIGALRM, unix.SIGCONT, unix.SIGWINCH, unix.SIGPWR, unix.SIGTTIN, unix.SIGTTOU,
	unix.SIGTSTP, unix.SIGVTALRM, unix.SIGPROF, unix.SIGIO, unix.SIGXCPU, unix.SIGXFSZ,
}

func run(args []string) int {
	fs := flag.NewFlagSet("pouch-init", flag.ContinueOnError)
	mode := fs.String("mode", rich.ModeDumbInit, "dumb-init, sbin-init or systemd")
	initScript := fs.String("initscript", "", "script run with /bin/sh before the command")
	envFile := fs.String("env-file", "", "write the environment as export lines here (e.g. "+rich.EnvFile+")")
	statusFile := fs.String("status-file", "", "report the start as JSON here")
	if err := fs.Parse(args); err != nil {
		return rich.ExitInitFailed
	}
	cmd := fs.Args()
	report := func(st rich.Status) {
		if *statusFile == "" {
			return
		}
		if err := rich.WriteStatus(*statusFile, st); err != nil {
			logf("status file: %v", err)
		}
	}
	fail := func(format string, a ...any) int {
		msg := fmt.Sprintf(format, a...)
		logf("%s", msg)
		report(rich.Status{State: rich.StateFailed, Error: msg})
		return rich.ExitInitFailed
	}
	switch *mode {
	case rich.ModeDumbInit:
		if len(cmd) == 0 {
			return fail("no command given after --")
		}
	case rich.ModeSbinInit, rich.ModeSystemd:
	default:
		return fail("unknown --mode %q (want dumb-init, sbin-init or systemd)", *mode)
	}

	// Orphans come to us even when we are not PID 1 (e.g. in tests).
	_ = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
	sigs := make(chan os.Signal, 128)
	signal.Notify(sigs, append([]os.Signal{unix.SIGCHLD}, forwarded...)...)
	sup := &supervisor{sigs: sigs}

	if *envFile != "" {
		if err := writeEnvFile(*envFile, os.Environ()); err != nil {
			logf("env file: %v (login shells will not see the container's environment)", err)
		}
	}
	if *initScript != "" {
		status, err := sup.run([]string{"/bin/sh", *initScript}, false)
		if err != nil {
			return fail("initscript %s: %v", *initScript, err)
		}
		if status != 0 {
			logf("initscript %s failed with status %d", *initScript, status)
			report(rich.Status{State: rich.StateInitScriptFailed, ExitCode: status})
			return rich.ExitInitScriptFailed
		}
	}

	switch *mode {
	case rich.ModeSbinInit, rich.ModeSystemd:
		inits := []string{"/sbin/init"}
		if *mode == rich.ModeSystemd {
			inits = []string{"/lib/systemd/systemd", "/usr/lib/systemd/systemd", "/sbin/init"}
		}
		if len(cmd) > 0 {
			logf("mode %s runs the image's init; the command %q is not run", *mode, strings.Join(cmd, " "))
		}
		for _, p := range inits {
			if _, err := os.Stat(p); err != nil {
				continue
			}
			signal.Reset()
			report(rich.Status{State: rich.StateRunning, Pid: os.Getpid()})
			err := syscall.Exec(p, []string{p}, os.Environ())
			return fail("exec %s: %v", p, err)
		}
		return fail("mode %s: none of %s exists in the image", *mode, strings.Join(inits, ", "))
	}

	tty := isTerminal(0)
	if tty {
		// Give the terminal up so that the command's session can take it.
		// TIOCNOTTY sends our process group SIGHUP and SIGCONT, synchronously:
		// ignored meanwhile, they are dropped instead of reaching the command.
		signal.Ignore(unix.SIGHUP, unix.SIGCONT)
		_ = unix.IoctlSetInt(0, unix.TIOCNOTTY, 0)
		signal.Notify(sigs, unix.SIGHUP, unix.SIGCONT)
	}
	status, err := sup.runMain(cmd, tty, func(pid int) { report(rich.Status{State: rich.StateRunning, Pid: pid}) })
	if err != nil {
		return fail("%v", err)
	}
	return status
}

// supervisor starts children, forwards signals to the current one's
// process group and reaps every process that ends up as our child.
type supervisor struct {
	sigs chan os.Signal
}

// run starts argv (looked up in PATH) in a new session (with the terminal
// on stdin when tty), supervises it until it exits, and returns its
// status (128+N when killed by signal N).
func (s *supervisor) run(argv []string, tty bool) (int, error) {
	return s.runMain(argv, tty, nil)
}

func (s *supervisor) runMain(argv []string, tty bool, started func(pid int)) (int, error) {
	path, err := exec.LookPath(argv[0])
	if err != nil {
		return 0, err
	}
	pid, err := syscall.ForkExec(path, argv, &syscall.ProcAttr{
		Env:   os.Environ(),
		Files: []uintptr{0, 1, 2},
		Sys:   &syscall.SysProcAttr{Setsid: true, Setctty: tty, Ctty: 0},
	})
	if err != nil {
		return 0, fmt.Errorf("start %s: %w", path, err)
	}
	if started != nil {
		started(pid)
	}
	tick := time.NewTicker(time.Second) // a safety net should a SIGCHLD be missed
	defer tick.Stop()
	for {
		select {
		case sig := <-s.sigs:
			if sig != unix.SIGCHLD {
				n := sig.(syscall.Signal)
				if err := unix.Kill(-pid, n); err == unix.ESRCH {
					_ = unix.Kill(pid, n)
				}
				continue
			}
		case <-tick.C:
		}
		if status, done := reap(pid); done {
			// dumb-init's courtesy: the rest of the command's process group
			// is told to go too (as PID 1 our exit kills them anyway).
			_ = unix.Kill(-pid, unix.SIGTERM)
			return status, nil
		}
	}
}

// reap collects every exited child; it reports main's status once main
// has exited.
func reap(main int) (status int, mainDone bool) {
	for {
		var ws unix.WaitStatus
		wpid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if err == unix.EINTR {
			continue
		}
		if wpid <= 0 || err != nil {
			return status, mainDone
		}
		if wpid == main {
			mainDone = true
			switch {
			case ws.Exited():
				status = ws.ExitStatus()
			case ws.Signaled():
				status = 128 + int(ws.Signal())
			}
		}
	}
}

func isTerminal(fd int) bool {
	_, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	return err == nil
}

// skipEnv are variables a login shell sets itself.
var skipEnv = map[string]bool{
	"HOME": true, "USER": true, "LOGNAME": true, "SHELL": true, "MAIL": true,
	"PWD": true, "OLDPWD": true, "SHLVL": true, "_": true, "TERM": true,
}

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// writeEnvFile writes env as `export NAME='value'` lines to path (for
// /etc/profile.d), skipping what login shells set themselves and names
// a shell cannot hold.
func writeEnvFile(path string, env []string) error {
	var lines []string
	for _, kv := range env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || skipEnv[k] || !envName.MatchString(k) {
			continue
		}
		lines = append(lines, "export "+k+"='"+strings.ReplaceAll(v, "'", `'\''`)+"'")
	}
	sort.Strings(lines)
	body := "# Written by pouch-init: the container's environment, for login shells.\n" + strings.Join(lines, "\n") + "\n"
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(body), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
