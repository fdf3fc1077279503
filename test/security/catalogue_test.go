package security

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc/codes"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
	"github.com/keyward/keyward/internal/testsupport"
)

// attack is one catalogue entry.
type attack struct {
	category string
	name     string
	// source is the RFC section, advisory or CVE the case comes from.
	source string
	// tok builds the token (after setup, once per case). nil for transport cases, which
	// build their own requests.
	tok func() string
	// want is the validator's answer on both front ends (200, 401 or 403); grpcWant and
	// httpWant override it for one front end.
	want     int
	httpWant int
	grpcWant codes.Code
	// httpResetOK accepts a connection reset instead of httpWant: the server refused a
	// request it would not read in full, and the reset may overtake its answer.
	httpResetOK bool
	// verify is the status of the issuer's /api/token/verify/ (0: the channel does not apply,
	// as for transport cases); a 401 must carry code token_not_valid. verifyAt is the issuer
	// asked, "main" when nil.
	verify   int
	verifyAt func() *issuerKeys
	// path is the original path, /api/items (issuer "main") when empty; host the original
	// host, app.example.test when empty.
	path string
	host string
	// Transport cases: the raw HTTP request (and whether it comes from the trusted proxy)
	// and the CheckRequest. A nil function with a non-nil tok uses the default request; a
	// case without tok and without one of them does not run on that front end.
	http func() (raw string, trusted bool)
	grpc func() *authv3.CheckRequest
	// noHTTP and noGRPC say why a token case cannot be sent on a front end (bytes HTTP
	// header fields or protobuf strings cannot carry).
	noHTTP, noGRPC string
	// httpCheck and grpcCheck assert more of an answer (identity headers).
	httpCheck func(http.Header) error
	grpcCheck func(*authv3.CheckResponse) error
}

// Channels.
const (
	chHTTP   = "http"
	chGRPC   = "grpc"
	chVerify = "verify"
)

func (a *attack) channels() []string {
	var out []string
	if a.noHTTP == "" && (a.tok != nil || a.http != nil) {
		out = append(out, chHTTP)
	}
	if a.noGRPC == "" && (a.tok != nil || a.grpc != nil) {
		out = append(out, chGRPC)
	}
	if a.verify != 0 {
		out = append(out, chVerify)
	}
	return out
}

// Answers.
const (
	allow = 200
	deny  = 401 // the validator's 401 invalid_token; the issuer's 401 token_not_valid
	forb  = 403
)

func m(set map[string]string) func() string {
	return func() string { return mint(suite.main, set, nil) }
}

func without(names ...string) func() string {
	return func() string { return mint(suite.main, nil, names) }
}

// withHeaderJSON signs a token of main with the given header JSON (and default claims).
func withHeaderJSON(h string) func() string {
	return func() string { return compact(suite.main, h, payloadOf(suite.main, nil)) }
}

// withPayloadJSON signs a token of main with the given payload JSON.
func withPayloadJSON(p func() string) func() string {
	return func() string { return compact(suite.main, headerOf(suite.main), p()) }
}

func mainHeader(extra string) string {
	return `{"alg":"ES256","kid":` + quote(suite.main.kid) + `,"typ":"at+jwt"` + extra + `}`
}

// hs signs a token with HMAC-SHA256 under secret, with the header given.
func hs(header string, secret []byte) string {
	return seal(&issuerKeys{alg: keywardv1.AlgorithmHS256, priv: secret}, enc(header)+"."+enc(payloadOf(suite.main, nil)))
}

// servedJWKS is the issuer main's /.well-known/jwks.json.
func servedJWKS() []byte {
	resp, err := httpClient.Get(suite.main.base() + ".well-known/jwks.json")
	if err != nil {
		panic(err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		panic(fmt.Sprintf("jwks: %d %v", resp.StatusCode, err))
	}
	return b
}

func rsaPublicPEM(pkix bool) []byte {
	pub := &suite.rsa.rsaKey().PublicKey
	if pkix {
		der, _ := x509.MarshalPKIXPublicKey(pub)
		return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	}
	return pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: x509.MarshalPKCS1PublicKey(pub)})
}

func ecPublicPEM() []byte {
	der, _ := x509.MarshalPKIXPublicKey(&suite.main.ec().PublicKey)
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

func ecPoint() []byte {
	b, _ := suite.main.ec().PublicKey.Bytes()
	return b
}

// attacker is a key nobody trusts.
var attacker, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)

func attackerKeys(kid string) *issuerKeys {
	return &issuerKeys{name: "attacker", iss: suite.main.iss, kid: kid, alg: keywardv1.AlgorithmES256, priv: attacker}
}

func attackerJWK() string {
	x := b64.EncodeToString(attacker.X.FillBytes(make([]byte, 32)))
	y := b64.EncodeToString(attacker.Y.FillBytes(make([]byte, 32)))
	return `{"kty":"EC","crv":"P-256","x":"` + x + `","y":"` + y + `"}`
}

func attackerCert() string {
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &attacker.PublicKey, attacker)
	if err != nil {
		panic(err)
	}
	return base64.StdEncoding.EncodeToString(der)
}

// sigWith returns a valid token of main with its signature replaced by f(signature).
func sigWith(f func(sig []byte) []byte) func() string {
	return func() string {
		tok := mint(suite.main, nil, nil)
		return withSig(tok, f(sigOf(tok)))
	}
}

func rs(r, s *big.Int) []byte { return p1363(r, s) }

func bigOf(b []byte) *big.Int { return new(big.Int).SetBytes(b) }

// nested is a JSON array nested n deep.
func nested(n int) string { return strings.Repeat("[", n) + strings.Repeat("]", n) }

// manyClaims is a payload of main with n extra claims.
func manyClaims(n int) func() string {
	return func() string {
		set := map[string]string{}
		for i := range n {
			set[fmt.Sprintf("c%05d", i)] = "1"
		}
		return mint(suite.main, set, nil)
	}
}

