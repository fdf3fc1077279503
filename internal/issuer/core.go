package issuer

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
	"github.com/keyward/keyward/internal/token"
)

// Grant names, for metrics and the OAuth2 grant_type.
const (
	grantPassword          = "password"
	grantRefreshToken      = "refresh_token"
	grantClientCredentials = "client_credentials"
)

// loginResult is the outcome of a password check.
type loginResult struct {
	user *User
	// reason is the failure reason (a metrics label); empty on success.
	reason string
	// retryAfter is set (seconds) when the login was throttled before any hash was computed.
	retryAfter int
}

// login checks a username and password. Throttling comes first, before any hash: a failure
// token is taken from the username's and the client address's buckets, and refunded on
// success. Passwords over 72 bytes are refused for everyone without a hash. Otherwise exactly
// one hash is computed, under the concurrency bound, whether the user exists or not (an
// unknown user is compared with a dummy hash of the same scheme and cost), and disabled users
// are refused only after it, so that no answer or timing says which users exist.
func (s *Server) login(ctx context.Context, cfg *issuerConfig, th *throttler, username, password, addr string) loginResult {
	now := s.clock.Now()
	a, retry, which := th.admit(username, addr, now)
	if a == nil {
		loginFailures.WithLabelValues(cfg.label, which).Inc()
		return loginResult{reason: which, retryAfter: retry}
	}
	if len(password) > MaxPasswordBytes {
		loginFailures.WithLabelValues(cfg.label, "password_too_long").Inc()
		return loginResult{reason: "password_too_long"}
	}
	user := cfg.users.Lookup(username)
	h := cfg.users.dummy
	if user != nil {
		h = user.hash
	}
	select {
	case s.hashSem <- struct{}{}:
	case <-ctx.Done():
		return loginResult{reason: "cancelled"}
	}
	ok := h.verify([]byte(password))
	<-s.hashSem
	passwordHashes.WithLabelValues(cfg.label).Inc()
	var reason string
	switch {
	case user == nil:
		reason = "unknown_user"
	case !ok:
		reason = "bad_password"
	case user.Disabled:
		reason = "disabled"
	}
	if reason != "" {
		loginFailures.WithLabelValues(cfg.label, reason).Inc()
		s.log.V(1).Info("Login failed", "issuer", cfg.label, "user", safeSubject(username), "address", addr, "reason", reason)
		return loginResult{reason: reason}
	}
	a.succeeded()
	return loginResult{user: user}
}

// tokenError classifies a refused token for the response.
type tokenError int

const (
	tokenInvalid   tokenError = iota + 1 // bad, expired, foreign: "Token is invalid or expired"
	tokenWrongType                       // a valid token of the other kind: "Token has wrong type"
)

// checkToken parses, verifies and validates a token of this issuer. want is
// token.TokenTypeAccess, token.TokenTypeRefresh, or "" for either (the header typ decides).
func (s *Server) checkToken(cfg *issuerConfig, raw, want string) (*token.Claims, string, tokenError) {
	t, err := token.Parse([]byte(raw), token.DefaultMaxLen)
	if err != nil {
		return nil, "", tokenInvalid
	}
	if err := token.Verify(t, cfg.verifyKeys[t.Header().KID]); err != nil {
		return nil, "", tokenInvalid
	}
	// The header typ names the kind, compared as the validator compares it (RFC 7515
	// 4.1.9: case-insensitive, "application/" optional); Validate checks token_type agrees.
	typ := token.KindOf(t.Header().Typ)
	if typ == "" {
		return nil, "", tokenInvalid
	}
	maxLifetime := cfg.accessTTL
	if typ == token.TokenTypeRefresh {
		maxLifetime = cfg.refreshTTL
	}
	if err := token.Validate(t, token.Expect{Issuer: cfg.iss, Type: typ, Now: s.clock.Now(), Leeway: cfg.leeway, MaxLifetime: maxLifetime}); err != nil {
		return nil, "", tokenInvalid
	}
	if typ == token.TokenTypeAccess && !cfg.audienceOK(&t.Claims) {
		return nil, "", tokenInvalid
	}
	if typ == token.TokenTypeRefresh && (t.Claims.SessionID == "" || t.Claims.Generation < 1) {
		return nil, "", tokenInvalid
	}
	if want != "" && typ != want {
		return nil, typ, tokenWrongType
	}
	return &t.Claims, typ, 0
}

// audienceOK reports whether an access token's aud is one this issuer gives its tokens: the
// TokenIssuer's audiences, and those of the client named by client_id (client_credentials
// tokens carry the client's). When the issuer gives no audience, a token must have none
// (PyJWT, under simplejwt, refuses an aud it was not told to expect).
func (cfg *issuerConfig) audienceOK(c *token.Claims) bool {
	want := cfg.audiences
	if c.ClientID != "" && cfg.clients != nil {
		if cl := cfg.clients.byID[c.ClientID]; cl != nil && len(cl.Audiences) > 0 {
			want = append(slices.Clone(want), cl.Audiences...)
		}
	}
	if len(want) == 0 {
		return len(c.Audience) == 0
	}
	return slices.ContainsFunc(c.Audience, func(a string) bool { return slices.Contains(want, a) })
}

