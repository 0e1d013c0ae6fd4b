package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/pouchfly/pouchfly/engine/api"
	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/internal/units"
)

// containerFlags are the flags of run and create.
type containerFlags struct {
	detach, interactive, tty, rm, privileged, lxcfs, rich bool
	name, workdir, user, entrypoint, memory, restart      string
	runtime, richMode, initScript, hostname, stopSignal   string
	cpus                                                  float64
	pidsLimit, cpuShares                                  int64
	env, volumes, diskQuota, labels                       []string
}

func addContainerFlags(c *cobra.Command, o *containerFlags, run bool) {
	f := c.Flags()
	f.SetInterspersed(false)
	if run {
		f.BoolVarP(&o.detach, "detach", "d", false, "run in the background and print the container ID")
		f.BoolVar(&o.rm, "rm", false, "remove the container when it exits")
	}
	f.BoolVarP(&o.interactive, "interactive", "i", false, "keep stdin open")
	f.BoolVarP(&o.tty, "tty", "t", false, "allocate a pseudo-TTY")
	f.StringVar(&o.name, "name", "", "container name")
	f.StringArrayVarP(&o.env, "env", "e", nil, "environment variable KEY=VALUE (repeatable)")
	f.StringVarP(&o.workdir, "workdir", "w", "", "working directory inside the container")
	f.StringVarP(&o.user, "user", "u", "", "user[:group] to run as")
	f.StringVar(&o.entrypoint, "entrypoint", "", "override the image's entrypoint")
	f.StringArrayVarP(&o.volumes, "volume", "v", nil, "bind /host:/path[:ro], volume NAME:/path[:ro], or anonymous /path (repeatable)")
	f.StringVarP(&o.memory, "memory", "m", "", "memory limit (e.g. 200m, 1g; at least 6m)")
	f.Float64Var(&o.cpus, "cpus", 0, "number of CPUs (e.g. 1.5)")
	f.Int64Var(&o.cpuShares, "cpu-shares", 0, "relative CPU weight")
	f.Int64Var(&o.pidsLimit, "pids-limit", 0, "maximum number of processes (-1: unlimited)")
	f.StringVar(&o.restart, "restart", "", "restart policy: no, always, unless-stopped, on-failure[:N]")
	f.BoolVar(&o.lxcfs, "enableLxcfs", false, "show the container its own /proc/meminfo, cpuinfo, stat, uptime… (lxcfs)")
	f.StringArrayVar(&o.diskQuota, "disk-quota", nil, "disk quota: SIZE (rootfs and volumes), /=SIZE, /path=SIZE, REGEX=SIZE (repeatable)")
	f.StringVar(&o.runtime, "runtime", "", "OCI runtime (one of pouchd's runtimes; default runc)")
	f.BoolVar(&o.rich, "rich", false, "rich container: an init as PID 1 that reaps orphans and forwards signals")
	f.StringVar(&o.richMode, "rich-mode", "", "rich container init: dumb-init, sbin-init or systemd (systemd needs --privileged)")
	f.StringVar(&o.initScript, "initscript", "", "script run inside a rich container before its command")
	f.BoolVar(&o.privileged, "privileged", false, "give the container all capabilities and devices")
	f.StringVar(&o.hostname, "hostname", "", "container host name")
	f.StringVar(&o.stopSignal, "stop-signal", "", "signal that stops the container (default SIGTERM)")
	f.StringArrayVarP(&o.labels, "label", "l", nil, "label KEY=VALUE (repeatable)")
}

