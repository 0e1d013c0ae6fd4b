package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/pouchfly/pouchfly/engine/api"
	"github.com/pouchfly/pouchfly/internal/errdefs"
)

// credentialsFor returns the stored credentials for image's registry (nil
// when there are none); a damaged credential file is reported and the
// pull goes on anonymously.
func credentialsFor(image string) *api.AuthConfig {
	registry, err := api.RegistryOf(image)
	if err != nil {
		return nil // pouchd says what is wrong with the name
	}
	path, err := api.DefaultAuthFile()
	if err != nil {
		return nil
	}
	f, err := api.LoadAuthFile(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "WARNING: pulling without credentials:", err)
		return nil
	}
	a, err := f.Get(registry)
	if err != nil {
		fmt.Fprintln(os.Stderr, "WARNING: pulling without credentials:", err)
		return nil
	}
	return a
}

func loginCmd() *cobra.Command {
	var username, password string
	var passwordStdin bool
	c := &cobra.Command{
		Use:   "login [OPTIONS] [REGISTRY]",
		Short: "Log in to a registry (credentials kept in ~/.pouch/config.json)",
		Long: `Log in to a registry. pouchd checks the credentials with the registry
(through the local agent's mirror, as pulls go); pouch then keeps them in
~/.pouch/config.json ($POUCH_CONFIG/config.json), a Docker-style file of
mode 0600, and sends them with every pull of an image of that registry.
pouchd never stores or logs them. REGISTRY defaults to docker.io.

The file holds them base64-encoded, not encrypted. As with Docker,
"credsStore": "NAME" in it (or "credHelpers": {"REGISTRY": "NAME"}) keeps
them in the credential helper docker-credential-NAME instead (pass,
secretservice, ...), and the file holds no secret.

Without -u or a password, pouch asks on the terminal. Prefer
--password-stdin to -p: a password on the command line is visible to
every user of the host (ps) and stays in the shell's history.`,
		Example: `  pouch login -u alice registry.local:5000
  echo "$TOKEN" | pouch login -u alice --password-stdin registry.local:5000`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			registry, err := registryArg(args)
			if err != nil {
				return err
			}
			if password != "" {
				if passwordStdin {
					return fmt.Errorf("--password and --password-stdin are mutually exclusive: %w", errdefs.ErrInvalid)
				}
				fmt.Fprintln(os.Stderr, "WARNING! Using --password via the CLI is insecure. Use --password-stdin.")
			}
			stdin := bufio.NewReader(os.Stdin)
			interactive := term.IsTerminal(int(os.Stdin.Fd()))
			if passwordStdin {
				if username == "" {
					return fmt.Errorf("--password-stdin needs --username: %w", errdefs.ErrInvalid)
				}
				b, err := io.ReadAll(io.LimitReader(stdin, 1<<20))
				if err != nil {
					return err
				}
				password = strings.TrimRight(string(b), "\r\n")
			}
			if username == "" {
				if !interactive {
					return fmt.Errorf("no username given (-u) and stdin is not a terminal: %w", errdefs.ErrInvalid)
				}
				fmt.Fprint(os.Stderr, "Username: ")
				line, err := stdin.ReadString('\n')
				if err != nil && !errors.Is(err, io.EOF) {
					return err
				}
				username = strings.TrimSpace(line)
			}
			if password == "" {
				if !interactive {
					return fmt.Errorf("no password given (--password-stdin) and stdin is not a terminal: %w", errdefs.ErrInvalid)
				}
				fmt.Fprint(os.Stderr, "Password: ")
				b, err := term.ReadPassword(int(os.Stdin.Fd()))
				fmt.Fprintln(os.Stderr)
				if err != nil {
					return err
				}
				password = string(b)
			}
			if username == "" || password == "" {
				return fmt.Errorf("a username and a password are required: %w", errdefs.ErrInvalid)
			}
			path, err := api.DefaultAuthFile()
			if err != nil {
				return err
			}
			f, err := api.LoadAuthFile(path)
			if err != nil {
				return err
			}
			cl, err := newClient()
			if err != nil {
				return err
			}
			a := api.AuthConfig{Username: username, Password: password, ServerAddress: registry}
			resp, err := cl.Login(cmd.Context(), a)
			if err != nil {
				return err
			}
			if resp.IdentityToken != "" {
				a.Password, a.IdentityToken = "", resp.IdentityToken
			}
			if err := f.Set(registry, a); err != nil {
				return err
			}
			if err := f.Save(); err != nil {
				return err
			}
			if h := f.Helper(registry); h != "" {
				fmt.Fprintf(os.Stderr, "Credentials for %s stored by docker-credential-%s\n", registry, h)
			} else {
				fmt.Fprintf(os.Stderr, "WARNING! Credentials for %s are stored unencrypted (base64, mode 0600) in %s.\n"+
					"Name a credential helper in its \"credsStore\" (e.g. \"pass\" for docker-credential-pass) to keep them encrypted.\n", registry, f.Path())
			}
			fmt.Println(resp.Status)
			return nil
		},
	}
	f := c.Flags()
	f.StringVarP(&username, "username", "u", "", "user name")
	f.StringVarP(&password, "password", "p", "", "password (insecure: prefer --password-stdin)")
	f.BoolVar(&passwordStdin, "password-stdin", false, "read the password from stdin")
	return c
}

func logoutCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "logout [REGISTRY]",
		Short: "Log out from a registry (forget its credentials)",
		Long: `Remove the credentials pouch keeps for REGISTRY (default docker.io) from
~/.pouch/config.json ($POUCH_CONFIG/config.json).`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			registry, err := registryArg(args)
			if err != nil {
				return err
			}
			path, err := api.DefaultAuthFile()
			if err != nil {
				return err
			}
			f, err := api.LoadAuthFile(path)
			if err != nil {
				return err
			}
			had, err := f.Delete(registry)
			if err != nil {
				return err
			}
			if !had {
				fmt.Printf("Not logged in to %s\n", registry)
				return nil
			}
			if err := f.Save(); err != nil {
				return err
			}
			fmt.Printf("Removing login credentials for %s\n", registry)
			return nil
		},
	}
}

// registryArg is the optional REGISTRY argument of login and logout,
// normalized (docker.io when absent).
func registryArg(args []string) (string, error) {
	server := ""
	if len(args) == 1 {
		server = args[0]
	}
	return api.NormalizeRegistry(server)
}
