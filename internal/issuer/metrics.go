package issuer

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// Metrics of the issuer, on the manager's registry (served on --metrics-bind-address). The
// issuer label is "<namespace>/<name>" of the TokenIssuer.
var (
	tokensIssued = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keyward_issuer_tokens_issued_total",
		Help: "Tokens issued, by issuer, grant (password, refresh_token, client_credentials) and token type (access, refresh).",
	}, []string{"issuer", "grant", "token_type"})

	loginFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keyward_issuer_login_failures_total",
		Help: "Failed logins, by issuer and reason (unknown_user, bad_password, disabled, password_too_long, throttled_username, throttled_address, bad_client).",
	}, []string{"issuer", "reason"})

	refreshReuse = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keyward_issuer_refresh_reuse_detected_total",
		Help: "Superseded refresh tokens presented after the reuse grace period; each revokes its session.",
	}, []string{"issuer"})

	sessionsRevoked = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keyward_issuer_sessions_revoked_total",
		Help: "Sessions revoked by this issuer process, by issuer and reason (Logout, ReuseDetected, UserDisabled).",
	}, []string{"issuer", "reason"})

	signingSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "keyward_issuer_signing_duration_seconds",
		Help:    "Time to sign one token, by algorithm.",
		Buckets: []float64{0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05},
	}, []string{"alg"})

	passwordHashes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keyward_issuer_password_hash_computations_total",
		Help: "Password hash computations (bcrypt or argon2id compares), by issuer. Unknown users cost one too; throttled logins cost none.",
	}, []string{"issuer"})

	registerOnce sync.Once
)

// registerMetrics adds the issuer's metrics to controller-runtime's registry once per process
// (several managers in one process share it).
func registerMetrics() {
	registerOnce.Do(func() {
		metrics.Registry.MustRegister(tokensIssued, loginFailures, refreshReuse, sessionsRevoked, signingSeconds, passwordHashes)
	})
}
