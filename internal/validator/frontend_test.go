package validator

import (
	"bufio"
	"cmp"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/go-logr/logr"
	"github.com/valyala/fasthttp"
	"google.golang.org/grpc/codes"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
)

// rawRequest is an HTTP/1.1 request as a proxy sends it: the request line, Host (unless
// empty) and each header field on its own line, in order.
func rawRequest(method, target, host string, headers [][2]string) string {
	var b strings.Builder
	b.WriteString(method + " " + target + " HTTP/1.1\r\n")
	if host != "" {
		b.WriteString("Host: " + host + "\r\n")
	}
	for _, h := range headers {
		b.WriteString(h[0] + ": " + h[1] + "\r\n")
	}
	b.WriteString("\r\n")
	return b.String()
}

// parseHeader parses a raw request's header as the server does.
func parseHeader(t testing.TB, raw string) *fasthttp.RequestHeader {
	t.Helper()
	var h fasthttp.RequestHeader
	if err := h.Read(bufio.NewReader(strings.NewReader(raw))); err != nil {
		t.Fatalf("cannot parse %q: %v", raw, err)
	}
	return &h
}

func TestRequestFromHTTP(t *testing.T) {
	type hdrs [][2]string
	cases := []struct {
		name    string
		target  string // the request line target sent to the validator
		host    string
		method  string
		remote  string
		headers hdrs
		want    Request
		notAuth bool // the target is not /authz or under /authz/: 404
	}{
		{name: "nginx auth_request: X-Original-URI, X-Original-Method and X-Forwarded-Host from a trusted proxy",
			target: "/authz", host: "127.0.0.1:8081", method: "GET", remote: "127.0.0.1:5000",
			headers: hdrs{{"X-Original-Uri", "/admin/x?y=1"}, {"X-Original-Method", "POST"}, {"X-Forwarded-Host", "app.example.test"}, {"Authorization", "Bearer t"}},
			want:    Request{Host: "app.example.test", Path: "/admin/x?y=1", Method: "POST", Authorization: []string{"Bearer t"}}},
		{name: "nginx auth_request with Host passed through",
			target: "/authz", host: "app.example.test", method: "GET", remote: "127.0.0.1:5000",
			headers: hdrs{{"X-Original-Uri", "/a"}, {"X-Original-Method", "DELETE"}},
			want:    Request{Host: "app.example.test", Path: "/a", Method: "DELETE"}},
		{name: "ingress-nginx auth-url: X-Original-URL and X-Original-Method",
			target: "/authz", host: "keyward.svc", method: "GET", remote: "127.0.0.1:5000",
			headers: hdrs{{"X-Original-Url", "https://app.example.test/admin/%2e%2e/x?q"}, {"X-Original-Method", "PUT"}},
			want:    Request{Host: "app.example.test", Path: "/admin/%2e%2e/x?q", Method: "PUT"}},
		{name: "ingress-nginx with X-Original-URL and an agreeing X-Original-URI",
			target: "/authz", host: "keyward.svc", method: "GET", remote: "127.0.0.1:5000",
			headers: hdrs{{"X-Original-Url", "http://app.example.test:8080/p"}, {"X-Original-Uri", "/p"}, {"X-Original-Method", "GET"}},
			want:    Request{Host: "app.example.test:8080", Path: "/p", Method: "GET"}},
		{name: "Traefik ForwardAuth: X-Forwarded-Method, -Proto, -Host, -Uri",
			target: "/authz", host: "keyward:8081", method: "GET", remote: "[::1]:5000",
			headers: hdrs{{"X-Forwarded-Method", "PATCH"}, {"X-Forwarded-Proto", "https"}, {"X-Forwarded-Host", "app.example.test"}, {"X-Forwarded-Uri", "/api/v1"}},
			want:    Request{Host: "app.example.test", Path: "/api/v1", Method: "PATCH"}},
		{name: "Envoy HTTP: the original path after /authz, Host and method as sent",
			target: "/authz/api/items?x=1", host: "app.example.test", method: "DELETE", remote: "10.0.0.9:5000",
			want: Request{Host: "app.example.test", Path: "/api/items?x=1", Method: "DELETE"}},
		{name: "Envoy HTTP keeps the original path's encoding",
			target: "/authz/public/%2e%2e/admin/", host: "app.example.test", method: "GET", remote: "10.0.0.9:5000",
			want: Request{Host: "app.example.test", Path: "/public/%2e%2e/admin/", Method: "GET"}},
		{name: "Envoy HTTP keeps dot segments and raw bytes as sent (the core resolves them)",
			target: "/authz/public/../admin//caf\xc3\xa9", host: "app.example.test", method: "GET", remote: "10.0.0.9:5000",
			want: Request{Host: "app.example.test", Path: "/public/../admin//caf\xc3\xa9", Method: "GET"}},
		{name: "any method, including an extension method",
			target: "/authz/dav/", host: "app.example.test", method: "PROPFIND", remote: "10.0.0.9:5000",
			want: Request{Host: "app.example.test", Path: "/dav/", Method: "PROPFIND"}},
		{name: "the absolute form's host wins over Host",
			target: "http://app.example.test/authz/api?x", host: "other.example.test", method: "GET", remote: "10.0.0.9:5000",
			want: Request{Host: "app.example.test", Path: "/api?x", Method: "GET"}},
		{name: "/authz with a query and no path is under the prefix, without a path",
			target: "/authz?x=1", host: "app.example.test", method: "GET", remote: "10.0.0.9:5000",
			want: Request{Host: "app.example.test", Method: "GET"}},
		{name: "a path that only starts like the prefix is not under it",
			target: "/authzfoo/api", host: "app.example.test", method: "GET", remote: "127.0.0.1:5000", notAuth: true},
		{name: "another path is not under the prefix",
			target: "/api/items", host: "app.example.test", method: "GET", remote: "127.0.0.1:5000", notAuth: true},
		{name: "an untrusted caller's forwarded headers are ignored",
			target: "/authz/public/", host: "app.example.test", method: "GET", remote: "10.0.0.9:5000",
			headers: hdrs{{"X-Original-Uri", "/admin/"}, {"X-Forwarded-Uri", "/admin/"}, {"X-Forwarded-Host", "admin.example.test"}, {"X-Original-Method", "POST"},
				{"X-Original-Url", "https://admin.example.test/admin/"}},
			want: Request{Host: "app.example.test", Path: "/public/", Method: "GET"}},
		{name: "an untrusted caller without a path after /authz gives no path",
			target: "/authz", host: "app.example.test", method: "GET", remote: "10.0.0.9:5000",
			headers: hdrs{{"X-Original-Uri", "/public/"}},
			want:    Request{Host: "app.example.test", Method: "GET"}},
		{name: "a client-added X-Forwarded-Uri that disagrees with nginx's X-Original-URI is a conflict",
			target: "/authz", host: "app.example.test", method: "GET", remote: "127.0.0.1:5000",
			headers: hdrs{{"X-Original-Uri", "/admin/"}, {"X-Forwarded-Uri", "/public/"}},
			want:    Request{Host: "app.example.test", Path: "/admin/", Method: "GET", Invalid: ReasonConflicting}},
		{name: "a client-added X-Original-URI that disagrees with Traefik's X-Forwarded-Uri is a conflict",
			target: "/authz", host: "app.example.test", method: "GET", remote: "127.0.0.1:5000",
			headers: hdrs{{"X-Forwarded-Uri", "/admin/"}, {"X-Original-Uri", "/public/"}},
			want:    Request{Host: "app.example.test", Path: "/public/", Method: "GET", Invalid: ReasonConflicting}},
		{name: "a forwarded header sent twice is a conflict",
			target: "/authz", host: "app.example.test", method: "GET", remote: "127.0.0.1:5000",
			headers: hdrs{{"X-Original-Uri", "/public/"}, {"X-Original-Uri", "/admin/"}},
			want:    Request{Host: "app.example.test", Path: "/public/", Method: "GET", Invalid: ReasonConflicting}},
		{name: "header names are case-insensitive: a repeat in another case is a repeat",
			target: "/authz", host: "app.example.test", method: "GET", remote: "127.0.0.1:5000",
			headers: hdrs{{"x-original-uri", "/public/"}, {"X-ORIGINAL-URI", "/public/"}},
			want:    Request{Host: "app.example.test", Path: "/public/", Method: "GET", Invalid: ReasonConflicting}},
		{name: "lower-case header names are read",
			target: "/authz", host: "app.example.test", method: "GET", remote: "127.0.0.1:5000",
			headers: hdrs{{"x-original-uri", "/a"}, {"x-original-method", "POST"}, {"authorization", "Bearer t"}},
			want:    Request{Host: "app.example.test", Path: "/a", Method: "POST", Authorization: []string{"Bearer t"}}},
		{name: "disagreeing methods are a conflict",
			target: "/authz", host: "app.example.test", method: "GET", remote: "127.0.0.1:5000",
			headers: hdrs{{"X-Original-Uri", "/"}, {"X-Original-Method", "GET"}, {"X-Forwarded-Method", "POST"}},
			want:    Request{Host: "app.example.test", Path: "/", Method: "GET", Invalid: ReasonConflicting}},
		{name: "an Envoy path that disagrees with a trusted X-Original-URI is a conflict",
			target: "/authz/public/", host: "app.example.test", method: "GET", remote: "127.0.0.1:5000",
			headers: hdrs{{"X-Original-Uri", "/admin/"}},
			want:    Request{Host: "app.example.test", Path: "/public/", Method: "GET", Invalid: ReasonConflicting}},
		{name: "two Authorization headers are both passed to the core",
			target: "/authz/", host: "app.example.test", method: "GET", remote: "10.0.0.9:5000",
			headers: hdrs{{"Authorization", "Bearer a"}, {"authorization", "Bearer b"}},
			want:    Request{Host: "app.example.test", Path: "/", Method: "GET", Authorization: []string{"Bearer a", "Bearer b"}}},
	}
	h := &httpHandler{trusted: DefaultTrustedProxies}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			hdr := parseHeader(t, rawRequest(c.method, c.target, c.host, c.headers))
			got, ok := requestFromHTTP(hdr, h.isTrusted(netip.MustParseAddrPort(c.remote).Addr()))
			if ok == c.notAuth {
				t.Fatalf("under /authz = %v, want %v", ok, !c.notAuth)
			}
			if c.notAuth {
				return
			}
			c.want.Protocol = ProtocolHTTP
			if c.want.Invalid != "" {
				got.Path, got.Host, got.Method, got.Authorization = c.want.Path, c.want.Host, c.want.Method, c.want.Authorization
			}
			if !reflect.DeepEqual(got, c.want) {
				t.Fatalf("request = %+v, want %+v", got, c.want)
			}
		})
	}
}

