package validator

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"reflect"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc/codes"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
)

func TestRequestFromHTTP(t *testing.T) {
	type hdrs map[string][]string
	cases := []struct {
		name    string
		target  string // the request line target sent to the validator
		host    string
		method  string
		remote  string
		headers hdrs
		want    Request
	}{
		{name: "nginx auth_request: X-Original-URI, X-Original-Method and X-Forwarded-Host from a trusted proxy",
			target: "/authz", host: "127.0.0.1:8081", method: "GET", remote: "127.0.0.1:5000",
			headers: hdrs{"X-Original-Uri": {"/admin/x?y=1"}, "X-Original-Method": {"POST"}, "X-Forwarded-Host": {"app.example.test"}, "Authorization": {"Bearer t"}},
			want:    Request{Host: "app.example.test", Path: "/admin/x?y=1", Method: "POST", Authorization: []string{"Bearer t"}}},
		{name: "nginx auth_request with Host passed through",
			target: "/authz", host: "app.example.test", method: "GET", remote: "127.0.0.1:5000",
			headers: hdrs{"X-Original-Uri": {"/a"}, "X-Original-Method": {"DELETE"}},
			want:    Request{Host: "app.example.test", Path: "/a", Method: "DELETE"}},
		{name: "ingress-nginx auth-url: X-Original-URL and X-Original-Method",
			target: "/authz", host: "keyward.svc", method: "GET", remote: "127.0.0.1:5000",
			headers: hdrs{"X-Original-Url": {"https://app.example.test/admin/%2e%2e/x?q"}, "X-Original-Method": {"PUT"}},
			want:    Request{Host: "app.example.test", Path: "/admin/%2e%2e/x?q", Method: "PUT"}},
		{name: "ingress-nginx with X-Original-URL and an agreeing X-Original-URI",
			target: "/authz", host: "keyward.svc", method: "GET", remote: "127.0.0.1:5000",
			headers: hdrs{"X-Original-Url": {"http://app.example.test:8080/p"}, "X-Original-Uri": {"/p"}, "X-Original-Method": {"GET"}},
			want:    Request{Host: "app.example.test:8080", Path: "/p", Method: "GET"}},
		{name: "Traefik ForwardAuth: X-Forwarded-Method, -Proto, -Host, -Uri",
			target: "/authz", host: "keyward:8081", method: "GET", remote: "[::1]:5000",
			headers: hdrs{"X-Forwarded-Method": {"PATCH"}, "X-Forwarded-Proto": {"https"}, "X-Forwarded-Host": {"app.example.test"}, "X-Forwarded-Uri": {"/api/v1"}},
			want:    Request{Host: "app.example.test", Path: "/api/v1", Method: "PATCH"}},
		{name: "Envoy HTTP: the original path after /authz, Host and method as sent",
			target: "/authz/api/items?x=1", host: "app.example.test", method: "DELETE", remote: "10.0.0.9:5000",
			want: Request{Host: "app.example.test", Path: "/api/items?x=1", Method: "DELETE"}},
		{name: "Envoy HTTP keeps the original path's encoding",
			target: "/authz/public/%2e%2e/admin/", host: "app.example.test", method: "GET", remote: "10.0.0.9:5000",
			want: Request{Host: "app.example.test", Path: "/public/%2e%2e/admin/", Method: "GET"}},
		{name: "an untrusted caller's forwarded headers are ignored",
			target: "/authz/public/", host: "app.example.test", method: "GET", remote: "10.0.0.9:5000",
			headers: hdrs{"X-Original-Uri": {"/admin/"}, "X-Forwarded-Uri": {"/admin/"}, "X-Forwarded-Host": {"admin.example.test"}, "X-Original-Method": {"POST"},
				"X-Original-Url": {"https://admin.example.test/admin/"}},
			want: Request{Host: "app.example.test", Path: "/public/", Method: "GET"}},
		{name: "an untrusted caller without a path after /authz gives no path",
			target: "/authz", host: "app.example.test", method: "GET", remote: "10.0.0.9:5000",
			headers: hdrs{"X-Original-Uri": {"/public/"}},
			want:    Request{Host: "app.example.test", Method: "GET"}},
		{name: "a client-added X-Forwarded-Uri that disagrees with nginx's X-Original-URI is a conflict",
			target: "/authz", host: "app.example.test", method: "GET", remote: "127.0.0.1:5000",
			headers: hdrs{"X-Original-Uri": {"/admin/"}, "X-Forwarded-Uri": {"/public/"}},
			want:    Request{Host: "app.example.test", Path: "/admin/", Method: "GET", Invalid: ReasonConflicting}},
		{name: "a client-added X-Original-URI that disagrees with Traefik's X-Forwarded-Uri is a conflict",
			target: "/authz", host: "app.example.test", method: "GET", remote: "127.0.0.1:5000",
			headers: hdrs{"X-Forwarded-Uri": {"/admin/"}, "X-Original-Uri": {"/public/"}},
			want:    Request{Host: "app.example.test", Path: "/public/", Method: "GET", Invalid: ReasonConflicting}},
		{name: "a forwarded header sent twice is a conflict",
			target: "/authz", host: "app.example.test", method: "GET", remote: "127.0.0.1:5000",
			headers: hdrs{"X-Original-Uri": {"/public/", "/admin/"}},
			want:    Request{Host: "app.example.test", Path: "/public/", Method: "GET", Invalid: ReasonConflicting}},
		{name: "disagreeing methods are a conflict",
			target: "/authz", host: "app.example.test", method: "GET", remote: "127.0.0.1:5000",
			headers: hdrs{"X-Original-Uri": {"/"}, "X-Original-Method": {"GET"}, "X-Forwarded-Method": {"POST"}},
			want:    Request{Host: "app.example.test", Path: "/", Method: "GET", Invalid: ReasonConflicting}},
		{name: "an Envoy path that disagrees with a trusted X-Original-URI is a conflict",
			target: "/authz/public/", host: "app.example.test", method: "GET", remote: "127.0.0.1:5000",
			headers: hdrs{"X-Original-Uri": {"/admin/"}},
			want:    Request{Host: "app.example.test", Path: "/public/", Method: "GET", Invalid: ReasonConflicting}},
		{name: "two Authorization headers are both passed to the core",
			target: "/authz/", host: "app.example.test", method: "GET", remote: "10.0.0.9:5000",
			headers: hdrs{"Authorization": {"Bearer a", "Bearer b"}},
			want:    Request{Host: "app.example.test", Path: "/", Method: "GET", Authorization: []string{"Bearer a", "Bearer b"}}},
	}
	h := &httpHandler{trusted: DefaultTrustedProxies}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := httptest.NewRequest(c.method, "http://"+c.host+c.target, nil)
			r.Host = c.host
			r.RemoteAddr = c.remote
			for k, vs := range c.headers {
				r.Header[k] = vs
			}
			got := requestFromHTTP(r, h.isTrusted(r.RemoteAddr))
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
		if got := h.isTrusted(addr); got != want {
			t.Errorf("isTrusted(%s) = %v, want %v", addr, got, want)
		}
	}
}

