package httpapi

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the API's collectors.
type Metrics struct {
	requests     *prometheus.CounterVec
	authFailures prometheus.Counter
	streams      prometheus.Gauge
	quarantined  prometheus.GaugeFunc
}

func newMetrics(sched Snapshotter) *Metrics {
	const ns = "pouchfly"
	return &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: "api", Name: "requests_total",
			Help: "API and dashboard requests by route and HTTP status."}, []string{"route", "code"}),
		authFailures: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: "api", Name: "auth_failures_total",
			Help: "Admin requests refused for a missing or wrong token or webhook secret."}),
		streams: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: "api", Name: "event_streams",
			Help: "Open dashboard event streams (SSE)."}),
		quarantined: prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: "supernode", Name: "quarantined_hosts",
			Help: "Hosts quarantined now (connected ones)."}, func() float64 {
			return float64(len(sched.Snapshot().Quarantined))
		}),
	}
}

// routes are the route labels of requests_total, pre-set (code 200) so
// the series exist from the start.
var routes = []string{"dashboard", "state", "events", "preheats", "preheat", "preheat_create", "preheat_cancel", "webhook", "other"}

func (m *Metrics) init() {
	for _, r := range routes {
		m.requests.WithLabelValues(r, "200")
	}
}

func (m *Metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.requests, m.authFailures, m.streams, m.quarantined}
}
