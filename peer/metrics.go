package peer

import "github.com/prometheus/client_golang/prometheus"

// metrics are the agent's Prometheus collectors, registered by the binary
// on its own registry (Collectors).
type metrics struct {
	bytes         *prometheus.CounterVec
	uploadBytes   prometheus.Counter
	pieceSeconds  prometheus.Histogram
	pieceFailures *prometheus.CounterVec
	backSource    prometheus.Counter
	gcDeleted     prometheus.Counter
	gcBytes       prometheus.Counter
	activeTasks   prometheus.Gauge
}

func newMetrics() *metrics {
	return &metrics{
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "pouchfly", Subsystem: "peer", Name: "download_bytes_total",
			Help: "Bytes this agent downloaded, by source (peer, cdn, origin).",
		}, []string{"source"}),
		uploadBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "pouchfly", Subsystem: "peer", Name: "upload_bytes_total",
			Help: "Piece bytes this agent served to other hosts.",
		}),
		pieceSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "pouchfly", Subsystem: "peer", Name: "piece_download_seconds",
			Help:    "Time to download and verify one piece.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}),
		pieceFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "pouchfly", Subsystem: "peer", Name: "piece_failures_total",
			Help: "Failed piece downloads, by failure kind.",
		}, []string{"kind"}),
		backSource: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "pouchfly", Subsystem: "peer", Name: "back_to_source_total",
			Help: "Tasks fetched from the origin by this agent.",
		}),
		gcDeleted: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "pouchfly", Subsystem: "peer", Name: "gc_tasks_deleted_total",
			Help: "Tasks removed from the store by garbage collection.",
		}),
		gcBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "pouchfly", Subsystem: "peer", Name: "gc_bytes_freed_total",
			Help: "Bytes freed by garbage collection.",
		}),
		activeTasks: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "pouchfly", Subsystem: "peer", Name: "active_tasks",
			Help: "Tasks being downloaded now.",
		}),
	}
}

// Collectors returns the agent's metrics for registration.
func (p *Peer) Collectors() []prometheus.Collector {
	m := p.metrics
	return []prometheus.Collector{m.bytes, m.uploadBytes, m.pieceSeconds, m.pieceFailures, m.backSource, m.gcDeleted, m.gcBytes, m.activeTasks}
}