func TestTrustedProxies(t *testing.T) {
	h := &httpHandler{trusted: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16"), netip.MustParsePrefix("::1/128")}}
	for addr, want := range map[string]bool{
		"10.1.2.3:80": true, "10.2.0.1:80": false, "[::1]:80": true, "127.0.0.1:80": false,
		"[::ffff:10.1.0.1]:80": true, "garbage": false,
	} {
		ap, _ := netip.ParseAddrPort(addr)
		if got := h.isTrusted(ap.Addr()); got != want {
			t.Errorf("isTrusted(%s) = %v, want %v", addr, got, want)
		}
		if got := h.isTrusted(peerAddr(net.TCPAddrFromAddrPort(ap))); ap.IsValid() && got != want {
			t.Errorf("isTrusted(peerAddr(%s)) = %v, want %v", addr, got, want)
		}
	}
	if h.isTrusted(peerAddr(&net.UnixAddr{Name: "/run/x", Net: "unix"})) {
		t.Error("a non-TCP peer is trusted")
	}
}

// serveOnce runs one request through the handler, as the server would for a peer at remote.
func serveOnce(h *httpHandler, raw, remote string) *fasthttp.Response {
	var req fasthttp.Request
	if err := req.Read(bufio.NewReader(strings.NewReader(raw))); err != nil {
		panic(err)
	}
	var ctx fasthttp.RequestCtx
	ctx.Init(&req, net.TCPAddrFromAddrPort(netip.MustParseAddrPort(remote)), nil)
	h.serve(&ctx)
	var resp fasthttp.Response
	ctx.Response.CopyTo(&resp)
	return &resp
}

// TestHTTPAnswers runs whole HTTP exchanges through the handler and the decision core.
func TestHTTPAnswers(t *testing.T) {
	f := newFixture(t)
	h := &httpHandler{checker: f.v.Checker, trusted: DefaultTrustedProxies}
	admin := f.token(func(c *tokenClaims) { c.Groups = []string{"admin"} })
	cases := []struct {
		name       string
		target     string
		remote     string
		headers    [][2]string
		wantStatus int
		wantWWW    string
		wantHdrs   map[string]string
	}{
		{"no token is 401 invalid_token", "", "", [][2]string{{"X-Original-Uri", "/"}}, 401, `Bearer error="invalid_token"`, nil},
		{"a valid token is 200 with identity headers, and empty ones for missing claims", "", "", [][2]string{{"X-Original-Uri", "/x"}, {"Authorization", "Bearer " + f.token(func(c *tokenClaims) { c.Email = "" })}}, 200, "",
			map[string]string{HeaderUser: "alice", HeaderEmail: "", HeaderGroups: "dev,ops", "X-User": "alice", "X-Groups": "dev,ops"}},
		{"a client-sent identity header is overwritten", "", "", [][2]string{{"X-Original-Uri", "/public/"}, {HeaderUser, "mallory"}}, 200, "",
			map[string]string{HeaderUser: "", "X-User": ""}},
		{"the admin path without the group is 403 insufficient_scope", "", "", [][2]string{{"X-Original-Uri", "/admin/"}, {"Authorization", "Bearer " + f.token(nil)}}, 403, `Bearer error="insufficient_scope"`, nil},
		{"the admin path with the group is 200", "", "", [][2]string{{"X-Original-Uri", "/admin/"}, {"Authorization", "Bearer " + admin}}, 200, "", map[string]string{HeaderGroups: "admin"}},
		{"two Authorization headers are 401", "", "", [][2]string{{"X-Original-Uri", "/x"}, {"Authorization", "Bearer " + admin}, {"Authorization", "Bearer " + admin}}, 401, `Bearer error="invalid_token"`, nil},
		{"an Envoy path with dot segments is judged where it leads", "/authz/public/../admin/", "10.0.0.9:5000", [][2]string{{"Authorization", "Bearer " + f.token(nil)}}, 403, `Bearer error="insufficient_scope"`, nil},
		{"an Envoy path above the root is refused", "/authz/public/../../admin/", "10.0.0.9:5000", nil, 403, `Bearer error="insufficient_scope"`, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			target, remote := cmp.Or(c.target, "/authz"), cmp.Or(c.remote, "127.0.0.1:40000")
			headers := append([][2]string{{"X-Original-Method", "GET"}}, c.headers...)
			host := "127.0.0.1:8081"
			if c.target == "" {
				headers = append(headers, [2]string{"X-Forwarded-Host", testHost})
			} else {
				host = testHost
			}
			resp := serveOnce(h, rawRequest(http.MethodGet, target, host, headers), remote)
			if resp.StatusCode() != c.wantStatus {
				t.Fatalf("status = %d, want %d", resp.StatusCode(), c.wantStatus)
			}
			if got := string(resp.Header.Peek("WWW-Authenticate")); got != c.wantWWW {
				t.Errorf("WWW-Authenticate = %q, want %q", got, c.wantWWW)
			}
			if got := string(resp.Header.Peek("Cache-Control")); got != "no-store" {
				t.Errorf("Cache-Control = %q, want no-store", got)
			}
			for k, want := range c.wantHdrs {
				vs := resp.Header.PeekAll(k)
				if len(vs) != 1 || string(vs[0]) != want {
					t.Errorf("%s = %q, want %q", k, vs, want)
				}
			}
			if c.wantStatus != 200 {
				if len(resp.Body()) != 0 {
					t.Errorf("a deny has a body: %q", resp.Body())
				}
				for _, hdr := range []string{HeaderUser, HeaderEmail, HeaderGroups} {
					if resp.Header.Peek(hdr) != nil {
						t.Errorf("a deny carries %s", hdr)
					}
				}
			}
		})
	}
}

