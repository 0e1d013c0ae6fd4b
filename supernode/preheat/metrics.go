package preheat

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the preheat collectors (unregistered: pass Collectors to a
// registry).
type Metrics struct {
	// Jobs counts finished jobs by result (succeeded, failed, cancelled).
	Jobs *prometheus.CounterVec
	// Active is the number of jobs resolving or running.
	Active prometheus.Gauge
	// Orders counts prefetch orders sent to hosts (one per host per job).
	Orders prometheus.Counter
	// Seeds counts CDN seeds a job started (blobs the CDN did not hold or
	// fetch already).
	Seeds prometheus.Counter
	// Webhook counts registry notification events by outcome (preheated,
	// ignored, duplicate).
	Webhook *prometheus.CounterVec
}

// NewMetrics returns unregistered collectors, every label pre-set.
func NewMetrics() *Metrics {
	const ns, sub = "pouchfly", "preheat"
	m := &Metrics{
		Jobs: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "jobs_total",
			Help: "Finished preheat jobs by result (succeeded, failed, cancelled)."}, []string{"result"}),
		Active: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "jobs_active",
			Help: "Preheat jobs resolving or running."}),
		Orders: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "prefetch_orders_total",
			Help: "Prefetch orders sent to hosts (one per host per job)."}),
		Seeds: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "seeds_total",
			Help: "CDN seeds started by preheat jobs."}),
		Webhook: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "webhook_events_total",
			Help: "Registry notification events by outcome (preheated, ignored, duplicate)."}, []string{"outcome"}),
	}
	for _, r := range []string{StateSucceeded, StateFailed, StateCancelled} {
		m.Jobs.WithLabelValues(r)
	}
	for _, o := range []string{"preheated", "ignored", "duplicate"} {
		m.Webhook.WithLabelValues(o)
	}
	return m
}

// Collectors returns every collector.
func (m *Metrics) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.Jobs, m.Active, m.Orders, m.Seeds, m.Webhook}
}
