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
request, 126 the command cannot be run, 127 it was not found.`,
		Example: `  pouch run --rm busybox echo hello
  pouch run -d --name web -m 200m --cpus 1.5 --restart always nginx
  pouch run --rm -m 200m --enableLxcfs busybox free -m
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
	return attachAndStart(ctx, cl, id, o.tty, o.interactive, o.rm, true)
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
// exitError.
func attachAndStart(ctx context.Context, cl *api.Client, id string, tty, interactive, autoRemove, start bool) error {
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
	var restore func()
	if tty && interactive && term.IsTerminal(int(os.Stdin.Fd())) {
		if st, err := term.MakeRaw(int(os.Stdin.Fd())); err == nil {
			restore = func() { _ = term.Restore(int(os.Stdin.Fd()), st) }
			defer restore()
		}
		resizeTTY(ctx, func(h, w uint) error { return cl.ContainerResize(ctx, id, h, w) })
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
	if restore != nil {
		restore()
	}
	if err != nil {
		return withCode(125, err)
	}
	if res.StatusCode != 0 {
		return withCode(res.StatusCode, nil)
	}
	return nil
}

// resizeTTY sends the terminal's size now and on SIGWINCH.
func resizeTTY(ctx context.Context, resize func(h, w uint) error) {
	send := func() {
		if w, h, err := term.GetSize(int(os.Stdout.Fd())); err == nil {
			_ = resize(uint(h), uint(w))
		}
	}
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGWINCH)
	go func() {
		defer signal.Stop(ch)
		for {
			select {
			case <-ctx.Done():
				return
			case <-ch:
				send()
			}
		}
	}()
	go func() {
		// The task may not exist yet: retry briefly.
		for i := 0; i < 20; i++ {
			if w, h, err := term.GetSize(int(os.Stdout.Fd())); err == nil {
				if resize(uint(h), uint(w)) == nil {
					return
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-timeAfter(50):
			}
		}
	}()
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
				return attachAndStart(cmd.Context(), cl, j.ID, j.Config.Tty, interactive && j.Config.OpenStdin, j.HostConfig.AutoRemove, true)
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
