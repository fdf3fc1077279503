package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
	"github.com/keyward/keyward/internal/keys"
	"github.com/keyward/keyward/internal/token"
)

const publicURL = "http://localhost:8080"

// issuerEnv is a SigningKey, a TokenIssuer and the sample AccessPolicy (for one host) in one
// namespace, and a signer made from the SigningKey's real key-set Secret.
type issuerEnv struct {
	ns, host string
	signer   *token.Signer
	seq      atomic.Int64
}

var demo *issuerEnv

// setupIssuer creates the objects and waits until both validators allow a valid token.
func setupIssuer(t *testing.T, ns, host string) *issuerEnv {
	t.Helper()
	ctx := t.Context()
	if err := k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	objs := []client.Object{
		&keywardv1.SigningKey{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "main"},
			Spec: keywardv1.SigningKeySpec{Algorithm: keywardv1.AlgorithmES256}},
		&keywardv1.TokenIssuer{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "main"},
			Spec: keywardv1.TokenIssuerSpec{
				SigningKeyRef: keywardv1.LocalObjectReference{Name: "main"},
				Audiences:     []string{"api"},
				Users:         keywardv1.SecretReference{SecretRef: keywardv1.LocalObjectReference{Name: "users"}},
			}},
		&keywardv1.AccessPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "app"},
			Spec: keywardv1.AccessPolicySpec{
				Hosts: []string{host},
				Rules: []keywardv1.AccessRule{
					{Paths: []string{"/public/"}, Anonymous: true},
					{Paths: []string{"/admin/"}, Issuers: []keywardv1.IssuerReference{{Name: "main"}}, Audiences: []string{"api"},
						When: "'admin' in claims.groups"},
					{Paths: []string{"/"}, Issuers: []keywardv1.IssuerReference{{Name: "main"}}, Audiences: []string{"api"},
						Headers: map[string]keywardv1.ClaimName{"X-User": "sub", "X-Groups": "groups"}},
				},
			}},
	}
	for _, o := range objs {
		if err := k8s.Create(ctx, o); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("cannot create %T: %v", o, err)
		}
	}
	e := &issuerEnv{ns: ns, host: host}
	e.signer = e.activeSigner(t, "")
	tok := e.token(t, nil)
	for _, v := range validators {
		eventually(t, 30*time.Second, fmt.Sprintf("%s allows a valid token", v.name), func() bool {
			return envoyHTTP(t, v, http.MethodGet, host, "/x", tok).StatusCode == http.StatusOK
		})
	}
	return e
}

// activeSigner waits for the SigningKey's Active key, other than notKID, and returns a signer.
func (e *issuerEnv) activeSigner(t *testing.T, notKID string) *token.Signer {
	t.Helper()
	var signer *token.Signer
	eventually(t, 30*time.Second, "the key-set Secret has an Active key", func() bool {
		var s corev1.Secret
		if err := k8s.Get(t.Context(), client.ObjectKey{Namespace: e.ns, Name: "main-keyset"}, &s); err != nil {
			return false
		}
		ks, err := keys.ParseKeySet(s.Data[keywardv1.KeySetDataKey])
		if err != nil {
			return false
		}
		active := ks.Active()
		if active == nil || active.KID == notKID {
			return false
		}
		signer, err = token.NewSigner(active)
		return err == nil
	})
	return signer
}

func (e *issuerEnv) claims() *token.Claims {
	now := time.Now()
	n := e.seq.Add(1)
	return &token.Claims{
		Issuer:    publicURL + "/" + e.ns + "/main",
		Subject:   "alice",
		Audience:  []string{"api"},
		ExpiresAt: now.Add(5 * time.Minute),
		IssuedAt:  now,
		ID:        fmt.Sprintf("jti-%d-%d", now.UnixNano(), n),
		SessionID: fmt.Sprintf("sid-%d", n),
		TokenType: token.TokenTypeAccess,
		Groups:    []string{"dev", "ops"},
		Email:     "alice@example.test",
	}
}

