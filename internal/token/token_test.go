package token

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"maps"
	"math/big"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jws"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
	"github.com/keyward/keyward/internal/keys"
)

const (
	testIssuer   = "https://keyward.example/issuers/default"
	testAudience = "api"
	testNowUnix  = 1893553445 // 2030-01-02T03:04:05Z
	hsKID        = "hs-key"
	hsSecret     = "0123456789abcdef0123456789abcdef"
)

func testNow() time.Time { return time.Unix(testNowUnix, 0).UTC() }

func accessClaims() *Claims {
	now := testNow()
	return &Claims{
		Issuer:    testIssuer,
		Subject:   "alice",
		Audience:  []string{testAudience},
		ExpiresAt: now.Add(5 * time.Minute),
		IssuedAt:  now,
		ID:        "jti-1",
		SessionID: "sid-1",
		ClientID:  "web",
		Scope:     "read write",
		TokenType: TokenTypeAccess,
		Groups:    []string{"dev", "ops"},
		Email:     "alice@example.com",
		Extra:     map[string]any{"tenant": "acme", "level": json.Number("3")},
	}
}

func refreshClaims() *Claims {
	c := accessClaims()
	c.TokenType = TokenTypeRefresh
	c.Generation = 3
	c.ExpiresAt = testNow().Add(24 * time.Hour)
	return c
}

func expect(typ string) Expect {
	return Expect{Issuer: testIssuer, Audiences: []string{testAudience}, Type: typ, Now: testNow(), Leeway: 30 * time.Second}
}

// check runs the whole pipeline the validator runs.
func check(raw []byte, k *VerifyKey, e Expect) error {
	t, err := Parse(raw, 0)
	if err != nil {
		return err
	}
	if err := Verify(t, k); err != nil {
		return err
	}
	return Validate(t, e)
}

func hsKey(t testing.TB) *VerifyKey {
	t.Helper()
	k, err := NewVerifyKey(hsKID, keywardv1.AlgorithmHS256, []byte(hsSecret))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

var b64 = base64.RawURLEncoding

// hs256 builds a token from raw header and payload text, with a valid HMAC-SHA256 under
// secret, so that whatever is refused is refused for its content.
func hs256(secret, header, payload string) string {
	in := b64.EncodeToString([]byte(header)) + "." + b64.EncodeToString([]byte(payload))
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(in))
	return in + "." + b64.EncodeToString(m.Sum(nil))
}

const goodHeader = `{"alg":"HS256","kid":"hs-key","typ":"at+jwt"}`

// payload returns the text of an access claim set. set replaces the raw value of a default
// claim ("" removes it); more is raw text appended inside the object.
func payload(set map[string]string, more string) string {
	defaults := []struct{ name, value string }{
		{"iss", `"` + testIssuer + `"`},
		{"sub", `"alice"`},
		{"aud", `["api"]`},
		{"exp", fmt.Sprint(testNowUnix + 300)},
		{"iat", fmt.Sprint(testNowUnix)},
		{"jti", `"jti-1"`},
		{"token_type", `"access"`},
	}
	var b strings.Builder
	b.WriteByte('{')
	for _, d := range defaults {
		v, ok := set[d.name]
		if !ok {
			v = d.value
		}
		if v == "" {
			continue
		}
		if b.Len() > 1 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%q:%s", d.name, v)
	}
	b.WriteString(more)
	b.WriteByte('}')
	return b.String()
}

func segments(raw string) []string { return strings.Split(raw, ".") }

// flipTailBit sets a trailing padding bit of a base64url segment, giving a non-canonical
// encoding of the same bytes.
func flipTailBit(t *testing.T, seg string) string {
	t.Helper()
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	if len(seg)%4 == 0 {
		t.Fatalf("segment of length %d has no trailing bits", len(seg))
	}
	last := strings.IndexByte(alphabet, seg[len(seg)-1])
	return seg[:len(seg)-1] + string(alphabet[last|1])
}

// generated is a fresh key of one algorithm in every form the tests need.
type generated struct {
	alg    keywardv1.Algorithm
	raw    any
	stored keys.StoredKey
	signer *Signer
	verify *VerifyKey
}

func generate(t testing.TB, alg keywardv1.Algorithm) generated {
	t.Helper()
	raw, err := keys.Generate(alg)
	if err != nil {
		t.Fatal(err)
	}
	stored, err := keys.NewStoredKey(keys.Lifecycle{Algorithm: alg}, raw)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := NewSigner(&stored)
	if err != nil {
		t.Fatal(err)
	}
	vk, err := VerifyKeyFromStored(&stored)
	if err != nil {
		t.Fatal(err)
	}
	return generated{alg: alg, raw: raw, stored: stored, signer: signer, verify: vk}
}

