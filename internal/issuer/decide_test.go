package issuer

import (
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
)

func TestDecideRefresh(t *testing.T) {
	now := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	session := func(mutate func(s *keywardv1.Session)) *keywardv1.Session {
		s := &keywardv1.Session{
			Spec: keywardv1.SessionSpec{IssuerRef: keywardv1.LocalObjectReference{Name: "main"}, Subject: "alice", ExpiresAt: metav1.NewTime(now.Add(time.Hour))},
			Status: keywardv1.SessionStatus{RefreshGeneration: 3, RefreshTokenID: "jti-3", PreviousTokenID: "jti-2",
				RotatedAt: &metav1.MicroTime{Time: now.Add(-2 * time.Second)}},
		}
		if mutate != nil {
			mutate(s)
		}
		return s
	}
	in := func(jti string, gen int64, mutate func(i *refreshInput)) refreshInput {
		i := refreshInput{session: session(nil), issuer: "main", subject: "alice", jti: jti, gen: gen, rotate: true, grace: 5 * time.Second, now: now}
		if mutate != nil {
			mutate(&i)
		}
		return i
	}
	cases := []struct {
		name string
		in   refreshInput
		want verdict
	}{
		{"the current generation rotates", in("jti-3", 3, nil), verdictRotate},
		{"the current generation is kept when rotation is off", in("jti-3", 3, func(i *refreshInput) { i.rotate = false }), verdictKeep},
		{"the previous generation within the grace period gets the successor", in("jti-2", 2, nil), verdictGrace},
		{"the previous generation after the grace period is reuse", in("jti-2", 2, func(i *refreshInput) { i.now = now.Add(4 * time.Second) }), verdictReuse},
		{"the previous generation with a zero grace period is reuse", in("jti-2", 2, func(i *refreshInput) { i.grace = 0 }), verdictReuse},
		{"an older generation is reuse even within the grace period", in("jti-1", 1, nil), verdictReuse},
		{"the previous jti with the wrong generation is reuse", in("jti-2", 1, nil), verdictReuse},
		{"a generation the session never had is invalid", in("jti-9", 9, nil), verdictInvalid},
		{"the current jti with another generation is reuse", in("jti-3", 2, nil), verdictReuse},
		{"a revoked session refuses even the current token", in("jti-3", 3, func(i *refreshInput) { i.session = session(func(s *keywardv1.Session) { s.Spec.Revoked = true }) }), verdictRevoked},
		{"a session with revokedAt is revoked before its spec says so", in("jti-3", 3, func(i *refreshInput) {
			i.session = session(func(s *keywardv1.Session) { s.Status.RevokedAt = &metav1.Time{Time: now} })
		}), verdictRevoked},
		{"another issuer's session is invalid", in("jti-3", 3, func(i *refreshInput) { i.issuer = "other" }), verdictInvalid},
		{"another subject is invalid", in("jti-3", 3, func(i *refreshInput) { i.subject = "mallory" }), verdictInvalid},
		{"an ended session is invalid", in("jti-3", 3, func(i *refreshInput) { i.now = now.Add(time.Hour) }), verdictInvalid},
		{"a new session is at generation 1 with the sid-derived jti", in("sid-1.1", 1, func(i *refreshInput) {
			i.session = session(func(s *keywardv1.Session) { s.Name = "sid-1"; s.Status = keywardv1.SessionStatus{} })
		}), verdictRotate},
		{"a new session refuses another generation-1 jti", in("jti-1", 1, func(i *refreshInput) {
			i.session = session(func(s *keywardv1.Session) { s.Name = "sid-1"; s.Status = keywardv1.SessionStatus{} })
		}), verdictReuse},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := decideRefresh(tc.in); got != tc.want {
				t.Errorf("decideRefresh = %d, want %d", got, tc.want)
			}
		})
	}
}

func argonPHC(password, salt string, m, tm uint32, p uint8) string {
	key := argon2.IDKey([]byte(password), []byte(salt), tm, m, p, 32)
	return fmt.Sprintf("$argon2id$v=19$m=%d,t=%d,p=%d$%s$%s", m, tm, p,
		base64.RawStdEncoding.EncodeToString([]byte(salt)), base64.RawStdEncoding.EncodeToString(key))
}

