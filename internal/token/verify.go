package token

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rsa"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"unicode/utf8"

	"github.com/lestrrat-go/jwx/v3/jwk"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
	"github.com/keyward/keyward/internal/keys"
)

// VerifyKey is a key that verifies tokens of exactly one algorithm.
type VerifyKey struct {
	KID string
	Alg keywardv1.Algorithm
	// Key is *ecdsa.PublicKey (ES*), *rsa.PublicKey (RS*, PS*), ed25519.PublicKey (EdDSA) or
	// the []byte secret (HS*).
	Key any
}

// NewVerifyKey checks that key can verify alg and returns it as a VerifyKey: the right type,
// curve or size (RSA 2048 to 8192 bits, HMAC secrets at least as long as the hash), a point
// on the curve, and no private key.
func NewVerifyKey(kid string, alg keywardv1.Algorithm, key any) (*VerifyKey, error) {
	if kid == "" || !utf8.ValidString(kid) {
		return nil, refuse(ReasonBadKey, "kid is empty or not UTF-8")
	}
	spec, ok := specOf(alg)
	if !ok {
		return nil, refuse(ReasonUnsupportedAlg, "key algorithm is not supported")
	}
	if err := checkVerifyKey(spec, key); err != nil {
		return nil, err
	}
	if pub, ok := key.(*ecdsa.PublicKey); ok {
		if _, err := pub.ECDH(); err != nil {
			return nil, refuse(ReasonBadKey, "ECDSA public key is not a point on its curve")
		}
	}
	if secret, ok := key.([]byte); ok {
		key = slices.Clone(secret)
	}
	return &VerifyKey{KID: kid, Alg: alg, Key: key}, nil
}

// checkVerifyKey checks the type, curve and size of a verification key. It is cheap enough for
// every verification, so a VerifyKey built without NewVerifyKey is still safe to use.
func checkVerifyKey(spec algSpec, key any) error {
	switch spec.family {
	case familyECDSA:
		pub, ok := key.(*ecdsa.PublicKey)
		if !ok || pub == nil || pub.Curve == nil || pub.Params() != spec.curve.Params() {
			return refuse(ReasonBadKey, "key is not an ECDSA public key on the algorithm's curve")
		}
	case familyRSA, familyPSS:
		pub, ok := key.(*rsa.PublicKey)
		if !ok || pub == nil || pub.N == nil {
			return refuse(ReasonBadKey, "key is not an RSA public key")
		}
		if bits := pub.N.BitLen(); bits < minRSABits || bits > maxRSABits {
			return refuse(ReasonBadKey, "RSA modulus size is outside 2048 to 8192 bits")
		}
	case familyEdDSA:
		pub, ok := key.(ed25519.PublicKey)
		if !ok || len(pub) != ed25519.PublicKeySize {
			return refuse(ReasonBadKey, "key is not an Ed25519 public key")
		}
	case familyHMAC:
		secret, ok := key.([]byte)
		if !ok || len(secret) < spec.hash.Size() {
			return refuse(ReasonBadKey, "key is not an HMAC secret at least as long as the hash")
		}
	}
	return nil
}

// Verify checks the token's signature with k. k must carry the token's kid, and the header
// alg must equal k.Alg: the algorithm comes from the key, never from the token. A nil k
// reports unknown_kid, so callers can pass the result of a lookup by kid directly.
func Verify(t *Token, k *VerifyKey) error {
	if t == nil {
		return refuse(ReasonMalformed, "no token")
	}
	if k == nil || k.KID != t.header.KID {
		return refuse(ReasonUnknownKID, "no key with the token's kid")
	}
	if k.Alg != t.header.Alg {
		return refuse(ReasonAlgMismatch, "header alg differs from the key's algorithm")
	}
	return verifySignature(k.Alg, k.Key, t.signingInput, t.signature)
}

// verifySignature checks sig over input with the standard library primitive for alg.
func verifySignature(alg keywardv1.Algorithm, key any, input, sig []byte) error {
	spec, ok := specOf(alg)
	if !ok {
		return refuse(ReasonUnsupportedAlg, "algorithm is not supported")
	}
	if err := checkVerifyKey(spec, key); err != nil {
		return err
	}
	var valid bool
	switch spec.family {
	case familyECDSA:
		// JOSE signatures are r||s, each exactly the curve's byte size (RFC 7518 3.4).
		// ecdsa.Verify refuses r or s outside [1, n-1].
		if len(sig) != 2*spec.size {
			return refuse(ReasonBadSignature, "ECDSA signature has the wrong length")
		}
		r := new(big.Int).SetBytes(sig[:spec.size])
		s := new(big.Int).SetBytes(sig[spec.size:])
		valid = ecdsa.Verify(key.(*ecdsa.PublicKey), digest(spec.hash, input), r, s)
	case familyRSA:
		valid = rsa.VerifyPKCS1v15(key.(*rsa.PublicKey), spec.hash, digest(spec.hash, input), sig) == nil
	case familyPSS:
		opts := rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: spec.hash}
		valid = rsa.VerifyPSS(key.(*rsa.PublicKey), spec.hash, digest(spec.hash, input), sig, &opts) == nil
	case familyEdDSA:
		valid = len(sig) == ed25519.SignatureSize && ed25519.Verify(key.(ed25519.PublicKey), input, sig)
	case familyHMAC:
		mac := hmac.New(spec.hash.New, key.([]byte))
		mac.Write(input)
		valid = hmac.Equal(mac.Sum(nil), sig)
	}
	if !valid {
		return refuse(ReasonBadSignature, "signature does not verify")
	}
	return nil
}

