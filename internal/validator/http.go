package validator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"github.com/valyala/fasthttp"
)

// AuthzPathPrefix is the path prefix of the HTTP forward-auth endpoint. Envoy's HTTP mode
// appends the original path to it.
const AuthzPathPrefix = "/authz"

var authzPrefix = []byte(AuthzPathPrefix)

// Forwarded headers read from trusted proxies only.
const (
	hdrOriginalURI    = "X-Original-Uri"    // nginx auth_request (proxy_set_header X-Original-URI $request_uri)
	hdrOriginalURL    = "X-Original-Url"    // ingress-nginx auth-url
	hdrOriginalMethod = "X-Original-Method" // nginx, ingress-nginx
	hdrForwardedURI   = "X-Forwarded-Uri"   // Traefik ForwardAuth
	hdrForwardedHost  = "X-Forwarded-Host"  // Traefik, ingress-nginx, nginx snippets
	hdrForwardedMeth  = "X-Forwarded-Method"
)

// Limits of the HTTP server (the net/http values it had before it moved to fasthttp).
const (
	// httpMaxHeaderBytes caps the request line and header fields: nginx passes the client's
	// headers on (cookies included, up to its large_client_header_buffers of 4 x 8k).
	// fasthttp reads a request's header within one buffer of this size per connection and
	// answers 431 beyond it.
	httpMaxHeaderBytes = 64 << 10
	// httpMaxBodyBytes caps a request body, which the validator never reads (nginx sends none;
	// Envoy may with with_request_body): fasthttp reads it before the handler runs and answers
	// 413 beyond it. The gRPC front end takes messages up to the same size.
	httpMaxBodyBytes = 1 << 20
	httpReadTimeout  = 10 * time.Second
	httpWriteTimeout = 10 * time.Second
	httpIdleTimeout  = 2 * time.Minute
	httpShutdownWait = 10 * time.Second
)

// httpHandler is the HTTP forward-auth front end: it translates the proxy's request into a
// Request and the Decision into a response, nothing more. It answers every method on
// /authz and every path under /authz/, and 404 elsewhere.
type httpHandler struct {
	checker *Checker
	trusted []netip.Prefix
	log     logr.Logger
}

func (h *httpHandler) serve(ctx *fasthttp.RequestCtx) {
	defer func() {
		// fasthttp does not recover a handler's panic: the process would die. The core
		// recovers its own; this covers the translation, and denies.
		if p := recover(); p != nil {
			h.log.Error(nil, "Panic in the HTTP front end", "panic", p)
			ctx.Response.Reset()
			writeDecision(&ctx.Response, &Decision{Status: http.StatusUnauthorized})
		}
	}()
	req, ok := requestFromHTTP(&ctx.Request.Header, h.isTrusted(peerAddr(ctx.RemoteAddr())))
	if !ok {
		ctx.SetStatusCode(http.StatusNotFound)
		return
	}
	// Not ctx: fasthttp cancels every request's context when the server shuts down, which
	// would turn the checks in flight during a graceful shutdown into denies. A check never
	// blocks for long (an unknown kid of an external issuer waits at most unknownKIDWait).
	d := h.checker.Check(context.Background(), req)
	writeDecision(&ctx.Response, &d)
}

// peerAddr is the address of a TCP peer; the zero Addr otherwise.
func peerAddr(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort().Addr()
	}
	return netip.Addr{}
}

