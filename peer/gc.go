package peer

import (
	"context"
	"sort"
	"time"

	schedulerv1 "github.com/pouchfly/pouchfly/api/scheduler/v1"
	"github.com/pouchfly/pouchfly/piece"
)

// leaveGrace is how long GC waits between leaving a task at the
// supernode and deleting its files.
var leaveGrace = 300 * time.Millisecond

// gcSoon asks the GC loop to run now (the store ran out of room).
func (p *Peer) gcSoon() {
	select {
	case p.gcKick <- struct{}{}:
	default:
	}
}

func (p *Peer) gcLoop(ctx context.Context) {
	tk := time.NewTicker(p.cfg.GCInterval)
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
		case <-p.gcKick:
		}
		p.GC(ctx)
	}
}

// GC removes tasks idle for longer than TaskTTL, then the least recently
// used ones while the store is above DiskLimit. Tasks being downloaded or
// read are never removed. It returns the bytes freed.
func (p *Peer) GC(ctx context.Context) int64 {
	stats, err := p.store.List(ctx)
	if err != nil {
		p.log.Warn("gc: list", "err", err)
		return 0
	}
	p.mu.Lock()
	busy := map[string]bool{}
	for id := range p.tasks {
		busy[id] = true
	}
	for id := range p.reading {
		busy[id] = true
	}
	p.mu.Unlock()
	sort.Slice(stats, func(i, j int) bool { return stats[i].LastAccess.Before(stats[j].LastAccess) })
	var used int64
	for _, st := range stats {
		used += st.Bytes
	}
	// Pick the victims first, then tell the supernode we leave their tasks
	// and give it leaveGrace to take us out of every parent set before the
	// files go: a child that then asks for a piece we advertised would
	// otherwise report it "not held", which counts against us as a bad
	// piece (a host lying about its pieces is quarantined).
	type victim struct {
		st      piece.Stat
		expired bool
	}
	var victims []victim
	now := time.Now()
	for _, st := range stats {
		if busy[st.TaskID] {
			continue
		}
		expired := now.Sub(st.LastAccess) > p.cfg.TaskTTL
		over := p.cfg.DiskLimit > 0 && used > int64(p.cfg.DiskLimit)
		if !expired && !over {
			continue
		}
		victims = append(victims, victim{st, expired})
		used -= st.Bytes
	}
	if len(victims) > 0 && p.sess.Up() {
		for _, v := range victims {
			p.sess.Send(&schedulerv1.PeerPacket{Body: &schedulerv1.PeerPacket_Leave{Leave: &schedulerv1.LeaveTask{TaskId: v.st.TaskID}}})
		}
		t := time.NewTimer(leaveGrace)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
	}
	var freed int64
	for _, v := range victims {
		st := v.st
		p.mu.Lock()
		_, running := p.tasks[st.TaskID]
		inUse := running || p.reading[st.TaskID] > 0
		p.mu.Unlock()
		if inUse {
			continue // wanted again meanwhile (a new download registers it again)
		}
		if err := p.store.Delete(ctx, st.TaskID); err != nil {
			p.log.Warn("gc: delete", "task", st.TaskID, "err", err)
			continue
		}
		freed += st.Bytes
		p.metrics.gcDeleted.Inc()
		p.metrics.gcBytes.Add(float64(st.Bytes))
		p.log.Info("gc: removed task", "task", st.TaskID, "bytes", st.Bytes, "expired", v.expired)
	}
	return freed
}
