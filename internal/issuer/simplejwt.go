package issuer

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/keyward/keyward/internal/token"
)

// simplejwt-compatible endpoints: the bodies, status codes and headers of
// djangorestframework-simplejwt 5.2.2 behind Django REST framework (see hack/simplejwt and
// the compatibility test).

const wwwAuthenticateAPI = `Bearer realm="api"`

var (
	bodyNoAccount   = []byte(`{"detail":"No active account found with the given credentials"}`)
	bodyInvalid     = []byte(`{"detail":"Token is invalid or expired","code":"token_not_valid"}`)
	bodyWrongType   = []byte(`{"detail":"Token has wrong type","code":"token_not_valid"}`)
	bodyBlacklisted = []byte(`{"detail":"Token is blacklisted","code":"token_not_valid"}`)
	bodyEmpty       = []byte(`{}`)
	bodyUnavailable = []byte(`{"detail":"The issuer cannot serve this request right now."}`)
)

func writeDRF(w http.ResponseWriter, e *drfError) {
	writeJSON(w, e.status, e.body)
}

// drfCharFields parses a simplejwt request body and reads the named required string fields,
// answering the request with DRF's error (and returning false) when it cannot.
func drfCharFields(w http.ResponseWriter, r *http.Request, names ...string) ([]string, bool) {
	fields, perr := parseDRF(w, r)
	if perr == nil {
		var vals []string
		if vals, perr = charFields(fields, names...); perr == nil {
			return vals, true
		}
	}
	writeDRF(w, perr)
	return nil, false
}

// unauthorized answers 401 with simplejwt's WWW-Authenticate.
func unauthorized(w http.ResponseWriter, body []byte) {
	w.Header().Set("WWW-Authenticate", wwwAuthenticateAPI)
	writeJSON(w, http.StatusUnauthorized, body)
}

func throttled(w http.ResponseWriter, retryAfter int) {
	w.Header().Set("Retry-After", strconv.Itoa(retryAfter))
	writeJSON(w, http.StatusTooManyRequests, mustJSON(map[string]string{
		"detail": fmt.Sprintf("Request was throttled. Expected available in %d seconds.", retryAfter)}))
}

func tokenRefused(w http.ResponseWriter, e tokenError) {
	if e == tokenWrongType {
		unauthorized(w, bodyWrongType)
		return
	}
	unauthorized(w, bodyInvalid)
}

// obtain is POST /api/token/: {"username","password"} -> {"refresh","access"}.
func (s *Server) obtain(w http.ResponseWriter, r *http.Request, cfg *issuerConfig, th *throttler) {
	vals, ok := drfCharFields(w, r, "username", "password")
	if !ok {
		return
	}
	res := s.login(r.Context(), cfg, th, vals[0], vals[1], clientAddress(r))
	switch {
	case res.retryAfter > 0:
		throttled(w, res.retryAfter)
		return
	case res.user == nil:
		unauthorized(w, bodyNoAccount)
		return
	}
	out, err := s.issueForLogin(r.Context(), cfg, res.user, "", "", grantPassword)
	if err != nil {
		s.log.Error(err, "Cannot issue tokens", "issuer", cfg.label)
		writeJSON(w, http.StatusServiceUnavailable, bodyUnavailable)
		return
	}
	writeJSON(w, http.StatusOK, mustJSON(struct {
		Refresh string `json:"refresh"`
		Access  string `json:"access"`
	}{out.refresh, out.access}))
}

// refresh is POST /api/token/refresh/: {"refresh"} -> {"access","refresh"} (refresh only with
// rotation on).
func (s *Server) refresh(w http.ResponseWriter, r *http.Request, cfg *issuerConfig, _ *throttler) {
	vals, ok := drfCharFields(w, r, "refresh")
	if !ok {
		return
	}
	c, _, terr := s.checkToken(cfg, vals[0], token.TokenTypeRefresh)
	if terr != 0 {
		tokenRefused(w, terr)
		return
	}
	out, err := s.issueForRefresh(r.Context(), cfg, c, grantRefreshToken)
	switch {
	case errors.Is(err, errSessionRevoked):
		unauthorized(w, bodyBlacklisted)
		return
	case errors.Is(err, errSessionInvalid):
		unauthorized(w, bodyInvalid)
		return
	case err != nil:
		s.log.Error(err, "Cannot refresh", "issuer", cfg.label, "session", c.SessionID, "jti", c.ID)
		writeJSON(w, http.StatusServiceUnavailable, bodyUnavailable)
		return
	}
	if out.refresh == "" {
		writeJSON(w, http.StatusOK, mustJSON(struct {
			Access string `json:"access"`
		}{out.access}))
		return
	}
	writeJSON(w, http.StatusOK, mustJSON(struct {
		Access  string `json:"access"`
		Refresh string `json:"refresh"`
	}{out.access, out.refresh}))
}

// verify is POST /api/token/verify/: {"token"} -> {} for a valid access or refresh token. Unlike
// simplejwt, an access token of a revoked session is not valid (401); a refresh token is valid
// only while it can still be used (simplejwt's 400 "Token is blacklisted" otherwise).
func (s *Server) verify(w http.ResponseWriter, r *http.Request, cfg *issuerConfig, _ *throttler) {
	vals, ok := drfCharFields(w, r, "token")
	if !ok {
		return
	}
	c, typ, terr := s.checkToken(cfg, vals[0], "")
	if terr != 0 {
		tokenRefused(w, terr)
		return
	}
	if typ == token.TokenTypeAccess {
		if s.accessRevoked(cfg, c) {
			unauthorized(w, bodyInvalid)
			return
		}
		writeJSON(w, http.StatusOK, bodyEmpty)
		return
	}
	active, err := s.sessions.refreshActive(r.Context(), cfg, c, s.clock.Now())
	if err != nil {
		s.log.Error(err, "Cannot read session", "issuer", cfg.label, "session", c.SessionID)
		writeJSON(w, http.StatusServiceUnavailable, bodyUnavailable)
		return
	}
	if !active {
		writeDRF(w, fieldErrors([]fieldError{{"non_field_errors", "Token is blacklisted"}}))
		return
	}
	writeJSON(w, http.StatusOK, bodyEmpty)
}

// blacklist is POST /api/token/blacklist/: {"refresh"} -> {}; it revokes the token's session.
func (s *Server) blacklist(w http.ResponseWriter, r *http.Request, cfg *issuerConfig, _ *throttler) {
	vals, ok := drfCharFields(w, r, "refresh")
	if !ok {
		return
	}
	c, _, terr := s.checkToken(cfg, vals[0], token.TokenTypeRefresh)
	if terr != 0 {
		tokenRefused(w, terr)
		return
	}
	err := s.sessions.logout(r.Context(), cfg, c, s.clock.Now())
	switch {
	case errors.Is(err, errSessionRevoked):
		unauthorized(w, bodyBlacklisted)
	case errors.Is(err, errSessionInvalid):
		unauthorized(w, bodyInvalid)
	case err != nil:
		s.log.Error(err, "Cannot revoke session", "issuer", cfg.label, "session", c.SessionID)
		writeJSON(w, http.StatusServiceUnavailable, bodyUnavailable)
	default:
		writeJSON(w, http.StatusOK, bodyEmpty)
	}
}
