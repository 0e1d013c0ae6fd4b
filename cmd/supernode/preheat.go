package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/internal/units"
	"github.com/pouchfly/pouchfly/supernode/httpapi"
	"github.com/pouchfly/pouchfly/supernode/preheat"
)

// preheatCmd is `supernode preheat IMAGE|URL` and its list/status/cancel
// subcommands: a client of a running supernode's API.
func preheatCmd() *cobra.Command {
	var (
		server, token, tokenFile, selector, digest, username string
		platforms                                            []string
		cdnOnly, wait, passwordStdin, registryTokenStdin     bool
		asJSON                                               bool
		timeout                                              time.Duration
	)
	client := func() (*httpapi.Client, error) {
		if tokenFile != "" {
			b, err := os.ReadFile(tokenFile)
			if err != nil {
				return nil, fmt.Errorf("--token-file: %v: %w", err, errdefs.ErrInvalid)
			}
			token = strings.TrimSpace(string(b))
		}
		if token == "" {
			token = os.Getenv("POUCHFLY_API_TOKEN")
		}
		return &httpapi.Client{Base: server, Token: token}, nil
	}
	c := &cobra.Command{
		Use:   "preheat IMAGE|URL",
		Short: "Prefetch an image (or a URL) to hosts before they need it",
		Long: `preheat asks a running supernode to prefetch an image to its hosts: the
supernode resolves the reference (index → the platforms' manifests → configs
and layers), seeds every blob once from the registry into its CDN and orders
the selected agents to download them peer-to-peer.

  supernode preheat registry:5000/app:v1 --selector zone=a --platform linux/amd64 --wait
  supernode preheat https://files.example.com/model.bin --digest sha256:… --cdn-only
  supernode preheat list | status ID | cancel ID

The API token comes from --token, --token-file or POUCHFLY_API_TOKEN.
Registry credentials: --username with the password on stdin
(--password-stdin), or a registry bearer token on stdin
(--registry-token-stdin). They go to the supernode only.

Cancelling stops orders not yet sent; agents finish what they started.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := client()
			if err != nil {
				return err
			}
			req := preheat.Request{Selector: selector, Platforms: platforms, Scope: preheat.ScopeAll}
			if cdnOnly {
				req.Scope = preheat.ScopeCDN
			}
			if strings.HasPrefix(args[0], "http://") || strings.HasPrefix(args[0], "https://") {
				req.URL, req.Digest = args[0], digest
			} else {
				req.Image = args[0]
				if digest != "" {
					return fmt.Errorf("--digest applies to URLs; put the digest in the image reference: %w", errdefs.ErrInvalid)
				}
			}
			var creds preheat.Credentials
			switch {
			case passwordStdin && registryTokenStdin:
				return fmt.Errorf("--password-stdin and --registry-token-stdin exclude each other: %w", errdefs.ErrInvalid)
			case passwordStdin:
				if username == "" {
					return fmt.Errorf("--password-stdin needs --username: %w", errdefs.ErrInvalid)
				}
				creds.Username = username
				if creds.Password, err = readLine(cmd.InOrStdin()); err != nil {
					return err
				}
			case registryTokenStdin:
				if creds.Token, err = readLine(cmd.InOrStdin()); err != nil {
					return err
				}
			case username != "":
				return fmt.Errorf("--username needs --password-stdin: %w", errdefs.ErrInvalid)
			}
			if creds != (preheat.Credentials{}) {
				req.Credentials = &creds
			}
			ctx := cmd.Context()
			j, err := cl.Create(ctx, req)
			if err != nil {
				return err
			}
			if !wait {
				return printJob(cmd.OutOrStdout(), j, asJSON)
			}
			if timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, timeout)
				defer cancel()
			}
			j, err = waitJob(ctx, cl, j, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if err := printJob(cmd.OutOrStdout(), j, asJSON); err != nil {
				return err
			}
			if j.State != preheat.StateSucceeded {
				return fmt.Errorf("preheat %s %s: %s", j.ID, j.State, j.Error)
			}
			return nil
		},
	}
	pf := c.PersistentFlags()
	pf.StringVar(&server, "server", "http://127.0.0.1:8080", "supernode HTTP address (http_listen)")
	pf.StringVar(&token, "token", "", "API bearer token (or POUCHFLY_API_TOKEN)")
	pf.StringVar(&tokenFile, "token-file", "", "file holding the API bearer token")
	pf.BoolVar(&asJSON, "json", false, "print the job as JSON")
	f := c.Flags()
	f.StringVar(&selector, "selector", "", "only hosts with these labels: k=v[,k2=v2] (zone=a)")
	f.StringSliceVar(&platforms, "platform", nil, "os/arch[/variant] to preheat from an index (repeat; default all)")
	f.BoolVar(&cdnOnly, "cdn-only", false, "only seed the supernode's CDN")
	f.StringVar(&digest, "digest", "", "expected sha256 digest of a URL's content")
	f.StringVar(&username, "username", "", "registry user name (password from --password-stdin)")
	f.BoolVar(&passwordStdin, "password-stdin", false, "read the registry password from stdin")
	f.BoolVar(&registryTokenStdin, "registry-token-stdin", false, "read a registry bearer token from stdin")
	f.BoolVar(&wait, "wait", false, "wait for the job to end, with a progress bar")
	f.DurationVar(&timeout, "timeout", 0, "with --wait: give up waiting after this long (the job goes on)")

	c.AddCommand(&cobra.Command{
		Use: "list", Short: "List preheat jobs, newest first", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := client()
			if err != nil {
				return err
			}
			jobs, err := cl.List(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return json.NewEncoder(cmd.OutOrStdout()).Encode(jobs)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "%-16s %-10s %6s %7s  %s\n", "JOB", "STATE", "%", "HOSTS", "IMAGE/URL")
			for _, j := range jobs {
				fmt.Fprintf(w, "%-16s %-10s %6.1f %3d/%-3d  %s\n", j.ID, j.State, j.Percent, j.HostsDone, j.HostCount, j.Image+j.URL)
			}
			return nil
		},
	})
	c.AddCommand(&cobra.Command{
		Use: "status ID", Short: "Show a preheat job with its per-host progress", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := client()
			if err != nil {
				return err
			}
			j, err := cl.Get(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return printJob(cmd.OutOrStdout(), j, asJSON)
		},
	})
	c.AddCommand(&cobra.Command{
		Use: "cancel ID", Short: "Cancel a preheat job (agents finish what they started)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := client()
			if err != nil {
				return err
			}
			j, err := cl.Cancel(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return printJob(cmd.OutOrStdout(), j, asJSON)
		},
	})
	return c
}

func readLine(r io.Reader) (string, error) {
	s, err := bufio.NewReader(io.LimitReader(r, 16<<10)).ReadString('\n')
	if err != nil && err != io.EOF {
		return "", fmt.Errorf("reading stdin: %w", err)
	}
	s = strings.TrimRight(s, "\r\n")
	if s == "" {
		return "", fmt.Errorf("nothing on stdin: %w", errdefs.ErrInvalid)
	}
	return s, nil
}

// waitJob follows a job to its end: a progress bar on a terminal, a line
// per change otherwise.
func waitJob(ctx context.Context, cl *httpapi.Client, j preheat.Job, stderr io.Writer) (preheat.Job, error) {
	var bar *progressbar.ProgressBar
	if f, ok := stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		bar = progressbar.NewOptions(1000,
			progressbar.OptionSetWriter(stderr),
			progressbar.OptionSetDescription(j.ID),
			progressbar.OptionSetWidth(32),
			progressbar.OptionShowElapsedTimeOnFinish(),
			progressbar.OptionSetPredictTime(false),
			progressbar.OptionClearOnFinish(),
		)
	}
	last := ""
	final, err := cl.Wait(ctx, j.ID, 500*time.Millisecond, func(j preheat.Job) {
		desc := fmt.Sprintf("%s %s hosts %d/%d", j.ID, j.State, j.HostsDone, j.HostCount)
		if j.Scope == preheat.ScopeCDN {
			desc = fmt.Sprintf("%s %s cdn", j.ID, j.State)
		}
		if bar != nil {
			bar.Describe(desc)
			bar.Set(int(j.Percent * 10))
			return
		}
		line := fmt.Sprintf("%s %.1f%%", desc, j.Percent)
		if line != last {
			fmt.Fprintln(stderr, line)
			last = line
		}
	})
	if bar != nil {
		bar.Finish()
	}
	return final, err
}

func printJob(w io.Writer, j preheat.Job, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(j)
	}
	what := j.Image + j.URL
	fmt.Fprintf(w, "%s  %s  %.1f%%  %s\n", j.ID, j.State, j.Percent, what)
	if j.Digest != "" {
		fmt.Fprintf(w, "  digest %s, %d blobs, %s, platforms %s\n", j.Digest, j.BlobCount, units.Format(j.Bytes), strings.Join(j.Platforms, " "))
	}
	scope := j.Scope
	if j.Selector != "" {
		scope += " (" + j.Selector + ")"
	}
	fmt.Fprintf(w, "  scope %s, hosts %d/%d done\n", scope, j.HostsDone, j.HostCount)
	if j.Error != "" {
		fmt.Fprintf(w, "  error: %s\n", j.Error)
	}
	for _, h := range j.Hosts {
		fmt.Fprintf(w, "  %-24s %-8s %5.1f%%\n", h.ID, h.State, h.Percent)
	}
	return nil
}
