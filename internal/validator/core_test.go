package validator

import (
	"context"
	"encoding/base64"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
	"github.com/keyward/keyward/internal/token"
)

func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

// resign replaces a token's header (keeping payload and signature).
func withHeader(tok, header string) string {
	parts := strings.Split(tok, ".")
	return b64(header) + "." + parts[1] + "." + parts[2]
}

func headerValue(d Decision, name string) (string, bool) {
	for _, h := range d.Headers {
		if h.Name == name {
			return h.Value, true
		}
	}
	return "", false
}

func TestCheck(t *testing.T) {
	type tc struct {
		name       string
		setup      func(f *fixture)
		req        func(f *fixture) Request
		wantStatus int
		wantReason Reason
		wantHdrs   map[string]string
	}
	get := func(path string, tok func(f *fixture) string) func(f *fixture) Request {
		return func(f *fixture) Request {
			raw := ""
			if tok != nil {
				raw = tok(f)
			}
			return request(path, raw)
		}
	}
	valid := func(f *fixture) string { return f.token(nil) }
	admin := func(f *fixture) string { return f.token(func(c *token.Claims) { c.Groups = []string{"admin"} }) }
	cases := []tc{
		{name: "a request without a token to a protected path is denied with 401", req: get("/", nil),
			wantStatus: 401, wantReason: ReasonMissingToken},
		{name: "a valid token is allowed with identity and mapped headers", req: get("/api/items?x=1", valid),
			wantStatus: 200, wantReason: ReasonAllowed, wantHdrs: map[string]string{
				HeaderUser: "alice", HeaderEmail: "alice@example.test", HeaderGroups: "dev,ops", "X-User": "alice", "X-Groups": "dev,ops"}},
		{name: "a public path without a token is allowed", req: get("/public/index.html", nil), wantStatus: 200, wantReason: ReasonAnonymous},
		{name: "a public path with a bad token is allowed, the token is ignored", req: get("/public/x", func(*fixture) string { return "garbage" }),
			wantStatus: 200, wantReason: ReasonAnonymous},
		{name: "the admin path without the admin group is forbidden", req: get("/admin/users", valid), wantStatus: 403, wantReason: ReasonWhenFalse},
		{name: "the admin path with the admin group is allowed", req: get("/admin/users", admin), wantStatus: 200, wantReason: ReasonAllowed},
		{name: "the admin prefix also covers the path without its trailing slash", req: get("/admin", valid), wantStatus: 403, wantReason: ReasonWhenFalse},
		{name: "the admin path without groups at all is forbidden", req: get("/admin/", func(f *fixture) string {
			return f.token(func(c *token.Claims) { c.Groups = nil })
		}), wantStatus: 403, wantReason: ReasonWhenFalse},
		{name: "dot segments cannot climb from the public path to the admin path", req: get("/public/../admin/", valid), wantStatus: 403, wantReason: ReasonWhenFalse},
		{name: "percent-encoded dot segments cannot climb either", req: get("/public/%2e%2e/admin/", nil), wantStatus: 401, wantReason: ReasonMissingToken},
		{name: "an encoded slash is decoded before matching", req: get("/public%2f..%2fadmin/", nil), wantStatus: 401, wantReason: ReasonMissingToken},
		{name: "repeated slashes are merged before matching", req: get("//public//x", nil), wantStatus: 200, wantReason: ReasonAnonymous},
		{name: "a double-encoded path is refused", req: get("/public/%252e%252e/admin/", nil), wantStatus: 403, wantReason: ReasonBadPath},
		{name: "a path climbing above the root is refused", req: get("/../admin/", nil), wantStatus: 403, wantReason: ReasonBadPath},
		{name: "a path with a NUL byte is refused", req: get("/public/%00", nil), wantStatus: 403, wantReason: ReasonBadPath},
		{name: "a relative path is refused", req: get("public/", nil), wantStatus: 403, wantReason: ReasonBadPath},
		{name: "a refresh token is not an access token", req: get("/", func(f *fixture) string {
			return f.tokenWith(f.signer, token.TypeRefresh, nil)
		}), wantStatus: 401, wantReason: Reason(token.ReasonWrongType)},
		{name: "an access-typed token with token_type refresh is refused", req: get("/", func(f *fixture) string {
			return f.token(func(c *token.Claims) { c.Extra = nil })
		}), setup: nil, wantStatus: 200, wantReason: ReasonAllowed},
		{name: "an expired token is refused", req: get("/", func(f *fixture) string {
			return f.token(func(c *token.Claims) { c.ExpiresAt = t0.Add(-time.Minute) })
		}), wantStatus: 401, wantReason: Reason(token.ReasonExpired)},
		{name: "a token expired within the issuer's leeway is allowed", req: get("/", func(f *fixture) string {
			return f.token(func(c *token.Claims) { c.ExpiresAt = t0.Add(-20 * time.Second) })
		}), wantStatus: 200, wantReason: ReasonAllowed},
		{name: "a token living longer than the issuer's access-token lifetime (5m) is refused", req: get("/", func(f *fixture) string {
			return f.token(func(c *token.Claims) { c.ExpiresAt = t0.Add(5*time.Minute + 31*time.Second) })
		}), wantStatus: 401, wantReason: Reason(token.ReasonLifetime)},
		{name: "a token whose exp is the lifetime plus the leeway away is allowed", req: get("/", func(f *fixture) string {
			return f.token(func(c *token.Claims) { c.ExpiresAt = t0.Add(5*time.Minute + 30*time.Second) })
		}), wantStatus: 200, wantReason: ReasonAllowed},
		{name: "a sub with CR LF is refused (it would inject an identity header)", req: get("/", func(f *fixture) string {
			return f.token(func(c *token.Claims) { c.Subject = "alice\r\nX-Auth-Request-Groups: admin" })
		}), wantStatus: 401, wantReason: Reason(token.ReasonBadClaim)},
		{name: "a token not valid yet is refused", req: get("/", func(f *fixture) string {
			return f.token(func(c *token.Claims) { c.NotBefore = t0.Add(time.Hour) })
		}), wantStatus: 401, wantReason: Reason(token.ReasonNotYetValid)},
		{name: "a token for another audience is refused with 401", req: get("/", func(f *fixture) string {
			return f.token(func(c *token.Claims) { c.Audience = []string{"other"} })
		}), wantStatus: 401, wantReason: ReasonRuleAudience},
		{name: "a token of another issuer is refused", req: get("/", func(f *fixture) string {
			return f.token(func(c *token.Claims) { c.Issuer = "https://evil.example/demo/main" })
		}), wantStatus: 401, wantReason: ReasonUnknownIssuer},
		{name: "a token signed by an unpublished key is refused", setup: func(f *fixture) {}, req: get("/", func(f *fixture) string {
			k := f.addKey("other", keywardv1.AlgorithmES256)
			return f.tokenWith(k.signer, token.TypeAccess, nil)
		}), wantStatus: 401, wantReason: Reason(token.ReasonUnknownKID)},
		{name: "a token with a changed payload is refused", req: get("/", func(f *fixture) string {
			parts := strings.Split(f.token(nil), ".")
			other := strings.Split(f.token(func(c *token.Claims) { c.Subject = "root" }), ".")
			return parts[0] + "." + other[1] + "." + parts[2]
		}), wantStatus: 401, wantReason: Reason(token.ReasonBadSignature)},
		{name: "a token with alg none is refused", req: get("/", func(f *fixture) string {
			return withHeader(f.token(nil), `{"alg":"none","kid":"`+f.signer.KID()+`","typ":"at+jwt"}`)
		}), wantStatus: 401, wantReason: Reason(token.ReasonUnsupportedAlg)},
		{name: "a token whose header alg differs from its key's is refused", req: get("/", func(f *fixture) string {
			return withHeader(f.token(nil), `{"alg":"ES384","kid":"`+f.signer.KID()+`","typ":"at+jwt"}`)
		}), wantStatus: 401, wantReason: Reason(token.ReasonAlgMismatch)},
		{name: "a token carrying its own key (jwk header) is refused", req: get("/", func(f *fixture) string {
			return withHeader(f.token(nil), `{"alg":"ES256","kid":"`+f.signer.KID()+`","typ":"at+jwt","jwk":{}}`)
		}), wantStatus: 401, wantReason: Reason(token.ReasonBadHeader)},
		{name: "a header with a duplicate member is refused", req: get("/", func(f *fixture) string {
			return withHeader(f.token(nil), `{"alg":"ES256","kid":"`+f.signer.KID()+`","typ":"at+jwt","typ":"at+jwt"}`)
		}), wantStatus: 401, wantReason: Reason(token.ReasonMalformed)},
		{name: "a JSON-serialized JWS is refused", req: get("/", func(*fixture) string { return `{"payload":"e30","signatures":[]}` }),
			wantStatus: 401, wantReason: ReasonMultipleAuthorization},
		{name: "a JWE (five segments) is refused", req: get("/", func(*fixture) string { return "a.b.c.d.e" }),
			wantStatus: 401, wantReason: Reason(token.ReasonMalformed)},
		{name: "a token with padding is refused", req: get("/", func(f *fixture) string { return f.token(nil) + "=" }),
			wantStatus: 401, wantReason: Reason(token.ReasonMalformed)},
		{name: "an oversized token is refused", req: get("/", func(f *fixture) string {
			return f.token(func(c *token.Claims) { c.Extra = map[string]any{"pad": strings.Repeat("x", 9000)} })
		}), wantStatus: 401, wantReason: Reason(token.ReasonOversize)},
		{name: "two Authorization headers are refused", req: func(f *fixture) Request {
			r := request("/", f.token(nil))
			r.Authorization = append(r.Authorization, "Bearer "+f.token(nil))
			return r
		}, wantStatus: 401, wantReason: ReasonMultipleAuthorization},
		{name: "two tokens merged in one header are refused", req: func(f *fixture) Request {
			r := request("/", "")
			r.Authorization = []string{"Bearer " + f.token(nil) + ",Bearer " + f.token(nil)}
			return r
		}, wantStatus: 401, wantReason: ReasonMultipleAuthorization},
		{name: "a Basic authorization is refused", req: func(f *fixture) Request {
			r := request("/", "")
			r.Authorization = []string{"Basic YWxpY2U6cGFzcw=="}
			return r
		}, wantStatus: 401, wantReason: ReasonBadScheme},
		{name: "the Bearer scheme is case-insensitive", req: func(f *fixture) Request {
			r := request("/", "")
			r.Authorization = []string{"bearer " + f.token(nil)}
			return r
		}, wantStatus: 200, wantReason: ReasonAllowed},
		{name: "the host is matched without port and case", req: func(f *fixture) Request {
			r := request("/", f.token(nil))
			r.Host = "App.Example.Test:8443"
			return r
		}, wantStatus: 200, wantReason: ReasonAllowed},
		{name: "a host no policy names is denied", req: func(f *fixture) Request {
			r := request("/", f.token(nil))
			r.Host = "other.example.test"
			return r
		}, wantStatus: 403, wantReason: ReasonNoPolicy},
		{name: "a host no policy names is allowed with allow-unmatched", setup: func(f *fixture) { f.v.allowUnmatched = true }, req: func(f *fixture) Request {
			r := request("/", "")
			r.Host = "other.example.test"
			return r
		}, wantStatus: 200, wantReason: ReasonUnmatchedAllowed},
		{name: "a path no rule of a covered host matches is denied even with allow-unmatched", setup: func(f *fixture) {
			f.v.allowUnmatched = true
			p := samplePolicy()
			p.Generation = 2
			p.Spec.Rules = p.Spec.Rules[:2]
			f.v.store.setPolicy(p)
		}, req: get("/other", nil), wantStatus: 403, wantReason: ReasonNoRule},
		{name: "a request without method is denied", req: func(f *fixture) Request {
			r := request("/public/", "")
			r.Method = ""
			return r
		}, wantStatus: 403, wantReason: ReasonMissingOriginal},
		{name: "a request the front end found conflicting is denied", req: func(f *fixture) Request {
			r := request("/public/", "")
			r.Invalid = ReasonConflicting
			return r
		}, wantStatus: 403, wantReason: ReasonConflicting},
		{name: "a revoked session's token is refused", setup: func(f *fixture) { f.v.store.setSessionRevoked(testNS, "session-1", true) },
			req: get("/", valid), wantStatus: 401, wantReason: ReasonSessionRevoked},
		{name: "a session of the same name in another namespace does not revoke", setup: func(f *fixture) { f.v.store.setSessionRevoked("other", "session-1", true) },
			req: get("/", valid), wantStatus: 200, wantReason: ReasonAllowed},
		{name: "an HS token is refused when HS keys are not allowed", setup: func(f *fixture) {
			f.addKey("hs", keywardv1.AlgorithmHS256)
			f.useSigningKey("hs")
		}, req: get("/", func(f *fixture) string {
			return f.tokenWith(f.keys[keywardv1.AlgorithmHS256].signer, token.TypeAccess, nil)
		}),
			wantStatus: 401, wantReason: ReasonHSKeysDisabled},
		{name: "an HS token is allowed when HS keys are allowed", setup: func(f *fixture) {
			f.v.allowHS = true
			f.addKey("hs", keywardv1.AlgorithmHS256)
			f.useSigningKey("hs")
		}, req: get("/", func(f *fixture) string {
			return f.tokenWith(f.keys[keywardv1.AlgorithmHS256].signer, token.TypeAccess, nil)
		}),
			wantStatus: 200, wantReason: ReasonAllowed},
		{name: "a rule whose expression does not compile denies what it matches", setup: func(f *fixture) {
			p := samplePolicy()
			p.Generation = 2
			p.Spec.Rules[1].When = "claims.groups.contains("
			f.v.store.setPolicy(p)
		}, req: get("/admin/", admin), wantStatus: 403, wantReason: ReasonInvalidPolicy},
		{name: "a validator whose state is not synced denies everything", setup: func(f *fixture) { f.v.ready.Store(false) },
			req: get("/public/", nil), wantStatus: 401, wantReason: ReasonNotReady},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t)
			if c.setup != nil {
				c.setup(f)
			}
			req := c.req(f)
			d := f.v.Check(t.Context(), req)
			if d.Status != c.wantStatus || d.Reason != c.wantReason {
				t.Fatalf("decision = %d %s, want %d %s", d.Status, d.Reason, c.wantStatus, c.wantReason)
			}
			for name, want := range c.wantHdrs {
				if got, _ := headerValue(d, name); got != want {
					t.Errorf("header %s = %q, want %q", name, got, want)
				}
			}
			if !d.Allowed() && len(d.Headers) > 0 {
				t.Errorf("a deny carries headers: %v", d.Headers)
			}
			for _, h := range identityHeaders {
				if !slices.Contains(d.Remove, h) {
					t.Errorf("Remove lacks %s: %v", h, d.Remove)
				}
			}
			// The same request again (from the cache, when allowed) decides the same.
			if again := f.v.Check(t.Context(), req); again.Status != d.Status || again.Reason != d.Reason {
				t.Errorf("second decision = %d %s, want %d %s", again.Status, again.Reason, d.Status, d.Reason)
			}
		})
	}
}

