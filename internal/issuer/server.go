package issuer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
)

// Server is the issuer's HTTP server, a manager runnable that serves on every replica.
type Server struct {
	// ready reports whether every TokenIssuer has a snapshot; the server listens only then.
	ready    func(context.Context) error
	registry *Registry
	sessions *sessionStore
	hashSem  chan struct{}
	clock    clock.PassiveClock
	addr     string
	listener net.Listener
	log      logr.Logger
	shutdown time.Duration
}

// NeedLeaderElection is false: every replica serves tokens.
func (s *Server) NeedLeaderElection() bool { return false }

// Start serves until ctx is cancelled, then shuts down gracefully.
func (s *Server) Start(ctx context.Context) error {
	// A replica that is starting does not answer until it knows every TokenIssuer: a load
	// balancer sees a refused connection (or a failing /readyz) instead of 404s.
	for s.ready != nil && s.ready(ctx) != nil {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(50 * time.Millisecond):
		}
	}
	ln := s.listener
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", s.addr); err != nil {
			return fmt.Errorf("cannot listen on %s: %w", s.addr, err)
		}
	}
	srv := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    16 << 10,
		// Requests in flight at shutdown finish with a live context (their Session writes
		// must not fail half-way); Shutdown waits for them.
		BaseContext: func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	s.log.Info("Serving the issuer", "address", ln.Addr().String())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("issuer server stopped: %w", err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), s.shutdown)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("cannot shut down the issuer server: %w", err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// endpoint is one route under an issuer's base path.
type endpoint struct {
	path    string
	methods string // Allow header value
	handle  func(w http.ResponseWriter, r *http.Request, cfg *issuerConfig, th *throttler)
	drf     bool // a simplejwt endpoint: DRF's error shapes
	// needsReady refuses the request with 503 while the issuer cannot sign.
	needsReady bool
}

// Handler returns the issuer's routes on a mux of its own.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	endpoints := []endpoint{
		{"/api/token/", "POST, OPTIONS", s.obtain, true, true},
		{"/api/token/refresh/", "POST, OPTIONS", s.refresh, true, true},
		{"/api/token/verify/", "POST, OPTIONS", s.verify, true, false},
		{"/api/token/blacklist/", "POST, OPTIONS", s.blacklist, true, false},
		{"/oauth2/token", "POST", s.oauthToken, false, true},
		{"/oauth2/revoke", "POST", s.oauthRevoke, false, false},
		{"/oauth2/introspect", "POST", s.oauthIntrospect, false, false},
		{"/.well-known/openid-configuration", "GET, HEAD", s.discovery, false, false},
		{"/.well-known/oauth-authorization-server", "GET, HEAD", s.discovery, false, false},
		{"/.well-known/jwks.json", "GET, HEAD", s.jwks, false, false},
	}
	for _, e := range endpoints {
		pattern := "/{namespace}/{name}" + e.path
		if strings.HasSuffix(pattern, "/") {
			pattern += "{$}" // exactly this path, not the subtree
		}
		mux.Handle(pattern, s.route(e))
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, []byte(`{"detail":"Not found."}`))
	})
	return mux
}

// route resolves the TokenIssuer of the path, checks the method and calls the endpoint.
func (s *Server) route(e endpoint) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Content-Type-Options", "nosniff")
		key := types.NamespacedName{Namespace: r.PathValue("namespace"), Name: r.PathValue("name")}
		cfg, th := s.registry.get(key)
		if cfg == nil {
			writeJSON(w, http.StatusNotFound, []byte(`{"detail":"Not found."}`))
			return
		}
		if e.drf {
			w.Header().Set("Allow", e.methods)
			w.Header().Set("Vary", "Accept")
		}
		switch {
		case r.Method == http.MethodPost && e.methods[0] == 'P':
		case (r.Method == http.MethodGet || r.Method == http.MethodHead) && e.methods[0] == 'G':
		case r.Method == http.MethodOptions && e.drf:
			writeJSON(w, http.StatusOK, []byte(`{"name":"keyward","renders":["application/json"],"parses":["application/json","application/x-www-form-urlencoded","multipart/form-data"]}`))
			return
		default:
			w.Header().Set("Allow", e.methods)
			if e.drf {
				writeJSON(w, http.StatusMethodNotAllowed, mustJSON(map[string]string{"detail": fmt.Sprintf("Method %q not allowed.", r.Method)}))
			} else {
				writeJSON(w, http.StatusMethodNotAllowed, oauthErrorBody("invalid_request", "method not allowed"))
			}
			return
		}
		if e.needsReady && cfg.notReady != "" {
			w.Header().Set("Retry-After", "5")
			if e.drf {
				writeJSON(w, http.StatusServiceUnavailable, []byte(`{"detail":"The issuer is not ready."}`))
			} else {
				writeJSON(w, http.StatusServiceUnavailable, oauthErrorBody("temporarily_unavailable", "the issuer is not ready"))
			}
			return
		}
		e.handle(w, r, cfg, th)
	})
}

func writeJSON(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body) //nolint:gosec // G705: JSON, served as application/json with nosniff
}

// clientAddress is the TCP peer's IP address, the key of per-address throttling. Forwarded
// headers are not trusted: anyone can set them.
func clientAddress(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}
