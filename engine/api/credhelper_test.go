package api

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/internal/testenv"
)

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