func TestCheckRemovesEveryMappedHeaderOfTheHost(t *testing.T) {
	f := newFixture(t)
	d := f.v.Check(t.Context(), request("/public/", ""))
	for _, h := range []string{HeaderUser, HeaderEmail, HeaderGroups, "X-User", "X-Groups"} {
		if !slices.Contains(d.Remove, h) {
			t.Errorf("an anonymous request keeps inbound %s: Remove = %v", h, d.Remove)
		}
	}
}

func TestCheckRemovesTheMappedHeadersOfEveryPatternCoveringTheHost(t *testing.T) {
	f := newFixture(t)
	f.v.store.setPolicy(&keywardv1.AccessPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: "wild", Generation: 1},
		Spec: keywardv1.AccessPolicySpec{
			Hosts: []string{"*.example.test"},
			Rules: []keywardv1.AccessRule{{Paths: []string{"/"}, Issuers: []keywardv1.IssuerReference{{Name: "main"}},
				Headers: map[string]keywardv1.ClaimName{"X-Tenant": "tenant"}}},
		},
	})
	d := f.v.Check(t.Context(), request("/public/", ""))
	for _, h := range []string{"X-User", "X-Groups", "X-Tenant"} {
		if !slices.Contains(d.Remove, h) {
			t.Errorf("Remove lacks %s: %v", h, d.Remove)
		}
	}
	if other := f.v.Check(t.Context(), Request{Protocol: ProtocolHTTP, Host: "other.example.test", Path: "/", Method: "GET"}); slices.Contains(other.Remove, "X-User") {
		t.Errorf("a host of the wildcard only removes the exact host's headers: %v", other.Remove)
	}
}

