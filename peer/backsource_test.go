package peer_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/peer"
	"github.com/pouchfly/pouchfly/piece"
	"github.com/pouchfly/pouchfly/test/origin"
)

// startLonePeer runs a peer whose supernode never answers.
func startLonePeer(t *testing.T, backSource bool) *peer.Peer {
	t.Helper()
	dir := t.TempDir()
	store, err := piece.NewDiskStore(filepath.Join(dir, "store"), nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg := peer.DefaultConfig()
	cfg.DataDir = dir
	cfg.UploadListen = "127.0.0.1:0"
	cfg.Supernodes = []string{"127.0.0.1:1"}
	cfg.SupernodeWait = 200 * time.Millisecond
	cfg.BackSource = backSource
	p, err := peer.New(cfg, store, peer.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	<-p.Started()
	t.Cleanup(func() { cancel(); <-done; store.Close() })
	return p
}

func TestBackSourceWithoutSupernode(t *testing.T) {
	o := origin.New()
	data := origin.Random(5<<20+123, 1)
	digest := o.Add("f", data)
	if err := o.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	p := startLonePeer(t, true)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	s, err := p.Download(ctx, peer.Request{URL: o.URL("f"), Digest: digest})
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(s)
	s.Close()
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if string(got) != string(data) {
		t.Fatal("content differs")
	}
	if eg := o.Egress(); eg != int64(len(data)) {
		t.Fatalf("origin sent %d bytes, want %d", eg, len(data))
	}
	// A second download is served from the store, not the origin.
	s2, err := p.Download(ctx, peer.Request{URL: o.URL("f"), Digest: digest})
	if err != nil {
		t.Fatal(err)
	}
	got, err = io.ReadAll(s2)
	s2.Close()
	if err != nil || len(got) != len(data) || o.Egress() != int64(len(data)) {
		t.Fatalf("second download: %d bytes, err %v, origin egress %d", len(got), err, o.Egress())
	}
}

func TestBackSourceErrors(t *testing.T) {
	o := origin.New()
	data := origin.Random(1<<20, 2)
	o.Add("f", data)
	if err := o.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	p := startLonePeer(t, true)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	read := func(req peer.Request) error {
		s, err := p.Download(ctx, req)
		if err != nil {
			return err
		}
		defer s.Close()
		_, err = io.ReadAll(s)
		return err
	}
	wrong := "sha256:0000000000000000000000000000000000000000000000000000000000000000"
	for _, tc := range []struct {
		name string
		req  peer.Request
		want error
	}{
		{"404", peer.Request{URL: o.URL("missing")}, errdefs.ErrNotFound},
		{"digest mismatch", peer.Request{URL: o.URL("f"), Digest: wrong}, errdefs.ErrDigestMismatch},
		{"bad url", peer.Request{URL: "ftp://x/y"}, errdefs.ErrInvalid},
		{"bad digest", peer.Request{URL: o.URL("f"), Digest: "sha256:xyz"}, errdefs.ErrInvalid},
		{"origin down", peer.Request{URL: "http://127.0.0.1:1/files/f"}, errdefs.ErrUnavailable},
	} {
		if err := read(tc.req); !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
		}
	}
	// Nothing corrupt stays in the store under the wrong digest.
	if _, err := p.Store().Stat(ctx, wrong); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("mismatched content kept in the store: %v", err)
	}

	o.User, o.Password = "u", "p"
	var te *peer.TaskError
	err := read(peer.Request{URL: o.URL("f") + "?x=1"})
	if !errors.As(err, &te) || !errors.Is(err, errdefs.ErrForbidden) || te.OriginStatus != 401 || te.OriginHeader.Get("WWW-Authenticate") == "" {
		t.Errorf("401: err = %v (%+v)", err, te)
	}
	h := http.Header{}
	h.Set("Authorization", "Basic dTpw") // u:p
	if err := read(peer.Request{URL: o.URL("f") + "?x=2", Header: h}); err != nil {
		t.Errorf("with credentials: %v", err)
	}
}

func TestNoBackSourceFailsClearly(t *testing.T) {
	o := origin.New()
	o.Add("f", origin.Random(1000, 3))
	if err := o.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	p := startLonePeer(t, false)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := p.Download(ctx, peer.Request{URL: o.URL("f")})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_, err = io.ReadAll(s)
	if !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("err = %v, want ErrUnavailable", err)
	}
	if o.Egress() != 0 {
		t.Fatalf("origin was contacted (%d bytes) with back-to-source off", o.Egress())
	}
}
