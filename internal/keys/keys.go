// Package keys generates, imports and serialises signing keys, and decides how a SigningKey's
// key set moves through its lifecycle (see lifecycle.go).
package keys

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
)

// rsaBits is the modulus size generated for each RSA algorithm family member.
var rsaBits = map[keywardv1.Algorithm]int{
	keywardv1.AlgorithmRS256: 2048, keywardv1.AlgorithmPS256: 2048,
	keywardv1.AlgorithmRS384: 3072, keywardv1.AlgorithmPS384: 3072,
	keywardv1.AlgorithmRS512: 4096, keywardv1.AlgorithmPS512: 4096,
}

// minRSABits is the smallest RSA modulus accepted on import.
const minRSABits = 2048

// hmacBytes is the secret size generated (and the minimum accepted on import) per HS algorithm.
var hmacBytes = map[keywardv1.Algorithm]int{
	keywardv1.AlgorithmHS256: 32, keywardv1.AlgorithmHS384: 48, keywardv1.AlgorithmHS512: 64,
}

// curves maps each ECDSA algorithm to its curve.
var curves = map[keywardv1.Algorithm]elliptic.Curve{
	keywardv1.AlgorithmES256: elliptic.P256(),
	keywardv1.AlgorithmES384: elliptic.P384(),
	keywardv1.AlgorithmES512: elliptic.P521(),
}

// JWA returns the jwx signature algorithm for alg, one of keywardv1.Algorithms. jwx also knows
// algorithms keyward does not support, "none" among them; those are refused.
func JWA(alg keywardv1.Algorithm) (jwa.SignatureAlgorithm, error) {
	a, ok := jwa.LookupSignatureAlgorithm(string(alg))
	if !ok || !slices.Contains(keywardv1.Algorithms, alg) {
		return jwa.SignatureAlgorithm{}, fmt.Errorf("unsupported algorithm %q", alg)
	}
	return a, nil
}

// Generate creates a new private key for alg from crypto/rand.
func Generate(alg keywardv1.Algorithm) (any, error) {
	switch {
	case curves[alg] != nil:
		return ecdsa.GenerateKey(curves[alg], rand.Reader)
	case rsaBits[alg] != 0:
		return rsa.GenerateKey(rand.Reader, rsaBits[alg])
	case alg == keywardv1.AlgorithmEdDSA:
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		return priv, err
	case hmacBytes[alg] != 0:
		secret := make([]byte, hmacBytes[alg])
		if _, err := rand.Read(secret); err != nil {
			return nil, err
		}
		return secret, nil
	default:
		return nil, fmt.Errorf("unsupported algorithm %q", alg)
	}
}

// ParseImport reads a private key for alg from the data of an import Secret: "key.pem" (PEM,
// PKCS#8, PKCS#1 or SEC1) for asymmetric algorithms, "key" (raw bytes) for HS algorithms. It
// checks that the key fits the algorithm.
func ParseImport(alg keywardv1.Algorithm, data map[string][]byte) (any, error) {
	if alg.IsSymmetric() {
		secret, ok := data[keywardv1.ImportSecretDataKey]
		if !ok {
			return nil, fmt.Errorf("secret has no data key %q", keywardv1.ImportSecretDataKey)
		}
		if len(secret) < hmacBytes[alg] {
			return nil, fmt.Errorf("%s secret must be at least %d bytes, got %d", alg, hmacBytes[alg], len(secret))
		}
		return append([]byte(nil), secret...), nil
	}
	raw, ok := data[keywardv1.ImportPEMDataKey]
	if !ok {
		return nil, fmt.Errorf("secret has no data key %q", keywardv1.ImportPEMDataKey)
	}
	block, rest := pem.Decode(raw)
	if block == nil {
		return nil, errors.New("key.pem holds no PEM block")
	}
	if next, _ := pem.Decode(rest); next != nil {
		return nil, errors.New("key.pem holds more than one PEM block")
	}
	key, err := parsePrivateKey(block)
	if err != nil {
		return nil, err
	}
	if err := CheckKey(alg, key); err != nil {
		return nil, err
	}
	return key, nil
}

func parsePrivateKey(block *pem.Block) (any, error) {
	switch block.Type {
	case "PRIVATE KEY":
		key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("cannot parse PKCS#8 private key: %w", err)
		}
		return key, nil
	case "RSA PRIVATE KEY":
		key, err := x509.ParsePKCS1PrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("cannot parse PKCS#1 private key: %w", err)
		}
		return key, nil
	case "EC PRIVATE KEY":
		key, err := x509.ParseECPrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("cannot parse SEC1 private key: %w", err)
		}
		return key, nil
	default:
		return nil, fmt.Errorf("unsupported PEM block %q: want PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY", block.Type)
	}
}

// CheckKey reports whether a private key can sign with alg.
func CheckKey(alg keywardv1.Algorithm, key any) error {
	switch k := key.(type) {
	case *ecdsa.PrivateKey:
		if curves[alg] == nil || k.Curve != curves[alg] {
			return fmt.Errorf("an ECDSA %s key cannot sign %s", k.Curve.Params().Name, alg)
		}
	case *rsa.PrivateKey:
		if rsaBits[alg] == 0 {
			return fmt.Errorf("an RSA key cannot sign %s", alg)
		}
		if k.N.BitLen() < minRSABits {
			return fmt.Errorf("RSA key has %d bits, want at least %d", k.N.BitLen(), minRSABits)
		}
	case ed25519.PrivateKey:
		if alg != keywardv1.AlgorithmEdDSA {
			return fmt.Errorf("an Ed25519 key cannot sign %s", alg)
		}
	case []byte:
		if hmacBytes[alg] == 0 || len(k) < hmacBytes[alg] {
			return fmt.Errorf("a %d-byte secret cannot sign %s", len(k), alg)
		}
	default:
		return fmt.Errorf("unsupported key type %T", key)
	}
	return nil
}

// JWK converts a raw private key into a private JWK carrying kid (the RFC 7638 thumbprint of
// its public part), alg and use.
func JWK(alg keywardv1.Algorithm, raw any) (jwk.Key, error) {
	key, err := jwk.Import(raw)
	if err != nil {
		return nil, fmt.Errorf("cannot convert key to JWK: %w", err)
	}
	kid, err := Thumbprint(key)
	if err != nil {
		return nil, err
	}
	a, err := JWA(alg)
	if err != nil {
		return nil, err
	}
	for name, value := range map[string]any{jwk.KeyIDKey: kid, jwk.AlgorithmKey: a, jwk.KeyUsageKey: jwk.ForSignature} {
		if err := key.Set(name, value); err != nil {
			return nil, fmt.Errorf("cannot set %s: %w", name, err)
		}
	}
	return key, nil
}

// Thumbprint returns the RFC 7638 SHA-256 thumbprint of key's public part, base64url-encoded
// without padding. It is keyward's kid.
func Thumbprint(key jwk.Key) (string, error) {
	tp, err := key.Thumbprint(crypto.SHA256)
	if err != nil {
		return "", fmt.Errorf("cannot compute JWK thumbprint: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(tp), nil
}

// Public returns the public JWK of an asymmetric private JWK, with kid, alg and use.
func Public(key jwk.Key) (jwk.Key, error) {
	if key.KeyType() == jwa.OctetSeq() {
		return nil, errors.New("a symmetric key has no public part")
	}
	pub, err := jwk.PublicKeyOf(key)
	if err != nil {
		return nil, fmt.Errorf("cannot derive public key: %w", err)
	}
	return pub, nil
}
