package registry

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"go.uber.org/goleak"

	"github.com/pouchfly/pouchfly/internal/errdefs"
)

func startRegistry(t *testing.T, opts Options) *Registry {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := Start(ctx, opts)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return r
}

func smallImage(t *testing.T, seed uint64) *Image {
	t.Helper()
	img, err := GenerateImage(ImageOptions{MinLayerSize: 256 << 10, MaxLayerSize: 1 * MiB, Seed: seed})
	if err != nil {
		t.Fatalf("GenerateImage: %v", err)
	}
	return img
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestGenerateImage(t *testing.T) {
	img, err := GenerateImage(ImageOptions{Seed: 42})
	if err != nil {
		t.Fatal(err)
	}
	if len(img.Platforms) != 2 {
		t.Fatalf("platforms: %d", len(img.Platforms))
	}
	// 2 shared + 1 unique per platform, plus 2 configs.
	if len(img.Blobs) != 6 {
		t.Fatalf("blobs: %d, want 6", len(img.Blobs))
	}
	amd, arm := img.Platform("linux", "amd64"), img.Platform("linux", "arm64")
	if amd == nil || arm == nil {
		t.Fatal("missing platform")
	}
	if amd.Manifest.Layers[0].Digest != arm.Manifest.Layers[0].Digest ||
		amd.Manifest.Layers[1].Digest != arm.Manifest.Layers[1].Digest ||
		amd.Manifest.Layers[2].Digest == arm.Manifest.Layers[2].Digest {
		t.Fatal("want the first 2 layers shared and the last one per platform")
	}
	var index ocispec.Index
	if err := json.Unmarshal(img.IndexBytes, &index); err != nil || len(index.Manifests) != 2 ||
		index.Manifests[1].Platform.Architecture != "arm64" || index.MediaType != ocispec.MediaTypeImageIndex {
		t.Fatalf("index: %v %+v", err, index)
	}
	if digest.FromBytes(img.IndexBytes) != img.IndexDescriptor.Digest {
		t.Fatal("index digest")
	}
	var sum int64
	for _, b := range img.Blobs {
		if digest.FromBytes(b.Data) != b.Descriptor.Digest || int64(len(b.Data)) != b.Descriptor.Size {
			t.Fatalf("blob %s: descriptor does not match data", b.Descriptor.Digest)
		}
		sum += b.Descriptor.Size
	}
	if sum != img.BlobBytes() {
		t.Fatal("BlobBytes")
	}
	// Every layer is a real tar.gz whose tar digest is the config's diff ID,
	// and whose content size is within the bounds (random: incompressible).
	for _, p := range img.Platforms {
		for i, l := range p.Manifest.Layers {
			if l.Size < 1*MiB || l.Size > 8*MiB+64<<10 {
				t.Errorf("layer %d size %d out of 1–8 MiB", i, l.Size)
			}
			data, _ := img.Blob(l.Digest)
			zr, err := gzip.NewReader(bytes.NewReader(data))
			if err != nil {
				t.Fatal(err)
			}
			dg := digest.SHA256.Digester()
			tr := tar.NewReader(io.TeeReader(zr, dg.Hash()))
			files := 0
			for {
				h, err := tr.Next()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatalf("layer %d: tar: %v", i, err)
				}
				if h.Typeflag == tar.TypeReg {
					files++
				}
			}
			_, _ = io.Copy(io.Discard, zr) // tar padding to the end
			if dg.Digest() != p.Config.RootFS.DiffIDs[i] {
				t.Errorf("layer %d: diff ID %s, config says %s", i, dg.Digest(), p.Config.RootFS.DiffIDs[i])
			}
			if files != 4 {
				t.Errorf("layer %d: %d files", i, files)
			}
		}
	}
	// Same seed, same image.
	again, _ := GenerateImage(ImageOptions{Seed: 42})
	if again.IndexDescriptor.Digest != img.IndexDescriptor.Digest {
		t.Fatal("same seed gave another image")
	}
}