func (h *httpHandler) isTrusted(ip netip.Addr) bool {
	if !ip.IsValid() {
		return false
	}
	ip = ip.Unmap()
	for _, p := range h.trusted {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// requestFromHTTP reads the original request from the request line and header fields of
// the proxy's request (the body is never looked at). ok is false when the request target is
// not /authz or under /authz/.
//
// From a trusted proxy it reads, in addition to the path after /authz (Envoy), Host and
// method: X-Original-URI, X-Original-URL, X-Forwarded-Uri, X-Original-Method,
// X-Forwarded-Method and X-Forwarded-Host. Every source present must agree (a client could
// otherwise add one the proxy does not overwrite); a header sent twice is a conflict too.
// From any other caller it reads only the path after /authz, Host and the request's own
// method. Paths keep their bytes as sent (no decoding or re-encoding); the core normalizes.
func requestFromHTTP(h *fasthttp.RequestHeader, trusted bool) (req Request, ok bool) {
	target, host := h.RequestURI(), ""
	if len(target) == 0 || target[0] != '/' {
		// The absolute form (GET http://host/authz/... HTTP/1.1), whose host wins over the
		// Host header (RFC 9112, section 3.2.2).
		var t string
		if host, t, ok = splitURL(string(target)); !ok {
			return Request{}, false
		}
		target = []byte(t)
	}
	suffix, found := bytes.CutPrefix(target, authzPrefix)
	if !found || len(suffix) > 0 && suffix[0] != '/' && suffix[0] != '?' {
		return Request{}, false
	}
	req = Request{Protocol: ProtocolHTTP}
	if auth := h.PeekAll("Authorization"); len(auth) > 0 {
		req.Authorization = make([]string, len(auth))
		for i, v := range auth {
			req.Authorization[i] = string(v)
		}
	}
	// The raw path after the prefix: Envoy's HTTP mode sends /authz/<original path>.
	if len(suffix) > 0 && suffix[0] == '/' {
		req.Path = string(suffix)
	}
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
	one := func(name string) []byte {
		vs := h.PeekAll(name) // valid until the next PeekAll: copied by the caller
		if len(vs) > 1 {
			conflict = true
		}
		if len(vs) == 0 {
			return nil
		}
		return vs[0]
	}
	if trusted {
		pick(&req.Path, string(one(hdrOriginalURI)))
		if u := one(hdrOriginalURL); len(u) > 0 {
			host, target, ok := splitURL(string(u))
			if !ok {
				return Request{Protocol: ProtocolHTTP, Invalid: ReasonConflicting}, true
			}
			pick(&req.Host, host)
			pick(&req.Path, target)
		}
		pick(&req.Path, string(one(hdrForwardedURI)))
		pick(&req.Method, methodString(one(hdrOriginalMethod)))
		pick(&req.Method, methodString(one(hdrForwardedMeth)))
		pick(&req.Host, string(one(hdrForwardedHost)))
	}
	if req.Host == "" {
		req.Host = host
	}
	if req.Host == "" {
		req.Host = string(h.Host())
	}
	if req.Method == "" {
		req.Method = methodString(h.Method())
	}
	if conflict {
		req.Invalid = ReasonConflicting
	}
	return req, true
}

// methodString returns the method as a string, without allocating for the usual ones.
func methodString(m []byte) string {
	switch string(m) {
	case "":
		return ""
	case http.MethodGet:
		return http.MethodGet
	case http.MethodHead:
		return http.MethodHead
	case http.MethodPost:
		return http.MethodPost
	case http.MethodPut:
		return http.MethodPut
	case http.MethodPatch:
		return http.MethodPatch
	case http.MethodDelete:
		return http.MethodDelete
	case http.MethodOptions:
		return http.MethodOptions
	}
	return string(m)
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

// Response header names and values.
const (
	hdrCacheControl      = "Cache-Control"
	hdrWWWAuthenticate   = "Www-Authenticate"
	noStore              = "no-store"
	wwwInvalidToken      = `Bearer error="invalid_token"`
	wwwInsufficientScope = `Bearer error="insufficient_scope"`
)

// writeDecision writes the answer. On an allow, every header the validator owns is present:
// with the claim's value, or empty, so that a proxy copying it overwrites any inbound copy.
// A deny carries nothing but the status, Cache-Control and WWW-Authenticate.
func writeDecision(resp *fasthttp.Response, d *Decision) {
	hdr := &resp.Header
	hdr.Set(hdrCacheControl, noStore)
	switch d.Status {
	case http.StatusOK:
		for _, h := range d.Headers {
			hdr.Set(h.Name, h.Value)
		}
	owned:
		for _, name := range d.Remove {
			for _, h := range d.Headers {
				if h.Name == name {
					continue owned
				}
			}
			hdr.Set(name, "")
		}
		resp.SetStatusCode(http.StatusOK)
	case http.StatusForbidden:
		hdr.Set(hdrWWWAuthenticate, wwwInsufficientScope)
		resp.SetStatusCode(http.StatusForbidden)
	default:
		hdr.Set(hdrWWWAuthenticate, wwwInvalidToken)
		resp.SetStatusCode(http.StatusUnauthorized)
	}
}

// httpServer serves the handler as a manager runnable on every replica.
type httpServer struct {
	addr    string
	handler *httpHandler
	log     logr.Logger
	// ready, if set, receives the bound address once listening (tests bind ":0").
	ready func(net.Addr)
	// wrap, if set, wraps the listener (TLS).
	wrap func(net.Listener) net.Listener
	// waitFor, if set, delays listening until it is closed (the validator's state synced).
	waitFor <-chan struct{}
	// transport is HTTPTransportKeyward (the default when empty) or HTTPTransportFastHTTP,
	// which a TLS listener (wrap set) always gets.
	transport string
	// eventLoops is the number of event loops of HTTPTransportKeyward;
	// DefaultHTTPEventLoops when zero.
	eventLoops int
}

func (s *httpServer) NeedLeaderElection() bool { return false }

// newFastHTTPServer is the HTTP server of the forward-auth front end.
func newFastHTTPServer(h *httpHandler, log logr.Logger) *fasthttp.Server {
	return &fasthttp.Server{
		Handler:            h.serve,
		ReadBufferSize:     httpMaxHeaderBytes,
		MaxRequestBodySize: httpMaxBodyBytes,
		// A body is never looked at: no multipart parsing (into temporary files).
		DisablePreParseMultipartForm: true,
		ReadTimeout:                  httpReadTimeout,
		WriteTimeout:                 httpWriteTimeout,
		IdleTimeout:                  httpIdleTimeout,
		// Responses carry what net/http's did: Date, Content-Length and our headers; no
		// Server or default Content-Type.
		NoDefaultServerHeader: true,
		NoDefaultContentType:  true,
		// Header names stay normalized (X-Original-URI and x-original-uri are the same
		// header, as in net/http); PeekAll sees every copy of a repeated header.
		DisableHeaderNamesNormalizing: false,
		// fasthttp's error messages may quote the request (tokens included).
		SecureErrorLogMessage: true,
		ErrorHandler:          readError,
		CloseOnShutdown:       true,
		Logger:                fasthttpLogger{log.V(1)},
	}
}

// readError answers a request fasthttp could not read: 413 for a body over the cap (which
// fasthttp's default handler answers with 400), 431 for a header over it, 408 for a read
// timeout, 400 otherwise. The connection is closed after it.
func readError(ctx *fasthttp.RequestCtx, err error) {
	var small *fasthttp.ErrSmallBuffer
	var netErr net.Error
	switch {
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		ctx.Error("Request Entity Too Large", http.StatusRequestEntityTooLarge)
	case errors.As(err, &small):
		ctx.Error("Request Header Fields Too Large", http.StatusRequestHeaderFieldsTooLarge)
	case errors.As(err, &netErr) && netErr.Timeout():
		ctx.Error("Request Timeout", http.StatusRequestTimeout)
	default:
		ctx.Error("Bad Request", http.StatusBadRequest)
	}
}

func (s *httpServer) Start(ctx context.Context) error {
	if !waitSynced(ctx, s.waitFor) {
		return nil
	}
	ln, err := listen(s.addr, s.wrap, s.ready)
	if err != nil {
		return err
	}
	transport := s.transport
	if transport == "" {
		transport = HTTPTransportKeyward
	}
	if s.wrap != nil {
		transport = HTTPTransportFastHTTP
	}
	s.log.Info("Serving HTTP forward auth", "address", ln.Addr().String(), "path", AuthzPathPrefix, "transport", transport)
	if transport == HTTPTransportKeyward {
		return newLoopServer(s.handler, s.log, s.eventLoops).serve(ctx, ln)
	}
	srv := newFastHTTPServer(s.handler, s.log)
	if err := serveUntilDone(ctx, "HTTP forward auth server", func() error { return srv.Serve(ln) }); err != nil {
		return err
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), httpShutdownWait)
	defer cancel()
	if err := srv.ShutdownWithContext(shutdownCtx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("cannot shut down HTTP forward auth server: %w", err)
	}
	return nil
}

// fasthttpLogger sends fasthttp's messages (connection errors) to the debug log.
type fasthttpLogger struct{ log logr.Logger }

func (l fasthttpLogger) Printf(format string, args ...any) {
	if l.log.Enabled() {
		l.log.Info(fmt.Sprintf(format, args...))
	}
}
