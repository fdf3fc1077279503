package security

import (
	"crypto/rand"
	"encoding/json"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
	"github.com/keyward/keyward/internal/keys"
	"github.com/keyward/keyward/internal/testsupport"
)

const extHost = "ext.example.test"

// externalCases are attacks on a rule that trusts an external OIDC issuer (a loopback server
// with its own ES256 key): the validator's front ends only; the issuer does not verify
// external tokens. ext is the external issuer, with its key.
func externalCases(ext *issuerKeys, srv *testsupport.OIDCServer) []attack {
	x := "external"
	extTok := func(header string, set map[string]string, drop ...string) func() string {
		return func() string {
			if header == "" {
				header = `{"alg":"ES256","kid":` + quote(ext.kid) + `,"typ":"JWT"}`
			}
			return compact(ext, header, payloadOf(ext, set, drop...))
		}
	}
	return []attack{
		{category: x, name: "an external issuer's access token (typ JWT, no token_type) is accepted", source: "RFC 9068 §4; OIDC Discovery §4",
			tok: extTok("", nil, "token_type", "sid"), want: allow},
		{category: x, name: "an external issuer's token with typ at+jwt is accepted", source: "RFC 9068 §4",
			tok: extTok(`{"alg":"ES256","kid":`+quote(ext.kid)+`,"typ":"at+jwt"}`, nil), want: allow},
		{category: x, name: "an external refresh token (typ rt+jwt)", source: "RFC 8725 §3.11",
			tok: extTok(`{"alg":"ES256","kid":`+quote(ext.kid)+`,"typ":"rt+jwt"}`, nil), want: deny},
		{category: x, name: "an external token with token_type refresh", source: "RFC 8725 §3.11",
			tok: extTok("", map[string]string{"token_type": `"refresh"`}), want: deny},
		{category: x, name: "an external token with typ id_token+jwt", source: "RFC 8725 §3.11; OIDC Core §2",
			tok: extTok(`{"alg":"ES256","kid":`+quote(ext.kid)+`,"typ":"id_token+jwt"}`, nil), want: deny},
		{category: x, name: "HS256 signed with the external issuer's public JWK", source: "RFC 8725 §3.1; CVE-2015-9235",
			tok: func() string {
				return seal(&issuerKeys{alg: keywardv1.AlgorithmHS256, priv: ext.publicJWK},
					enc(`{"alg":"HS256","kid":`+quote(ext.kid)+`,"typ":"JWT"}`)+"."+enc(payloadOf(ext, nil)))
			}, want: deny},
		{category: x, name: "alg none under the external issuer's kid", source: "RFC 8725 §3.1; CVE-2015-9235",
			tok: func() string {
				return enc(`{"alg":"none","kid":`+quote(ext.kid)+`}`) + "." + enc(payloadOf(ext, nil)) + "."
			}, want: deny},
		{category: x, name: "the external iss, signed by keyward's key under keyward's kid", source: "RFC 8725 §3.8 (keys bound to issuers)",
			tok: func() string { return compact(suite.main, headerOf(suite.main), payloadOf(ext, nil)) }, want: deny},
		{category: x, name: "keyward's iss, signed by the external key", source: "RFC 8725 §3.8",
			tok: func() string { return compact(ext, headerOf(ext), payloadOf(suite.main, nil)) }, want: deny},
		{category: x, name: "a valid keyward token on the external issuer's host", source: "RFC 8725 §3.8",
			tok: func() string { return mint(suite.main, nil, nil) }, want: deny},
		{category: x, name: "an external token with sub CR LF (identity header injection)", source: "RFC 9110 §5.5; CWE-113; ADR 0013",
			tok: extTok("", map[string]string{"sub": `"alice\r\nX-Auth-Request-Groups: admin"`}), want: deny},
		{category: x, name: "an external token without aud", source: "RFC 9068 §4; RFC 8725 §3.9",
			tok: extTok("", nil, "aud"), want: deny},
		{category: x, name: "an external token with an unknown kid", source: "RFC 7515 §4.1.4; RFC 7517 §4.5",
			tok: func() string { return compact(ext, `{"alg":"ES256","kid":"unknown","typ":"JWT"}`, payloadOf(ext, nil)) }, want: deny},
		{category: x, name: "an external token whose jku names the issuer's own JWKS", source: "RFC 7515 §4.1.2; RFC 8725 §3.10",
			tok: func() string {
				return compact(ext, `{"alg":"ES256","kid":`+quote(ext.kid)+`,"typ":"JWT","jku":"`+srv.URL+`/keys"}`, payloadOf(ext, nil))
			}, want: deny},
		{category: x, name: "an expired external token", source: "RFC 7519 §4.1.4",
			tok: extTok("", map[string]string{"exp": unix(-time.Hour)}), want: deny},
	}
}

