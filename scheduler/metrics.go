package scheduler

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the scheduler's Prometheus collectors. They are not
// registered anywhere: pass Collectors to a registry.
type Metrics struct {
	// Decision observes the time of one parent choice (candidate build,
	// scoring and ParentSet construction), in seconds.
	Decision prometheus.Histogram
	// Hosts is the number of connected hosts (CDN included).
	Hosts prometheus.Gauge
	// Tasks is the number of tasks known.
	Tasks prometheus.Gauge
	// Quarantines counts hosts quarantined.
	Quarantines prometheus.Counter
	// BackToSource counts back-to-source orders sent.
	BackToSource prometheus.Counter
	// Seeds counts seeder fetches started.
	Seeds prometheus.Counter
	// SeedFailures counts seeder failures reported.
	SeedFailures prometheus.Counter
	// Reparents counts parent replacements for failures or slowness, by
	// reason.
	Reparents *prometheus.CounterVec
	// BytesReported counts piece bytes reported by hosts, by source (p2p,
	// cdn, origin).
	BytesReported *prometheus.CounterVec
	// CDNGrants counts pieces the CDN handed to a host (super-seeding): a
	// few per piece of content, whatever the swarm's size.
	CDNGrants prometheus.Counter
	// SlowPieces counts trickled pieces reported (FAILURE_SLOW), by
	// verdict: "bad" (counted toward quarantine) or "excused" (the parent
	// was busy delivering to others, or the reporter was stalled itself).
	SlowPieces *prometheus.CounterVec
}

// NewMetrics returns unregistered collectors.
func NewMetrics() *Metrics {
	const ns, sub = "pouchfly", "scheduler"
	m := &Metrics{
		Decision: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "decision_seconds",
			Help:    "Time of one parent choice.",
			Buckets: prometheus.ExponentialBuckets(1e-6, 4, 11), // 1µs .. ~1s
		}),
		Hosts: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "hosts", Help: "Connected hosts (CDN included).",
		}),
		Tasks: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "tasks", Help: "Tasks known to the scheduler.",
		}),
		Quarantines: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "quarantines_total", Help: "Hosts quarantined for serving bad pieces.",
		}),
		BackToSource: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "back_to_source_total", Help: "Back-to-source orders sent to hosts.",
		}),
		Seeds: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "seeds_total", Help: "Seeder fetches started.",
		}),
		SeedFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "seed_failures_total", Help: "Seeder failures reported.",
		}),
		Reparents: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "reparents_total", Help: "Parents replaced for a child, by reason.",
		}, []string{"reason"}),
		BytesReported: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "piece_bytes_total", Help: "Piece bytes reported downloaded, by source.",
		}, []string{"source"}),
		CDNGrants: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "cdn_grants_total", Help: "Pieces the CDN handed to a host (super-seeding).",
		}),
		SlowPieces: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "slow_pieces_total", Help: "Trickled pieces reported, by verdict (bad: counted toward quarantine; excused).",
		}, []string{"verdict"}),
	}
	for _, v := range []string{"bad", "excused"} {
		m.SlowPieces.WithLabelValues(v) // exported at 0 from the start
	}
	return m
}

// Collectors returns every collector, for prometheus.Registerer.MustRegister.
func (m *Metrics) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.Decision, m.Hosts, m.Tasks, m.Quarantines, m.BackToSource,
		m.Seeds, m.SeedFailures, m.Reparents, m.BytesReported, m.CDNGrants, m.SlowPieces}
}
