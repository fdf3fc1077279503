package issuer_test

import (
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"testing"
	"time"

	eventsv1 "k8s.io/api/events/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
)

// concurrentRefresh presents one refresh token n times at once, to the given base URLs in turn,
// and returns the responses.
func concurrentRefresh(t *testing.T, bases []string, refresh string, n int) []response {
	t.Helper()
	out := make([]response, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			out[i] = postJSON(t, bases[i%len(bases)]+"api/token/refresh/", map[string]string{"refresh": refresh})
		})
	}
	close(start)
	wg.Wait()
	return out
}

// successorsOf checks that every response is 200 and returns the distinct refresh jtis.
func successorsOf(t *testing.T, rs []response) map[string]int {
	t.Helper()
	jtis := map[string]int{}
	for _, r := range rs {
		if r.status != http.StatusOK {
			t.Fatalf("concurrent refresh: %d %s", r.status, r.body)
		}
		jtis[fmt.Sprint(claimsOf(t, r.str(t, "refresh"))["jti"])]++
	}
	return jtis
}

func TestRefreshRotation(t *testing.T) {
	f := newFixture(t, defaultUsers(t, testCost), func(spec map[string]any) {
		spec["refreshTokenRotation"] = map[string]any{"enabled": true, "reuseGracePeriod": "3s"}
	})
	access1, refresh1 := f.loginOK(t, "alice", "wonderland")
	sid := claimsOf(t, refresh1)["sid"].(string)

	t.Run("the current generation rotates", func(t *testing.T) {
		r := f.refresh(t, refresh1)
		if r.status != 200 {
			t.Fatalf("refresh: %d %s", r.status, r.body)
		}
		c := claimsOf(t, r.str(t, "refresh"))
		s := f.session(t, sid)
		if s.Status.RefreshGeneration != 2 || s.Status.RefreshTokenID != c["jti"] || s.Status.PreviousTokenID != claimsOf(t, refresh1)["jti"] || s.Status.RotatedAt == nil {
			t.Errorf("session status after rotation: %+v", s.Status)
		}
	})
	var refresh2 string
	t.Run("a retry within the grace period gets the same successor", func(t *testing.T) {
		s := f.session(t, sid)
		for range 3 {
			r := f.refresh(t, refresh1)
			if r.status != 200 {
				t.Fatalf("retry: %d %s", r.status, r.body)
			}
			refresh2 = r.str(t, "refresh")
			c := claimsOf(t, refresh2)
			if c["jti"] != s.Status.RefreshTokenID || fmt.Sprint(c["gen"]) != "2" ||
				fmt.Sprint(c["iat"]) != fmt.Sprint(s.Status.RefreshIssuedAt.Unix()) || fmt.Sprint(c["exp"]) != fmt.Sprint(s.Status.RefreshExpiresAt.Unix()) {
				t.Errorf("retry successor %v, session %+v", c, s.Status)
			}
		}
		if got := f.session(t, sid).Status.RefreshGeneration; got != 2 {
			t.Errorf("generation after retries = %d, want 2", got)
		}
	})
	t.Run("concurrent refreshes of one token write exactly one successor", func(t *testing.T) {
		before := f.session(t, sid).Status.RefreshGeneration
		jtis := successorsOf(t, concurrentRefresh(t, []string{f.base}, refresh2, 8))
		if len(jtis) != 1 {
			t.Errorf("8 concurrent refreshes gave %d successors: %v", len(jtis), jtis)
		}
		if got := f.session(t, sid).Status.RefreshGeneration; got != before+1 {
			t.Errorf("generation %d -> %d, want one step", before, got)
		}
	})
	t.Run("a replay after the grace period revokes the family", func(t *testing.T) {
		reuse := metricValue(t, "keyward_issuer_refresh_reuse_detected_total", map[string]string{"issuer": f.label()})
		current := f.session(t, sid)
		time.Sleep(3100 * time.Millisecond) // past reuseGracePeriod
		r := f.refresh(t, refresh1)
		if r.status != 401 || string(r.body) != `{"detail":"Token is blacklisted","code":"token_not_valid"}` {
			t.Fatalf("replay: %d %s", r.status, r.body)
		}
		s := f.session(t, sid)
		if !s.Spec.Revoked || s.Labels["keyward.dev/revoked"] != "true" || s.Status.RevokedReason != "ReuseDetected" {
			t.Errorf("session after replay: spec %+v labels %v status %+v", s.Spec, s.Labels, s.Status)
		}
		if got := metricValue(t, "keyward_issuer_refresh_reuse_detected_total", map[string]string{"issuer": f.label()}); got != reuse+1 {
			t.Errorf("reuse metric %v -> %v", reuse, got)
		}
		if got := metricValue(t, "keyward_issuer_sessions_revoked_total", map[string]string{"issuer": f.label(), "reason": "ReuseDetected"}); got != 1 {
			t.Errorf("sessions revoked metric = %v", got)
		}
		// The whole family is dead: the current refresh token and every access token.
		_ = current
		if r := f.refresh(t, refresh2); r.status != 401 {
			t.Errorf("refresh of a revoked family: %d %s", r.status, r.body)
		}
		if r := f.verify(t, access1); r.status != 401 {
			t.Errorf("verify of a revoked family's access token: %d %s", r.status, r.body)
		}
		if got := f.introspect(t, access1); len(got) != 1 || got["active"] != false {
			t.Errorf("introspection of a revoked family's access token: %v", got)
		}
		eventually(t, 10*time.Second, func() error {
			var events eventsv1.EventList
			if err := k8s.List(ctxFor(t), &events, client.InNamespace(f.ns)); err != nil {
				return err
			}
			for _, e := range events.Items {
				if e.Regarding.Name == sid && e.Type == "Warning" && e.Reason == "RefreshTokenReused" {
					return nil
				}
			}
			return fmt.Errorf("no Warning RefreshTokenReused event for session %s among %d events", sid, len(events.Items))
		})
	})
}

