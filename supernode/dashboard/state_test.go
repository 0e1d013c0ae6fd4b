package dashboard

import (
	"testing"
	"time"

	"github.com/pouchfly/pouchfly/scheduler"
	"github.com/pouchfly/pouchfly/supernode/preheat"
)

func TestBuilder(t *testing.T) {
	t0 := time.Unix(1000, 0)
	snap := func(at time.Time, served uint64) scheduler.Snapshot {
		return scheduler.Snapshot{Time: at,
			Hosts: []scheduler.HostSnapshot{
				{ID: "b", State: "active", BytesServed: served, BytesReceived: 2 * served, Labels: map[string]string{"zone": "a"}},
				{ID: "a", State: "quarantined", BadPieces: 4, QuarantinedAfter: 3},
				{ID: "cdn-1", CDN: true, State: "active"},
			},
			Tasks: []scheduler.TaskSnapshot{
				{ID: "t-done", PieceCount: 4, Seed: "done", Peers: []scheduler.PeerSnapshot{{HostID: "b", Pieces: 4, Done: true}}},
				{ID: "t-half", PieceCount: 4, Seed: "done", Peers: []scheduler.PeerSnapshot{
					{HostID: "a", Pieces: 1}, {HostID: "b", Pieces: 3}, {HostID: "cdn-1", CDN: true, Pieces: 4}}},
				{ID: "t-other", PieceCount: 4, Peers: []scheduler.PeerSnapshot{{HostID: "a", Pieces: 4, Done: true}}},
			}}
	}
	b := &Builder{MaxTasks: 2, MaxPeers: 2, MaxJobs: 1}
	b.Build(snap(t0, 1000), nil, Totals{}, Info{})
	st := b.Build(snap(t0.Add(2*time.Second), 5000), []preheat.Job{{ID: "j2"}, {ID: "j1"}}, Totals{P2PBytes: 1}, Info{Supernode: "sn", ReadOnly: true})
	if st.Hosts[0].ID != "cdn-1" || st.Hosts[1].ID != "a" || st.Hosts[2].ID != "b" {
		t.Errorf("host order %v %v %v", st.Hosts[0].ID, st.Hosts[1].ID, st.Hosts[2].ID)
	}
	if h := st.Hosts[2]; h.TxBps != 2000 || h.RxBps != 4000 {
		t.Errorf("rates tx %v rx %v, want 2000 and 4000", h.TxBps, h.RxBps)
	}
	if len(st.Quarantined) != 1 || st.Quarantined[0].ID != "a" || st.Quarantined[0].QuarantinedAfter != 3 {
		t.Errorf("quarantined %+v", st.Quarantined)
	}
	// In-progress first; two tasks at most; two peers per task at most.
	if len(st.Tasks) != 2 || st.TasksOmitted != 1 || st.Tasks[0].ID != "t-half" {
		t.Fatalf("tasks %+v omitted %d", st.Tasks, st.TasksOmitted)
	}
	half := st.Tasks[0]
	if half.Hosts != 2 || half.DoneHosts != 0 || half.Percent != 50 || len(half.Peers) != 2 || half.PeersOmitted != 1 {
		t.Errorf("half task %+v", half)
	}
	if done := st.Tasks[1]; done.Percent != 100 || done.DoneHosts != 1 {
		t.Errorf("done task %+v", done)
	}
	if len(st.Jobs) != 1 || st.Jobs[0].ID != "j2" || !st.ReadOnly || st.Supernode != "sn" || st.Totals.P2PBytes != 1 {
		t.Errorf("state %+v", st)
	}
}