// VerifyKeyFromStored returns the verification key of a stored key: the secret of an HS key,
// the public part of any other (which also works for a PublicOnly key).
func VerifyKeyFromStored(k *keys.StoredKey) (*VerifyKey, error) {
	key, err := k.Key()
	if err != nil {
		return nil, refuseErr(ReasonBadKey, err)
	}
	if kid, ok := key.KeyID(); ok && kid != k.KID {
		return nil, refuse(ReasonBadKey, "stored JWK kid differs from the key's kid")
	}
	var raw any
	if k.Algorithm.IsSymmetric() {
		var secret []byte
		if err := jwk.Export(key, &secret); err != nil {
			return nil, refuseErr(ReasonBadKey, fmt.Errorf("export secret: %w", err))
		}
		raw = secret
	} else {
		pub, err := keys.Public(key)
		if err != nil {
			return nil, refuseErr(ReasonBadKey, err)
		}
		if err := jwk.Export(pub, &raw); err != nil {
			return nil, refuseErr(ReasonBadKey, fmt.Errorf("export public key: %w", err))
		}
	}
	return NewVerifyKey(k.KID, k.Algorithm, raw)
}

// VerifyKeysFromJWKS reads a JWK Set of public keys, such as a published JWKS, keyed by kid.
// The whole set is refused if it is not strict JSON, or if any key holds private or secret
// material, lacks kid or alg, has an algorithm keyward does not verify with public keys, has a
// use other than "sig" or key_ops without "verify", does not fit its algorithm, or repeats a
// kid. A set with no keys is valid and yields an empty map.
func VerifyKeysFromJWKS(data []byte) (map[string]*VerifyKey, error) {
	var list []byte
	err := scanObject(data, func(name, value []byte) error {
		if string(name) == "keys" {
			list = value
		}
		return nil
	})
	if err != nil {
		return nil, refuseErr(ReasonBadKey, fmt.Errorf("decode JWK Set: %w", err))
	}
	if len(list) == 0 || list[0] != '[' {
		return nil, refuse(ReasonBadKey, "JWK Set has no keys array")
	}
	out := make(map[string]*VerifyKey)
	i := 0
	err = scanArray(list, func(elem []byte) error {
		k, err := publicKeyFromJWK(elem)
		if err != nil {
			return fmt.Errorf("read key %d: %w", i, err)
		}
		if _, dup := out[k.KID]; dup {
			return fmt.Errorf("read key %d: %w", i, refuse(ReasonBadKey, "kid repeats an earlier key's"))
		}
		out[k.KID] = k
		i++
		return nil
	})
	if err != nil {
		if _, ok := errors.AsType[*Error](err); !ok {
			err = refuseErr(ReasonBadKey, err)
		}
		return nil, err
	}
	return out, nil
}

// publicKeyFromJWK reads one public JWK of a JWK Set.
func publicKeyFromJWK(data []byte) (*VerifyKey, error) {
	var kid, alg, use string
	var ops []string
	var hasOps bool
	err := scanObject(data, func(name, value []byte) error {
		var ok bool
		switch string(name) {
		case "kid":
			kid, ok = jsonString(value)
		case "alg":
			alg, ok = jsonString(value)
		case "use":
			use, ok = jsonString(value)
		case "key_ops":
			ops, ok = jsonStrings(value)
			hasOps = true
		case "d", "p", "q", "dp", "dq", "qi", "oth", "k":
			// Private or secret key material (RFC 7518 6.2.2, 6.3.2, 6.4.1; RFC 8037 2).
			return refuse(ReasonBadKey, "JWK holds private or secret key material")
		default:
			return nil
		}
		if !ok {
			return refuse(ReasonBadKey, "JWK member has the wrong type")
		}
		return nil
	})
	if err != nil {
		if _, ok := errors.AsType[*Error](err); ok {
			return nil, err
		}
		return nil, refuseErr(ReasonBadKey, fmt.Errorf("decode JWK: %w", err))
	}
	switch a := keywardv1.Algorithm(alg); {
	case kid == "":
		return nil, refuse(ReasonBadKey, "JWK has no kid")
	case alg == "":
		return nil, refuse(ReasonBadKey, "JWK has no alg")
	case !supported(a) || a.IsSymmetric():
		return nil, refuse(ReasonUnsupportedAlg, "JWK alg is not a supported public-key algorithm")
	case use != "" && use != "sig":
		return nil, refuse(ReasonBadKey, "JWK use is not sig")
	case hasOps && !slices.Contains(ops, "verify"):
		return nil, refuse(ReasonBadKey, "JWK key_ops lacks verify")
	}
	key, err := jwk.ParseKey(data)
	if err != nil {
		return nil, refuseErr(ReasonBadKey, fmt.Errorf("parse JWK: %w", err))
	}
	var raw any
	if err := jwk.Export(key, &raw); err != nil {
		return nil, refuseErr(ReasonBadKey, fmt.Errorf("export JWK: %w", err))
	}
	return NewVerifyKey(kid, keywardv1.Algorithm(alg), raw)
}
