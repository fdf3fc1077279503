package token

import (
	"crypto"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/sha512"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
)

// family is the signature scheme behind a JWS algorithm.
type family int

const (
	familyECDSA family = iota + 1 // ES*: ECDSA, JOSE r||s signature
	familyRSA                     // RS*: RSASSA-PKCS1-v1_5
	familyPSS                     // PS*: RSASSA-PSS, salt length = hash length
	familyEdDSA                   // EdDSA: Ed25519
	familyHMAC                    // HS*: HMAC
)

// RSA modulus bounds for verification keys: the floor of RFC 7518 section 3.3, and a ceiling
// so that an external JWKS cannot make every verification arbitrarily slow.
const (
	minRSABits = 2048
	maxRSABits = 8192
)

// algSpec describes how one JWS algorithm signs and verifies.
type algSpec struct {
	family family
	hash   crypto.Hash    // not used by EdDSA
	curve  elliptic.Curve // ECDSA only
	size   int            // ECDSA only: bytes of r and of s in the signature
}

// specOf returns the spec of a supported algorithm.
func specOf(alg keywardv1.Algorithm) (algSpec, bool) {
	switch alg {
	case keywardv1.AlgorithmES256:
		return algSpec{familyECDSA, crypto.SHA256, elliptic.P256(), 32}, true
	case keywardv1.AlgorithmES384:
		return algSpec{familyECDSA, crypto.SHA384, elliptic.P384(), 48}, true
	case keywardv1.AlgorithmES512:
		return algSpec{familyECDSA, crypto.SHA512, elliptic.P521(), 66}, true
	case keywardv1.AlgorithmEdDSA:
		return algSpec{family: familyEdDSA}, true
	case keywardv1.AlgorithmRS256:
		return algSpec{family: familyRSA, hash: crypto.SHA256}, true
	case keywardv1.AlgorithmRS384:
		return algSpec{family: familyRSA, hash: crypto.SHA384}, true
	case keywardv1.AlgorithmRS512:
		return algSpec{family: familyRSA, hash: crypto.SHA512}, true
	case keywardv1.AlgorithmPS256:
		return algSpec{family: familyPSS, hash: crypto.SHA256}, true
	case keywardv1.AlgorithmPS384:
		return algSpec{family: familyPSS, hash: crypto.SHA384}, true
	case keywardv1.AlgorithmPS512:
		return algSpec{family: familyPSS, hash: crypto.SHA512}, true
	case keywardv1.AlgorithmHS256:
		return algSpec{family: familyHMAC, hash: crypto.SHA256}, true
	case keywardv1.AlgorithmHS384:
		return algSpec{family: familyHMAC, hash: crypto.SHA384}, true
	case keywardv1.AlgorithmHS512:
		return algSpec{family: familyHMAC, hash: crypto.SHA512}, true
	}
	return algSpec{}, false
}

// supported reports whether keyward signs and verifies alg. Names are case-sensitive.
func supported(alg keywardv1.Algorithm) bool {
	_, ok := specOf(alg)
	return ok
}

// digest hashes the signing input with one of the SHA-2 functions JWS uses, without the
// allocations of a hash.Hash.
func digest(h crypto.Hash, input []byte) []byte {
	switch h {
	case crypto.SHA256:
		d := sha256.Sum256(input)
		return d[:]
	case crypto.SHA384:
		d := sha512.Sum384(input)
		return d[:]
	default:
		d := sha512.Sum512(input)
		return d[:]
	}
}