// catalogue is the attack table. Sources: RFC 7515 (JWS), 7516 (JWE), 7518 (JWA), 7519
// (JWT), 7797 (unencoded payload), 8259 (JSON), 8725 (JWT BCP), 9068 (access-token
// profile), 4648 (base64), 6750 (bearer), 9110/9112 (HTTP), and the CVEs and advisories
// named per case.
func catalogue() []attack {
	mainKID := func() string { return suite.main.kid }
	cs := []attack{
		// Positive controls: if everything were denied, these fail.
		{category: "control", name: "a token the issuer issued at login is accepted", source: "RFC 6750 §2.1; RFC 9068 §4",
			tok: func() string { return live().access }, want: allow, verify: allow,
			httpCheck: identityIs("alice"), grpcCheck: grpcIdentityIs("alice")},
		{category: "control", name: "a token minted with the real key and keyward's claims is accepted", source: "RFC 7515 §5.2; RFC 9068 §4",
			tok: m(nil), want: allow, verify: allow},
		{category: "control", name: "a token of the RS256 issuer is accepted on its path", source: "RFC 7518 §3.3",
			tok: func() string { return mint(suite.rsa, nil, nil) }, path: "/rsa/x", want: allow, verify: allow, verifyAt: func() *issuerKeys { return suite.rsa }},
		{category: "control", name: "a token of the EdDSA issuer is accepted on its path", source: "RFC 8037 §3.1",
			tok: func() string { return mint(suite.ed, nil, nil) }, path: "/ed/x", want: allow, verify: allow, verifyAt: func() *issuerKeys { return suite.ed }},

		// Segment and serialization tricks.
		{category: "serialization", name: "JWS flattened JSON serialization of a valid token", source: "RFC 7515 §7.2.2; RFC 8725 §2.8; jwx GHSA-7f3w-gp5j-v3q9 (JSON serialization claims substitution)",
			tok: func() string {
				p := segs(mint(suite.main, nil, nil))
				return `{"protected":"` + p[0] + `","payload":"` + p[1] + `","signature":"` + p[2] + `"}`
			}, want: deny, verify: deny},
		{category: "serialization", name: "JWS general JSON serialization with an unprotected payload substitution", source: "RFC 7515 §7.2.1; RFC 8725 §2.8",
			tok: func() string {
				p := segs(mint(suite.main, nil, nil))
				return `{"payload":"` + enc(payloadOf(suite.main, map[string]string{"sub": `"admin"`})) + `","signatures":[{"protected":"` + p[0] + `","signature":"` + p[2] + `"}]}`
			}, want: deny, verify: deny},
		{category: "serialization", name: "JWE compact serialization (five segments)", source: "RFC 7516 §7.1; RFC 8725 §3.11",
			tok: func() string {
				return enc(`{"alg":"RSA-OAEP","enc":"A256GCM","kid":"`+suite.main.kid+`"}`) + "." + enc("key") + "." + enc("iv") + "." + enc(payloadOf(suite.main, nil)) + "." + enc("tag")
			}, want: deny, verify: deny},
		{category: "serialization", name: "JWE with dir and an empty encrypted key", source: "RFC 7516 §4.1.1; RFC 7518 §4.5",
			tok: func() string {
				return enc(`{"alg":"dir","enc":"A128CBC-HS256"}`) + ".." + enc("iv") + "." + enc(payloadOf(suite.main, nil)) + "." + enc("tag")
			}, want: deny, verify: deny},
		{category: "serialization", name: "a valid token with a trailing dot", source: "RFC 7515 §7.1",
			tok: func() string { return mint(suite.main, nil, nil) + "." }, want: deny, verify: deny},
		{category: "serialization", name: "a valid token with a leading dot", source: "RFC 7515 §7.1",
			tok: func() string { return "." + mint(suite.main, nil, nil) }, want: deny, verify: deny},
		{category: "serialization", name: "four segments: the signature repeated", source: "RFC 7515 §7.1",
			tok: func() string { t := mint(suite.main, nil, nil); return t + "." + segs(t)[2] }, want: deny, verify: deny},
		{category: "serialization", name: "two segments, no signature", source: "RFC 7515 §7.1; RFC 7519 §6 (unsecured JWT)",
			tok: func() string { p := segs(mint(suite.main, nil, nil)); return p[0] + "." + p[1] }, want: deny, verify: deny},
		{category: "serialization", name: "an empty signature segment", source: "RFC 7519 §6.1; CVE-2015-9235",
			tok: func() string { p := segs(mint(suite.main, nil, nil)); return p[0] + "." + p[1] + "." }, want: deny, verify: deny},
		{category: "serialization", name: "only dots", source: "RFC 7515 §7.1",
			tok: func() string { return ".." }, want: deny, verify: deny},
		{category: "serialization", name: "an empty header segment", source: "RFC 7515 §7.1",
			tok: func() string { t := mint(suite.main, nil, nil); return t[strings.IndexByte(t, '.'):] }, want: deny, verify: deny},
		{category: "serialization", name: "header and payload swapped", source: "RFC 7515 §5.2",
			tok: func() string { p := segs(mint(suite.main, nil, nil)); return p[1] + "." + p[0] + "." + p[2] }, want: deny, verify: deny},
		{category: "serialization", name: "a token of another issuer spliced with main's signature", source: "RFC 7515 §5.2",
			tok: func() string {
				a, b := segs(mint(suite.main, nil, nil)), segs(mint(suite.main, map[string]string{"sub": `"admin"`}, nil))
				return a[0] + "." + b[1] + "." + a[2]
			}, want: deny, verify: deny},

		// Base64 variants. Every one is signed over its exact bytes, so only the strict
		// decoder refuses it.
		{category: "base64", name: "padding on the header segment, signed as sent", source: "RFC 7515 §2 (base64url without padding); RFC 4648 §3.2",
			tok: func() string {
				h := base64.URLEncoding.EncodeToString([]byte(headerOf(suite.main) + " "))
				return seal(suite.main, h+"."+enc(payloadOf(suite.main, nil)))
			}, want: deny, verify: deny},
		{category: "base64", name: "padding on the payload segment, signed as sent", source: "RFC 7515 §2; RFC 4648 §3.2",
			tok: func() string {
				p := payloadOf(suite.main, nil)
				for len(p)%3 == 0 {
					p = p[:len(p)-1] + ` }`
				}
				return seal(suite.main, enc(headerOf(suite.main))+"."+base64.URLEncoding.EncodeToString([]byte(p)))
			}, want: deny, verify: deny},
		{category: "base64", name: "padding on the signature segment", source: "RFC 7515 §2; RFC 4648 §3.2",
			tok: func() string { return mint(suite.main, nil, nil) + "==" }, want: deny, verify: deny},
		{category: "base64", name: "the standard alphabet (+ and /) in the signature", source: "RFC 7515 §2; RFC 4648 §4 vs §5",
			tok: func() string { return stdAlphabet(suite.main) }, want: deny, verify: deny},
		{category: "base64", name: "the standard alphabet in the payload, signed as sent", source: "RFC 7515 §2; RFC 4648 §4",
			tok: func() string {
				for {
					p := payloadOf(suite.main, map[string]string{"x": quote(newJTI() + "?>~")})
					s := base64.RawStdEncoding.EncodeToString([]byte(p))
					if strings.ContainsAny(s, "+/") {
						return seal(suite.main, enc(headerOf(suite.main))+"."+s)
					}
				}
			}, want: deny, verify: deny},
		{category: "base64", name: "non-zero trailing bits in the signature (same bytes to a lenient decoder)", source: "RFC 4648 §3.5; RFC 7515 §2",
			tok: func() string { _, t := mintTrailingSig(suite.main); return t }, want: deny, verify: deny},
		{category: "base64", name: "non-zero trailing bits in the header, signed as sent", source: "RFC 4648 §3.5",
			tok: func() string {
				h := headerOf(suite.main)
				for len(h)%3 == 0 {
					h = h[:len(h)-1] + " }"
				}
				e := enc(h)
				last := strings.IndexByte(alphabet, e[len(e)-1])
				return seal(suite.main, e[:len(e)-1]+string(alphabet[last|1])+"."+enc(payloadOf(suite.main, nil)))
			}, want: deny, verify: deny},
		{category: "base64", name: "a space inside the payload segment", source: "RFC 4648 §3.3 (non-alphabet characters)",
			tok: func() string {
				p := segs(mint(suite.main, nil, nil))
				return p[0] + "." + p[1][:10] + " " + p[1][10:] + "." + p[2]
			}, want: deny, verify: deny},
		{category: "base64", name: "a tab inside the signature segment", source: "RFC 4648 §3.3",
			tok: func() string {
				p := segs(mint(suite.main, nil, nil))
				return p[0] + "." + p[1] + "." + p[2][:5] + "\t" + p[2][5:]
			}, want: deny, verify: deny},
		{category: "base64", name: "a newline inside the payload segment (MIME line breaks)", source: "RFC 4648 §3.1; RFC 2045 §6.8",
			tok: func() string {
				p := segs(mint(suite.main, nil, nil))
				return p[0] + "." + p[1][:8] + "\n" + p[1][8:] + "." + p[2]
			},
			noHTTP: "an HTTP field value cannot hold a newline", want: deny, verify: deny},
		{category: "base64", name: "CR LF inside the header segment", source: "RFC 4648 §3.1",
			tok: func() string {
				p := segs(mint(suite.main, nil, nil))
				return p[0][:8] + "\r\n" + p[0][8:] + "." + p[1] + "." + p[2]
			},
			noHTTP: "an HTTP field value cannot hold CR LF", want: deny, verify: deny},
		{category: "base64", name: "an impossible length (4n+1 characters) in the signature", source: "RFC 4648 §5",
			tok: func() string { return mint(suite.main, nil, nil) + "A" }, want: deny, verify: deny},
		{category: "base64", name: "a percent-encoded '=' in the signature", source: "RFC 3986 §2.1; RFC 7515 §2",
			tok: func() string { return mint(suite.main, nil, nil) + "%3D" }, want: deny, verify: deny},
		{category: "base64", name: "a non-ASCII fullwidth letter in the payload", source: "RFC 4648 §3.3",
			tok: func() string { p := segs(mint(suite.main, nil, nil)); return p[0] + "." + p[1] + "Ａ" + "." + p[2] }, want: deny, verify: deny},

		// JSON tricks, each signed with the real key.
		{category: "json", name: "duplicate alg in the header, none first", source: "RFC 7515 §4 (member names MUST be unique); RFC 8259 §4; CVE-2022-23540 class",
			tok: withHeaderJSON2(func() string { return `{"alg":"none","alg":"ES256","kid":` + quote(mainKID()) + `,"typ":"at+jwt"}` }), want: deny, verify: deny},
		{category: "json", name: "duplicate alg in the header, none last", source: "RFC 7515 §4; RFC 8259 §4",
			tok: withHeaderJSON2(func() string { return `{"alg":"ES256","kid":` + quote(mainKID()) + `,"typ":"at+jwt","alg":"none"}` }), want: deny, verify: deny},
		{category: "json", name: "duplicate kid in the header", source: "RFC 7515 §4",
			tok: withHeaderJSON2(func() string { return `{"alg":"ES256","kid":"x","kid":` + quote(mainKID()) + `,"typ":"at+jwt"}` }), want: deny, verify: deny},
		{category: "json", name: "a duplicate member spelled with an escape (\\u0061lg)", source: "RFC 8259 §7; RFC 7515 §4",
			tok: withHeaderJSON2(func() string {
				return `{"alg":"ES256","\u0061lg":"HS256","kid":` + quote(mainKID()) + `,"typ":"at+jwt"}`
			}), want: deny, verify: deny},
		{category: "json", name: "duplicate sub in the claims, the last one admin", source: "RFC 7519 §4 (claim names MUST be unique); RFC 8725 §3.10",
			tok: withPayloadJSON(func() string { return strings.Replace(payloadOf(suite.main, nil), `}`, `,"sub":"admin"}`, 1) }), want: deny, verify: deny},
		{category: "json", name: "duplicate iss in the claims", source: "RFC 7519 §4",
			tok: withPayloadJSON(func() string { return `{"iss":"https://evil.example",` + payloadOf(suite.main, nil)[1:] }), want: deny, verify: deny},
		{category: "json", name: "duplicate exp, a far future one first", source: "RFC 7519 §4",
			tok: withPayloadJSON(func() string { return `{"exp":9999999999,` + payloadOf(suite.main, nil)[1:] }), want: deny, verify: deny},
		{category: "json", name: "a duplicate claim spelled with an escape (s\\u0075b)", source: "RFC 8259 §7; RFC 7519 §4",
			tok: withPayloadJSON(func() string { return strings.Replace(payloadOf(suite.main, nil), `}`, `,"s\u0075b":"admin"}`, 1) }), want: deny, verify: deny},
		{category: "json", name: "duplicate members in a nested claim", source: "RFC 8259 §4",
			tok: m(map[string]string{"x": `{"role":"user","role":"admin"}`}), want: deny, verify: deny},
		{category: "json", name: `header member "ALG" instead of alg`, source: "RFC 7515 §4 (names are case-sensitive)",
			tok: withHeaderJSON2(func() string { return `{"ALG":"ES256","kid":` + quote(mainKID()) + `,"typ":"at+jwt"}` }), want: deny, verify: deny},
		{category: "json", name: `header member "Alg" next to alg none`, source: "RFC 7515 §4",
			tok: withHeaderJSON2(func() string { return `{"alg":"none","Alg":"ES256","kid":` + quote(mainKID()) + `,"typ":"at+jwt"}` }), want: deny, verify: deny},
		{category: "json", name: `header member "KID"`, source: "RFC 7515 §4",
			tok: withHeaderJSON2(func() string { return `{"alg":"ES256","KID":` + quote(mainKID()) + `,"typ":"at+jwt"}` }), want: deny, verify: deny},
		{category: "json", name: `claim "EXP" instead of exp`, source: "RFC 7519 §4 (names are case-sensitive)",
			tok: func() string { return mint(suite.main, map[string]string{"EXP": unix(time.Hour)}, []string{"exp"}) }, want: deny, verify: deny},
		{category: "json", name: `claim "ISS" instead of iss`, source: "RFC 7519 §4",
			tok: func() string {
				return mint(suite.main, map[string]string{"ISS": quote(suite.main.iss)}, []string{"iss"})
			}, want: deny, verify: deny},
		{category: "json", name: "invalid UTF-8 (0xff) in the header", source: "RFC 8259 §8.1; RFC 7515 §4",
			tok: withHeaderJSON2(func() string { return `{"alg":"ES256","kid":` + quote(mainKID()) + `,"typ":"at+jwt\xff"}` }), want: deny, verify: deny},
		{category: "json", name: "invalid UTF-8 (0xff) in sub", source: "RFC 8259 §8.1; RFC 7519 §7.2",
			tok: m(map[string]string{"sub": "\"alice\xff\""}), want: deny, verify: deny},
		{category: "json", name: "an overlong UTF-8 encoding of '/' in iss", source: "RFC 3629 §3 (overlong forms); CVE-2000-0884 class",
			tok: m(map[string]string{"iss": "\"http:\xc0\xaf\xc0\xafkeyward.test/security/main\""}), want: deny, verify: deny},
		{category: "json", name: "a lone surrogate escape in sub", source: "RFC 8259 §8.2",
			tok: m(map[string]string{"sub": `"alice\ud800"`}), want: deny, verify: deny},
		{category: "json", name: "a UTF-8 encoded surrogate (CESU-8) in sub", source: "RFC 3629 §3",
			tok: m(map[string]string{"sub": "\"alice\xed\xa0\x80\""}), want: deny, verify: deny},
		{category: "json", name: "trailing data after the claims object", source: "RFC 8259 §2; RFC 7519 §7.2 step 10",
			tok: withPayloadJSON(func() string { return payloadOf(suite.main, nil) + `{"sub":"admin"}` }), want: deny, verify: deny},
		{category: "json", name: "trailing garbage after the header object", source: "RFC 8259 §2",
			tok: withHeaderJSON2(func() string { return headerOf(suite.main) + "x" }), want: deny, verify: deny},
		{category: "json", name: "trailing whitespace after the claims object", source: "RFC 8259 §2; RFC 8725 §3.10",
			tok: withPayloadJSON(func() string { return payloadOf(suite.main, nil) + " " }), want: deny, verify: deny},
		{category: "json", name: "a UTF-8 BOM before the header", source: "RFC 8259 §8.1 (MUST NOT add a BOM)",
			tok: withHeaderJSON2(func() string { return "\xef\xbb\xbf" + headerOf(suite.main) }), want: deny, verify: deny},
		{category: "json", name: "a UTF-8 BOM before the claims", source: "RFC 8259 §8.1",
			tok: withPayloadJSON(func() string { return "\xef\xbb\xbf" + payloadOf(suite.main, nil) }), want: deny, verify: deny},
		{category: "json", name: "a NUL after the claims object", source: "RFC 8259 §2",
			tok: withPayloadJSON(func() string { return payloadOf(suite.main, nil) + "\x00" }), want: deny, verify: deny},
		{category: "json", name: "nesting 40 deep in a claim", source: "RFC 8259 §9 (implementations may limit nesting); CVE-2020-10735 class",
			tok: m(map[string]string{"x": nested(40)}), want: deny, verify: deny},
		{category: "json", name: "nesting 3000 deep in a claim", source: "RFC 8259 §9; GHSA-wx5j-54mm-rqqq class (stack exhaustion)",
			tok: m(map[string]string{"x": nested(3000)}), want: deny, verify: deny},
		{category: "json", name: "the claims are a JSON array", source: "RFC 7519 §7.2 step 10 (a JSON object)",
			tok: withPayloadJSON(func() string { return "[" + payloadOf(suite.main, nil) + "]" }), want: deny, verify: deny},
		{category: "json", name: "the claims are a JSON string", source: "RFC 7519 §7.2",
			tok: withPayloadJSON(func() string { return quote(payloadOf(suite.main, nil)) }), want: deny, verify: deny},
		{category: "json", name: "the claims are null", source: "RFC 7519 §7.2",
			tok: withPayloadJSON(func() string { return "null" }), want: deny, verify: deny},
		{category: "json", name: "the header is a JSON array", source: "RFC 7515 §4",
			tok: withHeaderJSON2(func() string { return "[" + headerOf(suite.main) + "]" }), want: deny, verify: deny},
		{category: "json", name: "single quotes (JSON5)", source: "RFC 8259 §7",
			tok: withPayloadJSON(func() string { return strings.ReplaceAll(payloadOf(suite.main, nil), `"alice"`, `'alice'`) }), want: deny, verify: deny},
		{category: "json", name: "a comment in the claims", source: "RFC 8259 §2",
			tok: withPayloadJSON(func() string { return "{/*x*/" + payloadOf(suite.main, nil)[1:] }), want: deny, verify: deny},
		{category: "json", name: "a trailing comma in the claims", source: "RFC 8259 §4",
			tok: withPayloadJSON(func() string { p := payloadOf(suite.main, nil); return p[:len(p)-1] + ",}" }), want: deny, verify: deny},
		{category: "json", name: "an unescaped control character in sub", source: "RFC 8259 §7",
			tok: m(map[string]string{"sub": "\"ali\x01ce\""}), want: deny, verify: deny},
		{category: "json", name: "NaN as a claim value", source: "RFC 8259 §6",
			tok: m(map[string]string{"x": "NaN"}), want: deny, verify: deny},
		{category: "json", name: "exp 1e400 (overflows a double)", source: "RFC 8259 §6; RFC 7519 §2 (NumericDate)",
			tok: m(map[string]string{"exp": "1e400"}), want: deny, verify: deny},
		{category: "json", name: "the claims are not JSON", source: "RFC 7519 §7.2",
			tok: withPayloadJSON(func() string { return "alice" }), want: deny, verify: deny},
		{category: "json", name: "an empty payload", source: "RFC 7519 §7.2",
			tok: withPayloadJSON(func() string { return "" }), want: deny, verify: deny},

		// alg.
		algNone("none", ""), algNone("None", ""), algNone("NONE", ""), algNone("nOnE", ""),
		algNone("none ", "trailing space"), algNone(" none", "leading space"), algNone("none\\u0000", "escaped NUL"),
		{category: "alg", name: "alg none with the real signature kept", source: "RFC 8725 §3.1; CVE-2015-9235",
			tok: func() string {
				p := segs(mint(suite.main, nil, nil))
				return enc(`{"alg":"none","kid":`+quote(mainKID())+`,"typ":"at+jwt"}`) + "." + p[1] + "." + p[2]
			}, want: deny, verify: deny},
		{category: "alg", name: "alg empty", source: "RFC 7515 §4.1.1",
			tok: withHeaderJSON2(func() string { return `{"alg":"","kid":` + quote(mainKID()) + `,"typ":"at+jwt"}` }), want: deny, verify: deny},
		{category: "alg", name: "alg missing", source: "RFC 7515 §4.1.1 (MUST be present)",
			tok: withHeaderJSON2(func() string { return `{"kid":` + quote(mainKID()) + `,"typ":"at+jwt"}` }), want: deny, verify: deny},
		{category: "alg", name: "alg null", source: "RFC 7515 §4.1.1",
			tok: withHeaderJSON2(func() string { return `{"alg":null,"kid":` + quote(mainKID()) + `,"typ":"at+jwt"}` }), want: deny, verify: deny},
		{category: "alg", name: "alg as an array", source: "RFC 7515 §4.1.1",
			tok: withHeaderJSON2(func() string { return `{"alg":["ES256"],"kid":` + quote(mainKID()) + `,"typ":"at+jwt"}` }), want: deny, verify: deny},
		{category: "alg", name: "alg es256 in lower case", source: "RFC 7515 §4.1.1 (case-sensitive)",
			tok: withHeaderJSON2(func() string { return `{"alg":"es256","kid":` + quote(mainKID()) + `,"typ":"at+jwt"}` }), want: deny, verify: deny},
		{category: "alg", name: "HS256 signed with the RS256 issuer's public key PEM (PKIX)", source: "RFC 8725 §3.1; CVE-2015-9235; CVE-2016-10555; CVE-2017-11424 (HS/RS confusion)",
			tok: func() string { return hsFor(suite.rsa, rsaPublicPEM(true)) }, path: "/rsa/x", want: deny, verify: deny, verifyAt: func() *issuerKeys { return suite.rsa }},
		{category: "alg", name: "HS256 signed with the RS256 public key PEM (PKCS#1)", source: "CVE-2016-10555; CVE-2022-29217 (PyJWT)",
			tok: func() string { return hsFor(suite.rsa, rsaPublicPEM(false)) }, path: "/rsa/x", want: deny, verify: deny, verifyAt: func() *issuerKeys { return suite.rsa }},
		{category: "alg", name: "HS256 signed with the RS256 public key PEM without its final newline", source: "CVE-2016-10555",
			tok: func() string { return hsFor(suite.rsa, []byte(strings.TrimSpace(string(rsaPublicPEM(true))))) }, path: "/rsa/x", want: deny, verify: deny, verifyAt: func() *issuerKeys { return suite.rsa }},
		{category: "alg", name: "HS256 signed with the RS256 public JWK JSON", source: "CVE-2015-9235; CVE-2022-29217",
			tok: func() string { return hsFor(suite.rsa, suite.rsa.publicJWK) }, path: "/rsa/x", want: deny, verify: deny, verifyAt: func() *issuerKeys { return suite.rsa }},
		{category: "alg", name: "HS256 signed with the RS256 public key DER", source: "CVE-2016-10555",
			tok: func() string {
				der, _ := x509.MarshalPKIXPublicKey(&suite.rsa.rsaKey().PublicKey)
				return hsFor(suite.rsa, der)
			}, path: "/rsa/x", want: deny, verify: deny, verifyAt: func() *issuerKeys { return suite.rsa }},
		{category: "alg", name: "HS256 signed with the ES256 public key PEM (HS/EC confusion)", source: "RFC 8725 §3.1; CVE-2015-9235",
			tok: func() string { return hsFor(suite.main, ecPublicPEM()) }, want: deny, verify: deny},
		{category: "alg", name: "HS256 signed with the ES256 public JWK JSON", source: "RFC 8725 §3.1",
			tok: func() string { return hsFor(suite.main, suite.main.publicJWK) }, want: deny, verify: deny},
		{category: "alg", name: "HS256 signed with the ES256 uncompressed point", source: "RFC 8725 §3.1",
			tok: func() string { return hsFor(suite.main, ecPoint()) }, want: deny, verify: deny},
		{category: "alg", name: "HS256 signed with the EdDSA public key bytes", source: "RFC 8725 §3.1",
			tok: func() string { return hsFor(suite.ed, []byte(suite.ed.edKey().Public().(ed25519.PublicKey))) }, path: "/ed/x", want: deny, verify: deny, verifyAt: func() *issuerKeys { return suite.ed }},
		{category: "alg", name: "HS256 signed with the JWKS document the issuer serves", source: "RFC 8725 §3.1; CVE-2015-9235",
			tok: func() string { return hsFor(suite.main, servedJWKS()) }, want: deny, verify: deny},
		{category: "alg", name: "HS256 with an empty secret", source: "CVE-2019-7644 class (empty HMAC key)",
			tok: func() string { return hsFor(suite.main, []byte{}) }, want: deny, verify: deny},
		{category: "alg", name: "HS256 with the secret \"secret\"", source: "RFC 8725 §3.5 (weak HMAC keys)",
			tok: func() string { return hsFor(suite.main, []byte("secret")) }, want: deny, verify: deny},
		{category: "alg", name: "RS256 header on the ES256 key's kid, signed by the RSA key", source: "RFC 8725 §3.1 (alg must match the key)",
			tok: func() string {
				return seal(suite.rsa, enc(`{"alg":"RS256","kid":`+quote(mainKID())+`,"typ":"at+jwt"}`)+"."+enc(payloadOf(suite.main, nil)))
			}, want: deny, verify: deny},
		{category: "alg", name: "ES256 header on the RS256 key's kid, signed by the ES key", source: "RFC 8725 §3.1",
			tok: func() string {
				return seal(suite.main, enc(`{"alg":"ES256","kid":`+quote(suite.rsa.kid)+`,"typ":"at+jwt"}`)+"."+enc(payloadOf(suite.rsa, nil)))
			}, path: "/rsa/x", want: deny, verify: deny, verifyAt: func() *issuerKeys { return suite.rsa }},
		{category: "alg", name: "PS256 with the RS256 key (same key, other algorithm)", source: "RFC 7518 §3.5; RFC 8725 §3.1",
			tok: func() string {
				k := &issuerKeys{alg: keywardv1.AlgorithmPS256, priv: suite.rsa.priv}
				return seal(k, enc(`{"alg":"PS256","kid":`+quote(suite.rsa.kid)+`,"typ":"at+jwt"}`)+"."+enc(payloadOf(suite.rsa, nil)))
			}, path: "/rsa/x", want: deny, verify: deny, verifyAt: func() *issuerKeys { return suite.rsa }},
		{category: "alg", name: "ES384 header with the ES256 key's signature", source: "RFC 7518 §3.4; RFC 8725 §3.1",
			tok: func() string {
				return seal(suite.main, enc(`{"alg":"ES384","kid":`+quote(mainKID())+`,"typ":"at+jwt"}`)+"."+enc(payloadOf(suite.main, nil)))
			}, want: deny, verify: deny},
		{category: "alg", name: "EdDSA header on the ES256 key's kid", source: "RFC 8037 §3.1; RFC 8725 §3.1",
			tok: func() string {
				return seal(suite.ed, enc(`{"alg":"EdDSA","kid":`+quote(mainKID())+`,"typ":"at+jwt"}`)+"."+enc(payloadOf(suite.main, nil)))
			}, want: deny, verify: deny},
		{category: "alg", name: "ES256K (secp256k1), an algorithm keyward does not support", source: "RFC 8812 §3.2",
			tok: withHeaderJSON2(func() string { return `{"alg":"ES256K","kid":` + quote(mainKID()) + `,"typ":"at+jwt"}` }), want: deny, verify: deny},
		{category: "alg", name: "RS1 (SHA-1)", source: "RFC 8725 §3.2 (no weak algorithms)",
			tok: withHeaderJSON2(func() string { return `{"alg":"RS1","kid":` + quote(mainKID()) + `,"typ":"at+jwt"}` }), want: deny, verify: deny},

		// Keys.
		{category: "keys", name: "kid path traversal to /dev/null with an empty HMAC key", source: "RFC 7515 §4.1.4; CVE-2018-1000531 class; PortSwigger kid traversal",
			tok: func() string {
				return hs(`{"alg":"HS256","kid":"../../../../../../dev/null","typ":"at+jwt"}`, []byte{})
			}, want: deny, verify: deny},
		{category: "keys", name: "kid path traversal to a file whose content is known", source: "RFC 7515 §4.1.4",
			tok: func() string {
				return hs(`{"alg":"HS256","kid":"/proc/sys/kernel/randomize_va_space","typ":"at+jwt"}`, []byte("2\n"))
			}, want: deny, verify: deny},
		{category: "keys", name: "kid SQL injection selecting a chosen key", source: "RFC 7515 §4.1.4; OWASP JWT cheat sheet",
			tok: func() string {
				return hs(`{"alg":"HS256","kid":"x' UNION SELECT 'key' -- ","typ":"at+jwt"}`, []byte("key"))
			}, want: deny, verify: deny},
		{category: "keys", name: "kid command injection", source: "RFC 7515 §4.1.4",
			tok: func() string { return hs(`{"alg":"HS256","kid":"key|/usr/bin/id","typ":"at+jwt"}`, []byte("key")) }, want: deny, verify: deny},
		{category: "keys", name: "kid empty", source: "RFC 7515 §4.1.4",
			tok: withHeaderJSON2(func() string { return `{"alg":"ES256","kid":"","typ":"at+jwt"}` }), want: deny, verify: deny},
		{category: "keys", name: "kid missing (a verifier might try every key)", source: "RFC 7515 §4.1.4; RFC 8725 §3.10",
			tok: withHeaderJSON2(func() string { return `{"alg":"ES256","typ":"at+jwt"}` }), want: deny, verify: deny},
		{category: "keys", name: "kid as a number", source: "RFC 7515 §4.1.4 (a string)",
			tok: withHeaderJSON2(func() string { return `{"alg":"ES256","kid":1,"typ":"at+jwt"}` }), want: deny, verify: deny},
		{category: "keys", name: "an unknown kid, signed by the real key", source: "RFC 7515 §4.1.4",
			tok: func() string {
				return seal(suite.main, enc(`{"alg":"ES256","kid":"unknown-kid","typ":"at+jwt"}`)+"."+enc(payloadOf(suite.main, nil)))
			}, want: deny, verify: deny},
		{category: "keys", name: "the kid with a trailing space", source: "RFC 7515 §4.1.4 (compared exactly)",
			tok: withHeaderJSON2(func() string { return `{"alg":"ES256","kid":` + quote(mainKID()+" ") + `,"typ":"at+jwt"}` }), want: deny, verify: deny},
		{category: "keys", name: "the kid in upper case", source: "RFC 7515 §4.1.4",
			tok: withHeaderJSON2(func() string { return `{"alg":"ES256","kid":` + quote(strings.ToUpper(mainKID())) + `,"typ":"at+jwt"}` }), want: deny, verify: deny},
		{category: "keys", name: "main's kid, signed by an attacker key", source: "RFC 7515 §5.2",
			tok: func() string { return mint(attackerKeys(mainKID()), nil, nil) }, want: deny, verify: deny},
		{category: "keys", name: "an embedded jwk header with the attacker's key", source: "CVE-2018-0114 (node-jose jwk header); RFC 7515 §4.1.3",
			tok: func() string {
				k := attackerKeys("attacker")
				return compact(k, `{"alg":"ES256","kid":"attacker","typ":"at+jwt","jwk":`+attackerJWK()+`}`, payloadOf(suite.main, nil))
			}, want: deny, verify: deny},
		{category: "keys", name: "an embedded jwk header with main's kid", source: "CVE-2018-0114; CVE-2024-33663 class",
			tok: func() string {
				return compact(attackerKeys(mainKID()), `{"alg":"ES256","kid":`+quote(mainKID())+`,"typ":"at+jwt","jwk":`+attackerJWK()+`}`, payloadOf(suite.main, nil))
			}, want: deny, verify: deny},
		{category: "keys", name: "a jku header pointing at the attacker's JWKS", source: "RFC 7515 §4.1.2; RFC 8725 §3.10",
			tok: func() string {
				return compact(attackerKeys("attacker"), `{"alg":"ES256","kid":"attacker","typ":"at+jwt","jku":"http://127.0.0.1:1/jwks.json"}`, payloadOf(suite.main, nil))
			}, want: deny, verify: deny},
		{category: "keys", name: "a jku header on a token signed by the real key", source: "RFC 7515 §4.1.2 (header allowlist)",
			tok: withHeaderJSON2(func() string { return mainHeader(`,"jku":"https://evil.example/jwks.json"`) }), want: deny, verify: deny},
		{category: "keys", name: "an x5u header", source: "RFC 7515 §4.1.5",
			tok: func() string {
				return compact(attackerKeys("attacker"), `{"alg":"ES256","kid":"attacker","typ":"at+jwt","x5u":"https://evil.example/cert.pem"}`, payloadOf(suite.main, nil))
			}, want: deny, verify: deny},
		{category: "keys", name: "an x5c header with the attacker's self-signed certificate", source: "RFC 7515 §4.1.6; CVE-2023-2631 class",
			tok: func() string {
				return compact(attackerKeys("attacker"), `{"alg":"ES256","typ":"at+jwt","x5c":["`+attackerCert()+`"]}`, payloadOf(suite.main, nil))
			}, want: deny, verify: deny},
		{category: "keys", name: "an x5t header", source: "RFC 7515 §4.1.7",
			tok: withHeaderJSON2(func() string { return mainHeader(`,"x5t":"AAAA"`) }), want: deny, verify: deny},
		{category: "keys", name: "another issuer's key, kid and signature with main's iss", source: "RFC 8725 §3.8 (issuer and key binding)",
			tok: func() string {
				return compact(suite.other, headerOf(suite.other), payloadOf(suite.main, nil))
			}, want: deny, verify: deny},

		// Headers.
		{category: "headers", name: "crit naming exp", source: "RFC 7515 §4.1.11",
			tok: withHeaderJSON2(func() string { return mainHeader(`,"crit":["exp"]`) }), want: deny, verify: deny},
		{category: "headers", name: "crit with an unknown extension", source: "RFC 7515 §4.1.11 (MUST reject unknown crit)",
			tok: withHeaderJSON2(func() string { return mainHeader(`,"crit":["http://evil.example/ext"],"http://evil.example/ext":true`) }), want: deny, verify: deny},
		{category: "headers", name: "crit empty", source: "RFC 7515 §4.1.11 (MUST NOT be empty)",
			tok: withHeaderJSON2(func() string { return mainHeader(`,"crit":[]`) }), want: deny, verify: deny},
		{category: "headers", name: "b64 false with an unencoded payload", source: "RFC 7797 §3, §5",
			tok: func() string {
				h := enc(mainHeader(`,"b64":false,"crit":["b64"]`))
				p := payloadOf(suite.main, nil)
				s := sign(keywardv1.AlgorithmES256, suite.main.priv, h+"."+p)
				return h + "." + p + "." + b64.EncodeToString(s)
			}, want: deny, verify: deny},
		{category: "headers", name: "b64 false with a detached payload", source: "RFC 7797 §5; RFC 7515 Appendix F",
			tok: func() string {
				h := enc(mainHeader(`,"b64":false,"crit":["b64"]`))
				s := sign(keywardv1.AlgorithmES256, suite.main.priv, h+"."+payloadOf(suite.main, nil))
				return h + ".." + b64.EncodeToString(s)
			}, want: deny, verify: deny},
		{category: "headers", name: "cty JWT with a nested token as the payload", source: "RFC 7519 §5.2 (nested JWT); RFC 8725 §2.7",
			tok: func() string {
				inner := mint(suite.main, map[string]string{"sub": `"admin"`}, nil)
				return seal(suite.main, enc(mainHeader(`,"cty":"JWT"`))+"."+enc(inner))
			}, want: deny, verify: deny},
		{category: "headers", name: "a nested token as the payload without cty", source: "RFC 7519 §7.2 step 8",
			tok: func() string { return seal(suite.main, enc(headerOf(suite.main))+"."+enc(mint(suite.main, nil, nil))) }, want: deny, verify: deny},
		{category: "headers", name: "zip DEF with a deflated payload", source: "RFC 7516 §4.1.3 (zip is JWE only); CVE-2024-21319 class (decompression bomb)",
			tok: func() string {
				return seal(suite.main, enc(mainHeader(`,"zip":"DEF"`))+"."+b64.EncodeToString(deflate(payloadOf(suite.main, nil))))
			}, want: deny, verify: deny},
		{category: "headers", name: "enc in a JWS header", source: "RFC 7516 §4.1.2; RFC 8725 §3.11",
			tok: withHeaderJSON2(func() string { return mainHeader(`,"enc":"A256GCM"`) }), want: deny, verify: deny},
		{category: "headers", name: "p2c PBES2 iteration count (DoS in JWE libraries)", source: "CVE-2022-36083 (jose p2c); CVE-2023-50658",
			tok: withHeaderJSON2(func() string { return mainHeader(`,"p2c":2147483647,"p2s":"AAAA"`) }), want: deny, verify: deny},
		{category: "headers", name: "typ JWT (not an access token)", source: "RFC 9068 §2.1, §4 (typ at+jwt required); RFC 8725 §3.11",
			tok: withHeaderJSON2(func() string { return `{"alg":"ES256","kid":` + quote(mainKID()) + `,"typ":"JWT"}` }), want: deny, verify: deny},
		{category: "headers", name: "typ missing", source: "RFC 9068 §4",
			tok: withHeaderJSON2(func() string { return `{"alg":"ES256","kid":` + quote(mainKID()) + `}` }), want: deny, verify: deny},
		{category: "headers", name: "typ as a number", source: "RFC 7515 §4.1.9",
			tok: withHeaderJSON2(func() string { return `{"alg":"ES256","kid":` + quote(mainKID()) + `,"typ":1}` }), want: deny, verify: deny},
		{category: "headers", name: "typ application/AT+JWT is the same media type (accepted)", source: "RFC 7515 §4.1.9 (case-insensitive, application/ may be omitted); RFC 9068 §4",
			tok: withHeaderJSON2(func() string { return `{"alg":"ES256","kid":` + quote(mainKID()) + `,"typ":"application/AT+JWT"}` }), want: allow, verify: allow},
		{category: "headers", name: "an unknown header member", source: "RFC 8725 §3.10 (header allowlist)",
			tok: withHeaderJSON2(func() string { return mainHeader(`,"x":1`) }), want: deny, verify: deny},
		{category: "headers", name: "a nonce header (ACME)", source: "RFC 8555 §6.5.2",
			tok: withHeaderJSON2(func() string { return mainHeader(`,"nonce":"n"`) }), want: deny, verify: deny},

		// Signatures.
		{category: "signatures", name: "r = 0 and s = 0 (psychic signature)", source: "CVE-2022-21449 (Java ECDSA); RFC 7518 §3.4",
			tok: sigWith(func([]byte) []byte { return make([]byte, 64) }), want: deny, verify: deny},
		{category: "signatures", name: "r = 0", source: "CVE-2022-21449; FIPS 186-4 §6.4 (r in [1, n-1])",
			tok: sigWith(func(s []byte) []byte { return append(make([]byte, 32), s[32:]...) }), want: deny, verify: deny},
		{category: "signatures", name: "s = 0", source: "CVE-2022-21449",
			tok: sigWith(func(s []byte) []byte { return append(append([]byte{}, s[:32]...), make([]byte, 32)...) }), want: deny, verify: deny},
		{category: "signatures", name: "r = s = n (the curve order)", source: "CVE-2022-21449; Wycheproof ecdsa r=n",
			tok: sigWith(func([]byte) []byte { return rs(p256N, p256N) }), want: deny, verify: deny},
		{category: "signatures", name: "r + n (r out of range, same value mod n)", source: "FIPS 186-4 §6.4; Wycheproof 'r + n'",
			tok: sigWith(func(s []byte) []byte {
				r := new(big.Int).Add(bigOf(s[:32]), p256N)
				out := make([]byte, 66)
				r.FillBytes(out[:33])
				copy(out[34:], s[32:])
				return out
			}), want: deny, verify: deny},
		{category: "signatures", name: "the high-S twin (r, n-s) of a valid token is accepted: malleability, not forgery", source: "RFC 7518 §3.4 (no low-S rule); SEC 1 §4.1.4; ADR 0013",
			tok: func() string { return highS(mint(suite.main, nil, nil)) }, want: allow, verify: allow},
		{category: "signatures", name: "a 63-byte signature", source: "RFC 7518 §3.4 (exactly 64 bytes for ES256)",
			tok: sigWith(func(s []byte) []byte { return s[:63] }), want: deny, verify: deny},
		{category: "signatures", name: "a 65-byte signature (a leading zero)", source: "RFC 7518 §3.4",
			tok: sigWith(func(s []byte) []byte { return append([]byte{0}, s...) }), want: deny, verify: deny},
		{category: "signatures", name: "r and s each padded to 33 bytes", source: "RFC 7518 §3.4",
			tok: sigWith(func(s []byte) []byte { return append(append([]byte{0}, s[:32]...), append([]byte{0}, s[32:]...)...) }), want: deny, verify: deny},
		{category: "signatures", name: "a DER (ASN.1) signature instead of r||s", source: "RFC 7518 §3.4; CVE-2022-21449 class",
			tok: sigWith(der), want: deny, verify: deny},
		{category: "signatures", name: "a one-bit change in s", source: "RFC 7515 §5.2",
			tok: sigWith(func(s []byte) []byte { s = append([]byte{}, s...); s[63] ^= 1; return s }), want: deny, verify: deny},
		{category: "signatures", name: "the signature of another token", source: "RFC 7515 §5.2",
			tok: func() string { return withSig(mint(suite.main, nil, nil), sigOf(mint(suite.main, nil, nil))) }, want: deny, verify: deny},
		{category: "signatures", name: "the signature truncated by one character", source: "RFC 7515 §5.2",
			tok: func() string { t := mint(suite.main, nil, nil); return t[:len(t)-1] }, want: deny, verify: deny},
		{category: "signatures", name: "an all-zero RS256 signature", source: "CVE-2022-21449 class; RFC 8017 §8.2.2",
			tok: func() string { return withSig(mint(suite.rsa, nil, nil), make([]byte, 256)) }, path: "/rsa/x", want: deny, verify: deny, verifyAt: func() *issuerKeys { return suite.rsa }},
		{category: "signatures", name: "a one-byte RS256 signature", source: "RFC 8017 §8.2.2 (length k)",
			tok: func() string { return withSig(mint(suite.rsa, nil, nil), []byte{1}) }, path: "/rsa/x", want: deny, verify: deny, verifyAt: func() *issuerKeys { return suite.rsa }},
		{category: "signatures", name: "an Ed25519 signature with S >= L", source: "RFC 8032 §5.1.7; Wycheproof ed25519 'S > L'",
			tok: func() string {
				t := mint(suite.ed, nil, nil)
				s := sigOf(t)
				// Add L to S (little-endian), keeping R.
				l, _ := new(big.Int).SetString("1000000000000000000000000000000014def9dea2f79cd65812631a5cf5d3ed", 16)
				sv := new(big.Int).SetBytes(reverse(s[32:]))
				sv.Add(sv, l)
				out := append([]byte{}, s[:32]...)
				return withSig(t, append(out, reverse(sv.FillBytes(make([]byte, 32)))...))
			}, path: "/ed/x", want: deny, verify: deny, verifyAt: func() *issuerKeys { return suite.ed }},
		{category: "signatures", name: "an all-zero Ed25519 signature", source: "RFC 8032 §5.1.7; CVE-2020-36843 class",
			tok: func() string { return withSig(mint(suite.ed, nil, nil), make([]byte, 64)) }, path: "/ed/x", want: deny, verify: deny, verifyAt: func() *issuerKeys { return suite.ed }},
	}
	cs = append(cs, claimCases()...)
	cs = append(cs, crossCases()...)
	cs = append(cs, sizeCases()...)
	cs = append(cs, revocationCases()...)
	cs = append(cs, transportCases()...)
	return cs
}

