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
type throttler struct {
	user, addr buckets
}

func newThrottler(user, addr rateSpec) *throttler {
	return &throttler{
		user: buckets{spec: user, m: make(map[string]*rate.Limiter)},
		addr: buckets{spec: addr, m: make(map[string]*rate.Limiter)},
	}
}

// setLimits applies new limits; existing buckets restart with them.
func (t *throttler) setLimits(user, addr rateSpec) {
	for _, x := range []struct {
		b *buckets
		s rateSpec
	}{{&t.user, user}, {&t.addr, addr}} {
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
	user, addr *rate.Reservation
	now        time.Time
}

// succeeded refunds the attempt's tokens: only failures count against the limits.
func (a *attempt) succeeded() {
	a.user.CancelAt(a.now)
	a.addr.CancelAt(a.now)
}

// admit takes a failure token from the username's and the address's buckets before any
// hash is computed. When either is empty it returns ok=false, the seconds to wait (for
// Retry-After) and which limit applied.
func (t *throttler) admit(username, addr string, now time.Time) (a *attempt, retryAfter int, which string) {
	ur, ud := t.user.reserve(username, now)
	if ur == nil {
		return nil, seconds(ud), "throttled_username"
	}
	ar, ad := t.addr.reserve(addr, now)
	if ar == nil {
		ur.CancelAt(now)
		return nil, seconds(ad), "throttled_address"
	}
	return &attempt{user: ur, addr: ar, now: now}, 0, ""
}

func seconds(d time.Duration) int {
	return max(1, int(math.Ceil(d.Seconds())))
}
