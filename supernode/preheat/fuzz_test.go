package preheat

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/pouchfly/pouchfly/piece"
)

// fuzzRegistry answers a resolver as a registry would, from fuzz input:
// the top manifest or index (with "@CHILD@" replaced by the child's
// digest, so that an index can name it), the child manifest for any
// digest, an optional 401 challenge before credentials, and a token
// service.
type fuzzRegistry struct {
	top, child         []byte
	topType, childType string
	challenge          string
}

func (f *fuzzRegistry) RoundTrip(r *http.Request) (*http.Response, error) {
	resp := func(code int, ct string, body []byte) *http.Response {
		h := http.Header{}
		if ct != "" {
			h.Set("Content-Type", ct)
		}
		return &http.Response{StatusCode: code, Status: http.StatusText(code), Header: h, Request: r,
			Body: io.NopCloser(bytes.NewReader(body)), ContentLength: int64(len(body))}
	}
	if r.URL.Path == "/token" {
		return resp(200, "application/json", []byte(`{"token":"fuzz-token"}`)), nil
	}
	if f.challenge != "" && r.Header.Get("Authorization") == "" {
		rs := resp(401, "", nil)
		rs.Header.Set("WWW-Authenticate", f.challenge)
		return rs, nil
	}
	if strings.Contains(r.URL.Path, "/manifests/sha256:") {
		return resp(200, f.childType, f.child), nil
	}
	sum := sha256.Sum256(f.child)
	top := bytes.ReplaceAll(f.top, []byte("@CHILD@"), []byte("sha256:"+hex.EncodeToString(sum[:])))
	return resp(200, f.topType, top), nil
}

// FuzzResolve decodes manifests and indexes as a registry serves them to
// a preheat job: resolve never panics, and every blob it lists has a
// sha256 digest and a size that is not negative, within max_blobs.
func FuzzResolve(f *testing.F) {
	f.Fuzz(func(t *testing.T, top, child []byte, topType, childType, challenge string, platform string) {
		fr := &fuzzRegistry{top: top, child: child, topType: topType, childType: childType, challenge: challenge}
		r := newResolver(&http.Client{Transport: fr, Timeout: 5 * time.Second}, Config{MaxBlobs: 50,
			Registries: []Registry{{Host: "registry.test", URL: "http://registry.test"}}})
		ref, err := ParseReference("registry.test/fuzz/app:v1")
		if err != nil {
			t.Fatal(err)
		}
		var plats []ocispec.Platform
		if platform != "" {
			p, err := ParsePlatform(platform)
			if err != nil {
				return
			}
			plats = append(plats, p)
		}
		img, err := r.resolve(context.Background(), ref, plats, Credentials{Username: "u", Password: "p"})
		if err != nil {
			return
		}
		if len(img.Blobs) > 50 {
			t.Fatalf("%d blobs, max_blobs 50", len(img.Blobs))
		}
		for _, b := range img.Blobs {
			if piece.ValidDigest(b.Digest) != nil || b.Size < 0 {
				t.Fatalf("blob %+v", b)
			}
		}
	})
}

// FuzzParseChallenge reads a registry's WWW-Authenticate header.
func FuzzParseChallenge(f *testing.F) {
	f.Fuzz(func(t *testing.T, h string) {
		scheme, params := parseChallenge(h)
		if scheme != strings.ToLower(scheme) {
			t.Fatalf("scheme %q not lower-case", scheme)
		}
		for k := range params {
			if k != strings.ToLower(k) {
				t.Fatalf("key %q not lower-case", k)
			}
		}
	})
}

// FuzzParseReference reads an image reference from a preheat request or
// a webhook.
func FuzzParseReference(f *testing.F) {
	f.Fuzz(func(t *testing.T, s string) {
		named, err := ParseReference(s)
		if err != nil {
			return
		}
		again, err := ParseReference(named.String())
		if err != nil || again.String() != named.String() {
			t.Fatalf("ParseReference(%q) = %q, which reads back as %v, %v", s, named, again, err)
		}
	})
}