func TestCheckCancelledContextDenies(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	for _, path := range []string{"/public/", "/"} {
		if d := f.v.Check(ctx, request(path, f.token(nil))); d.Status != http.StatusUnauthorized || d.Reason != ReasonCanceled {
			t.Errorf("%s: decision = %d %s, want 401 %s", path, d.Status, d.Reason, ReasonCanceled)
		}
	}
}

func TestCheckUsesTheCacheUntilExpiry(t *testing.T) {
	f := newFixture(t)
	tok := f.token(func(c *token.Claims) { c.ExpiresAt = t0.Add(time.Minute) })
	if d := f.v.Check(t.Context(), request("/", tok)); !d.Allowed() {
		t.Fatalf("first check denied: %s", d.Reason)
	}
	if n := f.v.cache.len(); n != 1 {
		t.Fatalf("cache holds %d tokens, want 1", n)
	}
	// Within exp + leeway (30s) the cached token is allowed; at exp + leeway it is not.
	f.clock.SetTime(t0.Add(time.Minute + 29*time.Second))
	if d := f.v.Check(t.Context(), request("/", tok)); !d.Allowed() {
		t.Fatalf("check before exp+leeway denied: %s", d.Reason)
	}
	f.clock.SetTime(t0.Add(time.Minute + 30*time.Second))
	if d := f.v.Check(t.Context(), request("/", tok)); d.Status != 401 || d.Reason != Reason(token.ReasonExpired) {
		t.Fatalf("check at exp+leeway = %d %s, want 401 expired", d.Status, d.Reason)
	}
	if n := f.v.cache.len(); n != 0 {
		t.Errorf("cache still holds %d tokens after expiry", n)
	}
}