// request builds the create request from the flags and IMAGE [CMD...].
func (o *containerFlags) request(args []string) (api.ContainerCreateRequest, error) {
	req := api.ContainerCreateRequest{HostConfig: &api.HostConfig{}}
	cfg, hc := &req.ContainerConfig, req.HostConfig
	cfg.Image = args[0]
	cfg.Cmd = args[1:]
	cfg.Env, cfg.WorkingDir, cfg.User, cfg.Hostname, cfg.StopSignal = o.env, o.workdir, o.user, o.hostname, o.stopSignal
	if o.entrypoint != "" {
		cfg.Entrypoint = []string{o.entrypoint}
	}
	cfg.Tty = o.tty
	cfg.OpenStdin, cfg.StdinOnce, cfg.AttachStdin = o.interactive, o.interactive, o.interactive
	cfg.AttachStdout, cfg.AttachStderr = !o.detach, !o.detach
	cfg.Rich, cfg.RichMode, cfg.InitScript = o.rich, o.richMode, o.initScript
	cfg.DiskQuota = o.diskQuota
	if len(o.labels) > 0 {
		cfg.Labels = map[string]string{}
		for _, l := range o.labels {
			k, v, _ := strings.Cut(l, "=")
			cfg.Labels[k] = v
		}
	}
	hc.Binds, hc.AutoRemove, hc.Privileged, hc.Runtime, hc.EnableLxcfs = o.volumes, o.rm, o.privileged, o.runtime, o.lxcfs
	if o.memory != "" {
		n, err := units.ParseBytes(o.memory)
		if err != nil {
			return req, fmt.Errorf("--memory: %w", err)
		}
		hc.Memory = n
	}
	if o.cpus < 0 || math.IsNaN(o.cpus) {
		return req, fmt.Errorf("--cpus %v: must be positive: %w", o.cpus, errdefs.ErrInvalid)
	}
	hc.NanoCPUs = int64(o.cpus * 1e9)
	hc.CPUShares, hc.PidsLimit = o.cpuShares, o.pidsLimit
	if o.restart != "" {
		name, n, hasN := strings.Cut(o.restart, ":")
		hc.RestartPolicy.Name = name
		if hasN {
			c, err := strconv.Atoi(n)
			if err != nil || name != "on-failure" {
				return req, fmt.Errorf("--restart %q: want no, always, unless-stopped or on-failure[:N]: %w", o.restart, errdefs.ErrInvalid)
			}
			hc.RestartPolicy.MaximumRetryCount = c
		}
	}
	return req, nil
}

// createContainer creates it, pulling the image first when pouchd does
// not have it (as docker run does).
func createContainer(ctx context.Context, cl *api.Client, req api.ContainerCreateRequest, name string) (string, error) {
	resp, err := cl.ContainerCreate(ctx, req, name)
	if err != nil && errors.Is(err, errdefs.ErrNotFound) && strings.Contains(err.Error(), "no such image") {
		fmt.Fprintf(os.Stderr, "Unable to find image '%s' locally\n", req.Image)
		if perr := pullImage(ctx, cl, req.Image, os.Stderr); perr != nil {
			return "", perr
		}
		resp, err = cl.ContainerCreate(ctx, req, name)
	}
	if err != nil {
		return "", err
	}
	for _, w := range resp.Warnings {
		fmt.Fprintln(os.Stderr, "WARNING:", w)
	}
	return resp.ID, nil
}

func createCmd() *cobra.Command {
	var o containerFlags
	c := &cobra.Command{
		Use:   "create [OPTIONS] IMAGE [COMMAND] [ARG...]",
		Short: "Create a container",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req, err := o.request(args)
			if err != nil {
				return withCode(125, err)
			}
			cl, err := newClient()
			if err != nil {
				return err
			}
			id, err := createContainer(cmd.Context(), cl, req, o.name)
			if err != nil {
				return withCode(125, err)
			}
			fmt.Println(id)
			return nil
		},
	}
	addContainerFlags(c, &o, false)
	return c
}

func runCmd() *cobra.Command {
	var o containerFlags
	c := &cobra.Command{
		Use:   "run [OPTIONS] IMAGE [COMMAND] [ARG...]",
		Short: "Create and start a container (pulling its image if needed)",
		Long: `Create and start a container. In the foreground (without -d) pouch streams
its output and exits with its exit code; 125 means pouchd refused the
request, 126 the command cannot be run, 127 it was not found.

With -t the container gets a pseudo-terminal of the size of pouch's
terminal from its first instruction on, and follows its window changes;
with -i -t pouch puts its terminal in raw mode, so that every key (Ctrl-C,
Ctrl-D…) goes to the container. An image that is not present is pulled
first, with the credentials of pouch login for its registry.

--enableLxcfs shows the container its own /proc/meminfo, cpuinfo, stat,
uptime…: tools that read them (procps's free, top, uptime) see the
container's limits. busybox's free asks the kernel (sysinfo(2)) instead,
which no /proc file changes: it keeps showing the host's memory.`,
		Example: `  pouch run --rm busybox echo hello
  pouch run -it --rm busybox sh
  pouch run -d --name web -m 200m --cpus 1.5 --restart always nginx
  pouch run --rm -m 200m --enableLxcfs debian free -m
  pouch run --rm --disk-quota 1g -v data:/data busybox df -h / /data
  pouch run -d --rich --rich-mode dumb-init --initscript /init.sh busybox sleep 1d`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runContainer(cmd.Context(), &o, args)
		},
	}
	addContainerFlags(c, &o, true)
	return c
}

