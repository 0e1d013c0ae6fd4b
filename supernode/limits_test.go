package supernode

import (
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"

	schedulerv1 "github.com/pouchfly/pouchfly/api/scheduler/v1"
)

// A host registering faster than register_rate gets TaskError
// UNAVAILABLE for the excess and keeps its session; a host sending more
// packets than packet_rate loses its session (ResourceExhausted); in the
// meantime a well-behaved host registers and is served.
func TestSessionRateLimits(t *testing.T) {
	cfg := DefaultConfig()
	cfg.RegisterRate, cfg.RegisterBurst = 1, 5
	cfg.PacketRate, cfg.PacketBurst = 1, 50
	e := newEnv(t, cfg)

	greedy := e.connect("greedy")
	for i := 0; i < 10; i++ {
		id := fmt.Sprintf("sha256:%064x", i)
		greedy.send(&schedulerv1.PeerPacket{Body: &schedulerv1.PeerPacket_Register{Register: &schedulerv1.RegisterTask{
			TaskId: id, Url: "https://registry.example/v2/a/blobs/" + id}}})
	}
	throttled := 0
	for throttled < 5 {
		p := greedy.next()
		if e := p.GetError(); e != nil && e.Code == schedulerv1.ErrorCode_ERROR_UNAVAILABLE {
			throttled++
		}
	}

	good := e.connect("good")
	register(good)
	good.until(isParents)

	for i := 0; i < 100; i++ {
		if err := greedy.stream.Send(&schedulerv1.PeerPacket{Body: &schedulerv1.PeerPacket_Heartbeat{Heartbeat: &schedulerv1.Heartbeat{}}}); err != nil {
			break
		}
	}
	if code := greedy.ended(); code != codes.ResourceExhausted {
		t.Fatalf("flooding host's session ended with %v, want ResourceExhausted", code)
	}
	// The good host is still served.
	register(good)
	good.until(isParents)
}
