package keys

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
)

// rfc7638Example is the RSA public key of RFC 7638, section 3.1, and its SHA-256 thumbprint.
const (
	rfc7638ExampleN   = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
	rfc7638ExampleE   = "AQAB"
	rfc7638ExampleKID = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
)

// thumbprintOf computes the RFC 7638 SHA-256 thumbprint of a JWK given as JSON members,
// independently of jwx: the required members in lexicographic order, no whitespace.
func thumbprintOf(t *testing.T, members map[string]any) string {
	t.Helper()
	required := map[string][]string{
		"EC": {"crv", "kty", "x", "y"}, "RSA": {"e", "kty", "n"}, "OKP": {"crv", "kty", "x"}, "oct": {"k", "kty"},
	}[members["kty"].(string)]
	if required == nil {
		t.Fatalf("unknown kty %v", members["kty"])
	}
	var b strings.Builder
	b.WriteByte('{')
	for i, name := range required {
		value, err := json.Marshal(members[name])
		if err != nil || members[name] == nil {
			t.Fatalf("JWK member %q: %v", name, members[name])
		}
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`"` + name + `":`)
		b.Write(value)
	}
	b.WriteByte('}')
	sum := sha256.Sum256([]byte(b.String()))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

func members(t *testing.T, key any) map[string]any {
	t.Helper()
	data, err := json.Marshal(key)
	if err != nil {
		t.Fatalf("cannot encode JWK: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatalf("cannot decode JWK: %v", err)
	}
	return m
}

func TestThumbprintOfTheRFC7638Example(t *testing.T) {
	example := map[string]any{"kty": "RSA", "n": rfc7638ExampleN, "e": rfc7638ExampleE, "alg": "RS256", "kid": "2011-04-29"}
	if got := thumbprintOf(t, example); got != rfc7638ExampleKID {
		t.Fatalf("the test's own thumbprint of the RFC 7638 example is %s, want %s", got, rfc7638ExampleKID)
	}

	t.Run("Thumbprint of the parsed example JWK is the RFC's value", func(t *testing.T) {
		data, _ := json.Marshal(example)
		key, err := jwk.ParseKey(data)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Thumbprint(key)
		if err != nil {
			t.Fatal(err)
		}
		if got != rfc7638ExampleKID {
			t.Errorf("Thumbprint = %s, want %s", got, rfc7638ExampleKID)
		}
	})

	t.Run("JWK of the example key sets kid to the RFC's thumbprint", func(t *testing.T) {
		n, err := base64.RawURLEncoding.DecodeString(rfc7638ExampleN)
		if err != nil {
			t.Fatal(err)
		}
		pub := &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: 65537}
		key, err := JWK(keywardv1.AlgorithmRS256, pub)
		if err != nil {
			t.Fatal(err)
		}
		m := members(t, key)
		if m["kid"] != rfc7638ExampleKID {
			t.Errorf("kid = %v, want %s", m["kid"], rfc7638ExampleKID)
		}
		if m["alg"] != "RS256" || m["use"] != "sig" {
			t.Errorf("alg = %v, use = %v, want RS256 and sig", m["alg"], m["use"])
		}
	})
}

