package validator

import (
	"net"
	"net/http"
	"net/url"
	"strings"
)

// Protocols of the front ends, a label of the decision metrics.
const (
	ProtocolHTTP = "http"
	ProtocolGRPC = "grpc"
)

// Identity headers the validator sets on an allowed request. Inbound copies are always
// removed.
const (
	HeaderUser   = "X-Auth-Request-User"
	HeaderEmail  = "X-Auth-Request-Email"
	HeaderGroups = "X-Auth-Request-Groups"
)

// identityHeaders are removed from every request, whatever the decision.
var identityHeaders = []string{HeaderUser, HeaderEmail, HeaderGroups}

// Request is the original request a proxy asks about, as a front end translated it. The
// decision core normalizes Host and Path itself.
type Request struct {
	// Protocol is ProtocolHTTP or ProtocolGRPC, for metrics.
	Protocol string
	// Host is the original Host, possibly with a port.
	Host string
	// Path is the original request target: a path, possibly with a query, percent-encoded as
	// the client sent it.
	Path string
	// Method is the original method.
	Method string
	// Authorization holds every Authorization header value of the original request.
	Authorization []string
	// Invalid, when not empty, is a Reason the front end found the request unusable for (for
	// example forwarded headers that disagree): the core denies it.
	Invalid Reason
}

// Header is one response header.
type Header struct {
	Name  string
	Value string
}

// Decision is the answer to a Request.
type Decision struct {
	// Status is http.StatusOK, http.StatusUnauthorized or http.StatusForbidden.
	Status int
	// Reason says why, for metrics and debug logs only: never sent to the client.
	Reason Reason
	// Headers are the identity and mapped headers the upstream gets, on an allowed request.
	Headers []Header
	// Remove lists the canonical names of every header the validator owns for this host
	// (identity headers and every mapped header): inbound copies must not reach the upstream.
	Remove []string
	// Policy is the namespace/name of the policy that decided, if any.
	Policy string
	// TokenHash is a short hash of the token, for logs, when there was one.
	TokenHash string
	// JTI is the token's jti, for logs, once verified.
	JTI string
}

// Allowed reports whether the request may pass.
func (d *Decision) Allowed() bool { return d.Status == http.StatusOK }

// normalizeHost lowercases a host and strips its port and trailing dot.
func normalizeHost(h string) string {
	// Without a colon there is no port (and no IPv6 literal): SplitHostPort would only
	// allocate its error.
	if strings.IndexByte(h, ':') >= 0 {
		if host, _, err := net.SplitHostPort(h); err == nil {
			h = host
		} else if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
			h = h[1 : len(h)-1]
		}
	}
	h = strings.TrimSuffix(h, ".")
	for i := 0; i < len(h); i++ {
		if c := h[i]; 'A' <= c && c <= 'Z' {
			return strings.ToLower(h)
		}
	}
	return h
}

// normalizePath turns a request target into the path rules are matched against: the query
// and fragment dropped, percent-decoded once, repeated slashes merged and dot segments
// removed (as nginx does before routing), keeping a trailing slash. It fails on a path that
// does not start with "/", a bad escape, a NUL or control byte, a "%" left after decoding
// (double encoding), or ".." above the root: such requests are denied.
func normalizePath(target string) (string, bool) {
	if i := strings.IndexAny(target, "?#"); i >= 0 {
		target = target[:i]
	}
	if !strings.HasPrefix(target, "/") {
		return "", false
	}
	// Fast path: nothing to decode or clean.
	clean := true
	for i := 0; i < len(target); i++ {
		c := target[i]
		if c == '%' || c < 0x20 || c == 0x7f || (c == '/' && i+1 < len(target) && target[i+1] == '/') ||
			(c == '.' && target[i-1] == '/' && (i+1 == len(target) || target[i+1] == '/' || target[i+1] == '.')) {
			clean = false
			break
		}
	}
	if clean {
		return target, true
	}
	p, err := url.PathUnescape(target)
	if err != nil || strings.ContainsAny(p, "%") {
		return "", false
	}
	for i := 0; i < len(p); i++ {
		if c := p[i]; c < 0x20 || c == 0x7f {
			return "", false
		}
	}
	segs := strings.Split(p[1:], "/")
	out := make([]string, 0, len(segs))
	trailing := false
	for i, s := range segs {
		last := i == len(segs)-1
		switch s {
		case "":
			trailing = last
		case ".":
			trailing = last
		case "..":
			if len(out) == 0 {
				return "", false
			}
			out = out[:len(out)-1]
			trailing = last
		default:
			out = append(out, s)
			trailing = false
		}
	}
	res := "/" + strings.Join(out, "/")
	if trailing && len(out) > 0 {
		res += "/"
	}
	return res, true
}

// bearerToken extracts the token of the single "Authorization: Bearer" header.
func bearerToken(values []string) (string, Reason) {
	switch {
	case len(values) == 0:
		return "", ReasonMissingToken
	case len(values) > 1:
		return "", ReasonMultipleAuthorization
	}
	v := values[0]
	const scheme = "bearer "
	if len(v) <= len(scheme) || !strings.EqualFold(v[:len(scheme)], scheme) {
		if v == "" {
			return "", ReasonMissingToken
		}
		return "", ReasonBadScheme
	}
	tok := v[len(scheme):]
	// A comma means several merged headers (Envoy joins repeated headers with commas).
	// The token parser would refuse it too, but say why.
	if strings.IndexByte(tok, ',') >= 0 {
		return "", ReasonMultipleAuthorization
	}
	return tok, ""
}