// TestHTTPAnswers runs whole HTTP exchanges through the handler and the decision core.
func TestHTTPAnswers(t *testing.T) {
	f := newFixture(t)
	h := &httpHandler{checker: f.v.Checker, trusted: DefaultTrustedProxies}
	admin := f.token(func(c *tokenClaims) { c.Groups = []string{"admin"} })
	cases := []struct {
		name       string
		headers    map[string]string
		wantStatus int
		wantWWW    string
		wantHdrs   map[string]string
	}{
		{"no token is 401 invalid_token", map[string]string{"X-Original-Uri": "/"}, 401, `Bearer error="invalid_token"`, nil},
		{"a valid token is 200 with identity headers, and empty ones for missing claims", map[string]string{"X-Original-Uri": "/x", "Authorization": "Bearer " + f.token(func(c *tokenClaims) { c.Email = "" })}, 200, "",
			map[string]string{HeaderUser: "alice", HeaderEmail: "", HeaderGroups: "dev,ops", "X-User": "alice", "X-Groups": "dev,ops"}},
		{"a client-sent identity header is overwritten", map[string]string{"X-Original-Uri": "/public/", HeaderUser: "mallory"}, 200, "",
			map[string]string{HeaderUser: "", "X-User": ""}},
		{"the admin path without the group is 403 insufficient_scope", map[string]string{"X-Original-Uri": "/admin/", "Authorization": "Bearer " + f.token(nil)}, 403, `Bearer error="insufficient_scope"`, nil},
		{"the admin path with the group is 200", map[string]string{"X-Original-Uri": "/admin/", "Authorization": "Bearer " + admin}, 200, "", map[string]string{HeaderGroups: "admin"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "http://127.0.0.1:8081/authz", nil)
			r.RemoteAddr = "127.0.0.1:40000"
			r.Header.Set("X-Forwarded-Host", testHost)
			r.Header.Set("X-Original-Method", "GET")
			for k, v := range c.headers {
				r.Header.Set(k, v)
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			if w.Code != c.wantStatus {
				t.Fatalf("status = %d, want %d", w.Code, c.wantStatus)
			}
			if got := w.Header().Get("WWW-Authenticate"); got != c.wantWWW {
				t.Errorf("WWW-Authenticate = %q, want %q", got, c.wantWWW)
			}
			for k, want := range c.wantHdrs {
				vs, ok := w.Header()[http.CanonicalHeaderKey(k)]
				if !ok || len(vs) != 1 || vs[0] != want {
					t.Errorf("%s = %q (present %v), want %q", k, vs, ok, want)
				}
			}
			if c.wantStatus != 200 {
				if w.Body.Len() != 0 {
					t.Errorf("a deny has a body: %q", w.Body.String())
				}
				for _, hdr := range []string{HeaderUser, HeaderEmail, HeaderGroups} {
					if _, ok := w.Header()[hdr]; ok {
						t.Errorf("a deny carries %s", hdr)
					}
				}
			}
		})
	}
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
				t.Fatalf("request = %+v, want %+v", got, c.want)
			}
		})
	}
}

func TestCheckResponse(t *testing.T) {
	t.Run("an allow overwrites set headers and removes the other owned headers", func(t *testing.T) {
		resp := checkResponse(&Decision{Status: 200, Headers: []Header{{HeaderUser, "alice"}, {"X-User", "alice"}},
			Remove: []string{HeaderUser, HeaderEmail, HeaderGroups, "X-User", "X-Groups"}})
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
		resp := checkResponse(&Decision{Status: c.status, Reason: ReasonMissingToken})
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