func reverse(b []byte) []byte {
	out := make([]byte, len(b))
	for i := range b {
		out[len(b)-1-i] = b[i]
	}
	return out
}

// withHeaderJSON2 is withHeaderJSON with a header computed after setup.
func withHeaderJSON2(h func() string) func() string {
	return func() string { return withHeaderJSON(h())() }
}

// hsFor signs main-shaped claims of k with HS256 under secret and k's kid.
func hsFor(k *issuerKeys, secret []byte) string {
	h := `{"alg":"HS256","kid":` + quote(k.kid) + `,"typ":"at+jwt"}`
	return seal(&issuerKeys{alg: keywardv1.AlgorithmHS256, priv: secret}, enc(h)+"."+enc(payloadOf(k, nil)))
}

func algNone(alg, note string) attack {
	name := "alg " + quote(alg) + " with an empty signature"
	if note != "" {
		name += " (" + note + ")"
	}
	return attack{category: "alg", name: name, source: "RFC 7519 §6; RFC 8725 §3.1; CVE-2015-9235; CVE-2015-2951",
		tok: func() string {
			return enc(`{"alg":"`+alg+`","kid":`+quote(suite.main.kid)+`,"typ":"at+jwt"}`) + "." + enc(payloadOf(suite.main, nil)) + "."
		}, want: deny, verify: deny}
}

