package main

import (
	"math"
	"path/filepath"
	"testing"
	"time"

	"github.com/pouchfly/pouchfly/test/report"
)

// smallCase is N=8 hosts, an 8 MiB blob, 50 Mbit/s hosts, a 200 Mbit/s
// origin and supernode, 1 ms RTT.
func smallCase() Config {
	c := DefaultConfig()
	c.Hosts = 8
	c.Size = 8 << 20
	c.HostCap = 50 * 125000
	c.OriginCap = 200 * 125000
	c.SupernodeCap = 200 * 125000
	return c
}

// TestSmallCaseRespectsPhysics runs the simulator on the small case with
// both fluid models and checks the hand-computed bounds: no host finishes
// faster than size / host cap (8 MiB at 6.25 MB/s = 1.342 s), every host
// finishes, the origin sends the blob once (the CDN fetches it once), and
// no link ever carries more than its cap.
func TestSmallCaseRespectsPhysics(t *testing.T) {
	for _, model := range []string{ModelMaxMin, ModelShare} {
		t.Run(model, func(t *testing.T) {
			c := smallCase()
			c.Model = model
			s, err := New(c)
			if err != nil {
				t.Fatal(err)
			}
			s.checkCaps = true
			r := s.Run()
			if s.capViolation != "" {
				t.Errorf("a link exceeded its cap: %s", s.capViolation)
			}
			limit := float64(c.Size) / c.HostCap // hand-computed: 8388608 / 6250000
			if math.Abs(limit-1.3421772) > 1e-6 {
				t.Fatalf("limit %v", limit)
			}
			if r.Failed != 0 || len(r.Times) != c.Hosts {
				t.Fatalf("%d of %d hosts finished", len(r.Times), c.Hosts)
			}
			for i, sec := range r.Times {
				if sec < limit {
					t.Errorf("host %d finished in %.4fs, faster than size/cap = %.4fs", i, sec, limit)
				}
			}
			if r.OriginEgress < float64(c.Size) || r.OriginEgress > 1.05*float64(c.Size) {
				t.Errorf("origin sent %.0f bytes, want the blob once (%d)", r.OriginEgress, c.Size)
			}
			if s.stats.seeds != 1 {
				t.Errorf("%d CDN fetches, want 1", s.stats.seeds)
			}
			if r.Unexpected != 0 {
				t.Errorf("%d unexpected TaskError/BackToSource packets", r.Unexpected)
			}
			// Every byte a host kept came from the CDN or a peer, and both
			// sent at least that much.
			if got, want := r.CDNKept+r.PeerKept, int64(c.Hosts)*c.Size; got != want {
				t.Errorf("hosts kept %d bytes, want %d", got, want)
			}
			if r.CDNEgress < float64(r.CDNKept) || r.P2PBytes < float64(r.PeerKept) {
				t.Errorf("sent < kept: cdn %.0f < %d or p2p %.0f < %d", r.CDNEgress, r.CDNKept, r.P2PBytes, r.PeerKept)
			}
			if r.Decisions == 0 || r.SchedSeconds <= 0 {
				t.Errorf("no scheduler decisions measured (%d, %.6fs)", r.Decisions, r.SchedSeconds)
			}
			t.Logf("%s: p50 %.3fs max %.3fs (limit %.3fs), CDN %.2f×, %d decisions",
				model, report.Percentile(r.Times, 50), r.Times[len(r.Times)-1], limit, r.CDNEgress/float64(c.Size), r.Decisions)
		})
	}
}

// TestSwarmBounds: 200 hosts pull 16 MiB through the real scheduler. The
// CDN stays within the super-seeding budget (cdn_fanout copies, a little
// more for stalled grants) instead of growing with the swarm, the origin
// sends the blob once, everyone finishes, and the decisions stay cheap
// enough to count (sampled candidates).
func TestSwarmBounds(t *testing.T) {
	c := smallCase()
	c.Hosts = 200
	c.Size = 16 << 20
	s, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	r := s.Run()
	if r.Failed != 0 || r.Unexpected != 0 {
		t.Fatalf("%d hosts failed, %d unexpected packets", r.Failed, r.Unexpected)
	}
	size := float64(c.Size)
	if x := r.CDNEgress / size; x > float64(c.Scheduler.CDNFanout)+0.5 {
		t.Errorf("CDN sent %.2f× the blob, want about cdn_fanout (%d×) at most", x, c.Scheduler.CDNFanout)
	}
	if r.OriginEgress != size {
		t.Errorf("origin sent %.0f bytes, want the blob once", r.OriginEgress)
	}
	if limit := size / c.HostCap; r.Times[0] < limit {
		t.Errorf("fastest host %.3fs, below size/cap %.3fs", r.Times[0], limit)
	}
	t.Logf("p50 %.2fs max %.2fs (limit %.2fs), CDN %.2f×, %d decisions",
		report.Percentile(r.Times, 50), r.Times[len(r.Times)-1], size/c.HostCap, r.CDNEgress/size, r.Decisions)
}

