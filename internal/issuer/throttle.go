package issuer

import (
	"math"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// rateSpec is a token bucket: burst failures, refilled at perMinute per minute.
type rateSpec struct {
	burst     int
	perMinute int
}

func (s rateSpec) limit() rate.Limit { return rate.Limit(float64(s.perMinute) / 60) }

// maxBuckets bounds each bucket map. Full buckets are swept; past the bound, new keys are
// throttled rather than let the map grow without end under a flood of random usernames.
const maxBuckets = 100_000

// buckets keeps one limiter per key (a username or a client address).
type buckets struct {
	mu        sync.Mutex
	spec      rateSpec
	m         map[string]*rate.Limiter
	lastSweep time.Time
}

// reserve takes one failure token for key. It returns the reservation (to refund on success)
// or, when the bucket is empty, how long until a token is available.
func (b *buckets) reserve(key string, now time.Time) (*rate.Reservation, time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if now.Sub(b.lastSweep) > time.Minute {
		b.sweep(now)
	}
	l := b.m[key]
	if l == nil {
		if len(b.m) >= maxBuckets {
			return nil, time.Minute
		}
		l = rate.NewLimiter(b.spec.limit(), b.spec.burst)
		b.m[key] = l
	}
	r := l.ReserveN(now, 1)
	if !r.OK() {
		return nil, time.Minute
	}
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return nil, d
	}
	return r, 0
}

// sweep drops full buckets: they hold no information a new bucket would not.
func (b *buckets) sweep(now time.Time) {
	b.lastSweep = now
	for k, l := range b.m {
		if l.TokensAt(now) >= float64(b.spec.burst) {
			delete(b.m, k)
		}
	}
}

// throttler limits failed logins per username and per client address.
//
// The username bucket alone would let anyone lock a user out by failing logins in their
// name. So once a username's bucket is empty, an address that has not failed for that
// username lately (its pair bucket, one failure refilled at the username's rate, is full)
// still gets an attempt: the real user, logging in from elsewhere, is not locked out by an
// attacker guessing their password, while the attacker's address stays throttled. A
// distributed guesser gets the username's burst once, then perUsername.perMinute per minute
// per address, each address also bounded by its own bucket across usernames.
type throttler struct {
	user, pair, addr buckets
}

// pairSpec is the bucket of one (username, address) pair: one failure, refilled at the
// username's rate.
func pairSpec(user rateSpec) rateSpec { return rateSpec{burst: 1, perMinute: user.perMinute} }

func newThrottler(user, addr rateSpec) *throttler {
	return &throttler{
		user: buckets{spec: user, m: make(map[string]*rate.Limiter)},
		pair: buckets{spec: pairSpec(user), m: make(map[string]*rate.Limiter)},
		addr: buckets{spec: addr, m: make(map[string]*rate.Limiter)},
	}
}

// setLimits applies new limits; existing buckets restart with them.
func (t *throttler) setLimits(user, addr rateSpec) {
	for _, x := range []struct {
		b *buckets
		s rateSpec
	}{{&t.user, user}, {&t.pair, pairSpec(user)}, {&t.addr, addr}} {
		x.b.mu.Lock()
		if x.b.spec != x.s {
			x.b.spec = x.s
			x.b.m = make(map[string]*rate.Limiter)
		}
		x.b.mu.Unlock()
	}
}

// attempt is a login attempt that passed the throttle; call succeeded to refund its tokens.
type attempt struct {
	user, pair, addr *rate.Reservation
	now              time.Time
}

// succeeded refunds the attempt's tokens: only failures count against the limits.
func (a *attempt) succeeded() {
	for _, r := range []*rate.Reservation{a.user, a.pair, a.addr} {
		if r != nil {
			r.CancelAt(a.now)
		}
	}
}

// pairKey is the bucket key of a username at an address; NUL cannot occur in either.
func pairKey(username, addr string) string { return username + "\x00" + addr }

// admit takes a failure token from the username's (or, once that is empty, the username and
// address pair's) and the address's buckets before any hash is computed. When they are empty
// it returns ok=false, the seconds to wait (for Retry-After) and which limit applied.
func (t *throttler) admit(username, addr string, now time.Time) (a *attempt, retryAfter int, which string) {
	ur, _ := t.user.reserve(username, now)
	// The pair records this address's failures for the username. While the username's bucket
	// has tokens it is taken when available and not required.
	pr, pd := t.pair.reserve(pairKey(username, addr), now)
	if ur == nil && pr == nil {
		return nil, seconds(pd), "throttled_username"
	}
	ar, ad := t.addr.reserve(addr, now)
	if ar == nil {
		for _, r := range []*rate.Reservation{ur, pr} {
			if r != nil {
				r.CancelAt(now)
			}
		}
		return nil, seconds(ad), "throttled_address"
	}
	return &attempt{user: ur, pair: pr, addr: ar, now: now}, 0, ""
}

func seconds(d time.Duration) int {
	return max(1, int(math.Ceil(d.Seconds())))
}
