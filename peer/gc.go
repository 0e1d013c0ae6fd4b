package peer

import (
	"context"
	"sort"
	"time"

	schedulerv1 "github.com/pouchfly/pouchfly/api/scheduler/v1"
)

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
	var freed int64
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
		if err := p.store.Delete(ctx, st.TaskID); err != nil {
			p.log.Warn("gc: delete", "task", st.TaskID, "err", err)
			continue
		}
		used -= st.Bytes
		freed += st.Bytes
		p.metrics.gcDeleted.Inc()
		p.metrics.gcBytes.Add(float64(st.Bytes))
		p.sess.Send(&schedulerv1.PeerPacket{Body: &schedulerv1.PeerPacket_Leave{Leave: &schedulerv1.LeaveTask{TaskId: st.TaskID}}})
		p.log.Info("gc: removed task", "task", st.TaskID, "bytes", st.Bytes, "expired", expired)
	}
	return freed
}