func TestRotationDisabledKeepsTheRefreshToken(t *testing.T) {
	f := newFixture(t, defaultUsers(t, testCost), func(spec map[string]any) {
		spec["refreshTokenRotation"] = map[string]any{"enabled": false}
	})
	_, refresh := f.loginOK(t, "alice", "wonderland")
	for range 3 {
		r := f.refresh(t, refresh)
		if r.status != 200 || r.json(t)["refresh"] != nil || r.json(t)["access"] == nil {
			t.Fatalf("refresh without rotation: %d %s", r.status, r.body)
		}
	}
	if got := f.session(t, claimsOf(t, refresh)["sid"].(string)).Status.RefreshGeneration; got != 0 {
		t.Errorf("generation = %d, want 0 (the implicit first generation)", got)
	}
}

// Users and their Secret: a disabled user can neither log in nor refresh, and edits of the
// users Secret apply while the issuer runs.
func TestUsersSecretEditedWhileRunning(t *testing.T) {
	f := newFixture(t, defaultUsers(t, testCost), nil)
	if r := f.login(t, "bob", "builder"); r.status != 401 {
		t.Fatalf("disabled bob logged in: %d %s", r.status, r.body)
	}
	_, refresh := f.loginOK(t, "alice", "wonderland")
	if r := f.login(t, "dave", "diver"); r.status != 401 {
		t.Fatalf("unknown dave: %d", r.status)
	}
	// Add dave, disable alice, enable bob.
	f.setUsers(t, users{
		htpasswd: "alice:" + hash(t, "wonderland", testCost) + "\nbob:" + hash(t, "builder", testCost) + "\ndave:" + hash(t, "diver", testCost) + "\n",
		yaml:     "alice:\n  disabled: true\n",
	})
	eventually(t, 10*time.Second, func() error {
		if r := f.login(t, "dave", "diver"); r.status != 200 {
			return fmt.Errorf("dave: %d %s", r.status, r.body)
		}
		return nil
	})
	f.loginOK(t, "bob", "builder")
	if r := f.login(t, "alice", "wonderland"); r.status != 401 {
		t.Errorf("disabled alice logged in: %d %s", r.status, r.body)
	}
	r := f.refresh(t, refresh)
	if r.status != 401 || string(r.body) != `{"detail":"Token is invalid or expired","code":"token_not_valid"}` {
		t.Errorf("refresh of a disabled user: %d %s", r.status, r.body)
	}
	s := f.session(t, claimsOf(t, refresh)["sid"].(string))
	if !s.Spec.Revoked || s.Status.RevokedReason != "UserDisabled" {
		t.Errorf("disabled user's session: spec %+v status %+v", s.Spec, s.Status)
	}
	// A removed user cannot refresh either.
	_, refreshDave := f.loginOK(t, "dave", "diver")
	f.setUsers(t, users{htpasswd: "bob:" + hash(t, "builder", testCost) + "\n"})
	eventually(t, 10*time.Second, func() error {
		if r := f.refresh(t, refreshDave); r.status != 401 {
			return fmt.Errorf("removed dave refreshed: %d", r.status)
		}
		return nil
	})
}

