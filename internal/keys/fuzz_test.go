package keys

import (
	"crypto"
	"crypto/x509"
	"encoding/json"
	"testing"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
)

// FuzzParseImport fuzzes key loading from an import Secret's key.pem (PEM with PKCS#8,
// PKCS#1 or SEC1 inside) for every algorithm. The oracle: no panic, and a key that loads
// passes CheckKey for its algorithm, stores as a JWK whose kid is its RFC 7638 thumbprint,
// and publishes as a public JWK Set without private members.
func FuzzParseImport(f *testing.F) {
	fx := fixtures()
	for i, seed := range [][]byte{
		pkcs8(fx.p256), sec1(fx.p256), pkcs8(fx.p384), sec1(fx.p521), pkcs8(fx.ed), pkcs8(fx.rsa2048), pkcs1(fx.rsa2048),
		pkcs1(fx.rsa1024),
		append(sec1(fx.p256), sec1(fx.p256)...),
		pemOf("EC PRIVATE KEY", []byte{0x30, 0x03, 0x02, 0x01, 0x01}, nil),
		pemOf("PUBLIC KEY", mustPKIX(fx.p256), nil),
		[]byte("-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n"),
		{},
	} {
		f.Add(uint8(i), seed)
	}
	f.Fuzz(func(t *testing.T, algIndex uint8, pemBytes []byte) {
		alg := keywardv1.Algorithms[int(algIndex)%len(keywardv1.Algorithms)]
		data := map[string][]byte{keywardv1.ImportPEMDataKey: pemBytes, keywardv1.ImportSecretDataKey: pemBytes}
		key, err := ParseImport(alg, data)
		if err != nil {
			return
		}
		if err := CheckKey(alg, key); err != nil {
			t.Fatalf("%s: ParseImport accepted a key CheckKey refuses: %v", alg, err)
		}
		stored, err := NewStoredKey(Lifecycle{Algorithm: alg}, key)
		if err != nil {
			t.Fatalf("%s: an accepted key does not store: %v", alg, err)
		}
		jk, err := stored.Key()
		if err != nil {
			t.Fatalf("%s: the stored JWK does not parse: %v", alg, err)
		}
		if tp, err := Thumbprint(jk); err != nil || tp != stored.KID {
			t.Fatalf("%s: kid %q is not the thumbprint %q (%v)", alg, stored.KID, tp, err)
		}
		jwks, err := (&KeySet{Keys: []StoredKey{stored}}).PublicJWKS()
		if err != nil {
			t.Fatalf("%s: an accepted key does not publish: %v", alg, err)
		}
		var set struct {
			Keys []map[string]any `json:"keys"`
		}
		if err := json.Unmarshal(jwks, &set); err != nil {
			t.Fatal(err)
		}
		for _, k := range set.Keys {
			for _, private := range []string{"d", "p", "q", "dp", "dq", "qi", "k"} {
				if _, ok := k[private]; ok {
					t.Fatalf("%s: the published JWK holds %q", alg, private)
				}
			}
		}
		if alg.IsSymmetric() != (len(set.Keys) == 0) {
			t.Fatalf("%s: %d published keys", alg, len(set.Keys))
		}
	})
}

func mustPKIX(k any) []byte {
	der, err := x509.MarshalPKIXPublicKey(k.(crypto.Signer).Public())
	if err != nil {
		panic(err)
	}
	return der
}
