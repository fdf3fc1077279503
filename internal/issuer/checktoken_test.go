package issuer

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	clocktesting "k8s.io/utils/clock/testing"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
	"github.com/keyward/keyward/internal/keys"
	"github.com/keyward/keyward/internal/token"
)

// checkFixture is a Server and an issuerConfig built directly, with one ES256 key, for the
// token checks the refresh, verify, revoke and introspect endpoints share.
type checkFixture struct {
	s      *Server
	cfg    *issuerConfig
	kid    string
	signer *token.Signer
	priv   any
	now    time.Time
}

func newCheckFixture(t testing.TB, audiences []string) *checkFixture {
	t.Helper()
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	raw, err := keys.Generate(keywardv1.AlgorithmES256)
	if err != nil {
		t.Fatal(err)
	}
	stored, err := keys.NewStoredKey(keys.Lifecycle{Algorithm: keywardv1.AlgorithmES256, PublishedAt: now, ActivatesAt: now, ActivatedAt: &now}, raw)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := token.NewSigner(&stored)
	if err != nil {
		t.Fatal(err)
	}
	vk, err := token.VerifyKeyFromStored(&stored)
	if err != nil {
		t.Fatal(err)
	}
	clients, err := ParseClients(map[string][]byte{ClientsYAMLDataKey: []byte(
		"svc:\n  secretSHA256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\n  audiences: [svc-api]\n" +
			"plain:\n  secretSHA256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\n")})
	if err != nil {
		t.Fatal(err)
	}
	return &checkFixture{
		s: &Server{clock: clocktesting.NewFakePassiveClock(now), log: logr.Discard(), registry: newRegistry()},
		cfg: &issuerConfig{iss: "https://id.example.test/ns/main", audiences: audiences, leeway: 30 * time.Second,
			verifyKeys: map[string]*token.VerifyKey{vk.KID: vk}, clients: clients, signer: signer},
		kid: stored.KID, signer: signer, priv: raw, now: now,
	}
}

func (f *checkFixture) claims(mod func(*token.Claims)) *token.Claims {
	c := &token.Claims{Issuer: f.cfg.iss, Subject: "alice", Audience: f.cfg.audiences, ExpiresAt: f.now.Add(5 * time.Minute),
		IssuedAt: f.now, ID: "jti-1", SessionID: "s-1", TokenType: token.TokenTypeAccess}
	if mod != nil {
		mod(c)
	}
	return c
}

func (f *checkFixture) sign(t testing.TB, mod func(*token.Claims)) string {
	t.Helper()
	tok, err := f.signer.Sign(token.TypeAccess, f.claims(mod))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// withTyp re-signs a token with another header typ, with jwx, as an issuer of that typ would.
func (f *checkFixture) withTyp(t testing.TB, typ string, mod func(*token.Claims)) string {
	t.Helper()
	payload, err := f.claims(mod).MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	enc := base64.RawURLEncoding
	h := enc.EncodeToString([]byte(`{"alg":"ES256","kid":"` + f.kid + `","typ":"` + typ + `"}`))
	input := h + "." + enc.EncodeToString(payload)
	sig := esSign(t, f.priv, input)
	return input + "." + enc.EncodeToString(sig)
}

// TestCheckToken covers two refusals the attack catalogue (test/security) found missing and
// one inconsistency: verify answered 200 for access tokens whose aud the issuer never gives,
// and refused a typ the validator accepts.
func TestCheckToken(t *testing.T) {
	tests := []struct {
		name      string
		audiences []string
		tok       func(t *testing.T, f *checkFixture) string
		want      tokenError
	}{
		{"an access token with the issuer's audience is valid", []string{"api"},
			func(t *testing.T, f *checkFixture) string { return f.sign(t, nil) }, 0},
		{"an access token with another audience is refused", []string{"api"},
			func(t *testing.T, f *checkFixture) string {
				return f.sign(t, func(c *token.Claims) { c.Audience = []string{"apix"} })
			}, tokenInvalid},
		{"an access token without aud is refused when the issuer has audiences", []string{"api"},
			func(t *testing.T, f *checkFixture) string {
				return f.sign(t, func(c *token.Claims) { c.Audience = nil })
			}, tokenInvalid},
		{"one matching audience among others is enough", []string{"api"},
			func(t *testing.T, f *checkFixture) string {
				return f.sign(t, func(c *token.Claims) { c.Audience = []string{"x", "api"} })
			}, 0},
		{"a client_credentials token with its client's audience is valid", []string{"api"},
			func(t *testing.T, f *checkFixture) string {
				return f.sign(t, func(c *token.Claims) { c.ClientID, c.SessionID, c.Audience = "svc", "", []string{"svc-api"} })
			}, 0},
		{"a client's audience is not valid for another client", []string{"api"},
			func(t *testing.T, f *checkFixture) string {
				return f.sign(t, func(c *token.Claims) { c.ClientID, c.Audience = "plain", []string{"svc-api"} })
			}, tokenInvalid},
		{"an issuer without audiences accepts a token without aud", nil,
			func(t *testing.T, f *checkFixture) string { return f.sign(t, nil) }, 0},
		{"an issuer without audiences refuses a token with aud", nil,
			func(t *testing.T, f *checkFixture) string {
				return f.sign(t, func(c *token.Claims) { c.Audience = []string{"api"} })
			}, tokenInvalid},
		{"typ application/AT+JWT is an access token, as at the validator", []string{"api"},
			func(t *testing.T, f *checkFixture) string { return f.withTyp(t, "application/AT+JWT", nil) }, 0},
		{"typ JWT is refused", []string{"api"},
			func(t *testing.T, f *checkFixture) string { return f.withTyp(t, "JWT", nil) }, tokenInvalid},
		{"a sub with CR LF is refused", []string{"api"},
			func(t *testing.T, f *checkFixture) string {
				return f.withTyp(t, "at+jwt", func(c *token.Claims) { c.Subject = "alice\r\nX-Auth-Request-User: admin" })
			}, tokenInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newCheckFixture(t, tt.audiences)
			_, _, got := f.s.checkToken(f.cfg, tt.tok(t, f), "")
			if got != tt.want {
				t.Fatalf("checkToken = %v, want %v", got, tt.want)
			}
		})
	}
}

