package validator

import (
	"net/http"
	"sync"
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

	cacheHit, cacheMiss prometheus.Counter

	mu        sync.RWMutex
	counters  map[decisionKey]prometheus.Counter
	observers map[string]prometheus.Observer
}

var (
	metricsOnce   sync.Once
	sharedMetrics *metrics
)

// defaultMetrics returns the process-wide metrics, registering them on first use.
func defaultMetrics() *metrics {
	metricsOnce.Do(func() {
		sharedMetrics = newMetrics()
		ctrlmetrics.Registry.MustRegister(sharedMetrics.decisions, sharedMetrics.latency, sharedMetrics.cache, sharedMetrics.fetches)
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
	}
	m.counters = map[decisionKey]prometheus.Counter{}
	m.observers = map[string]prometheus.Observer{}
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
	m.mu.RLock()
	c, ok := m.counters[k]
	o, ook := m.observers[protocol]
	m.mu.RUnlock()
	if !ok || !ook {
		decision := "deny"
		if d.Status == http.StatusOK {
			decision = "allow"
		}
		c = m.decisions.WithLabelValues(protocol, decision, string(d.Reason))
		o = m.latency.WithLabelValues(protocol)
		m.mu.Lock()
		m.counters[k], m.observers[protocol] = c, o
		m.mu.Unlock()
	}
	c.Inc()
	o.Observe(took.Seconds())
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

func (m *metrics) jwksFetch(result string) {
	if m == nil {
		return
	}
	m.fetches.WithLabelValues(result).Inc()
}
