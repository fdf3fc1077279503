package testsupport

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
)

// OIDCState is what an OIDCServer serves; tests change it with Set.
type OIDCState struct {
	// JWKS is served at /keys.
	JWKS []byte
	// Fail makes every request answer 500.
	Fail bool
	// Issuer is the discovery document's issuer; the server URL when empty.
	Issuer string
	// JWKSCalls counts the requests for /keys.
	JWKSCalls int
}

// OIDCServer is a loopback OIDC issuer: a discovery document at
// /.well-known/openid-configuration naming /keys as jwks_uri, and the JWKS there.
type OIDCServer struct {
	*httptest.Server
	mu    sync.Mutex
	state OIDCState
}

// NewOIDCServer starts an OIDCServer on 127.0.0.1, closed when the test ends.
func NewOIDCServer(t testing.TB) *OIDCServer {
	s := &OIDCServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.state.Fail {
			http.Error(w, "down", http.StatusInternalServerError)
			return
		}
		switch r.URL.Path {
		case "/.well-known/openid-configuration":
			iss := s.state.Issuer
			if iss == "" {
				iss = s.URL
			}
			_ = json.NewEncoder(w).Encode(map[string]string{"issuer": iss, "jwks_uri": s.URL + "/keys"})
		case "/keys":
			s.state.JWKSCalls++
			_, _ = w.Write(s.state.JWKS)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(s.Close)
	return s
}

// Set changes what the server serves (or reads it), under its lock.
func (s *OIDCServer) Set(f func(*OIDCState)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(&s.state)
}
