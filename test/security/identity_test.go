package security

import (
	"context"
	"crypto/sha256"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	schedulerv1 "github.com/pouchfly/pouchfly/api/scheduler/v1"
	"github.com/pouchfly/pouchfly/peer"
	"github.com/pouchfly/pouchfly/piece"
	"github.com/pouchfly/pouchfly/scheduler"
	"github.com/pouchfly/pouchfly/test/cluster"
	"github.com/pouchfly/pouchfly/test/origin"
)

// A host cannot bind a task ID to content of its choosing: registering
// the ID of one URL with another URL is refused, and so is offering a
// made-up "held" copy of a URL task, so a later honest download of the
// URL — which has no digest to check the whole content against — never
// receives other content. A digest task registered with another URL is
// accepted (any mirror of the content will do), but the honest reader
// checks the digest: it gets the right content or an error, never the
// attacker's bytes.
func TestTaskIdentityCannotBePoisoned(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Peers: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := c.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	good := origin.Random(4<<20, 21)
	evil := origin.Random(4<<20, 22)
	goodDigest := c.Origin.Add("good", good)
	evilDigest := c.Origin.Add("evil", evil)
	goodID, err := piece.TaskID(c.Origin.URL("good"), "", peer.DefaultConfig().FilterQuery, "")
	if err != nil {
		t.Fatal(err)
	}
	fakeSums := make([][]byte, 4)
	for i := range fakeSums {
		s := sha256.Sum256(evil[i<<20 : (i+1)<<20])
		fakeSums[i] = s[:]
	}

	// The attacker: a host that offers a held copy of the good URL's task
	// (the evil content's piece digests), registers that task with the evil
	// URL, and the good content's digest with the evil URL.
	conn, err := grpc.NewClient(c.Node.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stream, err := schedulerv1.NewSchedulerClient(conn).Session(ctx)
	if err != nil {
		t.Fatal(err)
	}
	send := func(p *schedulerv1.PeerPacket) {
		if err := stream.Send(p); err != nil {
			t.Fatal(err)
		}
	}
	send(&schedulerv1.PeerPacket{Body: &schedulerv1.PeerPacket_Hello{Hello: &schedulerv1.Hello{HostId: "mallory", Ip: "127.0.0.66", UploadPort: 9,
		Held: []*schedulerv1.HeldTask{{TaskId: goodID, ContentLength: 4 << 20, PieceSize: 1 << 20, PieceSha256: fakeSums}}}}})
	send(&schedulerv1.PeerPacket{Body: &schedulerv1.PeerPacket_Register{Register: &schedulerv1.RegisterTask{TaskId: goodID, Url: c.Origin.URL("evil")}}})
	for refused := false; !refused; {
		p, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if e := p.GetError(); e != nil && e.TaskId == goodID && e.Code == schedulerv1.ErrorCode_ERROR_INVALID {
			refused = true
		}
		if ti := p.GetTask(); ti != nil && ti.TaskId == goodID {
			t.Fatalf("the supernode accepted the good URL's task for the evil URL")
		}
	}
	send(&schedulerv1.PeerPacket{Body: &schedulerv1.PeerPacket_Register{Register: &schedulerv1.RegisterTask{TaskId: goodDigest, Url: c.Origin.URL("evil")}}})
	time.Sleep(500 * time.Millisecond) // the evil seed runs by now

	r := c.Peers[0].Fetch(ctx, peer.Request{URL: c.Origin.URL("good")})
	if r.Err != nil {
		t.Fatal(r.Err)
	}
	if r.Digest != goodDigest {
		t.Fatalf("an honest download of the good URL got %s (evil: %v)", r.Digest, r.Digest == evilDigest)
	}
	// The stream of a digest task ends in an error instead of EOF when the
	// content does not match (dfget then keeps nothing, the mirror breaks
	// the connection before the last byte): content that ends cleanly
	// must be the good content.
	r = c.Peers[1].Fetch(ctx, peer.Request{URL: c.Origin.URL("good"), Digest: goodDigest})
	if r.Err == nil && r.Digest != goodDigest {
		t.Fatalf("an honest download of the good digest ended cleanly with %s (evil: %v)", r.Digest, r.Digest == evilDigest)
	}
	t.Logf("digest task registered with the evil URL first: the honest download got %d bytes, err=%v", r.Bytes, r.Err)
	if r.Err != nil {
		// The failed seed is replayed for failure_cache_ttl; then the next
		// registration seeds from its own URL.
		time.Sleep(scheduler.DefaultConfig().FailureCacheTTL + time.Second)
		r = c.Peers[1].Fetch(ctx, peer.Request{URL: c.Origin.URL("good"), Digest: goodDigest})
		if r.Err != nil || r.Digest != goodDigest {
			t.Fatalf("after the failure cache: %v, %s", r.Err, r.Digest)
		}
	}
}
