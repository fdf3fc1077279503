package token

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"encoding/json"
	"testing"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
	"github.com/keyward/keyward/internal/keys"
)

// FuzzVerifyKeysFromJWKS fuzzes the JWK Set reader the validator uses for the JWKS of
// SigningKeys and of external issuers (fetched over the network). The oracle: no panic, and
// an accepted set is strict JSON whose every key is a public key of a supported asymmetric
// algorithm that fits it (NewVerifyKey's checks), under a non-empty kid.
func FuzzVerifyKeysFromJWKS(f *testing.F) {
	var ks keys.KeySet
	for _, alg := range []keywardv1.Algorithm{keywardv1.AlgorithmES256, keywardv1.AlgorithmES384, keywardv1.AlgorithmEdDSA, keywardv1.AlgorithmRS256} {
		ks.Keys = append(ks.Keys, generate(f, alg).stored)
	}
	data, err := ks.PublicJWKS()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(data)
	f.Add([]byte(`{"keys":[]}`))
	f.Add([]byte(`{"keys":[{"kty":"oct","k":"AAAA","kid":"h","alg":"HS256"}]}`))
	f.Add([]byte(`{"keys":[{"kty":"EC","crv":"P-256","x":"AAAA","y":"AAAA","kid":"e","alg":"ES256"}]}`))
	f.Add([]byte(`{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB","kid":"r","alg":"RS256"}]}`))
	f.Add([]byte(`{"keys":[{"kty":"OKP","crv":"Ed25519","x":"AAAA","kid":"o","alg":"EdDSA","use":"enc"}],"keys":[]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		set, err := VerifyKeysFromJWKS(data)
		if err != nil {
			if ReasonOf(err) == "" {
				t.Fatalf("error without a reason: %v", err)
			}
			return
		}
		if !json.Valid(data) {
			t.Fatalf("accepted a JWK Set encoding/json refuses: %q", data)
		}
		for kid, k := range set {
			if kid == "" || k.KID != kid {
				t.Fatalf("key under kid %q has kid %q", kid, k.KID)
			}
			spec, ok := specOf(k.Alg)
			if !ok || k.Alg.IsSymmetric() {
				t.Fatalf("accepted a key for %q", k.Alg)
			}
			if err := checkVerifyKey(spec, k.Key); err != nil {
				t.Fatalf("accepted a key that does not fit %s: %v", k.Alg, err)
			}
			switch k.Key.(type) {
			case *ecdsa.PublicKey, *rsa.PublicKey, ed25519.PublicKey:
			default:
				t.Fatalf("accepted a %T", k.Key)
			}
		}
	})
}
