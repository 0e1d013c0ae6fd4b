package main

import (
	"fmt"
	"os"
	"runtime"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/pouchfly/pouchfly/engine/api"
	"github.com/pouchfly/pouchfly/internal/units"
)

func infoCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "info",
		Short: "Show pouchd's state: containerd, runtimes, quota driver, lxcfs",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := newClient()
			if err != nil {
				return err
			}
			in, err := cl.Info(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(os.Stdout, in)
			}
			names := make([]string, 0, len(in.Runtimes))
			for n := range in.Runtimes {
				names = append(names, n)
			}
			sort.Strings(names)
			quota := in.QuotaDriver
			if quota == "" {
				quota = "none (disk quota unavailable)"
			}
			lx := "disabled"
			if in.LxcfsEnabled {
				lx = "enabled"
			}
			rich := in.RichInit
			if rich == "" {
				rich = "pouch-init not found"
			}
			adopted := ""
			if in.ContainerdAdopted {
				adopted = " (adopted)"
			}
			fmt.Printf(`Containers: %d
 Running: %d
 Stopped: %d
Images: %d
Server Version: %s
Storage Driver: %s
Cgroup Driver: %s
Cgroup Version: %s
Containerd Version: %s
Containerd: %s pid %d%s, %d restarts
Runtimes: %s
Default Runtime: %s
Disk Quota Driver: %s
Lxcfs: %s (%s)
Rich Container Init: %s
Registry Mirror: %s
Kernel Version: %s
Operating System: %s
OSType: %s
Architecture: %s
CPUs: %d
Total Memory: %s
Name: %s
Pouch Root Dir: %s
`, in.Containers, in.ContainersRunning, in.ContainersStopped, in.Images, in.ServerVersion, in.Driver,
				in.CgroupDriver, in.CgroupVersion, in.ContainerdVersion, in.ContainerdAddress, in.ContainerdPID, adopted,
				in.ContainerdRestarts, strings.Join(names, " "), in.DefaultRuntime, quota, lx, in.LxcfsStatus, rich,
				in.RegistryMirror, in.KernelVersion, in.OperatingSystem, in.OSType, in.Architecture, in.NCPU,
				units.Format(in.MemTotal), in.Name, in.PouchRootDir)
			return nil
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}

// version is pouch's own version.
var version = "0.5.0-dev"

func versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Show the versions of pouch, pouchd and containerd",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			fmt.Printf("Client:\n Version:     %s\n API version: %s\n Go version:  %s\n OS/Arch:     %s/%s\n\n",
				version, api.APIVersion, runtime.Version(), runtime.GOOS, runtime.GOARCH)
			cl, err := newClient()
			if err != nil {
				return err
			}
			v, err := cl.Version(cmd.Context())
			if err != nil {
				return err
			}
			fmt.Printf("Server:\n Version:     %s\n API version: %s\n Go version:  %s\n OS/Arch:     %s/%s\n Kernel:      %s\n Containerd:  %s\n",
				v.Version, v.APIVersion, v.GoVersion, v.Os, v.Arch, v.KernelVersion, v.Containerd)
			return nil
		},
	}
}

func volumeCmd() *cobra.Command {
	c := &cobra.Command{Use: "volume", Short: "Manage volumes"}
	var driver string
	var opts, labels []string
	create := &cobra.Command{
		Use:   "create [OPTIONS] [NAME]",
		Short: "Create a volume (-o size=10g limits it)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := newClient()
			if err != nil {
				return err
			}
			req := api.VolumeCreateRequest{Driver: driver, DriverOpts: kv(opts), Labels: kv(labels)}
			if len(args) == 1 {
				req.Name = args[0]
			}
			v, err := cl.VolumeCreate(cmd.Context(), req)
			if err != nil {
				return err
			}
			fmt.Println(v.Name)
			return nil
		},
	}
	create.Flags().StringVarP(&driver, "driver", "d", "local", "volume driver")
	create.Flags().StringArrayVarP(&opts, "opt", "o", nil, "driver option KEY=VALUE (size=10g)")
	create.Flags().StringArrayVarP(&labels, "label", "l", nil, "label KEY=VALUE")
	var quiet bool
	ls := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List volumes",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := newClient()
			if err != nil {
				return err
			}
			vl, err := cl.VolumeList(cmd.Context())
			if err != nil {
				return err
			}
			if quiet {
				for _, v := range vl.Volumes {
					fmt.Println(v.Name)
				}
				return nil
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 0, 3, ' ', 0)
			fmt.Fprintln(tw, "DRIVER\tVOLUME NAME\tSIZE")
			for _, v := range vl.Volumes {
				size := v.Status["size"]
				if size == "" {
					size = "-"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\n", v.Driver, v.Name, size)
			}
			return tw.Flush()
		},
	}
	ls.Flags().BoolVarP(&quiet, "quiet", "q", false, "only names")
	inspect := &cobra.Command{
		Use:   "inspect VOLUME [VOLUME...]",
		Short: "Show volumes as JSON",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := newClient()
			if err != nil {
				return err
			}
			var out []api.Volume
			for _, a := range args {
				v, err := cl.VolumeInspect(cmd.Context(), a)
				if err != nil {
					return err
				}
				out = append(out, v)
			}
			return printJSON(os.Stdout, out)
		},
	}
	var force bool
	rm := &cobra.Command{
		Use:     "rm [OPTIONS] VOLUME [VOLUME...]",
		Aliases: []string{"remove"},
		Short:   "Remove volumes",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := newClient()
			if err != nil {
				return err
			}
			return eachContainer(args, func(n string) error { return cl.VolumeRemove(cmd.Context(), n, force) })
		},
	}
	rm.Flags().BoolVarP(&force, "force", "f", false, "remove even if in use")
	c.AddCommand(create, ls, inspect, rm)
	return c
}

func kv(list []string) map[string]string {
	if len(list) == 0 {
		return nil
	}
	m := map[string]string{}
	for _, s := range list {
		k, v, _ := strings.Cut(s, "=")
		m[k] = v
	}
	return m
}
