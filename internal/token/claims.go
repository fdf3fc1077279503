package token

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"
)

// Values of the token_type claim (the djangorestframework-simplejwt convention).
const (
	TokenTypeAccess  = "access"
	TokenTypeRefresh = "refresh"
)

// maxNumericDate is 9999-12-31T23:59:59Z, the latest NumericDate keyward reads or writes.
const maxNumericDate = 253402300799

// Claims is the claim set of a keyward token. Registered and keyward claims have fields; any
// other claim lives in Extra.
//
// On the wire, aud is always written as an array and read from a string or an array of
// strings; exp, nbf and iat are NumericDates written as JSON integers (seconds) and read only
// from JSON integers between 0 and 9999-12-31; an empty or zero field is omitted and an
// omitted claim decodes to the zero value.
type Claims struct {
	Issuer    string    // iss
	Subject   string    // sub
	Audience  []string  // aud
	ExpiresAt time.Time // exp, truncated to the second
	NotBefore time.Time // nbf, truncated to the second
	IssuedAt  time.Time // iat, truncated to the second
	ID        string    // jti
	SessionID string    // sid
	ClientID  string    // client_id
	Scope     string    // scope, space-separated
	TokenType string    // token_type: TokenTypeAccess or TokenTypeRefresh
	// Generation is the refresh generation (gen) within the session; zero is omitted.
	Generation int64
	Groups     []string // groups
	Email      string   // email

	// Extra holds every other claim. Decoded numbers are json.Number, so that they keep
	// their exact value. Marshalling fails if Extra names a claim that has a field above:
	// registered claims cannot be overridden through Extra.
	Extra map[string]any
}

// Claim names with a field in Claims.
const (
	claimIssuer     = "iss"
	claimSubject    = "sub"
	claimAudience   = "aud"
	claimExpiresAt  = "exp"
	claimNotBefore  = "nbf"
	claimIssuedAt   = "iat"
	claimID         = "jti"
	claimSessionID  = "sid"
	claimClientID   = "client_id"
	claimScope      = "scope"
	claimTokenType  = "token_type"
	claimGeneration = "gen"
	claimGroups     = "groups"
	claimEmail      = "email"
)

// IsRegistered reports whether name is a claim with its own field in Claims, which Extra
// cannot carry.
func IsRegistered(name string) bool {
	switch name {
	case claimIssuer, claimSubject, claimAudience, claimExpiresAt, claimNotBefore, claimIssuedAt,
		claimID, claimSessionID, claimClientID, claimScope, claimTokenType, claimGeneration,
		claimGroups, claimEmail:
		return true
	}
	return false
}

var (
	errNotString       = errors.New("is not a string")
	errNotStrings      = errors.New("is not an array of strings")
	errNotAudience     = errors.New("is not a string or an array of strings")
	errNotNumericDate  = errors.New("is not an integer NumericDate")
	errDateOutOfRange  = errors.New("is out of range")
	errNotGeneration   = errors.New("is not a non-negative integer")
	errInvalidUTF8     = errors.New("is not valid UTF-8")
	errRegisteredExtra = errors.New("is a registered claim and cannot be set through Extra")
)

// MarshalJSON encodes the claims as one JSON object: the fields in a fixed order, then Extra
// sorted by name. It fails on a registered name in Extra, invalid UTF-8 and dates out of range.
func (c Claims) MarshalJSON() ([]byte, error) {
	buf := make([]byte, 0, 512)
	buf = append(buf, '{')
	var err error
	str := func(name, v string) {
		if v == "" || err != nil {
			return
		}
		buf, err = appendMember(buf, name)
		if err == nil {
			buf, err = appendString(buf, name, v)
		}
	}
	strs := func(name string, v []string) {
		if len(v) == 0 || err != nil {
			return
		}
		buf, err = appendMember(buf, name)
		buf = append(buf, '[')
		for i, s := range v {
			if i > 0 {
				buf = append(buf, ',')
			}
			if err == nil {
				buf, err = appendString(buf, name, s)
			}
		}
		buf = append(buf, ']')
	}
	date := func(name string, t time.Time) {
		if t.IsZero() || err != nil {
			return
		}
		sec := t.Unix()
		if sec < 0 || sec > maxNumericDate {
			err = fmt.Errorf("claim %s %w", name, errDateOutOfRange)
			return
		}
		buf, err = appendMember(buf, name)
		buf = strconv.AppendInt(buf, sec, 10)
	}

	str(claimIssuer, c.Issuer)
	str(claimSubject, c.Subject)
	strs(claimAudience, c.Audience)
	date(claimExpiresAt, c.ExpiresAt)
	date(claimNotBefore, c.NotBefore)
	date(claimIssuedAt, c.IssuedAt)
	str(claimID, c.ID)
	str(claimSessionID, c.SessionID)
	str(claimClientID, c.ClientID)
	str(claimScope, c.Scope)
	str(claimTokenType, c.TokenType)
	if c.Generation < 0 {
		return nil, fmt.Errorf("claim %s %w", claimGeneration, errNotGeneration)
	}
	if c.Generation > 0 && err == nil {
		buf, err = appendMember(buf, claimGeneration)
		buf = strconv.AppendInt(buf, c.Generation, 10)
	}
	strs(claimGroups, c.Groups)
	str(claimEmail, c.Email)
	if err != nil {
		return nil, err
	}

	for _, name := range slices.Sorted(maps.Keys(c.Extra)) {
		if IsRegistered(name) {
			return nil, fmt.Errorf("extra claim %s %w", name, errRegisteredExtra)
		}
		if !utf8.ValidString(name) {
			return nil, fmt.Errorf("extra claim name %w", errInvalidUTF8)
		}
		v, err := json.Marshal(c.Extra[name])
		if err != nil {
			return nil, fmt.Errorf("encode extra claim: %w", err)
		}
		if buf, err = appendMember(buf, name); err != nil {
			return nil, err
		}
		buf = append(buf, v...)
	}
	buf = append(buf, '}')
	// The result must read back exactly: this catches what json.Marshal lets through, such
	// as invalid UTF-8 in nested Extra values or duplicate names in an Extra json.RawMessage.
	if err := scanObject(buf, nil); err != nil {
		return nil, fmt.Errorf("encode claims: %w", err)
	}
	return buf, nil
}

