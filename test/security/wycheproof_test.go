package security

import (
	"encoding/hex"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyward/keyward/internal/testenv"
)

// The Wycheproof vectors (testdata/wycheproof, see SOURCE.txt) through the real front ends
// and the issuer. internal/token checks each vector at the signature layer (valid ones
// verify there) and internal/validator runs them through the decision core with the
// vectors' keys installed; here they are what an attacker would send to a running keyward:
//
//   - the JWS vectors as they are, as tokens: none may be accepted (their keys are not
//     keyward's and their payloads are not keyward claims);
//   - the ECDSA P-256 (IEEE P1363) and Ed25519 signatures grafted onto a real token of the
//     ES256 and EdDSA issuers: edge-case encodings (r or s zero or out of range, wrong
//     lengths, S >= L, ...) against the real key. None may be accepted; the "valid" ones
//     are signatures over other messages, so they are refused too.

func readWycheproof(t *testing.T, name string, v any) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "testdata", "wycheproof", name))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		t.Fatal(err)
	}
}

type vector struct {
	TcID    int    `json:"tcId"`
	Comment string `json:"comment"`
	JWS     string `json:"jws"`
	Sig     string `json:"sig"`
	Result  string `json:"result"`
}

type vectorFile struct {
	NumberOfTests int `json:"numberOfTests"`
	TestGroups    []struct {
		Tests []vector `json:"tests"`
	} `json:"testGroups"`
}

// httpSafe reports whether s can be an HTTP field value as it is.
func httpSafe(s string) bool { return !strings.ContainsAny(s, "\r\n\x00") }

// refusedEverywhere sends tok to the three channels and reports the first answer that is
// not a refusal.
func refusedEverywhere(t *testing.T, k *issuerKeys, path, tok string) (channel string, code int) {
	ctx := t.Context()
	if httpSafe(tok) {
		c, _, err := httpAuthz(ctx, rawAuthz(path, "Bearer "+tok), false)
		if err != nil {
			t.Fatal(err)
		}
		if c != http.StatusUnauthorized {
			return chHTTP, c
		}
	}
	c, _, err := grpcAuthz(ctx, checkReq(path, "Bearer "+tok, nil)())
	if err != nil {
		t.Fatal(err)
	}
	if c != grpcCodeOf(401) {
		return chGRPC, int(c)
	}
	v, errCode, err := verifyAt(ctx, k, tok)
	if err != nil {
		t.Fatal(err)
	}
	// An empty token is a blank field to simplejwt: 400 "This field may not be blank."
	blank := strings.TrimSpace(tok) == "" && v == http.StatusBadRequest
	if !blank && (v != http.StatusUnauthorized || errCode != "token_not_valid") {
		return chVerify, v
	}
	return "", 0
}

func TestWycheproofThroughTheFrontEnds(t *testing.T) {
	t.Parallel()
	type source struct {
		file string
		k    func() *issuerKeys
		path string
		// token turns a vector into a token.
		token func(v vector) string
	}
	graft := func(k func() *issuerKeys) func(v vector) string {
		return func(v vector) string {
			sig, err := hex.DecodeString(v.Sig)
			if err != nil {
				t.Fatal(err)
			}
			return withSig(mint(k(), nil, nil), sig)
		}
	}
	sources := []source{
		{"json_web_signature_test.json", func() *issuerKeys { return suite.main }, "/api/items", func(v vector) string { return v.JWS }},
		{"ecdsa_secp256r1_sha256_p1363_test.json", func() *issuerKeys { return suite.main }, "/api/items", graft(func() *issuerKeys { return suite.main })},
		{"ed25519_test.json", func() *issuerKeys { return suite.ed }, "/ed/x", graft(func() *issuerKeys { return suite.ed })},
	}
	for _, s := range sources {
		t.Run(s.file, func(t *testing.T) {
			var f vectorFile
			readWycheproof(t, s.file, &f)
			n, invalid := 0, 0
			for _, g := range f.TestGroups {
				for _, v := range g.Tests {
					n++
					if v.Result == "invalid" {
						invalid++
					}
					if ch, code := refusedEverywhere(t, s.k(), s.path, s.token(v)); ch != "" {
						t.Errorf("tcId %d (%s, %s): %s answered %d", v.TcID, v.Comment, v.Result, ch, code)
					}
				}
			}
			if n != f.NumberOfTests {
				t.Errorf("ran %d vectors, the file declares %d", n, f.NumberOfTests)
			}
			t.Logf("%d vectors (%d invalid) refused by the HTTP and gRPC front ends and /api/token/verify/", n, invalid)
		})
	}
}