func TestRevokingASessionEvictsAndDeniesCachedTokens(t *testing.T) {
	f := newFixture(t)
	tok := f.token(nil)
	other := f.token(func(c *token.Claims) { c.SessionID = "session-2" })
	for _, raw := range []string{tok, other} {
		if d := f.v.Check(t.Context(), request("/", raw)); !d.Allowed() {
			t.Fatalf("check denied: %s", d.Reason)
		}
	}
	f.v.store.setSessionRevoked(testNS, "session-1", true)
	if n := f.v.cache.len(); n != 1 {
		t.Errorf("cache holds %d tokens after revoking one session, want 1", n)
	}
	if d := f.v.Check(t.Context(), request("/", tok)); d.Status != 401 || d.Reason != ReasonSessionRevoked {
		t.Errorf("revoked session: %d %s, want 401 %s", d.Status, d.Reason, ReasonSessionRevoked)
	}
	if d := f.v.Check(t.Context(), request("/", other)); !d.Allowed() {
		t.Errorf("another session's token denied: %s", d.Reason)
	}
}

func TestRevokingAKeyEvictsAndDeniesCachedTokens(t *testing.T) {
	f := newFixture(t)
	tok := f.token(nil)
	if d := f.v.Check(t.Context(), request("/", tok)); !d.Allowed() {
		t.Fatalf("check denied: %s", d.Reason)
	}
	// A rotation adds a key: cached tokens of the old key stay cached.
	old := f.keys[keywardv1.AlgorithmES256].stored
	next := f.addKey("next", keywardv1.AlgorithmES256).stored
	both := &keysSet{old, next}
	if err := f.v.store.setJWKS(testNS, "main", both.jwks(t)); err != nil {
		t.Fatal(err)
	}
	if n := f.v.cache.len(); n != 1 {
		t.Fatalf("adding a key evicted cached tokens: %d left", n)
	}
	// Revocation removes the old kid from the JWKS.
	if err := f.v.store.setJWKS(testNS, "main", (&keysSet{next}).jwks(t)); err != nil {
		t.Fatal(err)
	}
	if n := f.v.cache.len(); n != 0 {
		t.Errorf("cache holds %d tokens after the key was withdrawn", n)
	}
	if d := f.v.Check(t.Context(), request("/", tok)); d.Status != 401 || d.Reason != Reason(token.ReasonUnknownKID) {
		t.Errorf("token of a withdrawn key: %d %s, want 401 unknown_kid", d.Status, d.Reason)
	}
}