// TestSingleHostAtLinkSpeed: one host, fed by a CDN faster than itself,
// finishes within a few RTTs and report intervals of size / cap.
func TestSingleHostAtLinkSpeed(t *testing.T) {
	c := smallCase()
	c.Hosts = 1
	s, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	r := s.Run()
	limit := float64(c.Size) / c.HostCap
	if len(r.Times) != 1 || r.Times[0] < limit || r.Times[0] > limit+0.2 {
		t.Fatalf("times %v, want within [%.3f, %.3f]", r.Times, limit, limit+0.2)
	}
}

// TestFluidSharing checks the two fluid models on a hand-made case: two
// transfers from one 10 MB/s sender, one to a 2 MB/s receiver, one to a
// fast receiver. Max-min gives the slow one 2 and the other 8; the share
// model gives each min(10/2, cap) = 2 and 5.
func TestFluidSharing(t *testing.T) {
	for _, tc := range []struct {
		maxmin     bool
		slow, fast float64
	}{{true, 2e6, 8e6}, {false, 2e6, 5e6}} {
		s := &Sim{}
		s.net = network{sim: s, maxmin: tc.maxmin, nodes: []node{
			{up: 10e6, down: math.Inf(1)}, {up: 1, down: 2e6}, {up: 1, down: 100e6},
		}}
		a := &xfer{from: 0, to: 1, size: 1e6}
		b := &xfer{from: 0, to: 2, size: 1e6}
		s.net.start(a, 0)
		s.net.start(b, 0)
		if a.rate != tc.slow || b.rate != tc.fast {
			t.Errorf("maxmin=%v: rates %.0f, %.0f; want %.0f, %.0f", tc.maxmin, a.rate, b.rate, tc.slow, tc.fast)
		}
		// b finishes first; a then runs alone, still capped by its receiver.
		if got := s.net.flows[0]; got != b {
			t.Fatalf("maxmin=%v: first to finish is not the fast transfer", tc.maxmin)
		}
		at := b.doneAt
		s.net.stop(b, at)
		if a.rate != 2e6 {
			t.Errorf("maxmin=%v: alone, rate %.0f, want 2e6", tc.maxmin, a.rate)
		}
		settle(a, at) // rem is settled lazily, at rate changes
		if want := float64(at) / 1e9 * 2e6; math.Abs((1e6-a.rem)-want) > 1 {
			t.Errorf("maxmin=%v: moved %.0f bytes by %v, want %.0f", tc.maxmin, 1e6-a.rem, time.Duration(at), want)
		}
	}
}

// TestCommandWritesReportAndPlot runs the command on two tiny cases.
func TestCommandWritesReportAndPlot(t *testing.T) {
	dir := t.TempDir()
	rep, png := filepath.Join(dir, "r.json"), filepath.Join(dir, "p.png")
	var out discard
	if err := run([]string{"--hosts", "2,4", "--size", "4MiB", "--report", rep, "--plot", png}, &out); err != nil {
		t.Fatal(err)
	}
	rs, err := readOutputs(rep)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 2 || rs[0].Hosts != 2 || rs[1].Hosts != 4 || rs[1].FailedHosts != 0 || rs[1].LimitSeconds <= 0 {
		t.Fatalf("report %+v", rs)
	}
	if rs[1].Seconds.P50 < rs[1].LimitSeconds {
		t.Errorf("p50 %.3f below the limit %.3f", rs[1].Seconds.P50, rs[1].LimitSeconds)
	}
}

type discard struct{}

func (discard) Write(b []byte) (int, error) { return len(b), nil }