// published returns the JWK a consumer verifies alg with: the public JWK of the JWKS for
// asymmetric keys, the secret JWK for HS keys.
func (g generated) published(t testing.TB) jwk.Key {
	t.Helper()
	if g.alg.IsSymmetric() {
		k, err := g.stored.Key()
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	ks := keys.KeySet{Keys: []keys.StoredKey{g.stored}}
	data, err := ks.PublicJWKS()
	if err != nil {
		t.Fatal(err)
	}
	set, err := jwk.Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	k, ok := set.LookupKeyID(g.stored.KID)
	if !ok {
		t.Fatal("published JWKS lacks the key")
	}
	return k
}

func jwxSign(t testing.TB, alg keywardv1.Algorithm, key any, kid, typ string, payload []byte) []byte {
	t.Helper()
	a, err := keys.JWA(alg)
	if err != nil {
		t.Fatal(err)
	}
	h := jws.NewHeaders()
	if err := h.Set(jws.KeyIDKey, kid); err != nil {
		t.Fatal(err)
	}
	if err := h.Set(jws.TypeKey, typ); err != nil {
		t.Fatal(err)
	}
	out, err := jws.Sign(payload, jws.WithKey(a, key, jws.WithProtectedHeaders(h)))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestEveryAlgorithm(t *testing.T) {
	for _, alg := range keywardv1.Algorithms {
		t.Run(string(alg), func(t *testing.T) {
			t.Parallel()
			g := generate(t, alg)
			jwa, err := keys.JWA(alg)
			if err != nil {
				t.Fatal(err)
			}

			t.Run("an access token signed here parses, verifies and validates", func(t *testing.T) {
				raw, err := g.signer.Sign(TypeAccess, accessClaims())
				if err != nil {
					t.Fatal(err)
				}
				tok, err := Parse([]byte(raw), 0)
				if err != nil {
					t.Fatal(err)
				}
				if h := tok.Header(); h != (Header{Alg: alg, KID: g.stored.KID, Typ: TypeAccess}) {
					t.Errorf("header = %+v", h)
				}
				if err := Verify(tok, g.verify); err != nil {
					t.Fatal(err)
				}
				if err := Validate(tok, expect(TokenTypeAccess)); err != nil {
					t.Fatal(err)
				}
				if want := accessClaims(); !claimsEqual(&tok.Claims, want) {
					t.Errorf("claims = %+v, want %+v", tok.Claims, *want)
				}
			})

			t.Run("a refresh token signed here validates as a refresh token only", func(t *testing.T) {
				raw, err := g.signer.Sign(TypeRefresh, refreshClaims())
				if err != nil {
					t.Fatal(err)
				}
				if err := check([]byte(raw), g.verify, expect(TokenTypeRefresh)); err != nil {
					t.Fatal(err)
				}
				if err := check([]byte(raw), g.verify, expect(TokenTypeAccess)); ReasonOf(err) != ReasonWrongType {
					t.Fatalf("as access token: %v, want %s", err, ReasonWrongType)
				}
			})

			t.Run("a token signed here verifies with jwx against the published JWK", func(t *testing.T) {
				raw, err := g.signer.Sign(TypeAccess, accessClaims())
				if err != nil {
					t.Fatal(err)
				}
				got, err := jws.Verify([]byte(raw), jws.WithKey(jwa, g.published(t)))
				if err != nil {
					t.Fatal(err)
				}
				want, _ := accessClaims().MarshalJSON()
				if !bytes.Equal(got, want) {
					t.Errorf("jwx payload = %s, want %s", got, want)
				}
			})

			t.Run("a token signed by jwx verifies here", func(t *testing.T) {
				payload, err := accessClaims().MarshalJSON()
				if err != nil {
					t.Fatal(err)
				}
				raw := jwxSign(t, alg, g.raw, g.stored.KID, TypeAccess, payload)
				if err := check(raw, g.verify, expect(TokenTypeAccess)); err != nil {
					t.Fatal(err)
				}
			})

			t.Run("a token with a changed payload does not verify", func(t *testing.T) {
				raw, err := g.signer.Sign(TypeAccess, accessClaims())
				if err != nil {
					t.Fatal(err)
				}
				c := accessClaims()
				c.Subject = "mallory"
				p, _ := c.MarshalJSON()
				seg := segments(raw)
				forged := seg[0] + "." + b64.EncodeToString(p) + "." + seg[2]
				if err := check([]byte(forged), g.verify, expect(TokenTypeAccess)); ReasonOf(err) != ReasonBadSignature {
					t.Fatalf("got %v, want %s", err, ReasonBadSignature)
				}
			})

			if spec, _ := specOf(alg); spec.family == familyECDSA {
				t.Run("the ECDSA signature is the fixed-size JOSE r||s form", func(t *testing.T) {
					for range 20 { // short r or s values appear about once in 256 signatures
						raw, err := g.signer.Sign(TypeAccess, accessClaims())
						if err != nil {
							t.Fatal(err)
						}
						sig, _ := b64.DecodeString(segments(raw)[2])
						if len(sig) != 2*spec.size {
							t.Fatalf("signature is %d bytes, want %d", len(sig), 2*spec.size)
						}
					}
				})
			}
		})
	}
}

func claimsEqual(a, b *Claims) bool {
	x, err1 := a.MarshalJSON()
	y, err2 := b.MarshalJSON()
	return err1 == nil && err2 == nil && bytes.Equal(x, y)
}

func TestSignWritesExactlyAlgKidTyp(t *testing.T) {
	g := generate(t, keywardv1.AlgorithmES256)
	for _, typ := range []string{TypeAccess, TypeRefresh} {
		c := accessClaims()
		if typ == TypeRefresh {
			c = refreshClaims()
		}
		raw, err := g.signer.Sign(typ, c)
		if err != nil {
			t.Fatal(err)
		}
		h, _ := b64.DecodeString(segments(raw)[0])
		want := fmt.Sprintf(`{"alg":"ES256","kid":%q,"typ":%q}`, g.stored.KID, typ)
		if string(h) != want {
			t.Errorf("header = %s, want %s", h, want)
		}
	}
}

func TestSignRefuses(t *testing.T) {
	g := generate(t, keywardv1.AlgorithmHS256)
	tests := []struct {
		name   string
		typ    string
		claims func(*Claims)
	}{
		{"an unknown typ is refused", "JWT", func(*Claims) {}},
		{"an access typ with a refresh token_type is refused", TypeAccess, func(c *Claims) { c.TokenType = TokenTypeRefresh }},
		{"a refresh typ with an access token_type is refused", TypeRefresh, func(*Claims) {}},
		{"claims without sub are refused", TypeAccess, func(c *Claims) { c.Subject = "" }},
		{"claims without jti are refused", TypeAccess, func(c *Claims) { c.ID = "" }},
		{"claims without exp are refused", TypeAccess, func(c *Claims) { c.ExpiresAt = time.Time{} }},
		{"claims without iss are refused", TypeAccess, func(c *Claims) { c.Issuer = "" }},
		{"an extra claim overriding sub is refused", TypeAccess, func(c *Claims) { c.Extra["sub"] = "root" }},
		{"an extra claim overriding token_type is refused", TypeAccess, func(c *Claims) { c.Extra["token_type"] = "refresh" }},
		{"invalid UTF-8 in a claim is refused", TypeAccess, func(c *Claims) { c.Email = "a\xffb" }},
		{"a date after year 9999 is refused", TypeAccess, func(c *Claims) { c.ExpiresAt = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC) }},
		{"a date before 1970 is refused", TypeAccess, func(c *Claims) { c.NotBefore = time.Date(1969, 1, 1, 0, 0, 0, 0, time.UTC) }},
		{"a negative generation is refused", TypeAccess, func(c *Claims) { c.Generation = -1 }},
		{"an extra raw value with duplicate names is refused", TypeAccess, func(c *Claims) { c.Extra["x"] = json.RawMessage(`{"a":1,"a":2}`) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := accessClaims()
			tt.claims(c)
			if raw, err := g.signer.Sign(tt.typ, c); err == nil {
				t.Fatalf("Sign succeeded: %s", raw)
			}
		})
	}

	t.Run("a public-only key cannot make a signer", func(t *testing.T) {
		es := generate(t, keywardv1.AlgorithmES256)
		pub, err := keys.Public(mustKey(t, &es.stored))
		if err != nil {
			t.Fatal(err)
		}
		stored := es.stored
		stored.JWK, _ = json.Marshal(pub)
		stored.PublicOnly = true
		if _, err := NewSigner(&stored); err == nil {
			t.Fatal("NewSigner succeeded")
		}
	})
	t.Run("a key of the wrong type cannot make a signer", func(t *testing.T) {
		es := generate(t, keywardv1.AlgorithmES256)
		if _, err := NewSignerFromKey("k", keywardv1.AlgorithmRS256, es.raw); err == nil {
			t.Fatal("NewSignerFromKey succeeded")
		}
		if _, err := NewSignerFromKey("k", keywardv1.AlgorithmHS256, []byte("short")); err == nil {
			t.Fatal("NewSignerFromKey succeeded with a short secret")
		}
	})
}

func mustKey(t testing.TB, k *keys.StoredKey) jwk.Key {
	t.Helper()
	key, err := k.Key()
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// refusal is one token the pipeline must refuse for a given reason.
type refusal struct {
	name  string
	token string
	key   *VerifyKey // nil: the HS256 test key
	typ   string     // expected token type; "": access
	want  Reason
}

func TestParseVerifyValidateRefuse(t *testing.T) {
	hs := hsKey(t)
	es := generate(t, keywardv1.AlgorithmES256)
	rsaRaw, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := NewVerifyKey("rsa-key", keywardv1.AlgorithmRS256, &rsaRaw.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&rsaRaw.PublicKey)
	rsaPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	esRaw, err := es.signer.Sign(TypeAccess, accessClaims())
	if err != nil {
		t.Fatal(err)
	}
	esSeg := segments(esRaw)

	good := hs256(hsSecret, goodHeader, payload(nil, ""))
	seg := segments(good)
	withHeader := func(h string) string { return hs256(hsSecret, h, payload(nil, "")) }
	withPayload := func(set map[string]string, more string) string {
		return hs256(hsSecret, goodHeader, payload(set, more))
	}
	rawPayload := func(p string) string { return hs256(hsSecret, goodHeader, p) }
	hsSigned := func(typ string, c *Claims) string {
		s, err := NewSignerFromKey(hsKID, keywardv1.AlgorithmHS256, []byte(hsSecret))
		if err != nil {
			t.Fatal(err)
		}
		raw, err := s.Sign(typ, c)
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	const none = Reason("")

	tests := []refusal{
		// Controls: the same machinery accepts well-formed tokens.
		{name: "a well-formed access token is accepted", token: good, want: none},
		{name: "insignificant whitespace inside the JSON objects is accepted",
			token: hs256(hsSecret, "{ \"alg\" : \"HS256\",\n\t\"kid\":\"hs-key\" , \"typ\":\"at+jwt\" }", "{ "+payload(nil, "")[1:]), want: none},
		{name: "typ application/at+jwt in any case is accepted",
			token: withHeader(`{"alg":"HS256","kid":"hs-key","typ":"Application/AT+JWT"}`), want: none},
		{name: "escaped member names and values are accepted",
			token: rawPayload(strings.Replace(payload(nil, `,"n\u0061me":"\ud83d\ude00"`), `"sub"`, `"\u0073ub"`, 1)), want: none},

		// Algorithms.
		{name: "alg none with an empty signature is refused",
			token: b64.EncodeToString([]byte(`{"alg":"none","kid":"hs-key","typ":"at+jwt"}`)) + "." + seg[1] + ".", want: ReasonUnsupportedAlg},
		{name: "alg none with a signature is refused",
			token: withHeader(`{"alg":"none","kid":"hs-key","typ":"at+jwt"}`), want: ReasonUnsupportedAlg},
		{name: "alg NONE in capitals is refused",
			token: withHeader(`{"alg":"NONE","kid":"hs-key","typ":"at+jwt"}`), want: ReasonUnsupportedAlg},
		{name: "an algorithm keyward does not know is refused",
			token: withHeader(`{"alg":"HS1","kid":"hs-key","typ":"at+jwt"}`), want: ReasonUnsupportedAlg},
		{name: "an algorithm name in the wrong case is refused",
			token: withHeader(`{"alg":"hs256","kid":"hs-key","typ":"at+jwt"}`), want: ReasonUnsupportedAlg},
		{name: "an HS256 token keyed with the RSA public key of an RS256 kid is refused",
			token: hs256(rsaPEM, `{"alg":"HS256","kid":"rsa-key","typ":"at+jwt"}`, payload(nil, "")), key: rsaKey, want: ReasonAlgMismatch},
		{name: "an HS256 token checked against an HS256 key holding an RSA public key is refused",
			token: hs256(rsaPEM, `{"alg":"HS256","kid":"rsa-key","typ":"at+jwt"}`, payload(nil, "")),
			key:   &VerifyKey{KID: "rsa-key", Alg: keywardv1.AlgorithmHS256, Key: &rsaRaw.PublicKey}, want: ReasonBadKey},
		{name: "an ES256 token relabelled HS256 is refused",
			token: b64.EncodeToString([]byte(fmt.Sprintf(`{"alg":"HS256","kid":%q,"typ":"at+jwt"}`, es.stored.KID))) + "." + esSeg[1] + "." + esSeg[2],
			key:   es.verify, want: ReasonAlgMismatch},
		{name: "an ES256 token relabelled ES384 is refused",
			token: b64.EncodeToString([]byte(fmt.Sprintf(`{"alg":"ES384","kid":%q,"typ":"at+jwt"}`, es.stored.KID))) + "." + esSeg[1] + "." + esSeg[2],
			key:   es.verify, want: ReasonAlgMismatch},
		{name: "a kid without a key is refused",
			token: withHeader(`{"alg":"HS256","kid":"other","typ":"at+jwt"}`), want: ReasonUnknownKID},

		// Header members.
		{name: "a jku header is refused", token: withHeader(`{"alg":"HS256","kid":"hs-key","typ":"at+jwt","jku":"https://evil.example/jwks"}`), want: ReasonBadHeader},
		{name: "an embedded jwk header is refused", token: withHeader(`{"alg":"HS256","kid":"hs-key","typ":"at+jwt","jwk":{"kty":"oct","k":"AAAA"}}`), want: ReasonBadHeader},
		{name: "an x5u header is refused", token: withHeader(`{"alg":"HS256","kid":"hs-key","typ":"at+jwt","x5u":"https://evil.example/cert"}`), want: ReasonBadHeader},
		{name: "an x5c header is refused", token: withHeader(`{"alg":"HS256","kid":"hs-key","typ":"at+jwt","x5c":["AAAA"]}`), want: ReasonBadHeader},
		{name: "a crit header is refused", token: withHeader(`{"alg":"HS256","kid":"hs-key","typ":"at+jwt","crit":["exp"]}`), want: ReasonBadHeader},
		{name: "a b64 header is refused", token: withHeader(`{"alg":"HS256","kid":"hs-key","typ":"at+jwt","b64":false}`), want: ReasonBadHeader},
		{name: "a cty header is refused", token: withHeader(`{"alg":"HS256","kid":"hs-key","typ":"at+jwt","cty":"JWT"}`), want: ReasonBadHeader},
		{name: "an empty-named header member is refused", token: withHeader(`{"alg":"HS256","kid":"hs-key","typ":"at+jwt","":""}`), want: ReasonBadHeader},
		{name: "a header without kid is refused", token: withHeader(`{"alg":"HS256","typ":"at+jwt"}`), want: ReasonBadHeader},
		{name: "a header with an empty kid is refused", token: withHeader(`{"alg":"HS256","kid":"","typ":"at+jwt"}`), want: ReasonBadHeader},
		{name: "a header without alg is refused", token: withHeader(`{"kid":"hs-key","typ":"at+jwt"}`), want: ReasonBadHeader},
		{name: "a numeric kid is refused", token: withHeader(`{"alg":"HS256","kid":1,"typ":"at+jwt"}`), want: ReasonBadHeader},
		{name: "a null typ is refused", token: withHeader(`{"alg":"HS256","kid":"hs-key","typ":null}`), want: ReasonBadHeader},
		{name: "an alg given as an array is refused", token: withHeader(`{"alg":["HS256"],"kid":"hs-key","typ":"at+jwt"}`), want: ReasonBadHeader},

		// Duplicate members.
		{name: "a duplicate alg in the header is refused", token: withHeader(`{"alg":"HS256","alg":"HS256","kid":"hs-key","typ":"at+jwt"}`), want: ReasonMalformed},
		{name: "a duplicate kid spelled with an escape is refused", token: withHeader(`{"alg":"HS256","kid":"hs-key","k\u0069d":"other","typ":"at+jwt"}`), want: ReasonMalformed},
		{name: "a duplicate sub in the claims is refused", token: withPayload(nil, `,"sub":"root"`), want: ReasonMalformed},
		{name: "a duplicate exp in the claims is refused", token: withPayload(nil, fmt.Sprintf(`,"exp":%d`, testNowUnix+1000000)), want: ReasonMalformed},
		{name: "a duplicate name in a nested claim object is refused", token: withPayload(nil, `,"ctx":{"a":{"role":"user","role":"admin"}}`), want: ReasonMalformed},
		{name: "a duplicate name inside an array element is refused", token: withPayload(nil, `,"ctx":[{"a":1,"a":2}]`), want: ReasonMalformed},

		// Base64url.
		{name: "padding on the header is refused", token: seg[0] + "==." + seg[1] + "." + seg[2], want: ReasonMalformed},
		{name: "padding on the signature is refused", token: seg[0] + "." + seg[1] + "." + seg[2] + "=", want: ReasonMalformed},
		{name: "a plus sign is refused", token: seg[0] + "." + seg[1] + "." + strings.Replace(seg[2], seg[2][:1], "+", 1), want: ReasonMalformed},
		{name: "a slash is refused", token: seg[0] + "." + seg[1] + "." + "/" + seg[2][1:], want: ReasonMalformed},
		{name: "standard base64 of the same bytes is refused",
			token: seg[0] + "." + seg[1] + "." + strings.NewReplacer("-", "+", "_", "/").Replace(hs256SigWith(t, hsSecret, "-_")), want: ReasonMalformed},
		{name: "a space inside a segment is refused", token: seg[0] + "." + seg[1][:5] + " " + seg[1][5:] + "." + seg[2], want: ReasonMalformed},
		{name: "a newline inside the signature is refused", token: seg[0] + "." + seg[1] + "." + seg[2][:10] + "\n" + seg[2][10:], want: ReasonMalformed},
		{name: "a carriage return inside the header is refused", token: seg[0][:4] + "\r" + seg[0][4:] + "." + seg[1] + "." + seg[2], want: ReasonMalformed},
		{name: "a tab inside the payload is refused", token: seg[0] + "." + seg[1][:7] + "\t" + seg[1][7:] + "." + seg[2], want: ReasonMalformed},
		{name: "a leading space is refused", token: " " + good, want: ReasonMalformed},
		{name: "a trailing newline is refused", token: good + "\n", want: ReasonMalformed},
		{name: "a NUL byte is refused", token: good + "\x00", want: ReasonMalformed},
		{name: "a non-ASCII byte is refused", token: seg[0] + "." + seg[1] + "." + seg[2][:3] + "é" + seg[2][3:], want: ReasonMalformed},
		{name: "non-canonical trailing bits in the signature are refused", token: seg[0] + "." + seg[1] + "." + flipTailBit(t, seg[2]), want: ReasonMalformed},
		{name: "non-canonical trailing bits in the header are refused",
			token: flipTailBit(t, segments(withHeader(`{"alg":"HS256", "kid":"hs-key","typ":"at+jwt"}`))[0]) + "." + seg[1] + "." + seg[2], want: ReasonMalformed},
		{name: "a segment length no encoding produces is refused", token: seg[0] + "." + seg[1] + "." + seg[2] + "AA", want: ReasonMalformed},

		// Serialization.
		{name: "flattened JSON serialization is refused",
			token: fmt.Sprintf(`{"protected":%q,"payload":%q,"signature":%q}`, seg[0], seg[1], seg[2]), want: ReasonMalformed},
		{name: "general JSON serialization is refused",
			token: fmt.Sprintf(`{"payload":%q,"signatures":[{"protected":%q,"signature":%q}]}`, seg[1], seg[0], seg[2]), want: ReasonMalformed},
		{name: "a five-segment JWE is refused",
			token: b64.EncodeToString([]byte(`{"alg":"dir","enc":"A256GCM","kid":"hs-key"}`)) + "..AAAAAAAAAAAAAAAA." + seg[1] + ".AAAAAAAAAAAAAAAAAAAAAA", want: ReasonMalformed},
		{name: "four segments are refused", token: good + "." + seg[2], want: ReasonMalformed},
		{name: "two segments are refused", token: seg[0] + "." + seg[1], want: ReasonMalformed},
		{name: "one segment is refused", token: seg[0], want: ReasonMalformed},
		{name: "an empty token is refused", token: "", want: ReasonMalformed},
		{name: "three dots alone are refused", token: "..", want: ReasonMalformed},
		{name: "an empty header segment is refused", token: "." + seg[1] + "." + seg[2], want: ReasonMalformed},
		{name: "an empty payload segment is refused", token: hs256(hsSecret, goodHeader, ""), want: ReasonMalformed},

		// Signatures.
		{name: "an empty signature is refused", token: seg[0] + "." + seg[1] + ".", want: ReasonMalformed},
		{name: "a truncated HMAC is refused", token: seg[0] + "." + seg[1] + "." + b64.EncodeToString(mustB64(t, seg[2])[:16]), want: ReasonBadSignature},
		{name: "an HMAC with one byte more is refused", token: seg[0] + "." + seg[1] + "." + b64.EncodeToString(append(mustB64(t, seg[2]), 0)), want: ReasonBadSignature},
		{name: "a truncated ECDSA signature is refused", token: esSeg[0] + "." + esSeg[1] + "." + b64.EncodeToString(mustB64(t, esSeg[2])[:63]), key: es.verify, want: ReasonBadSignature},
		{name: "an ECDSA signature with a leading zero byte added is refused", token: esSeg[0] + "." + esSeg[1] + "." + b64.EncodeToString(append([]byte{0}, mustB64(t, esSeg[2])...)), key: es.verify, want: ReasonBadSignature},
		{name: "an ECDSA signature in ASN.1 DER form is refused", token: esSeg[0] + "." + esSeg[1] + "." + b64.EncodeToString(derSignature(t, mustB64(t, esSeg[2]))), key: es.verify, want: ReasonBadSignature},
		{name: "an ECDSA signature with r and s zero is refused", token: esSeg[0] + "." + esSeg[1] + "." + b64.EncodeToString(make([]byte, 64)), key: es.verify, want: ReasonBadSignature},
		{name: "an ECDSA signature with s replaced by n-s still verifies, as ECDSA allows",
			token: esSeg[0] + "." + esSeg[1] + "." + b64.EncodeToString(malleate(mustB64(t, esSeg[2]))), key: es.verify, want: none},
		{name: "a signature from another secret is refused", token: hs256("another secret of thirty-two by", goodHeader, payload(nil, "")), want: ReasonBadSignature},
		{name: "a signature over another payload is refused", token: seg[0] + "." + segments(withPayload(map[string]string{"sub": `"mallory"`}, ""))[1] + "." + seg[2], want: ReasonBadSignature},

		// JSON of the header and payload.
		{name: "a header that is not JSON is refused", token: withHeader(`alg=HS256`), want: ReasonMalformed},
		{name: "a header that is a JSON array is refused", token: withHeader(`["HS256"]`), want: ReasonMalformed},
		{name: "a payload that is a JSON array is refused", token: rawPayload(`[{"sub":"alice"}]`), want: ReasonMalformed},
		{name: "a payload that is a JSON string is refused", token: rawPayload(`"alice"`), want: ReasonMalformed},
		{name: "a payload that is null is refused", token: rawPayload(`null`), want: ReasonMalformed},
		{name: "a payload that is a number is refused", token: rawPayload(`42`), want: ReasonMalformed},
		{name: "garbage after the payload object is refused", token: rawPayload(payload(nil, "") + "x"), want: ReasonMalformed},
		{name: "a second object after the payload object is refused", token: rawPayload(payload(nil, "") + `{"sub":"root"}`), want: ReasonMalformed},
		{name: "whitespace after the payload object is refused", token: rawPayload(payload(nil, "") + " "), want: ReasonMalformed},
		{name: "whitespace before the payload object is refused", token: rawPayload(" " + payload(nil, "")), want: ReasonMalformed},
		{name: "garbage after the header object is refused", token: withHeader(goodHeader + "}"), want: ReasonMalformed},
		{name: "a trailing comma is refused", token: rawPayload(payload(nil, ",")), want: ReasonMalformed},
		{name: "a single-quoted string is refused", token: withPayload(nil, `,'x':1`), want: ReasonMalformed},
		{name: "a comment is refused", token: withPayload(nil, `/* c */`), want: ReasonMalformed},
		{name: "NaN is refused", token: withPayload(nil, `,"x":NaN`), want: ReasonMalformed},
		{name: "a number with a leading zero is refused", token: withPayload(nil, `,"x":01`), want: ReasonMalformed},
		{name: "a raw control character in a string is refused", token: withPayload(map[string]string{"sub": "\"al\tice\""}, ""), want: ReasonMalformed},
		{name: "an unknown escape is refused", token: withPayload(map[string]string{"sub": `"al\xice"`}, ""), want: ReasonMalformed},
		{name: "invalid UTF-8 in a claim is refused", token: withPayload(map[string]string{"sub": "\"al\xffice\""}, ""), want: ReasonMalformed},
		{name: "an overlong UTF-8 encoding is refused", token: withPayload(map[string]string{"sub": "\"\xc0\xaf\""}, ""), want: ReasonMalformed},
		{name: "a UTF-8 encoded surrogate is refused", token: withPayload(map[string]string{"sub": "\"\xed\xa0\x80\""}, ""), want: ReasonMalformed},
		{name: "a lone high surrogate escape is refused", token: withPayload(map[string]string{"sub": `"\ud800"`}, ""), want: ReasonMalformed},
		{name: "a lone low surrogate escape is refused", token: withPayload(map[string]string{"sub": `"\udc00x"`}, ""), want: ReasonMalformed},
		{name: "invalid UTF-8 in the header is refused", token: withHeader("{\"alg\":\"HS256\",\"kid\":\"hs-\xfekey\",\"typ\":\"at+jwt\"}"), want: ReasonMalformed},
		{name: "invalid UTF-8 in a member name is refused", token: withPayload(nil, ",\"\xff\":1"), want: ReasonMalformed},
		{name: "nesting deeper than 32 levels is refused", token: withPayload(nil, `,"x":`+strings.Repeat("[", 40)+strings.Repeat("]", 40)), want: ReasonMalformed},

		// Claim types.
		{name: "a float exp is refused", token: withPayload(map[string]string{"exp": fmt.Sprintf("%d.0", testNowUnix+300)}, ""), want: ReasonMalformed},
		{name: "a fractional exp is refused", token: withPayload(map[string]string{"exp": fmt.Sprintf("%d.5", testNowUnix+300)}, ""), want: ReasonMalformed},
		{name: "an exp in exponent form is refused", token: withPayload(map[string]string{"exp": "1.9e9"}, ""), want: ReasonMalformed},
		{name: "an integral exp in exponent form is refused", token: withPayload(map[string]string{"exp": "2E9"}, ""), want: ReasonMalformed},
		{name: "a string exp is refused", token: withPayload(map[string]string{"exp": fmt.Sprintf(`"%d"`, testNowUnix+300)}, ""), want: ReasonMalformed},
		{name: "a null exp is refused", token: withPayload(map[string]string{"exp": "null"}, ""), want: ReasonMalformed},
		{name: "a negative exp is refused", token: withPayload(map[string]string{"exp": "-1"}, ""), want: ReasonMalformed},
		{name: "an exp after year 9999 is refused", token: withPayload(map[string]string{"exp": "253402300800"}, ""), want: ReasonMalformed},
		{name: "an exp beyond int64 is refused", token: withPayload(map[string]string{"exp": "99999999999999999999"}, ""), want: ReasonMalformed},
		{name: "a float nbf is refused", token: withPayload(nil, fmt.Sprintf(`,"nbf":%d.0`, testNowUnix)), want: ReasonMalformed},
		{name: "a string iat is refused", token: withPayload(map[string]string{"iat": `"now"`}, ""), want: ReasonMalformed},
		{name: "a numeric sub is refused", token: withPayload(map[string]string{"sub": "42"}, ""), want: ReasonMalformed},
		{name: "a numeric aud is refused", token: withPayload(map[string]string{"aud": "1"}, ""), want: ReasonMalformed},
		{name: "an aud array holding a number is refused", token: withPayload(map[string]string{"aud": `["api",1]`}, ""), want: ReasonMalformed},
		{name: "an aud array holding null is refused", token: withPayload(map[string]string{"aud": `["api",null]`}, ""), want: ReasonMalformed},
		{name: "an aud object is refused", token: withPayload(map[string]string{"aud": `{"api":true}`}, ""), want: ReasonMalformed},
		{name: "groups given as a string are refused", token: withPayload(nil, `,"groups":"admin"`), want: ReasonMalformed},
		{name: "a fractional gen is refused", token: withPayload(nil, `,"gen":1.5`), want: ReasonMalformed},

		// Size.
		{name: "a token over the size cap is refused", token: withPayload(nil, `,"pad":"`+strings.Repeat("a", DefaultMaxLen)+`"`), want: ReasonOversize},
		{name: "a huge token is refused", token: strings.Repeat("A", 1<<20) + "." + seg[1] + "." + seg[2], want: ReasonOversize},

		// Type confusion.
		{name: "a refresh token presented as an access token is refused", token: hsSigned(TypeRefresh, refreshClaims()), want: ReasonWrongType},
		{name: "an access token presented as a refresh token is refused", token: good, typ: TokenTypeRefresh, want: ReasonWrongType},
		{name: "typ at+jwt with token_type refresh is refused as an access token",
			token: withPayload(map[string]string{"token_type": `"refresh"`}, ""), want: ReasonWrongType},
		{name: "typ at+jwt with token_type refresh is refused as a refresh token",
			token: withPayload(map[string]string{"token_type": `"refresh"`}, ""), typ: TokenTypeRefresh, want: ReasonWrongType},
		{name: "typ rt+jwt with token_type access is refused as an access token",
			token: withHeader(`{"alg":"HS256","kid":"hs-key","typ":"rt+jwt"}`), want: ReasonWrongType},
		{name: "typ JWT is refused", token: withHeader(`{"alg":"HS256","kid":"hs-key","typ":"JWT"}`), want: ReasonWrongType},
		{name: "a missing typ is refused", token: withHeader(`{"alg":"HS256","kid":"hs-key"}`), want: ReasonWrongType},
		{name: "a missing token_type is refused", token: withPayload(map[string]string{"token_type": ""}, ""), want: ReasonWrongType},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key := tt.key
			if key == nil {
				key = hs
			}
			typ := tt.typ
			if typ == "" {
				typ = TokenTypeAccess
			}
			err := check([]byte(tt.token), key, expect(typ))
			if got := ReasonOf(err); got != tt.want {
				t.Fatalf("reason = %q (%v), want %q", got, err, tt.want)
			}
			if err != nil && tt.want == none {
				t.Fatal(err)
			}
		})
	}
}

// hs256SigWith returns the signature segment of a good token whose signature contains one of
// chars, varying jti until it does.
func hs256SigWith(t *testing.T, secret, chars string) string {
	t.Helper()
	for i := range 1000 {
		sig := segments(hs256(secret, goodHeader, payload(map[string]string{"jti": fmt.Sprintf(`"j%d"`, i)}, "")))[2]
		if strings.ContainsAny(sig, chars) {
			return sig
		}
	}
	t.Fatal("no signature with the characters")
	return ""
}

func mustB64(t *testing.T, s string) []byte {
	t.Helper()
	b, err := b64.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// derSignature re-encodes a P-256 r||s signature as ASN.1 DER, the form crypto.Signer returns.
func derSignature(t *testing.T, sig []byte) []byte {
	t.Helper()
	der, err := asn1.Marshal(struct{ R, S *big.Int }{new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])})
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// malleate replaces s by n-s in a P-256 r||s signature. (r, n-s) is another valid signature
// of the same hash: ECDSA is malleable and JWS does not forbid it, so the same claims can
// arrive under two encodings. A cache keyed by token bytes treats them as two tokens, which is
// harmless since both are genuine.
func malleate(sig []byte) []byte {
	n := elliptic.P256().Params().N
	s := new(big.Int).Sub(n, new(big.Int).SetBytes(sig[32:]))
	out := slices.Clone(sig)
	s.FillBytes(out[32:])
	return out
}

func TestValidate(t *testing.T) {
	now := testNow()
	tests := []struct {
		name   string
		claims func(*Claims)
		expect func(*Expect)
		want   Reason
	}{
		{"a current access token is valid", nil, nil, ""},
		{"an expired token is refused", func(c *Claims) { c.ExpiresAt = now.Add(-time.Minute) }, nil, ReasonExpired},
		{"a token at its exact exp is refused", func(c *Claims) { c.ExpiresAt = now }, func(e *Expect) { e.Leeway = 0 }, ReasonExpired},
		{"a token one second before exp is valid", func(c *Claims) { c.ExpiresAt = now.Add(time.Second) }, func(e *Expect) { e.Leeway = 0 }, ""},
		{"a token expired within the leeway is valid", func(c *Claims) { c.ExpiresAt = now.Add(-20 * time.Second) }, nil, ""},
		{"a negative leeway counts as zero", func(c *Claims) { c.ExpiresAt = now.Add(time.Second) }, func(e *Expect) { e.Leeway = -time.Hour }, ""},
		{"a token without exp is refused", func(c *Claims) { c.ExpiresAt = time.Time{} }, nil, ReasonMissingClaim},
		{"a token whose nbf is ahead beyond the leeway is refused", func(c *Claims) { c.NotBefore = now.Add(time.Minute) }, nil, ReasonNotYetValid},
		{"a token whose nbf is ahead within the leeway is valid", func(c *Claims) { c.NotBefore = now.Add(20 * time.Second) }, nil, ""},
		{"a token issued in the future beyond the leeway is refused", func(c *Claims) { c.IssuedAt = now.Add(time.Minute) }, nil, ReasonNotYetValid},
		{"a token without iat is valid", func(c *Claims) { c.IssuedAt = time.Time{} }, nil, ""},
		{"a token without sub is refused", func(c *Claims) { c.Subject = "" }, nil, ReasonMissingClaim},
		{"a token without jti is refused", func(c *Claims) { c.ID = "" }, nil, ReasonMissingClaim},
		{"another issuer is refused", func(c *Claims) { c.Issuer = "https://evil.example" }, nil, ReasonBadIssuer},
		{"an issuer differing only by a trailing slash is refused", func(c *Claims) { c.Issuer = testIssuer + "/" }, nil, ReasonBadIssuer},
		{"an empty expected issuer refuses everything", nil, func(e *Expect) { e.Issuer = "" }, ReasonBadIssuer},
		{"another audience is refused", func(c *Claims) { c.Audience = []string{"other"} }, nil, ReasonBadAudience},
		{"a token without aud is refused when audiences are expected", func(c *Claims) { c.Audience = nil }, nil, ReasonBadAudience},
		{"one matching audience among several is enough", func(c *Claims) { c.Audience = []string{"x", testAudience} }, func(e *Expect) { e.Audiences = []string{"y", testAudience} }, ""},
		{"no expected audiences means aud is not checked", func(c *Claims) { c.Audience = nil }, func(e *Expect) { e.Audiences = nil }, ""},
		{"an expected type other than access or refresh refuses everything", nil, func(e *Expect) { e.Type = "id" }, ReasonWrongType},
		{"a sub with CR LF is refused (it would inject an identity header)", func(c *Claims) { c.Subject = "alice\r\nX-Auth-Request-Groups: admin" }, nil, ReasonBadClaim},
		{"a sub with a NUL is refused", func(c *Claims) { c.Subject = "alice\x00admin" }, nil, ReasonBadClaim},
		{"an email with a newline is refused", func(c *Claims) { c.Email = "a@example.test\nX: y" }, nil, ReasonBadClaim},
		{"a group with DEL is refused", func(c *Claims) { c.Groups = []string{"dev", "ad\x7fmin"} }, nil, ReasonBadClaim},
		{"a sub with a tab is refused", func(c *Claims) { c.Subject = "al\tice" }, nil, ReasonBadClaim},
		{"a sub with non-ASCII letters is valid", func(c *Claims) { c.Subject = "zoë" }, nil, ""},
		{"an exp beyond MaxLifetime plus leeway is refused", func(c *Claims) { c.ExpiresAt = now.Add(5*time.Minute + 31*time.Second) },
			func(e *Expect) { e.MaxLifetime = 5 * time.Minute }, ReasonLifetime},
		{"an exp at MaxLifetime plus leeway is valid", func(c *Claims) { c.ExpiresAt = now.Add(5*time.Minute + 30*time.Second) },
			func(e *Expect) { e.MaxLifetime = 5 * time.Minute }, ""},
		{"an exp ten years ahead is valid without MaxLifetime", func(c *Claims) { c.ExpiresAt = now.AddDate(10, 0, 0) }, nil, ""},
		{"an exp ten years ahead is refused with MaxLifetime", func(c *Claims) { c.ExpiresAt = now.AddDate(10, 0, 0) },
			func(e *Expect) { e.MaxLifetime = time.Hour }, ReasonLifetime},
		{"a zero Now means the current time", func(c *Claims) { c.ExpiresAt = time.Now().Add(-time.Hour) }, func(e *Expect) { e.Now = time.Time{} }, ReasonExpired},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := accessClaims()
			if tt.claims != nil {
				tt.claims(c)
			}
			e := expect(TokenTypeAccess)
			if tt.expect != nil {
				tt.expect(&e)
			}
			tok := &Token{header: Header{Alg: keywardv1.AlgorithmHS256, KID: hsKID, Typ: TypeAccess}, Claims: *c}
			if got := ReasonOf(Validate(tok, e)); got != tt.want {
				t.Fatalf("reason = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestKindOf(t *testing.T) {
	for typ, want := range map[string]string{
		"at+jwt": TokenTypeAccess, "AT+JWT": TokenTypeAccess, "application/at+jwt": TokenTypeAccess, "Application/At+Jwt": TokenTypeAccess,
		"rt+jwt": TokenTypeRefresh, "application/RT+JWT": TokenTypeRefresh,
		"": "", "JWT": "", "at+jwt ": "", "application/": "", "x/at+jwt": "", "id_token+jwt": "",
	} {
		if got := KindOf(typ); got != want {
			t.Errorf("KindOf(%q) = %q, want %q", typ, got, want)
		}
	}
}

func TestClaimsJSON(t *testing.T) {
	t.Run("claims round-trip through JSON", func(t *testing.T) {
		c := refreshClaims()
		c.NotBefore = testNow()
		c.Extra["nested"] = map[string]any{"b": []any{json.Number("1"), "x"}, "a": true}
		data, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		var back Claims
		if err := json.Unmarshal(data, &back); err != nil {
			t.Fatal(err)
		}
		again, _ := json.Marshal(&back)
		if !bytes.Equal(data, again) {
			t.Fatalf("re-encoded\n%s\nwant\n%s", again, data)
		}
		if !back.ExpiresAt.Equal(c.ExpiresAt) || back.Generation != 3 || back.Extra["level"] != json.Number("3") {
			t.Fatalf("decoded %+v", back)
		}
	})

	tests := []struct {
		name string
		json string
		want func(*Claims) bool // nil: decoding must fail
	}{
		{"a single string aud becomes a one-element audience", `{"aud":"api"}`, func(c *Claims) bool { return slices.Equal(c.Audience, []string{"api"}) }},
		{"an aud array is read in order", `{"aud":["a","b"]}`, func(c *Claims) bool { return slices.Equal(c.Audience, []string{"a", "b"}) }},
		{"an aud number is refused", `{"aud":1}`, nil},
		{"an aud boolean is refused", `{"aud":true}`, nil},
		{"an aud nested array is refused", `{"aud":[["a"]]}`, nil},
		{"an exp of zero is read as the epoch", `{"exp":0}`, func(c *Claims) bool { return c.ExpiresAt.Unix() == 0 && !c.ExpiresAt.IsZero() }},
		{"an exp of 1.0 is refused", `{"exp":1.0}`, nil},
		{"an exp of 1e3 is refused", `{"exp":1e3}`, nil},
		{"a registered claim never lands in Extra", `{"sub":"a","x":1}`, func(c *Claims) bool { return len(c.Extra) == 1 && c.Extra["x"] == json.Number("1") }},
		{"a big extra number keeps its exact digits", `{"n":123456789012345678901234567890}`, func(c *Claims) bool { return c.Extra["n"] == json.Number("123456789012345678901234567890") }},
		{"duplicate names are refused through json.Unmarshal too", `{"sub":"a","sub":"b"}`, nil},
		{"a negative gen is refused", `{"gen":-1}`, nil},
		{"a null email is refused", `{"email":null}`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c Claims
			err := json.Unmarshal([]byte(tt.json), &c)
			switch {
			case tt.want == nil && err == nil:
				t.Fatalf("decoded %+v", c)
			case tt.want != nil && err != nil:
				t.Fatal(err)
			case tt.want != nil && !tt.want(&c):
				t.Fatalf("decoded %+v", c)
			}
		})
	}

	t.Run("aud is always written as an array", func(t *testing.T) {
		data, _ := json.Marshal(Claims{Audience: []string{"api"}})
		if string(data) != `{"aud":["api"]}` {
			t.Fatalf("got %s", data)
		}
	})
}

func TestErrorsNeverQuoteTheToken(t *testing.T) {
	const marker = "SECRETMARKER"
	tokens := []string{
		hs256(hsSecret, `{"alg":"`+marker+`","kid":"hs-key","typ":"at+jwt"}`, payload(nil, "")),
		hs256(hsSecret, `{"alg":"HS256","kid":"`+marker+`","typ":"at+jwt"}`, payload(nil, "")),
		hs256(hsSecret, `{"alg":"HS256","kid":"hs-key","typ":"`+marker+`"}`, payload(nil, "")),
		hs256(hsSecret, `{"alg":"HS256","kid":"hs-key","typ":"at+jwt","`+marker+`":1}`, payload(nil, "")),
		hs256(hsSecret, goodHeader, payload(map[string]string{"iss": `"` + marker + `"`}, "")),
		hs256(hsSecret, goodHeader, payload(map[string]string{"sub": marker}, "")),
		hs256(hsSecret, goodHeader, payload(nil, `,"`+marker+`":1,"`+marker+`":2`)),
		hs256(hsSecret, goodHeader, payload(map[string]string{"exp": `"` + marker + `"`}, "")),
		hs256(hsSecret, goodHeader, payload(nil, "")+marker),
	}
	for _, raw := range tokens {
		err := check([]byte(raw), hsKey(t), expect(TokenTypeAccess))
		if err == nil {
			t.Fatal("token accepted")
		}
		if strings.Contains(err.Error(), marker) || strings.Contains(err.Error(), "hs-key") {
			t.Errorf("error quotes the token: %v", err)
		}
	}
}

func TestVerifyKeysFromJWKS(t *testing.T) {
	es := generate(t, keywardv1.AlgorithmES256)
	rs := generate(t, keywardv1.AlgorithmRS256)
	ed := generate(t, keywardv1.AlgorithmEdDSA)
	publicJWK := func(g generated) map[string]any {
		pub, err := keys.Public(mustKey(t, &g.stored))
		if err != nil {
			t.Fatal(err)
		}
		data, _ := json.Marshal(pub)
		var m map[string]any
		if err := json.Unmarshal(data, &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	privateJWK := func(g generated) map[string]any {
		var m map[string]any
		if err := json.Unmarshal(g.stored.JWK, &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	set := func(ks ...map[string]any) string {
		data, err := json.Marshal(map[string]any{"keys": ks})
		if err != nil {
			t.Fatal(err)
		}
		return string(data)
	}
	with := func(m map[string]any, kv ...any) map[string]any {
		m = maps.Clone(m)
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == nil {
				delete(m, kv[i].(string))
			} else {
				m[kv[i].(string)] = kv[i+1]
			}
		}
		return m
	}
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	smallMap := map[string]any{
		"kty": "RSA", "kid": "small", "alg": "RS256",
		"n": b64.EncodeToString(small.N.Bytes()), "e": b64.EncodeToString(big.NewInt(int64(small.E)).Bytes()),
	}

	esPub, rsPub, edPub := publicJWK(es), publicJWK(rs), publicJWK(ed)
	badX := with(esPub, "x", b64.EncodeToString(bytes.Repeat([]byte{1}, 32)))

	tests := []struct {
		name string
		jwks string
		want Reason // "" for success
		kids []string
	}{
		{"a published key set is read", set(esPub, rsPub, edPub), "", []string{es.stored.KID, rs.stored.KID, ed.stored.KID}},
		{"the JWKS keys.KeySet publishes is read", publishedJWKS(t, es, rs, ed), "", []string{es.stored.KID, rs.stored.KID, ed.stored.KID}},
		{"a set without keys is empty", `{"keys":[]}`, "", nil},
		{"key_ops with verify is accepted", set(with(esPub, "key_ops", []string{"verify"})), "", []string{es.stored.KID}},
		{"an ECDSA private key is refused", set(privateJWK(es)), ReasonBadKey, nil},
		{"an RSA private key is refused", set(privateJWK(rs)), ReasonBadKey, nil},
		{"an Ed25519 private key is refused", set(privateJWK(ed)), ReasonBadKey, nil},
		{"one private key among public keys refuses the set", set(esPub, privateJWK(rs)), ReasonBadKey, nil},
		{"a secret key is refused", set(map[string]any{"kty": "oct", "kid": "s", "alg": "HS256", "k": b64.EncodeToString([]byte(hsSecret))}), ReasonBadKey, nil},
		{"an HS256 key without material is refused", set(map[string]any{"kty": "oct", "kid": "s", "alg": "HS256"}), ReasonUnsupportedAlg, nil},
		{"a key without kid is refused", set(with(esPub, "kid", nil)), ReasonBadKey, nil},
		{"a key without alg is refused", set(with(esPub, "alg", nil)), ReasonBadKey, nil},
		{"a key with alg none is refused", set(with(esPub, "alg", "none")), ReasonUnsupportedAlg, nil},
		{"a key with an unknown alg is refused", set(with(esPub, "alg", "ES521")), ReasonUnsupportedAlg, nil},
		{"a P-256 key labelled ES384 is refused", set(with(esPub, "alg", "ES384")), ReasonBadKey, nil},
		{"an RSA key labelled ES256 is refused", set(with(rsPub, "alg", "ES256")), ReasonBadKey, nil},
		{"an encryption key is refused", set(with(esPub, "use", "enc")), ReasonBadKey, nil},
		{"key_ops without verify is refused", set(with(esPub, "key_ops", []string{"encrypt"})), ReasonBadKey, nil},
		{"a point off the curve is refused", set(badX), ReasonBadKey, nil},
		{"a 1024-bit RSA key is refused", set(smallMap), ReasonBadKey, nil},
		{"a repeated kid is refused", set(esPub, with(edPub, "kid", es.stored.KID)), ReasonBadKey, nil},
		{"a set without a keys array is refused", `{"keys":{}}`, ReasonBadKey, nil},
		{"an object without keys is refused", `{}`, ReasonBadKey, nil},
		{"a single JWK is not a set", mustJSON(t, esPub), ReasonBadKey, nil},
		{"duplicate members in a key are refused", strings.Replace(set(esPub), `"kty":"EC"`, `"kty":"EC","kty":"RSA"`, 1), ReasonBadKey, nil},
		{"a kid that is not a string is refused", set(with(esPub, "kid", 7)), ReasonBadKey, nil},
		{"invalid JSON is refused", `{"keys":[`, ReasonBadKey, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := VerifyKeysFromJWKS([]byte(tt.jwks))
			if r := ReasonOf(err); r != tt.want {
				t.Fatalf("reason = %q (%v), want %q", r, err, tt.want)
			}
			if err != nil {
				return
			}
			if kids := slices.Sorted(maps.Keys(got)); !slices.Equal(kids, slices.Sorted(slices.Values(tt.kids))) {
				t.Fatalf("kids = %v, want %v", kids, tt.kids)
			}
		})
	}

	t.Run("keys read from a JWKS verify their tokens", func(t *testing.T) {
		vks, err := VerifyKeysFromJWKS([]byte(publishedJWKS(t, es, rs, ed)))
		if err != nil {
			t.Fatal(err)
		}
		for _, g := range []generated{es, rs, ed} {
			raw, err := g.signer.Sign(TypeAccess, accessClaims())
			if err != nil {
				t.Fatal(err)
			}
			tok, err := Parse([]byte(raw), 0)
			if err != nil {
				t.Fatal(err)
			}
			if err := Verify(tok, vks[tok.Header().KID]); err != nil {
				t.Fatalf("%s: %v", g.alg, err)
			}
		}
	})
}

func publishedJWKS(t *testing.T, gs ...generated) string {
	t.Helper()
	var ks keys.KeySet
	for _, g := range gs {
		ks.Keys = append(ks.Keys, g.stored)
	}
	data, err := ks.PublicJWKS()
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func TestVerifyKeyFromStored(t *testing.T) {
	t.Run("an HS key verifies with its secret", func(t *testing.T) {
		g := generate(t, keywardv1.AlgorithmHS512)
		if _, ok := g.verify.Key.([]byte); !ok || g.verify.Alg != keywardv1.AlgorithmHS512 || g.verify.KID != g.stored.KID {
			t.Fatalf("verify key = %+v", g.verify)
		}
	})
	t.Run("a public-only key still verifies", func(t *testing.T) {
		g := generate(t, keywardv1.AlgorithmPS256)
		pub, err := keys.Public(mustKey(t, &g.stored))
		if err != nil {
			t.Fatal(err)
		}
		stored := g.stored
		stored.JWK, _ = json.Marshal(pub)
		stored.PublicOnly = true
		vk, err := VerifyKeyFromStored(&stored)
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := g.signer.Sign(TypeAccess, accessClaims())
		if err := check([]byte(raw), vk, expect(TokenTypeAccess)); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("a stored key whose JWK kid differs is refused", func(t *testing.T) {
		g := generate(t, keywardv1.AlgorithmES256)
		stored := g.stored
		stored.KID = "another"
		if _, err := VerifyKeyFromStored(&stored); ReasonOf(err) != ReasonBadKey {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("a verify key refuses a private key", func(t *testing.T) {
		g := generate(t, keywardv1.AlgorithmES256)
		if _, err := NewVerifyKey("k", keywardv1.AlgorithmES256, g.raw); ReasonOf(err) != ReasonBadKey {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("Verify with a nil key reports an unknown kid", func(t *testing.T) {
		tok, err := Parse([]byte(hs256(hsSecret, goodHeader, payload(nil, ""))), 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := Verify(tok, nil); ReasonOf(err) != ReasonUnknownKID {
			t.Fatalf("got %v", err)
		}
	})
}

func TestParseSizeCap(t *testing.T) {
	raw := []byte(hs256(hsSecret, goodHeader, payload(nil, "")))
	if _, err := Parse(raw, len(raw)); err != nil {
		t.Fatalf("a token of exactly maxLen bytes: %v", err)
	}
	if _, err := Parse(raw, len(raw)-1); ReasonOf(err) != ReasonOversize {
		t.Fatalf("a token one byte over maxLen: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(hs256(hsSecret, goodHeader, payload(nil, ""))))
	f.Add([]byte(hs256(hsSecret, goodHeader, payload(nil, `,"x":{"a":[1,2.5e3,"\u00e9\ud83d\ude00",null,true]},"aud":"api","nbf":0,"gen":7`))))
	f.Add([]byte(hs256(hsSecret, `{"alg":"none","kid":"k"}`, `{}`)))
	f.Add([]byte(hs256(hsSecret, goodHeader, `{"exp":1.5}`)))
	f.Add([]byte(`{"payload":"e30","signatures":[]}`))
	f.Add([]byte("a.b.c.d.e"))
	f.Add([]byte("eyJhbGciOiJIUzI1NiJ9..AA"))
	g := generate(f, keywardv1.AlgorithmES256)
	raw, _ := g.signer.Sign(TypeAccess, accessClaims())
	f.Add([]byte(raw))

	f.Fuzz(func(t *testing.T, raw []byte) {
		tok, err := Parse(raw, 0)
		if err != nil {
			if ReasonOf(err) == "" {
				t.Fatalf("error without a reason: %v", err)
			}
			return
		}
		// Accepted input is canonical: each segment is the only encoding of its bytes.
		_, payload, err := parseJWS(raw, 0)
		if err != nil {
			t.Fatal(err)
		}
		seg := bytes.Split(raw, []byte("."))
		if string(seg[1]) != b64.EncodeToString(payload) || string(seg[2]) != b64.EncodeToString(tok.signature) {
			t.Fatal("segments do not re-encode to the input")
		}
		if !bytes.Equal(tok.signingInput, raw[:len(seg[0])+1+len(seg[1])]) {
			t.Fatal("signing input differs from the input")
		}
		h := tok.Header()
		if !supported(h.Alg) || h.KID == "" {
			t.Fatalf("accepted header %+v", h)
		}
		// Accepted claims re-encode, and the re-encoding reads back to itself.
		enc, err := tok.Claims.MarshalJSON()
		if err != nil {
			t.Fatalf("accepted claims do not re-encode: %v", err)
		}
		var back Claims
		if err := back.decode(enc); err != nil {
			t.Fatalf("re-encoded claims do not decode: %v\n%s", err, enc)
		}
		again, err := back.MarshalJSON()
		if err != nil || !bytes.Equal(enc, again) {
			t.Fatalf("re-encoding is unstable:\n%s\n%s", enc, again)
		}
	})
}

// FuzzClaimsJSON fuzzes the strict JSON layer directly, against encoding/json: whatever the
// strict reader accepts, encoding/json must accept too, and it must re-encode stably.
func FuzzClaimsJSON(f *testing.F) {
	f.Add([]byte(payload(nil, "")))
	f.Add([]byte(`{"aud":"a","x":{"y":[1,-0.5e-3,"\u00e9\ud83d\ude00",null,true,false,{}]},"exp":0}`))
	f.Add([]byte(`{"a":1,"\u0061":2}`))
	f.Add([]byte(`{"sub":"\ud800"}`))
	f.Add([]byte("{\"sub\":\"\xed\xa0\x80\"}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var c Claims
		if err := c.decode(data); err != nil {
			return
		}
		if !json.Valid(data) {
			t.Fatalf("strict reader accepted what encoding/json refuses: %q", data)
		}
		enc, err := c.MarshalJSON()
		if err != nil {
			t.Fatalf("accepted claims do not re-encode: %v", err)
		}
		var back Claims
		if err := back.decode(enc); err != nil {
			t.Fatalf("re-encoded claims do not decode: %v\n%s", err, enc)
		}
		if again, err := back.MarshalJSON(); err != nil || !bytes.Equal(enc, again) {
			t.Fatalf("re-encoding is unstable:\n%s\n%s", enc, again)
		}
	})
}

// Benchmarks. Run with: go test -run '^$' -bench . -benchtime 2s ./internal/token/

// tokenPool signs n distinct access tokens, so that each benchmark iteration checks a token
// as a cache miss would: Parse, Verify and Validate from scratch.
func tokenPool(b *testing.B, g generated, n int) [][]byte {
	b.Helper()
	pool := make([][]byte, n)
	for i := range pool {
		c := accessClaims()
		c.ID = fmt.Sprintf("jti-%d", i)
		raw, err := g.signer.Sign(TypeAccess, c)
		if err != nil {
			b.Fatal(err)
		}
		pool[i] = []byte(raw)
	}
	return pool
}

func BenchmarkVerifyES256(b *testing.B) {
	g := generate(b, keywardv1.AlgorithmES256)
	pool := tokenPool(b, g, 64)
	pub := g.verify.Key.(*ecdsa.PublicKey)
	e := expect(TokenTypeAccess)

	b.Run("stdlib-ecdsa", func(b *testing.B) {
		type prepared struct {
			hash []byte
			r, s *big.Int
		}
		ps := make([]prepared, len(pool))
		for i, raw := range pool {
			seg := bytes.Split(raw, []byte("."))
			sig, _ := b64.DecodeString(string(seg[2]))
			h := sha256.Sum256(raw[:len(seg[0])+1+len(seg[1])])
			ps[i] = prepared{h[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])}
		}
		i := 0
		for b.Loop() {
			p := ps[i%len(ps)]
			if !ecdsa.Verify(pub, p.hash, p.r, p.s) {
				b.Fatal("verify failed")
			}
			i++
		}
	})
	b.Run("parse+verify", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if err := check(pool[i%len(pool)], g.verify, e); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("jwx", func(b *testing.B) {
		b.ReportAllocs()
		jwa, _ := keys.JWA(g.alg)
		i := 0
		for b.Loop() {
			if _, err := jws.Verify(pool[i%len(pool)], jws.WithKey(jwa, pub)); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}

// BenchmarkVerify measures a cache-miss check (Parse, Verify, Validate) per algorithm.
func BenchmarkVerify(b *testing.B) {
	for _, alg := range keywardv1.Algorithms {
		b.Run(string(alg), func(b *testing.B) {
			g := generate(b, alg)
			pool := tokenPool(b, g, 16)
			e := expect(TokenTypeAccess)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if err := check(pool[i%len(pool)], g.verify, e); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}

// BenchmarkParse measures the strict pre-check and claim decoding alone.
func BenchmarkParse(b *testing.B) {
	g := generate(b, keywardv1.AlgorithmES256)
	raw := tokenPool(b, g, 1)[0]
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(raw, 0); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSignES256 compares Signer.Sign (jws.Sign) with the same token built on standard
// library primitives, the alternative the Signer's documentation weighs.
func BenchmarkSignES256(b *testing.B) {
	g := generate(b, keywardv1.AlgorithmES256)
	c := accessClaims()
	b.Run("jws.Sign", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := g.signer.Sign(TypeAccess, c); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("stdlib", func(b *testing.B) {
		b.ReportAllocs()
		priv := g.raw.(*ecdsa.PrivateKey)
		header := b64.EncodeToString([]byte(fmt.Sprintf(`{"alg":"ES256","kid":%q,"typ":"at+jwt"}`, g.stored.KID)))
		for b.Loop() {
			payload, err := c.MarshalJSON()
			if err != nil {
				b.Fatal(err)
			}
			buf := append([]byte(header), '.')
			buf = b64.AppendEncode(buf, payload)
			h := sha256.Sum256(buf)
			r, s, err := ecdsa.Sign(rand.Reader, priv, h[:])
			if err != nil {
				b.Fatal(err)
			}
			sig := make([]byte, 64)
			r.FillBytes(sig[:32])
			s.FillBytes(sig[32:])
			buf = append(buf, '.')
			_ = string(b64.AppendEncode(buf, sig))
		}
	})
}

func TestValidateExternalAccess(t *testing.T) {
	tests := []struct {
		name   string
		typ    string
		claims func(*Claims)
		want   Reason
	}{
		{"a keyward access token is valid", TypeAccess, nil, ""},
		{"a token without typ and token_type is valid", "", func(c *Claims) { c.TokenType = "" }, ""},
		{"a token with typ JWT is valid", "JWT", func(c *Claims) { c.TokenType = "" }, ""},
		{"a token with typ application/at+jwt is valid", "application/at+jwt", nil, ""},
		{"a token without jti is valid", "", func(c *Claims) { c.ID = "" }, ""},
		{"a refresh typ is refused", TypeRefresh, func(c *Claims) { c.TokenType = "" }, ReasonWrongType},
		{"a refresh token_type is refused", "", func(c *Claims) { c.TokenType = TokenTypeRefresh }, ReasonWrongType},
		{"an id_token-like typ is refused", "id+jwt", nil, ReasonWrongType},
		{"a token without sub is still refused", "", func(c *Claims) { c.Subject = "" }, ReasonMissingClaim},
		{"another issuer is still refused", "", func(c *Claims) { c.Issuer = "https://evil.example" }, ReasonBadIssuer},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := accessClaims()
			if tt.claims != nil {
				tt.claims(c)
			}
			e := expect(TokenTypeAccess)
			e.Type = TypeExternalAccess
			tok := &Token{header: Header{Alg: keywardv1.AlgorithmES256, KID: "k", Typ: tt.typ}, Claims: *c}
			if got := ReasonOf(Validate(tok, e)); got != tt.want {
				t.Fatalf("reason = %q, want %q", got, tt.want)
			}
		})
	}
}
