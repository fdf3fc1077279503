package issuer

import (
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/keyward/keyward/internal/token"
)

// issuerConfig is an immutable snapshot of everything one TokenIssuer's handlers need. The
// observer builds a new one whenever the TokenIssuer, its SigningKey's key set or its Secrets
// change, and swaps it into the Registry; handlers never call the Kubernetes API for it.
type issuerConfig struct {
	key   types.NamespacedName
	label string // "<namespace>/<name>", the metrics label

	// notReady, when set, says why the issuer cannot issue tokens (503).
	notReady string

	iss         string
	audiences   []string
	accessTTL   time.Duration
	refreshTTL  time.Duration
	leeway      time.Duration
	rotate      bool
	grace       time.Duration
	extraClaims map[string]any

	signer     *token.Signer
	verifyKeys map[string]*token.VerifyKey
	jwks       []byte
	jwksMaxAge time.Duration

	users   *Users
	clients *Clients

	perUser, perAddress rateSpec
}

// Registry holds the current snapshot of every TokenIssuer, and the per-issuer state that must
// outlive snapshots (login throttling buckets). It is safe for concurrent use.
type Registry struct {
	mu       sync.RWMutex
	issuers  map[types.NamespacedName]*issuerConfig
	throttle map[types.NamespacedName]*throttler
	revoked  *revokedSet
}

func newRegistry() *Registry {
	return &Registry{
		issuers:  make(map[types.NamespacedName]*issuerConfig),
		throttle: make(map[types.NamespacedName]*throttler),
		revoked:  newRevokedSet(),
	}
}

// get returns an issuer's snapshot and throttler, or nil.
func (r *Registry) get(key types.NamespacedName) (*issuerConfig, *throttler) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.issuers[key], r.throttle[key]
}

func (r *Registry) set(cfg *issuerConfig) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.issuers[cfg.key] = cfg
	t := r.throttle[cfg.key]
	if t == nil {
		t = newThrottler(cfg.perUser, cfg.perAddress)
		r.throttle[cfg.key] = t
	} else {
		t.setLimits(cfg.perUser, cfg.perAddress)
	}
}

// missing returns the first of keys the registry holds no snapshot of.
func (r *Registry) missing(keys []types.NamespacedName) (types.NamespacedName, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for _, k := range keys {
		if _, ok := r.issuers[k]; !ok {
			return k, true
		}
	}
	return types.NamespacedName{}, false
}

func (r *Registry) delete(key types.NamespacedName) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.issuers, key)
	delete(r.throttle, key)
}

// revokedSet is the set of revoked Sessions ("<namespace>/<sid>") this process knows of: those
// labelled keyward.dev/revoked=true in its watch, and those it revoked itself (added at once,
// before the watch confirms them).
type revokedSet struct {
	mu  sync.RWMutex
	set map[types.NamespacedName]struct{}
}

func newRevokedSet() *revokedSet {
	return &revokedSet{set: make(map[types.NamespacedName]struct{})}
}

func (s *revokedSet) add(k types.NamespacedName) {
	s.mu.Lock()
	s.set[k] = struct{}{}
	s.mu.Unlock()
}

func (s *revokedSet) remove(k types.NamespacedName) {
	s.mu.Lock()
	delete(s.set, k)
	s.mu.Unlock()
}

func (s *revokedSet) has(k types.NamespacedName) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	_, ok := s.set[k]
	return ok
}

func sessionKey(cfg *issuerConfig, sid string) types.NamespacedName {
	return types.NamespacedName{Namespace: cfg.key.Namespace, Name: sid}
}