func TestParseUsers(t *testing.T) {
	b, _ := bcrypt.GenerateFromPassword([]byte("wonderland"), bcrypt.MinCost)
	b2y := "$2y$" + string(b)[4:] // htpasswd -B writes $2y$
	argon := argonPHC("looking-glass", "saltsaltsalt", 1024, 1, 1)
	data := map[string][]byte{
		HtpasswdDataKey:  []byte("# users\nalice:" + b2y + "\n\nbob:" + argon + "\n"),
		UsersYAMLDataKey: []byte("alice:\n  groups: [admin]\n  claims: {email: a@example.test, team: blue}\nbob:\n  disabled: true\nghost:\n  groups: [x]\n"),
	}
	var dummies DummyCache
	u, err := ParseUsers(data, &dummies)
	if err != nil {
		t.Fatal(err)
	}
	alice, bob := u.Lookup("alice"), u.Lookup("bob")
	if alice == nil || bob == nil || u.Len() != 2 || u.Lookup("ghost") != nil {
		t.Fatalf("users %+v", u.byName)
	}
	if !alice.hash.verify([]byte("wonderland")) || alice.hash.verify([]byte("wrong")) {
		t.Error("bcrypt $2y$ verification")
	}
	if !bob.hash.verify([]byte("looking-glass")) || bob.hash.verify([]byte("wrong")) {
		t.Error("argon2id verification")
	}
	if alice.Email != "a@example.test" || alice.Claims["team"] != "blue" || alice.Groups[0] != "admin" || !bob.Disabled || alice.Disabled {
		t.Errorf("settings: alice %+v bob %+v", alice, bob)
	}
	if u.dummy == nil || u.dummy.verify([]byte("wonderland")) {
		t.Error("dummy hash")
	}

	bad := []struct{ name, htpasswd, yaml, wantErr string }{
		{"a line without colon", "alice\n", "", "want name:hash"},
		{"an unsupported hash", "alice:{SHA}abc\n", "", "unsupported hash"},
		{"a user twice", "alice:" + b2y + "\nalice:" + b2y + "\n", "", "appears twice"},
		{"argon2i is not argon2id", "alice:$argon2i$v=19$m=1024,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA\n", "", "unsupported hash"},
		{"argon2id with huge memory", "alice:" + strings.Replace(argon, "m=1024", "m=4194304", 1) + "\n", "", "out of bounds"},
		{"a reserved claim", "alice:" + b2y + "\n", "alice:\n  claims: {sub: root}\n", "reserved"},
		{"an unknown settings field", "alice:" + b2y + "\n", "alice:\n  admin: true\n", "cannot parse users.yaml"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseUsers(map[string][]byte{HtpasswdDataKey: []byte(tc.htpasswd), UsersYAMLDataKey: []byte(tc.yaml)}, &dummies)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("got %v, want %q", err, tc.wantErr)
			}
		})
	}
}

func TestClientsAuthenticate(t *testing.T) {
	c, err := ParseClients(map[string][]byte{ClientsYAMLDataKey: []byte(
		"svc:\n  secretSHA256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\n  scopes: [read]\n")})
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Authenticate("svc", "test"); got == nil || got.Scopes[0] != "read" {
		t.Errorf("right secret: %v", got)
	}
	for _, tc := range [][2]string{{"svc", "wrong"}, {"nobody", "test"}, {"", ""}} {
		if c.Authenticate(tc[0], tc[1]) != nil {
			t.Errorf("%v authenticated", tc)
		}
	}
	if _, err := ParseClients(map[string][]byte{ClientsYAMLDataKey: []byte("svc:\n  secretSHA256: short\n")}); err == nil {
		t.Error("a short digest was accepted")
	}
}

func TestStrictJSON(t *testing.T) {
	for _, ok := range []string{`{}`, `{"a":[1,{"b":null}]}`, ` {"a":"b"} `} {
		if _, err := strictJSON([]byte(ok)); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{``, `{`, `{"a":1}{}`, `{"a":1,"a":2}`, `{"x":{"a":1,"a":2}}`, `{"a":1} x`, `[1,]`} {
		if _, err := strictJSON([]byte(bad)); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}
