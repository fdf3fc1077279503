package security

import (
	"bytes"
	"compress/flate"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc/codes"

	"github.com/keyward/keyward/internal/testsupport"
)

func deflate(s string) []byte {
	var b bytes.Buffer
	w, _ := flate.NewWriter(&b, flate.BestCompression)
	_, _ = io.WriteString(w, s)
	_ = w.Close()
	return b.Bytes()
}

// claimCases: a valid signature over claims keyward must refuse (or, where named, accept).
func claimCases() []attack {
	l := leeway
	return []attack{
		{category: "claims", name: "exp missing", source: "RFC 9068 §2.2 (exp REQUIRED); RFC 8725 §3.10", tok: without("exp"), want: deny, verify: deny},
		{category: "claims", name: "exp 0", source: "RFC 7519 §4.1.4", tok: m(map[string]string{"exp": "0"}), want: deny, verify: deny},
		{category: "claims", name: "exp as a string", source: "RFC 7519 §2 (NumericDate is a number)", tok: m(map[string]string{"exp": quote(unix(time.Hour))}), want: deny, verify: deny},
		{category: "claims", name: "exp as a float with a fraction", source: "RFC 7519 §2", tok: m(map[string]string{"exp": unix(time.Hour) + ".5"}), want: deny, verify: deny},
		{category: "claims", name: "exp in exponent notation", source: "RFC 7519 §2", tok: m(map[string]string{"exp": "1e10"}), want: deny, verify: deny},
		{category: "claims", name: "exp negative", source: "RFC 7519 §2", tok: m(map[string]string{"exp": "-1"}), want: deny, verify: deny},
		{category: "claims", name: "exp beyond int64", source: "RFC 7519 §2; CWE-190", tok: m(map[string]string{"exp": "99999999999999999999"}), want: deny, verify: deny},
		{category: "claims", name: "exp after year 9999", source: "RFC 7519 §2", tok: m(map[string]string{"exp": "253402300800"}), want: deny, verify: deny},
		{category: "claims", name: "exp true", source: "RFC 7519 §2", tok: m(map[string]string{"exp": "true"}), want: deny, verify: deny},
		{category: "claims", name: "exp null", source: "RFC 7519 §2", tok: m(map[string]string{"exp": "null"}), want: deny, verify: deny},
		{category: "claims", name: "exp an hour ago", source: "RFC 7519 §4.1.4", tok: m(map[string]string{"exp": unix(-time.Hour)}), want: deny, verify: deny},
		{category: "claims", name: "exp = now - leeway (the boundary is exclusive)", source: "RFC 7519 §4.1.4 ('on or after' exp MUST NOT be accepted)",
			tok: m(map[string]string{"exp": unix(-l)}), want: deny, verify: deny},
		{category: "claims", name: "exp = now - leeway - 1s", source: "RFC 7519 §4.1.4", tok: m(map[string]string{"exp": unix(-l - time.Second)}), want: deny, verify: deny},
		{category: "claims", name: "exp = now - leeway + 1s is within the leeway (accepted)", source: "RFC 7519 §4.1.4 (small leeway)",
			tok: m(map[string]string{"exp": unix(-l + time.Second)}), want: allow, verify: allow},
		{category: "claims", name: "exp ten years ahead (longer than the issuer ever mints)", source: "RFC 8725 §3.10; RFC 9068 §2.2; keyward ADR 0013",
			tok: m(map[string]string{"exp": unix(10 * 365 * 24 * time.Hour)}), want: deny, verify: deny},
		{category: "claims", name: "exp = now + lifetime (5m) + leeway + 1s", source: "keyward ADR 0013 (exp bounded by the issuer's lifetime)",
			tok: m(map[string]string{"exp": unix(5*time.Minute + l + time.Second)}), want: deny, verify: deny},
		{category: "claims", name: "exp = now + lifetime (5m) + leeway is accepted", source: "keyward ADR 0013",
			tok: m(map[string]string{"exp": unix(5*time.Minute + l)}), want: allow, verify: allow},
		{category: "claims", name: "nbf = now + leeway + 1s", source: "RFC 7519 §4.1.5", tok: m(map[string]string{"nbf": unix(l + time.Second)}), want: deny, verify: deny},
		{category: "claims", name: "nbf = now + leeway is within the leeway (accepted)", source: "RFC 7519 §4.1.5", tok: m(map[string]string{"nbf": unix(l)}), want: allow, verify: allow},
		{category: "claims", name: "nbf as a string", source: "RFC 7519 §2", tok: m(map[string]string{"nbf": `"0"`}), want: deny, verify: deny},
		{category: "claims", name: "nbf as a float", source: "RFC 7519 §2", tok: m(map[string]string{"nbf": "0.5"}), want: deny, verify: deny},
		{category: "claims", name: "nbf negative", source: "RFC 7519 §2", tok: m(map[string]string{"nbf": "-100"}), want: deny, verify: deny},
		{category: "claims", name: "iat = now + leeway + 1s (issued in the future)", source: "RFC 7519 §4.1.6; RFC 8725 §3.10",
			tok: m(map[string]string{"iat": unix(l + time.Second)}), want: deny, verify: deny},
		{category: "claims", name: "iat as a string", source: "RFC 7519 §2", tok: m(map[string]string{"iat": `"now"`}), want: deny, verify: deny},
		{category: "claims", name: "iat huge", source: "RFC 7519 §2", tok: m(map[string]string{"iat": "1e300"}), want: deny, verify: deny},
		{category: "claims", name: "aud missing", source: "RFC 9068 §4 (aud MUST match); RFC 8725 §3.9", tok: without("aud"), want: deny, verify: deny},
		{category: "claims", name: "aud empty string", source: "RFC 7519 §4.1.3", tok: m(map[string]string{"aud": `""`}), want: deny, verify: deny},
		{category: "claims", name: "aud empty array", source: "RFC 7519 §4.1.3", tok: m(map[string]string{"aud": `[]`}), want: deny, verify: deny},
		{category: "claims", name: "aud a superstring (apix)", source: "RFC 7519 §4.1.3 (exact match); RFC 8725 §3.9", tok: m(map[string]string{"aud": `["apix"]`}), want: deny, verify: deny},
		{category: "claims", name: "aud a substring (ap)", source: "RFC 7519 §4.1.3", tok: m(map[string]string{"aud": `["ap"]`}), want: deny, verify: deny},
		{category: "claims", name: "aud in another case (API)", source: "RFC 7519 §4.1.3 (StringOrURI compared case-sensitively, §2)", tok: m(map[string]string{"aud": `["API"]`}), want: deny, verify: deny},
		{category: "claims", name: "aud with a trailing space", source: "RFC 7519 §4.1.3", tok: m(map[string]string{"aud": `["api "]`}), want: deny, verify: deny},
		{category: "claims", name: "aud as a comma-joined string", source: "RFC 7519 §4.1.3", tok: m(map[string]string{"aud": `"other,api"`}), want: deny, verify: deny},
		{category: "claims", name: "aud a number in an array", source: "RFC 7519 §4.1.3", tok: m(map[string]string{"aud": `[1]`}), want: deny, verify: deny},
		{category: "claims", name: "aud a nested array", source: "RFC 7519 §4.1.3", tok: m(map[string]string{"aud": `[["api"]]`}), want: deny, verify: deny},
		{category: "claims", name: "aud an object", source: "RFC 7519 §4.1.3", tok: m(map[string]string{"aud": `{"api":true}`}), want: deny, verify: deny},
		{category: "claims", name: "aud as a single string (accepted)", source: "RFC 7519 §4.1.3 (a string or an array)", tok: m(map[string]string{"aud": `"api"`}), want: allow, verify: allow},
		{category: "claims", name: "aud an array holding api among others (accepted)", source: "RFC 7519 §4.1.3", tok: m(map[string]string{"aud": `["other","api"]`}), want: allow, verify: allow},
		{category: "claims", name: "iss missing", source: "RFC 9068 §4; RFC 8725 §3.8", tok: without("iss"), want: deny, verify: deny},
		{category: "claims", name: "iss with a trailing slash", source: "RFC 8414 §3.3 (identical string); RFC 8725 §3.8",
			tok: func() string { return mint(suite.main, map[string]string{"iss": quote(suite.main.iss + "/")}, nil) }, want: deny, verify: deny},
		{category: "claims", name: "iss with the host in upper case", source: "RFC 8725 §3.8 (exact match)",
			tok: func() string {
				return mint(suite.main, map[string]string{"iss": quote(strings.Replace(suite.main.iss, "keyward.test", "KEYWARD.test", 1))}, nil)
			}, want: deny, verify: deny},
		{category: "claims", name: "iss with a leading space", source: "RFC 8725 §3.8", tok: func() string { return mint(suite.main, map[string]string{"iss": quote(" " + suite.main.iss)}, nil) }, want: deny, verify: deny},
		{category: "claims", name: "iss with a trailing NUL", source: "RFC 8725 §3.8; CWE-158", tok: func() string { return mint(suite.main, map[string]string{"iss": quote(suite.main.iss + "\x00")}, nil) }, want: deny, verify: deny},
		{category: "claims", name: "iss with a Cyrillic lookalike letter", source: "RFC 8725 §3.8; Unicode TR #39 (confusables)",
			tok: func() string {
				return mint(suite.main, map[string]string{"iss": quote(strings.Replace(suite.main.iss, "security", "sеcurity", 1))}, nil)
			}, want: deny, verify: deny},
		{category: "claims", name: "iss with https instead of http", source: "RFC 8725 §3.8",
			tok: func() string {
				return mint(suite.main, map[string]string{"iss": quote(strings.Replace(suite.main.iss, "http:", "https:", 1))}, nil)
			}, want: deny, verify: deny},
		{category: "claims", name: "iss of another issuer with main's key", source: "RFC 8725 §3.8",
			tok: func() string { return mint(suite.main, map[string]string{"iss": quote(suite.other.iss)}, nil) }, want: deny, verify: deny},
		{category: "claims", name: "iss as an array", source: "RFC 7519 §4.1.1", tok: func() string {
			return mint(suite.main, map[string]string{"iss": "[" + quote(suite.main.iss) + "]"}, nil)
		}, want: deny, verify: deny},
		{category: "claims", name: "sub missing", source: "RFC 9068 §2.2 (sub REQUIRED)", tok: without("sub"), want: deny, verify: deny},
		{category: "claims", name: "sub empty", source: "RFC 9068 §2.2", tok: m(map[string]string{"sub": `""`}), want: deny, verify: deny},
		{category: "claims", name: "sub a number", source: "RFC 7519 §4.1.2 (StringOrURI)", tok: m(map[string]string{"sub": "1"}), want: deny, verify: deny},
		{category: "claims", name: "sub with CR LF (identity header injection)", source: "RFC 9110 §5.5 (no CR LF in field values); CWE-113",
			tok: m(map[string]string{"sub": `"alice\r\nX-Auth-Request-Groups: admin"`}), want: deny, verify: deny},
		{category: "claims", name: "sub with a NUL", source: "RFC 9110 §5.5; CWE-158", tok: m(map[string]string{"sub": `"alice\u0000admin"`}), want: deny, verify: deny},
		{category: "claims", name: "email with CR LF (identity header injection)", source: "RFC 9110 §5.5; CWE-113",
			tok: m(map[string]string{"email": `"a@example.test\r\nX-Auth-Request-User: admin"`}), want: deny, verify: deny},
		{category: "claims", name: "groups with a newline (identity header injection)", source: "RFC 9110 §5.5; CWE-113",
			tok: m(map[string]string{"groups": `["dev\nadmin"]`}), want: deny, verify: deny},
		{category: "claims", name: "jti missing", source: "RFC 9068 §2.2 (jti REQUIRED)", tok: without("jti"), want: deny, verify: deny},
		{category: "claims", name: "jti a number", source: "RFC 7519 §4.1.7 (a string)", tok: m(map[string]string{"jti": "7"}), want: deny, verify: deny},
		{category: "claims", name: "token_type missing", source: "simplejwt token_type; RFC 8725 §3.11", tok: without("token_type"), want: deny, verify: deny},
		{category: "claims", name: "token_type refresh under typ at+jwt", source: "RFC 8725 §3.11 (explicit typing); DESIGN (never one for the other)",
			tok: m(map[string]string{"token_type": `"refresh"`}), want: deny, verify: deny},
		{category: "claims", name: "token_type ACCESS in upper case", source: "simplejwt token_type (exact)", tok: m(map[string]string{"token_type": `"ACCESS"`}), want: deny, verify: deny},
		{category: "claims", name: "gen negative", source: "keyward refresh generation (ADR 0005)", tok: m(map[string]string{"gen": "-1"}), want: deny, verify: deny},
		{category: "claims", name: "groups not an array of strings", source: "keyward claims (groups: array of strings)", tok: m(map[string]string{"groups": `[1,2]`}), want: deny, verify: deny},
		{category: "claims", name: "nbf 0 (1970) lies in the past: accepted", source: "RFC 7519 §4.1.5", tok: m(map[string]string{"nbf": "0"}), want: allow, verify: allow},
		{category: "claims", name: "iat 0 (1970) lies in the past: accepted (exp still bounds the lifetime)", source: "RFC 7519 §4.1.6; ADR 0013",
			tok: m(map[string]string{"iat": "0"}), want: allow, verify: allow},
		{category: "claims", name: "iat missing is accepted (RFC 7519 makes it optional)", source: "RFC 7519 §4.1.6; RFC 9068 §2.2 (iat REQUIRED of issuers, not checked)",
			tok: without("iat"), want: allow, verify: allow},
	}
}

