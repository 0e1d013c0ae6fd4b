package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/pouchfly/pouchfly/engine/api"
	"github.com/pouchfly/pouchfly/internal/errdefs"
)

// eachContainer runs fn for every argument, printing each that succeeded.
func eachContainer(args []string, fn func(string) error) error {
	var errs []error
	for _, a := range args {
		if err := fn(a); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", a, err))
			continue
		}
		fmt.Println(a)
	}
	return errors.Join(errs...)
}

func stopCmd() *cobra.Command {
	t := -1
	c := &cobra.Command{
		Use:   "stop [OPTIONS] CONTAINER [CONTAINER...]",
		Short: "Stop containers (SIGTERM, then SIGKILL after the timeout)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := newClient()
			if err != nil {
				return err
			}
			var tp *int
			if t >= 0 {
				tp = &t
			}
			return eachContainer(args, func(id string) error { return cl.ContainerStop(cmd.Context(), id, tp) })
		},
	}
	c.Flags().IntVarP(&t, "time", "t", -1, "seconds to wait before SIGKILL (default: the container's, or pouchd's 10)")
	return c
}

func restartCmd() *cobra.Command {
	t := -1
	c := &cobra.Command{
		Use:   "restart [OPTIONS] CONTAINER [CONTAINER...]",
		Short: "Restart containers",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := newClient()
			if err != nil {
				return err
			}
			return eachContainer(args, func(id string) error {
				var tp *int
				if t >= 0 {
					tp = &t
				}
				if err := cl.ContainerStop(cmd.Context(), id, tp); err != nil {
					var ae *api.Error
					if !errors.As(err, &ae) || ae.Status != 304 {
						return err
					}
				}
				return cl.ContainerStart(cmd.Context(), id)
			})
		},
	}
	c.Flags().IntVarP(&t, "time", "t", -1, "seconds to wait before SIGKILL")
	return c
}

func killCmd() *cobra.Command {
	var sig string
	c := &cobra.Command{
		Use:   "kill [OPTIONS] CONTAINER [CONTAINER...]",
		Short: "Send a signal (default SIGKILL) to running containers",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := newClient()
			if err != nil {
				return err
			}
			return eachContainer(args, func(id string) error { return cl.ContainerKill(cmd.Context(), id, sig) })
		},
	}
	c.Flags().StringVarP(&sig, "signal", "s", "", "signal (name or number)")
	return c
}

func rmCmd() *cobra.Command {
	var force bool
	c := &cobra.Command{
		Use:   "rm [OPTIONS] CONTAINER [CONTAINER...]",
		Short: "Remove containers",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := newClient()
			if err != nil {
				return err
			}
			return eachContainer(args, func(id string) error { return cl.ContainerRemove(cmd.Context(), id, force) })
		},
	}
	c.Flags().BoolVarP(&force, "force", "f", false, "kill a running container first")
	return c
}

func psCmd() *cobra.Command {
	var all, quiet, noTrunc bool
	c := &cobra.Command{
		Use:     "ps [OPTIONS]",
		Aliases: []string{"list"},
		Short:   "List containers",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := newClient()
			if err != nil {
				return err
			}
			cs, err := cl.ContainerList(cmd.Context(), all)
			if err != nil {
				return err
			}
			if quiet {
				for _, c := range cs {
					fmt.Println(shortID(c.ID))
				}
				return nil
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 0, 3, ' ', 0)
			fmt.Fprintln(tw, "CONTAINER ID\tIMAGE\tCOMMAND\tCREATED\tSTATUS\tRUNTIME\tNAMES")
			for _, c := range cs {
				id, command := shortID(c.ID), c.Command
				if noTrunc {
					id = c.ID
				} else if len(command) > 20 {
					command = command[:19] + "…"
				}
				name := ""
				if len(c.Names) > 0 {
					name = strings.TrimPrefix(c.Names[0], "/")
				}
				fmt.Fprintf(tw, "%s\t%s\t%q\t%s ago\t%s\t%s\t%s\n", id, c.Image, command,
					humanSince(time.Unix(c.Created, 0)), c.Status, c.Runtime, name)
			}
			return tw.Flush()
		},
	}
	c.Flags().BoolVarP(&all, "all", "a", false, "show stopped containers too")
	c.Flags().BoolVarP(&quiet, "quiet", "q", false, "only IDs")
	c.Flags().BoolVar(&noTrunc, "no-trunc", false, "do not truncate")
	return c
}

func humanSince(t time.Time) string {
	d := time.Since(t)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%d seconds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%d minutes", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%d hours", int(d.Hours()))
	}
	return fmt.Sprintf("%d days", int(d.Hours()/24))
}

