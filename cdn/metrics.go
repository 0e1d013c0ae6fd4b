package cdn

import "github.com/prometheus/client_golang/prometheus"

// Outcomes of an origin request, the label of pouchfly_cdn_origin_requests_total.
const (
	outcomeOK           = "ok"
	outcomeClientError  = "client_error"
	outcomeServerError  = "server_error"
	outcomeNetworkError = "network_error"
	outcomeTimeout      = "timeout"
)

// metrics are one CDN's Prometheus collectors; they are not registered
// globally, the binary registers Collectors().
type metrics struct {
	originBytes    prometheus.Counter
	originRequests *prometheus.CounterVec
	retries        prometheus.Counter
	cacheHits      prometheus.Counter
	evictions      prometheus.Counter
	seeds          *prometheus.CounterVec
	seeding        prometheus.GaugeFunc
	cacheBytes     prometheus.GaugeFunc
}

func newMetrics(c *CDN) *metrics {
	m := &metrics{
		originBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "pouchfly", Subsystem: "cdn", Name: "origin_bytes_total",
			Help: "Body bytes received from origins.",
		}),
		originRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "pouchfly", Subsystem: "cdn", Name: "origin_requests_total",
			Help: "Origin requests by outcome (ok, client_error, server_error, network_error, timeout).",
		}, []string{"outcome"}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "pouchfly", Subsystem: "cdn", Name: "retries_total",
			Help: "Origin attempts retried after a failure (including resumes of broken bodies).",
		}),
		cacheHits: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "pouchfly", Subsystem: "cdn", Name: "cache_hits_total",
			Help: "Seeds answered from the store without touching the origin.",
		}),
		evictions: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "pouchfly", Subsystem: "cdn", Name: "evictions_total",
			Help: "Tasks evicted from the store by the LRU collector.",
		}),
		seeds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "pouchfly", Subsystem: "cdn", Name: "seeds_total",
			Help: "Finished seeds by result (done, failed).",
		}, []string{"result"}),
		seeding: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "pouchfly", Subsystem: "cdn", Name: "tasks_seeding",
			Help: "Tasks being seeded now, including those waiting for a fetch slot.",
		}, func() float64 { return float64(c.Stats().TasksSeeding) }),
		cacheBytes: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "pouchfly", Subsystem: "cdn", Name: "cache_bytes",
			Help: "Bytes the store held at the last size check.",
		}, func() float64 { return float64(c.cacheBytes.Load()) }),
	}
	for _, o := range []string{outcomeOK, outcomeClientError, outcomeServerError, outcomeNetworkError, outcomeTimeout} {
		m.originRequests.WithLabelValues(o)
	}
	m.seeds.WithLabelValues("done")
	m.seeds.WithLabelValues("failed")
	return m
}

// Collectors returns the CDN's Prometheus collectors for the binary to
// register.
func (c *CDN) Collectors() []prometheus.Collector {
	m := c.metrics
	return []prometheus.Collector{m.originBytes, m.originRequests, m.retries, m.cacheHits, m.evictions, m.seeds, m.seeding, m.cacheBytes}
}