// TestHTTPServer talks to the server over loopback: the bytes on the wire, the limits, and
// a graceful shutdown.
func TestHTTPServer(t *testing.T) {
	f := newFixture(t)
	tok := f.token(nil)
	ctx, cancel := context.WithCancel(t.Context())
	addrc := make(chan string, 1)
	s := &httpServer{addr: "127.0.0.1:0", handler: &httpHandler{checker: f.v.Checker, trusted: DefaultTrustedProxies, log: logr.Discard()},
		log: logr.Discard(), ready: func(a net.Addr) { addrc <- a.String() }}
	if s.NeedLeaderElection() {
		t.Error("the HTTP server needs leader election: it must serve on every replica")
	}
	done := make(chan error, 1)
	go func() { done <- s.Start(ctx) }()
	addr := <-addrc
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	br := bufio.NewReader(conn)
	exchange := func(t *testing.T, raw string) (status string, hdr map[string]string) {
		t.Helper()
		if _, err := io.WriteString(conn, raw); err != nil {
			t.Fatal(err)
		}
		method, _, _ := strings.Cut(raw, " ")
		resp, err := http.ReadResponse(br, &http.Request{Method: method})
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != 404 && len(body) != 0 {
			t.Errorf("body %q", body)
		}
		hdr = map[string]string{}
		for k, vs := range resp.Header {
			hdr[k] = strings.Join(vs, "|")
		}
		return resp.Status, hdr
	}
	auth := [][2]string{{"Authorization", "Bearer " + tok}}

	t.Run("an allow carries no-store, the identity and mapped headers, Date and nothing else", func(t *testing.T) {
		status, hdr := exchange(t, rawRequest("GET", "/authz/api/items", testHost, auth))
		want := map[string]string{"Cache-Control": "no-store", "Content-Length": "0", "Date": hdr["Date"],
			HeaderUser: "alice", HeaderEmail: "alice@example.test", HeaderGroups: "dev,ops", "X-User": "alice", "X-Groups": "dev,ops"}
		if status != "200 OK" || hdr["Date"] == "" || !reflect.DeepEqual(hdr, want) {
			t.Errorf("%s %v, want 200 OK %v", status, hdr, want)
		}
	})
	t.Run("a deny carries no-store, WWW-Authenticate, Date and nothing else", func(t *testing.T) {
		status, hdr := exchange(t, rawRequest("POST", "/authz/api/items", testHost, nil))
		want := map[string]string{"Cache-Control": "no-store", "Content-Length": "0", "Date": hdr["Date"], "Www-Authenticate": `Bearer error="invalid_token"`}
		if status != "401 Unauthorized" || !reflect.DeepEqual(hdr, want) {
			t.Errorf("%s %v, want 401 %v", status, hdr, want)
		}
	})
	t.Run("any method, on /authz and under it", func(t *testing.T) {
		for _, m := range []string{"GET", "HEAD", "DELETE", "OPTIONS", "PROPFIND"} {
			for _, target := range []string{"/authz?x", "/authz/api/items"} {
				status, _ := exchange(t, rawRequest(m, target, testHost, append([][2]string{{"X-Original-Uri", "/api/items"}}, auth...)))
				if status != "200 OK" {
					t.Errorf("%s %s: %s", m, target, status)
				}
			}
		}
	})
	t.Run("other paths are 404", func(t *testing.T) {
		for _, target := range []string{"/", "/authzx", "/metrics"} {
			if status, _ := exchange(t, rawRequest("GET", target, testHost, auth)); status != "404 Not Found" {
				t.Errorf("%s: %s", target, status)
			}
		}
	})
	t.Run("headers beyond the cap are refused", func(t *testing.T) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = c.Close() }()
		big := rawRequest("GET", "/authz/api/items", testHost, [][2]string{{"Cookie", strings.Repeat("a", httpMaxHeaderBytes)}})
		go func() { _, _ = io.WriteString(c, big) }()
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Errorf("status %d, want 431", resp.StatusCode)
		}
	})
	t.Run("bodies beyond the cap are refused with 413", func(t *testing.T) {
		// Regression: fasthttp's default error handler answered 400.
		for _, n := range []int{httpMaxBodyBytes + 1, 2 * httpMaxBodyBytes} {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			raw := fmt.Sprintf("POST /authz/api/items HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n%s", testHost, n, strings.Repeat("a", n))
			go func() { _, _ = io.WriteString(c, raw) }()
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			_ = resp.Body.Close()
			_ = c.Close()
			if resp.StatusCode != http.StatusRequestEntityTooLarge {
				t.Errorf("a %d-byte body: status %d, want 413", n, resp.StatusCode)
			}
		}
	})
	t.Run("a header just under the cap is served", func(t *testing.T) {
		status, _ := exchange(t, rawRequest("GET", "/authz/api/items", testHost, append([][2]string{{"Cookie", strings.Repeat("a", 60<<10)}}, auth...)))
		if status != "200 OK" {
			t.Errorf("status %s", status)
		}
	})
	t.Run("graceful shutdown", func(t *testing.T) {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(httpShutdownWait + 5*time.Second):
			t.Fatal("the server did not stop")
		}
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			_ = c.Close()
			t.Error("the server still accepts connections")
		}
	})
}

