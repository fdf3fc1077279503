package issuer_test

import (
	"net/http"
	"strings"
	"testing"
)

// Golden bodies of the simplejwt-compatible endpoints: every error shape, byte for byte.
func TestSimpleJWTErrorShapesGolden(t *testing.T) {
	f := newFixture(t, defaultUsers(t, testCost), nil)
	access, refresh := f.loginOK(t, "alice", "wonderland")
	const (
		invalid     = `{"detail":"Token is invalid or expired","code":"token_not_valid"}`
		wrongType   = `{"detail":"Token has wrong type","code":"token_not_valid"}`
		noAccount   = `{"detail":"No active account found with the given credentials"}`
		bothMissing = `{"username":["This field is required."],"password":["This field is required."]}`
	)
	cases := []struct {
		name, method, path, contentType, body string
		wantStatus                            int
		wantBody                              string
		wantAuthenticate                      bool
	}{
		{"wrong password is 401 no_active_account", "POST", "api/token/", "application/json", `{"username":"alice","password":"nope"}`, 401, noAccount, true},
		{"unknown user is the same 401", "POST", "api/token/", "application/json", `{"username":"zed","password":"nope"}`, 401, noAccount, true},
		{"disabled user is the same 401", "POST", "api/token/", "application/json", `{"username":"bob","password":"builder"}`, 401, noAccount, true},
		{"missing password is 400", "POST", "api/token/", "application/json", `{"username":"alice"}`, 400, `{"password":["This field is required."]}`, false},
		{"empty object lists both fields", "POST", "api/token/", "application/json", `{}`, 400, bothMissing, false},
		{"empty body lists both fields", "POST", "api/token/", "application/json", ``, 400, bothMissing, false},
		{"no content type and no body lists both fields", "POST", "api/token/", "", ``, 400, bothMissing, false},
		{"null and bool are refused per field", "POST", "api/token/", "application/json", `{"username":true,"password":null}`, 400, `{"username":["Not a valid string."],"password":["This field may not be null."]}`, false},
		{"blank after trimming is refused", "POST", "api/token/", "application/json", `{"username":"  ","password":"x"}`, 400, `{"username":["This field may not be blank."]}`, false},
		{"lists and objects are not strings", "POST", "api/token/", "application/json", `{"username":["a"],"password":{"a":1}}`, 400, `{"username":["Not a valid string."],"password":["Not a valid string."]}`, false},
		{"a JSON list is not a dictionary", "POST", "api/token/", "application/json", `[1]`, 400, `{"non_field_errors":["Invalid data. Expected a dictionary, but got list."]}`, false},
		{"a JSON string is not a dictionary", "POST", "api/token/", "application/json", `"x"`, 400, `{"non_field_errors":["Invalid data. Expected a dictionary, but got str."]}`, false},
		{"JSON null is no data", "POST", "api/token/", "application/json", `null`, 400, `{"non_field_errors":["No data provided"]}`, false},
		{"text/plain is 415", "POST", "api/token/", "text/plain", `x`, 415, `{"detail":"Unsupported media type \"text/plain\" in request."}`, false},
		{"GET is 405", "GET", "api/token/", "", ``, 405, `{"detail":"Method \"GET\" not allowed."}`, false},
		{"refresh without field is 400", "POST", "api/token/refresh/", "application/json", `{}`, 400, `{"refresh":["This field is required."]}`, false},
		{"garbage refresh is 401", "POST", "api/token/refresh/", "application/json", `{"refresh":"abc"}`, 401, invalid, true},
		{"access token at refresh has wrong type", "POST", "api/token/refresh/", "application/json", `{"refresh":"` + access + `"}`, 401, wrongType, true},
		{"verify without field is 400", "POST", "api/token/verify/", "application/json", `{}`, 400, `{"token":["This field is required."]}`, false},
		{"garbage verify is 401", "POST", "api/token/verify/", "application/json", `{"token":"abc"}`, 401, invalid, true},
		{"verify of an access token is {}", "POST", "api/token/verify/", "application/json", `{"token":"` + access + `"}`, 200, `{}`, false},
		{"verify of a refresh token is {}", "POST", "api/token/verify/", "application/json", `{"token":"` + refresh + `"}`, 200, `{}`, false},
		{"blacklist without field is 400", "POST", "api/token/blacklist/", "application/json", `{}`, 400, `{"refresh":["This field is required."]}`, false},
		{"garbage blacklist is 401", "POST", "api/token/blacklist/", "application/json", `{"refresh":"abc"}`, 401, invalid, true},
		{"access token at blacklist has wrong type", "POST", "api/token/blacklist/", "application/json", `{"refresh":"` + access + `"}`, 401, wrongType, true},
		{"an unknown issuer is 404", "POST", "../nope/api/token/", "application/json", `{}`, 404, `{"detail":"Not found."}`, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequestWithContext(t.Context(), tc.method, f.base+tc.path, strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			if tc.contentType != "" {
				req.Header.Set("Content-Type", tc.contentType)
			}
			r := do(t, req)
			if r.status != tc.wantStatus || string(r.body) != tc.wantBody {
				t.Errorf("got %d %s, want %d %s", r.status, r.body, tc.wantStatus, tc.wantBody)
			}
			if ct := r.header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q, want application/json", ct)
			}
			if got := r.header.Get("WWW-Authenticate"); (got == `Bearer realm="api"`) != tc.wantAuthenticate {
				t.Errorf("WWW-Authenticate %q, want it: %v", got, tc.wantAuthenticate)
			}
		})
	}
}