func (e *issuerEnv) token(t *testing.T, mod func(*token.Claims)) string {
	return e.tokenTyped(t, token.TypeAccess, mod)
}

func (e *issuerEnv) tokenTyped(t *testing.T, typ string, mod func(*token.Claims)) string {
	t.Helper()
	c := e.claims()
	if typ == token.TypeRefresh {
		c.TokenType = token.TokenTypeRefresh
	}
	if mod != nil {
		mod(c)
	}
	raw, err := e.signer.Sign(typ, c)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting until %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

var httpClient = &http.Client{Timeout: 10 * time.Second}

// response is what a test reads of an HTTP response.
type response struct {
	StatusCode int
	Header     http.Header
	Body       []byte
}

func do(t *testing.T, req *http.Request) response {
	t.Helper()
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	return response{StatusCode: resp.StatusCode, Header: resp.Header, Body: body}
}

// viaNginx sends a request through nginx to the echoing upstream.
func viaNginx(t *testing.T, method, host, path, tok string, headers map[string]string) response {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, "http://"+nginxAddr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	return do(t, req)
}

// envoyHTTP asks a validator as Envoy's HTTP ext_authz does: the original path after
// /authz, the original Host and method.
func envoyHTTP(t *testing.T, v *validatorProc, method, host, path, tok string) response {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, "http://"+v.httpAddr+"/authz"+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	return do(t, req)
}

// traefik asks a validator as Traefik's ForwardAuth does: X-Forwarded-Method, -Proto, -Host
// and -Uri on a GET to the configured address.
func traefik(t *testing.T, v *validatorProc, method, host, path, tok string) response {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://"+v.httpAddr+"/authz", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Forwarded-Method", method)
	req.Header.Set("X-Forwarded-Proto", "https")
	req.Header.Set("X-Forwarded-Host", host)
	req.Header.Set("X-Forwarded-Uri", path)
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	return do(t, req)
}

func upstreamHeaders(t *testing.T, resp response) http.Header {
	t.Helper()
	var h http.Header
	if err := json.Unmarshal(resp.Body, &h); err != nil {
		t.Fatalf("upstream response is not its echo: %v", err)
	}
	return h
}

func demoEnv(t *testing.T) *issuerEnv {
	t.Helper()
	if demo == nil {
		demo = setupIssuer(t, "demo", "app.example.test")
	}
	return demo
}

// decisionCase is one request and the answer every front end must give.
type decisionCase struct {
	name   string
	method string
	path   string
	token  func(t *testing.T, e *issuerEnv) string
	want   int
}

func decisionCases() []decisionCase {
	valid := func(t *testing.T, e *issuerEnv) string { return e.token(t, nil) }
	return []decisionCase{
		{"no token is 401", "GET", "/", nil, 401},
		{"a valid token is 200", "GET", "/api/items?x=1", valid, 200},
		{"a valid token with another method is 200", "DELETE", "/api/items/1", valid, 200},
		{"a refresh token as access token is 401", "GET", "/", func(t *testing.T, e *issuerEnv) string {
			return e.tokenTyped(t, token.TypeRefresh, nil)
		}, 401},
		{"an expired token is 401", "GET", "/", func(t *testing.T, e *issuerEnv) string {
			return e.token(t, func(c *token.Claims) {
				c.ExpiresAt = time.Now().Add(-2 * time.Minute)
				c.IssuedAt = c.ExpiresAt.Add(-5 * time.Minute)
			})
		}, 401},
		{"a token for another audience is 401", "GET", "/", func(t *testing.T, e *issuerEnv) string {
			return e.token(t, func(c *token.Claims) { c.Audience = []string{"other"} })
		}, 401},
		{"a token of another issuer is 401", "GET", "/", func(t *testing.T, e *issuerEnv) string {
			return e.token(t, func(c *token.Claims) { c.Issuer = "http://localhost:8080/other/main" })
		}, 401},
		{"a tampered token is 401", "GET", "/", func(t *testing.T, e *issuerEnv) string {
			parts := strings.Split(e.token(t, nil), ".")
			evil := strings.Split(e.token(t, func(c *token.Claims) { c.Groups = []string{"admin"} }), ".")
			return parts[0] + "." + evil[1] + "." + parts[2]
		}, 401},
		{"an alg none token is 401", "GET", "/", func(t *testing.T, e *issuerEnv) string {
			parts := strings.Split(e.token(t, nil), ".")
			return "eyJhbGciOiJub25lIiwia2lkIjoieCIsInR5cCI6ImF0K2p3dCJ9." + parts[1] + "."
		}, 401},
		{"garbage is 401", "GET", "/", func(*testing.T, *issuerEnv) string { return "not-a-token" }, 401},
		{"/admin/ without the admin group is 403", "GET", "/admin/", valid, 403},
		{"/admin/ with the admin group is 200", "GET", "/admin/users", func(t *testing.T, e *issuerEnv) string {
			return e.token(t, func(c *token.Claims) { c.Groups = []string{"admin"} })
		}, 200},
		{"/public/ without a token is 200", "GET", "/public/index.html", nil, 200},
		{"/public/../admin/ is judged as /admin/", "GET", "/public/%2e%2e/admin/", nil, 401},
	}
}

func TestNginx(t *testing.T) {
	e := demoEnv(t)
	for _, c := range decisionCases() {
		t.Run(c.name, func(t *testing.T) {
			tok := ""
			if c.token != nil {
				tok = c.token(t, e)
			}
			resp := viaNginx(t, c.method, e.host, c.path, tok, nil)
			if resp.StatusCode != c.want {
				t.Fatalf("status = %d, want %d", resp.StatusCode, c.want)
			}
			if c.want == 401 && resp.Header.Get("WWW-Authenticate") != `Bearer error="invalid_token"` {
				t.Errorf("WWW-Authenticate = %q", resp.Header.Get("WWW-Authenticate"))
			}
		})
	}

	t.Run("the upstream gets the identity and mapped headers, never a client's copy", func(t *testing.T) {
		forged := map[string]string{"X-Auth-Request-User": "mallory", "X-Auth-Request-Groups": "admin", "X-User": "mallory", "X-Groups": "admin", "X-Auth-Request-Email": "m@evil"}
		resp := viaNginx(t, "GET", e.host, "/api", e.token(t, func(c *token.Claims) { c.Email = "" }), forged)
		if resp.StatusCode != 200 {
			t.Fatalf("status = %d", resp.StatusCode)
		}
		h := upstreamHeaders(t, resp)
		for name, want := range map[string][]string{
			"X-Auth-Request-User": {"alice"}, "X-Auth-Request-Groups": {"dev,ops"}, "X-User": {"alice"}, "X-Groups": {"dev,ops"}, "X-Auth-Request-Email": nil,
		} {
			if got := h.Values(name); strings.Join(got, "|") != strings.Join(want, "|") {
				t.Errorf("upstream %s = %q, want %q", name, got, want)
			}
		}
	})
	t.Run("an anonymous request's forged identity headers never reach the upstream", func(t *testing.T) {
		resp := viaNginx(t, "GET", e.host, "/public/", "", map[string]string{"X-Auth-Request-User": "mallory", "X-User": "mallory"})
		if resp.StatusCode != 200 {
			t.Fatalf("status = %d", resp.StatusCode)
		}
		h := upstreamHeaders(t, resp)
		for _, name := range []string{"X-Auth-Request-User", "X-User"} {
			if got := h.Values(name); len(got) > 0 {
				t.Errorf("upstream got %s = %q", name, got)
			}
		}
	})
	t.Run("a client-sent X-Forwarded-Uri cannot redirect the check", func(t *testing.T) {
		resp := viaNginx(t, "GET", e.host, "/admin/", "", map[string]string{"X-Forwarded-Uri": "/public/", "X-Original-URI": "/public/"})
		if resp.StatusCode != 401 {
			t.Fatalf("status = %d, want 401", resp.StatusCode)
		}
	})
	t.Run("a host no policy names is 403", func(t *testing.T) {
		if resp := viaNginx(t, "GET", "unknown.example.test", "/public/", "", nil); resp.StatusCode != 403 {
			t.Fatalf("status = %d, want 403", resp.StatusCode)
		}
	})
	t.Run("two Authorization headers are refused (nginx itself answers 400)", func(t *testing.T) {
		req, _ := http.NewRequestWithContext(t.Context(), "GET", "http://"+nginxAddr+"/api", nil)
		req.Host = e.host
		req.Header.Add("Authorization", "Bearer "+e.token(t, nil))
		req.Header.Add("Authorization", "Bearer "+e.token(t, nil))
		if resp := do(t, req); resp.StatusCode != 400 && resp.StatusCode != 401 {
			t.Fatalf("status = %d, want 400 or 401", resp.StatusCode)
		}
	})
}

func TestTraefikAndEnvoyHTTPStyle(t *testing.T) {
	e := demoEnv(t)
	for _, c := range decisionCases() {
		t.Run("Traefik: "+c.name, func(t *testing.T) {
			tok := ""
			if c.token != nil {
				tok = c.token(t, e)
			}
			if resp := traefik(t, validators[0], c.method, e.host, c.path, tok); resp.StatusCode != c.want {
				t.Fatalf("status = %d, want %d", resp.StatusCode, c.want)
			}
		})
		for _, v := range validators {
			t.Run("Envoy HTTP at "+v.name+": "+c.name, func(t *testing.T) {
				tok := ""
				if c.token != nil {
					tok = c.token(t, e)
				}
				resp := envoyHTTP(t, v, c.method, e.host, c.path, tok)
				if resp.StatusCode != c.want {
					t.Fatalf("status = %d, want %d", resp.StatusCode, c.want)
				}
				if c.want == 200 && c.token != nil && resp.Header.Get("X-Auth-Request-User") != "alice" {
					t.Errorf("X-Auth-Request-User = %q", resp.Header.Get("X-Auth-Request-User"))
				}
			})
		}
	}
	t.Run("a validator that trusts no proxy ignores forwarded headers", func(t *testing.T) {
		// Traefik-style headers claim /public/; the request itself names no path: denied.
		if resp := traefik(t, validators[1], "GET", e.host, "/public/", ""); resp.StatusCode != 403 {
			t.Fatalf("status = %d, want 403", resp.StatusCode)
		}
		req, _ := http.NewRequestWithContext(t.Context(), "GET", "http://"+validators[1].httpAddr+"/authz/admin/", nil)
		req.Host = e.host
		req.Header.Set("X-Original-URI", "/public/")
		if resp := do(t, req); resp.StatusCode != 401 {
			t.Fatalf("status = %d, want 401 (judged as /admin/)", resp.StatusCode)
		}
	})
}

// TestRevokedSessionAtTwoValidators revokes a Session (the keyward.dev/revoked label, as the
// issuer does) and requires both validator processes to deny its token within one second.
func TestRevokedSessionAtTwoValidators(t *testing.T) {
	e := demoEnv(t)
	ctx := t.Context()
	sess := &keywardv1.Session{
		ObjectMeta: metav1.ObjectMeta{Namespace: e.ns, Name: "sid-revoke-me", Labels: map[string]string{keywardv1.LabelIssuer: "main"}},
		Spec: keywardv1.SessionSpec{IssuerRef: keywardv1.LocalObjectReference{Name: "main"}, Subject: "alice",
			ExpiresAt: metav1.NewTime(time.Now().Add(time.Hour))},
	}
	if err := k8s.Create(ctx, sess); err != nil {
		t.Fatal(err)
	}
	tok := e.token(t, func(c *token.Claims) { c.SessionID = sess.Name })
	other := e.token(t, func(c *token.Claims) { c.SessionID = "sid-other" })
	for _, v := range validators {
		for _, raw := range []string{tok, other} {
			if resp := envoyHTTP(t, v, "GET", e.host, "/api", raw); resp.StatusCode != 200 {
				t.Fatalf("%s: status before revocation = %d", v.name, resp.StatusCode)
			}
		}
	}
	if resp := viaNginx(t, "GET", e.host, "/api", tok, nil); resp.StatusCode != 200 {
		t.Fatalf("nginx: status before revocation = %d", resp.StatusCode)
	}

	patch := client.MergeFrom(sess.DeepCopy())
	sess.Spec.Revoked = true
	sess.Labels[keywardv1.LabelRevoked] = "true"
	if err := k8s.Patch(ctx, sess, patch); err != nil {
		t.Fatal(err)
	}
	revokedAt := time.Now()
	for _, v := range validators {
		for {
			resp := envoyHTTP(t, v, "GET", e.host, "/api", tok)
			if resp.StatusCode == 401 {
				t.Logf("%s denies the revoked session's token %s after the update returned", v.name, time.Since(revokedAt).Round(time.Millisecond))
				break
			}
			if time.Since(revokedAt) > time.Second {
				t.Fatalf("%s still answers %d more than 1s after the session was revoked", v.name, resp.StatusCode)
			}
			time.Sleep(10 * time.Millisecond)
		}
		if resp := envoyHTTP(t, v, "GET", e.host, "/api", other); resp.StatusCode != 200 {
			t.Errorf("%s: another session's token is %d after the revocation", v.name, resp.StatusCode)
		}
	}
	if resp := viaNginx(t, "GET", e.host, "/api", tok, nil); resp.StatusCode != 401 {
		t.Errorf("nginx: status after revocation = %d, want 401", resp.StatusCode)
	}
}

// TestRevokedKey revokes the Active key of a SigningKey: once the controller removed its kid
// from the JWKS ConfigMap, both validators deny its tokens within one second.
func TestRevokedKey(t *testing.T) {
	e := setupIssuer(t, "revoke-key", "keys.example.test")
	ctx := t.Context()
	tok := e.token(t, nil)
	for _, v := range validators {
		if resp := envoyHTTP(t, v, "GET", e.host, "/api", tok); resp.StatusCode != 200 {
			t.Fatalf("%s: status before revocation = %d", v.name, resp.StatusCode)
		}
	}
	var sk keywardv1.SigningKey
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: e.ns, Name: "main"}, &sk); err != nil {
		t.Fatal(err)
	}
	patch := client.MergeFrom(sk.DeepCopy())
	sk.Spec.RevokedKeyIDs = []string{e.signer.KID()}
	if err := k8s.Patch(ctx, &sk, patch); err != nil {
		t.Fatal(err)
	}
	// The controller withdraws the kid from the JWKS ConfigMap.
	var withdrawn time.Time
	eventually(t, 30*time.Second, "the revoked kid leaves the JWKS ConfigMap", func() bool {
		var cm corev1.ConfigMap
		if err := k8s.Get(ctx, client.ObjectKey{Namespace: e.ns, Name: "main-jwks"}, &cm); err != nil {
			return false
		}
		if strings.Contains(cm.Data[keywardv1.JWKSDataKey], e.signer.KID()) {
			return false
		}
		withdrawn = time.Now()
		return true
	})
	for _, v := range validators {
		for {
			resp := envoyHTTP(t, v, "GET", e.host, "/api", tok)
			if resp.StatusCode == 401 {
				t.Logf("%s denies the revoked key's token %s after the JWKS changed", v.name, time.Since(withdrawn).Round(time.Millisecond))
				break
			}
			if time.Since(withdrawn) > time.Second {
				t.Fatalf("%s still answers %d more than 1s after the key left the JWKS", v.name, resp.StatusCode)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if resp := traefik(t, validators[0], "GET", e.host, "/api", tok); resp.StatusCode != 401 {
		t.Errorf("status = %d, want 401", resp.StatusCode)
	}
	// Tokens of the key that took over pass.
	e.signer = e.activeSigner(t, sk.Spec.RevokedKeyIDs[0])
	fresh := e.token(t, nil)
	for _, v := range validators {
		eventually(t, 10*time.Second, v.name+" allows a token of the new key", func() bool {
			return envoyHTTP(t, v, "GET", e.host, "/api", fresh).StatusCode == 200
		})
	}
}
