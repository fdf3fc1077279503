package validator

import (
	"encoding/base64"
	"net/http"
	"testing"
	"time"

	"github.com/go-logr/logr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
	"github.com/keyward/keyward/internal/keys"
	"github.com/keyward/keyward/internal/token"
)

// t0 is the fixed time of the decision-core tests.
var t0 = time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)

const (
	testNS     = "demo"
	testHost   = "app.example.test"
	testIssuer = "http://localhost:8080/demo/main"
)

// fixture is a validator fed directly (no informers), with one TokenIssuer "main" signing
// with SigningKey "main", and the sample AccessPolicy.
type fixture struct {
	t      testing.TB
	v      *Validator
	clock  *clocktesting.FakePassiveClock
	keys   map[keywardv1.Algorithm]*signingKey
	signer *token.Signer
	seq    int
}

type signingKey struct {
	stored keys.StoredKey
	signer *token.Signer
}

func newFixture(t testing.TB, mods ...func(*Options)) *fixture {
	t.Helper()
	clk := clocktesting.NewFakePassiveClock(t0)
	o := Options{Clock: clk}
	for _, m := range mods {
		m(&o)
	}
	f := &fixture{t: t, v: New(o, logr.Discard()), clock: clk, keys: map[keywardv1.Algorithm]*signingKey{}}
	f.signer = f.addKey("main", keywardv1.AlgorithmES256).signer
	f.v.store.setTokenIssuer(&keywardv1.TokenIssuer{
		ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: "main"},
		Spec: keywardv1.TokenIssuerSpec{
			SigningKeyRef: keywardv1.LocalObjectReference{Name: "main"},
			Audiences:     []string{"api"},
			Leeway:        &metav1.Duration{Duration: 30 * time.Second},
		},
	})
	f.v.store.setPolicy(samplePolicy())
	return f
}

// addKey generates a key of the algorithm, stores it as the only key of the SigningKey sk
// (its JWKS, or its key set for HS) and returns it.
func (f *fixture) addKey(sk string, alg keywardv1.Algorithm) *signingKey {
	f.t.Helper()
	raw, err := keys.Generate(alg)
	if err != nil {
		f.t.Fatal(err)
	}
	activated := t0.Add(-time.Hour)
	stored, err := keys.NewStoredKey(keys.Lifecycle{Algorithm: alg, PublishedAt: activated, ActivatesAt: activated, ActivatedAt: &activated}, raw)
	if err != nil {
		f.t.Fatal(err)
	}
	signer, err := token.NewSigner(&stored)
	if err != nil {
		f.t.Fatal(err)
	}
	ks := &keys.KeySet{Keys: []keys.StoredKey{stored}}
	if alg.IsSymmetric() {
		data, err := ks.Marshal()
		if err != nil {
			f.t.Fatal(err)
		}
		if err := f.v.store.setKeySet(testNS, sk, data); err != nil {
			f.t.Fatal(err)
		}
	} else {
		jwks, err := ks.PublicJWKS()
		if err != nil {
			f.t.Fatal(err)
		}
		if err := f.v.store.setJWKS(testNS, sk, jwks); err != nil {
			f.t.Fatal(err)
		}
	}
	k := &signingKey{stored: stored, signer: signer}
	f.keys[alg] = k
	return k
}

// useKey points TokenIssuer main at the SigningKey sk.
func (f *fixture) useSigningKey(sk string) {
	f.v.store.setTokenIssuer(&keywardv1.TokenIssuer{
		ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: "main"},
		Spec: keywardv1.TokenIssuerSpec{
			SigningKeyRef: keywardv1.LocalObjectReference{Name: sk},
			Leeway:        &metav1.Duration{Duration: 30 * time.Second},
		},
	})
}

func samplePolicy() *keywardv1.AccessPolicy {
	return &keywardv1.AccessPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: "app", Generation: 1},
		Spec: keywardv1.AccessPolicySpec{
			Hosts: []string{testHost},
			Rules: []keywardv1.AccessRule{
				{Paths: []string{"/public/"}, Anonymous: true},
				{Paths: []string{"/admin/"}, Issuers: []keywardv1.IssuerReference{{Name: "main"}}, Audiences: []string{"api"},
					When: "'admin' in claims.groups"},
				{Paths: []string{"/"}, Issuers: []keywardv1.IssuerReference{{Name: "main"}}, Audiences: []string{"api"},
					Headers: map[string]keywardv1.ClaimName{"X-User": "sub", "X-Groups": "groups"}},
			},
		},
	}
}

// claims returns valid access-token claims for alice at the fixture's time.
func (f *fixture) claims() *token.Claims {
	f.seq++
	now := f.clock.Now()
	return &token.Claims{
		Issuer:    testIssuer,
		Subject:   "alice",
		Audience:  []string{"api"},
		ExpiresAt: now.Add(5 * time.Minute),
		IssuedAt:  now,
		ID:        "jti-" + time.Duration(f.seq).String(),
		SessionID: "session-1",
		TokenType: token.TokenTypeAccess,
		Groups:    []string{"dev", "ops"},
		Email:     "alice@example.test",
	}
}

// token signs an access token, after mod edits the claims.
func (f *fixture) token(mod func(*token.Claims)) string {
	return f.tokenWith(f.signer, token.TypeAccess, mod)
}

func (f *fixture) tokenWith(s *token.Signer, typ string, mod func(*token.Claims)) string {
	f.t.Helper()
	c := f.claims()
	if typ == token.TypeRefresh {
		c.TokenType = token.TokenTypeRefresh
	}
	if mod != nil {
		mod(c)
	}
	raw, err := s.Sign(typ, c)
	if err != nil {
		f.t.Fatal(err)
	}
	return raw
}

// request is a GET to the sample host with the token, if any, as a Bearer header.
func request(path, tok string) Request {
	r := Request{Protocol: ProtocolHTTP, Host: testHost, Path: path, Method: http.MethodGet}
	if tok != "" {
		r.Authorization = []string{"Bearer " + tok}
	}
	return r
}

// keysSet builds a JWKS of several stored keys.
type keysSet []keys.StoredKey

func (k *keysSet) jwks(t testing.TB) []byte {
	t.Helper()
	data, err := (&keys.KeySet{Keys: *k}).PublicJWKS()
	if err != nil {
		t.Fatal(err)
	}
	return data
}

type tokenClaims = token.Claims

func decodeB64(s string) ([]byte, error) { return base64.RawURLEncoding.DecodeString(s) }