func TestGenerate(t *testing.T) {
	tests := []struct {
		alg   keywardv1.Algorithm
		check func(t *testing.T, key any)
	}{
		{keywardv1.AlgorithmES256, wantCurve(elliptic.P256())},
		{keywardv1.AlgorithmES384, wantCurve(elliptic.P384())},
		{keywardv1.AlgorithmES512, wantCurve(elliptic.P521())},
		{keywardv1.AlgorithmEdDSA, func(t *testing.T, key any) {
			if k, ok := key.(ed25519.PrivateKey); !ok || len(k) != ed25519.PrivateKeySize {
				t.Errorf("got %T of %d bytes, want an ed25519.PrivateKey", key, len(k))
			}
		}},
		{keywardv1.AlgorithmRS256, wantRSABits(2048)},
		{keywardv1.AlgorithmRS384, wantRSABits(3072)},
		{keywardv1.AlgorithmRS512, wantRSABits(4096)},
		{keywardv1.AlgorithmPS256, wantRSABits(2048)},
		{keywardv1.AlgorithmPS384, wantRSABits(3072)},
		{keywardv1.AlgorithmPS512, wantRSABits(4096)},
		{keywardv1.AlgorithmHS256, wantSecretBytes(32)},
		{keywardv1.AlgorithmHS384, wantSecretBytes(48)},
		{keywardv1.AlgorithmHS512, wantSecretBytes(64)},
	}
	if len(tests) != len(keywardv1.Algorithms) {
		t.Fatalf("the table covers %d algorithms, the API has %d", len(tests), len(keywardv1.Algorithms))
	}
	for _, tc := range tests {
		t.Run(string(tc.alg)+" gives a key of the right type and size with a thumbprint kid", func(t *testing.T) {
			t.Parallel()
			key, err := Generate(tc.alg)
			if err != nil {
				t.Fatalf("Generate: %v", err)
			}
			tc.check(t, key)
			if err := CheckKey(tc.alg, key); err != nil {
				t.Errorf("CheckKey refuses the generated key: %v", err)
			}
			private, err := JWK(tc.alg, key)
			if err != nil {
				t.Fatalf("JWK: %v", err)
			}
			m := members(t, private)
			if m["alg"] != string(tc.alg) || m["use"] != "sig" {
				t.Errorf("alg = %v, use = %v, want %s and sig", m["alg"], m["use"], tc.alg)
			}
			if want := thumbprintOf(t, m); m["kid"] != want {
				t.Errorf("kid = %v, want the RFC 7638 thumbprint %s", m["kid"], want)
			}
			if tc.alg.IsSymmetric() {
				return
			}
			// The thumbprint covers the public part only, so the public JWK has the same kid.
			pub, err := Public(private)
			if err != nil {
				t.Fatalf("Public: %v", err)
			}
			pm := members(t, pub)
			if pm["kid"] != m["kid"] || thumbprintOf(t, pm) != m["kid"] {
				t.Errorf("public kid = %v (thumbprint %s), private kid = %v", pm["kid"], thumbprintOf(t, pm), m["kid"])
			}
		})
	}

	t.Run("two generated keys differ", func(t *testing.T) {
		for _, alg := range []keywardv1.Algorithm{keywardv1.AlgorithmES256, keywardv1.AlgorithmEdDSA, keywardv1.AlgorithmHS256} {
			one, _ := Generate(alg)
			two, _ := Generate(alg)
			if reflect.DeepEqual(one, two) {
				t.Errorf("%s: two generated keys are equal", alg)
			}
		}
	})

	t.Run("an unknown algorithm is refused", func(t *testing.T) {
		for _, alg := range []keywardv1.Algorithm{"none", "HS1", "", "es256"} {
			if key, err := Generate(alg); err == nil || !strings.Contains(err.Error(), "unsupported algorithm") {
				t.Errorf("Generate(%q) = %T, %v; want an unsupported algorithm error", alg, key, err)
			}
			if _, err := JWA(alg); err == nil {
				t.Errorf("JWA(%q) succeeded", alg)
			}
		}
	})
}

func wantCurve(c elliptic.Curve) func(*testing.T, any) {
	return func(t *testing.T, key any) {
		k, ok := key.(*ecdsa.PrivateKey)
		if !ok || k.Curve != c {
			t.Errorf("got %T, want an ECDSA key on %s", key, c.Params().Name)
		}
	}
}

func wantRSABits(bits int) func(*testing.T, any) {
	return func(t *testing.T, key any) {
		k, ok := key.(*rsa.PrivateKey)
		if !ok || k.N.BitLen() != bits {
			t.Errorf("got %T, want a %d-bit RSA key", key, bits)
		}
	}
}

func wantSecretBytes(n int) func(*testing.T, any) {
	return func(t *testing.T, key any) {
		k, ok := key.([]byte)
		if !ok || len(k) != n {
			t.Errorf("got %T of %d bytes, want a %d-byte secret", key, len(k), n)
		}
		if ok && bytes.Equal(k, make([]byte, n)) {
			t.Error("the secret is all zeros")
		}
	}
}

