package api

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"unicode"

	"github.com/distribution/reference"
	"github.com/docker/docker-credential-helpers/client"
	"github.com/docker/docker-credential-helpers/credentials"

	"github.com/pouchfly/pouchfly/internal/errdefs"
)

// AuthHeader carries a pull's registry credentials to pouchd (Docker's
// X-Registry-Auth: base64url of an AuthConfig).
const AuthHeader = "X-Registry-Auth"

// AuthConfig is a user's credentials for one registry (Docker's
// AuthConfig; the body of POST /auth and, encoded, the X-Registry-Auth
// header of a pull). pouchd never stores or logs it.
type AuthConfig struct {
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`
	// ServerAddress is the registry, as image names spell it
	// ("registry.local:5000", "docker.io").
	ServerAddress string `json:"serveraddress,omitempty"`
	// IdentityToken is a refresh token used instead of the password.
	IdentityToken string `json:"identitytoken,omitempty"`
}

// String hides the secrets (AuthConfig may end up in a log line by
// mistake: it then shows only the user and the registry).
func (a AuthConfig) String() string {
	return fmt.Sprintf("{user %q at %s}", a.Username, a.ServerAddress)
}

// GoString hides the secrets from %#v as well.
func (a AuthConfig) GoString() string { return a.String() }

// AuthResponse answers POST /auth.
type AuthResponse struct {
	Status        string
	IdentityToken string `json:",omitempty"`
}

// EncodeAuth encodes a for the X-Registry-Auth header.
func EncodeAuth(a AuthConfig) (string, error) {
	b, err := json.Marshal(a)
	if err != nil {
		return "", err
	}
	return base64.URLEncoding.EncodeToString(b), nil
}

// DecodeAuth reads an X-Registry-Auth header ("" gives nil: anonymous).
// Errors wrap errdefs.ErrInvalid and never quote the header.
func DecodeAuth(s string) (*AuthConfig, error) {
	if s == "" {
		return nil, nil
	}
	var b []byte
	var err error
	for _, enc := range []*base64.Encoding{base64.URLEncoding, base64.RawURLEncoding, base64.StdEncoding, base64.RawStdEncoding} {
		if b, err = enc.DecodeString(s); err == nil {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("%s: not base64: %w", AuthHeader, errdefs.ErrInvalid)
	}
	var a AuthConfig
	if err := json.Unmarshal(b, &a); err != nil {
		return nil, fmt.Errorf("%s: not an AuthConfig JSON object: %w", AuthHeader, errdefs.ErrInvalid)
	}
	if a.Username == "" && a.Password == "" && a.IdentityToken == "" {
		return nil, nil
	}
	return &a, nil
}

// NormalizeRegistry turns what users give to login ("https://reg:5000/",
// "index.docker.io", "https://index.docker.io/v1/") into the registry as
// image names spell it ("reg:5000", "docker.io"). "" is docker.io.
func NormalizeRegistry(server string) (string, error) {
	s := strings.TrimSpace(server)
	if s == "" {
		return "docker.io", nil
	}
	if strings.Contains(s, "://") {
		u, err := url.Parse(s)
		if err != nil || u.Host == "" {
			return "", fmt.Errorf("registry %q: want host[:port]: %w", server, errdefs.ErrInvalid)
		}
		s = u.Host
	} else if i := strings.IndexByte(s, '/'); i >= 0 {
		s = s[:i]
	}
	s = strings.ToLower(s)
	switch s {
	case "docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com":
		return "docker.io", nil
	}
	if s == "" || strings.ContainsFunc(s, func(r rune) bool { return r == '@' || unicode.IsSpace(r) || unicode.IsControl(r) }) {
		return "", fmt.Errorf("registry %q: want host[:port]: %w", server, errdefs.ErrInvalid)
	}
	return s, nil
}

// RegistryOf returns the registry of an image name ("busybox" →
// "docker.io", "reg:5000/app:v1" → "reg:5000").
func RegistryOf(image string) (string, error) {
	n, err := reference.ParseNormalizedNamed(image)
	if err != nil {
		return "", fmt.Errorf("invalid image reference %q: %v: %w", image, err, errdefs.ErrInvalid)
	}
	return reference.Domain(n), nil
}

// AuthFile is the client's credential store: a Docker-style config.json
// ({"auths": {"REGISTRY": {"auth": base64("user:password")}}}), kept
// mode 0600 in a 0700 directory. Other keys of the file are preserved.
// As in Docker, "credsStore" (every registry) and "credHelpers" (per
// registry) name credential helpers — docker-credential-NAME programs on
// the PATH (pass, secretservice, …) — that keep the secrets instead;
// the file then holds an empty entry for the registry, and no secret.
// Not safe for concurrent use.
type AuthFile struct {
	path        string
	raw         map[string]json.RawMessage
	auths       map[string]authEntry
	credsStore  string
	credHelpers map[string]string
}

type authEntry struct {
	Auth          string `json:"auth,omitempty"`
	IdentityToken string `json:"identitytoken,omitempty"`
}

// DefaultAuthFile is $POUCH_CONFIG/config.json when POUCH_CONFIG names a
// directory, else ~/.pouch/config.json.
func DefaultAuthFile() (string, error) {
	if d := os.Getenv("POUCH_CONFIG"); d != "" {
		return filepath.Join(d, "config.json"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("credentials: no home directory (set POUCH_CONFIG): %w", err)
	}
	return filepath.Join(home, ".pouch", "config.json"), nil
}

// LoadAuthFile reads the store at path (a missing file is an empty store).
func LoadAuthFile(path string) (*AuthFile, error) {
	f := &AuthFile{path: path, raw: map[string]json.RawMessage{}, auths: map[string]authEntry{}}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return f, nil
	}
	if err != nil {
		return nil, fmt.Errorf("credentials: %w", err)
	}
	if len(strings.TrimSpace(string(b))) == 0 {
		return f, nil
	}
	if err := json.Unmarshal(b, &f.raw); err != nil {
		return nil, fmt.Errorf("credentials: %s is not a JSON object: %v: %w", path, err, errdefs.ErrInvalid)
	}
	if a, ok := f.raw["auths"]; ok {
		if err := json.Unmarshal(a, &f.auths); err != nil {
			return nil, fmt.Errorf("credentials: %s: bad \"auths\": %v: %w", path, err, errdefs.ErrInvalid)
		}
	}
	if a, ok := f.raw["credsStore"]; ok {
		if err := json.Unmarshal(a, &f.credsStore); err != nil || !validHelper(f.credsStore) {
			return nil, fmt.Errorf("credentials: %s: bad \"credsStore\" %s: want a helper name (docker-credential-NAME): %w", path, a, errdefs.ErrInvalid)
		}
	}
	if a, ok := f.raw["credHelpers"]; ok {
		if err := json.Unmarshal(a, &f.credHelpers); err != nil {
			return nil, fmt.Errorf("credentials: %s: bad \"credHelpers\": %v: %w", path, err, errdefs.ErrInvalid)
		}
		for reg, h := range f.credHelpers {
			if !validHelper(h) {
				return nil, fmt.Errorf("credentials: %s: credHelpers[%q] = %q: want a helper name (docker-credential-NAME): %w", path, reg, h, errdefs.ErrInvalid)
			}
		}
	}
	return f, nil
}

// validHelper accepts a helper name that is a plain program-name suffix
// (no path, no shell syntax).
func validHelper(name string) bool {
	if name == "" || len(name) > 64 {
		return name == ""
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// Helper is the credential helper that keeps registry's secrets ("" when
// the file itself does).
func (f *AuthFile) Helper(registry string) string {
	if k, ok := registryKey(f.credHelpers, registry); ok {
		return f.credHelpers[k]
	}
	return f.credsStore
}

// helperServer is the server name helpers know registry by (Docker's,
// so that credentials docker login stored are found).
func helperServer(registry string) string {
	if registry == "docker.io" {
		return "https://index.docker.io/v1/"
	}
	return registry
}

// tokenUser is the user name under which Docker's helpers keep an
// identity token.
const tokenUser = "<token>"

func helperProgram(name string) client.ProgramFunc {
	return client.NewShellProgramFunc("docker-credential-" + name)
}

func helperError(name, op string, err error) error {
	return fmt.Errorf("credentials: credential helper docker-credential-%s %s: %v: %w", name, op, err, errdefs.ErrUnavailable)
}

// Path is the file's path.
func (f *AuthFile) Path() string { return f.path }

// key finds the entry of registry, accepting Docker's spellings of
// Docker Hub and URL-style keys.
func (f *AuthFile) key(registry string) (string, bool) { return registryKey(f.auths, registry) }

// registryKey finds the key of m that names registry (normalized): the
// registry itself, or the first (in order) of Docker's spellings of it.
func registryKey[V any](m map[string]V, registry string) (string, bool) {
	if _, ok := m[registry]; ok {
		return registry, true
	}
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if n, err := NormalizeRegistry(k); err == nil && n == registry {
			return k, true
		}
	}
	return "", false
}

// Get returns the credentials stored for registry (normalized), or nil.
func (f *AuthFile) Get(registry string) (*AuthConfig, error) {
	if h := f.Helper(registry); h != "" {
		c, err := client.Get(helperProgram(h), helperServer(registry))
		if credentials.IsErrCredentialsNotFound(err) {
			return nil, nil
		}
		if err != nil {
			return nil, helperError(h, "get", err)
		}
		a := &AuthConfig{ServerAddress: registry, Username: c.Username, Password: c.Secret}
		if c.Username == tokenUser {
			a.Username, a.Password, a.IdentityToken = "", "", c.Secret
		}
		return a, nil
	}
	k, ok := f.key(registry)
	if !ok {
		return nil, nil
	}
	e := f.auths[k]
	a := &AuthConfig{ServerAddress: registry, IdentityToken: e.IdentityToken}
	if e.Auth != "" {
		b, err := base64.StdEncoding.DecodeString(e.Auth)
		if err != nil {
			return nil, fmt.Errorf("credentials for %s in %s: not base64: %w", registry, f.path, errdefs.ErrInvalid)
		}
		user, pass, ok := strings.Cut(string(b), ":")
		if !ok {
			return nil, fmt.Errorf("credentials for %s in %s: want user:password: %w", registry, f.path, errdefs.ErrInvalid)
		}
		a.Username, a.Password = user, pass
	}
	return a, nil
}

// Set stores a's credentials under registry (normalized): in its
// credential helper at once, if it has one (the file then gets an empty
// entry), else in the file; Save writes the file.
func (f *AuthFile) Set(registry string, a AuthConfig) error {
	if k, ok := f.key(registry); ok {
		delete(f.auths, k)
	}
	if h := f.Helper(registry); h != "" {
		c := &credentials.Credentials{ServerURL: helperServer(registry), Username: a.Username, Secret: a.Password}
		if a.IdentityToken != "" {
			c.Username, c.Secret = tokenUser, a.IdentityToken
		}
		if err := client.Store(helperProgram(h), c); err != nil {
			return helperError(h, "store", err)
		}
		f.auths[registry] = authEntry{}
		return nil
	}
	e := authEntry{IdentityToken: a.IdentityToken}
	if a.Username != "" || a.Password != "" {
		e.Auth = base64.StdEncoding.EncodeToString([]byte(a.Username + ":" + a.Password))
	}
	f.auths[registry] = e
	return nil
}

// Delete removes registry's credentials (from its credential helper too)
// and reports whether there were any; Save writes the file.
func (f *AuthFile) Delete(registry string) (bool, error) {
	k, ok := f.key(registry)
	if ok {
		delete(f.auths, k)
	}
	if h := f.Helper(registry); h != "" {
		err := client.Erase(helperProgram(h), helperServer(registry))
		switch {
		case err != nil && strings.Contains(err.Error(), credentials.NewErrCredentialsNotFound().Error()):
			// client.Erase passes the helper's "not found" on as text.
		case err != nil:
			return ok, helperError(h, "erase", err)
		default:
			ok = true
		}
	}
	return ok, nil
}

// Save writes the store atomically, mode 0600 (its directory 0700 when
// Save creates it).
func (f *AuthFile) Save() error {
	b, err := json.Marshal(f.auths)
	if err != nil {
		return err
	}
	f.raw["auths"] = b
	out, err := json.MarshalIndent(f.raw, "", "\t")
	if err != nil {
		return err
	}
	dir := filepath.Dir(f.path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("credentials: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".config.json.*")
	if err != nil {
		return fmt.Errorf("credentials: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("credentials: %w", err)
	}
	if _, err := tmp.Write(append(out, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("credentials: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("credentials: %w", err)
	}
	if err := os.Rename(tmp.Name(), f.path); err != nil {
		return fmt.Errorf("credentials: %w", err)
	}
	return nil
}
