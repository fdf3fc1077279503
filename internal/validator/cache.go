package validator

import (
	"crypto/sha256"
	"encoding/hex"
	"sync"
	"time"
	"unsafe"

	"github.com/keyward/keyward/internal/token"
)

// tokenHash is the cache key of a token: its SHA-256. Two different tokens never share an
// entry, and the cache holds no token.
type tokenHash [sha256.Size]byte

func hashToken(tok string) tokenHash {
	// A read-only view of the string's bytes: []byte(tok) would copy the token (hundreds of
	// bytes) on every check, and Sum256 only reads its input.
	return sha256.Sum256(unsafe.Slice(unsafe.StringData(tok), len(tok))) //nolint:gosec // read-only view, see above
}

// short is a log-safe identifier of a token.
func (h tokenHash) short() string { return hex.EncodeToString(h[:6]) }

func hashString(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:8])
}

// cacheEntry is a token that passed signature, issuer, type and time checks. It is used only
// while its issuer, key and session are still valid (checked on every hit), so eviction on
// revocation only frees memory sooner.
type cacheEntry struct {
	claims    *token.Claims
	issuerID  string
	kid       string
	key       *token.VerifyKey
	keySource string // namespace/signingkey or external issuer ID
	sessionNS string // namespace of the issuer's Sessions; empty for external issuers
	groups    string // comma-joined groups, precomputed for the identity header
	expires   time.Time
}

const cacheShards = 64

// tokenCache is a bounded, sharded map of verified tokens.
type tokenCache struct {
	perShard int
	shards   [cacheShards]cacheShard
}

type cacheShard struct {
	mu sync.RWMutex
	m  map[tokenHash]*cacheEntry
}

// newTokenCache holds about size tokens: each shard takes a 64th of it plus 25% slack, since
// hashes do not spread tokens exactly evenly, so the cache never holds more than 1.25 size.
func newTokenCache(size int) *tokenCache {
	c := &tokenCache{perShard: max(size*5/4/cacheShards, 1)}
	for i := range c.shards {
		c.shards[i].m = make(map[tokenHash]*cacheEntry)
	}
	return c
}

func (c *tokenCache) shard(h tokenHash) *cacheShard { return &c.shards[h[0]%cacheShards] }

func (c *tokenCache) get(h tokenHash) *cacheEntry {
	s := c.shard(h)
	s.mu.RLock()
	e := s.m[h]
	s.mu.RUnlock()
	return e
}

// put stores an entry. A full shard first drops expired entries among a few it looks at,
// else one arbitrary entry (Go's map iteration order is random).
func (c *tokenCache) put(h tokenHash, e *cacheEntry, now time.Time) {
	s := c.shard(h)
	s.mu.Lock()
	if _, ok := s.m[h]; !ok && len(s.m) >= c.perShard {
		looked, dropped := 0, 0
		var victim tokenHash
		for k, v := range s.m {
			if !now.Before(v.expires) {
				delete(s.m, k)
				dropped++
			} else if looked == 0 {
				victim = k
			}
			looked++
			if looked >= 16 {
				break
			}
		}
		if dropped == 0 {
			delete(s.m, victim)
		}
	}
	s.m[h] = e
	s.mu.Unlock()
}

func (c *tokenCache) delete(h tokenHash) {
	s := c.shard(h)
	s.mu.Lock()
	delete(s.m, h)
	s.mu.Unlock()
}

// evict drops every entry for which drop returns true, and returns how many.
func (c *tokenCache) evict(drop func(*cacheEntry) bool) int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		for k, v := range s.m {
			if drop(v) {
				delete(s.m, k)
				n++
			}
		}
		s.mu.Unlock()
	}
	return n
}

// sweep drops expired entries.
func (c *tokenCache) sweep(now time.Time) int {
	return c.evict(func(e *cacheEntry) bool { return !now.Before(e.expires) })
}

// len counts the entries.
func (c *tokenCache) len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.RLock()
		n += len(s.m)
		s.mu.RUnlock()
	}
	return n
}