// fixtures are keys made once for the import and key-set tests (RSA generation is slow).
var fixtures = sync.OnceValue(func() struct {
	p256, p384, p521 *ecdsa.PrivateKey
	ed               ed25519.PrivateKey
	rsa2048, rsa1024 *rsa.PrivateKey
} {
	must := func(err error) {
		if err != nil {
			panic(err)
		}
	}
	var f struct {
		p256, p384, p521 *ecdsa.PrivateKey
		ed               ed25519.PrivateKey
		rsa2048, rsa1024 *rsa.PrivateKey
	}
	var err error
	f.p256, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(err)
	f.p384, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	must(err)
	f.p521, err = ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	must(err)
	_, f.ed, err = ed25519.GenerateKey(rand.Reader)
	must(err)
	f.rsa2048, err = rsa.GenerateKey(rand.Reader, 2048)
	must(err)
	f.rsa1024, err = rsa.GenerateKey(rand.Reader, 1024)
	must(err)
	return f
})

func pemOf(blockType string, der []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: blockType, Bytes: der})
}

func pkcs8(key any) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	return pemOf("PRIVATE KEY", der, err)
}

func pkcs1(key *rsa.PrivateKey) []byte {
	return pemOf("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(key), nil)
}

func sec1(key *ecdsa.PrivateKey) []byte {
	der, err := x509.MarshalECPrivateKey(key)
	return pemOf("EC PRIVATE KEY", der, err)
}

func pemData(pemBytes []byte) map[string][]byte {
	return map[string][]byte{keywardv1.ImportPEMDataKey: pemBytes}
}

func secretData(secret []byte) map[string][]byte {
	return map[string][]byte{keywardv1.ImportSecretDataKey: secret}
}

func TestParseImport(t *testing.T) {
	f := fixtures()
	secret64 := bytes.Repeat([]byte{0xa5}, 64)
	pub, err := x509.MarshalPKIXPublicKey(&f.p256.PublicKey)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		alg     keywardv1.Algorithm
		data    map[string][]byte
		want    any    // the key expected back, when accepted
		wantErr string // a part of the error, when refused
	}{
		{name: "a PKCS#8 P-256 key is accepted for ES256", alg: keywardv1.AlgorithmES256, data: pemData(pkcs8(f.p256)), want: f.p256},
		{name: "a SEC1 P-256 key is accepted for ES256", alg: keywardv1.AlgorithmES256, data: pemData(sec1(f.p256)), want: f.p256},
		{name: "a SEC1 P-384 key is accepted for ES384", alg: keywardv1.AlgorithmES384, data: pemData(sec1(f.p384)), want: f.p384},
		{name: "a PKCS#8 P-521 key is accepted for ES512", alg: keywardv1.AlgorithmES512, data: pemData(pkcs8(f.p521)), want: f.p521},
		{name: "a PKCS#8 Ed25519 key is accepted for EdDSA", alg: keywardv1.AlgorithmEdDSA, data: pemData(pkcs8(f.ed)), want: f.ed},
		{name: "a PKCS#1 RSA key is accepted for RS256", alg: keywardv1.AlgorithmRS256, data: pemData(pkcs1(f.rsa2048)), want: f.rsa2048},
		{name: "a PKCS#8 RSA key is accepted for PS384", alg: keywardv1.AlgorithmPS384, data: pemData(pkcs8(f.rsa2048)), want: f.rsa2048},
		{name: "a 32-byte secret is accepted for HS256", alg: keywardv1.AlgorithmHS256, data: secretData(secret64[:32]), want: secret64[:32]},
		{name: "a secret longer than the minimum is accepted for HS384", alg: keywardv1.AlgorithmHS384, data: secretData(secret64), want: secret64},
		{name: "a 64-byte secret is accepted for HS512", alg: keywardv1.AlgorithmHS512, data: secretData(secret64), want: secret64},

		{name: "a P-256 key is refused for ES384", alg: keywardv1.AlgorithmES384, data: pemData(pkcs8(f.p256)), wantErr: "an ECDSA P-256 key cannot sign ES384"},
		{name: "a SEC1 P-384 key is refused for ES512", alg: keywardv1.AlgorithmES512, data: pemData(sec1(f.p384)), wantErr: "an ECDSA P-384 key cannot sign ES512"},
		{name: "an ECDSA key is refused for RS256", alg: keywardv1.AlgorithmRS256, data: pemData(pkcs8(f.p256)), wantErr: "cannot sign RS256"},
		{name: "an RSA key is refused for ES256", alg: keywardv1.AlgorithmES256, data: pemData(pkcs1(f.rsa2048)), wantErr: "an RSA key cannot sign ES256"},
		{name: "an Ed25519 key is refused for PS256", alg: keywardv1.AlgorithmPS256, data: pemData(pkcs8(f.ed)), wantErr: "an Ed25519 key cannot sign PS256"},
		{name: "a 1024-bit RSA key is refused", alg: keywardv1.AlgorithmRS256, data: pemData(pkcs1(f.rsa1024)), wantErr: "RSA key has 1024 bits, want at least 2048"},
		{name: "a 31-byte secret is refused for HS256", alg: keywardv1.AlgorithmHS256, data: secretData(secret64[:31]), wantErr: "HS256 secret must be at least 32 bytes, got 31"},
		{name: "a 63-byte secret is refused for HS512", alg: keywardv1.AlgorithmHS512, data: secretData(secret64[:63]), wantErr: "HS512 secret must be at least 64 bytes, got 63"},
		{name: "an empty secret is refused for HS384", alg: keywardv1.AlgorithmHS384, data: secretData([]byte{}), wantErr: "at least 48 bytes, got 0"},
		{name: "a Secret without key.pem is refused for ES256", alg: keywardv1.AlgorithmES256, data: secretData(secret64), wantErr: `secret has no data key "key.pem"`},
		{name: "a Secret without key is refused for HS256", alg: keywardv1.AlgorithmHS256, data: pemData(pkcs8(f.p256)), wantErr: `secret has no data key "key"`},
		{name: "an empty Secret is refused", alg: keywardv1.AlgorithmEdDSA, data: nil, wantErr: `secret has no data key "key.pem"`},
		{name: "two PEM blocks are refused", alg: keywardv1.AlgorithmES256, data: pemData(append(pkcs8(f.p256), sec1(f.p256)...)), wantErr: "more than one PEM block"},
		{name: "garbage is refused", alg: keywardv1.AlgorithmES256, data: pemData([]byte("this is not a key")), wantErr: "holds no PEM block"},
		{name: "a PKCS#8 block of garbage is refused", alg: keywardv1.AlgorithmES256, data: pemData(pemOf("PRIVATE KEY", []byte("garbage"), nil)), wantErr: "cannot parse PKCS#8 private key"},
		{name: "a PKCS#1 block holding an EC key is refused", alg: keywardv1.AlgorithmRS256, data: pemData(pemOf("RSA PRIVATE KEY", mustSEC1DER(f.p256), nil)), wantErr: "cannot parse PKCS#1 private key"},
		{name: "a SEC1 block of garbage is refused", alg: keywardv1.AlgorithmES256, data: pemData(pemOf("EC PRIVATE KEY", []byte{0x30, 0x00}, nil)), wantErr: "cannot parse SEC1 private key"},
		{name: "a public key is refused", alg: keywardv1.AlgorithmES256, data: pemData(pemOf("PUBLIC KEY", pub, nil)), wantErr: `unsupported PEM block "PUBLIC KEY"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			key, err := ParseImport(tc.alg, tc.data)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseImport = %T, %v; want an error containing %q", key, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseImport: %v", err)
			}
			equal := reflect.DeepEqual(key, tc.want)
			if k, ok := key.(interface{ Equal(crypto.PrivateKey) bool }); ok {
				equal = k.Equal(tc.want)
			}
			if !equal {
				t.Errorf("ParseImport returned a different key (%T)", key)
			}
			if _, err := JWK(tc.alg, key); err != nil {
				t.Errorf("the imported key cannot become a JWK: %v", err)
			}
		})
	}

	t.Run("an imported secret does not alias the Secret's data", func(t *testing.T) {
		data := secretData(bytes.Clone(secret64))
		key, err := ParseImport(keywardv1.AlgorithmHS256, data)
		if err != nil {
			t.Fatal(err)
		}
		data[keywardv1.ImportSecretDataKey][0] ^= 0xff
		if !bytes.Equal(key.([]byte), secret64) {
			t.Error("changing the Secret's data changed the imported key")
		}
	})
}

func mustSEC1DER(k *ecdsa.PrivateKey) []byte {
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		panic(err)
	}
	return der
}

// testKeySet builds a key set with one key of each kind: an Active ES256 key, a Retired EdDSA
// key, a Pending RS256 key, an HS256 key (from another SigningKey's set) and a public-only
// ES384 key recovered from a JWKS.
func testKeySet(t *testing.T) *KeySet {
	t.Helper()
	f := fixtures()
	ts := func(d time.Duration) *time.Time { v := t0.Add(d); return &v }
	secret := bytes.Repeat([]byte{7}, 32)
	var ks KeySet
	for _, k := range []struct {
		l          Lifecycle
		raw        any
		publicOnly bool
	}{
		{Lifecycle{Algorithm: keywardv1.AlgorithmES256, PublishedAt: t0, ActivatesAt: t0, ActivatedAt: ts(0)}, f.p256, false},
		{Lifecycle{Algorithm: keywardv1.AlgorithmEdDSA, Imported: true, PublishedAt: t0.Add(-2 * time.Hour), ActivatesAt: t0.Add(-time.Hour),
			ActivatedAt: ts(-time.Hour), RetiredAt: ts(0), RemovesAt: ts(30 * time.Minute)}, f.ed, false},
		{Lifecycle{Algorithm: keywardv1.AlgorithmRS256, PublishedAt: t0.Add(50 * time.Minute), ActivatesAt: t0.Add(time.Hour)}, f.rsa2048, false},
		{Lifecycle{Algorithm: keywardv1.AlgorithmHS256, PublishedAt: t0, ActivatesAt: t0}, secret, false},
		{Lifecycle{Algorithm: keywardv1.AlgorithmES384, PublishedAt: t0.Add(-3 * time.Hour), ActivatesAt: t0.Add(-2 * time.Hour),
			ActivatedAt: ts(-2 * time.Hour), RetiredAt: ts(-time.Hour), RemovesAt: ts(time.Hour)}, &f.p384.PublicKey, true},
	} {
		sk, err := NewStoredKey(k.l, k.raw)
		if err != nil {
			t.Fatalf("NewStoredKey(%s): %v", k.l.Algorithm, err)
		}
		sk.PublicOnly = k.publicOnly
		ks.Keys = append(ks.Keys, sk)
	}
	return &ks
}

func TestKeySet(t *testing.T) {
	ks := testKeySet(t)

	t.Run("NewStoredKey names each key by its RFC 7638 thumbprint", func(t *testing.T) {
		for _, k := range ks.Keys {
			var m map[string]any
			if err := json.Unmarshal(k.JWK, &m); err != nil {
				t.Fatal(err)
			}
			if want := thumbprintOf(t, m); k.KID != want || m["kid"] != want {
				t.Errorf("%s: KID = %s, JWK kid = %v, want %s", k.Algorithm, k.KID, m["kid"], want)
			}
		}
	})

	t.Run("a key set survives Marshal and ParseKeySet unchanged", func(t *testing.T) {
		data, err := ks.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		back, err := ParseKeySet(data)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(back, ks) {
			t.Errorf("round trip changed the key set:\n got %+v\nwant %+v", back, ks)
		}
		if !reflect.DeepEqual(back.Lifecycles(), ks.Lifecycles()) {
			t.Errorf("Lifecycles differ after the round trip")
		}
		if a := back.Active(); a == nil || a.KID != ks.Keys[0].KID {
			t.Errorf("Active() = %v, want the ES256 key %s", a, ks.Keys[0].KID)
		}
		for i, k := range back.Keys {
			key, err := k.Key()
			if err != nil {
				t.Fatalf("Key(%s): %v", k.KID, err)
			}
			if kid, _ := key.KeyID(); kid != k.KID {
				t.Errorf("key %d: parsed JWK kid %s, stored KID %s", i, kid, k.KID)
			}
			if got, err := Thumbprint(key); err != nil || got != k.KID {
				t.Errorf("key %d: thumbprint %s (%v), stored KID %s", i, got, err, k.KID)
			}
		}
	})

	t.Run("Lifecycles returns every key's lifecycle in order", func(t *testing.T) {
		got := ks.Lifecycles()
		if len(got) != len(ks.Keys) {
			t.Fatalf("%d lifecycles for %d keys", len(got), len(ks.Keys))
		}
		for i := range got {
			if !reflect.DeepEqual(got[i], ks.Keys[i].Lifecycle) {
				t.Errorf("lifecycle %d differs", i)
			}
		}
	})

	t.Run("a key set without an Active key has no Active key", func(t *testing.T) {
		none := &KeySet{Keys: ks.Keys[1:]}
		if a := none.Active(); a != nil {
			t.Errorf("Active() = %s, want nil", a.KID)
		}
	})

	t.Run("ParseKeySet refuses damaged data", func(t *testing.T) {
		for _, tc := range []struct{ name, data string }{
			{"not JSON", "not json"},
			{"a key without kid", `{"keys":[{"kid":"","alg":"ES256","jwk":{"kty":"EC"}}]}`},
			{"a key without JWK", `{"keys":[{"kid":"x","alg":"ES256"}]}`},
		} {
			if _, err := ParseKeySet([]byte(tc.data)); err == nil || !strings.Contains(err.Error(), "cannot decode key set") {
				t.Errorf("%s: ParseKeySet error = %v, want cannot decode key set", tc.name, err)
			}
		}
	})

	t.Run("an empty key set round trips", func(t *testing.T) {
		back, err := ParseKeySet([]byte(`{"keys":[]}`))
		if err != nil || len(back.Keys) != 0 || back.Active() != nil {
			t.Errorf("ParseKeySet = %+v, %v", back, err)
		}
	})
}

func TestPublicJWKS(t *testing.T) {
	ks := testKeySet(t)
	data, err := ks.PublicJWKS()
	if err != nil {
		t.Fatal(err)
	}
	var set struct {
		Keys []map[string]any `json:"keys"`
	}
	if err := json.Unmarshal(data, &set); err != nil {
		t.Fatalf("the JWKS is not JSON: %v\n%s", err, data)
	}

	want := map[string]keywardv1.Algorithm{}
	for _, k := range ks.Keys {
		if !k.Algorithm.IsSymmetric() {
			want[k.KID] = k.Algorithm
		}
	}
	if len(set.Keys) != len(want) {
		t.Errorf("the JWKS has %d keys, want %d (every asymmetric key, public-only included)", len(set.Keys), len(want))
	}
	for _, m := range set.Keys {
		kid, _ := m["kid"].(string)
		t.Run("published key "+kid+" is public and named by its thumbprint", func(t *testing.T) {
			for _, private := range []string{"d", "p", "q", "dp", "dq", "qi", "k", "oth"} {
				if _, ok := m[private]; ok {
					t.Errorf("the JWKS carries the private member %q", private)
				}
			}
			if m["kty"] == "oct" {
				t.Error("the JWKS carries a symmetric key")
			}
			if got := thumbprintOf(t, m); got != kid {
				t.Errorf("kid %s is not the thumbprint %s", kid, got)
			}
			alg, ok := want[kid]
			if !ok {
				t.Fatalf("kid %s is not an asymmetric key of the set", kid)
			}
			if m["alg"] != string(alg) || m["use"] != "sig" {
				t.Errorf("alg = %v, use = %v, want %s and sig", m["alg"], m["use"], alg)
			}
			delete(want, kid)
		})
	}
	if len(want) > 0 {
		t.Errorf("keys missing from the JWKS: %v", want)
	}
	for _, k := range ks.Keys {
		if k.Algorithm.IsSymmetric() && bytes.Contains(data, []byte(k.KID)) {
			t.Errorf("the JWKS mentions the HS key %s", k.KID)
		}
	}

	t.Run("Public refuses a symmetric key", func(t *testing.T) {
		key, err := JWK(keywardv1.AlgorithmHS256, bytes.Repeat([]byte{1}, 32))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Public(key); err == nil || !strings.Contains(err.Error(), "symmetric key has no public part") {
			t.Errorf("Public error = %v", err)
		}
	})

	t.Run("a key set of HS keys only publishes an empty JWKS", func(t *testing.T) {
		hs := &KeySet{Keys: []StoredKey{ks.Keys[3]}}
		data, err := hs.PublicJWKS()
		if err != nil {
			t.Fatal(err)
		}
		if string(data) != `{"keys":[]}` {
			t.Errorf("PublicJWKS = %s, want {\"keys\":[]}", data)
		}
	})

	t.Run("a damaged stored JWK is an error, not a silently shorter JWKS", func(t *testing.T) {
		bad := &KeySet{Keys: []StoredKey{{Lifecycle: Lifecycle{KID: "x", Algorithm: keywardv1.AlgorithmES256}, JWK: json.RawMessage(`{"kty":"EC"}`)}}}
		if _, err := bad.PublicJWKS(); err == nil {
			t.Error("PublicJWKS accepted a damaged JWK")
		}
	})
}
