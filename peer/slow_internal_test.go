package peer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	schedulerv1 "github.com/pouchfly/pouchfly/api/scheduler/v1"
)

// TestCheckSlow: a download from a peer is cancelled as a trickle only when
// it is past the grace, under slow_piece_rate and under a tenth of the
// task's pace; the CDN, a young download, a whole task that is slow (the
// host's own link) and a task without a pace yet are left alone.
func TestCheckSlow(t *testing.T) {
	const floor = 32 << 10
	fast := []float64{4 << 20, 5 << 20, 3 << 20, 4 << 20, 6 << 20, 4 << 20, 5 << 20, 4 << 20}
	slowLink := []float64{16 << 10, 20 << 10, 18 << 10, 16 << 10, 17 << 10, 19 << 10, 16 << 10, 18 << 10}
	for _, c := range []struct {
		name  string
		pace  []float64
		age   time.Duration
		bytes int64
		cdn   bool
		want  bool
	}{
		{"trickle", fast, 3 * time.Second, 24 << 10, false, true},
		{"trickle within grace", fast, time.Second, 0, false, false},
		{"trickle from the CDN", fast, 3 * time.Second, 24 << 10, true, false},
		{"healthy", fast, 3 * time.Second, 3 << 20, false, false},
		{"slow but above the floor", fast, 3 * time.Second, 200 << 10, false, false},
		{"the host's own link is slow", slowLink, 3 * time.Second, 10 << 10, false, false},
		{"no pace yet", fast[:3], 3 * time.Second, 0, false, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := &Peer{cfg: DefaultConfig(), log: slog.New(slog.DiscardHandler)}
			p.cfg.SlowPieceRate, p.cfg.SlowPieceGrace = floor, 2*time.Second
			tk := newTask(p, "sha256:x", Request{})
			for _, r := range c.pace {
				tk.notePace(int64(r), time.Second)
			}
			ctx, cancel := context.WithCancelCause(context.Background())
			defer cancel(nil)
			f := &fetching{cancel: cancel, start: time.Now().Add(-c.age), cdn: c.cdn}
			f.read.n.Store(c.bytes)
			tk.inflight[3] = map[string]*fetching{"parent": f}
			tk.checkSlow()
			got := errors.Is(context.Cause(ctx), errSlowPiece)
			if got != c.want {
				t.Fatalf("cancelled as a trickle: %v, want %v (cause %v)", got, c.want, context.Cause(ctx))
			}
		})
	}
	// Off with a zero rate.
	p := &Peer{cfg: DefaultConfig(), log: slog.New(slog.DiscardHandler)}
	p.cfg.SlowPieceRate = 0
	tk := newTask(p, "sha256:x", Request{})
	for _, r := range fast {
		tk.notePace(int64(r), time.Second)
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	tk.inflight[0] = map[string]*fetching{"parent": {cancel: cancel, start: time.Now().Add(-time.Minute)}}
	tk.checkSlow()
	if context.Cause(ctx) != nil {
		t.Fatal("slow_piece_rate 0 still cancels")
	}
	// A copy stopped because another won (or the task ended) is reported
	// when it was trickling past a quarter of the grace, and only then.
	p = &Peer{cfg: DefaultConfig(), log: slog.New(slog.DiscardHandler), metrics: newMetrics()}
	p.cfg.SlowPieceRate, p.cfg.SlowPieceGrace = floor, 2*time.Second
	tk = newTask(p, "sha256:x", Request{})
	for _, r := range fast {
		tk.notePace(int64(r), time.Second)
	}
	now := time.Now()
	for _, c := range []struct {
		id    string
		age   time.Duration
		bytes int64
	}{{"trickler", time.Second, 4 << 10}, {"young", 200 * time.Millisecond, 0}, {"healthy", time.Second, 2 << 20}} {
		ctx, cancel := context.WithCancelCause(context.Background())
		f := &fetching{cancel: cancel, start: now.Add(-c.age)}
		f.read.n.Store(c.bytes)
		tk.stopCopy(7, c.id, f, now)
		if context.Cause(ctx) != context.Canceled {
			t.Fatalf("%s: not cancelled (%v)", c.id, context.Cause(ctx))
		}
	}
	if len(tk.reports) != 1 || tk.reports[0].ParentId != "trickler" || tk.reports[0].Failure != schedulerv1.Failure_FAILURE_SLOW ||
		tk.reports[0].Piece != 7 || tk.reports[0].CostMs < 1000 {
		t.Fatalf("reports %v, want one FAILURE_SLOW for the trickler", tk.reports)
	}

	// A trickle is reported as FAILURE_SLOW, not as a network failure.
	if got := classify(fmt.Errorf("piece 3: %w", errSlowPiece)); got != schedulerv1.Failure_FAILURE_SLOW {
		t.Fatalf("classify = %v", got)
	}
}

// TestNotePaceKeepsTheRecent: the pace is the median of the last
// slowBaselinePieces pieces, so an old fast phase does not make a slower
// present look like trickles.
func TestNotePaceKeepsTheRecent(t *testing.T) {
	tk := newTask(&Peer{cfg: DefaultConfig(), log: slog.New(slog.DiscardHandler)}, "sha256:x", Request{})
	for range 40 {
		tk.notePace(10<<20, time.Second)
	}
	for range slowBaselinePieces {
		tk.notePace(100<<10, time.Second)
	}
	if len(tk.recentRates) != slowBaselinePieces {
		t.Fatalf("%d rates kept", len(tk.recentRates))
	}
	if m := median(tk.recentRates); m != 100<<10 {
		t.Fatalf("pace %v, want the recent 100 KiB/s", m)
	}
	tk.notePace(0, time.Second) // nothing moved: no sample
	tk.notePace(5, 0)
	if len(tk.recentRates) != slowBaselinePieces || median(tk.recentRates) != 100<<10 {
		t.Fatal("empty samples counted")
	}
}
