package e2e

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/peer"
	"github.com/pouchfly/pouchfly/test/cluster"
	"github.com/pouchfly/pouchfly/test/origin"
)

// A host without credentials gets nothing of protected content, even when
// other hosts already hold every piece; a host with credentials gets it
// from them.
func TestPrivateContentStaysPrivate(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Peers: 3})
	c.Origin.User, c.Origin.Password = "alice", "s3cret"
	data := origin.Random(8<<20, 31)
	digest := c.Origin.Add("private", data)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	good := http.Header{}
	good.Set("Authorization", "Basic YWxpY2U6czNjcmV0") // alice:s3cret
	url := c.Origin.URL("private")

	if r := c.Peers[0].Fetch(ctx, peer.Request{URL: url, Header: good, Digest: digest}); r.Err != nil || r.Digest != digest {
		t.Fatalf("owner: %v", r.Err)
	}
	egress := c.Origin.Egress()

	for name, h := range map[string]http.Header{
		"no credentials":    nil,
		"wrong credentials": {"Authorization": {"Basic bWFsbG9yeTp4"}},
	} {
		r := c.Peers[1].Fetch(ctx, peer.Request{URL: url, Header: h, Digest: digest, NoBackSource: true})
		var te *peer.TaskError
		if !errors.Is(r.Err, errdefs.ErrForbidden) || !errors.As(r.Err, &te) || te.OriginStatus != 401 {
			t.Errorf("%s: err = %v, want forbidden with the origin's 401", name, r.Err)
		}
		if r.Bytes != 0 {
			t.Errorf("%s: got %d bytes of private content", name, r.Bytes)
		}
		if st, err := c.Peers[1].Store().Stat(ctx, digest); err == nil && st.Bitmap.Count() > 0 {
			t.Errorf("%s: %d private pieces reached the outsider's store", name, st.Bitmap.Count())
		}
	}

	r := c.Peers[2].Fetch(ctx, peer.Request{URL: url, Header: good, Digest: digest})
	if r.Err != nil || r.Digest != digest {
		t.Fatalf("second owner: %v", r.Err)
	}
	if r.Received["peer"] == 0 {
		t.Errorf("second owner got nothing from peers: %v", r.Received)
	}
	// The origin only answered credential checks (HEAD), no second body.
	if extra := c.Origin.Egress() - egress; extra > 0 {
		t.Errorf("origin sent %d more body bytes after the first download", extra)
	}
}
