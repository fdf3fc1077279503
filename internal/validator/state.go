package validator

import (
	"crypto"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
	"github.com/keyward/keyward/internal/keys"
	"github.com/keyward/keyward/internal/token"
)

// issuer is a token issuer as the decision core sees it: the exact iss, the leeway and the
// verification keys. It is immutable; a change builds a new one.
type issuer struct {
	id     string // namespace/name, or an external issuer ID
	iss    string
	leeway time.Duration
	// maxLifetime is a TokenIssuer's access-token lifetime: no token of it expires later
	// than that from now (plus leeway). Zero for external issuers (not checked).
	maxLifetime time.Duration
	namespace   string // a TokenIssuer's namespace, where its Sessions live; empty for external
	keySource   string
	keys        map[string]*token.VerifyKey // TokenIssuer: its SigningKey's keys by kid
	ext         *externalIssuer
}

// key returns the key with the kid, or nil.
func (i *issuer) key(kid string) *token.VerifyKey {
	if i.ext != nil {
		return i.ext.key(kid)
	}
	return i.keys[kid]
}

// snapshot is everything a decision reads, swapped atomically as a whole.
type snapshot struct {
	index   *policyIndex
	issuers map[string]*issuer
}

// tokenIssuerSpec is what the validator needs of a TokenIssuer.
type tokenIssuerSpec struct {
	iss        string
	leeway     time.Duration
	lifetime   time.Duration
	signingKey string // namespace/name
}

type sessionKey struct{ namespace, name string }

// store holds what the observers saw, and publishes snapshots of it. Observers call its set
// and delete methods; the decision core reads snapshots and the revoked sessions.
type store struct {
	publicURL string
	allowHS   bool
	cache     *tokenCache
	log       logr.Logger
	newExt    func(*externalSpec) *externalIssuer

	mu           sync.Mutex
	policies     map[string]*compiledPolicy
	tokenIssuers map[string]tokenIssuerSpec
	jwks         map[string]map[string]*token.VerifyKey
	hs           map[string]map[string]*token.VerifyKey
	externals    map[string]*externalIssuer
	indexDirty   bool
	lastIndex    *policyIndex

	snap atomic.Pointer[snapshot]
	// kick asks the rebuild loop for a new snapshot; nil means rebuild at once.
	kick chan struct{}

	revMu   sync.RWMutex
	revoked map[sessionKey]struct{}
}

func newStore(publicURL string, allowHS bool, cache *tokenCache, log logr.Logger, newExt func(*externalSpec) *externalIssuer) *store {
	s := &store{
		publicURL:    strings.TrimSuffix(publicURL, "/"),
		allowHS:      allowHS,
		cache:        cache,
		log:          log,
		newExt:       newExt,
		policies:     map[string]*compiledPolicy{},
		tokenIssuers: map[string]tokenIssuerSpec{},
		jwks:         map[string]map[string]*token.VerifyKey{},
		hs:           map[string]map[string]*token.VerifyKey{},
		externals:    map[string]*externalIssuer{},
		revoked:      map[sessionKey]struct{}{},
		indexDirty:   true,
	}
	s.rebuild()
	return s
}

// changed publishes a new snapshot now, or asks the rebuild loop to.
func (s *store) changed() {
	if s.kick == nil {
		s.rebuild()
		return
	}
	select {
	case s.kick <- struct{}{}:
	default: // a rebuild is already due and will see this change
	}
}

// rebuild publishes a snapshot of the current state.
func (s *store) rebuild() {
	s.mu.Lock()
	defer s.mu.Unlock()
	idx := s.lastIndex
	if s.indexDirty || idx == nil {
		policies := slices.SortedFunc(maps.Values(s.policies), func(a, b *compiledPolicy) int { return strings.Compare(a.key, b.key) })
		idx = buildIndex(policies)
		s.lastIndex, s.indexDirty = idx, false
	}
	issuers := make(map[string]*issuer, len(s.tokenIssuers)+len(s.externals))
	for id, ti := range s.tokenIssuers {
		ns, _, _ := strings.Cut(id, "/")
		ks := s.jwks[ti.signingKey]
		if hs := s.hs[ti.signingKey]; len(hs) > 0 {
			merged := maps.Clone(ks)
			if merged == nil {
				merged = map[string]*token.VerifyKey{}
			}
			maps.Copy(merged, hs)
			ks = merged
		}
		issuers[id] = &issuer{id: id, iss: ti.iss, leeway: ti.leeway, maxLifetime: ti.lifetime, namespace: ns, keySource: ti.signingKey, keys: ks}
	}
	// External issuers: keep those some policy refers to, create new ones.
	wanted := map[string]*externalSpec{}
	for _, p := range s.policies {
		for _, e := range p.externals {
			wanted[e.id()] = e
		}
	}
	for id, ext := range s.externals {
		if _, ok := wanted[id]; !ok {
			ext.stop()
			delete(s.externals, id)
		}
	}
	for id, spec := range wanted {
		ext, ok := s.externals[id]
		if !ok && s.newExt != nil {
			ext = s.newExt(spec)
			s.externals[id] = ext
		}
		if ext != nil {
			issuers[id] = &issuer{id: id, iss: spec.issuerURL, leeway: spec.leeway, keySource: id, ext: ext}
		}
	}
	s.snap.Store(&snapshot{index: idx, issuers: issuers})
}

// externalIssuers returns the external issuers in use.
func (s *store) externalIssuers() []*externalIssuer {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Collect(maps.Values(s.externals))
}