func TestGenerateImageOptions(t *testing.T) {
	img, err := GenerateImage(ImageOptions{
		Layers: 2, UniqueLayers: -1, MinLayerSize: 64 << 10, MaxLayerSize: 64 << 10,
		FilesPerLayer: 1, Compressible: true,
		Platforms: []ocispec.Platform{{OS: "linux", Architecture: "amd64"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(img.Blobs) != 3 || len(img.Platforms) != 1 {
		t.Fatalf("blobs %d platforms %d", len(img.Blobs), len(img.Platforms))
	}
	if l := img.Platforms[0].Manifest.Layers[0]; l.Size > 48<<10 {
		t.Errorf("compressible 64 KiB layer is %d bytes gzip'd", l.Size)
	}
	for _, bad := range []ImageOptions{
		{Layers: 2, UniqueLayers: 3},
		{MinLayerSize: 10, MaxLayerSize: 5},
		{Layers: -1},
	} {
		if _, err := GenerateImage(bad); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("%+v: err %v, want ErrInvalid", bad, err)
		}
	}
}

func TestPushPullNoAuth(t *testing.T) {
	ctx := testCtx(t)
	r := startRegistry(t, Options{})
	img := smallImage(t, 1)
	if err := Push(ctx, r.URL(), "library/app", "v1", img, Credentials{}); err != nil {
		t.Fatal(err)
	}
	r.ResetStats()
	c := r.Client(Credentials{})
	data, mt, d, err := c.GetManifest(ctx, "library/app", "v1")
	if err != nil {
		t.Fatal(err)
	}
	if mt != ocispec.MediaTypeImageIndex || d != img.IndexDescriptor.Digest || !bytes.Equal(data, img.IndexBytes) {
		t.Fatalf("index: %s %s", mt, d)
	}
	for _, b := range img.Blobs {
		if _, err := c.GetBlob(ctx, "library/app", b.Descriptor.Digest); err != nil {
			t.Fatal(err)
		}
	}
	st := r.Stats()
	if st.BlobBytes != img.BlobBytes() || r.BlobEgress() != img.BlobBytes() {
		t.Fatalf("blob egress %d, want %d", st.BlobBytes, img.BlobBytes())
	}
	if st.ManifestBytes != int64(len(img.IndexBytes)) || st.Bytes != st.BlobBytes+st.ManifestBytes || r.Egress() != st.Bytes {
		t.Fatalf("stats %+v", st)
	}
	for _, b := range img.Blobs {
		if st.BlobGets[b.Descriptor.Digest] != 1 {
			t.Fatalf("blob %s fetched %d times", b.Descriptor.Digest, st.BlobGets[b.Descriptor.Digest])
		}
	}
	p := st.Paths["/v2/library/app/blobs/"+img.Blobs[0].Descriptor.Digest.String()]
	if p.Requests != 1 || p.Bytes != img.Blobs[0].Descriptor.Size {
		t.Fatalf("path stats %+v", p)
	}
	// Unknown blob → 404 as ErrNotFound.
	if _, err := c.GetBlob(ctx, "library/app", digest.FromString("nope")); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("missing blob: %v", err)
	}
}

// TestTokenAuth is the protected-registry contract the peer and the
// registry proxy rely on: anonymous pull of public/, 401 with a Bearer
// challenge for private/ without credentials, 200 with them.
func TestTokenAuth(t *testing.T) {
	ctx := testCtx(t)
	r := startRegistry(t, Options{Auth: AuthToken, Users: map[string]string{"alice": "wonderland"}})
	img := smallImage(t, 2)
	alice := Credentials{Username: "alice", Password: "wonderland"}
	for _, repo := range []string{"public/app", "private/app"} {
		if err := Push(ctx, r.URL(), repo, "v1", img, alice); err != nil {
			t.Fatalf("push %s: %v", repo, err)
		}
	}
	if err := Push(ctx, r.URL(), "public/other", "v1", img, Credentials{}); !errors.Is(err, errdefs.ErrForbidden) {
		t.Fatalf("anonymous push: %v, want forbidden", err)
	}
	r.ResetStats()

	// Raw protocol: anonymous GET of a private manifest.
	raw := func(path, authz string) *http.Response {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, r.URL()+path, nil)
		req.Header.Set("Accept", ManifestAccept)
		if authz != "" {
			req.Header.Set("Authorization", authz)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	resp := raw("/v2/private/app/manifests/v1", "")
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("anonymous private manifest: %d", resp.StatusCode)
	}
	scheme, params := parseChallenge(resp.Header.Get("WWW-Authenticate"))
	if scheme != "Bearer" || params["realm"] != r.URL()+TokenPath || params["service"] != Service ||
		params["scope"] != "repository:private/app:pull" {
		t.Fatalf("challenge %q", resp.Header.Get("WWW-Authenticate"))
	}
	tokenFor := func(scope string, user, pass string) (int, string) {
		q := url.Values{"service": {Service}, "scope": {scope}}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, r.TokenRealm()+"?"+q.Encode(), nil)
		if user != "" {
			req.SetBasicAuth(user, pass)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var tr tokenResponse
		_ = json.NewDecoder(resp.Body).Decode(&tr)
		return resp.StatusCode, tr.Token
	}
	// Anonymous token for private: issued, but without access.
	code, tok := tokenFor("repository:private/app:pull", "", "")
	if code != http.StatusOK || tok == "" {
		t.Fatalf("anonymous token: %d", code)
	}
	resp = raw("/v2/private/app/manifests/v1", "Bearer "+tok)
	if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(resp.Header.Get("WWW-Authenticate"), `error="insufficient_scope"`) {
		t.Fatalf("anonymous token on private: %d %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	}
	// Wrong password: refused by the token server.
	if code, _ := tokenFor("repository:private/app:pull", "alice", "nope"); code != http.StatusUnauthorized {
		t.Fatalf("wrong password: %d", code)
	}
	// Right password: the manifest.
	code, tok = tokenFor("repository:private/app:pull", "alice", "wonderland")
	if code != http.StatusOK {
		t.Fatalf("alice token: %d", code)
	}
	if resp := raw("/v2/private/app/manifests/v1", "Bearer "+tok); resp.StatusCode != http.StatusOK {
		t.Fatalf("alice private manifest: %d", resp.StatusCode)
	}
	// A private/app token does not open private/other.
	if resp := raw("/v2/private/other/manifests/v1", "Bearer "+tok); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("token scope leak: %d", resp.StatusCode)
	}
	// Anonymous token for public: works.
	_, tok = tokenFor("repository:public/app:pull", "", "")
	if resp := raw("/v2/public/app/manifests/v1", "Bearer "+tok); resp.StatusCode != http.StatusOK {
		t.Fatalf("anonymous public manifest: %d", resp.StatusCode)
	}
	// A forged token (signed by another key) is rejected.
	other, err := newTokenServer(nil, DefaultIsPrivate, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	forged := httpRecorder(t, other, "/token?scope=repository:public/app:pull&service="+Service)
	if resp := raw("/v2/public/app/manifests/v1", "Bearer "+forged); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("forged token: %d", resp.StatusCode)
	}

	// Through Client: anonymous public pull works, private is forbidden;
	// alice pulls private.
	anon := r.Client(Credentials{})
	if _, _, _, err := anon.GetManifest(ctx, "public/app", "v1"); err != nil {
		t.Fatalf("anonymous public: %v", err)
	}
	if _, err := anon.GetBlob(ctx, "public/app", img.Blobs[0].Descriptor.Digest); err != nil {
		t.Fatalf("anonymous public blob: %v", err)
	}
	_, _, _, err = anon.GetManifest(ctx, "private/app", "v1")
	var se *StatusError
	if !errors.Is(err, errdefs.ErrForbidden) || !errors.As(err, &se) || !strings.HasPrefix(se.Challenge, "Bearer realm=") {
		t.Fatalf("anonymous private: %v", err)
	}
	ac := r.Client(alice)
	r.ResetStats()
	for _, p := range img.Platforms {
		if _, _, _, err := ac.GetManifest(ctx, "private/app", p.Descriptor.Digest.String()); err != nil {
			t.Fatal(err)
		}
	}
	for _, b := range img.Blobs {
		if _, err := ac.GetBlob(ctx, "private/app", b.Descriptor.Digest); err != nil {
			t.Fatalf("alice private blob: %v", err)
		}
	}
	st := r.Stats()
	if st.BlobBytes != img.BlobBytes() {
		t.Fatalf("blob egress %d, want %d", st.BlobBytes, img.BlobBytes())
	}
	if st.TokenRequests == 0 || float64(st.Bytes) > 1.05*float64(img.BlobBytes()) {
		t.Fatalf("egress %d (token requests %d) for %d blob bytes", st.Bytes, st.TokenRequests, img.BlobBytes())
	}
}

// TestTokenOAuthPost covers the POST form containerd uses when it has
// credentials, and refresh tokens.
func TestTokenOAuthPost(t *testing.T) {
	ctx := testCtx(t)
	r := startRegistry(t, Options{Auth: AuthToken})
	post := func(form url.Values) (int, tokenResponse) {
		resp, err := http.PostForm(r.TokenRealm(), form)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var tr tokenResponse
		_ = json.NewDecoder(resp.Body).Decode(&tr)
		return resp.StatusCode, tr
	}
	scope := "repository:private/x:pull repository:private/y:pull,push"
	code, tr := post(url.Values{"grant_type": {"password"}, "username": {DefaultUser}, "password": {DefaultPassword},
		"service": {Service}, "scope": {scope}, "client_id": {"containerd-client"}})
	if code != http.StatusOK || tr.AccessToken == "" || tr.RefreshToken == "" {
		t.Fatalf("password grant: %d %+v", code, tr)
	}
	code, tr2 := post(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {tr.RefreshToken},
		"service": {Service}, "scope": {scope}})
	if code != http.StatusOK || tr2.AccessToken == "" {
		t.Fatalf("refresh grant: %d", code)
	}
	if code, _ := post(url.Values{"grant_type": {"password"}, "username": {DefaultUser}, "password": {"x"}}); code != http.StatusUnauthorized {
		t.Fatalf("bad password: %d", code)
	}
	if code, _ := post(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {"bogus"}}); code != http.StatusUnauthorized {
		t.Fatalf("bad refresh token: %d", code)
	}
	// The token opens the registry (tags list of an empty repo: 404 from
	// the registry itself, not 401).
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, r.URL()+"/v2/private/x/tags/list", nil)
	req.Header.Set("Authorization", "Bearer "+tr2.AccessToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("tags with token: %d", resp.StatusCode)
	}
}

