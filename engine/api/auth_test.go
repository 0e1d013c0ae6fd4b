package api

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/internal/testenv"
)

func TestNormalizeRegistry(t *testing.T) {
	for in, want := range map[string]string{
		"":                            "docker.io",
		"docker.io":                   "docker.io",
		"https://index.docker.io/v1/": "docker.io",
		"registry-1.docker.io":        "docker.io",
		"Reg.Local:5000":              "reg.local:5000",
		"http://127.0.0.1:5000/":      "127.0.0.1:5000",
		"127.0.0.1:5000/some/repo":    "127.0.0.1:5000",
	} {
		if got, err := NormalizeRegistry(in); err != nil || got != want {
			t.Errorf("NormalizeRegistry(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"http://", "a b", "user@host"} {
		if _, err := NormalizeRegistry(bad); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("NormalizeRegistry(%q): %v, want ErrInvalid", bad, err)
		}
	}
	for in, want := range map[string]string{"busybox": "docker.io", "reg:5000/app:v1": "reg:5000", "quay.io/a/b@sha256:" + strings.Repeat("a", 64): "quay.io"} {
		if got, err := RegistryOf(in); err != nil || got != want {
			t.Errorf("RegistryOf(%q) = %q, %v", in, got, err)
		}
	}
}

func TestAuthHeaderRoundTrip(t *testing.T) {
	a := AuthConfig{Username: "alice", Password: "pa:ss/+=", ServerAddress: "reg:5000"}
	enc, err := EncodeAuth(a)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeAuth(enc)
	if err != nil || got == nil || *got != a {
		t.Fatalf("DecodeAuth(EncodeAuth) = %+v, %v", got, err)
	}
	if got, err := DecodeAuth(""); got != nil || err != nil {
		t.Errorf("empty header: %v %v", got, err)
	}
	if _, err := DecodeAuth("!!not base64!!"); !errors.Is(err, errdefs.ErrInvalid) || strings.Contains(err.Error(), "!!") {
		t.Errorf("garbage header: %v", err)
	}
	// Printing an AuthConfig never shows the secrets.
	for _, s := range []string{fmt.Sprint(a), fmt.Sprintf("%v %+v %#v %s", a, a, a, a), fmt.Sprint(&a)} {
		if strings.Contains(s, a.Password) {
			t.Errorf("formatted AuthConfig shows the password: %s", s)
		}
	}
}

func TestAuthFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), ".pouch")
	path := filepath.Join(dir, "config.json")
	f, err := LoadAuthFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if a, err := f.Get("reg:5000"); a != nil || err != nil {
		t.Fatalf("empty store: %v %v", a, err)
	}
	if err := f.Set("reg:5000", AuthConfig{Username: "alice", Password: "s3:cret"}); err != nil {
		t.Fatal(err)
	}
	if err := f.Save(); err != nil {
		t.Fatal(err)
	}
	for p, mode := range map[string]os.FileMode{path: 0o600, dir: 0o700} {
		st, err := os.Stat(p)
		if err != nil || st.Mode().Perm() != mode {
			t.Errorf("%s: %v %v, want %v", p, st.Mode().Perm(), err, mode)
		}
	}
	// Docker's format; other keys survive.
	b, _ := os.ReadFile(path)
	if !strings.Contains(string(b), `"auth": "YWxpY2U6czM6Y3JldA=="`) {
		t.Errorf("file:\n%s", b)
	}
	if err := os.WriteFile(path, []byte(`{"auths":{"https://index.docker.io/v1/":{"auth":"Ym9iOnB3"}},"psFormat":"x"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err = LoadAuthFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if a, err := f.Get("docker.io"); err != nil || a == nil || a.Username != "bob" || a.Password != "pw" {
		t.Errorf("Docker Hub entry: %+v %v", a, err)
	}
	if err := f.Set("reg:5000", AuthConfig{Username: "carol", Password: "x"}); err != nil {
		t.Fatal(err)
	}
	if had, err := f.Delete("docker.io"); !had || err != nil {
		t.Errorf("Delete: %v %v", had, err)
	}
	if had, err := f.Delete("docker.io"); had || err != nil {
		t.Errorf("second Delete: %v %v", had, err)
	}
	if err := f.Save(); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Errorf("a 0644 file stays %v after Save; want 0600", st.Mode().Perm())
	}
	f, _ = LoadAuthFile(path)
	if a, _ := f.Get("reg:5000"); a == nil || a.Username != "carol" {
		t.Errorf("after reload: %+v", a)
	}
	if a, _ := f.Get("docker.io"); a != nil {
		t.Errorf("deleted entry came back: %+v", a)
	}
	if b, _ := os.ReadFile(path); !strings.Contains(string(b), "psFormat") {
		t.Errorf("other keys were dropped:\n%s", b)
	}
	if err := os.WriteFile(path, []byte("not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadAuthFile(path); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("damaged file: %v", err)
	}
}

func TestMain(m *testing.M) {
	testenv.RunCredentialHelper()
	os.Exit(m.Run())
}

// TestAuthFileCredentialHelper: with "credsStore" (or a "credHelpers"
// entry) the secrets go to the helper and never into config.json; Get,
// an identity token and Delete go through the helper too; Docker Hub is
// known to helpers by Docker's own server URL.
func TestAuthFileCredentialHelper(t *testing.T) {
	helperStore := testenv.InstallCredentialHelper(t)
	path := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(path, []byte(`{"credsStore":"pftest","credHelpers":{"plain.example":""},"psFormat":"x"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := LoadAuthFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if h := f.Helper("reg:5000"); h != "pftest" {
		t.Fatalf("helper %q", h)
	}
	if a, err := f.Get("reg:5000"); a != nil || err != nil {
		t.Fatalf("nothing stored yet: %+v %v", a, err)
	}
	const secret, token = "hunter2-secret", "identity-token-xyz"
	if err := f.Set("reg:5000", AuthConfig{Username: "alice", Password: secret}); err != nil {
		t.Fatal(err)
	}
	if err := f.Set("docker.io", AuthConfig{IdentityToken: token}); err != nil {
		t.Fatal(err)
	}
	// credHelpers names "" for plain.example: the file keeps its secret.
	if err := f.Set("plain.example", AuthConfig{Username: "bob", Password: "pw"}); err != nil {
		t.Fatal(err)
	}
	if err := f.Save(); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	for _, s := range []string{secret, token, "aHVudGVy"} {
		if strings.Contains(string(b), s) {
			t.Errorf("config.json holds %q:\n%s", s, b)
		}
	}
	if !strings.Contains(string(b), `"reg:5000": {}`) || !strings.Contains(string(b), "psFormat") {
		t.Errorf("config.json:\n%s", b)
	}
	hb, _ := os.ReadFile(helperStore)
	if !strings.Contains(string(hb), secret) || !strings.Contains(string(hb), "https://index.docker.io/v1/") {
		t.Errorf("helper store: %s", hb)
	}

	f, err = LoadAuthFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if a, err := f.Get("reg:5000"); err != nil || a == nil || a.Username != "alice" || a.Password != secret {
		t.Errorf("reg:5000 through the helper: %+v %v", a, err)
	}
	if a, err := f.Get("docker.io"); err != nil || a == nil || a.IdentityToken != token || a.Username != "" || a.Password != "" {
		t.Errorf("docker.io token through the helper: %+v %v", a, err)
	}
	if a, err := f.Get("plain.example"); err != nil || a == nil || a.Username != "bob" {
		t.Errorf("plain.example from the file: %+v %v", a, err)
	}
	if had, err := f.Delete("reg:5000"); !had || err != nil {
		t.Errorf("Delete: %v %v", had, err)
	}
	if a, err := f.Get("reg:5000"); a != nil || err != nil {
		t.Errorf("after Delete: %+v %v", a, err)
	}
	if hb, _ := os.ReadFile(helperStore); strings.Contains(string(hb), secret) {
		t.Errorf("the helper still holds the secret: %s", hb)
	}
	if had, err := f.Delete("reg:5000"); had || err != nil {
		t.Errorf("second Delete: %v %v", had, err)
	}

	// A helper that is not installed is a clear error, not a silent
	// anonymous pull or a secret written to the file.
	if err := os.WriteFile(path, []byte(`{"credsStore":"absent-helper"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	f, _ = LoadAuthFile(path)
	err = f.Set("reg:5000", AuthConfig{Username: "a", Password: secret})
	if err == nil || !strings.Contains(err.Error(), "docker-credential-absent-helper") {
		t.Errorf("missing helper: %v", err)
	}
	if _, err := f.Get("reg:5000"); err == nil {
		t.Error("Get with a missing helper succeeded")
	}
	// Helper names are program-name suffixes, nothing else.
	for _, bad := range []string{`{"credsStore":"../../bin/sh"}`, `{"credsStore":"a b"}`, `{"credHelpers":{"r":"x;rm"}}`, `{"credsStore":7}`} {
		os.WriteFile(path, []byte(bad), 0o600)
		if _, err := LoadAuthFile(path); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("%s: %v, want invalid", bad, err)
		}
	}
}
