package security

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc/codes"
)

// minCases is the catalogue's floor (issue 6 asks for at least 120).
const minCases = 120

// TestCatalogue runs every attack through every channel it applies to and checks the answer.
func TestCatalogue(t *testing.T) {
	t.Parallel()
	cs := catalogue()
	if len(cs) < minCases {
		t.Errorf("the catalogue has %d cases, want at least %d", len(cs), minCases)
	}
	perCategory := map[string]int{}
	perChannel := map[string]int{}
	names := map[string]bool{}
	allowsAuthz, allowsVerify := 0, 0
	for i := range cs {
		a := &cs[i]
		if a.source == "" || a.category == "" || a.name == "" {
			t.Errorf("case %d (%q) lacks a category, name or source", i, a.name)
		}
		if names[a.category+"/"+a.name] {
			t.Errorf("case %q is listed twice", a.name)
		}
		names[a.category+"/"+a.name] = true
		chs := a.channels()
		if len(chs) == 0 {
			t.Errorf("case %q runs on no channel", a.name)
		}
		perCategory[a.category]++
		if a.want == allow {
			allowsAuthz++
		}
		if a.verify == allow {
			allowsVerify++
		}
		for _, ch := range chs {
			perChannel[ch]++
		}
		t.Run(a.category+"/"+a.name, func(t *testing.T) { runAttack(t, a) })
	}
	var b strings.Builder
	for _, c := range sortedKeys(toStrings(perCategory)) {
		fmt.Fprintf(&b, " %s=%d", c, perCategory[c])
	}
	t.Logf("%d cases;%s; runs per channel: http=%d grpc=%d verify=%d; expected allows: validator %d, verify %d",
		len(cs), b.String(), perChannel[chHTTP], perChannel[chGRPC], perChannel[chVerify], allowsAuthz, allowsVerify)
}

func toStrings(m map[string]int) map[string]string {
	out := map[string]string{}
	for k := range m {
		out[k] = ""
	}
	return out
}

func runAttack(t *testing.T, a *attack) {
	ctx := t.Context()
	var tok string
	if a.tok != nil {
		tok = a.tok()
	}
	path, host := a.path, a.host
	if path == "" {
		path = "/api/items"
	}
	if host == "" {
		host = appHost
	}
	chs := a.channels()
	if slices.Contains(chs, chHTTP) {
		raw, trusted := "", false
		if a.http != nil {
			raw, trusted = a.http()
		} else {
			raw = rawAuthzHost(host, path, "Bearer "+tok)
		}
		want := a.want
		if a.httpWant != 0 {
			want = a.httpWant
		}
		code, hdr, err := httpAuthz(ctx, raw, trusted)
		switch {
		case err != nil:
			t.Errorf("http: %v", err)
		case code == codeReset && a.httpResetOK:
		case code != want:
			t.Errorf("http: %s, want %s", statusLine(code), statusLine(want))
		case code == http.StatusUnauthorized && hdr.Get("WWW-Authenticate") != `Bearer error="invalid_token"`:
			t.Errorf("http: 401 with WWW-Authenticate %q", hdr.Get("WWW-Authenticate"))
		case a.httpCheck != nil:
			if err := a.httpCheck(hdr); err != nil {
				t.Errorf("http: %v", err)
			}
		}
	}
	if slices.Contains(chs, chGRPC) {
		var req *authv3.CheckRequest
		if a.grpc != nil {
			req = a.grpc()
		} else {
			req = checkReqHost(host, path, "Bearer "+tok, nil)()
		}
		want, wantHTTP := grpcCodeOf(a.want), deniedHTTP(a.want)
		if a.grpcWant != codes.OK {
			want = a.grpcWant
			if want == codes.PermissionDenied {
				wantHTTP = typev3.StatusCode_Forbidden
			}
		}
		code, resp, err := grpcAuthz(ctx, req)
		switch {
		case err != nil:
			t.Errorf("grpc: %v", err)
		case code != want:
			t.Errorf("grpc: %v, want %v", code, want)
		case resp != nil && code != codes.OK && resp.GetDeniedResponse().GetStatus().GetCode() != wantHTTP:
			t.Errorf("grpc: denied with HTTP status %v, want %v", resp.GetDeniedResponse().GetStatus().GetCode(), wantHTTP)
		case a.grpcCheck != nil && resp != nil:
			if err := a.grpcCheck(resp); err != nil {
				t.Errorf("grpc: %v", err)
			}
		}
	}
	if slices.Contains(chs, chVerify) {
		k := suite.main
		if a.verifyAt != nil {
			k = a.verifyAt()
		}
		code, errCode, err := verifyAt(ctx, k, tok)
		switch {
		case err != nil:
			t.Errorf("verify: %v", err)
		case code != a.verify:
			t.Errorf("verify: %s, want %s", statusLine(code), statusLine(a.verify))
		case code == http.StatusUnauthorized && errCode != "token_not_valid":
			t.Errorf("verify: 401 with code %q, want token_not_valid", errCode)
		}
	}
}

func deniedHTTP(status int) typev3.StatusCode {
	if status == http.StatusForbidden {
		return typev3.StatusCode_Forbidden
	}
	return typev3.StatusCode_Unauthorized
}