// crossCases: good tokens in the wrong place.
func crossCases() []attack {
	return []attack{
		{category: "cross-token", name: "the refresh token from a login used as an access token", source: "RFC 8725 §3.11; RFC 9068 §4; CVE-2022-29217 class",
			tok: func() string { return live().refresh }, want: deny,
			// simplejwt's verify accepts any valid token of the issuer, refresh tokens included.
			verify: allow},
		{category: "cross-token", name: "a minted refresh token (typ rt+jwt, token_type refresh) used as an access token", source: "RFC 8725 §3.11",
			tok: func() string {
				return compact(suite.main, `{"alg":"ES256","kid":`+quote(suite.main.kid)+`,"typ":"rt+jwt"}`, payloadOf(suite.main, map[string]string{"token_type": `"refresh"`, "gen": "1"}))
			}, want: deny, verify: 0},
		{category: "cross-token", name: "an access token with typ rt+jwt", source: "RFC 8725 §3.11",
			tok: withHeaderJSON2(func() string { return `{"alg":"ES256","kid":` + quote(suite.main.kid) + `,"typ":"rt+jwt"}` }), want: deny, verify: deny},
		{category: "cross-token", name: "an access token of another TokenIssuer", source: "RFC 8725 §3.8, §3.9",
			tok: func() string { return mint(suite.other, nil, nil) }, want: deny, verify: deny},
		{category: "cross-token", name: "another issuer's token with main's audience and sub", source: "RFC 8725 §3.9",
			tok: func() string {
				return mint(suite.other, map[string]string{"aud": `["api","` + suite.main.iss + `"]`}, nil)
			}, want: deny, verify: deny},
		{category: "cross-token", name: "main's token at the other issuer's verify endpoint", source: "RFC 8725 §3.8",
			tok: func() string { return mint(suite.main, nil, nil) }, want: allow, verify: deny, verifyAt: func() *issuerKeys { return suite.other }},
		{category: "cross-token", name: "an OIDC ID token (typ JWT, nonce, azp)", source: "OIDC Core §2; RFC 9068 §4 (ID tokens are not access tokens); RFC 8725 §3.11",
			tok: func() string {
				return compact(suite.main, `{"alg":"ES256","kid":`+quote(suite.main.kid)+`,"typ":"JWT"}`, payloadOf(suite.main, map[string]string{"nonce": `"n"`, "azp": `"api"`}, "token_type", "jti"))
			}, want: deny, verify: deny},
		{category: "cross-token", name: "an ID token with typ id_token+jwt and token_type access", source: "RFC 8725 §3.11",
			tok: withHeaderJSON2(func() string { return `{"alg":"ES256","kid":` + quote(suite.main.kid) + `,"typ":"id_token+jwt"}` }), want: deny, verify: deny},
		{category: "cross-token", name: "the RS256 issuer's token on main's path", source: "RFC 8725 §3.8",
			tok: func() string { return mint(suite.rsa, nil, nil) }, want: deny, verify: deny},
		{category: "cross-token", name: "main's token on the RS256 issuer's path", source: "RFC 8725 §3.8",
			tok: func() string { return mint(suite.main, nil, nil) }, path: "/rsa/x", want: deny, verify: 0},
	}
}