func runContainer(ctx context.Context, o *containerFlags, args []string) error {
	req, err := o.request(args)
	if err != nil {
		return withCode(125, err)
	}
	if o.detach && o.rm {
		// Allowed: pouchd removes it when it exits.
	}
	cl, err := newClient()
	if err != nil {
		return withCode(125, err)
	}
	defer cl.Close()
	var tm *terminal
	if o.tty && !o.detach {
		// From here on a window change is not missed; the size now is the
		// pseudo-terminal's size from the start (runc sets it before the
		// command runs).
		tm = openTerminal(o.interactive)
		defer tm.close()
		if h, w, ok := tm.size(); ok {
			req.HostConfig.ConsoleSize = &[2]uint{h, w}
			tm.sized = true
		}
	}
	id, err := createContainer(ctx, cl, req, o.name)
	if err != nil {
		return withCode(125, err)
	}
	if o.detach {
		if err := cl.ContainerStart(ctx, id); err != nil {
			return withCode(startExitCode(err), err)
		}
		fmt.Println(id)
		return nil
	}
	return attachAndStart(ctx, cl, id, tm, o.interactive, o.rm, true)
}

// startExitCode maps a start failure to docker's exit codes.
func startExitCode(err error) int {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "executable file not found"), strings.Contains(msg, "no such file or directory"):
		return 127
	case strings.Contains(msg, "permission denied"):
		return 126
	}
	return 125
}

// attachAndStart attaches to id, registers a wait, starts it (when start),
// streams until its output ends and returns its exit code as an
// exitError. tm is pouch's terminal for a TTY container (nil otherwise).
func attachAndStart(ctx context.Context, cl *api.Client, id string, tm *terminal, interactive, autoRemove, start bool) error {
	tty := tm != nil
	conn, err := cl.ContainerAttach(ctx, id, api.AttachOptions{Stdin: interactive, Stdout: true, Stderr: true})
	if err != nil {
		return withCode(125, err)
	}
	defer conn.Close()
	cond := "next-exit"
	if autoRemove {
		cond = "removed"
	}
	wait, err := cl.ContainerWaitStart(ctx, id, cond)
	if err != nil {
		return withCode(125, err)
	}
	if tty {
		resize := func(h, w uint) error { return cl.ContainerResize(ctx, id, h, w) }
		if h, w, ok := tm.size(); ok && start && !tm.sized {
			// Before the start: pouchd keeps the size and applies it
			// before the process runs (start -a; run gave it at create).
			_ = resize(h, w)
		}
		tm.follow(ctx, resize)
		tm.makeRaw()
	}
	if start {
		if err := cl.ContainerStart(ctx, id); err != nil {
			if autoRemove {
				_ = cl.ContainerRemove(context.WithoutCancel(ctx), id, true)
			}
			return withCode(startExitCode(err), err)
		}
	}
	if interactive {
		go func() {
			_, _ = io.Copy(conn, os.Stdin)
			_ = conn.CloseWrite()
		}()
	}
	outDone := make(chan error, 1)
	go func() {
		if tty {
			_, err := io.Copy(os.Stdout, conn)
			outDone <- err
			return
		}
		outDone <- api.Demux(os.Stdout, os.Stderr, conn)
	}()
	select {
	case err := <-outDone:
		if err != nil && !errors.Is(err, io.EOF) && ctx.Err() == nil && !strings.Contains(err.Error(), "use of closed") &&
			!errors.Is(err, syscall.ECONNRESET) {
			fmt.Fprintln(os.Stderr, "Error:", err)
		}
	case <-ctx.Done():
		return withCode(130, nil)
	}
	res, err := wait()
	if tty {
		tm.close()
	}
	if err != nil {
		return withCode(125, err)
	}
	if res.StatusCode != 0 {
		return withCode(res.StatusCode, nil)
	}
	return nil
}