func TestRequestFromCheck(t *testing.T) {
	httpAttrs := func(h *authv3.AttributeContext_HttpRequest) *authv3.CheckRequest {
		return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{Http: h}}}
	}
	cases := []struct {
		name string
		in   *authv3.CheckRequest
		want Request
	}{
		{"method, host, path and authorization from headers",
			httpAttrs(&authv3.AttributeContext_HttpRequest{Method: "POST", Host: "app.example.test", Path: "/a?b",
				Headers: map[string]string{"authorization": "Bearer t", "x-auth-request-user": "mallory"}}),
			Request{Method: "POST", Host: "app.example.test", Path: "/a?b", Authorization: []string{"Bearer t"}}},
		{"every authorization of header_map is kept, so that two are refused",
			httpAttrs(&authv3.AttributeContext_HttpRequest{Method: "GET", Host: "h", Path: "/",
				HeaderMap: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: "authorization", Value: "Bearer a"}, {Key: "Authorization", RawValue: []byte("Bearer b")}}}}),
			Request{Method: "GET", Host: "h", Path: "/", Authorization: []string{"Bearer a", "Bearer b"}}},
		{"the host falls back to :authority",
			httpAttrs(&authv3.AttributeContext_HttpRequest{Method: "GET", Path: "/", Headers: map[string]string{":authority": "app.example.test"}}),
			Request{Method: "GET", Host: "app.example.test", Path: "/"}},
		{"an empty request gives an empty Request, which the core denies", &authv3.CheckRequest{}, Request{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.want.Protocol = ProtocolGRPC
			if got := requestFromCheck(c.in); !reflect.DeepEqual(got, c.want) {
				t.Fatalf("reference: request = %+v, want %+v", got, c.want)
			}
			if got := decodeCheck(t, c.in); !reflect.DeepEqual(got, c.want) {
				t.Fatalf("request = %+v, want %+v", got, c.want)
			}
		})
	}
}