// appendMember appends a member name and colon, preceded by a comma unless it is the first.
func appendMember(buf []byte, name string) ([]byte, error) {
	if buf[len(buf)-1] != '{' {
		buf = append(buf, ',')
	}
	buf, err := appendString(buf, "name", name)
	return append(buf, ':'), err
}

// appendString appends s as a JSON string. claim names the claim for the error on invalid
// UTF-8, which json.Marshal would silently replace.
func appendString(buf []byte, claim, s string) ([]byte, error) {
	if !utf8.ValidString(s) {
		return buf, fmt.Errorf("claim %s %w", claim, errInvalidUTF8)
	}
	b, err := json.Marshal(s)
	if err != nil {
		return buf, fmt.Errorf("encode claim %s: %w", claim, err)
	}
	return append(buf, b...), nil
}

// UnmarshalJSON decodes claims with the same strict rules as Parse: one JSON object without
// duplicate names at any depth, valid UTF-8, typed registered claims, integer dates in range.
func (c *Claims) UnmarshalJSON(data []byte) error {
	return c.decode(data)
}

// decode replaces c with the claims in data. Errors name registered claims only.
func (c *Claims) decode(data []byte) error {
	*c = Claims{}
	return scanObject(data, func(name, value []byte) error {
		var err error
		switch string(name) {
		case claimIssuer:
			c.Issuer, err = decodeString(claimIssuer, value)
		case claimSubject:
			c.Subject, err = decodeString(claimSubject, value)
		case claimAudience:
			if s, ok := jsonString(value); ok {
				c.Audience = []string{s}
			} else if c.Audience, ok = jsonStrings(value); !ok {
				err = fmt.Errorf("claim %s %w", claimAudience, errNotAudience)
			}
		case claimExpiresAt:
			c.ExpiresAt, err = decodeDate(claimExpiresAt, value)
		case claimNotBefore:
			c.NotBefore, err = decodeDate(claimNotBefore, value)
		case claimIssuedAt:
			c.IssuedAt, err = decodeDate(claimIssuedAt, value)
		case claimID:
			c.ID, err = decodeString(claimID, value)
		case claimSessionID:
			c.SessionID, err = decodeString(claimSessionID, value)
		case claimClientID:
			c.ClientID, err = decodeString(claimClientID, value)
		case claimScope:
			c.Scope, err = decodeString(claimScope, value)
		case claimTokenType:
			c.TokenType, err = decodeString(claimTokenType, value)
		case claimGeneration:
			n, ok := jsonInt(value)
			if !ok || n < 0 {
				return fmt.Errorf("claim %s %w", claimGeneration, errNotGeneration)
			}
			c.Generation = n
		case claimGroups:
			var ok bool
			if c.Groups, ok = jsonStrings(value); !ok {
				err = fmt.Errorf("claim %s %w", claimGroups, errNotStrings)
			}
		case claimEmail:
			c.Email, err = decodeString(claimEmail, value)
		default:
			v, err := decodeValue(value)
			if err != nil {
				return err
			}
			if c.Extra == nil {
				c.Extra = make(map[string]any)
			}
			c.Extra[string(name)] = v
		}
		return err
	})
}

// decodeValue converts a raw JSON value that scanObject accepted into what encoding/json
// produces with UseNumber: map[string]any, []any, string, json.Number, bool or nil.
func decodeValue(value []byte) (any, error) {
	switch value[0] {
	case '{':
		m := make(map[string]any)
		err := scanObject(value, func(name, v []byte) error {
			x, err := decodeValue(v)
			m[string(name)] = x
			return err
		})
		return m, err
	case '[':
		a := []any{}
		err := scanArray(value, func(e []byte) error {
			x, err := decodeValue(e)
			a = append(a, x)
			return err
		})
		return a, err
	case '"':
		s, _ := jsonString(value)
		return s, nil
	case 't':
		return true, nil
	case 'f':
		return false, nil
	case 'n':
		return nil, nil
	default:
		return json.Number(value), nil
	}
}

func decodeString(claim string, value []byte) (string, error) {
	s, ok := jsonString(value)
	if !ok {
		return "", fmt.Errorf("claim %s %w", claim, errNotString)
	}
	return s, nil
}

func decodeDate(claim string, value []byte) (time.Time, error) {
	n, ok := jsonInt(value)
	if !ok {
		return time.Time{}, fmt.Errorf("claim %s %w", claim, errNotNumericDate)
	}
	if n < 0 || n > maxNumericDate {
		return time.Time{}, fmt.Errorf("claim %s %w", claim, errDateOutOfRange)
	}
	return time.Unix(n, 0).UTC(), nil
}