func TestTLS(t *testing.T) {
	ctx := testCtx(t)
	r := startRegistry(t, Options{SelfSignedTLS: true, Auth: AuthToken})
	if !strings.HasPrefix(r.URL(), "https://") || r.Certs() == nil {
		t.Fatalf("url %s", r.URL())
	}
	img := smallImage(t, 3)
	if err := r.Push(ctx, "public/app", "v1", img); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := r.Client(Credentials{}).GetManifest(ctx, "public/app", "v1"); err != nil {
		t.Fatal(err)
	}
	// A client that does not trust the CA fails.
	c, _ := NewClient(r.URL(), Credentials{}, &http.Client{})
	if err := c.Ping(ctx); err == nil {
		t.Fatal("untrusted CA accepted")
	}
}

func TestChallengeParse(t *testing.T) {
	s, p := parseChallenge(`Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push repository:c:pull",error="insufficient_scope"`)
	if s != "Bearer" || p["realm"] != "https://auth.example/token" || p["service"] != "registry.example" ||
		p["scope"] != "repository:a/b:pull,push repository:c:pull" || p["error"] != "insufficient_scope" {
		t.Fatalf("%s %v", s, p)
	}
	for _, tc := range []struct {
		in   string
		ok   bool
		name string
	}{
		{"repository:a/b:pull", true, "a/b"},
		{"repository:localhost:5000/a:pull,push", true, "localhost:5000/a"},
		{"repository(plugin):a:pull", true, "a"},
		{"registry:catalog:*", true, "catalog"},
		{"repository:a", false, ""},
		{"repository::pull", false, ""},
	} {
		ra, ok := parseScope(tc.in)
		if ok != tc.ok || (ok && ra.Name != tc.name) {
			t.Errorf("%s: %v %+v", tc.in, ok, ra)
		}
	}
}

