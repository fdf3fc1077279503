package issuer_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"mime/multipart"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/keyward/keyward/internal/testenv"
)

// The reference is the real thing: hack/simplejwt runs djangorestframework-simplejwt 5.2.2
// (Debian's python3-djangorestframework-simplejwt) with rotation and blacklist-after-rotation
// on. The same requests go to it and to keyward; status codes, Content-Type,
// WWW-Authenticate, Allow and JSON bodies (keys, messages, codes; token values aside) must
// agree. Where keyward deliberately differs, the case says so and checks both answers.

// startSimpleJWT starts the reference server and returns its base URL.
func startSimpleJWT(t *testing.T) string {
	t.Helper()
	cmd := exec.Command("/usr/bin/python3", filepath.Join(testenv.RepoRoot(), "hack", "simplejwt", "server.py"), "0")
	cmd.Env = append(os.Environ(), "SIMPLEJWT_DIR="+t.TempDir())
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("cannot start the simplejwt reference server: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if port, ok := strings.CutPrefix(sc.Text(), "READY "); ok {
				ready <- port
				return
			}
		}
		close(ready)
	}()
	select {
	case port, ok := <-ready:
		if !ok {
			t.Fatalf("simplejwt reference server exited: %s", stderr.String())
		}
		return "http://127.0.0.1:" + port + "/"
	case <-time.After(60 * time.Second):
		t.Fatalf("simplejwt reference server not ready within 60s: %s", stderr.String())
	}
	return ""
}

// side is one server under comparison, with the tokens it issued.
type side struct {
	name   string
	base   string
	tokens map[string]string
}

type compatRequest struct {
	name, method, path, contentType, body string
	// multipart, when set, is sent as multipart/form-data instead of body.
	multipart map[string]string
	// save stores tokens of the answer under these names: "access" -> name.
	save map[string]string
	// differs documents a deliberate difference; wantKeyward/wantSimpleJWT are then the
	// expected status and body of each.
	differs                    string
	wantKeyward, wantSimpleJWT string
}

func (s *side) send(t *testing.T, c compatRequest) response {
	t.Helper()
	body := c.body
	for k, v := range s.tokens {
		body = strings.ReplaceAll(body, "{"+k+"}", v)
	}
	var rdr *bytes.Reader
	ct := c.contentType
	if c.multipart != nil {
		var buf bytes.Buffer
		w := multipart.NewWriter(&buf)
		for k, v := range c.multipart {
			_ = w.WriteField(k, v)
		}
		_ = w.Close()
		rdr, ct = bytes.NewReader(buf.Bytes()), w.FormDataContentType()
	} else {
		rdr = bytes.NewReader([]byte(body))
	}
	req, err := http.NewRequestWithContext(t.Context(), c.method, s.base+c.path, rdr)
	if err != nil {
		t.Fatal(err)
	}
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	r := do(t, req)
	for from, to := range c.save {
		if r.status == 200 {
			s.tokens[to] = r.str(t, from)
		}
	}
	return r
}

// shape replaces token values with a placeholder and JSON parse error texts with their
// prefix: what must agree between the two servers.
func shape(t *testing.T, body []byte) any {
	t.Helper()
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("body is not JSON: %s", body)
	}
	if m, ok := v.(map[string]any); ok {
		for k, x := range m {
			if s, ok := x.(string); ok {
				switch {
				case k == "access" || k == "refresh":
					m[k] = "<token>"
				case strings.HasPrefix(s, "JSON parse error - "):
					m[k] = "JSON parse error - <parser message>"
				}
			}
		}
	}
	return v
}

