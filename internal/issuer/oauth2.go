package issuer

import (
	"errors"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
	"github.com/keyward/keyward/internal/token"
)

// OAuth2 / OIDC endpoints: RFC 6749 token endpoint (password, refresh_token,
// client_credentials), RFC 7009 revocation, RFC 7662 introspection, RFC 8414 and OIDC
// discovery, and the JWKS.

func oauthErrorBody(code, description string) []byte {
	return mustJSON(struct {
		Error       string `json:"error"`
		Description string `json:"error_description,omitempty"`
	}{code, description})
}

// oauthError is an RFC 6749 §5.2 error response.
type oauthError struct {
	status      int
	code        string
	description string
	retryAfter  int
}

func (e *oauthError) write(w http.ResponseWriter, _ bool) {
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Pragma", "no-cache")
	if e.status == http.StatusUnauthorized {
		// RFC 6749 §5.2: a 401 names the authentication scheme the client can use.
		w.Header().Set("WWW-Authenticate", `Basic realm="keyward"`)
	}
	if e.retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(e.retryAfter))
	}
	writeJSON(w, e.status, oauthErrorBody(e.code, e.description))
}

func invalidRequest(desc string) *oauthError {
	return &oauthError{status: http.StatusBadRequest, code: "invalid_request", description: desc}
}

var errInvalidClient = &oauthError{status: http.StatusUnauthorized, code: "invalid_client", description: "client authentication failed"}

// oauthForm reads an application/x-www-form-urlencoded body. Parameters sent more than once are
// refused (RFC 6749 §3.2); unknown parameters are ignored, as RFC 6749 requires.
func oauthForm(w http.ResponseWriter, r *http.Request) (url.Values, *oauthError) {
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if mt != "application/x-www-form-urlencoded" {
		return nil, invalidRequest("the body must be application/x-www-form-urlencoded")
	}
	body, err := readBody(w, r)
	if err != nil {
		if errors.Is(err, errBodyTooLarge) {
			return nil, &oauthError{status: http.StatusRequestEntityTooLarge, code: "invalid_request", description: "request body too large"}
		}
		return nil, invalidRequest("cannot read the body")
	}
	form, err := url.ParseQuery(string(body))
	if err != nil {
		return nil, invalidRequest("malformed form body")
	}
	for k, v := range form {
		if len(v) > 1 {
			return nil, invalidRequest("parameter " + k + " is repeated")
		}
	}
	return form, nil
}

// clientAuth is the outcome of client authentication.
type clientAuth struct {
	client *Client // nil when no credentials were presented
	basic  bool    // credentials came in an Authorization: Basic header
}

// authenticateClient checks client credentials from HTTP Basic (RFC 6749 §2.3.1, form-encoded
// id and secret) or from client_id and client_secret in the body; not both.
func authenticateClient(r *http.Request, form url.Values, cfg *issuerConfig) (clientAuth, *oauthError) {
	id, secret, basic := r.BasicAuth()
	formID, formSecret := form.Get("client_id"), form.Get("client_secret")
	switch {
	case basic && formSecret != "":
		return clientAuth{basic: true}, invalidRequest("more than one client authentication method")
	case basic:
		var err1, err2 error
		id, err1 = url.QueryUnescape(id)
		secret, err2 = url.QueryUnescape(secret)
		if err1 != nil || err2 != nil {
			return clientAuth{basic: true}, errInvalidClient
		}
		if formID != "" && formID != id {
			return clientAuth{basic: true}, invalidRequest("client_id differs from the authenticated client")
		}
	case formSecret != "":
		id, secret = formID, formSecret
	default:
		return clientAuth{}, nil
	}
	c := cfg.clients.Authenticate(id, secret)
	if c == nil {
		return clientAuth{basic: basic}, errInvalidClient
	}
	return clientAuth{client: c, basic: basic}, nil
}

// grantedScope checks a requested scope against the allowed ones. An empty request gets all
// allowed scopes.
func grantedScope(requested string, allowed []string) (string, bool) {
	if requested == "" {
		return strings.Join(allowed, " "), true
	}
	for _, s := range strings.Fields(requested) {
		if !slices.Contains(allowed, s) {
			return "", false
		}
	}
	return strings.Join(strings.Fields(requested), " "), true
}

type tokenResponse struct {
	AccessToken  string `json:"access_token"`
	TokenType    string `json:"token_type"`
	ExpiresIn    int64  `json:"expires_in"`
	RefreshToken string `json:"refresh_token,omitempty"`
	Scope        string `json:"scope,omitempty"`
}

