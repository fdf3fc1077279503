package validator

import (
	"maps"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
)

// metrics are the validator's Prometheus metrics, registered once in controller-runtime's
// registry (served on the manager's metrics endpoint).
type metrics struct {
	decisions *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	cache     *prometheus.CounterVec
	fetches   *prometheus.CounterVec
	refusals  *prometheus.CounterVec

	cacheHit, cacheMiss prometheus.Counter

	// children are the resolved series of each (protocol, status, reason): a copy-on-write
	// map, read without a lock on every decision; mu serializes the rare additions.
	children atomic.Pointer[map[decisionKey]decisionSeries]
	mu       sync.Mutex
}

// decisionSeries are the series one decision updates.
type decisionSeries struct {
	count   prometheus.Counter
	latency prometheus.Observer
}

var (
	metricsOnce   sync.Once
	sharedMetrics *metrics
)

// defaultMetrics returns the process-wide metrics, registering them on first use.
func defaultMetrics() *metrics {
	metricsOnce.Do(func() {
		sharedMetrics = newMetrics()
		ctrlmetrics.Registry.MustRegister(sharedMetrics.decisions, sharedMetrics.latency, sharedMetrics.cache, sharedMetrics.fetches, sharedMetrics.refusals)
	})
	return sharedMetrics
}

func newMetrics() *metrics {
	m := &metrics{
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyward_validator_decisions_total",
			Help: "Authorization decisions by front-end protocol, decision (allow, deny) and reason.",
		}, []string{"protocol", "decision", "reason"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "keyward_validator_decision_duration_seconds",
			Help:    "Time to decide, by front-end protocol.",
			Buckets: []float64{.00001, .000025, .00005, .0001, .00025, .0005, .001, .0025, .005, .01, .05, .25, 1},
		}, []string{"protocol"}),
		cache: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyward_validator_token_cache_requests_total",
			Help: "Verified-token cache lookups by result (hit, miss).",
		}, []string{"result"}),
		fetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyward_validator_jwks_fetches_total",
			Help: "JWKS fetches of external issuers by result (success, error).",
		}, []string{"result"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyward_validator_grpc_refusals_total",
			Help: "Requests and connections the gRPC transport refused before any decision, by reason: " +
				"goaway_<HTTP/2 error code> (connection ended), rst_<code> (stream reset), http_<status>, unimplemented, preface.",
		}, []string{"reason"}),
	}
	m.children.Store(&map[decisionKey]decisionSeries{})
	m.cacheHit = m.cache.WithLabelValues("hit")
	m.cacheMiss = m.cache.WithLabelValues("miss")
	return m
}

type decisionKey struct {
	protocol string
	status   int
	reason   Reason
}

func (m *metrics) decision(protocol string, d *Decision, took time.Duration) {
	if m == nil {
		return
	}
	k := decisionKey{protocol, d.Status, d.Reason}
	series, ok := (*m.children.Load())[k]
	if !ok {
		series = m.addSeries(k)
	}
	series.count.Inc()
	series.latency.Observe(took.Seconds())
}

// addSeries resolves the series of a new (protocol, status, reason) and publishes them.
func (m *metrics) addSeries(k decisionKey) decisionSeries {
	m.mu.Lock()
	defer m.mu.Unlock()
	old := *m.children.Load()
	if s, ok := old[k]; ok {
		return s
	}
	decision := "deny"
	if k.status == http.StatusOK {
		decision = "allow"
	}
	s := decisionSeries{
		count:   m.decisions.WithLabelValues(k.protocol, decision, string(k.reason)),
		latency: m.latency.WithLabelValues(k.protocol),
	}
	next := make(map[decisionKey]decisionSeries, len(old)+1)
	maps.Copy(next, old)
	next[k] = s
	m.children.Store(&next)
	return s
}

func (m *metrics) cacheResult(hit bool) {
	if m == nil {
		return
	}
	if hit {
		m.cacheHit.Inc()
	} else {
		m.cacheMiss.Inc()
	}
}

func (m *metrics) grpcRefusal(reason string) {
	if m == nil {
		return
	}
	m.refusals.WithLabelValues(reason).Inc()
}

func (m *metrics) jwksFetch(result string) {
	if m == nil {
		return
	}
	m.fetches.WithLabelValues(result).Inc()
}