// FuzzRequestBodies fuzzes the request decoding of the token endpoints: the simplejwt
// parser (JSON, form and multipart bodies of /api/token/, /api/token/refresh/) and the
// OAuth2 form parser (/oauth2/token). The oracle: no panic, a decoded body's fields are what
// the endpoints read, and nothing the parsers accept contains a duplicate JSON member or a
// repeated OAuth2 parameter.
func FuzzRequestBodies(f *testing.F) {
	f.Add(uint8(0), []byte(`{"username":"alice","password":"wonderland"}`))
	f.Add(uint8(0), []byte(`{"refresh":"a.b.c"}`))
	f.Add(uint8(0), []byte(`{"username":"alice","username":"bob","password":"x"}`))
	f.Add(uint8(0), []byte(`{"username":{"a":1,"a":2},"password":1e400}`))
	f.Add(uint8(0), []byte("\xef\xbb\xbf{\"refresh\":\"x\"}"))
	f.Add(uint8(0), []byte(`[`+strings.Repeat("[", 100)))
	f.Add(uint8(1), []byte("username=alice&password=wonderland"))
	f.Add(uint8(1), []byte("grant_type=password&username=alice&password=w&username=bob"))
	f.Add(uint8(1), []byte("grant_type=refresh_token&refresh_token=%zz"))
	f.Add(uint8(2), []byte("refresh=a.b.c"))
	f.Add(uint8(3), []byte("text"))
	f.Fuzz(func(t *testing.T, kind uint8, body []byte) {
		ct := []string{"application/json", "application/x-www-form-urlencoded", "multipart/form-data; boundary=B", "text/plain; charset=utf-8"}[int(kind)%4]
		if kind%4 == 2 {
			// A multipart body with the fuzzed bytes as one field's value.
			var b bytes.Buffer
			w := multipart.NewWriter(&b)
			_ = w.SetBoundary("B")
			_ = w.WriteField("refresh", string(body))
			_ = w.Close()
			body = b.Bytes()
		}
		r := httptest.NewRequest(http.MethodPost, "/ns/main/api/token/", bytes.NewReader(body))
		r.Header.Set("Content-Type", ct)
		fields, derr := parseDRF(httptest.NewRecorder(), r)
		switch {
		case derr != nil:
			if derr.status < 400 || derr.status > 499 {
				t.Fatalf("parse error with status %d", derr.status)
			}
		case ct == "application/json" && len(body) > 0:
			if v, err := strictJSON(body); err != nil || v == nil {
				t.Fatalf("accepted JSON the strict reader refuses: %v", err)
			}
			if _, perr := charFields(fields, "username", "password"); perr == nil {
				// CharField values are trimmed strings or numbers.
				for _, name := range []string{"username", "password"} {
					if k := fields[name].kind; k != "string" && k != "number" {
						t.Fatalf("%s of kind %s accepted", name, k)
					}
				}
			}
		}

		r = httptest.NewRequest(http.MethodPost, "/ns/main/oauth2/token", bytes.NewReader(body))
		r.Header.Set("Content-Type", ct)
		form, oerr := oauthForm(httptest.NewRecorder(), r)
		if oerr != nil {
			if oerr.status != http.StatusBadRequest && oerr.status != http.StatusRequestEntityTooLarge {
				t.Fatalf("form error with status %d", oerr.status)
			}
			return
		}
		if !strings.HasPrefix(ct, "application/x-www-form-urlencoded") {
			t.Fatalf("a %s body was accepted as a form", ct)
		}
		want, err := url.ParseQuery(string(body))
		if err != nil {
			t.Fatalf("accepted a form url.ParseQuery refuses: %v", err)
		}
		for k, v := range form {
			if len(v) != 1 || len(want[k]) != 1 || want[k][0] != v[0] {
				t.Fatalf("parameter %q decoded as %q, want %q once", k, v, want[k])
			}
		}
	})
}

// esSign is an ES256 signature of input in the JOSE r||s form.
func esSign(t testing.TB, priv any, input string) []byte {
	t.Helper()
	d := sha256.Sum256([]byte(input))
	r, s, err := ecdsa.Sign(rand.Reader, priv.(*ecdsa.PrivateKey), d[:])
	if err != nil {
		t.Fatal(err)
	}
	out := make([]byte, 64)
	r.FillBytes(out[:32])
	s.FillBytes(out[32:])
	return out
}