// sign signs claims and records the signing latency.
func (s *Server) sign(cfg *issuerConfig, typ string, c *token.Claims) (string, error) {
	start := time.Now()
	out, err := cfg.signer.Sign(typ, c)
	signingSeconds.WithLabelValues(string(cfg.signer.Algorithm())).Observe(time.Since(start).Seconds())
	return out, err
}

// issued is a minted token set.
type issued struct {
	access    string
	refresh   string // empty when none is returned
	expiresIn int64
	scope     string
}

// accessClaims builds an access token's claims for a session of user (nil for a client).
func (s *Server) accessClaims(cfg *issuerConfig, user *User, subject, sid, clientID, scope string, aud []string, notAfter time.Time) *token.Claims {
	now := s.clock.Now().Truncate(time.Second)
	exp := now.Add(cfg.accessTTL)
	if !notAfter.IsZero() && exp.After(notAfter) {
		// No access token outlives its session: once the controller deletes an expired
		// session, nothing of it can still be valid.
		exp = notAfter
	}
	if aud == nil {
		aud = cfg.audiences
	}
	c := &token.Claims{
		Issuer: cfg.iss, Subject: subject, Audience: aud, ExpiresAt: exp, IssuedAt: now,
		ID: newTokenID(), SessionID: sid, ClientID: clientID, Scope: scope, TokenType: token.TokenTypeAccess,
	}
	if len(cfg.extraClaims) > 0 || (user != nil && len(user.Claims) > 0) {
		c.Extra = make(map[string]any, len(cfg.extraClaims))
		maps.Copy(c.Extra, cfg.extraClaims)
		if user != nil {
			maps.Copy(c.Extra, user.Claims)
		}
	}
	if user != nil {
		c.Groups = user.Groups
		c.Email = user.Email
	}
	return c
}

func (s *Server) refreshClaims(cfg *issuerConfig, sess *keywardv1.Session, rs refreshState) *token.Claims {
	return &token.Claims{
		Issuer: cfg.iss, Subject: sess.Spec.Subject, ExpiresAt: rs.exp, IssuedAt: rs.iat, ID: rs.jti,
		SessionID: sess.Name, ClientID: sess.Spec.ClientID, Scope: sess.Spec.Scope,
		TokenType: token.TokenTypeRefresh, Generation: rs.gen,
		Extra: map[string]any{ClaimResourceVersion: sess.ResourceVersion},
	}
}

// issueForLogin opens a session for user and mints its first access and refresh tokens.
func (s *Server) issueForLogin(ctx context.Context, cfg *issuerConfig, user *User, clientID, scope, grant string) (*issued, error) {
	sess, rs, err := s.sessions.create(ctx, cfg, user.Name, clientID, scope, s.clock.Now())
	if err != nil {
		return nil, err
	}
	return s.mintPair(cfg, user, sess, rs, true, grant)
}

func (s *Server) mintPair(cfg *issuerConfig, user *User, sess *keywardv1.Session, rs refreshState, withRefresh bool, grant string) (*issued, error) {
	ac := s.accessClaims(cfg, user, sess.Spec.Subject, sess.Name, sess.Spec.ClientID, sess.Spec.Scope, nil, sess.Spec.ExpiresAt.Time)
	access, err := s.sign(cfg, token.TypeAccess, ac)
	if err != nil {
		return nil, fmt.Errorf("cannot sign access token: %w", err)
	}
	tokensIssued.WithLabelValues(cfg.label, grant, token.TokenTypeAccess).Inc()
	out := &issued{access: access, expiresIn: int64(ac.ExpiresAt.Sub(ac.IssuedAt).Seconds()), scope: sess.Spec.Scope}
	if withRefresh {
		if out.refresh, err = s.sign(cfg, token.TypeRefresh, s.refreshClaims(cfg, sess, rs)); err != nil {
			return nil, fmt.Errorf("cannot sign refresh token: %w", err)
		}
		tokensIssued.WithLabelValues(cfg.label, grant, token.TokenTypeRefresh).Inc()
	}
	return out, nil
}

// issueForRefresh checks the user behind a verified refresh token, moves its session forward
// and mints the answer. A disabled or removed user's session is revoked.
func (s *Server) issueForRefresh(ctx context.Context, cfg *issuerConfig, c *token.Claims, grant string) (*issued, error) {
	user := cfg.users.Lookup(c.Subject)
	if user == nil || user.Disabled {
		s.log.Info("Refresh refused: user disabled or removed; revoking session", "issuer", cfg.label, "session", c.SessionID, "reason", "UserDisabled")
		if err := s.sessions.revokeByID(ctx, cfg, c.SessionID, keywardv1.SessionRevokedUserDisabled, s.clock.Now()); err != nil && !errors.Is(err, errSessionInvalid) {
			return nil, err
		}
		return nil, errSessionInvalid
	}
	sess, rs, err := s.sessions.refresh(ctx, cfg, c, s.clock.Now())
	if err != nil {
		return nil, err
	}
	return s.mintPair(cfg, user, sess, rs, cfg.rotate, grant)
}

// accessRevoked reports whether a verified access token belongs to a revoked session.
func (s *Server) accessRevoked(cfg *issuerConfig, c *token.Claims) bool {
	if c.SessionID == "" {
		return false
	}
	return s.registry.revoked.has(sessionKey(cfg, c.SessionID))
}
