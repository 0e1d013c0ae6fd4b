package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/internal/hostconfig"
)

// mirrorCmd is `dfget mirror`: point the host's container runtime at the
// local registry mirror of `dfget daemon`.
func mirrorCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "mirror",
		Short: "Point containerd or docker at the local Pouchfly registry mirror",
		Long: `dfget mirror configures the host's container runtime to pull images through
the registry mirror of the local agent (dfget daemon, ` + hostconfig.DefaultMirror + ` by
default), so that image layers travel peer-to-peer.

Every change is undoable: a file that existed is first copied beside itself
as <file>` + hostconfig.BackupSuffix + `, and --undo puts it back (or removes the file
when dfget created it). Files are replaced atomically. --dry-run prints the
diff and writes nothing. A file that does not parse is refused, untouched.

Exit codes:
  0  success (also when there was nothing to change)
  1  other error
  2  usage: bad flag, registry or mirror URL; a file that does not parse or
     that someone changed since dfget wrote it
  7  local I/O error: cannot read or write the files (permissions)`,
		Example: `  dfget mirror containerd --registry docker.io --registry ghcr.io
  dfget mirror docker
  dfget mirror containerd --registry docker.io --dry-run
  dfget mirror docker --undo`,
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return fmt.Errorf("unknown runtime %q: want containerd or docker (see dfget mirror --help): %w", args[0], errdefs.ErrInvalid)
			}
			_ = cmd.Help()
			return fmt.Errorf("name a runtime: dfget mirror containerd or dfget mirror docker: %w", errdefs.ErrInvalid)
		},
	}
	c.AddCommand(mirrorContainerdCmd(), mirrorDockerCmd())
	return c
}

func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("unexpected argument %q (see %s --help): %w", args[0], cmd.CommandPath(), errdefs.ErrInvalid)
	}
	return nil
}

func mirrorContainerdCmd() *cobra.Command {
	var (
		o    hostconfig.ContainerdOptions
		undo bool
	)
	c := &cobra.Command{
		Use:   "containerd [--registry REGISTRY]... [flags]",
		Short: "Write containerd hosts.toml files that pull through the mirror",
		Long: `dfget mirror containerd writes <certs-dir>/<registry>/hosts.toml for each
--registry, so that containerd resolves and pulls through the local mirror
first and falls back to the registry itself:

  server = "https://registry-1.docker.io"

  [host."` + hostconfig.DefaultMirror + `"]
    capabilities = ["pull", "resolve"]

The server is https://registry-1.docker.io for docker.io and https://REGISTRY
otherwise; give REGISTRY=URL to set it (e.g. a plain-HTTP registry:
10.0.0.1:5000=http://10.0.0.1:5000). "_default" applies to every registry
without a directory of its own. An existing hosts.toml is backed up and
merged: its top-level settings (server, ca, ...) and its other hosts stay,
after the mirror. containerd reads these files on every pull: the CRI plugin
when its registry config_path is the certs dir, ctr with --hosts-dir.`,
		Example: `  dfget mirror containerd --registry docker.io --registry ghcr.io
  dfget mirror containerd --registry docker.io --mirror http://127.0.0.1:65001 --dry-run
  dfget mirror containerd --registry 10.0.0.1:5000=http://10.0.0.1:5000 --certs-dir /tmp/certs.d
  dfget mirror containerd --registry docker.io --registry ghcr.io --undo`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var (
				changes []hostconfig.Change
				err     error
			)
			if undo {
				changes, err = hostconfig.UndoContainerd(o)
			} else {
				changes, err = hostconfig.Containerd(o)
			}
			out := cmd.OutOrStdout()
			printChanges(out, changes, o.DryRun)
			if err != nil {
				return mirrorError(err)
			}
			if !undo && !o.DryRun {
				fmt.Fprintf(out, "containerd reads these files on every pull: for Kubernetes (CRI), set\n"+
					"  [plugins.\"io.containerd.grpc.v1.cri\".registry] config_path = %q\n"+
					"in /etc/containerd/config.toml (and restart containerd once); for ctr, pass --hosts-dir %s.\n",
					o.CertsDir, o.CertsDir)
			}
			return nil
		},
	}
	f := c.Flags()
	f.StringArrayVar(&o.Registries, "registry", []string{"docker.io"},
		"registry to route through the mirror, as images name it (repeatable; REGISTRY=URL sets its own endpoint)")
	f.StringVar(&o.Mirror, "mirror", hostconfig.DefaultMirror, "the local mirror's URL")
	f.StringVar(&o.CertsDir, "certs-dir", hostconfig.DefaultCertsDir, "containerd's hosts directory (config_path)")
	f.BoolVar(&o.DryRun, "dry-run", false, "print what would change (a diff), write nothing")
	f.BoolVar(&undo, "undo", false, "put back the files from before (or remove the ones dfget created)")
	return c
}

func mirrorDockerCmd() *cobra.Command {
	var (
		o    hostconfig.DockerOptions
		undo bool
	)
	c := &cobra.Command{
		Use:   "docker [flags]",
		Short: "Add the mirror to dockerd's registry-mirrors",
		Long: `dfget mirror docker puts the local mirror first in "registry-mirrors" of
dockerd's daemon.json, keeping every other setting as written and the other
mirrors in their order; daemon.json is created if missing. A daemon.json that
is not valid JSON is refused and left as it is.

dockerd uses registry-mirrors for Docker Hub images only, and reads it again
on SIGHUP (systemctl reload docker).`,
		Example: `  dfget mirror docker
  dfget mirror docker --daemon-json /etc/docker/daemon.json --mirror http://127.0.0.1:65001 --dry-run
  dfget mirror docker --undo`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var (
				ch  hostconfig.Change
				err error
			)
			if undo {
				ch, err = hostconfig.UndoDocker(o)
			} else {
				ch, err = hostconfig.Docker(o)
			}
			if err != nil {
				return mirrorError(err)
			}
			out := cmd.OutOrStdout()
			printChanges(out, []hostconfig.Change{ch}, o.DryRun)
			if !o.DryRun && ch.Action != hostconfig.Unchanged && ch.Action != hostconfig.Nothing {
				fmt.Fprintln(out, "reload dockerd to apply: systemctl reload docker (or send dockerd SIGHUP)")
			}
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&o.DaemonJSON, "daemon-json", hostconfig.DefaultDaemonJSON, "dockerd's config file")
	f.StringVar(&o.Mirror, "mirror", hostconfig.DefaultMirror, "the local mirror's URL")
	f.BoolVar(&o.DryRun, "dry-run", false, "print what would change (a diff), write nothing")
	f.BoolVar(&undo, "undo", false, "put back the file from before (or remove it if dfget created it)")
	return c
}

// printChanges prints one line per change and, for a dry run, the diffs.
func printChanges(w io.Writer, changes []hostconfig.Change, dryRun bool) {
	for _, ch := range changes {
		fmt.Fprintln(w, ch.String())
		if dryRun {
			fmt.Fprint(w, ch.Diff())
		}
	}
}

// mirrorError keeps usage errors (exit 2) and marks the rest as local I/O
// failures (exit 7: cannot write the files).
func mirrorError(err error) error {
	if errors.Is(err, errdefs.ErrInvalid) {
		return err
	}
	return fmt.Errorf("%w (%w)", err, errLocalIO)
}