func httpRecorder(t *testing.T, h http.Handler, target string) string {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, target, nil))
	var tr tokenResponse
	if err := json.Unmarshal(rec.Body.Bytes(), &tr); err != nil || tr.Token == "" {
		t.Fatalf("token: %v %s", err, rec.Body.String())
	}
	return tr.Token
}

// TestCloseLeavesNothing: Close stops every goroutine Start began and
// removes the temp dir.
func TestCloseLeavesNothing(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent(), goleak.IgnoreTopFunction(BroadcasterGoroutine))
	ctx := testCtx(t)
	r, err := Start(ctx, Options{Auth: AuthToken})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Push(ctx, "public/a", "v1", smallImage(t, 4)); err != nil {
		t.Fatal(err)
	}
	r.HTTPClient().CloseIdleConnections()
	http.DefaultClient.CloseIdleConnections()
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := os.Stat(r.Dir()); !os.IsNotExist(err) {
		t.Fatalf("dir %s left: %v", r.Dir(), err)
	}
}

// TestWrapAndAddr: a fault injected by Wrap reaches clients, and Addr
// picks the listening address.
func TestWrapAndAddr(t *testing.T) {
	ctx := testCtx(t)
	fail := true
	r := startRegistry(t, Options{
		Addr: "127.0.0.2:0",
		Wrap: func(h http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
				if fail && req.Method == http.MethodGet && strings.Contains(req.URL.Path, "/blobs/") {
					http.Error(w, "injected", http.StatusServiceUnavailable)
					return
				}
				h.ServeHTTP(w, req)
			})
		},
	})
	if !strings.HasPrefix(r.Host(), "127.0.0.2:") {
		t.Fatalf("host %s", r.Host())
	}
	img := smallImage(t, 5)
	if err := r.Push(ctx, "library/x", "v1", img); err != nil {
		t.Fatal(err)
	}
	d := img.Blobs[0].Descriptor.Digest
	if _, err := r.Client(Credentials{}).GetBlob(ctx, "library/x", d); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("injected 503: %v", err)
	}
	if st := r.Stats(); st.BlobGets[d] != 0 || st.BlobBytes != int64(len("injected\n")) {
		t.Fatalf("stats after a failed GET: %+v", st)
	}
}
