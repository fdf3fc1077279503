package token

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
	"github.com/keyward/keyward/internal/keys"
)

// Wycheproof vectors from testdata/wycheproof (see SOURCE.txt there). Result "valid" must
// verify, "invalid" must be refused, "acceptable" may go either way: those are counted and
// logged, not asserted (none of the three files used here holds any).

func readWycheproof(t *testing.T, name string, v any) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "testdata", "wycheproof", name))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		t.Fatalf("decode %s: %v", name, err)
	}
}

type wycheproofJWSFile struct {
	NumberOfTests int `json:"numberOfTests"`
	TestGroups    []struct {
		Comment string          `json:"comment"`
		Private json.RawMessage `json:"private"`
		Public  json.RawMessage `json:"public"`
		Tests   []struct {
			TcID    int      `json:"tcId"`
			Comment string   `json:"comment"`
			JWS     string   `json:"jws"`
			Result  string   `json:"result"`
			Flags   []string `json:"flags"`
		} `json:"tests"`
	} `json:"testGroups"`
}

// wycheproofPolicy lists the vectors marked valid that keyward refuses on purpose, with the
// reason it must give.
var wycheproofPolicy = map[int]struct {
	reason Reason
	why    string
}{
	346: {ReasonAlgMismatch, "RFC 7520 figure 20: the key is published for PS256, the header says PS384"},
	350: {ReasonAlgMismatch, "RFC 7520 figure 20 with key_ops: the key is published for PS256, the header says PS384"},
	347: {ReasonUnsupportedAlg, `RFC 7520 figure 27: the JWK's alg is "ES521", not a JWS algorithm`},
	351: {ReasonUnsupportedAlg, `RFC 7520 figure 27 with key_ops: the JWK's alg is "ES521", not a JWS algorithm`},
	372: {ReasonMalformed, "a '?' inside the header segment, which lenient decoders skip"},
	373: {ReasonMalformed, "a '?' inside the payload segment, which lenient decoders skip"},
}

// wycheproofDefective lists vectors whose expected result this copy of the file cannot
// support: they are byte-for-byte the valid vector 357 (their '=' padding was lost), so a
// verifier that accepts 357 must accept them. The test checks that they still are identical.
var wycheproofDefective = map[int]string{
	367: "invalidBase64Padding",
	370: "invalidBase64PaddingInPayload",
}

// wycheproofFlagReasons are the reasons keyward may give for invalid vectors with these
// flags. A WrongPrimitive vector either names another algorithm than the key's in its header
// (alg_mismatch) or names the key's algorithm over a signature made with another one
// (bad_signature).
var wycheproofFlagReasons = map[string][]Reason{
	"AlgIsNone":         {ReasonUnsupportedAlg},
	"WrongPrimitive":    {ReasonAlgMismatch, ReasonBadSignature},
	"JsonSerialization": {ReasonMalformed},
	"ModifiedPadding":   {ReasonBadSignature},
	"ModifiedSignature": {ReasonBadSignature},
}

// wycheproofKey reads a test group's key the way keyward reads keys: a public key through
// VerifyKeysFromJWKS, as if published in a JWKS; an HMAC secret (groups without a public
// key) through VerifyKeyFromStored, as if kept in a key-set Secret.
func wycheproofKey(private, public json.RawMessage) (*VerifyKey, error) {
	if public != nil {
		set, err := VerifyKeysFromJWKS([]byte(`{"keys":[` + string(public) + `]}`))
		if err != nil {
			return nil, err
		}
		for _, k := range set {
			return k, nil
		}
	}
	var meta struct {
		KID string              `json:"kid"`
		Alg keywardv1.Algorithm `json:"alg"`
	}
	if err := json.Unmarshal(private, &meta); err != nil {
		return nil, err
	}
	return VerifyKeyFromStored(&keys.StoredKey{Lifecycle: keys.Lifecycle{KID: meta.KID, Algorithm: meta.Alg}, JWK: private})
}

