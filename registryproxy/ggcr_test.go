package registryproxy

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

// A real client pulls an image through the mirror from a registry that
// wants a bearer token: it probes /v2/ on the mirror, gets the upstream's
// challenge, fetches a token from the upstream's realm itself, and pulls
// with it; layers come through the P2P network.
func TestGoContainerRegistryPull(t *testing.T) {
	c := agents(t)
	reg := newFakeRegistry(t)
	reg.authAll = true
	reg.user, reg.pass = "alice", "s3cret"
	// go-containerregistry refuses token realms on private IP literals.
	reg.realm = strings.Replace(reg.srv.URL, "127.0.0.1", "localhost", 1)
	img, err := random.Image(300<<10, 3)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := img.RawManifest()
	mt, _ := img.MediaType()
	reg.addManifest("library/demo", "v1", string(mt), raw)
	rawCfg, _ := img.RawConfigFile()
	reg.addBlob("library/demo", rawCfg)
	layers, _ := img.Layers()
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(rc)
		rc.Close()
		reg.addBlob("library/demo", b)
	}
	m, u := startMirror(t, baseConfig(reg), c.Peers[0].Peer, Options{})
	ref, err := name.ParseReference(strings.TrimPrefix(u, "http://")+"/library/demo:v1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	pulled, err := remote.Image(ref, remote.WithContext(ctx), remote.WithTransport(http.DefaultTransport),
		remote.WithAuth(&authn.Basic{Username: "alice", Password: "s3cret"}))
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(pulled); err != nil {
		t.Fatalf("pulled image does not validate: %v", err)
	}
	want, _ := img.Digest()
	if got, _ := pulled.Digest(); got != want {
		t.Fatalf("digest %s, want %s", got, want)
	}
	if n := settled(m.metrics.requests.WithLabelValues(kindBlob, "200"), 4); n < 4 {
		t.Errorf("blob GETs through the mirror: %v", n)
	}
	for _, r := range reg.requests() {
		if strings.Contains(r.path, "/blobs/") && r.method == "GET" && !strings.HasPrefix(r.auth, "Bearer ") {
			t.Errorf("upstream blob GET without the client's token")
		}
	}

	// Without credentials: the upstream's 401 reaches the client.
	_, err = remote.Image(ref, remote.WithContext(ctx), remote.WithTransport(http.DefaultTransport))
	var te *transport.Error
	if !errors.As(err, &te) || te.StatusCode != http.StatusUnauthorized {
		t.Fatalf("anonymous pull: %v", err)
	}
}