// sizeCases: megabyte tokens and thousands of claims.
func sizeCases() []attack {
	return []attack{
		{category: "size", name: "a 1 MiB token", source: "RFC 8725 §3.10 (resource exhaustion); RFC 9110 §15.5.20 (431)",
			tok:  func() string { return mint(suite.main, map[string]string{"x": quote(strings.Repeat("a", 1<<20))}, nil) },
			want: deny, httpWant: http.StatusRequestHeaderFieldsTooLarge, httpResetOK: true,
			// The CheckRequest is over the 1 MiB message cap: denied unread as a malformed
			// request (403), in a CheckResponse rather than a gRPC error (ADR 0014).
			grpcWant: codes.PermissionDenied, verify: http.StatusRequestEntityTooLarge},
		{category: "size", name: "a 54 KiB token (under the 64 KiB header limit, over the 8 KiB token cap)", source: "RFC 8725 §3.10",
			tok: func() string {
				return mint(suite.main, map[string]string{"x": quote(strings.Repeat("a", 40<<10))}, nil)
			},
			want: deny, verify: http.StatusRequestEntityTooLarge},
		{category: "size", name: "a token just over the 8 KiB cap", source: "RFC 8725 §3.10",
			tok: func() string { return atCap(false) }, want: deny, verify: deny},
		{category: "size", name: "a token at the 8 KiB cap is accepted", source: "RFC 8725 §3.10 (the cap is a limit, not a target)",
			tok: func() string { return atCap(true) }, want: allow, verify: allow},
		{category: "size", name: "3000 claims", source: "RFC 8725 §3.10; CVE-2023-28632 class (hash flooding)", tok: manyClaims(3000), want: deny, verify: http.StatusRequestEntityTooLarge},
		{category: "size", name: "a 10 KiB kid", source: "RFC 8725 §3.10",
			tok: withHeaderJSON2(func() string { return `{"alg":"ES256","kid":"` + strings.Repeat("k", 10<<10) + `","typ":"at+jwt"}` }), want: deny, verify: deny},
		{category: "size", name: "a header of 500 members", source: "RFC 8725 §3.10",
			tok: withHeaderJSON2(func() string {
				var b strings.Builder
				for i := range 500 {
					fmt.Fprintf(&b, `,"h%d":%d`, i, i)
				}
				return mainHeader(b.String())
			}), want: deny, verify: deny},
	}
}