func TestCheckResponse(t *testing.T) {
	t.Run("an allow overwrites set headers and removes the other owned headers", func(t *testing.T) {
		resp := wireResponse(t, checkResponse(&Decision{Status: 200, Headers: []Header{{HeaderUser, "alice"}, {"X-User", "alice"}},
			Remove: []string{HeaderUser, HeaderEmail, HeaderGroups, "X-User", "X-Groups"}}))
		if codes.Code(resp.GetStatus().GetCode()) != codes.OK {
			t.Fatalf("code = %v", resp.GetStatus().GetCode())
		}
		ok := resp.GetOkResponse()
		var set []string
		for _, h := range ok.GetHeaders() {
			if h.GetAppendAction() != corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD {
				t.Errorf("%s is appended, not overwritten", h.GetHeader().GetKey())
			}
			set = append(set, h.GetHeader().GetKey()+"="+h.GetHeader().GetValue())
		}
		if want := []string{"x-auth-request-user=alice", "x-user=alice"}; !reflect.DeepEqual(set, want) {
			t.Errorf("headers = %v, want %v", set, want)
		}
		if want := []string{"x-auth-request-email", "x-auth-request-groups", "x-groups"}; !reflect.DeepEqual(ok.GetHeadersToRemove(), want) {
			t.Errorf("headers_to_remove = %v, want %v", ok.GetHeadersToRemove(), want)
		}
	})
	for _, c := range []struct {
		status   int
		code     codes.Code
		httpCode typev3.StatusCode
		www      string
	}{
		{401, codes.Unauthenticated, typev3.StatusCode_Unauthorized, `Bearer error="invalid_token"`},
		{403, codes.PermissionDenied, typev3.StatusCode_Forbidden, `Bearer error="insufficient_scope"`},
	} {
		resp := wireResponse(t, checkResponse(&Decision{Status: c.status, Reason: ReasonMissingToken}))
		denied := resp.GetDeniedResponse()
		if codes.Code(resp.GetStatus().GetCode()) != c.code || denied.GetStatus().GetCode() != c.httpCode || denied.GetBody() != "" {
			t.Errorf("%d: code %v, http %v, body %q", c.status, resp.GetStatus().GetCode(), denied.GetStatus().GetCode(), denied.GetBody())
		}
		if h := denied.GetHeaders()[0].GetHeader(); h.GetKey() != "www-authenticate" || h.GetValue() != c.www {
			t.Errorf("%d: header %s=%s, want www-authenticate=%s", c.status, h.GetKey(), h.GetValue(), c.www)
		}
		if resp.GetStatus().GetMessage() != "" {
			t.Errorf("a deny says why: %q", resp.GetStatus().GetMessage())
		}
	}
}

