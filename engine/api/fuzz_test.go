package api

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pouchfly/pouchfly/internal/errdefs"
)

// FuzzDecodeAuth: any X-Registry-Auth header decodes or fails with
// ErrInvalid, never quoting the header; what decodes survives a round
// trip through EncodeAuth; printing it never shows the secrets.
func FuzzDecodeAuth(f *testing.F) {
	for _, a := range []AuthConfig{{Username: "alice", Password: "pw-123456", ServerAddress: "reg:5000"}, {IdentityToken: "tok-abcdef"}} {
		s, _ := EncodeAuth(a)
		f.Add(s)
	}
	f.Add("")
	f.Add("e30=")
	f.Add("not base64 !")
	f.Add("eyJwYXNzd29yZCI6ICJ4In0") // {"password": "x"}, raw
	f.Fuzz(func(t *testing.T, s string) {
		a, err := DecodeAuth(s)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalid) {
				t.Fatalf("error %v is not ErrInvalid", err)
			}
			// One of two fixed messages: nothing of the header.
			if msg := err.Error(); msg != AuthHeader+": not base64: "+errdefs.ErrInvalid.Error() &&
				msg != AuthHeader+": not an AuthConfig JSON object: "+errdefs.ErrInvalid.Error() {
				t.Fatalf("error %q", msg)
			}
			return
		}
		if a == nil {
			return
		}
		enc, err := EncodeAuth(*a)
		if err != nil {
			t.Fatal(err)
		}
		b, err := DecodeAuth(enc)
		if err != nil || b == nil || *b != *a {
			t.Fatalf("round trip: %+v → %+v (%v)", a, b, err)
		}
		for _, secret := range []string{a.Password, a.IdentityToken} {
			if len(secret) >= 6 && strings.Contains(a.String(), secret) {
				t.Fatalf("String() shows a secret")
			}
		}
	})
}

// FuzzNormalizeRegistry: normalizing is idempotent and accepted names
// carry no scheme, path, space or user info.
func FuzzNormalizeRegistry(f *testing.F) {
	for _, s := range []string{"", "docker.io", "https://index.docker.io/v1/", "reg:5000", "HTTP://Reg:5000/v2/", "a b", "user@reg", "https://", "reg/path"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := NormalizeRegistry(s)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalid) {
				t.Fatalf("error %v is not ErrInvalid", err)
			}
			return
		}
		if n == "" || strings.ContainsAny(n, "/ @") || strings.Contains(n, "://") {
			t.Fatalf("%q normalized to %q", s, n)
		}
		if m, err := NormalizeRegistry(n); err != nil || m != n {
			t.Fatalf("%q → %q → %q (%v): not idempotent", s, n, m, err)
		}
	})
}

// FuzzLoadAuthFile: any config.json loads or fails with ErrInvalid; a
// loaded file answers Get for its registries (those it keeps itself: no
// helper is run here) and keeps credentials through Set, Save and a
// reload.
func FuzzLoadAuthFile(f *testing.F) {
	for _, s := range []string{
		`{"auths":{"reg:5000":{"auth":"YWxpY2U6czM6Y3JldA=="}},"psFormat":"x"}`,
		`{"auths":{"https://index.docker.io/v1/":{"auth":"Ym9iOnB3","identitytoken":"t"}}}`,
		`{"credsStore":"pass","credHelpers":{"reg:5000":""}}`,
		`{"auths":{"r":{"auth":"!!"}}}`, `{"auths":[]}`, `[]`, ``, `{"credHelpers":{"r":"../x"}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		path := filepath.Join(t.TempDir(), "config.json")
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		af, err := LoadAuthFile(path)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalid) {
				t.Fatalf("error %v is not ErrInvalid", err)
			}
			return
		}
		for k := range af.auths {
			if reg, err := NormalizeRegistry(k); err == nil && af.Helper(reg) == "" {
				af.Get(reg) // no panic; an undecodable entry is an error
			}
		}
		const reg = "fuzz.example:5000"
		if af.Helper(reg) != "" {
			return
		}
		want := AuthConfig{Username: "u", Password: "p:w", ServerAddress: reg}
		if err := af.Set(reg, want); err != nil {
			t.Fatal(err)
		}
		if err := af.Save(); err != nil {
			t.Fatal(err)
		}
		back, err := LoadAuthFile(path)
		if err != nil {
			t.Fatalf("reload of a saved file: %v", err)
		}
		got, err := back.Get(reg)
		if err != nil || got == nil || *got != want {
			t.Fatalf("after Save and reload: %+v %v", got, err)
		}
	})
}
