package scheduler

import (
	"maps"
	"slices"
	"strings"
	"time"
)

// Snapshot is a read-only copy of the scheduler's state for the dashboard
// and metrics. It holds no URLs or headers.
type Snapshot struct {
	// Time is when it was taken (scheduler clock).
	Time time.Time `json:"time"`
	// Hosts, sorted by ID.
	Hosts []HostSnapshot `json:"hosts"`
	// Tasks, sorted by ID.
	Tasks []TaskSnapshot `json:"tasks"`
	// Quarantined lists quarantined host IDs, sorted.
	Quarantined []string `json:"quarantined"`
}

// HostSnapshot describes one host.
type HostSnapshot struct {
	ID       string            `json:"id"`
	Hostname string            `json:"hostname"`
	Addr     string            `json:"addr"`
	Zone     string            `json:"zone"`
	Labels   map[string]string `json:"labels,omitempty"`
	CDN      bool              `json:"cdn"`
	Version  string            `json:"version"`
	// State is "active" or "quarantined".
	State     string `json:"state"`
	BadPieces int    `json:"bad_pieces"`
	// QuarantinedAfter is the bad-piece count that triggered quarantine
	// (0 when not quarantined); later reports of pieces already in flight
	// still raise BadPieces.
	QuarantinedAfter int       `json:"quarantined_after,omitempty"`
	BytesServed      uint64    `json:"bytes_served"`
	BytesReceived    uint64    `json:"bytes_received"`
	Tasks            int       `json:"tasks"`
	Children         int       `json:"children"`
	UploadBps        float64   `json:"upload_bps"`
	LastSeen         time.Time `json:"last_seen"`
}

// TaskSnapshot describes one task.
type TaskSnapshot struct {
	ID            string `json:"id"`
	ContentLength int64  `json:"content_length"`
	PieceSize     int32  `json:"piece_size"`
	// PieceCount is -1 while the length is unknown.
	PieceCount   int    `json:"piece_count"`
	KnownDigests int    `json:"known_digests"`
	Complete     bool   `json:"complete"`
	Digest       string `json:"digest,omitempty"`
	// Seed is the CDN fetch state: none, seeding, done or failed.
	Seed  string         `json:"seed"`
	Peers []PeerSnapshot `json:"peers"`
}

// PeerSnapshot is one host's progress on a task.
type PeerSnapshot struct {
	HostID   string   `json:"host_id"`
	Pieces   int      `json:"pieces"`
	Done     bool     `json:"done"`
	CDN      bool     `json:"cdn"`
	Admitted bool     `json:"admitted"`
	Parents  []string `json:"parents,omitempty"`
	Children int      `json:"children"`
}

// Snapshot copies the state. It holds the lock for a time linear in the
// number of peers.
func (s *Scheduler) Snapshot() Snapshot {
	s.lock()
	defer s.unlock()
	snap := Snapshot{Time: s.clk.Now()}
	for _, h := range s.hosts {
		state := "active"
		if h.quarantined {
			state = "quarantined"
			snap.Quarantined = append(snap.Quarantined, h.info.ID)
		}
		snap.Hosts = append(snap.Hosts, HostSnapshot{
			ID: h.info.ID, Hostname: h.info.Hostname, Addr: h.addr, Zone: h.info.Zone,
			Labels: maps.Clone(h.info.Labels), CDN: h.info.CDN, Version: h.info.Version,
			State: state, BadPieces: h.badPieces, QuarantinedAfter: h.quarantinedAt, BytesServed: h.bytesServed, BytesReceived: h.bytesReceived,
			Tasks: len(h.peers), Children: h.children, UploadBps: h.tp, LastSeen: h.lastSeen,
		})
	}
	for _, t := range s.tasks {
		ts := TaskSnapshot{ID: t.id, ContentLength: t.length, PieceSize: t.pieceSize, PieceCount: t.count(),
			KnownDigests: t.nKnown, Complete: t.complete, Digest: t.digest, Seed: t.seed.String()}
		for _, p := range t.list {
			ps := PeerSnapshot{HostID: p.host.info.ID, Pieces: p.bitmap.Count(), Done: p.done, CDN: p.isCDN(),
				Admitted: p.admitted, Children: len(p.children)}
			for _, q := range p.parents {
				ps.Parents = append(ps.Parents, q.host.info.ID)
			}
			ts.Peers = append(ts.Peers, ps)
		}
		slices.SortFunc(ts.Peers, func(a, b PeerSnapshot) int { return strings.Compare(a.HostID, b.HostID) })
		snap.Tasks = append(snap.Tasks, ts)
	}
	slices.SortFunc(snap.Hosts, func(a, b HostSnapshot) int { return strings.Compare(a.ID, b.ID) })
	slices.SortFunc(snap.Tasks, func(a, b TaskSnapshot) int { return strings.Compare(a.ID, b.ID) })
	slices.Sort(snap.Quarantined)
	return snap
}
