// Command pouch is the client of pouchd: pull images peer-to-peer and run
// containers (PouchContainer's CLI: run, ps, logs, exec, rm, images,
// volumes, with --enableLxcfs, --disk-quota, --runtime and --rich).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/pouchfly/pouchfly/engine/api"
	"github.com/pouchfly/pouchfly/internal/errdefs"
)

// exitError carries a specific exit code (a container's, or 125 for a
// daemon error in run).
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func (e *exitError) Unwrap() error { return e.err }

// withCode makes pouch exit with code, printing err if not nil.
func withCode(code int, err error) error {
	if err == nil && code == 0 {
		return nil
	}
	return &exitError{code: code, err: err}
}

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := rootCmd()
	root.SetArgs(args)
	root.SetContext(ctx)
	err := root.Execute()
	if err == nil {
		return 0
	}
	var xe *exitError
	if errors.As(err, &xe) {
		if xe.err != nil {
			fmt.Fprintln(os.Stderr, "Error:", xe.err)
		}
		return xe.code
	}
	fmt.Fprintln(os.Stderr, "Error:", err)
	if errors.Is(err, errdefs.ErrInvalid) && !isAPIError(err) {
		return 2
	}
	return 1
}

func isAPIError(err error) bool {
	var ae *api.Error
	return errors.As(err, &ae)
}

var host string

func rootCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "pouch",
		Short: "Run containers from images pulled peer-to-peer",
		Long: `pouch is the client of pouchd, Pouchfly's container engine. Images come
through the local P2P agent; containers run with runc under pouchd's own
containerd, with PouchContainer's extras: --enableLxcfs (the container's own
/proc/meminfo, cpuinfo, uptime…), --disk-quota (size of the rootfs and
volumes), --runtime (named OCI runtimes) and --rich (an init as PID 1).

Private registries: pouch login REGISTRY keeps the credentials in
~/.pouch/config.json (mode 0600) and pouch sends them with each pull of an
image of that registry; pouchd never stores or logs them.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	def := os.Getenv("POUCH_HOST")
	if def == "" {
		def = api.DefaultHost
	}
	c.PersistentFlags().StringVarP(&host, "host", "H", def, "pouchd address (env POUCH_HOST)")
	c.AddCommand(
		pullCmd(), imagesCmd(), rmiCmd(), imageCmd(), loginCmd(), logoutCmd(),
		runCmd(), createCmd(), startCmd(), stopCmd(), killCmd(), rmCmd(), psCmd(), logsCmd(), execCmd(),
		inspectCmd(), infoCmd(), versionCmd(), volumeCmd(), waitCmd(), restartCmd(),
	)
	return c
}

func newClient() (*api.Client, error) {
	return api.NewClient(host)
}

func printJSON(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "    ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, string(b))
	return err
}

func shortID(id string) string {
	id = strings.TrimPrefix(id, "sha256:")
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
