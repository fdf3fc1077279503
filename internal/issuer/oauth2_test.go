package issuer_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/big"
	"net/url"
	"os/exec"
	"strings"
	"testing"
)

func TestOAuth2TokenEndpoint(t *testing.T) {
	f := newFixture(t, defaultUsers(t, testCost), nil)
	tokenURL := f.base + "oauth2/token"
	checkOK := func(t *testing.T, r response, wantRefresh bool) map[string]any {
		t.Helper()
		if r.status != 200 || r.header.Get("Cache-Control") != "no-store" || r.header.Get("Content-Type") != "application/json" {
			t.Fatalf("token response: %d %v %s", r.status, r.header, r.body)
		}
		m := r.json(t)
		if m["token_type"] != "Bearer" || m["access_token"] == nil || fmt.Sprint(m["expires_in"]) != "300" || (m["refresh_token"] != nil) != wantRefresh {
			t.Errorf("token response body %s", r.body)
		}
		return m
	}
	t.Run("password grant without a client", func(t *testing.T) {
		m := checkOK(t, postForm(t, tokenURL, url.Values{"grant_type": {"password"}, "username": {"alice"}, "password": {"wonderland"}}, "", ""), true)
		r := postForm(t, tokenURL, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {m["refresh_token"].(string)}}, "", "")
		checkOK(t, r, true)
	})
	t.Run("password grant with a Basic client and scope", func(t *testing.T) {
		m := checkOK(t, postForm(t, tokenURL, url.Values{"grant_type": {"password"}, "username": {"alice"}, "password": {"wonderland"}, "scope": {"read"}}, "svc", clientSecret), true)
		c := claimsOf(t, m["access_token"].(string))
		if c["client_id"] != "svc" || c["scope"] != "read" || m["scope"] != "read" {
			t.Errorf("claims %v body %v", c, m)
		}
		// The session's refresh token is the client's: another client or none is refused.
		rt := m["refresh_token"].(string)
		if r := postForm(t, tokenURL, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}}, "", ""); r.status != 400 || r.json(t)["error"] != "invalid_grant" {
			t.Errorf("refresh without the client: %d %s", r.status, r.body)
		}
		checkOK(t, postForm(t, tokenURL, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}, "client_id": {"svc"}, "client_secret": {clientSecret}}, "", ""), true)
	})
	t.Run("client_credentials", func(t *testing.T) {
		for _, viaBasic := range []bool{true, false} {
			form := url.Values{"grant_type": {"client_credentials"}}
			user, pass := "svc", clientSecret
			if !viaBasic {
				form.Set("client_id", "svc")
				form.Set("client_secret", clientSecret)
				user, pass = "", ""
			}
			m := checkOK(t, postForm(t, tokenURL, form, user, pass), false)
			c := claimsOf(t, m["access_token"].(string))
			if c["sub"] != "svc" || c["client_id"] != "svc" || c["scope"] != "read write" || fmt.Sprint(c["aud"]) != "[api]" || c["sid"] != nil {
				t.Errorf("client_credentials claims %v", c)
			}
		}
	})
	errorCases := []struct {
		name       string
		form       url.Values
		user, pass string
		ct         string
		wantStatus int
		wantError  string
	}{
		{"wrong client secret", url.Values{"grant_type": {"client_credentials"}}, "svc", "wrong", "", 401, "invalid_client"},
		{"unknown client", url.Values{"grant_type": {"client_credentials"}}, "nobody", "wrong", "", 401, "invalid_client"},
		{"client_credentials without a client", url.Values{"grant_type": {"client_credentials"}}, "", "", "", 401, "invalid_client"},
		{"scope beyond the client's", url.Values{"grant_type": {"client_credentials"}, "scope": {"admin"}}, "svc", clientSecret, "", 400, "invalid_scope"},
		{"wrong password", url.Values{"grant_type": {"password"}, "username": {"alice"}, "password": {"x"}}, "", "", "", 400, "invalid_grant"},
		{"missing password", url.Values{"grant_type": {"password"}, "username": {"alice"}}, "", "", "", 400, "invalid_request"},
		{"bad refresh token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {"x"}}, "", "", "", 400, "invalid_grant"},
		{"missing grant_type", url.Values{}, "", "", "", 400, "invalid_request"},
		{"unsupported grant_type", url.Values{"grant_type": {"authorization_code"}}, "", "", "", 400, "unsupported_grant_type"},
		{"JSON body", url.Values{}, "", "", "application/json", 400, "invalid_request"},
	}
	for _, tc := range errorCases {
		t.Run(tc.name, func(t *testing.T) {
			var r response
			if tc.ct != "" {
				r = post(t, tokenURL, tc.ct, `{"grant_type":"password"}`)
			} else {
				r = postForm(t, tokenURL, tc.form, tc.user, tc.pass)
			}
			if r.status != tc.wantStatus || r.json(t)["error"] != tc.wantError || r.header.Get("Cache-Control") != "no-store" {
				t.Errorf("got %d %s %v, want %d %s", r.status, r.body, r.header, tc.wantStatus, tc.wantError)
			}
			if (r.status == 401) != (r.header.Get("WWW-Authenticate") != "") {
				t.Errorf("WWW-Authenticate %q on %d", r.header.Get("WWW-Authenticate"), r.status)
			}
		})
	}
	t.Run("a repeated parameter is refused", func(t *testing.T) {
		r := post(t, tokenURL, "application/x-www-form-urlencoded", "grant_type=password&grant_type=client_credentials")
		if r.status != 400 || r.json(t)["error"] != "invalid_request" {
			t.Errorf("got %d %s", r.status, r.body)
		}
	})
}

