package validator

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/go-logr/logr"
)

// AuthzPathPrefix is the path prefix of the HTTP forward-auth endpoint. Envoy's HTTP mode
// appends the original path to it.
const AuthzPathPrefix = "/authz"

// Forwarded headers read from trusted proxies only.
const (
	hdrOriginalURI    = "X-Original-Uri"    // nginx auth_request (proxy_set_header X-Original-URI $request_uri)
	hdrOriginalURL    = "X-Original-Url"    // ingress-nginx auth-url
	hdrOriginalMethod = "X-Original-Method" // nginx, ingress-nginx
	hdrForwardedURI   = "X-Forwarded-Uri"   // Traefik ForwardAuth
	hdrForwardedHost  = "X-Forwarded-Host"  // Traefik, ingress-nginx, nginx snippets
	hdrForwardedMeth  = "X-Forwarded-Method"
)

// httpHandler is the HTTP forward-auth front end: it translates the proxy's request into a
// Request and the Decision into a response, nothing more.
type httpHandler struct {
	checker *Checker
	trusted []netip.Prefix
	log     logr.Logger
}

func (h *httpHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	req := requestFromHTTP(r, h.isTrusted(r.RemoteAddr))
	d := h.checker.Check(r.Context(), req)
	writeDecision(w, &d)
}

func (h *httpHandler) isTrusted(remoteAddr string) bool {
	ap, err := netip.ParseAddrPort(remoteAddr)
	if err != nil {
		return false
	}
	ip := ap.Addr().Unmap()
	for _, p := range h.trusted {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// requestFromHTTP reads the original request. From a trusted proxy it reads, in addition to
// the path after /authz (Envoy), Host and method: X-Original-URI, X-Original-URL,
// X-Forwarded-Uri, X-Original-Method, X-Forwarded-Method and X-Forwarded-Host. Every source
// present must agree (a client could otherwise add one the proxy does not overwrite); a
// header sent twice is a conflict too. From any other caller it reads only the path after
// /authz, Host and the request's own method.
func requestFromHTTP(r *http.Request, trusted bool) Request {
	req := Request{Protocol: ProtocolHTTP, Authorization: r.Header.Values("Authorization")}
	var conflict bool
	pick := func(cur *string, v string) {
		if v == "" {
			return
		}
		if *cur != "" && *cur != v {
			conflict = true
			return
		}
		*cur = v
	}
	one := func(name string) string {
		vs := r.Header[name]
		if len(vs) > 1 {
			conflict = true
		}
		if len(vs) == 0 {
			return ""
		}
		return vs[0]
	}

	// The raw path after the prefix: Envoy's HTTP mode sends /authz/<original path>.
	rawPath := r.URL.EscapedPath()
	if q := r.URL.RawQuery; q != "" {
		rawPath += "?" + q
	}
	if suffix, ok := strings.CutPrefix(rawPath, AuthzPathPrefix); ok && strings.HasPrefix(suffix, "/") {
		req.Path = suffix
	}
	if trusted {
		pick(&req.Path, one(hdrOriginalURI))
		if u := one(hdrOriginalURL); u != "" {
			host, target, ok := splitURL(u)
			if !ok {
				return Request{Protocol: ProtocolHTTP, Invalid: ReasonConflicting}
			}
			pick(&req.Host, host)
			pick(&req.Path, target)
		}
		pick(&req.Path, one(hdrForwardedURI))
		pick(&req.Method, one(hdrOriginalMethod))
		pick(&req.Method, one(hdrForwardedMeth))
		pick(&req.Host, one(hdrForwardedHost))
	}
	if req.Host == "" {
		req.Host = r.Host
	}
	if req.Method == "" {
		req.Method = r.Method
	}
	if conflict {
		req.Invalid = ReasonConflicting
	}
	return req
}

// splitURL splits an absolute URL into its host and its raw request target, keeping the
// target's bytes as sent (no re-encoding).
func splitURL(u string) (host, target string, ok bool) {
	_, rest, found := strings.Cut(u, "://")
	if !found {
		return "", "", false
	}
	host, target = rest, "/"
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		host, target = rest[:i], rest[i:]
		if !strings.HasPrefix(target, "/") {
			target = "/" + target
		}
	}
	if host == "" || strings.Contains(host, "@") {
		return "", "", false
	}
	return host, target, true
}

var (
	wwwInvalidToken      = []string{`Bearer error="invalid_token"`}
	wwwInsufficientScope = []string{`Bearer error="insufficient_scope"`}
	noStore              = []string{"no-store"}
	// emptyValue is shared: net/http only reads header values.
	emptyValue = []string{""}
)

// writeDecision writes the answer. On an allow, every header the validator owns is present:
// with the claim's value, or empty, so that a proxy copying it overwrites any inbound copy.
// A deny carries nothing but the status and WWW-Authenticate.
func writeDecision(w http.ResponseWriter, d *Decision) {
	hdr := w.Header()
	hdr["Cache-Control"] = noStore
	switch d.Status {
	case http.StatusOK:
		for _, name := range d.Remove {
			hdr[name] = emptyValue
		}
		for _, h := range d.Headers {
			hdr[h.Name] = []string{h.Value}
		}
		w.WriteHeader(http.StatusOK)
	case http.StatusForbidden:
		hdr["Www-Authenticate"] = wwwInsufficientScope
		w.WriteHeader(http.StatusForbidden)
	default:
		hdr["Www-Authenticate"] = wwwInvalidToken
		w.WriteHeader(http.StatusUnauthorized)
	}
}

// httpServer serves the handler as a manager runnable on every replica.
type httpServer struct {
	addr    string
	handler http.Handler
	log     logr.Logger
	// ready, if set, receives the bound address once listening (tests bind ":0").
	ready func(net.Addr)
	// wrap, if set, wraps the listener (TLS).
	wrap func(net.Listener) net.Listener
}

func (s *httpServer) NeedLeaderElection() bool { return false }

func (s *httpServer) Start(ctx context.Context) error {
	mux := http.NewServeMux()
	mux.Handle(AuthzPathPrefix, s.handler)
	mux.Handle(AuthzPathPrefix+"/", s.handler)
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          nil,
	}
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		return fmt.Errorf("cannot listen on %s: %w", s.addr, err)
	}
	if s.wrap != nil {
		ln = s.wrap(ln)
	}
	if s.ready != nil {
		s.ready(ln.Addr())
	}
	s.log.Info("Serving HTTP forward auth", "address", ln.Addr().String(), "path", AuthzPathPrefix)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("HTTP forward auth server failed: %w", err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("cannot shut down HTTP forward auth server: %w", err)
	}
	return nil
}
