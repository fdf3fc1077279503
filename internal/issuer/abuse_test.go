package issuer_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
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

// loginFrom logs in with the TCP connection's source address set to ip (another loopback
// address: 127.0.0.0/8 is all local on Linux), as a client elsewhere would.
func (f *fixture) loginFrom(t *testing.T, ip, user, password string) response {
	t.Helper()
	c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}).DialContext,
	}}
	defer c.CloseIdleConnections()
	body, err := json.Marshal(map[string]string{"username": user, "password": password})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Post(f.base+"api/token/", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatalf("login from %s: %v", ip, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

// A brute force on one account from one address is throttled after the username's burst,
// without a hash while throttled, and does not lock the real user out: from another address
// the right password still logs in (regression: the username bucket alone locked alice out
// everywhere). A wrong password from that other address is then throttled too: it gets one
// attempt, not a fresh burst.
func TestBruteForceDoesNotLockOutTheRealUser(t *testing.T) {
	f := newFixture(t, defaultUsers(t, testCost), nil) // default limits: 5 then 5/min per username
	const attacker, realUser, other = "127.0.0.1", "127.0.0.2", "127.0.0.3"
	for i := range 5 {
		if r := f.loginFrom(t, attacker, "alice", fmt.Sprintf("guess-%d", i)); r.status != http.StatusUnauthorized {
			t.Fatalf("guess %d: %d %s", i, r.status, r.body)
		}
	}
	before := f.hashes(t)
	for i := range 20 {
		r := f.loginFrom(t, attacker, "alice", fmt.Sprintf("more-%d", i))
		if r.status != http.StatusTooManyRequests || r.header.Get("Retry-After") == "" {
			t.Fatalf("guess %d after the burst: %d %s, want 429 with Retry-After", i+5, r.status, r.body)
		}
	}
	if after := f.hashes(t); after != before {
		t.Errorf("%v hashes computed for throttled guesses", after-before)
	}
	// The attacker's right guess is throttled as well: the bucket decides before the hash.
	if r := f.loginFrom(t, attacker, "alice", "wonderland"); r.status != http.StatusTooManyRequests {
		t.Errorf("the right password from the attacker's address: %d, want 429", r.status)
	}
	if r := f.loginFrom(t, realUser, "alice", "wonderland"); r.status != http.StatusOK {
		t.Fatalf("the real user from another address: %d %s, want 200", r.status, r.body)
	}
	// Its success refunded its attempt: it can log in again.
	if r := f.loginFrom(t, realUser, "alice", "wonderland"); r.status != http.StatusOK {
		t.Errorf("the real user's second login: %d %s, want 200", r.status, r.body)
	}
	// A third address guessing gets one attempt while the username's bucket is empty.
	if r := f.loginFrom(t, other, "alice", "guess"); r.status != http.StatusUnauthorized {
		t.Errorf("first guess from a third address: %d, want 401", r.status)
	}
	if r := f.loginFrom(t, other, "alice", "guess-again"); r.status != http.StatusTooManyRequests {
		t.Errorf("second guess from a third address: %d, want 429", r.status)
	}
}

// Credential stuffing from one address (one attempt per username, many usernames) is
// throttled by the address's bucket (default 20 then 30/min): no hash once throttled, and
// other addresses are unaffected.
func TestCredentialStuffingFromOneAddress(t *testing.T) {
	f := newFixture(t, defaultUsers(t, testCost), nil)
	const stuffer, realUser = "127.0.0.4", "127.0.0.5"
	failed, throttled := 0, 0
	var hashesAtThrottle float64
	for i := range 60 {
		r := f.loginFrom(t, stuffer, fmt.Sprintf("user%02d@example.test", i), "Password1!")
		switch r.status {
		case http.StatusUnauthorized:
			if throttled > 0 {
				t.Fatalf("attempt %d answered 401 after being throttled", i)
			}
			failed++
		case http.StatusTooManyRequests:
			if throttled == 0 {
				hashesAtThrottle = f.hashes(t)
			}
			throttled++
		default:
			t.Fatalf("attempt %d: %d %s", i, r.status, r.body)
		}
	}
	if failed != 20 || throttled != 40 {
		t.Errorf("60 usernames from one address: %d refused with a hash, %d throttled; want 20 and 40", failed, throttled)
	}
	if after := f.hashes(t); after != hashesAtThrottle {
		t.Errorf("%v hashes computed while the address was throttled", after-hashesAtThrottle)
	}
	if got := metricValue(t, "keyward_issuer_login_failures_total", map[string]string{"issuer": f.label(), "reason": "throttled_address"}); got != 40 {
		t.Errorf("throttled_address failures = %v, want 40", got)
	}
	if r := f.loginFrom(t, realUser, "alice", "wonderland"); r.status != http.StatusOK {
		t.Errorf("alice from another address: %d %s", r.status, r.body)
	}
}