func TestSecretsAreCachedOnlyWithAllowHSKeys(t *testing.T) {
	for _, allow := range []bool{false, true} {
		opts := cacheOptions(Options{AllowHSKeys: allow})
		var secrets bool
		for obj, by := range opts.ByObject {
			if _, ok := obj.(*corev1.Secret); ok {
				secrets = true
				if by.Label == nil || !by.Label.Matches(labels.Set{keywardv1.LabelUse: keywardv1.UseSigningKey}) || by.Label.Matches(labels.Set{keywardv1.LabelUse: keywardv1.UseReferenced}) {
					t.Errorf("the Secret cache is not restricted to key-set Secrets: %v", by.Label)
				}
			}
		}
		if secrets != allow {
			t.Errorf("AllowHSKeys=%v: Secret cache configured = %v", allow, secrets)
		}
	}
}

// A validator that is starting does not listen until its state is synced: a proxy in front
// of several replicas gets a refused connection, which it retries elsewhere (nginx
// proxy_next_upstream error), rather than a deny from an empty state.
func TestServersListenOnlyOnceSynced(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	synced := make(chan struct{})
	addrs := make(chan string, 2)
	hs := &httpServer{addr: "127.0.0.1:0", handler: &httpHandler{checker: f.v.Checker, trusted: DefaultTrustedProxies, log: logr.Discard()},
		log: logr.Discard(), ready: func(a net.Addr) { addrs <- a.String() }, waitFor: synced}
	gs := &grpcServer{addr: "127.0.0.1:0", checker: f.v.Checker, log: logr.Discard(), ready: func(a net.Addr) { addrs <- a.String() }, waitFor: synced}
	done := make(chan error, 2)
	go func() { done <- hs.Start(ctx) }()
	go func() { done <- gs.Start(ctx) }()
	select {
	case a := <-addrs:
		t.Fatalf("a server listens on %s before the state synced", a)
	case <-time.After(300 * time.Millisecond):
	}
	close(synced)
	for range 2 {
		select {
		case <-addrs:
		case <-time.After(10 * time.Second):
			t.Fatal("the servers did not listen once the state synced")
		}
	}
	cancel()
	for range 2 {
		if err := <-done; err != nil {
			t.Errorf("server stopped with %v", err)
		}
	}
	// A server still waiting returns without error when its context ends.
	ctx2, cancel2 := context.WithCancel(t.Context())
	cancel2()
	if err := (&httpServer{addr: "127.0.0.1:0", waitFor: make(chan struct{})}).Start(ctx2); err != nil {
		t.Errorf("a waiting server stopped with %v", err)
	}
}