func logsCmd() *cobra.Command {
	var follow, timestamps bool
	var tail string
	c := &cobra.Command{
		Use:   "logs [OPTIONS] CONTAINER",
		Short: "Show a container's output (kept across pouchd restarts)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := newClient()
			if err != nil {
				return err
			}
			j, err := cl.ContainerInspect(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			rc, err := cl.ContainerLogs(cmd.Context(), args[0], api.LogsOptions{Follow: follow, Stdout: true, Stderr: true, Timestamps: timestamps, Tail: tail})
			if err != nil {
				return err
			}
			defer rc.Close()
			if j.Config.Tty {
				_, err = io.Copy(os.Stdout, rc)
			} else {
				err = api.Demux(os.Stdout, os.Stderr, rc)
			}
			if cmd.Context().Err() != nil {
				return nil
			}
			return err
		},
	}
	c.Flags().BoolVarP(&follow, "follow", "f", false, "keep following the output")
	c.Flags().BoolVarP(&timestamps, "timestamps", "t", false, "show timestamps")
	c.Flags().StringVar(&tail, "tail", "all", "number of lines from the end")
	return c
}

func execCmd() *cobra.Command {
	var interactive, tty, detach bool
	var user, workdir string
	var env []string
	c := &cobra.Command{
		Use:   "exec [OPTIONS] CONTAINER COMMAND [ARG...]",
		Short: "Run a command in a running container (exits with its code)",
		Long: `Run a command in a running container; pouch exits with its exit code.
With -t the command gets a pseudo-terminal of the size of pouch's terminal
from the start, following its window changes; with -i -t pouch's terminal
is in raw mode (Ctrl-D ends an interactive shell, whose last status is then
pouch's exit code).`,
		Example: `  pouch exec web cat /etc/hostname
  pouch exec -it web sh`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			cl, err := newClient()
			if err != nil {
				return err
			}
			cfg := api.ExecConfig{Cmd: args[1:], Tty: tty, AttachStdin: interactive, AttachStdout: !detach, AttachStderr: !detach,
				Detach: detach, User: user, WorkingDir: workdir, Env: env}
			var tm *terminal
			if tty && !detach {
				// The exec's pseudo-terminal gets our size before its
				// process runs, and follows SIGWINCH.
				tm = openTerminal(interactive)
				defer tm.close()
				if h, w, ok := tm.size(); ok {
					cfg.ConsoleSize = &[2]uint{h, w}
				}
			}
			id, err := cl.ExecCreate(ctx, args[0], cfg)
			if err != nil {
				return withCode(126, err)
			}
			if detach {
				_, err := cl.ExecStart(ctx, id, api.ExecStartConfig{Detach: true})
				return err
			}
			if tm != nil {
				tm.follow(ctx, func(h, w uint) error { return cl.ExecResize(ctx, id, h, w) })
				tm.makeRaw()
			}
			conn, err := cl.ExecStart(ctx, id, api.ExecStartConfig{Tty: tty})
			if err != nil {
				return withCode(126, err)
			}
			defer conn.Close()
			if interactive {
				go func() {
					_, _ = io.Copy(conn, os.Stdin)
					_ = conn.CloseWrite()
				}()
			}
			var serr error
			if tty {
				_, serr = io.Copy(os.Stdout, conn)
			} else {
				serr = api.Demux(os.Stdout, os.Stderr, conn)
			}
			tm.close()
			if serr != nil && strings.HasPrefix(serr.Error(), "pouchd: ") {
				return withCode(startExitCode(serr), serr)
			}
			in, err := cl.ExecInspect(ctx, id)
			if err != nil {
				return err
			}
			if in.ExitCode == nil {
				return withCode(126, fmt.Errorf("exec did not report an exit code"))
			}
			if *in.ExitCode != 0 {
				return withCode(*in.ExitCode, nil)
			}
			return nil
		},
	}
	f := c.Flags()
	f.SetInterspersed(false)
	f.BoolVarP(&interactive, "interactive", "i", false, "keep stdin open")
	f.BoolVarP(&tty, "tty", "t", false, "allocate a pseudo-TTY")
	f.BoolVarP(&detach, "detach", "d", false, "run in the background")
	f.StringVarP(&user, "user", "u", "", "user[:group]")
	f.StringVarP(&workdir, "workdir", "w", "", "working directory")
	f.StringArrayVarP(&env, "env", "e", nil, "environment variable KEY=VALUE")
	return c
}

func inspectCmd() *cobra.Command {
	var typ string
	c := &cobra.Command{
		Use:   "inspect [OPTIONS] NAME|ID [NAME|ID...]",
		Short: "Show containers (or images) as JSON",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := newClient()
			if err != nil {
				return err
			}
			var out []any
			for _, a := range args {
				if typ != "image" {
					j, err := cl.ContainerInspect(cmd.Context(), a)
					if err == nil {
						out = append(out, j)
						continue
					}
					if typ == "container" || !errors.Is(err, errdefs.ErrNotFound) {
						return err
					}
				}
				img, err := cl.ImageInspect(cmd.Context(), a)
				if err != nil {
					return fmt.Errorf("no such object: %s", a)
				}
				out = append(out, img)
			}
			return printJSON(os.Stdout, out)
		},
	}
	c.Flags().StringVar(&typ, "type", "", "container or image")
	return c
}

func waitCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "wait CONTAINER",
		Short: "Wait for a container to stop and print its exit code",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := newClient()
			if err != nil {
				return err
			}
			res, err := cl.ContainerWait(cmd.Context(), args[0], "not-running")
			if err != nil {
				return err
			}
			fmt.Println(res.StatusCode)
			return nil
		},
	}
}
