package validator

import (
	"net/http"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
	"github.com/keyward/keyward/internal/keys"
	"github.com/keyward/keyward/internal/testsupport"
	"github.com/keyward/keyward/internal/token"
)

// externalKey is an ES256 key of the external issuer.
func externalKey(t *testing.T) (keys.StoredKey, *token.Signer) {
	t.Helper()
	raw, err := keys.Generate(keywardv1.AlgorithmES256)
	if err != nil {
		t.Fatal(err)
	}
	stored, err := keys.NewStoredKey(keys.Lifecycle{Algorithm: keywardv1.AlgorithmES256}, raw)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := token.NewSigner(&stored)
	if err != nil {
		t.Fatal(err)
	}
	return stored, signer
}

func externalPolicy(issuerURL string) *keywardv1.AccessPolicy {
	return &keywardv1.AccessPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: "ext", Generation: 1},
		Spec: keywardv1.AccessPolicySpec{
			Hosts: []string{"ext.example.test"},
			Rules: []keywardv1.AccessRule{{Paths: []string{"/"}, Issuers: []keywardv1.IssuerReference{{IssuerURL: issuerURL}}, Audiences: []string{"api"}}},
		},
	}
}

func waitFetched(t *testing.T, f *fixture) {
	t.Helper()
	for _, e := range f.v.store.externalIssuers() {
		e.mu.Lock()
		done := e.inflight
		e.mu.Unlock()
		if done != nil {
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("the JWKS fetch did not end")
			}
		}
	}
}

func TestExternalIssuer(t *testing.T) {
	srv := testsupport.NewOIDCServer(t)
	k1, s1 := externalKey(t)
	srv.Set(func(s *testsupport.OIDCState) { s.JWKS = (&keysSet{k1}).jwks(t) })
	f := newFixture(t)
	f.v.store.setPolicy(externalPolicy(srv.URL))
	waitFetched(t, f)

	check := func(s *token.Signer, typ string, mod func(*token.Claims)) Decision {
		t.Helper()
		tok := f.tokenWith(s, typ, func(c *token.Claims) {
			c.Issuer = srv.URL
			if mod != nil {
				mod(c)
			}
		})
		r := request("/api", tok)
		r.Host = "ext.example.test"
		return f.v.Check(t.Context(), r)
	}
	if d := check(s1, token.TypeAccess, nil); !d.Allowed() {
		t.Fatalf("a token of the external issuer is denied: %s", d.Reason)
	}
	if d := check(s1, token.TypeRefresh, nil); d.Status != 401 || d.Reason != Reason(token.ReasonWrongType) {
		t.Errorf("a refresh token of the external issuer: %d %s, want 401 wrong_type", d.Status, d.Reason)
	}
	if d := check(s1, token.TypeAccess, func(c *token.Claims) { c.Issuer = srv.URL + "/other" }); d.Status != 401 || d.Reason != ReasonUnknownIssuer {
		t.Errorf("another iss: %d %s, want 401 unknown_issuer", d.Status, d.Reason)
	}

	// A new key: the unknown kid triggers a refetch (the last attempt is older than the
	// minimum interval), then the token passes.
	k2, s2 := externalKey(t)
	srv.Set(func(s *testsupport.OIDCState) { s.JWKS = (&keysSet{k1, k2}).jwks(t) })
	if d := check(s2, token.TypeAccess, nil); d.Allowed() {
		t.Fatal("a new key was used before any refetch was allowed")
	}
	f.clock.SetTime(f.clock.Now().Add(time.Minute))
	if d := check(s2, token.TypeAccess, nil); !d.Allowed() {
		t.Fatalf("a token of a new key is denied after the refetch: %s", d.Reason)
	}
	// Unknown kids do not refetch more often than the minimum interval.
	var calls int
	srv.Set(func(s *testsupport.OIDCState) { calls = s.JWKSCalls })
	_, s3 := externalKey(t)
	for range 5 {
		if d := check(s3, token.TypeAccess, nil); d.Allowed() {
			t.Fatal("a token of an unpublished key is allowed")
		}
	}
	srv.Set(func(s *testsupport.OIDCState) {
		if s.JWKSCalls > calls+1 {
			t.Errorf("%d JWKS fetches for 5 unknown kids within the interval, want at most 1", s.JWKSCalls-calls)
		}
	})

	// The issuer fails: the last known good keys still verify.
	srv.Set(func(s *testsupport.OIDCState) { s.Fail = true })
	f.clock.SetTime(f.clock.Now().Add(time.Minute))
	for _, e := range f.v.store.externalIssuers() {
		<-e.refresh(true)
	}
	if d := check(s1, token.TypeAccess, nil); !d.Allowed() {
		t.Errorf("a failed refetch dropped the last known good keys: %s", d.Reason)
	}
}

func TestExternalIssuerFailsClosed(t *testing.T) {
	cases := []struct {
		name  string
		setup func(s *testsupport.OIDCState)
	}{
		{"an issuer whose JWKS was never fetched verifies nothing", func(s *testsupport.OIDCState) { s.Fail = true }},
		{"a discovery document naming another issuer is refused", func(s *testsupport.OIDCState) { s.Issuer = "https://evil.example" }},
		{"a JWKS that is not strict JSON is refused", func(s *testsupport.OIDCState) { s.JWKS = []byte(`{"keys":[],"keys":[]}`) }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			srv := testsupport.NewOIDCServer(t)
			k1, s1 := externalKey(t)
			srv.Set(func(s *testsupport.OIDCState) { s.JWKS = (&keysSet{k1}).jwks(t); c.setup(s) })
			f := newFixture(t)
			f.v.store.setPolicy(externalPolicy(srv.URL))
			waitFetched(t, f)
			tok := f.tokenWith(s1, token.TypeAccess, func(c *token.Claims) { c.Issuer = srv.URL })
			r := request("/api", tok)
			r.Host = "ext.example.test"
			if d := f.v.Check(t.Context(), r); d.Status != 401 || d.Reason != Reason(token.ReasonUnknownKID) {
				t.Fatalf("decision = %d %s, want 401 unknown_kid", d.Status, d.Reason)
			}
		})
	}
}

func TestExternalIssuerRequiresHTTPSOutsideLoopback(t *testing.T) {
	e := &externalIssuer{spec: &externalSpec{issuerURL: "http://login.example.test", jwksURL: "http://login.example.test/keys"}, client: http.DefaultClient}
	if err := e.fetch(t.Context()); err == nil || err.Error() != "cannot read JWKS: URL must be https (http only for loopback addresses)" {
		t.Fatalf("fetch = %v", err)
	}
}