// identityIs checks the identity header of an HTTP allow.
func identityIs(user string) func(http.Header) error {
	return func(h http.Header) error {
		if got := h.Get("X-Auth-Request-User"); got != user {
			return fmt.Errorf("X-Auth-Request-User = %q, want %q", got, user)
		}
		return nil
	}
}

func grpcIdentityIs(user string) func(*authv3.CheckResponse) error {
	return func(r *authv3.CheckResponse) error {
		for _, h := range r.GetOkResponse().GetHeaders() {
			if h.GetHeader().GetKey() == "x-auth-request-user" {
				if h.GetHeader().GetValue() != user || h.GetAppendAction() != corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD {
					return fmt.Errorf("x-auth-request-user = %q (%v), want %q overwriting", h.GetHeader().GetValue(), h.GetAppendAction(), user)
				}
				return nil
			}
		}
		return fmt.Errorf("no x-auth-request-user in %v", r.GetOkResponse())
	}
}

func checkReq(path, authorization string, extra map[string]string) func() *authv3.CheckRequest {
	return checkReqHost(appHost, path, authorization, extra)
}

func checkReqHost(host, path, authorization string, extra map[string]string) func() *authv3.CheckRequest {
	return func() *authv3.CheckRequest {
		r := testsupport.CheckRequest("GET", host, path, "", extra)
		if authorization != "" {
			r.Attributes.Request.Http.Headers["authorization"] = authorization
		}
		return r
	}
}
