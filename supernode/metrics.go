package supernode

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the session layer's Prometheus collectors (unregistered:
// pass Collectors to a registry).
type Metrics struct {
	// Sessions is the number of live host sessions.
	Sessions prometheus.Gauge
	// Rejected counts streams refused before a session started (no or bad
	// Hello, host refused).
	Rejected prometheus.Counter
	// Overflows counts sessions ended because their outbound queue filled.
	Overflows prometheus.Counter
	// Dropped counts packets for hosts without a (live) session.
	Dropped prometheus.Counter
	// PacketsIn and PacketsOut count packets received and sent.
	PacketsIn, PacketsOut prometheus.Counter
	// PacketSeconds observes the time the supernode takes to handle one
	// packet from a host (the scheduler's work, its lock waits
	// included), by kind (register, pieces, need_parents, done,
	// heartbeat, leave): the server side of the control plane's latency.
	PacketSeconds *prometheus.HistogramVec
}

// NewMetrics returns unregistered collectors.
func NewMetrics() *Metrics {
	const ns, sub = "pouchfly", "supernode"
	c := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help})
	}
	return &Metrics{
		Sessions: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "sessions",
			Help: "Live host sessions."}),
		Rejected:   c("sessions_rejected_total", "Streams refused before a session started."),
		Overflows:  c("queue_overflows_total", "Sessions ended because their outbound queue filled."),
		Dropped:    c("packets_dropped_total", "Packets for hosts without a live session."),
		PacketsIn:  c("packets_received_total", "Packets received from hosts."),
		PacketsOut: c("packets_sent_total", "Packets sent to hosts."),
		PacketSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "packet_seconds",
			Help:    "Time to handle one packet from a host, by kind.",
			Buckets: prometheus.ExponentialBuckets(25e-6, 2, 18), // 25µs .. ~3.3s
		}, []string{"kind"}),
	}
}

// Collectors returns every collector.
func (m *Metrics) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.Sessions, m.Rejected, m.Overflows, m.Dropped, m.PacketsIn, m.PacketsOut, m.PacketSeconds}
}
