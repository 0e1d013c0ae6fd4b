package supernode

import (
	"context"
	"encoding/binary"
	"runtime"
	"testing"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/protobuf/proto"

	schedulerv1 "github.com/pouchfly/pouchfly/api/scheduler/v1"
	"github.com/pouchfly/pouchfly/internal/clock"
	"github.com/pouchfly/pouchfly/internal/tasktoken"
	"github.com/pouchfly/pouchfly/scheduler"
)

// fuzzTask is registered by a well-behaved host before the fuzzed one
// speaks, so that fuzzed packets about it reach the scheduler's richer
// paths (parents, bitmaps, reports).
const fuzzTask = "sha256:5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"

// splitPackets cuts a fuzz input into messages: a 2-byte big-endian
// length, then that many bytes, again and again.
func splitPackets(b []byte) [][]byte {
	var out [][]byte
	for len(b) >= 2 && len(out) < 64 {
		n := int(binary.BigEndian.Uint16(b))
		b = b[2:]
		n = min(n, len(b))
		out = append(out, b[:n])
		b = b[n:]
	}
	return out
}

// FuzzSession feeds a session what a host may send: a Hello (validated
// as the server does) and then any packets, dispatched to a real
// scheduler with the server as its sender. Nothing may panic, and every
// packet queued to a host must be well formed.
func FuzzSession(f *testing.F) {
	f.Fuzz(func(t *testing.T, helloBytes []byte, stream []byte) {
		defer watchdog(10 * time.Second)()
		var hello schedulerv1.Hello
		if proto.Unmarshal(helloBytes, &hello) != nil {
			return
		}
		info, err := validateHello(&hello)
		if err != nil {
			return
		}
		signer, _ := tasktoken.NewSigner(nil)
		srv, err := NewServer(DefaultConfig())
		if err != nil {
			t.Fatal(err)
		}
		sched, err := scheduler.New(scheduler.DefaultConfig(), srv, &fakeSeeder{}, signer, clock.Real{})
		if err != nil {
			t.Fatal(err)
		}
		srv.SetBackend(sched)
		var b Backend = sched
		ctx, cancel := context.WithCancelCause(context.Background())
		defer cancel(nil)
		newSess := func(id string) *session {
			ss := &session{id: id, out: make(chan *schedulerv1.SchedulerPacket, 4096), cancel: cancel,
				packets: rate.NewLimiter(rate.Inf, 1), regs: rate.NewLimiter(rate.Inf, 1)}
			srv.mu.Lock()
			srv.sessions[id] = ss
			srv.mu.Unlock()
			return ss
		}
		// A well-behaved host already on the task.
		if info.ID != "other" {
			newSess("other")
			if err := b.AddHost(scheduler.HostInfo{ID: "other", IP: "127.0.0.9", UploadPort: 9}); err != nil {
				t.Fatal(err)
			}
			b.Register("other", &schedulerv1.RegisterTask{TaskId: fuzzTask, Url: "http://origin/x", Digest: fuzzTask})
		}
		ss := newSess(info.ID)
		if err := b.AddHost(info); err != nil {
			return
		}
		held := hello.Held
		if len(held) > 8 {
			held = held[:8]
		}
		for _, ht := range held {
			_ = b.Held(info.ID, ht)
		}
		for _, raw := range splitPackets(stream) {
			var p schedulerv1.PeerPacket
			if proto.Unmarshal(raw, &p) != nil {
				continue
			}
			if err := srv.dispatch(ctx, b, ss, &p); err != nil {
				break // the session ends, as recvLoop does
			}
		}
		deadline := time.Now().Add(time.Second)
		for len(ss.out) > 0 && time.Now().Before(deadline) {
			p := <-ss.out
			if _, err := proto.Marshal(p); err != nil {
				t.Fatalf("packet to the host does not marshal: %v", err)
			}
			if p.Body == nil {
				t.Fatal("empty packet queued to the host")
			}
		}
		b.RemoveHost(info.ID)
	})
}

// watchdog crashes the process, with every goroutine's stack, when an
// input runs longer than d (the fuzzer reports a crash and keeps the
// input; a hang alone it would not report).
func watchdog(d time.Duration) (stop func()) {
	done := make(chan struct{})
	go func() {
		select {
		case <-done:
		case <-time.After(d):
			buf := make([]byte, 1<<20)
			panic("fuzz input ran longer than " + d.String() + ":\n" + string(buf[:runtime.Stack(buf, true)]))
		}
	}()
	return func() { close(done) }
}

// FuzzValidateHello checks the first packet of every session alone.
func FuzzValidateHello(f *testing.F) {
	f.Fuzz(func(t *testing.T, helloBytes []byte) {
		var hello schedulerv1.Hello
		if proto.Unmarshal(helloBytes, &hello) != nil {
			return
		}
		info, err := validateHello(&hello)
		if err != nil {
			return
		}
		if !hostIDRe.MatchString(info.ID) || info.UploadPort < 1 || info.UploadPort > 65535 || len(info.Labels) > MaxLabels {
			t.Fatalf("validateHello accepted %+v", info)
		}
	})
}