func TestOAuth2Introspection(t *testing.T) {
	f := newFixture(t, defaultUsers(t, testCost), nil)
	access, refresh := f.loginOK(t, "alice", "wonderland")
	u := f.base + "oauth2/introspect"
	if r := postForm(t, u, url.Values{"token": {access}}, "", ""); r.status != 401 || r.json(t)["error"] != "invalid_client" {
		t.Errorf("introspection without a client: %d %s", r.status, r.body)
	}
	if r := postForm(t, u, url.Values{"token": {access}}, "svc", "bad"); r.status != 401 {
		t.Errorf("introspection with a bad secret: %d %s", r.status, r.body)
	}
	if r := postForm(t, u, url.Values{}, "svc", clientSecret); r.status != 400 || r.json(t)["error"] != "invalid_request" {
		t.Errorf("introspection without token: %d %s", r.status, r.body)
	}
	got := f.introspect(t, access)
	for k, want := range map[string]any{"active": true, "token_type": "access_token", "sub": "alice", "username": "alice", "iss": f.iss} {
		if got[k] != want {
			t.Errorf("introspection %s = %v, want %v (%v)", k, got[k], want, got)
		}
	}
	if got := f.introspect(t, "not-a-token"); len(got) != 1 || got["active"] != false {
		t.Errorf("garbage: %v", got)
	}
	// A superseded refresh token is inactive once the grace period is over (2s here).
	r := f.refresh(t, refresh)
	if r.status != 200 {
		t.Fatal(r.status)
	}
	if got := f.introspect(t, r.str(t, "refresh")); got["active"] != true {
		t.Errorf("current refresh token: %v", got)
	}
	eventually(t, 5e9, func() error {
		if got := f.introspect(t, refresh); got["active"] != false {
			return fmt.Errorf("superseded refresh token: %v", got)
		}
		return nil
	})
}

