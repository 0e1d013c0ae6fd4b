package lxcfs

import "github.com/prometheus/client_golang/prometheus"

// metrics are the supervisor's Prometheus collectors, registered by the
// binary on its own registry (Collectors).
type metrics struct {
	up           prometheus.Gauge
	restarts     prometheus.Counter
	repairs      prometheus.Counter
	repairErrors prometheus.Counter
}

func newMetrics() *metrics {
	return &metrics{
		up: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "pouchfly", Subsystem: "lxcfs", Name: "up",
			Help: "1 while the supervised lxcfs serves its mount.",
		}),
		restarts: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "pouchfly", Subsystem: "lxcfs", Name: "starts_total",
			Help: "lxcfs processes started by the supervisor (the first start included; adoptions not).",
		}),
		repairs: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "pouchfly", Subsystem: "lxcfs", Name: "repaired_binds_total",
			Help: "Stale lxcfs binds replaced inside running containers.",
		}),
		repairErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "pouchfly", Subsystem: "lxcfs", Name: "repair_errors_total",
			Help: "Repair calls that failed.",
		}),
	}
}

// Collectors returns the supervisor's metrics for registration.
func (s *Supervisor) Collectors() []prometheus.Collector {
	m := s.metrics
	return []prometheus.Collector{m.up, m.restarts, m.repairs, m.repairErrors}
}
