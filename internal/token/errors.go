package token

import "errors"

// Reason is a machine-readable cause of a refused token or key, for metrics and logs. Users
// are never told which reason applied: a validator answers every refusal the same way.
type Reason string

// Reasons reported by Parse, Verify, Validate and the key loaders.
const (
	// ReasonMalformed: not a strict compact JWS with JSON header and claims.
	ReasonMalformed Reason = "malformed"
	// ReasonOversize: the token is longer than the size cap.
	ReasonOversize Reason = "oversize"
	// ReasonBadHeader: a header member is missing, not a string or not allowed.
	ReasonBadHeader Reason = "bad_header"
	// ReasonUnsupportedAlg: the algorithm is "none" or not one keyward supports.
	ReasonUnsupportedAlg Reason = "unsupported_alg"
	// ReasonAlgMismatch: the header alg differs from the algorithm of the key.
	ReasonAlgMismatch Reason = "alg_mismatch"
	// ReasonUnknownKID: no key with the header kid.
	ReasonUnknownKID Reason = "unknown_kid"
	// ReasonBadKey: the key cannot be used for its algorithm (wrong type, curve or size,
	// private material where a public key was expected, wrong use).
	ReasonBadKey Reason = "bad_key"
	// ReasonBadSignature: the signature does not verify.
	ReasonBadSignature Reason = "bad_signature"
	// ReasonExpired: exp has passed, leeway included.
	ReasonExpired Reason = "expired"
	// ReasonLifetime: exp lies further ahead than the issuer's token lifetime allows.
	ReasonLifetime Reason = "lifetime_exceeded"
	// ReasonNotYetValid: nbf or iat lies in the future, leeway included.
	ReasonNotYetValid Reason = "not_yet_valid"
	// ReasonBadIssuer: iss differs from the expected issuer.
	ReasonBadIssuer Reason = "bad_issuer"
	// ReasonBadAudience: aud holds none of the expected audiences.
	ReasonBadAudience Reason = "bad_audience"
	// ReasonWrongType: header typ or token_type is not the expected kind of token.
	ReasonWrongType Reason = "wrong_type"
	// ReasonMissingClaim: a required claim is absent.
	ReasonMissingClaim Reason = "missing_claim"
	// ReasonBadClaim: a claim that becomes an identity header (sub, email, groups) holds a
	// control character, which would split or corrupt the header.
	ReasonBadClaim Reason = "bad_claim"
)

// Error is a refusal with its Reason. Its message never contains token contents (no claim or
// header values, no key IDs), so it is safe to log; it is not meant for end users.
type Error struct {
	Reason Reason
	// Err is the detail, if any.
	Err error
}

func (e *Error) Error() string {
	if e.Err == nil {
		return "token refused: " + string(e.Reason)
	}
	return "token refused: " + string(e.Reason) + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// ReasonOf returns the Reason of the first *Error in err's chain, or "" if there is none.
func ReasonOf(err error) Reason {
	if e, ok := errors.AsType[*Error](err); ok {
		return e.Reason
	}
	return ""
}

// refuse returns an *Error with a fixed detail message.
func refuse(r Reason, detail string) *Error {
	return &Error{Reason: r, Err: errors.New(detail)}
}

// refuseErr returns an *Error wrapping err.
func refuseErr(r Reason, err error) *Error {
	return &Error{Reason: r, Err: err}
}
