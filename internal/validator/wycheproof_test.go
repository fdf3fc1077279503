package validator

import (
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
	"github.com/keyward/keyward/internal/keys"
	"github.com/keyward/keyward/internal/token"
)

// The public Wycheproof vectors (testdata/wycheproof, see SOURCE.txt) through the decision
// core, as tokens presented to a protected path of the sample policy, with the vector's key
// installed as the issuer's key. internal/token checks the signature layer vector by vector
// (valid vectors verify there); here no vector may get through: the JWS vectors' payloads are
// not keyward access-token claims ("foo", RFC 7520 text), and the ES256 vectors' signatures
// are over their own messages, not a token's signing input. The test asserts that every one
// is denied with 401 and a token reason, and that the malformed ones (a byte outside the
// base64url alphabet anywhere) are refused as malformed before any key is used.

func readVectors(t *testing.T, name string, v any) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "testdata", "wycheproof", name))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		t.Fatalf("decode %s: %v", name, err)
	}
}

func isCompactBase64URL(jws string) bool {
	for _, seg := range strings.Split(jws, ".") {
		for i := 0; i < len(seg); i++ {
			c := seg[i]
			alnum := 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9'
			if !alnum && c != '-' && c != '_' {
				return false
			}
		}
	}
	return true
}

func TestWycheproofJWSThroughTheDecisionCore(t *testing.T) {
	var file struct {
		NumberOfTests int `json:"numberOfTests"`
		TestGroups    []struct {
			Private json.RawMessage `json:"private"`
			Public  json.RawMessage `json:"public"`
			Tests   []struct {
				TcID    int    `json:"tcId"`
				Comment string `json:"comment"`
				JWS     string `json:"jws"`
				Result  string `json:"result"`
			} `json:"tests"`
		} `json:"testGroups"`
	}
	readVectors(t, "json_web_signature_test.json", &file)
	f := newFixture(t)
	f.v.allowHS = true
	f.useSigningKey("wycheproof")
	total := 0
	reasons := map[Reason]int{}
	for _, g := range file.TestGroups {
		key := wycheproofKey(g.Private, g.Public)
		for _, v := range g.Tests {
			total++
			if key != nil {
				f.v.store.replaceKeys(f.v.store.jwks, testNS+"/wycheproof", map[string]*token.VerifyKey{key.KID: key})
			}
			d := f.v.Check(t.Context(), request("/", v.JWS))
			reasons[d.Reason]++
			if d.Allowed() || d.Status != 401 {
				t.Errorf("tcId %d (%s, %s): decision %d %s, want 401", v.TcID, v.Comment, v.Result, d.Status, d.Reason)
			}
			commaRefused := strings.Contains(v.JWS, ",") && d.Reason == ReasonMultipleAuthorization
			if !isCompactBase64URL(v.JWS) && strings.Count(v.JWS, ".") == 2 && d.Reason != Reason(token.ReasonMalformed) && !commaRefused {
				t.Errorf("tcId %d (%s): a non-base64url character gave reason %s, want malformed", v.TcID, v.Comment, d.Reason)
			}
		}
	}
	if total != file.NumberOfTests {
		t.Errorf("ran %d vectors, the file declares %d", total, file.NumberOfTests)
	}
	t.Logf("%d JWS vectors denied; reasons: %v", total, reasons)
}

// wycheproofKey reads a vector group's key as the token package would: a public JWK from a
// JWKS, or the public part of a private one (HS: the secret).
func wycheproofKey(private, public json.RawMessage) *token.VerifyKey {
	if public != nil {
		if set, err := token.VerifyKeysFromJWKS([]byte(`{"keys":[` + string(public) + `]}`)); err == nil {
			for _, k := range set {
				return k
			}
		}
		return nil
	}
	var meta struct {
		KID string              `json:"kid"`
		Alg keywardv1.Algorithm `json:"alg"`
	}
	if json.Unmarshal(private, &meta) != nil {
		return nil
	}
	k, err := token.VerifyKeyFromStored(&keys.StoredKey{Lifecycle: keys.Lifecycle{KID: meta.KID, Algorithm: meta.Alg}, JWK: private})
	if err != nil {
		return nil
	}
	return k
}

func TestWycheproofES256ThroughTheDecisionCore(t *testing.T) {
	var file struct {
		NumberOfTests int `json:"numberOfTests"`
		TestGroups    []struct {
			PublicKey struct {
				Uncompressed string `json:"uncompressed"`
			} `json:"publicKey"`
			Tests []struct {
				TcID    int    `json:"tcId"`
				Comment string `json:"comment"`
				Sig     string `json:"sig"`
				Result  string `json:"result"`
			} `json:"tests"`
		} `json:"testGroups"`
	}
	readVectors(t, "ecdsa_secp256r1_sha256_p1363_test.json", &file)
	f := newFixture(t)
	f.useSigningKey("wycheproof")
	const kid = "wycheproof-p256"
	total := 0
	reasons := map[Reason]int{}
	for _, g := range file.TestGroups {
		point, err := hex.DecodeString(g.PublicKey.Uncompressed)
		if err != nil {
			t.Fatal(err)
		}
		pub, err := ecdh.P256().NewPublicKey(point)
		if err != nil {
			t.Fatalf("group key: %v", err)
		}
		ecpub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), pub.Bytes())
		if err != nil {
			t.Fatal(err)
		}
		vk, err := token.NewVerifyKey(kid, keywardv1.AlgorithmES256, ecpub)
		if err != nil {
			t.Fatal(err)
		}
		f.v.store.replaceKeys(f.v.store.jwks, testNS+"/wycheproof", map[string]*token.VerifyKey{kid: vk})
		claims := f.claims()
		payload, err := claims.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		input := b64(`{"alg":"ES256","kid":"`+kid+`","typ":"at+jwt"}`) + "." + base64.RawURLEncoding.EncodeToString(payload)
		for _, v := range g.Tests {
			total++
			sig, err := hex.DecodeString(v.Sig)
			if err != nil {
				t.Fatal(err)
			}
			d := f.v.Check(t.Context(), request("/", input+"."+base64.RawURLEncoding.EncodeToString(sig)))
			reasons[d.Reason]++
			if d.Allowed() || d.Status != 401 {
				t.Errorf("tcId %d (%s, %s): decision %d %s, want 401", v.TcID, v.Comment, v.Result, d.Status, d.Reason)
			}
		}
	}
	if total != file.NumberOfTests {
		t.Errorf("ran %d vectors, the file declares %d", total, file.NumberOfTests)
	}
	t.Logf("%d ES256 signatures over other messages denied; reasons: %v", total, reasons)
}