// An admin revokes a session by setting spec.revoked alone: the controller labels it, the
// issuer refuses its tokens.
func TestAdminRevocation(t *testing.T) {
	f := newFixture(t, defaultUsers(t, testCost), nil)
	access, refresh := f.loginOK(t, "alice", "wonderland")
	sid := claimsOf(t, access)["sid"].(string)
	s := f.session(t, sid)
	s.Spec.Revoked = true
	if err := k8s.Update(ctxFor(t), s); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, func() error {
		s := f.session(t, sid)
		if s.Labels["keyward.dev/revoked"] != "true" || s.Status.RevokedReason != "Admin" {
			return fmt.Errorf("labels %v status %+v", s.Labels, s.Status)
		}
		if r := f.verify(t, access); r.status != 401 {
			return fmt.Errorf("verify of an admin-revoked session's access token: %d", r.status)
		}
		return nil
	})
	if r := f.refresh(t, refresh); r.status != 401 {
		t.Errorf("refresh: %d %s", r.status, r.body)
	}
	// Revocation is final: un-revoking the spec and dropping the label is undone by the
	// controller, and the session's tokens stay refused meanwhile.
	s = f.session(t, sid)
	s.Spec.Revoked = false
	delete(s.Labels, "keyward.dev/revoked")
	if err := k8s.Update(ctxFor(t), s); err != nil {
		t.Fatal(err)
	}
	if r := f.refresh(t, refresh); r.status != 401 {
		t.Errorf("refresh of an un-revoked session: %d %s", r.status, r.body)
	}
	eventually(t, 10*time.Second, func() error {
		s := f.session(t, sid)
		if !s.Spec.Revoked || s.Labels["keyward.dev/revoked"] != "true" {
			return fmt.Errorf("spec %+v labels %v", s.Spec, s.Labels)
		}
		return nil
	})
}

// The controller deletes a Session once its end plus the issuer's leeway has passed.
func TestExpiredSessionsAreDeleted(t *testing.T) {
	f := newFixture(t, defaultUsers(t, testCost), func(spec map[string]any) {
		spec["accessTokenLifetime"] = "10s"
		spec["refreshTokenLifetime"] = "11s"
		spec["leeway"] = "0s"
	})
	access, _ := f.loginOK(t, "alice", "wonderland")
	c := claimsOf(t, access)
	if fmt.Sprint(c["exp"]) > fmt.Sprint(f.session(t, c["sid"].(string)).Spec.ExpiresAt.Unix()) {
		t.Errorf("access token outlives its session")
	}
	eventually(t, 25*time.Second, func() error {
		err := k8s.Get(ctxFor(t), client.ObjectKey{Namespace: f.ns, Name: c["sid"].(string)}, &keywardv1.Session{})
		if err == nil {
			return fmt.Errorf("session still exists")
		}
		return client.IgnoreNotFound(err)
	})
}

// Token revocation through OAuth2 revokes the session as blacklist does.
func TestOAuth2RevokeRevokesTheSession(t *testing.T) {
	f := newFixture(t, defaultUsers(t, testCost), nil)
	access, refresh := f.loginOK(t, "alice", "wonderland")
	if got := f.introspect(t, refresh); got["active"] != true || got["token_type"] != "refresh_token" {
		t.Fatalf("introspect refresh: %v", got)
	}
	r := postForm(t, f.base+"oauth2/revoke", url.Values{"token": {access}}, "", "")
	if r.status != 200 {
		t.Fatalf("revoke: %d %s", r.status, r.body)
	}
	if got := f.introspect(t, refresh); got["active"] != false {
		t.Errorf("introspect refresh after revocation: %v", got)
	}
	if got := f.introspect(t, access); got["active"] != false {
		t.Errorf("introspect access after revocation: %v", got)
	}
	// Error shapes.
	cc := postForm(t, f.base+"oauth2/token", url.Values{"grant_type": {"client_credentials"}}, "svc", clientSecret).str(t, "access_token")
	for _, tc := range []struct {
		name       string
		form       url.Values
		user, pass string
		wantStatus int
		wantError  string
	}{
		{"no token", url.Values{}, "", "", 400, "invalid_request"},
		{"bad client credentials", url.Values{"token": {refresh}}, "svc", "wrong", 401, "invalid_client"},
		{"a client_credentials token has no session to revoke", url.Values{"token": {cc}}, "svc", clientSecret, 400, "unsupported_token_type"},
	} {
		r := postForm(t, f.base+"oauth2/revoke", tc.form, tc.user, tc.pass)
		if r.status != tc.wantStatus || r.json(t)["error"] != tc.wantError {
			t.Errorf("%s: got %d %s, want %d %s", tc.name, r.status, r.body, tc.wantStatus, tc.wantError)
		}
	}
	if r := get(t, f.base+"oauth2/revoke"); r.status != 405 || r.header.Get("Allow") != "POST" {
		t.Errorf("GET revoke: %d %v", r.status, r.header)
	}
	if r := post(t, f.base+".well-known/jwks.json", "", ""); r.status != 405 {
		t.Errorf("POST jwks: %d", r.status)
	}
	// Garbage and repeated revocations are 200 (RFC 7009 §2.2).
	for _, tok := range []string{"garbage", access, refresh} {
		if r := postForm(t, f.base+"oauth2/revoke", url.Values{"token": {tok}}, "", ""); r.status != 200 {
			t.Errorf("revoke %q: %d %s", tok[:4], r.status, r.body)
		}
	}
}
