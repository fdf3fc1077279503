package validator

import "github.com/keyward/keyward/internal/token"

// Reason says why a decision was made. It is a label of the decision metric and a key of
// debug logs, never part of a response.
type Reason string

// Reasons of decisions. Token refusals use the token package's reasons (token.Reason) as
// they are.
const (
	// Allowing reasons.
	ReasonAllowed          Reason = "allowed"
	ReasonAnonymous        Reason = "anonymous"
	ReasonUnmatchedAllowed Reason = "unmatched_allowed"

	// 401: no usable token.
	ReasonMissingToken          Reason = "missing_token"
	ReasonMultipleAuthorization Reason = "multiple_authorization"
	ReasonBadScheme             Reason = "bad_scheme"
	ReasonUnknownIssuer         Reason = "unknown_issuer"
	ReasonHSKeysDisabled        Reason = "hs_keys_disabled"
	ReasonSessionRevoked        Reason = "session_revoked"
	ReasonRuleAudience          Reason = "audience_mismatch"

	// 403: a good token the rule refuses, or a request no rule allows.
	ReasonWhenFalse     Reason = "when_false"
	ReasonInvalidPolicy Reason = "invalid_policy"
	ReasonNoPolicy      Reason = "no_policy"
	ReasonNoRule        Reason = "no_rule"

	// 403: the request itself cannot be judged.
	ReasonBadPath         Reason = "bad_path"
	ReasonConflicting     Reason = "conflicting_forwarded_headers"
	ReasonMissingOriginal Reason = "missing_original_request"
	// A gRPC CheckRequest that cannot be decoded.
	ReasonMalformedRequest Reason = "malformed_request"

	// 401: the check did not complete.
	ReasonCanceled Reason = "canceled"
	ReasonInternal Reason = "internal_error"
	ReasonNotReady Reason = "not_ready"
)

func tokenReason(err error) Reason {
	if r := token.ReasonOf(err); r != "" {
		return Reason(r)
	}
	return ReasonInternal
}
