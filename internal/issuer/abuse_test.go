package issuer_test

import (
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"
)

// Failed logins are throttled per username and per client address before any hash is
// computed: once throttled, the hash counter no longer moves.
func TestLoginThrottling(t *testing.T) {
	f := newFixture(t, defaultUsers(t, testCost), func(spec map[string]any) {
		spec["loginThrottling"] = map[string]any{
			"perUsername":      map[string]any{"burst": 3, "perMinute": 1},
			"perClientAddress": map[string]any{"burst": 6, "perMinute": 1},
		}
	})
	t.Run("per username", func(t *testing.T) {
		// A successful login does not count.
		f.loginOK(t, "alice", "wonderland")
		for i := range 3 {
			if r := f.login(t, "alice", "wrong"); r.status != 401 {
				t.Fatalf("failure %d: %d %s", i, r.status, r.body)
			}
		}
		before := f.hashes(t)
		for range 5 {
			r := f.login(t, "alice", "wrong")
			if r.status != http.StatusTooManyRequests || r.header.Get("Retry-After") == "" ||
				!strings.HasPrefix(r.str(t, "detail"), "Request was throttled. Expected available in ") {
				t.Fatalf("throttled login: %d %v %s", r.status, r.header, r.body)
			}
		}
		// Even the right password waits: the bucket is empty.
		if r := f.login(t, "alice", "wonderland"); r.status != http.StatusTooManyRequests {
			t.Errorf("right password while throttled: %d", r.status)
		}
		// The OAuth2 password grant shares the limit.
		r := postForm(t, f.base+"oauth2/token", url.Values{"grant_type": {"password"}, "username": {"alice"}, "password": {"wrong"}}, "", "")
		if r.status != http.StatusTooManyRequests || r.header.Get("Retry-After") == "" {
			t.Errorf("password grant while throttled: %d %s", r.status, r.body)
		}
		if after := f.hashes(t); after != before {
			t.Errorf("%v hashes computed while throttled", after-before)
		}
		if got := metricValue(t, "keyward_issuer_login_failures_total", map[string]string{"issuer": f.label(), "reason": "throttled_username"}); got != 7 {
			t.Errorf("throttled_username failures = %v, want 7", got)
		}
	})
	t.Run("per client address", func(t *testing.T) {
		// Alice's 3 failures above count against this address too; 3 more unknown users
		// (distinct usernames) empty the address bucket.
		for i := range 3 {
			if r := f.login(t, fmt.Sprintf("nobody%d", i), "wrong"); r.status != 401 {
				t.Fatalf("failure %d: %d", i, r.status)
			}
		}
		before := f.hashes(t)
		r := f.login(t, "somebody-else", "wrong")
		if r.status != http.StatusTooManyRequests {
			t.Fatalf("address over its limit: %d %s", r.status, r.body)
		}
		if after := f.hashes(t); after != before {
			t.Errorf("%v hashes computed while throttled", after-before)
		}
	})
}

// bcrypt reads 72 bytes: longer passwords are refused for everyone, without a hash.
func TestLongPasswordsAreRefusedWithoutHashing(t *testing.T) {
	f := newFixture(t, defaultUsers(t, testCost), nil)
	before := f.hashes(t)
	long := strings.Repeat("w", 73)
	for _, user := range []string{"alice", "nobody"} {
		if r := f.login(t, user, long); r.status != 401 || string(r.body) != `{"detail":"No active account found with the given credentials"}` {
			t.Errorf("%s with a 73-byte password: %d %s", user, r.status, r.body)
		}
	}
	if after := f.hashes(t); after != before {
		t.Errorf("%v hashes computed for over-long passwords", after-before)
	}
}

// An unknown user costs the same work as a known one with a wrong password (one bcrypt
// compare at the users' cost, 10 here), with the same status, body and headers. The medians
// are reported, not asserted: timing on a shared 2-core machine is noisy.
func TestUnknownUserTiming(t *testing.T) {
	u := users{htpasswd: "alice:" + hash(t, "wonderland", 10) + "\nbob:" + hash(t, "builder", 10) + "\n"}
	f := newFixture(t, u, func(spec map[string]any) {
		spec["loginThrottling"] = map[string]any{
			"perUsername":      map[string]any{"burst": 1000, "perMinute": 60000},
			"perClientAddress": map[string]any{"burst": 1000, "perMinute": 60000},
		}
	})
	const n = 15
	var known, unknown []time.Duration
	var first response
	for i := range 2 * n {
		user := "alice"
		if i%2 == 1 {
			user = "zelda"
		}
		before := f.hashes(t)
		start := time.Now()
		r := f.login(t, user, "wrong-password")
		d := time.Since(start)
		if got := f.hashes(t) - before; got != 1 {
			t.Errorf("%s: %v hash computations, want 1", user, got)
		}
		r.header.Del("Date")
		if i == 0 {
			first = r
		} else if r.status != first.status || string(r.body) != string(first.body) || fmt.Sprint(r.header) != fmt.Sprint(first.header) {
			t.Errorf("%s answered %d %v %s, alice %d %v %s", user, r.status, r.header, r.body, first.status, first.header, first.body)
		}
		if user == "alice" {
			known = append(known, d)
		} else {
			unknown = append(unknown, d)
		}
	}
	mk, mu := median(known), median(unknown)
	t.Logf("median login time, bcrypt cost 10, %d each: known user with wrong password %v, unknown user %v, difference %v",
		n, mk.Round(time.Microsecond), mu.Round(time.Microsecond), (mu - mk).Round(time.Microsecond))
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
