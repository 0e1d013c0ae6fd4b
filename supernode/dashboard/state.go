// Package dashboard is the supernode's live web page: the view model
// (State, built from the scheduler's snapshot, the preheat jobs and the
// byte counters) and the page itself (HTML, CSS and JS embedded in the
// binary; nothing is fetched from elsewhere). The HTTP routes that serve
// them live in supernode/httpapi.
package dashboard

import (
	"cmp"
	"maps"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/pouchfly/pouchfly/scheduler"
	"github.com/pouchfly/pouchfly/supernode/preheat"
)

// State is what the page shows; the events stream sends one per interval.
type State struct {
	Time      time.Time `json:"time"`
	Supernode string    `json:"supernode"`
	// ReadOnly: the page offers no admin action. AuthRequired: admin
	// actions need the API bearer token. Preheat/Webhook: features on.
	ReadOnly     bool `json:"read_only"`
	AuthRequired bool `json:"auth_required"`
	Webhook      bool `json:"webhook"`

	Totals Totals `json:"totals"`
	Hosts  []Host `json:"hosts"`
	Tasks  []Task `json:"tasks"`
	// TasksOmitted counts tasks left out (MaxTasks).
	TasksOmitted int          `json:"tasks_omitted"`
	Quarantined  []Quarantine `json:"quarantined"`
	// Jobs are the newest preheat jobs (summaries).
	Jobs []preheat.Job `json:"jobs"`
}

// Totals are the cluster's cumulative byte counters since the supernode
// started.
type Totals struct {
	// OriginBytes is everything origins sent: the CDN's fetches plus
	// hosts' back-to-source downloads.
	OriginBytes     int64 `json:"origin_bytes"`
	CDNOriginBytes  int64 `json:"cdn_origin_bytes"`
	HostOriginBytes int64 `json:"host_origin_bytes"`
	// CDNBytes: piece bytes hosts reported from the CDN; CDNServedBytes:
	// what the CDN's piece server sent (≥ CDNBytes: endgame duplicates,
	// cancelled pieces).
	CDNBytes       int64 `json:"cdn_bytes"`
	CDNServedBytes int64 `json:"cdn_served_bytes"`
	// P2PBytes moved between hosts.
	P2PBytes int64 `json:"p2p_bytes"`
	// DeliveredBytes = P2P + CDN + host origin bytes: what hosts received.
	DeliveredBytes int64 `json:"delivered_bytes"`
	// SavedBytes = Delivered − Origin (≥ 0): traffic the origin did not
	// send; SavedPercent its share of Delivered.
	SavedBytes   int64   `json:"saved_bytes"`
	SavedPercent float64 `json:"saved_percent"`
}

// Host is one connected host.
type Host struct {
	scheduler.HostSnapshot
	// TxBps and RxBps are the piece bytes per second served and received
	// since the previous state.
	TxBps float64 `json:"tx_bps"`
	RxBps float64 `json:"rx_bps"`
}

// Task is one task with its hosts' progress.
type Task struct {
	ID         string `json:"id"`
	Size       int64  `json:"size"`
	PieceSize  int32  `json:"piece_size"`
	PieceCount int    `json:"piece_count"`
	Seed       string `json:"seed"`
	Complete   bool   `json:"complete"`
	// Hosts counts non-CDN hosts on the task, DoneHosts those holding it
	// whole; Percent is their mean progress.
	Hosts     int     `json:"hosts"`
	DoneHosts int     `json:"done_hosts"`
	Percent   float64 `json:"percent"`
	Peers     []Peer  `json:"peers"`
	// PeersOmitted counts peers left out (MaxPeers).
	PeersOmitted int `json:"peers_omitted"`
}

// Peer is one host's progress on a task.
type Peer struct {
	HostID  string  `json:"host_id"`
	CDN     bool    `json:"cdn"`
	Pieces  int     `json:"pieces"`
	Done    bool    `json:"done"`
	Percent float64 `json:"percent"`
}

// Quarantine is a quarantined host.
type Quarantine struct {
	ID               string `json:"id"`
	Hostname         string `json:"hostname"`
	BadPieces        int    `json:"bad_pieces"`
	QuarantinedAfter int    `json:"quarantined_after"`
}

// Info is the static part of a State.
type Info struct {
	Supernode                       string
	ReadOnly, AuthRequired, Webhook bool
}

// Builder builds States, remembering the previous host counters for
// rates. It is not safe for concurrent use.
type Builder struct {
	// MaxTasks and MaxPeers bound a State (0: 200 and 100).
	MaxTasks, MaxPeers int
	// MaxJobs bounds the jobs listed (0: 20).
	MaxJobs int

	prevAt time.Time
	prev   map[string][2]uint64
}

