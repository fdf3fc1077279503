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
	// MaxLifetime, when positive, is the longest lifetime the issuer gives this kind of token:
	// exp may lie at most MaxLifetime (plus Leeway) after Now. A token that outlives anything
	// its issuer mints was not minted by it as configured, and is refused.
	MaxLifetime time.Duration
}

// TypeExternalAccess is an Expect.Type for access tokens of external (third-party) issuers,
// which need not follow keyward's conventions: the header typ may be absent, "JWT" or
// "at+jwt", token_type may be absent or "access", and jti is optional. A token that says it is
// a refresh token (typ rt+jwt or token_type refresh) still fails. Never use it for keyward's
// own issuers.
const TypeExternalAccess = "external-access"

// Validate checks a token's header typ and claims against e, after Verify: the kind of token
// (header typ and token_type both, so that a refresh token is never accepted as an access
// token and the reverse), iss, aud, exp (required), nbf and iat (not in the future), the
// presence of sub and jti, and that sub, email and groups hold no control character (the
// validator sends them upstream as header values, where CR LF would inject headers).
//
// The header typ is compared as RFC 7515 4.1.9 and RFC 9068 4 describe: case-insensitively,
// with or without the "application/" prefix.
func Validate(t *Token, e Expect) error {
	c := &t.Claims
	var typ string
	switch e.Type {
	case TokenTypeAccess:
		typ = TypeAccess
	case TokenTypeRefresh:
		typ = TypeRefresh
	case TypeExternalAccess:
		if h := t.header.Typ; h != "" && !typeMatches(h, "jwt") && !typeMatches(h, TypeAccess) {
			return refuse(ReasonWrongType, "header typ is not JWT or at+jwt")
		}
		if c.TokenType != "" && c.TokenType != TokenTypeAccess {
			return refuse(ReasonWrongType, "token_type is not access")
		}
	default:
		return refuse(ReasonWrongType, "expected token type is neither access nor refresh")
	}
	if typ != "" {
		if !typeMatches(t.header.Typ, typ) {
			return refuse(ReasonWrongType, "header typ is not the expected type")
		}
		if c.TokenType != e.Type {
			return refuse(ReasonWrongType, "token_type is not the expected type")
		}
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
	case e.MaxLifetime > 0 && c.ExpiresAt.After(now.Add(e.MaxLifetime+leeway)):
		return refuse(ReasonLifetime, "exp lies further ahead than the issuer's token lifetime")
	case !c.NotBefore.IsZero() && now.Add(leeway).Before(c.NotBefore):
		return refuse(ReasonNotYetValid, "nbf is in the future")
	case !c.IssuedAt.IsZero() && now.Add(leeway).Before(c.IssuedAt):
		return refuse(ReasonNotYetValid, "iat is in the future")
	case c.Subject == "":
		return refuse(ReasonMissingClaim, "sub is missing")
	case c.ID == "" && e.Type != TypeExternalAccess:
		return refuse(ReasonMissingClaim, "jti is missing")
	case hasControl(c.Subject) || hasControl(c.Email) || slices.ContainsFunc(c.Groups, hasControl):
		return refuse(ReasonBadClaim, "sub, email or groups holds a control character")
	}
	return nil
}

// hasControl reports whether s holds an ASCII control character (C0 or DEL). JSON escapes
// let a signed claim carry any of them.
func hasControl(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f {
			return true
		}
	}
	return false
}

// KindOf returns the kind of token a header typ names, compared as Validate compares it
// (case-insensitively, with or without "application/"): TokenTypeAccess for at+jwt,
// TokenTypeRefresh for rt+jwt, "" for anything else.
func KindOf(typ string) string {
	switch {
	case typeMatches(typ, TypeAccess):
		return TokenTypeAccess
	case typeMatches(typ, TypeRefresh):
		return TokenTypeRefresh
	}
	return ""
}

// typeMatches compares a header typ with a media type without its "application/" prefix.
func typeMatches(got, want string) bool {
	if len(got) > len("application/") && strings.EqualFold(got[:len("application/")], "application/") {
		got = got[len("application/"):]
	}
	return strings.EqualFold(got, want)
}