func TestTokenIssuerWithoutIssuerUsesThePublicURL(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.PublicURL = "https://auth.example.test/" })
	tok := f.token(func(c *token.Claims) { c.Issuer = "https://auth.example.test/demo/main" })
	if d := f.v.Check(t.Context(), request("/", tok)); !d.Allowed() {
		t.Fatalf("denied: %s", d.Reason)
	}
	f.v.store.setTokenIssuer(&keywardv1.TokenIssuer{
		ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: "main"},
		Spec:       keywardv1.TokenIssuerSpec{Issuer: "https://login.example.test", SigningKeyRef: keywardv1.LocalObjectReference{Name: "main"}},
	})
	if d := f.v.Check(t.Context(), request("/", tok)); d.Status != 401 || d.Reason != ReasonUnknownIssuer {
		t.Errorf("after spec.issuer changed: %d %s, want 401 %s", d.Status, d.Reason, ReasonUnknownIssuer)
	}
}

func TestHostsAndMethods(t *testing.T) {
	f := newFixture(t)
	f.v.store.setPolicy(&keywardv1.AccessPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: "wild", Generation: 1},
		Spec: keywardv1.AccessPolicySpec{
			Hosts: []string{"*.wild.test"},
			Rules: []keywardv1.AccessRule{
				{Paths: []string{"/items"}, Methods: []keywardv1.HTTPMethod{"GET", "HEAD"}, Anonymous: true},
				{Paths: []string{"/items"}, Issuers: []keywardv1.IssuerReference{{Name: "main"}}},
			},
		},
	})
	f.v.store.setPolicy(&keywardv1.AccessPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: "any", Generation: 1},
		Spec: keywardv1.AccessPolicySpec{
			Hosts: []string{"*"},
			Rules: []keywardv1.AccessRule{{Paths: []string{"/health"}, Anonymous: true}},
		},
	})
	cases := []struct {
		name, host, method, path string
		want                     int
		reason                   Reason
	}{
		{"a wildcard covers one label", "a.wild.test", "GET", "/items/1", 200, ReasonAnonymous},
		{"a method-specific rule wins for its method", "a.wild.test", "HEAD", "/items", 200, ReasonAnonymous},
		{"another method falls to the rule without methods", "a.wild.test", "POST", "/items", 401, ReasonMissingToken},
		{"a wildcard does not cover two labels", "a.b.wild.test", "GET", "/items", 403, ReasonNoRule},
		{"a wildcard does not cover the bare domain", "wild.test", "GET", "/items", 403, ReasonNoRule},
		{"a path the wildcard host lacks falls to the any-host policy", "a.wild.test", "GET", "/health", 200, ReasonAnonymous},
		{"an exact host's rules come before the any-host policy", testHost, "GET", "/health", 401, ReasonMissingToken},
		{"the any-host policy covers unknown hosts", "x.example.test", "GET", "/health", 200, ReasonAnonymous},
		{"the any-host policy denies what it has no rule for", "x.example.test", "GET", "/other", 403, ReasonNoRule},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := f.v.Check(t.Context(), Request{Protocol: ProtocolHTTP, Host: c.host, Method: c.method, Path: c.path})
			if d.Status != c.want || d.Reason != c.reason {
				t.Fatalf("decision = %d %s, want %d %s", d.Status, d.Reason, c.want, c.reason)
			}
		})
	}
}

