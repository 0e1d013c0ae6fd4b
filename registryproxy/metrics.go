package registryproxy

import "github.com/prometheus/client_golang/prometheus"

// metrics are the mirror's Prometheus collectors, registered by the binary
// on its own registry (Mirror.Collectors).
type metrics struct {
	requests      *prometheus.CounterVec
	blobBytes     prometheus.Counter
	firstByte     prometheus.Histogram
	headCache     *prometheus.CounterVec
	manifestCache *prometheus.CounterVec
	aborted       prometheus.Counter
}

func newMetrics() *metrics {
	return &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "pouchfly", Subsystem: "mirror", Name: "requests_total",
			Help: "Registry mirror requests by kind (ping, manifest, blob, tags, referrers, upload, catalog, other) and status (HTTP code, or aborted for a blob stream broken off).",
		}, []string{"kind", "status"}),
		blobBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "pouchfly", Subsystem: "mirror", Name: "blob_bytes_total",
			Help: "Blob bytes sent to clients.",
		}),
		firstByte: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "pouchfly", Subsystem: "mirror", Name: "blob_first_byte_seconds",
			Help:    "Time from a blob GET's arrival to its first body byte leaving.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}),
		headCache: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "pouchfly", Subsystem: "mirror", Name: "blob_check_cache_total",
			Help: "Blob access checks (upstream HEAD with the client's credentials), by result: hit (cached yes) or miss (asked the upstream).",
		}, []string{"result"}),
		manifestCache: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "pouchfly", Subsystem: "mirror", Name: "manifest_cache_total",
			Help: "Manifest requests by digest, by result: hit (served from memory) or miss.",
		}, []string{"result"}),
		aborted: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "pouchfly", Subsystem: "mirror", Name: "blob_streams_aborted_total",
			Help: "Blob responses broken off mid-stream (digest mismatch, task failure, stalled client).",
		}),
	}
}

// Collectors returns the mirror's metrics for registration.
func (m *Mirror) Collectors() []prometheus.Collector {
	x := m.metrics
	return []prometheus.Collector{x.requests, x.blobBytes, x.firstByte, x.headCache, x.manifestCache, x.aborted}
}
