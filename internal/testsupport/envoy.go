// Package testsupport holds small helpers shared by keyward's test suites (test/e2e,
// test/security). It is imported only from _test.go files.
package testsupport

import (
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
)

// CheckRequest builds the Envoy ext_authz v3 CheckRequest Envoy sends for an HTTP request:
// method, host and path, the pseudo-headers, and an "authorization: Bearer <tok>" header when
// tok is not empty. extra headers are added (and may replace those).
func CheckRequest(method, host, path, tok string, extra map[string]string) *authv3.CheckRequest {
	h := map[string]string{":authority": host, ":method": method, ":path": path}
	if tok != "" {
		h["authorization"] = "Bearer " + tok
	}
	for k, v := range extra {
		h[k] = v
	}
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{
		Http: &authv3.AttributeContext_HttpRequest{Method: method, Host: host, Path: path, Headers: h, Protocol: "HTTP/1.1", Scheme: "https"},
	}}}
}