func (s *store) setPolicy(p *keywardv1.AccessPolicy) {
	key := p.Namespace + "/" + p.Name
	s.mu.Lock()
	if old, ok := s.policies[key]; ok && old.generation == p.Generation && p.Generation != 0 {
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	cp := compilePolicy(p) // outside the lock: CEL compilation takes a while
	s.mu.Lock()
	s.policies[key] = cp
	s.indexDirty = true
	s.mu.Unlock()
	s.changed()
}

func (s *store) deletePolicy(namespace, name string) {
	s.mu.Lock()
	delete(s.policies, namespace+"/"+name)
	s.indexDirty = true
	s.mu.Unlock()
	s.changed()
}

func (s *store) setTokenIssuer(ti *keywardv1.TokenIssuer) {
	spec := tokenIssuerSpec{
		iss:        ti.EffectiveIssuer(s.publicURL),
		leeway:     ti.Spec.LeewayDuration(),
		lifetime:   ti.Spec.AccessTokenLifetimeDuration(),
		signingKey: ti.Namespace + "/" + ti.Spec.SigningKeyRef.Name,
	}
	s.mu.Lock()
	s.tokenIssuers[ti.Namespace+"/"+ti.Name] = spec
	s.mu.Unlock()
	s.changed()
}

func (s *store) deleteTokenIssuer(namespace, name string) {
	s.mu.Lock()
	delete(s.tokenIssuers, namespace+"/"+name)
	s.mu.Unlock()
	s.changed()
}

// setJWKS replaces a SigningKey's public keys with those of its JWKS ConfigMap. Keys whose
// kid is still there keep their identity, so cached tokens stay valid; tokens of removed
// keys are evicted. A JWKS that does not parse removes every key (fail closed).
func (s *store) setJWKS(namespace, signingKey string, data []byte) error {
	key := namespace + "/" + signingKey
	parsed, err := token.VerifyKeysFromJWKS(data)
	if err != nil {
		parsed = map[string]*token.VerifyKey{}
		err = fmt.Errorf("cannot read JWKS of signing key %s: %w", key, err)
	}
	s.replaceKeys(s.jwks, key, parsed)
	return err
}

func (s *store) deleteJWKS(namespace, signingKey string) {
	s.replaceKeys(s.jwks, namespace+"/"+signingKey, nil)
}

// setKeySet reads the HS keys of a SigningKey's key-set Secret. Only with AllowHSKeys.
func (s *store) setKeySet(namespace, signingKey string, data []byte) error {
	key := namespace + "/" + signingKey
	parsed := map[string]*token.VerifyKey{}
	ks, err := keys.ParseKeySet(data)
	if err == nil {
		for i := range ks.Keys {
			k := &ks.Keys[i]
			if !k.Algorithm.IsSymmetric() {
				continue
			}
			vk, kerr := token.VerifyKeyFromStored(k)
			if kerr != nil {
				err = kerr
				continue
			}
			parsed[vk.KID] = vk
		}
	}
	s.replaceKeys(s.hs, key, parsed)
	if err != nil {
		return fmt.Errorf("cannot read key set of signing key %s: %w", key, err)
	}
	return nil
}

func (s *store) deleteKeySet(namespace, signingKey string) {
	s.replaceKeys(s.hs, namespace+"/"+signingKey, nil)
}

func (s *store) replaceKeys(set map[string]map[string]*token.VerifyKey, key string, next map[string]*token.VerifyKey) {
	s.mu.Lock()
	prev := set[key]
	for kid, k := range next {
		if old, ok := prev[kid]; ok && old.Alg == k.Alg && sameKey(old, k) {
			next[kid] = old
		}
	}
	removed := map[string]bool{}
	for kid := range prev {
		if _, ok := next[kid]; !ok || next[kid] != prev[kid] {
			removed[kid] = true
		}
	}
	if next == nil {
		delete(set, key)
	} else {
		set[key] = next
	}
	s.mu.Unlock()
	s.changed()
	if len(removed) > 0 {
		n := s.cache.evict(func(e *cacheEntry) bool { return e.keySource == key && removed[e.kid] })
		s.log.V(1).Info("Keys withdrawn", "signingKey", key, "keys", len(removed), "evictedTokens", n)
	}
}

// sameKey reports whether two verification keys are the same key.
func sameKey(a, b *token.VerifyKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	if ea, ok := a.Key.(equaler); ok {
		return ea.Equal(b.Key)
	}
	ab, aok := a.Key.([]byte)
	bb, bok := b.Key.([]byte)
	return aok && bok && string(ab) == string(bb)
}

// setSessionRevoked records a Session's revocation (or its end) and evicts its tokens.
func (s *store) setSessionRevoked(namespace, name string, revoked bool) {
	k := sessionKey{namespace, name}
	s.revMu.Lock()
	if revoked {
		s.revoked[k] = struct{}{}
	} else {
		delete(s.revoked, k)
	}
	s.revMu.Unlock()
	if revoked {
		n := s.cache.evict(func(e *cacheEntry) bool { return e.sessionNS == namespace && e.claims.SessionID == name })
		s.log.V(1).Info("Session revoked", "namespace", namespace, "session", name, "evictedTokens", n)
	}
}

func (s *store) isRevoked(namespace, sid string) bool {
	if sid == "" || namespace == "" {
		return false
	}
	s.revMu.RLock()
	_, ok := s.revoked[sessionKey{namespace, sid}]
	s.revMu.RUnlock()
	return ok
}