// oauthToken is POST /oauth2/token.
func (s *Server) oauthToken(w http.ResponseWriter, r *http.Request, cfg *issuerConfig, th *throttler) {
	form, oerr := oauthForm(w, r)
	if oerr != nil {
		oerr.write(w, false)
		return
	}
	auth, oerr := authenticateClient(r, form, cfg)
	if oerr != nil {
		if oerr == errInvalidClient {
			loginFailures.WithLabelValues(cfg.label, "bad_client").Inc()
		}
		oerr.write(w, auth.basic)
		return
	}
	var out *issued
	switch gt := form.Get("grant_type"); gt {
	case grantPassword:
		out, oerr = s.passwordGrant(r, form, cfg, th, auth)
	case grantRefreshToken:
		out, oerr = s.refreshGrant(r, form, cfg, auth)
	case grantClientCredentials:
		out, oerr = s.clientCredentialsGrant(form, cfg, auth)
	case "":
		oerr = invalidRequest("grant_type is required")
	default:
		oerr = &oauthError{status: http.StatusBadRequest, code: "unsupported_grant_type", description: "supported: password, refresh_token, client_credentials"}
	}
	if oerr != nil {
		oerr.write(w, auth.basic)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Pragma", "no-cache")
	writeJSON(w, http.StatusOK, mustJSON(tokenResponse{AccessToken: out.access, TokenType: "Bearer",
		ExpiresIn: out.expiresIn, RefreshToken: out.refresh, Scope: out.scope}))
}

var errUnavailable = &oauthError{status: http.StatusServiceUnavailable, code: "temporarily_unavailable", description: "the issuer cannot serve this request right now"}

func (s *Server) passwordGrant(r *http.Request, form url.Values, cfg *issuerConfig, th *throttler, auth clientAuth) (*issued, *oauthError) {
	username, password := strings.TrimSpace(form.Get("username")), form.Get("password")
	if username == "" || password == "" {
		return nil, invalidRequest("username and password are required")
	}
	var clientID, scope string
	if auth.client != nil {
		clientID = auth.client.ID
		var ok bool
		if scope, ok = grantedScope(form.Get("scope"), auth.client.Scopes); !ok {
			return nil, &oauthError{status: http.StatusBadRequest, code: "invalid_scope", description: "scope exceeds the client's scopes"}
		}
	} else if form.Get("scope") != "" {
		return nil, &oauthError{status: http.StatusBadRequest, code: "invalid_scope", description: "scope needs an authenticated client"}
	}
	res := s.login(r.Context(), cfg, th, username, password, clientAddress(r))
	switch {
	case res.retryAfter > 0:
		return nil, &oauthError{status: http.StatusTooManyRequests, code: "temporarily_unavailable",
			description: "too many failed logins", retryAfter: res.retryAfter}
	case res.user == nil:
		return nil, &oauthError{status: http.StatusBadRequest, code: "invalid_grant", description: "invalid username or password"}
	}
	out, err := s.issueForLogin(r.Context(), cfg, res.user, clientID, scope, grantPassword)
	if err != nil {
		s.log.Error(err, "Cannot issue tokens", "issuer", cfg.label)
		return nil, errUnavailable
	}
	return out, nil
}

func (s *Server) refreshGrant(r *http.Request, form url.Values, cfg *issuerConfig, auth clientAuth) (*issued, *oauthError) {
	raw := form.Get("refresh_token")
	if raw == "" {
		return nil, invalidRequest("refresh_token is required")
	}
	invalidGrant := &oauthError{status: http.StatusBadRequest, code: "invalid_grant", description: "the refresh token is invalid, expired or revoked"}
	c, _, terr := s.checkToken(cfg, raw, token.TokenTypeRefresh)
	if terr != 0 {
		return nil, invalidGrant
	}
	// A token issued to a client is refreshed only by that client (RFC 6749 §6).
	if c.ClientID != "" && (auth.client == nil || auth.client.ID != c.ClientID) {
		return nil, invalidGrant
	}
	if sc := form.Get("scope"); sc != "" && strings.Join(strings.Fields(sc), " ") != c.Scope {
		return nil, &oauthError{status: http.StatusBadRequest, code: "invalid_scope", description: "a refresh cannot change the scope"}
	}
	out, err := s.issueForRefresh(r.Context(), cfg, c, grantRefreshToken)
	switch {
	case errors.Is(err, errSessionRevoked), errors.Is(err, errSessionInvalid):
		return nil, invalidGrant
	case err != nil:
		s.log.Error(err, "Cannot refresh", "issuer", cfg.label, "session", c.SessionID, "jti", c.ID)
		return nil, errUnavailable
	}
	return out, nil
}

func (s *Server) clientCredentialsGrant(form url.Values, cfg *issuerConfig, auth clientAuth) (*issued, *oauthError) {
	if auth.client == nil {
		return nil, errInvalidClient
	}
	scope, ok := grantedScope(form.Get("scope"), auth.client.Scopes)
	if !ok {
		return nil, &oauthError{status: http.StatusBadRequest, code: "invalid_scope", description: "scope exceeds the client's scopes"}
	}
	aud := auth.client.Audiences
	c := s.accessClaims(cfg, nil, auth.client.ID, "", auth.client.ID, scope, aud, time.Time{})
	access, err := s.sign(cfg, token.TypeAccess, c)
	if err != nil {
		s.log.Error(err, "Cannot sign access token", "issuer", cfg.label)
		return nil, errUnavailable
	}
	tokensIssued.WithLabelValues(cfg.label, grantClientCredentials, token.TokenTypeAccess).Inc()
	return &issued{access: access, expiresIn: int64(c.ExpiresAt.Sub(c.IssuedAt).Seconds()), scope: scope}, nil
}

// oauthRevoke is POST /oauth2/revoke (RFC 7009). Revoking a refresh token, or an access token
// with a sid, revokes the whole session. Unknown, invalid and expired tokens get 200 too.
func (s *Server) oauthRevoke(w http.ResponseWriter, r *http.Request, cfg *issuerConfig, _ *throttler) {
	form, oerr := oauthForm(w, r)
	if oerr != nil {
		oerr.write(w, false)
		return
	}
	auth, oerr := authenticateClient(r, form, cfg)
	if oerr != nil {
		oerr.write(w, auth.basic)
		return
	}
	raw := form.Get("token")
	if raw == "" {
		invalidRequest("token is required").write(w, auth.basic)
		return
	}
	ok := func() {
		w.Header().Set("Cache-Control", "no-store")
		writeJSON(w, http.StatusOK, bodyEmpty)
	}
	c, typ, terr := s.checkToken(cfg, raw, "")
	if terr != 0 {
		ok()
		return
	}
	// A token issued to a client is revoked only by that client.
	if c.ClientID != "" && (auth.client == nil || auth.client.ID != c.ClientID) {
		ok()
		return
	}
	var err error
	switch {
	case typ == token.TokenTypeRefresh:
		err = s.sessions.logout(r.Context(), cfg, c, s.clock.Now())
	case c.SessionID != "":
		err = s.sessions.revokeByID(r.Context(), cfg, c.SessionID, keywardv1.SessionRevokedLogout, s.clock.Now())
	default:
		(&oauthError{status: http.StatusBadRequest, code: "unsupported_token_type", description: "client_credentials access tokens cannot be revoked; they expire"}).write(w, auth.basic)
		return
	}
	if err != nil && !errors.Is(err, errSessionRevoked) && !errors.Is(err, errSessionInvalid) {
		s.log.Error(err, "Cannot revoke session", "issuer", cfg.label, "session", c.SessionID)
		errUnavailable.write(w, auth.basic)
		return
	}
	ok()
}

type introspection struct {
	Active    bool     `json:"active"`
	Scope     string   `json:"scope,omitempty"`
	ClientID  string   `json:"client_id,omitempty"`
	Username  string   `json:"username,omitempty"`
	TokenType string   `json:"token_type,omitempty"`
	Exp       int64    `json:"exp,omitempty"`
	Iat       int64    `json:"iat,omitempty"`
	Sub       string   `json:"sub,omitempty"`
	Aud       []string `json:"aud,omitempty"`
	Iss       string   `json:"iss,omitempty"`
	Jti       string   `json:"jti,omitempty"`
	Sid       string   `json:"sid,omitempty"`
}

// oauthIntrospect is POST /oauth2/introspect (RFC 7662), for authenticated clients. Revoked,
// expired, superseded and foreign tokens are {"active":false}.
func (s *Server) oauthIntrospect(w http.ResponseWriter, r *http.Request, cfg *issuerConfig, _ *throttler) {
	form, oerr := oauthForm(w, r)
	if oerr != nil {
		oerr.write(w, false)
		return
	}
	auth, oerr := authenticateClient(r, form, cfg)
	if oerr == nil && auth.client == nil {
		oerr = errInvalidClient
	}
	if oerr != nil {
		oerr.write(w, auth.basic)
		return
	}
	raw := form.Get("token")
	if raw == "" {
		invalidRequest("token is required").write(w, auth.basic)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	inactive := func() { writeJSON(w, http.StatusOK, []byte(`{"active":false}`)) }
	c, typ, terr := s.checkToken(cfg, raw, "")
	if terr != 0 {
		inactive()
		return
	}
	out := introspection{Active: true, Scope: c.Scope, ClientID: c.ClientID, Exp: c.ExpiresAt.Unix(), Iat: c.IssuedAt.Unix(),
		Sub: c.Subject, Aud: c.Audience, Iss: c.Issuer, Jti: c.ID, Sid: c.SessionID}
	if typ == token.TokenTypeAccess {
		if s.accessRevoked(cfg, c) {
			inactive()
			return
		}
		out.TokenType = "access_token"
	} else {
		active, err := s.sessions.refreshActive(r.Context(), cfg, c, s.clock.Now())
		if err != nil {
			s.log.Error(err, "Cannot read session", "issuer", cfg.label, "session", c.SessionID)
			errUnavailable.write(w, auth.basic)
			return
		}
		if !active {
			inactive()
			return
		}
		out.TokenType = "refresh_token"
	}
	if c.SessionID != "" {
		out.Username = c.Subject
	}
	writeJSON(w, http.StatusOK, mustJSON(out))
}

// discovery serves both /.well-known/openid-configuration and
// /.well-known/oauth-authorization-server: endpoints are relative to the effective iss.
func (s *Server) discovery(w http.ResponseWriter, _ *http.Request, cfg *issuerConfig, _ *throttler) {
	algs := []string{}
	if cfg.signer != nil {
		algs = append(algs, string(cfg.signer.Algorithm()))
	}
	doc := struct {
		Issuer                            string   `json:"issuer"`
		TokenEndpoint                     string   `json:"token_endpoint"`
		JWKSURI                           string   `json:"jwks_uri"`
		RevocationEndpoint                string   `json:"revocation_endpoint"`
		IntrospectionEndpoint             string   `json:"introspection_endpoint"`
		GrantTypesSupported               []string `json:"grant_types_supported"`
		ResponseTypesSupported            []string `json:"response_types_supported"`
		SubjectTypesSupported             []string `json:"subject_types_supported"`
		IDTokenSigningAlgValuesSupported  []string `json:"id_token_signing_alg_values_supported"`
		TokenEndpointAuthMethodsSupported []string `json:"token_endpoint_auth_methods_supported"`
		RevocationAuthMethodsSupported    []string `json:"revocation_endpoint_auth_methods_supported"`
		IntrospectionAuthMethodsSupported []string `json:"introspection_endpoint_auth_methods_supported"`
		ClaimsSupported                   []string `json:"claims_supported"`
	}{
		Issuer:                            cfg.iss,
		TokenEndpoint:                     keywardv1.EndpointsFor(cfg.iss).OAuth2Token,
		JWKSURI:                           keywardv1.EndpointsFor(cfg.iss).JWKS,
		RevocationEndpoint:                cfg.iss + "/oauth2/revoke",
		IntrospectionEndpoint:             cfg.iss + "/oauth2/introspect",
		GrantTypesSupported:               []string{grantPassword, grantRefreshToken, grantClientCredentials},
		ResponseTypesSupported:            []string{"token"},
		SubjectTypesSupported:             []string{"public"},
		IDTokenSigningAlgValuesSupported:  algs,
		TokenEndpointAuthMethodsSupported: []string{"client_secret_basic", "client_secret_post"},
		RevocationAuthMethodsSupported:    []string{"client_secret_basic", "client_secret_post", "none"},
		IntrospectionAuthMethodsSupported: []string{"client_secret_basic", "client_secret_post"},
		ClaimsSupported:                   []string{"iss", "sub", "aud", "exp", "iat", "jti", "sid", "client_id", "scope", "token_type", "groups", "email"},
	}
	w.Header().Set("Cache-Control", "public, max-age=300")
	writeJSON(w, http.StatusOK, mustJSON(doc))
}

// jwks serves the public keys of the SigningKey (Pending, Active and Retired), cacheable for
// at most half the prepublish time, so that a consumer learns a Pending key before it signs.
func (s *Server) jwks(w http.ResponseWriter, _ *http.Request, cfg *issuerConfig, _ *throttler) {
	if cfg.jwks == nil {
		w.Header().Set("Retry-After", "5")
		writeJSON(w, http.StatusServiceUnavailable, oauthErrorBody("temporarily_unavailable", "the issuer has no key set yet"))
		return
	}
	w.Header().Set("Cache-Control", "public, max-age="+strconv.Itoa(max(1, int(cfg.jwksMaxAge.Seconds()))))
	w.Header().Set("Content-Type", "application/jwk-set+json")
	w.Header().Set("Content-Length", strconv.Itoa(len(cfg.jwks)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(cfg.jwks)
}
