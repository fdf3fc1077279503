package security

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"math/big"
	"strconv"
	"strings"
	"time"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
)

// Minting: tokens built byte by byte and signed with the real keys, so that a case tests
// exactly the one thing it names.

var b64 = base64.RawURLEncoding

func enc(s string) string { return b64.EncodeToString([]byte(s)) }

// member is one claim: its name and raw JSON value.
type member struct{ name, value string }

// unix is a NumericDate relative to the frozen clock.
func unix(d time.Duration) string { return strconv.FormatInt(suite.now.Add(d).Unix(), 10) }

func quote(s string) string { return jsonString(s) }

func newJTI() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// claimsOf is a valid access token's claims of issuer k, in the order keyward writes them.
func claimsOf(k *issuerKeys) []member {
	return []member{
		{"iss", quote(k.iss)},
		{"sub", `"alice"`},
		{"aud", `["api"]`},
		{"exp", unix(5 * time.Minute)},
		{"iat", unix(0)},
		{"jti", quote(newJTI())},
		{"sid", `"s-catalogue"`},
		{"token_type", `"access"`},
	}
}

// payloadOf writes the claims of k with set replacing (or appending) members and drop
// removing them. A set value "" removes the member too.
func payloadOf(k *issuerKeys, set map[string]string, drop ...string) string {
	ms := claimsOf(k)
	seen := map[string]bool{}
	var b strings.Builder
	b.WriteByte('{')
	n := 0
	write := func(name, value string) {
		if n > 0 {
			b.WriteByte(',')
		}
		b.WriteString(quote(name) + ":" + value)
		n++
	}
	for _, m := range ms {
		seen[m.name] = true
		if contains(drop, m.name) {
			continue
		}
		if v, ok := set[m.name]; ok {
			if v != "" {
				write(m.name, v)
			}
			continue
		}
		write(m.name, m.value)
	}
	for _, name := range sortedKeys(set) {
		if !seen[name] && set[name] != "" {
			write(name, set[name])
		}
	}
	b.WriteByte('}')
	return b.String()
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

// headerOf is keyward's header for k's key.
func headerOf(k *issuerKeys) string {
	return `{"alg":"` + string(k.alg) + `","kid":` + quote(k.kid) + `,"typ":"at+jwt"}`
}

// mint is a token of issuer k, signed with its real key, with claims edited by set and drop.
func mint(k *issuerKeys, set map[string]string, drop []string) string {
	return compact(k, headerOf(k), payloadOf(k, set, drop...))
}

// compact encodes header and payload and signs them with k's key and algorithm.
func compact(k *issuerKeys, header, payload string) string {
	return seal(k, enc(header)+"."+enc(payload))
}

// seal signs an already encoded signing input with k's key.
func seal(k *issuerKeys, input string) string {
	return input + "." + b64.EncodeToString(sign(k.alg, k.priv, input))
}

// sign signs input as alg would with key (a private key, or an HMAC secret as []byte).
func sign(alg keywardv1.Algorithm, key any, input string) []byte {
	switch alg {
	case keywardv1.AlgorithmES256:
		d := sha256.Sum256([]byte(input))
		r, s, err := ecdsa.Sign(rand.Reader, key.(*ecdsa.PrivateKey), d[:])
		if err != nil {
			panic(err)
		}
		return p1363(r, s)
	case keywardv1.AlgorithmRS256:
		d := sha256.Sum256([]byte(input))
		sig, err := rsa.SignPKCS1v15(rand.Reader, key.(*rsa.PrivateKey), crypto.SHA256, d[:])
		if err != nil {
			panic(err)
		}
		return sig
	case keywardv1.AlgorithmPS256:
		d := sha256.Sum256([]byte(input))
		sig, err := rsa.SignPSS(rand.Reader, key.(*rsa.PrivateKey), crypto.SHA256, d[:], &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
		if err != nil {
			panic(err)
		}
		return sig
	case keywardv1.AlgorithmEdDSA:
		return ed25519.Sign(key.(ed25519.PrivateKey), []byte(input))
	case keywardv1.AlgorithmHS256:
		m := hmac.New(sha256.New, key.([]byte))
		m.Write([]byte(input))
		return m.Sum(nil)
	}
	panic("sign: unsupported algorithm " + alg)
}

// p1363 is the JOSE form of an ECDSA P-256 signature: r and s, 32 bytes each.
func p1363(r, s *big.Int) []byte {
	out := make([]byte, 64)
	r.FillBytes(out[:32])
	s.FillBytes(out[32:])
	return out
}

// segs splits a compact token.
func segs(tok string) []string { return strings.Split(tok, ".") }

// withSig replaces a token's signature segment.
func withSig(tok string, sig []byte) string {
	p := segs(tok)
	return p[0] + "." + p[1] + "." + b64.EncodeToString(sig)
}

func sigOf(tok string) []byte {
	s, err := b64.DecodeString(segs(tok)[2])
	if err != nil {
		panic(err)
	}
	return s
}

// p256N is the order of P-256.
var p256N, _ = new(big.Int).SetString("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551", 16)

// highS returns the malleated twin (r, n-s) of an ES256 token: a different byte string with
// a signature that verifies over the same header and claims.
func highS(tok string) string {
	sig := sigOf(tok)
	r := new(big.Int).SetBytes(sig[:32])
	s := new(big.Int).SetBytes(sig[32:])
	return withSig(tok, p1363(r, new(big.Int).Sub(p256N, s)))
}

// der is an ECDSA signature in ASN.1 DER (what X.509 uses), not JOSE's r||s.
func der(sig []byte) []byte {
	intDER := func(b []byte) []byte {
		for len(b) > 1 && b[0] == 0 && b[1] < 0x80 {
			b = b[1:]
		}
		if b[0] >= 0x80 {
			b = append([]byte{0}, b...)
		}
		return append([]byte{0x02, byte(len(b))}, b...)
	}
	body := append(intDER(sig[:32]), intDER(sig[32:])...)
	return append([]byte{0x30, byte(len(body))}, body...)
}

// mintTrailingSig mints tokens until the signature segment's last character carries unused
// bits, and returns the token and a copy whose last character sets some of them (a lenient
// decoder reads the same signature bytes).
func mintTrailingSig(k *issuerKeys) (string, string) {
	tok := mint(k, nil, nil)
	p := segs(tok)
	s := p[2]
	last := strings.IndexByte(alphabet, s[len(s)-1])
	// 64 bytes: 86 characters, the last holds 2 bits and 4 unused ones.
	return tok, p[0] + "." + p[1] + "." + s[:len(s)-1] + string(alphabet[last|1])
}

const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

// stdAlphabet mints a token whose signature segment holds '-' or '_' and returns it with the
// signature in the standard alphabet ('+', '/').
func stdAlphabet(k *issuerKeys) string {
	for {
		tok := mint(k, nil, nil)
		p := segs(tok)
		if strings.ContainsAny(p[2], "-_") {
			return p[0] + "." + p[1] + "." + strings.NewReplacer("-", "+", "_", "/").Replace(p[2])
		}
	}
}
