// Package token is the one place where keyward mints and checks JWTs.
//
// The issuer signs access and refresh tokens with a Signer and checks refresh tokens (and
// the verify endpoint's tokens) like the validator checks access tokens on the ingress hot
// path: Parse, then Verify against the key named by the header kid, then Validate.
//
//	t, err := token.Parse(raw, token.DefaultMaxLen)
//	if err == nil {
//		err = token.Verify(t, keys[t.Header().KID]) // a nil key reports unknown_kid
//	}
//	if err == nil {
//		err = token.Validate(t, token.Expect{Issuer: iss, Audiences: auds, Type: token.TokenTypeAccess})
//	}
//
// Parse is deliberately stricter than JOSE libraries (RFC 8725): compact serialization only,
// canonical unpadded base64url, strict JSON without duplicate member names, and a header of
// exactly alg, kid and optionally typ. Nothing is handed to a JOSE library before these checks,
// and signature verification uses the standard library primitives directly, once, on the
// bytes Parse already split. Every error is an *Error carrying a Reason for metrics; callers
// show users nothing more specific than "invalid token".
package token

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
)

// Header typ values (RFC 9068 for access tokens; refresh tokens have a type of their own so
// that neither can stand in for the other).
const (
	TypeAccess  = "at+jwt"
	TypeRefresh = "rt+jwt"
)

// DefaultMaxLen is the size cap Parse applies when given a non-positive maxLen. keyward's own
// tokens stay well under 2 KiB unless issuers add large extra claims.
const DefaultMaxLen = 8 << 10

// Header is the protected header of a token. keyward accepts no other member.
type Header struct {
	Alg keywardv1.Algorithm // alg, one of the supported algorithms
	KID string              // kid, never empty
	Typ string              // typ, empty when absent
}

// Token is a parsed, not yet verified, token. It keeps the signing input and the decoded
// signature, so Verify does not parse again.
type Token struct {
	header Header
	// Claims are the decoded claims. They are untrusted until Verify and Validate succeed.
	Claims Claims

	signingInput []byte // base64url(header) "." base64url(payload), copied from the input
	signature    []byte // decoded signature
}

// Header returns the token's protected header.
func (t *Token) Header() Header { return t.header }

// Parse splits and decodes a compact JWT with the strict checks described in the package
// documentation, and decodes its claims. Tokens longer than maxLen bytes are refused before
// anything else; a non-positive maxLen means DefaultMaxLen. The returned Token does not
// alias raw.
func Parse(raw []byte, maxLen int) (*Token, error) {
	t, payload, err := parseJWS(raw, maxLen)
	if err != nil {
		return nil, err
	}
	if err := t.Claims.decode(payload); err != nil {
		return nil, refuseErr(ReasonMalformed, fmt.Errorf("decode claims: %w", err))
	}
	return t, nil
}

// parseJWS is Parse without the claims: it returns the decoded payload, whatever it holds.
// The Wycheproof JWS vectors, whose payloads are not claim sets, test this layer.
func parseJWS(raw []byte, maxLen int) (*Token, []byte, error) {
	if maxLen <= 0 {
		maxLen = DefaultMaxLen
	}
	if len(raw) > maxLen {
		return nil, nil, refuse(ReasonOversize, "token exceeds the size cap")
	}
	if len(raw) > 0 && raw[0] == '{' {
		return nil, nil, refuse(ReasonMalformed, "JSON serialization is not accepted")
	}
	dot1 := bytes.IndexByte(raw, '.')
	dot2 := -1
	if dot1 >= 0 {
		if i := bytes.IndexByte(raw[dot1+1:], '.'); i >= 0 {
			dot2 = dot1 + 1 + i
		}
	}
	if dot2 < 0 || bytes.IndexByte(raw[dot2+1:], '.') >= 0 {
		return nil, nil, refuse(ReasonMalformed, "token is not three dot-separated segments")
	}

	headerJSON, err := decodeSegment(raw[:dot1])
	if err != nil {
		return nil, nil, refuseErr(ReasonMalformed, fmt.Errorf("decode header: %w", err))
	}
	h, err := parseHeader(headerJSON)
	if err != nil {
		return nil, nil, err
	}
	payload, err := decodeSegment(raw[dot1+1 : dot2])
	if err != nil {
		return nil, nil, refuseErr(ReasonMalformed, fmt.Errorf("decode payload: %w", err))
	}
	sig, err := decodeSegment(raw[dot2+1:])
	if err != nil {
		return nil, nil, refuseErr(ReasonMalformed, fmt.Errorf("decode signature: %w", err))
	}
	if len(sig) == 0 {
		return nil, nil, refuse(ReasonMalformed, "signature is empty")
	}
	return &Token{header: h, signingInput: bytes.Clone(raw[:dot2]), signature: sig}, payload, nil
}