// A JSON parse error keeps DRF's shape and prefix; the text after it is the parser's own.
func TestSimpleJWTParseErrors(t *testing.T) {
	f := newFixture(t, defaultUsers(t, testCost), nil)
	for _, body := range []string{`notjson`, `{"username":"alice","password":"wonderland"} x`, `{"username":"a","username":"b","password":"c"}`, `{"username":`} {
		r := post(t, f.base+"api/token/", "application/json", body)
		if r.status != 400 || !strings.HasPrefix(r.str(t, "detail"), "JSON parse error - ") {
			t.Errorf("%s: got %d %s, want 400 JSON parse error", body, r.status, r.body)
		}
	}
	r := post(t, f.base+"api/token/", "application/json", strings.Repeat(" ", 17<<10)+"{}")
	if r.status != http.StatusRequestEntityTooLarge {
		t.Errorf("oversized body: got %d %s, want 413", r.status, r.body)
	}
}

// The simplejwt flow: login, refresh with rotation, verify, blacklist; then the blacklisted
// session's refresh and access tokens are refused.
func TestSimpleJWTFlow(t *testing.T) {
	f := newFixture(t, defaultUsers(t, testCost), nil)
	// Form-encoded and JSON logins both work, unknown fields are ignored (as DRF does).
	r := post(t, f.base+"api/token/", "application/x-www-form-urlencoded", "username=alice&password=wonderland&remember=1")
	if r.status != 200 {
		t.Fatalf("form login: %d %s", r.status, r.body)
	}
	r = postJSON(t, f.base+"api/token/", map[string]any{"username": " alice ", "password": "wonderland", "otp": 123})
	if r.status != 200 {
		t.Fatalf("JSON login with an unknown field: %d %s", r.status, r.body)
	}
	if keys := r.json(t); len(keys) != 2 || keys["access"] == nil || keys["refresh"] == nil {
		t.Fatalf("login body: %s", r.body)
	}
	access, refresh := r.str(t, "access"), r.str(t, "refresh")

	ac, rc := claimsOf(t, access), claimsOf(t, refresh)
	if h := headerOf(t, access); h["typ"] != "at+jwt" || h["alg"] != "ES256" || h["kid"] == "" {
		t.Errorf("access header %v", h)
	}
	if h := headerOf(t, refresh); h["typ"] != "rt+jwt" {
		t.Errorf("refresh header %v", h)
	}
	for k, want := range map[string]any{"iss": f.iss, "sub": "alice", "token_type": "access", "email": "alice@example.test", "tenant": "acme", "team": "blue"} {
		if ac[k] != want {
			t.Errorf("access claim %s = %v, want %v", k, ac[k], want)
		}
	}
	if ac["sid"] == nil || ac["sid"] != rc["sid"] || ac["jti"] == rc["jti"] || rc["token_type"] != "refresh" || rc["gen"].(interface{ String() string }).String() != "1" {
		t.Errorf("claims: access %v refresh %v", ac, rc)
	}
	sid := ac["sid"].(string)
	s := f.session(t, sid)
	if s.Labels["keyward.dev/issuer"] != "main" || len(s.Labels["keyward.dev/subject"]) != 20 || s.Status.RefreshGeneration != 0 || rc["jti"] != sid+".1" {
		t.Errorf("session after login: labels %v status %+v", s.Labels, s.Status)
	}

	r = f.refresh(t, refresh)
	if r.status != 200 {
		t.Fatalf("refresh: %d %s", r.status, r.body)
	}
	if keys := r.json(t); len(keys) != 2 {
		t.Errorf("refresh body has %d keys: %s", len(keys), r.body)
	}
	access2, refresh2 := r.str(t, "access"), r.str(t, "refresh")
	if c := claimsOf(t, refresh2); c["gen"].(interface{ String() string }).String() != "2" || c["sid"] != sid {
		t.Errorf("rotated refresh claims %v", c)
	}
	for _, tok := range []string{access, access2, refresh2} {
		if r := f.verify(t, tok); r.status != 200 || string(r.body) != "{}" {
			t.Errorf("verify: %d %s", r.status, r.body)
		}
	}
	r = postJSON(t, f.base+"api/token/blacklist/", map[string]string{"refresh": refresh2})
	if r.status != 200 || string(r.body) != "{}" {
		t.Fatalf("blacklist: %d %s", r.status, r.body)
	}
	s = f.session(t, sid)
	if !s.Spec.Revoked || s.Labels["keyward.dev/revoked"] != "true" || s.Status.RevokedReason != "Logout" || s.Status.RevokedAt == nil {
		t.Errorf("session after blacklist: spec %+v labels %v status %+v", s.Spec, s.Labels, s.Status)
	}
	if r := f.refresh(t, refresh2); r.status != 401 || string(r.body) != `{"detail":"Token is blacklisted","code":"token_not_valid"}` {
		t.Errorf("refresh after blacklist: %d %s", r.status, r.body)
	}
	if r := postJSON(t, f.base+"api/token/blacklist/", map[string]string{"refresh": refresh2}); r.status != 401 {
		t.Errorf("second blacklist: %d %s", r.status, r.body)
	}
	// simplejwt still accepts the access tokens of a blacklisted session; keyward does not.
	for _, tok := range []string{access, access2} {
		if r := f.verify(t, tok); r.status != 401 || string(r.body) != `{"detail":"Token is invalid or expired","code":"token_not_valid"}` {
			t.Errorf("verify of a revoked session's access token: %d %s", r.status, r.body)
		}
	}
	if r := f.verify(t, refresh2); r.status != 400 || string(r.body) != `{"non_field_errors":["Token is blacklisted"]}` {
		t.Errorf("verify of a revoked refresh token: %d %s", r.status, r.body)
	}
}