func TestWycheproofJWS(t *testing.T) {
	var f wycheproofJWSFile
	readWycheproof(t, "json_web_signature_test.json", &f)

	jwsOf := map[int]string{}
	for _, g := range f.TestGroups {
		for _, v := range g.Tests {
			jwsOf[v.TcID] = v.JWS
		}
	}

	var total, accepted, refused, policy, defective, acceptable int
	reasons := map[Reason]int{}
	for _, g := range f.TestGroups {
		key, keyErr := wycheproofKey(g.Private, g.Public)
		for _, v := range g.Tests {
			total++
			err := keyErr
			if err == nil {
				var tok *Token
				if tok, _, err = parseJWS([]byte(v.JWS), 0); err == nil {
					err = Verify(tok, key)
				}
			}
			reason := ReasonOf(err)
			if err != nil && reason == "" {
				t.Errorf("tcId %d (%s): error without a reason: %v", v.TcID, v.Comment, err)
			}
			if name, ok := wycheproofDefective[v.TcID]; ok {
				defective++
				if v.Comment != name || v.JWS != jwsOf[357] {
					t.Errorf("tcId %d is no longer the known defective vector %s; review it", v.TcID, name)
				}
				continue
			}
			switch v.Result {
			case "valid":
				if p, ok := wycheproofPolicy[v.TcID]; ok {
					policy++
					reasons[reason]++
					if reason != p.reason {
						t.Errorf("tcId %d (%s) refused by policy (%s): reason %q (%v), want %q", v.TcID, v.Comment, p.why, reason, err, p.reason)
					}
					continue
				}
				if err != nil {
					t.Errorf("tcId %d (%s, group %s) is valid but refused: %v", v.TcID, v.Comment, g.Comment, err)
					continue
				}
				accepted++
			case "invalid":
				if err == nil {
					t.Errorf("tcId %d (%s, group %s) is invalid but accepted", v.TcID, v.Comment, g.Comment)
					continue
				}
				refused++
				reasons[reason]++
				for _, flag := range v.Flags {
					if want, ok := wycheproofFlagReasons[flag]; ok && !slices.Contains(want, reason) {
						t.Errorf("tcId %d (%s, flag %s): reason %q (%v), want one of %q", v.TcID, v.Comment, flag, reason, err, want)
					}
				}
			case "acceptable":
				acceptable++
				t.Logf("tcId %d (%s) is acceptable; keyward's result: %v", v.TcID, v.Comment, err)
			default:
				t.Errorf("tcId %d: unknown result %q", v.TcID, v.Result)
			}
		}
	}
	if total != f.NumberOfTests {
		t.Errorf("ran %d vectors, the file declares %d", total, f.NumberOfTests)
	}
	if policy != len(wycheproofPolicy) {
		t.Errorf("%d policy refusals, want %d", policy, len(wycheproofPolicy))
	}
	t.Logf("%d vectors: %d valid accepted, %d invalid refused, %d valid refused by policy, %d acceptable, %d defective (byte-identical to valid tcId 357, accepted)",
		total, accepted, refused, policy, acceptable, defective)
	t.Logf("reasons of refusals: %v", reasons)
}

type wycheproofSigFile struct {
	NumberOfTests int `json:"numberOfTests"`
	TestGroups    []struct {
		PublicKey struct {
			Uncompressed string `json:"uncompressed"` // ECDSA
			PK           string `json:"pk"`           // Ed25519
		} `json:"publicKey"`
		Tests []struct {
			TcID    int      `json:"tcId"`
			Comment string   `json:"comment"`
			Msg     string   `json:"msg"`
			Sig     string   `json:"sig"`
			Result  string   `json:"result"`
			Flags   []string `json:"flags"`
		} `json:"tests"`
	} `json:"testGroups"`
}

// runWycheproofSignatures runs a signature file through verifySignature, the primitive
// Verify calls, with the key of each group.
func runWycheproofSignatures(t *testing.T, name string, alg keywardv1.Algorithm, key func(hexKey string) (any, error)) {
	var f wycheproofSigFile
	readWycheproof(t, name, &f)
	var total, accepted, refused, acceptable int
	for _, g := range f.TestGroups {
		hexKey := g.PublicKey.Uncompressed + g.PublicKey.PK
		k, keyErr := key(hexKey)
		for _, v := range g.Tests {
			total++
			msg, err1 := hex.DecodeString(v.Msg)
			sig, err2 := hex.DecodeString(v.Sig)
			if err1 != nil || err2 != nil {
				t.Fatalf("tcId %d: undecodable hex", v.TcID)
			}
			err := keyErr
			if err == nil {
				err = verifySignature(alg, k, msg, sig)
			}
			switch v.Result {
			case "valid":
				if err != nil {
					t.Errorf("tcId %d (%s %v) is valid but refused: %v", v.TcID, v.Comment, v.Flags, err)
					continue
				}
				accepted++
			case "invalid":
				if err == nil {
					t.Errorf("tcId %d (%s %v) is invalid but accepted", v.TcID, v.Comment, v.Flags)
					continue
				}
				refused++
			case "acceptable":
				acceptable++
				t.Logf("tcId %d (%s %v) is acceptable; keyward's result: %v", v.TcID, v.Comment, v.Flags, err)
			default:
				t.Errorf("tcId %d: unknown result %q", v.TcID, v.Result)
			}
		}
	}
	if total != f.NumberOfTests {
		t.Errorf("ran %d vectors, the file declares %d", total, f.NumberOfTests)
	}
	t.Logf("%d vectors: %d valid accepted, %d invalid refused, %d acceptable", total, accepted, refused, acceptable)
}

func TestWycheproofECDSAP256P1363(t *testing.T) {
	runWycheproofSignatures(t, "ecdsa_secp256r1_sha256_p1363_test.json", keywardv1.AlgorithmES256, func(hexKey string) (any, error) {
		b, err := hex.DecodeString(hexKey)
		if err != nil {
			return nil, err
		}
		pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), b)
		if err != nil {
			return nil, err
		}
		return pub, nil
	})
}

func TestWycheproofEd25519(t *testing.T) {
	runWycheproofSignatures(t, "ed25519_test.json", keywardv1.AlgorithmEdDSA, func(hexKey string) (any, error) {
		b, err := hex.DecodeString(hexKey)
		if err != nil {
			return nil, err
		}
		return ed25519.PublicKey(slices.Clip(b)), nil
	})
}