// Build assembles a State.
func (b *Builder) Build(snap scheduler.Snapshot, jobs []preheat.Job, totals Totals, info Info) State {
	maxTasks, maxPeers, maxJobs := cmp.Or(b.MaxTasks, 200), cmp.Or(b.MaxPeers, 100), cmp.Or(b.MaxJobs, 20)
	st := State{Time: snap.Time, Supernode: info.Supernode, ReadOnly: info.ReadOnly, AuthRequired: info.AuthRequired,
		Webhook: info.Webhook, Totals: totals, Hosts: []Host{}, Tasks: []Task{}, Quarantined: []Quarantine{}, Jobs: jobs}
	if len(st.Jobs) > maxJobs {
		st.Jobs = st.Jobs[:maxJobs]
	}
	if st.Jobs == nil {
		st.Jobs = []preheat.Job{}
	}
	dt := snap.Time.Sub(b.prevAt).Seconds()
	next := make(map[string][2]uint64, len(snap.Hosts))
	for _, h := range snap.Hosts {
		host := Host{HostSnapshot: h}
		host.Labels = maps.Clone(h.Labels)
		if p, ok := b.prev[h.ID]; ok && dt > 0 && h.BytesServed >= p[0] && h.BytesReceived >= p[1] {
			host.TxBps = float64(h.BytesServed-p[0]) / dt
			host.RxBps = float64(h.BytesReceived-p[1]) / dt
		}
		next[h.ID] = [2]uint64{h.BytesServed, h.BytesReceived}
		st.Hosts = append(st.Hosts, host)
		if h.State == "quarantined" {
			st.Quarantined = append(st.Quarantined, Quarantine{ID: h.ID, Hostname: h.Hostname, BadPieces: h.BadPieces, QuarantinedAfter: h.QuarantinedAfter})
		}
	}
	b.prev, b.prevAt = next, snap.Time
	// CDN first, then by ID.
	slices.SortStableFunc(st.Hosts, func(x, y Host) int {
		if x.CDN != y.CDN {
			if x.CDN {
				return -1
			}
			return 1
		}
		return cmp.Compare(x.ID, y.ID)
	})
	for _, t := range snap.Tasks {
		task := Task{ID: t.ID, Size: t.ContentLength, PieceSize: t.PieceSize, PieceCount: t.PieceCount, Seed: t.Seed, Complete: t.Complete}
		var sum float64
		for _, p := range t.Peers {
			pc := Peer{HostID: p.HostID, CDN: p.CDN, Pieces: p.Pieces, Done: p.Done}
			switch {
			case p.Done:
				pc.Percent = 100
			case t.PieceCount > 0:
				pc.Percent = min(99.9, float64(int(1000*float64(p.Pieces)/float64(t.PieceCount)))/10)
			}
			if p.CDN {
				if t.Seed == "done" {
					pc.Percent, pc.Done = 100, true
				}
			} else {
				task.Hosts++
				sum += pc.Percent
				if p.Done {
					task.DoneHosts++
				}
			}
			task.Peers = append(task.Peers, pc)
		}
		if task.Hosts > 0 {
			task.Percent = float64(int(10*sum/float64(task.Hosts))) / 10
			if task.DoneHosts == task.Hosts {
				task.Percent = 100
			}
		}
		if len(task.Peers) > maxPeers {
			task.PeersOmitted = len(task.Peers) - maxPeers
			task.Peers = task.Peers[:maxPeers]
		}
		if task.Peers == nil {
			task.Peers = []Peer{}
		}
		st.Tasks = append(st.Tasks, task)
	}
	// Tasks in progress first, then the most hosts, then by ID.
	slices.SortStableFunc(st.Tasks, func(x, y Task) int {
		xa, ya := x.DoneHosts < x.Hosts || x.Seed == "seeding", y.DoneHosts < y.Hosts || y.Seed == "seeding"
		if xa != ya {
			if xa {
				return -1
			}
			return 1
		}
		if c := cmp.Compare(y.Hosts, x.Hosts); c != 0 {
			return c
		}
		return cmp.Compare(x.ID, y.ID)
	})
	if len(st.Tasks) > maxTasks {
		st.TasksOmitted = len(st.Tasks) - maxTasks
		st.Tasks = st.Tasks[:maxTasks]
	}
	return st
}

// Metric names Totals reads.
const (
	MetricCDNOrigin  = "pouchfly_cdn_origin_bytes_total"
	MetricCDNUpload  = "pouchfly_cdn_upload_bytes_total"
	MetricPieceBytes = "pouchfly_scheduler_piece_bytes_total"
)

// TotalsFrom reads the byte counters from the supernode's registry.
func TotalsFrom(g prometheus.Gatherer) (Totals, error) {
	var t Totals
	mfs, err := g.Gather()
	if err != nil && len(mfs) == 0 {
		return t, err
	}
	val := func(m *dto.Metric) int64 {
		if c := m.GetCounter(); c != nil {
			return int64(c.GetValue())
		}
		return int64(m.GetUntyped().GetValue())
	}
	for _, mf := range mfs {
		switch mf.GetName() {
		case MetricCDNOrigin:
			for _, m := range mf.GetMetric() {
				t.CDNOriginBytes += val(m)
			}
		case MetricCDNUpload:
			for _, m := range mf.GetMetric() {
				t.CDNServedBytes += val(m)
			}
		case MetricPieceBytes:
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() != "source" {
						continue
					}
					switch l.GetValue() {
					case "origin":
						t.HostOriginBytes += val(m)
					case "p2p":
						t.P2PBytes += val(m)
					case "cdn":
						t.CDNBytes += val(m)
					}
				}
			}
		}
	}
	t.OriginBytes = t.CDNOriginBytes + t.HostOriginBytes
	t.DeliveredBytes = t.P2PBytes + t.CDNBytes + t.HostOriginBytes
	t.SavedBytes = max(0, t.DeliveredBytes-t.OriginBytes)
	if t.DeliveredBytes > 0 {
		t.SavedPercent = float64(int(1000*float64(t.SavedBytes)/float64(t.DeliveredBytes))) / 10
	}
	return t, nil
}