func TestSimpleJWTCompatibility(t *testing.T) {
	ref := startSimpleJWT(t)
	u := users{
		htpasswd: "alice:" + hash(t, "wonderland", testCost) + "\ncarol:" + hash(t, "through", testCost) + "\n",
		yaml:     "carol:\n  disabled: true\n",
	}
	f := newFixture(t, u, func(spec map[string]any) {
		// simplejwt has no grace period: a rotated token is blacklisted at once.
		spec["refreshTokenRotation"] = map[string]any{"enabled": true, "reuseGracePeriod": "0s"}
		spec["extraClaims"] = nil
	})
	sides := []*side{{name: "keyward", base: f.base, tokens: map[string]string{}}, {name: "simplejwt", base: ref, tokens: map[string]string{}}}
	const js = "application/json"
	login := `{"username":"alice","password":"wonderland"}`
	cases := []compatRequest{
		{name: "login", method: "POST", path: "api/token/", contentType: js, body: login, save: map[string]string{"access": "a1", "refresh": "r1"}},
		{name: "login, form-encoded", method: "POST", path: "api/token/", contentType: "application/x-www-form-urlencoded", body: "username=alice&password=wonderland", save: map[string]string{"refresh": "r2"}},
		{name: "login, multipart", method: "POST", path: "api/token/", multipart: map[string]string{"username": "alice", "password": "wonderland"}, save: map[string]string{"refresh": "r3"}},
		{name: "login, unknown fields are ignored", method: "POST", path: "api/token/", contentType: js, body: `{"username":"alice","password":"wonderland","otp":"123456"}`},
		{name: "login, whitespace around the username is trimmed", method: "POST", path: "api/token/", contentType: js, body: `{"username":" alice ","password":"wonderland"}`},
		{name: "login, charset parameter", method: "POST", path: "api/token/", contentType: "application/json; charset=utf-8", body: login},
		{name: "wrong password", method: "POST", path: "api/token/", contentType: js, body: `{"username":"alice","password":"nope"}`},
		{name: "unknown user", method: "POST", path: "api/token/", contentType: js, body: `{"username":"mallory","password":"nope"}`},
		{name: "inactive user", method: "POST", path: "api/token/", contentType: js, body: `{"username":"carol","password":"through"}`},
		{name: "missing password", method: "POST", path: "api/token/", contentType: js, body: `{"username":"alice"}`},
		{name: "missing username", method: "POST", path: "api/token/", contentType: js, body: `{"password":"x"}`},
		{name: "empty object", method: "POST", path: "api/token/", contentType: js, body: `{}`},
		{name: "empty JSON body", method: "POST", path: "api/token/", contentType: js, body: ``},
		{name: "no body, no content type", method: "POST", path: "api/token/"},
		{name: "empty form body", method: "POST", path: "api/token/", contentType: "application/x-www-form-urlencoded"},
		{name: "not JSON", method: "POST", path: "api/token/", contentType: js, body: `notjson`},
		{name: "truncated JSON", method: "POST", path: "api/token/", contentType: js, body: `{"username":`},
		{name: "trailing data", method: "POST", path: "api/token/", contentType: js, body: login + ` x`},
		{name: "a list", method: "POST", path: "api/token/", contentType: js, body: `[1, 2]`},
		{name: "a string", method: "POST", path: "api/token/", contentType: js, body: `"alice"`},
		{name: "a number", method: "POST", path: "api/token/", contentType: js, body: `42`},
		{name: "null", method: "POST", path: "api/token/", contentType: js, body: `null`},
		{name: "bool and null fields", method: "POST", path: "api/token/", contentType: js, body: `{"username":true,"password":null}`},
		{name: "a number is a string, blank is refused", method: "POST", path: "api/token/", contentType: js, body: `{"username":123,"password":""}`},
		{name: "list and object fields", method: "POST", path: "api/token/", contentType: js, body: `{"username":["alice"],"password":{"p":1}}`},
		{name: "whitespace-only field", method: "POST", path: "api/token/", contentType: js, body: `{"username":"   ","password":"wonderland"}`},
		{name: "text/plain", method: "POST", path: "api/token/", contentType: "text/plain", body: login},
		{name: "a body without content type", method: "POST", path: "api/token/", contentType: "", body: login,
			differs:     "both refuse it with 415; the reference's WSGI server (wsgiref) fills in text/plain for a missing Content-Type, gunicorn and keyward do not",
			wantKeyward: `415 {"detail":"Unsupported media type \"\" in request."}`, wantSimpleJWT: `415 {"detail":"Unsupported media type \"text/plain\" in request."}`},
		{name: "GET is not allowed", method: "GET", path: "api/token/"},
		{name: "PUT is not allowed", method: "PUT", path: "api/token/refresh/", contentType: js, body: `{}`},
		{name: "refresh", method: "POST", path: "api/token/refresh/", contentType: js, body: `{"refresh":"{r1}"}`, save: map[string]string{"refresh": "r1b", "access": "a1b"}},
		{name: "refresh, form-encoded", method: "POST", path: "api/token/refresh/", contentType: "application/x-www-form-urlencoded", body: `refresh={r2}`},
		{name: "refresh without a token", method: "POST", path: "api/token/refresh/", contentType: js, body: `{}`},
		{name: "refresh with garbage", method: "POST", path: "api/token/refresh/", contentType: js, body: `{"refresh":"abc.def.ghi"}`},
		{name: "refresh with a number", method: "POST", path: "api/token/refresh/", contentType: js, body: `{"refresh":12}`},
		{name: "refresh with an access token", method: "POST", path: "api/token/refresh/", contentType: js, body: `{"refresh":"{a1}"}`},
		{name: "verify an access token", method: "POST", path: "api/token/verify/", contentType: js, body: `{"token":"{a1b}"}`},
		{name: "verify a refresh token", method: "POST", path: "api/token/verify/", contentType: js, body: `{"token":"{r1b}"}`},
		{name: "verify garbage", method: "POST", path: "api/token/verify/", contentType: js, body: `{"token":"garbage"}`},
		{name: "verify without a token", method: "POST", path: "api/token/verify/", contentType: js, body: `{}`},
		{name: "verify null", method: "POST", path: "api/token/verify/", contentType: js, body: `{"token":null}`},
		{name: "replay of a rotated refresh token", method: "POST", path: "api/token/refresh/", contentType: js, body: `{"refresh":"{r1}"}`},
		{name: "verify a rotated refresh token", method: "POST", path: "api/token/verify/", contentType: js, body: `{"token":"{r1}"}`},
		{name: "blacklist with an access token", method: "POST", path: "api/token/blacklist/", contentType: js, body: `{"refresh":"{a1}"}`},
		{name: "blacklist without a token", method: "POST", path: "api/token/blacklist/", contentType: js, body: `{}`},
		{name: "blacklist garbage", method: "POST", path: "api/token/blacklist/", contentType: js, body: `{"refresh":"x"}`},
		{name: "blacklist", method: "POST", path: "api/token/blacklist/", contentType: js, body: `{"refresh":"{r3}"}`},
		{name: "blacklist again", method: "POST", path: "api/token/blacklist/", contentType: js, body: `{"refresh":"{r3}"}`},
		{name: "refresh a blacklisted token", method: "POST", path: "api/token/refresh/", contentType: js, body: `{"refresh":"{r3}"}`},
		{name: "verify a blacklisted refresh token", method: "POST", path: "api/token/verify/", contentType: js, body: `{"token":"{r3}"}`},
		{name: "login again after all that", method: "POST", path: "api/token/", contentType: js, body: login, save: map[string]string{"access": "a4", "refresh": "r4"}},
		{name: "blacklist the new session", method: "POST", path: "api/token/blacklist/", contentType: js, body: `{"refresh":"{r4}"}`},
		{name: "verify an access token of a blacklisted session", method: "POST", path: "api/token/verify/", contentType: js, body: `{"token":"{a4}"}`,
			differs:     "simplejwt blacklists refresh tokens only, so their access tokens stay valid until they expire; keyward revokes the session, and verify refuses its access tokens",
			wantKeyward: `401 {"detail":"Token is invalid or expired","code":"token_not_valid"}`, wantSimpleJWT: `200 {}`},
		{name: "duplicate member names", method: "POST", path: "api/token/", contentType: js, body: `{"username":"mallory","username":"alice","password":"wonderland"}`,
			differs:     "Python keeps the last duplicate; keyward refuses duplicate names (a parser differential) as a JSON parse error",
			wantKeyward: "400", wantSimpleJWT: "200"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			kw, sj := sides[0].send(t, c), sides[1].send(t, c)
			if c.differs != "" {
				for _, x := range []struct {
					name string
					got  response
					want string
				}{{"keyward", kw, c.wantKeyward}, {"simplejwt", sj, c.wantSimpleJWT}} {
					status, body, _ := strings.Cut(x.want, " ")
					if fmt.Sprint(x.got.status) != status || (body != "" && string(x.got.body) != body) {
						t.Errorf("%s answered %d %s, want %s (%s)", x.name, x.got.status, x.got.body, x.want, c.differs)
					}
				}
				return
			}
			if kw.status != sj.status {
				t.Errorf("status: keyward %d %s, simplejwt %d %s", kw.status, kw.body, sj.status, sj.body)
			}
			for _, h := range []string{"Content-Type", "WWW-Authenticate", "Allow"} {
				if kw.header.Get(h) != sj.header.Get(h) {
					t.Errorf("%s: keyward %q, simplejwt %q", h, kw.header.Get(h), sj.header.Get(h))
				}
			}
			if a, b := shape(t, kw.body), shape(t, sj.body); !reflect.DeepEqual(a, b) {
				t.Errorf("body: keyward %s, simplejwt %s", kw.body, sj.body)
			}
		})
	}
}