// terminal is pouch's own terminal while it is attached to a container's
// TTY: its size goes to the container's pseudo-terminal (at create or
// start, and at every SIGWINCH), and with -i its input is put in raw mode
// so that every key (Ctrl-C, Ctrl-D…) reaches the container's line
// discipline instead of pouch's.
type terminal struct {
	in, out     int // file descriptors; -1 when not a terminal
	interactive bool
	sized       bool // the size went with the create (ConsoleSize)
	winch       chan os.Signal
	mu          sync.Mutex
	restore     func()
	closed      bool
}

// openTerminal starts watching SIGWINCH when stdout (or stdin) is a
// terminal. It never fails: without a terminal, size reports !ok and
// makeRaw does nothing.
func openTerminal(interactive bool) *terminal {
	t := &terminal{in: -1, out: -1, interactive: interactive}
	if fd := int(os.Stdin.Fd()); term.IsTerminal(fd) {
		t.in = fd
	}
	if fd := int(os.Stdout.Fd()); term.IsTerminal(fd) {
		t.out = fd
	}
	if t.in >= 0 || t.out >= 0 {
		t.winch = make(chan os.Signal, 1)
		signal.Notify(t.winch, syscall.SIGWINCH)
	}
	return t
}

// size returns the terminal's height and width; ok is false without a
// terminal or when it has no size (0x0: a pty nobody sized, e.g. script(1)
// run without a terminal of its own), which is then left to the runtime.
func (t *terminal) size() (h, w uint, ok bool) {
	for _, fd := range []int{t.out, t.in} {
		if fd < 0 {
			continue
		}
		if cw, ch, err := term.GetSize(fd); err == nil && cw > 0 && ch > 0 {
			return uint(ch), uint(cw), true
		}
	}
	return 0, 0, false
}

// follow sends the size at every SIGWINCH until ctx ends or close.
func (t *terminal) follow(ctx context.Context, resize func(h, w uint) error) {
	if t.winch == nil {
		return
	}
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case _, ok := <-t.winch:
				if !ok {
					return
				}
				if h, w, ok := t.size(); ok {
					_ = resize(h, w)
				}
			}
		}
	}()
}

// makeRaw puts stdin in raw mode (with -i, when it is a terminal).
func (t *terminal) makeRaw() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.interactive || t.in < 0 || t.restore != nil || t.closed {
		return
	}
	if st, err := term.MakeRaw(t.in); err == nil {
		t.restore = func() { _ = term.Restore(t.in, st) }
	}
}

// close restores the terminal and stops watching SIGWINCH. Idempotent.
func (t *terminal) close() {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return
	}
	t.closed = true
	if t.restore != nil {
		t.restore()
	}
	if t.winch != nil {
		signal.Stop(t.winch)
		close(t.winch)
	}
}

func startCmd() *cobra.Command {
	var attach, interactive bool
	c := &cobra.Command{
		Use:   "start [OPTIONS] CONTAINER [CONTAINER...]",
		Short: "Start containers",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := newClient()
			if err != nil {
				return err
			}
			if attach {
				if len(args) != 1 {
					return fmt.Errorf("-a takes one container: %w", errdefs.ErrInvalid)
				}
				j, err := cl.ContainerInspect(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				var tm *terminal
				if j.Config.Tty {
					tm = openTerminal(interactive && j.Config.OpenStdin)
					defer tm.close()
				}
				return attachAndStart(cmd.Context(), cl, j.ID, tm, interactive && j.Config.OpenStdin, j.HostConfig.AutoRemove, true)
			}
			var errs []error
			for _, a := range args {
				if err := cl.ContainerStart(cmd.Context(), a); err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", a, err))
					continue
				}
				fmt.Println(a)
			}
			return errors.Join(errs...)
		},
	}
	c.Flags().BoolVarP(&attach, "attach", "a", false, "attach to the output and exit with the container's code")
	c.Flags().BoolVarP(&interactive, "interactive", "i", false, "attach stdin")
	return c
}