// TestExternalIssuer runs the external cases, then makes the external JWKS publish an HMAC
// key (and a private key): the set is refused, and tokens signed with them are refused.
func TestExternalIssuer(t *testing.T) {
	t.Parallel()
	srv := testsupport.NewOIDCServer(t)
	raw, err := keys.Generate(keywardv1.AlgorithmES256)
	if err != nil {
		t.Fatal(err)
	}
	stored, err := keys.NewStoredKey(keys.Lifecycle{Algorithm: keywardv1.AlgorithmES256}, raw)
	if err != nil {
		t.Fatal(err)
	}
	ext, err := keysOf("ext", &stored)
	if err != nil {
		t.Fatal(err)
	}
	ext.iss = srv.URL
	jwks, err := (&keys.KeySet{Keys: []keys.StoredKey{stored}}).PublicJWKS()
	if err != nil {
		t.Fatal(err)
	}
	srv.Set(func(s *testsupport.OIDCState) { s.JWKS = jwks })
	create(t, &keywardv1.AccessPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "ext"},
		Spec: keywardv1.AccessPolicySpec{
			Hosts: []string{extHost},
			Rules: []keywardv1.AccessRule{{Paths: []string{"/"}, Issuers: []keywardv1.IssuerReference{{IssuerURL: srv.URL}}, Audiences: []string{"api"}}},
		},
	})
	good := compact(ext, `{"alg":"ES256","kid":`+quote(ext.kid)+`,"typ":"JWT"}`, payloadOf(ext, nil))
	waitFor(t, 30*time.Second, "the external issuer's token accepted", func() bool {
		code, _, err := httpAuthz(t.Context(), rawAuthzHost(extHost, "/x", "Bearer "+good), false)
		return err == nil && code == 200
	})
	for _, a := range externalCases(ext, srv) {
		a.host, a.path = extHost, "/x"
		t.Run(a.category+"/"+a.name, func(t *testing.T) { runAttack(t, &a) })
	}

	// A JWKS publishing an HMAC secret and a private key next to the real key.
	secret := make([]byte, 32)
	_, _ = rand.Read(secret)
	var set map[string][]json.RawMessage
	if err := json.Unmarshal(jwks, &set); err != nil {
		t.Fatal(err)
	}
	// The stored JWK is the private one.
	privJWK := []byte(strings.Replace(string(stored.JWK), `"kid":"`+ext.kid+`"`, `"kid":"private"`, 1))
	set["keys"] = append(set["keys"],
		json.RawMessage(`{"kty":"oct","kid":"hmac","alg":"HS256","k":"`+b64.EncodeToString(secret)+`"}`), privJWK)
	evil, _ := json.Marshal(set)
	srv.Set(func(s *testsupport.OIDCState) { s.JWKS = evil; s.JWKSCalls = 0 })
	waitFor(t, 10*time.Second, "the validator to refetch the JWKS", func() bool {
		n := 0
		srv.Set(func(s *testsupport.OIDCState) { n = s.JWKSCalls })
		return n >= 2
	})
	cases := []attack{
		{category: "external", name: "HS256 signed with an HMAC key the external JWKS publishes", source: "RFC 7517 §4.1; RFC 8725 §3.1",
			tok: func() string {
				return seal(&issuerKeys{alg: keywardv1.AlgorithmHS256, priv: secret}, enc(`{"alg":"HS256","kid":"hmac","typ":"JWT"}`)+"."+enc(payloadOf(ext, nil)))
			}, want: deny},
		{category: "external", name: "a token under the kid of a private JWK the external JWKS publishes", source: "RFC 7517 §9.2 (private keys are not published)",
			tok: func() string { return compact(ext, `{"alg":"ES256","kid":"private","typ":"JWT"}`, payloadOf(ext, nil)) }, want: deny},
		{category: "external", name: "after a refused JWKS, the last good keys still verify (no outage, no new key)", source: "OIDC Core §10.1.1 (key rollover)",
			tok: func() string { return good }, want: allow},
	}
	for _, a := range cases {
		a.host, a.path = extHost, "/x"
		t.Run(a.category+"/"+a.name, func(t *testing.T) { runAttack(t, &a) })
	}
	t.Logf("%d external-issuer cases", len(externalCases(ext, srv))+len(cases))
}

func create(t *testing.T, p *keywardv1.AccessPolicy) {
	t.Helper()
	if err := suite.k8s.Create(t.Context(), p); err != nil {
		t.Fatalf("cannot create AccessPolicy %s: %v", p.Name, err)
	}
}
