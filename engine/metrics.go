package engine

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the engine's Prometheus collectors (Collectors registers
// them, with lxcfs's, on the binary's registry).
type metrics struct {
	starts, exits, restarts prometheus.Counter
	pulls                   *prometheus.CounterVec
	pullSeconds             prometheus.Histogram
	startSeconds            prometheus.Histogram
	createSeconds           prometheus.Histogram
	exitSeconds             prometheus.Histogram
}

func newMetrics() *metrics {
	return &metrics{
		starts: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "pouchfly", Subsystem: "engine", Name: "container_starts_total",
			Help: "Container tasks started (restarts by policy included)."}),
		exits: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "pouchfly", Subsystem: "engine", Name: "container_exits_total",
			Help: "Container tasks that exited."}),
		restarts: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "pouchfly", Subsystem: "engine", Name: "container_policy_restarts_total",
			Help: "Restarts done by restart policies."}),
		pulls: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "pouchfly", Subsystem: "engine", Name: "pulls_total",
			Help: "Image pulls by result (ok, error)."}, []string{"result"}),
		pullSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "pouchfly", Subsystem: "engine", Name: "pull_seconds",
			Help: "Duration of successful pulls (through the agent's mirror).", Buckets: prometheus.ExponentialBuckets(0.05, 2, 14)}),
		startSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "pouchfly", Subsystem: "engine", Name: "start_seconds",
			Help: "Time to create and start a container's task.", Buckets: prometheus.ExponentialBuckets(0.01, 2, 12)}),
		createSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "pouchfly", Subsystem: "engine", Name: "create_seconds",
			Help: "Time to create a container (rootfs snapshot, quota, volumes, containerd container).", Buckets: prometheus.ExponentialBuckets(0.002, 2, 12)}),
		exitSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "pouchfly", Subsystem: "engine", Name: "exit_seconds",
			Help: "Time from a task's exit to its record (output drained, task deleted, state saved), before --rm or a restart.", Buckets: prometheus.ExponentialBuckets(0.002, 2, 12)}),
	}
}

// Collectors returns the engine's metrics, lxcfs's, and gauges of the
// containers and of the supervised containerd.
func (e *Engine) Collectors() []prometheus.Collector {
	m := e.metrics
	count := func(running bool) func() float64 {
		return func() float64 {
			e.mu.Lock()
			cs := make([]*container, 0, len(e.containers))
			for _, c := range e.containers {
				cs = append(cs, c)
			}
			e.mu.Unlock()
			n := 0
			for _, c := range cs {
				if !running || c.status() == "running" {
					n++
				}
			}
			return float64(n)
		}
	}
	out := []prometheus.Collector{m.starts, m.exits, m.restarts, m.pulls, m.pullSeconds, m.startSeconds, m.createSeconds, m.exitSeconds,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "pouchfly", Subsystem: "engine", Name: "containers",
			Help: "Containers pouchd knows."}, count(false)),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "pouchfly", Subsystem: "engine", Name: "containers_running",
			Help: "Running containers."}, count(true)),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "pouchfly", Subsystem: "engine", Name: "containerd_restarts",
			Help: "Restarts of the supervised containerd after it died."}, func() float64 { return float64(e.sup.Restarts()) }),
	}
	if e.ext.lxcfs != nil {
		out = append(out, e.ext.lxcfs.Collectors()...)
	}
	return out
}