var (
	errBase64Alphabet = errors.New("byte outside the base64url alphabet")
	errBase64Length   = errors.New("impossible base64url length")
	errBase64Bits     = errors.New("non-zero trailing bits in base64url")
)

// strictBase64 is unpadded base64url refusing non-zero trailing bits. It still skips CR and
// LF, so decodeSegment checks the alphabet first.
var strictBase64 = base64.RawURLEncoding.Strict()

// decodeSegment decodes one segment of canonical unpadded base64url: only A-Z a-z 0-9 - _,
// no padding, whitespace or other byte, and zero trailing bits, so that exactly one encoding
// of each value is accepted. An empty segment decodes to nothing.
func decodeSegment(seg []byte) ([]byte, error) {
	for _, c := range seg {
		if !isBase64URL(c) {
			return nil, errBase64Alphabet
		}
	}
	if len(seg)%4 == 1 {
		return nil, errBase64Length
	}
	out := make([]byte, strictBase64.DecodedLen(len(seg)))
	n, err := strictBase64.Decode(out, seg)
	if err != nil {
		return nil, errBase64Bits
	}
	return out[:n], nil
}

func isBase64URL(c byte) bool {
	return 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_'
}

// parseHeader decodes a protected header: a strict JSON object whose members are alg and kid
// (required, non-empty strings) and typ (optional string), nothing else.
func parseHeader(data []byte) (Header, error) {
	var h Header
	var alg string
	var hasAlg, hasKID bool
	err := scanObject(data, func(name, value []byte) error {
		var ok bool
		switch string(name) {
		case "alg":
			alg, ok = jsonString(value)
			hasAlg = true
		case "kid":
			h.KID, ok = jsonString(value)
			hasKID = true
		case "typ":
			h.Typ, ok = jsonString(value)
		default:
			// jku, jwk, x5u, x5c, crit, b64, ...: every other member is refused, so no key
			// or processing rule can come from the token itself.
			return refuse(ReasonBadHeader, "header has a member other than alg, kid and typ")
		}
		if !ok {
			return refuse(ReasonBadHeader, "header member is not a string")
		}
		return nil
	})
	if err != nil {
		if e, ok := errors.AsType[*Error](err); ok {
			return Header{}, e
		}
		return Header{}, refuseErr(ReasonMalformed, fmt.Errorf("decode header: %w", err))
	}
	switch {
	case !hasAlg || alg == "":
		return Header{}, refuse(ReasonBadHeader, "header has no alg")
	case strings.EqualFold(alg, "none"):
		return Header{}, refuse(ReasonUnsupportedAlg, "alg none is not accepted")
	case !supported(keywardv1.Algorithm(alg)):
		return Header{}, refuse(ReasonUnsupportedAlg, "header alg is not supported")
	case !hasKID || h.KID == "":
		return Header{}, refuse(ReasonBadHeader, "header has no kid")
	}
	h.Alg = keywardv1.Algorithm(alg)
	return h, nil
}
