package security

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"testing"
)

// TestMalleatedRefreshTokenIsTheSameToken: the high-S twin of an ES256 refresh token verifies
// (ADR 0013), and refresh rotation treats it as the token it copies: using the twin rotates
// the session, and the original is then a reused refresh token, which revokes the session.
// Issuer "other" has no reuse grace period.
func TestMalleatedRefreshTokenIsTheSameToken(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	k := suite.other
	body, _ := json.Marshal(map[string]string{"username": "alice", "password": "wonderland"})
	code, out := postJSONBody(ctx, t, k.base()+"api/token/", body)
	if code != http.StatusOK {
		t.Fatalf("login: %d", code)
	}
	r1 := out["refresh"]
	refresh := func(tok string) (int, string) {
		b, _ := json.Marshal(map[string]string{"refresh": tok})
		code, out := postJSONBody(ctx, t, k.base()+"api/token/refresh/", b)
		return code, out["refresh"]
	}
	code, r2 := refresh(highS(r1))
	if code != http.StatusOK || r2 == "" {
		t.Fatalf("refresh with the high-S twin: %d", code)
	}
	if code, _ := refresh(r1); code != http.StatusUnauthorized {
		t.Fatalf("the original after its twin was used: %d, want 401 (reuse)", code)
	}
	if code, _ := refresh(r2); code != http.StatusUnauthorized {
		t.Fatalf("the successor after reuse was detected: %d, want 401 (session revoked)", code)
	}
}

func postJSONBody(ctx context.Context, t *testing.T, url string, body []byte) (int, map[string]string) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	out := map[string]string{}
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}