func TestCustomClaimsInExpressionsAndHeaders(t *testing.T) {
	f := newFixture(t)
	p := samplePolicy()
	p.Generation = 2
	p.Spec.Rules[2].When = "claims.tenant == 'acme' && claims.level >= 2 && claims.scope.split(' ').exists(s, s == 'write')"
	p.Spec.Rules[2].Headers = map[string]keywardv1.ClaimName{"X-Tenant": "tenant", "X-Level": "level", "X-Roles": "roles", "X-Obj": "obj", "X-Evil": "evil"}
	f.v.store.setPolicy(p)
	tok := f.token(func(c *token.Claims) {
		c.Scope = "read write"
		c.Extra = map[string]any{"tenant": "acme", "level": 3, "roles": []string{"a", "b"}, "obj": map[string]any{"k": "v"}, "evil": "a\r\nX-Injected: 1"}
	})
	d := f.v.Check(t.Context(), request("/", tok))
	if !d.Allowed() {
		t.Fatalf("denied: %s", d.Reason)
	}
	for name, want := range map[string]string{"X-Tenant": "acme", "X-Level": "3", "X-Roles": "a,b"} {
		if got, _ := headerValue(d, name); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	for _, name := range []string{"X-Obj", "X-Evil"} {
		if v, ok := headerValue(d, name); ok {
			t.Errorf("%s is set (%q); objects and values with control characters give no header", name, v)
		}
	}
	low := f.token(func(c *token.Claims) { c.Scope = "read write"; c.Extra = map[string]any{"tenant": "acme", "level": 1} })
	if d := f.v.Check(t.Context(), request("/", low)); d.Status != 403 || d.Reason != ReasonWhenFalse {
		t.Errorf("level 1: %d %s, want 403 %s", d.Status, d.Reason, ReasonWhenFalse)
	}
}

func TestNormalizePath(t *testing.T) {
	cases := []struct{ in, want string }{
		{"/", "/"}, {"/a/b", "/a/b"}, {"/a/b/", "/a/b/"}, {"/a?x=/admin/", "/a"}, {"/a#frag", "/a"},
		{"/a/./b", "/a/b"}, {"/a/../b", "/b"}, {"/a/..", "/"}, {"/a/b/..", "/a/"}, {"/a//b", "/a/b"},
		{"/a/%2e%2e/b", "/b"}, {"/%61dmin", "/admin"}, {"/a/.hidden", "/a/.hidden"}, {"/a/b/.", "/a/b/"},
		{"/a%2Fb", "/a/b"},
	}
	for _, c := range cases {
		if got, ok := normalizePath(c.in); !ok || got != c.want {
			t.Errorf("normalizePath(%q) = %q, %v; want %q", c.in, got, ok, c.want)
		}
	}
	for _, bad := range []string{"", "a", "/..", "/a/../..", "/%zz", "/%2500", "/a%00", "/a\x01", "/%25"} {
		if got, ok := normalizePath(bad); ok {
			t.Errorf("normalizePath(%q) = %q, want a refusal", bad, got)
		}
	}
}
