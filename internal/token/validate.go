package token

import (
	"slices"
	"strings"
	"time"
)

// Expect is what Validate requires of a token.
type Expect struct {
	// Issuer is the exact iss required. It must not be empty.
	Issuer string
	// Audiences lists acceptable audiences: aud must contain at least one. Empty means aud
	// is not checked.
	Audiences []string
	// Type is TokenTypeAccess or TokenTypeRefresh: the token_type claim must equal it and the
	// header typ must be the matching TypeAccess or TypeRefresh.
	Type string
	// Now is the time to validate at; zero means time.Now().
	Now time.Time
	// Leeway absorbs clock skew on exp, nbf and iat. Negative counts as zero.
	Leeway time.Duration
}

// Validate checks a token's header typ and claims against e, after Verify: the kind of token
// (header typ and token_type both, so that a refresh token is never accepted as an access
// token and the reverse), iss, aud, exp (required), nbf and iat (not in the future), and the
// presence of sub and jti.
//
// The header typ is compared as RFC 7515 4.1.9 and RFC 9068 4 describe: case-insensitively,
// with or without the "application/" prefix.
func Validate(t *Token, e Expect) error {
	var typ string
	switch e.Type {
	case TokenTypeAccess:
		typ = TypeAccess
	case TokenTypeRefresh:
		typ = TypeRefresh
	default:
		return refuse(ReasonWrongType, "expected token type is neither access nor refresh")
	}
	if !typeMatches(t.header.Typ, typ) {
		return refuse(ReasonWrongType, "header typ is not the expected type")
	}
	c := &t.Claims
	if c.TokenType != e.Type {
		return refuse(ReasonWrongType, "token_type is not the expected type")
	}
	if e.Issuer == "" || c.Issuer != e.Issuer {
		return refuse(ReasonBadIssuer, "iss is not the expected issuer")
	}
	if len(e.Audiences) > 0 && !slices.ContainsFunc(c.Audience, func(a string) bool { return slices.Contains(e.Audiences, a) }) {
		return refuse(ReasonBadAudience, "aud holds none of the expected audiences")
	}

	now, leeway := e.Now, max(e.Leeway, 0)
	if now.IsZero() {
		now = time.Now()
	}
	switch {
	case c.ExpiresAt.IsZero():
		return refuse(ReasonMissingClaim, "exp is missing")
	case !now.Before(c.ExpiresAt.Add(leeway)):
		return refuse(ReasonExpired, "exp has passed")
	case !c.NotBefore.IsZero() && now.Add(leeway).Before(c.NotBefore):
		return refuse(ReasonNotYetValid, "nbf is in the future")
	case !c.IssuedAt.IsZero() && now.Add(leeway).Before(c.IssuedAt):
		return refuse(ReasonNotYetValid, "iat is in the future")
	case c.Subject == "":
		return refuse(ReasonMissingClaim, "sub is missing")
	case c.ID == "":
		return refuse(ReasonMissingClaim, "jti is missing")
	}
	return nil
}

// typeMatches compares a header typ with a media type without its "application/" prefix.
func typeMatches(got, want string) bool {
	if len(got) > len("application/") && strings.EqualFold(got[:len("application/")], "application/") {
		got = got[len("application/"):]
	}
	return strings.EqualFold(got, want)
}