// discoveryAndJWKS fetches the discovery document and the JWKS it points at.
func discoveryAndJWKS(t *testing.T, f *fixture) (map[string]any, response) {
	t.Helper()
	d := get(t, f.base+".well-known/openid-configuration")
	if d.status != 200 {
		t.Fatalf("discovery: %d %s", d.status, d.body)
	}
	doc := d.json(t)
	if doc["issuer"] != f.iss || doc["token_endpoint"] != f.iss+"/oauth2/token" || doc["jwks_uri"] != f.iss+"/.well-known/jwks.json" {
		t.Errorf("discovery %v", doc)
	}
	if d2 := get(t, f.base+".well-known/oauth-authorization-server"); d2.status != 200 || d2.json(t)["issuer"] != f.iss {
		t.Errorf("RFC 8414 metadata: %d %s", d2.status, d2.body)
	}
	// jwks_uri is under the public URL; this test reaches the same path on the local server.
	jwksPath := strings.TrimPrefix(doc["jwks_uri"].(string), "http://keyward.test/")
	j := get(t, baseURL+"/"+jwksPath)
	if j.status != 200 {
		t.Fatalf("jwks: %d %s", j.status, j.body)
	}
	return doc, j
}

// Tokens verified by other JOSE implementations than the signer's (jwx): the Go standard
// library (crypto/ecdsa on the JWK's x and y, by hand) and Python's PyJWT, both against the
// JWKS served at the discovery document's jwks_uri.
func TestTokensVerifyWithOtherLibrariesAgainstServedJWKS(t *testing.T) {
	f := newFixture(t, defaultUsers(t, testCost), nil)
	access, refresh := f.loginOK(t, "alice", "wonderland")
	cc := postForm(t, f.base+"oauth2/token", url.Values{"grant_type": {"client_credentials"}}, "svc", clientSecret).str(t, "access_token")
	_, j := discoveryAndJWKS(t, f)
	if cc := j.header.Get("Cache-Control"); cc != "public, max-age=300" {
		t.Errorf("JWKS Cache-Control %q, want max-age=300 (half of prepublish 10m)", cc)
	}
	var set struct {
		Keys []struct {
			Kty, Crv, X, Y, Kid, Alg, D string
		} `json:"keys"`
	}
	if err := json.Unmarshal(j.body, &set); err != nil || len(set.Keys) != 1 {
		t.Fatalf("JWKS %s: %v", j.body, err)
	}
	k := set.Keys[0]
	if k.D != "" || k.Kty != "EC" || k.Crv != "P-256" || k.Alg != "ES256" {
		t.Fatalf("JWK %+v", k)
	}
	x, _ := base64.RawURLEncoding.DecodeString(k.X)
	y, _ := base64.RawURLEncoding.DecodeString(k.Y)
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append(append([]byte{4}, x...), y...))
	if err != nil {
		t.Fatalf("JWK is not a P-256 point: %v", err)
	}
	for _, tok := range []string{access, refresh, cc} {
		parts := strings.Split(tok, ".")
		if headerOf(t, tok)["kid"] != k.Kid {
			t.Errorf("token kid %v, JWKS kid %s", headerOf(t, tok)["kid"], k.Kid)
		}
		sig, err := base64.RawURLEncoding.DecodeString(parts[2])
		if err != nil || len(sig) != 64 {
			t.Fatalf("signature: %v", err)
		}
		digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
		if !ecdsa.Verify(pub, digest[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) {
			t.Errorf("crypto/ecdsa does not verify the token")
		}
	}

	// PyJWT (python3-jwt, which simplejwt itself uses), with its own JWK parsing.
	script := `
import json, sys, jwt
jwks = json.loads(sys.argv[1])
key = jwt.PyJWK(jwks["keys"][0])
for tok in sys.argv[3:]:
    claims = jwt.decode(tok, key.key, algorithms=["ES256"], issuer=sys.argv[2], options={"verify_aud": False})
    print(claims["token_type"], claims["sub"])
`
	out, err := exec.CommandContext(t.Context(), "/usr/bin/python3", "-c", script, string(j.body), f.iss, access, refresh, cc).CombinedOutput()
	if err != nil {
		t.Fatalf("PyJWT: %v\n%s", err, out)
	}
	if got := string(out); got != "access alice\nrefresh alice\naccess svc\n" {
		t.Errorf("PyJWT decoded %q", got)
	}
}