// atCap mints the longest token of main within token.DefaultMaxLen (8 KiB), or the shortest
// one beyond it.
func atCap(within bool) string {
	const maxLen = 8 << 10
	n := 0
	tok := mint(suite.main, map[string]string{"x": `""`}, nil)
	n = (maxLen - len(tok)) * 3 / 4
	for {
		next := mint(suite.main, map[string]string{"x": quote(strings.Repeat("a", n+1))}, nil)
		tok = mint(suite.main, map[string]string{"x": quote(strings.Repeat("a", n))}, nil)
		if len(tok) <= maxLen && len(next) > maxLen {
			if within {
				return tok
			}
			return next
		}
		if len(tok) > maxLen {
			n--
		} else {
			n++
		}
	}
}

// A live and a revoked login of alice at issuer main.
type pair struct{ access, refresh, sid string }

var (
	liveOnce, revokedOnce sync.Once
	livePair, revokedPair pair
	pairErr               error
)

func live() pair {
	liveOnce.Do(func() { livePair, pairErr = login(context.Background()) })
	if pairErr != nil {
		panic(pairErr)
	}
	return livePair
}

// revoked logs in, revokes the session through /api/token/blacklist/, and waits until the
// validator refuses the access token.
func revoked() pair {
	revokedOnce.Do(func() {
		ctx := context.Background()
		p, err := login(ctx)
		if err != nil {
			pairErr = err
			return
		}
		resp, err := postJSON(ctx, suite.main.base()+"api/token/blacklist/", map[string]string{"refresh": p.refresh})
		if err != nil || resp != 200 {
			pairErr = fmt.Errorf("blacklist: %d %w", resp, err)
			return
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			code, _, err := httpAuthz(ctx, rawAuthz("/api/items", "Bearer "+p.access), false)
			if err == nil && code == 401 {
				break
			}
			if time.Now().After(deadline) {
				pairErr = fmt.Errorf("the validator still answers %d for a revoked session's token: %w", code, err)
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		revokedPair = p
	})
	if pairErr != nil {
		panic(pairErr)
	}
	return revokedPair
}

func login(ctx context.Context) (pair, error) {
	body, _ := json.Marshal(map[string]string{"username": "alice", "password": "wonderland"})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, suite.main.base()+"api/token/", bytes.NewReader(body))
	if err != nil {
		return pair{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := httpClient.Do(req)
	if err != nil {
		return pair{}, err
	}
	defer func() { _ = resp.Body.Close() }()
	var out struct{ Access, Refresh string }
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != 200 {
		return pair{}, fmt.Errorf("login: %d %w", resp.StatusCode, err)
	}
	var claims struct {
		SID string `json:"sid"`
	}
	p, _ := b64.DecodeString(segs(out.Access)[1])
	_ = json.Unmarshal(p, &claims)
	return pair{out.Access, out.Refresh, claims.SID}, nil
}

func postJSON(ctx context.Context, url string, v any) (int, error) {
	body, _ := json.Marshal(v)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := httpClient.Do(req)
	if err != nil {
		return 0, err
	}
	_ = resp.Body.Close()
	return resp.StatusCode, nil
}

// revocationCases: a revoked session's tokens, and copies of them re-encoded or re-signed.
func revocationCases() []attack {
	resigned := func(edit func(p string) string) func() string {
		return func() string {
			sid := revoked().sid
			p := payloadOf(suite.main, map[string]string{"sid": quote(sid)})
			return compact(suite.main, headerOf(suite.main), edit(p))
		}
	}
	return []attack{
		{category: "revocation", name: "the access token of a revoked session", source: "RFC 7009 §2; RFC 9068 §4; DESIGN (sid revocation)",
			tok: func() string { return revoked().access }, want: deny, verify: deny},
		{category: "revocation", name: "the refresh token of a revoked session", source: "RFC 7009 §2; simplejwt blacklist",
			tok: func() string { return revoked().refresh }, want: deny, verify: http.StatusBadRequest},
		{category: "revocation", name: "the high-S twin of a revoked session's access token", source: "SEC 1 §4.1.4 (ECDSA malleability); RFC 7009",
			tok: func() string { return highS(revoked().access) }, want: deny, verify: deny},
		{category: "revocation", name: "a revoked access token with padding on its signature", source: "RFC 4648 §3.2; RFC 7515 §2",
			tok: func() string { return revoked().access + "==" }, want: deny, verify: deny},
		{category: "revocation", name: "a revoked access token with non-zero trailing bits", source: "RFC 4648 §3.5",
			tok: func() string {
				t := revoked().access
				p := segs(t)
				s := p[2]
				last := strings.IndexByte(alphabet, s[len(s)-1])
				return p[0] + "." + p[1] + "." + s[:len(s)-1] + string(alphabet[last|2])
			}, want: deny, verify: deny},
		{category: "revocation", name: "the revoked sid re-signed with the members reordered", source: "RFC 8259 §4 (member order is not significant)",
			tok: resigned(func(p string) string {
				var mm map[string]json.RawMessage
				_ = json.Unmarshal([]byte(p), &mm)
				keys := sortedKeysRaw(mm)
				var b strings.Builder
				b.WriteByte('{')
				for i := len(keys) - 1; i >= 0; i-- {
					if i < len(keys)-1 {
						b.WriteByte(',')
					}
					b.WriteString(quote(keys[i]) + ":" + string(mm[keys[i]]))
				}
				b.WriteByte('}')
				return b.String()
			}), want: deny, verify: deny},
		{category: "revocation", name: "the revoked sid re-signed with whitespace in the JSON", source: "RFC 8259 §2 (insignificant whitespace)",
			tok: resigned(func(p string) string { return strings.ReplaceAll(strings.ReplaceAll(p, ",", " ,\n "), ":", " : ") }), want: deny, verify: deny},
		{category: "revocation", name: "the revoked sid re-signed with an escaped member name (\\u0073id)", source: "RFC 8259 §7",
			tok: resigned(func(p string) string { return strings.Replace(p, `"sid"`, `"\u0073id"`, 1) }), want: deny, verify: deny},
		{category: "revocation", name: "the revoked sid re-signed with its value escaped", source: "RFC 8259 §7",
			tok: resigned(func(p string) string {
				sid := revoked().sid
				esc := fmt.Sprintf(`\u%04x`, sid[0]) + sid[1:]
				return strings.Replace(p, quote(sid), `"`+esc+`"`, 1)
			}), want: deny, verify: deny},
	}
}

func sortedKeysRaw(mm map[string]json.RawMessage) []string {
	s := map[string]string{}
	for k := range mm {
		s[k] = "x"
	}
	return sortedKeys(s)
}

// transportCases run on the validator's front ends only.
func transportCases() []attack {
	tok := func() string { return live().access }
	hdr := func(authz ...string) func() (string, bool) {
		return func() (string, bool) {
			var b strings.Builder
			b.WriteString("GET /authz/api/items HTTP/1.1\r\nHost: " + appHost + "\r\n")
			for _, a := range authz {
				b.WriteString(strings.ReplaceAll(a, "$T", tok()) + "\r\n")
			}
			b.WriteString("Connection: close\r\n\r\n")
			return b.String(), false
		}
	}
	grpcAuth := func(v string) func() *authv3.CheckRequest {
		return func() *authv3.CheckRequest { return checkReq("/api/items", strings.ReplaceAll(v, "$T", tok()), nil)() }
	}
	raw := func(trusted bool, lines ...string) func() (string, bool) {
		return func() (string, bool) {
			var b strings.Builder
			b.WriteString(lines[0] + " HTTP/1.1\r\n")
			for _, l := range lines[1:] {
				b.WriteString(strings.ReplaceAll(l, "$T", tok()) + "\r\n")
			}
			b.WriteString("Connection: close\r\n\r\n")
			return b.String(), trusted
		}
	}
	t := "transport"
	return []attack{
		{category: t, name: "two Authorization headers, both valid", source: "RFC 9110 §5.3 (a field that is not a list MUST NOT repeat); RFC 6750 §2",
			http: hdr("Authorization: Bearer $T", "Authorization: Bearer $T"),
			grpc: func() *authv3.CheckRequest {
				r := checkReq("/api/items", "", nil)()
				r.Attributes.Request.Http.HeaderMap = &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
					{Key: "authorization", Value: "Bearer " + tok()}, {Key: "authorization", Value: "Bearer " + tok()}}}
				return r
			}, want: deny},
		{category: t, name: "Authorization and authorization: the same field twice", source: "RFC 9110 §5.1 (field names are case-insensitive), §5.3",
			http: hdr("Authorization: Bearer $T", "authorization: Bearer $T"), want: deny},
		{category: t, name: "a valid and a forged Authorization header", source: "RFC 9110 §5.3",
			http: hdr("Authorization: Bearer $T", "Authorization: Bearer x.y.z"), grpc: grpcAuth("Bearer $T, Bearer x.y.z"), want: deny},
		{category: t, name: "two tokens in one field, comma-joined (Envoy's merge)", source: "RFC 9110 §5.3",
			http: hdr("Authorization: Bearer $T,$T"), grpc: grpcAuth("Bearer $T,$T"), want: deny},
		{category: t, name: "scheme bearer in lower case (accepted)", source: "RFC 9110 §11.1 (auth-scheme is case-insensitive); RFC 6750 §2.1",
			http: hdr("Authorization: bearer $T"), grpc: grpcAuth("bearer $T"), want: allow},
		{category: t, name: "scheme BEARER in upper case (accepted)", source: "RFC 9110 §11.1",
			http: hdr("Authorization: BEARER $T"), grpc: grpcAuth("BEARER $T"), want: allow},
		{category: t, name: "scheme Basic with the token as credentials", source: "RFC 7617; RFC 6750 §2.1",
			http: hdr("Authorization: Basic $T"), grpc: grpcAuth("Basic $T"), want: deny},
		{category: t, name: "scheme Token", source: "RFC 6750 §2.1",
			http: hdr("Authorization: Token $T"), grpc: grpcAuth("Token $T"), want: deny},
		{category: t, name: "Bearer without a space", source: "RFC 6750 §2.1 (b64token after one SP)",
			http: hdr("Authorization: Bearer$T"), grpc: grpcAuth("Bearer$T"), want: deny},
		{category: t, name: "Bearer followed by two spaces", source: "RFC 6750 §2.1",
			http: hdr("Authorization: Bearer  $T"), grpc: grpcAuth("Bearer  $T"), want: deny},
		{category: t, name: "Bearer followed by a tab", source: "RFC 6750 §2.1",
			http: hdr("Authorization: Bearer\t$T"), grpc: grpcAuth("Bearer\t$T"), want: deny},
		{category: t, name: "Bearer with nothing after it", source: "RFC 6750 §3.1",
			http: hdr("Authorization: Bearer "), grpc: grpcAuth("Bearer "), want: deny},
		{category: t, name: "an empty Authorization header", source: "RFC 6750 §3.1",
			http: hdr("Authorization: "), grpc: grpcAuth(""), want: deny},
		{category: t, name: "the token in the query string", source: "RFC 6750 §2.3 (not supported); RFC 9700 §2.4",
			http: raw(false, "GET /authz/api/items?access_token=$T", "Host: "+appHost),
			grpc: func() *authv3.CheckRequest { return checkReq("/api/items?access_token="+tok(), "", nil)() }, want: deny},
		{category: t, name: "the token in a cookie", source: "RFC 6750 §2 (header only)",
			http: raw(false, "GET /authz/api/items", "Host: "+appHost, "Cookie: access_token=$T"),
			grpc: func() *authv3.CheckRequest {
				return checkReq("/api/items", "", map[string]string{"cookie": "access_token=" + tok()})()
			}, want: deny},
		{category: t, name: "an Authorization header named in upper case in Envoy's header map", source: "RFC 9113 §8.2.1 (HTTP/2 field names are lower case)",
			grpc: func() *authv3.CheckRequest {
				return checkReq("/api/items", "", map[string]string{"Authorization": "Bearer " + tok()})()
			}, want: deny},
		{category: t, name: "a forged X-Auth-Request-User on a valid request is overwritten", source: "DESIGN (inbound identity headers stripped); CWE-290",
			http: hdr("Authorization: Bearer $T", "X-Auth-Request-User: admin"), httpCheck: identityIs("alice"),
			grpc: func() *authv3.CheckRequest {
				return checkReq("/api/items", "Bearer "+tok(), map[string]string{"x-auth-request-user": "admin"})()
			}, grpcCheck: grpcIdentityIs("alice"), want: allow},
		{category: t, name: "a forged X-Auth-Request-User without a token", source: "CWE-290",
			http: hdr("X-Auth-Request-User: alice"), grpc: func() *authv3.CheckRequest {
				return checkReq("/api/items", "", map[string]string{"x-auth-request-user": "alice"})()
			}, want: deny},
		{category: t, name: "an untrusted peer's X-Original-URI pointing at an anonymous path", source: "CWE-290; nginx auth_request; RFC 7239 §8.1",
			http: raw(false, "GET /authz/api/items", "Host: "+appHost, "X-Original-URI: /public/x"), want: deny},
		{category: t, name: "an untrusted peer's X-Forwarded-Uri pointing at an anonymous path", source: "CWE-290; Traefik ForwardAuth",
			http: raw(false, "GET /authz/api/items", "Host: "+appHost, "X-Forwarded-Uri: /public/x", "X-Forwarded-Method: GET"), want: deny},
		{category: t, name: "an untrusted peer's X-Original-URL pointing at an anonymous path", source: "CWE-290; ingress-nginx auth-url",
			http: raw(false, "GET /authz/api/items", "Host: "+appHost, "X-Original-URL: https://"+appHost+"/public/x"), want: deny},
		{category: t, name: "an untrusted peer's X-Original-URI with no path of its own", source: "CWE-290",
			http: raw(false, "GET /authz", "Host: "+appHost, "X-Original-URI: /public/x"), want: forb},
		{category: t, name: "an untrusted peer's X-Forwarded-Host naming an uncovered host", source: "CWE-290; RFC 7239 §8.1",
			http: raw(false, "GET /authz/api/items", "Host: "+appHost, "X-Forwarded-Host: elsewhere.example"), want: deny},
		{category: t, name: "the trusted proxy's X-Original-URI contradicted by a client X-Forwarded-Uri", source: "CWE-436 (interpretation conflict)",
			http: raw(true, "GET /authz", "Host: "+appHost, "X-Original-URI: /api/items", "X-Forwarded-Uri: /public/x"), want: forb},
		{category: t, name: "the trusted proxy's path contradicted by X-Original-URI", source: "CWE-436",
			http: raw(true, "GET /authz/api/items", "Host: "+appHost, "X-Original-URI: /public/x"), want: forb},
		{category: t, name: "X-Original-URI sent twice through the trusted proxy", source: "RFC 9110 §5.3; CWE-436",
			http: raw(true, "GET /authz", "Host: "+appHost, "X-Original-URI: /public/x", "X-Original-URI: /public/y"), want: forb},
		{category: t, name: "X-Original-Method contradicted by X-Forwarded-Method", source: "CWE-436",
			http: raw(true, "GET /authz", "Host: "+appHost, "X-Original-URI: /public/x", "X-Original-Method: GET", "X-Forwarded-Method: DELETE"), want: forb},
		{category: t, name: "a trusted X-Original-URI with a dot-segment escape from /public/", source: "RFC 3986 §5.2.4; CVE-2021-23017 class (path confusion)",
			http: raw(true, "GET /authz", "Host: "+appHost, "X-Original-URI: /public/../api/items"), want: deny},
		{category: t, name: "a percent-encoded dot-segment escape from /public/", source: "RFC 3986 §2.1, §5.2.4; CVE-2021-41773 class",
			http: raw(false, "GET /authz/public/%2e%2e/api/items", "Host: "+appHost),
			grpc: func() *authv3.CheckRequest { return checkReq("/public/%2e%2e/api/items", "", nil)() }, want: deny},
		{category: t, name: "a double-encoded dot-segment", source: "CWE-174 (double decoding)",
			http: raw(false, "GET /authz/public/%252e%252e/api/items", "Host: "+appHost),
			grpc: func() *authv3.CheckRequest { return checkReq("/public/%252e%252e/api/items", "", nil)() }, want: forb},
		{category: t, name: "an encoded NUL in the path", source: "CWE-158",
			http: raw(false, "GET /authz/public/%00/../api/items", "Host: "+appHost),
			grpc: func() *authv3.CheckRequest { return checkReq("/public/%00/../api/items", "", nil)() }, want: forb},
		{category: t, name: "a dot-segment above the root", source: "RFC 3986 §5.2.4",
			http: raw(false, "GET /authz/../../public/x", "Host: "+appHost),
			grpc: func() *authv3.CheckRequest { return checkReq("/../../public/x", "", nil)() }, want: forb},
		{category: t, name: "non-UTF-8 bytes in the Authorization header", source: "RFC 9110 §5.5 (obs-text); CWE-176",
			http: hdr("Authorization: Bearer \xff\xfe$T"), want: deny},
		{category: t, name: "non-UTF-8 bytes in X-Original-URI from the trusted proxy", source: "RFC 9110 §5.5; CWE-176",
			http: raw(true, "GET /authz", "Host: "+appHost, "X-Original-URI: /public/\xff/../../api/items"), want: deny},
		{category: t, name: "an 80 KiB header section is refused with 431", source: "RFC 6585 §5; RFC 9110 §15.5 (431)",
			http: hdr("Authorization: Bearer $T", "Cookie: "+strings.Repeat("c", 80<<10)), want: deny, httpWant: http.StatusRequestHeaderFieldsTooLarge, httpResetOK: true},
		{category: t, name: "a host with a trailing dot and port (same host)", source: "RFC 1034 §3.1; RFC 9110 §7.2",
			http: raw(false, "GET /authz/api/items", "Host: "+appHost+".:443", "Authorization: Bearer $T"),
			grpc: func() *authv3.CheckRequest {
				r := checkReq("/api/items", "Bearer "+tok(), nil)()
				r.Attributes.Request.Http.Host = appHost + ".:443"
				return r
			}, want: allow},
		{category: t, name: "an empty host in the CheckRequest falls back to :authority of another host", source: "Envoy ext_authz attribute context",
			grpc: func() *authv3.CheckRequest {
				r := testsupport.CheckRequest("GET", "elsewhere.example", "/api/items", tok(), nil)
				r.Attributes.Request.Http.Host = ""
				return r
			}, want: forb},
		{category: t, name: "a header_map with entries but no Authorization hides the headers map's token", source: "Envoy ext_authz header_map (one source only)",
			grpc: func() *authv3.CheckRequest {
				r := checkReq("/api/items", "Bearer "+tok(), nil)()
				r.Attributes.Request.Http.HeaderMap = &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: "x", Value: "y"}}}
				return r
			}, want: deny},
		{category: t, name: "a CheckRequest without a method", source: "fail closed (DESIGN)",
			grpc: func() *authv3.CheckRequest {
				r := checkReq("/api/items", "Bearer "+tok(), nil)()
				r.Attributes.Request.Http.Method = ""
				return r
			}, want: forb},
		{category: t, name: "an absolute-form request line naming another host", source: "RFC 9112 §3.2.2",
			http: raw(false, "GET http://elsewhere.example/authz/api/items", "Host: "+appHost, "Authorization: Bearer $T"), want: forb},
	}
}

// statusLine is for messages.
func statusLine(code int) string { return strconv.Itoa(code) + " " + http.StatusText(code) }
