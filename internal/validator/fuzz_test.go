package validator

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
	"time"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
	"github.com/keyward/keyward/internal/keys"
	"github.com/keyward/keyward/internal/token"
)

// fuzzKey is a fixed ES256 key, so that the fuzzing process and its workers (separate
// processes) share it: a token minted in one verifies in all.
func fuzzKey(tb testing.TB) *ecdsa.PrivateKey {
	seed := sha256.Sum256([]byte("keyward validator fuzz key"))
	k, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), seed[:])
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

// fuzzMinted are the claims of every token the fuzz target's issuer mints, by jti. They are
// fixed (the fixture's clock is fixed too), so every process knows the same set.
func fuzzMinted() map[string]*token.Claims {
	out := map[string]*token.Claims{}
	for i, sub := range []string{"alice", "bob", "carol"} {
		c := &token.Claims{Issuer: testIssuer, Subject: sub, Audience: []string{"api"}, ExpiresAt: t0.Add(5 * time.Minute),
			IssuedAt: t0, ID: fmt.Sprintf("fuzz-%d", i), SessionID: "session-1", TokenType: token.TokenTypeAccess,
			Groups: [][]string{{"dev"}, {"admin"}, nil}[i], Email: sub + "@example.test"}
		out[c.ID] = c
	}
	return out
}

// FuzzCheck fuzzes the whole decision (pre-check, signature, claims, policy) with the token
// and the path as inputs. The oracle: the check never fails internally (a panic is recovered
// as internal_error), and every allow is either an anonymous path of the policy or the
// claims of a token the test issuer minted (the identity headers say so), never anything
// else.
func FuzzCheck(f *testing.F) {
	fx := newFixture(f)
	stored, err := keys.NewStoredKey(keys.Lifecycle{Algorithm: keywardv1.AlgorithmES256, PublishedAt: t0, ActivatesAt: t0, ActivatedAt: &t0}, fuzzKey(f))
	if err != nil {
		f.Fatal(err)
	}
	if err := fx.v.store.setJWKS(testNS, "main", (&keysSet{stored}).jwks(f)); err != nil {
		f.Fatal(err)
	}
	signer, err := token.NewSigner(&stored)
	if err != nil {
		f.Fatal(err)
	}
	minted := fuzzMinted()
	for _, c := range minted {
		tok, err := signer.Sign(token.TypeAccess, c)
		if err != nil {
			f.Fatal(err)
		}
		// The oracle is not vacuous: the minted tokens are allowed.
		if d := fx.v.Check(f.Context(), request("/api/items", tok)); !d.Allowed() || d.JTI != c.ID {
			f.Fatalf("a minted token is not allowed: %d %s", d.Status, d.Reason)
		}
		f.Add(tok, "/api/items")
		f.Add(tok, "/admin/x")
		seg := strings.Split(tok, ".")
		f.Add(seg[0]+"."+seg[1]+".", "/api")
		f.Add(tok+"=", "/")
	}
	b64 := base64.RawURLEncoding.EncodeToString
	f.Add(b64([]byte(`{"alg":"none","kid":"`+stored.KID+`"}`))+"."+b64([]byte(`{"sub":"x"}`))+".", "/api")
	f.Add(b64([]byte(`{"alg":"HS256","kid":"`+stored.KID+`","typ":"at+jwt"}`))+".e30.AAAA", "/api")
	f.Add("", "/public/x")
	f.Add("x", "/public/../api")

	f.Fuzz(func(t *testing.T, tok, path string) {
		req := Request{Protocol: ProtocolHTTP, Host: testHost, Path: path, Method: "GET"}
		if tok != "" {
			req.Authorization = []string{"Bearer " + tok}
		}
		d := fx.v.Check(t.Context(), req)
		if d.Reason == ReasonInternal {
			t.Fatalf("internal error (a recovered panic) for %q on %q", tok, path)
		}
		if !d.Allowed() {
			return
		}
		switch d.Reason {
		case ReasonAnonymous:
			// The sample policy's only anonymous rule is "/public/", which also covers
			// "/public" (AccessRule.paths).
			if p, ok := normalizePath(path); !ok || !prefixMatches("/public/", p) {
				t.Fatalf("anonymous allow for path %q (normalized %q)", path, p)
			}
		case ReasonAllowed:
			c := minted[d.JTI]
			if c == nil {
				t.Fatalf("allowed a token with jti %q, which the issuer never minted: %q", d.JTI, tok)
			}
			want := map[string]string{HeaderUser: c.Subject, HeaderEmail: c.Email, HeaderGroups: strings.Join(c.Groups, ",")}
			for name, v := range want {
				got, _ := headerValue(d, name)
				if got != v {
					t.Fatalf("allowed token %q: %s = %q, the minted token says %q", tok, name, got, v)
				}
			}
		default:
			t.Fatalf("allowed with reason %s", d.Reason)
		}
	})
}
