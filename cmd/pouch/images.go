package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/pouchfly/pouchfly/engine/api"
	"github.com/pouchfly/pouchfly/internal/units"
)

// progressView renders a pull's JSON messages: on a terminal one line per
// layer with a progress bar, redrawn in place; otherwise one line per
// status change.
type progressView struct {
	out   io.Writer
	tty   bool
	ids   []string
	lines map[string]string
	last  map[string]string // last status per layer (non-TTY dedup)
}

func newProgressView(out io.Writer) *progressView {
	tty := false
	if f, ok := out.(*os.File); ok {
		tty = term.IsTerminal(int(f.Fd()))
	}
	return &progressView{out: out, tty: tty, lines: map[string]string{}, last: map[string]string{}}
}

// bar draws "[=====>      ]  1.2MiB/3.4MiB".
func bar(p *api.JSONProgress) string {
	if p == nil || p.Total <= 0 {
		return ""
	}
	const width = 40
	frac := float64(p.Current) / float64(p.Total)
	frac = min(max(frac, 0), 1)
	n := int(frac * width)
	b := strings.Repeat("=", n)
	if n < width {
		b += ">" + strings.Repeat(" ", width-n-1)
	}
	return fmt.Sprintf("[%s] %8s/%s", b, units.Format(p.Current), units.Format(p.Total))
}

func (v *progressView) update(m api.JSONMessage) {
	if m.Error != nil {
		return
	}
	if m.ID == "" || strings.HasPrefix(m.Status, "Pulling from") {
		line := m.Status
		if m.ID != "" {
			line = m.ID + ": " + m.Status
		}
		fmt.Fprintln(v.out, line)
		return
	}
	line := m.ID + ": " + m.Status
	if m.Status == "Downloading" {
		line += " " + bar(m.Progress)
	}
	if !v.tty {
		if v.last[m.ID] != m.Status {
			v.last[m.ID] = m.Status
			fmt.Fprintln(v.out, line)
		}
		return
	}
	idx := -1
	for i, id := range v.ids {
		if id == m.ID {
			idx = i
		}
	}
	if idx < 0 {
		v.ids = append(v.ids, m.ID)
		v.lines[m.ID] = line
		fmt.Fprintln(v.out, line)
		return
	}
	up := len(v.ids) - idx
	// Up to the layer's line, clear it, write, back down.
	fmt.Fprintf(v.out, "\x1b[%dA\r\x1b[2K%s\x1b[%dB\r", up, line, up)
	v.lines[m.ID] = line
}

// pullImage pulls ref through pouchd, with the credentials pouch login
// stored for its registry, if any.
func pullImage(ctx context.Context, cl *api.Client, ref string, out io.Writer) error {
	v := newProgressView(out)
	return cl.ImagePullWaitAuth(ctx, ref, credentialsFor(ref), v.update)
}

func pullCmd() *cobra.Command {
	var quiet bool
	return &cobra.Command{
		Use:   "pull IMAGE",
		Short: "Pull an image through the local P2P agent (progress per layer)",
		Long: `Pull an image through the local P2P agent's registry mirror (falling back
to the registry when the agent is down), showing a progress bar per layer.
An image of a private repository needs credentials: pouch login REGISTRY
first; pouch sends them with the pull, and the agent shares the layers
peer-to-peer only with hosts whose credentials the registry accepts.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := newClient()
			if err != nil {
				return err
			}
			var out io.Writer = os.Stdout
			if quiet {
				out = io.Discard
			}
			if err := pullImage(cmd.Context(), cl, args[0], out); err != nil {
				return err
			}
			if quiet {
				fmt.Println(args[0])
			}
			return nil
		},
	}
}

func imagesCmd() *cobra.Command {
	var quiet, digests bool
	c := &cobra.Command{
		Use:   "images [OPTIONS]",
		Short: "List images",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := newClient()
			if err != nil {
				return err
			}
			imgs, err := cl.ImageList(cmd.Context())
			if err != nil {
				return err
			}
			if quiet {
				for _, i := range imgs {
					fmt.Println(shortID(i.ID))
				}
				return nil
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 0, 3, ' ', 0)
			hdr := "REPOSITORY\tTAG\tIMAGE ID\tCREATED\tSIZE"
			if digests {
				hdr = "REPOSITORY\tTAG\tDIGEST\tIMAGE ID\tCREATED\tSIZE"
			}
			fmt.Fprintln(tw, hdr)
			for _, i := range imgs {
				tags := i.RepoTags
				if len(tags) == 0 {
					tags = []string{"<none>:<none>"}
				}
				for _, t := range tags {
					repo, tag := t, "<none>"
					if k := strings.LastIndex(t, ":"); k > strings.LastIndex(t, "/") {
						repo, tag = t[:k], t[k+1:]
					}
					created := humanSince(time.Unix(i.Created, 0)) + " ago"
					if digests {
						d := "<none>"
						for _, rd := range i.RepoDigests {
							if strings.HasPrefix(rd, repo+"@") {
								d = strings.TrimPrefix(rd, repo+"@")
							}
						}
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", repo, tag, d, shortID(i.ID), created, units.Format(i.Size))
						continue
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", repo, tag, shortID(i.ID), created, units.Format(i.Size))
				}
			}
			return tw.Flush()
		},
	}
	c.Flags().BoolVarP(&quiet, "quiet", "q", false, "only IDs")
	c.Flags().BoolVar(&digests, "digests", false, "show digests")
	return c
}

func rmiCmd() *cobra.Command {
	var force bool
	c := &cobra.Command{
		Use:   "rmi [OPTIONS] IMAGE [IMAGE...]",
		Short: "Remove images",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := newClient()
			if err != nil {
				return err
			}
			return eachContainer(args, func(name string) error { return cl.ImageRemove(cmd.Context(), name, force) })
		},
	}
	c.Flags().BoolVarP(&force, "force", "f", false, "remove even if containers use it")
	return c
}

func imageCmd() *cobra.Command {
	c := &cobra.Command{Use: "image", Short: "Manage images"}
	inspect := &cobra.Command{
		Use:   "inspect IMAGE [IMAGE...]",
		Short: "Show images as JSON",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := newClient()
			if err != nil {
				return err
			}
			var out []api.ImageInspect
			for _, a := range args {
				img, err := cl.ImageInspect(cmd.Context(), a)
				if err != nil {
					return err
				}
				out = append(out, img)
			}
			return printJSON(os.Stdout, out)
		},
	}
	c.AddCommand(inspect, pullCmd(), imagesCmdAs("ls"), rmiCmdAs("rm"))
	return c
}

func imagesCmdAs(use string) *cobra.Command { c := imagesCmd(); c.Use = use; return c }
func rmiCmdAs(use string) *cobra.Command    { c := rmiCmd(); c.Use = use + " IMAGE [IMAGE...]"; return c }
