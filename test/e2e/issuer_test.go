package e2e

import (
	"bytes"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
)

// TestIssuedTokens logs in through a `keyward issuer` process (the simplejwt endpoint) and
// uses its tokens through nginx and both validators: the access token passes with the user's
// identity, the refresh token does not, and a logout (blacklist) revokes the session at both
// validators within one second.
func TestIssuedTokens(t *testing.T) {
	e := demoEnv(t)
	ctx := t.Context()
	hash, err := bcrypt.GenerateFromPassword([]byte("wonderland"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	users := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: e.ns, Name: "users", Labels: map[string]string{keywardv1.LabelUse: keywardv1.UseReferenced}},
		StringData: map[string]string{
			"htpasswd":   "alice:" + string(hash) + "\n",
			"users.yaml": "alice:\n  groups: [dev, admin]\n",
		},
	}
	if err := k8s.Create(ctx, users); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, "the TokenIssuer is Ready", func() bool {
		var ti keywardv1.TokenIssuer
		return k8s.Get(ctx, client.ObjectKey{Namespace: e.ns, Name: "main"}, &ti) == nil &&
			meta.IsStatusConditionTrue(ti.Status.Conditions, keywardv1.ConditionReady)
	})

	var pair struct{ Access, Refresh string }
	eventually(t, 30*time.Second, "alice can log in at the issuer", func() bool {
		status, body := postJSON(t, "/"+e.ns+"/main/api/token/", map[string]string{"username": "alice", "password": "wonderland"})
		return status == http.StatusOK && json.Unmarshal(body, &pair) == nil && pair.Access != "" && pair.Refresh != ""
	})

	resp := viaNginx(t, "GET", e.host, "/api", pair.Access, map[string]string{"X-Auth-Request-User": "mallory"})
	if resp.StatusCode != 200 {
		t.Fatalf("the issued access token through nginx: %d", resp.StatusCode)
	}
	h := upstreamHeaders(t, resp)
	if got := h.Get("X-Auth-Request-User"); got != "alice" {
		t.Errorf("upstream X-Auth-Request-User = %q, want alice", got)
	}
	if got := h.Get("X-Groups"); got != "dev,admin" {
		t.Errorf("upstream X-Groups = %q, want dev,admin", got)
	}
	if resp := viaNginx(t, "GET", e.host, "/admin/", pair.Access, nil); resp.StatusCode != 200 {
		t.Errorf("/admin/ with the admin group: %d", resp.StatusCode)
	}
	if resp := viaNginx(t, "GET", e.host, "/api", pair.Refresh, nil); resp.StatusCode != 401 {
		t.Errorf("the refresh token as an access token: %d, want 401", resp.StatusCode)
	}
	for _, v := range validators {
		if resp := envoyHTTP(t, v, "GET", e.host, "/api", pair.Access); resp.StatusCode != 200 {
			t.Fatalf("%s: the issued access token: %d", v.name, resp.StatusCode)
		}
	}

	// Logout: the issuer revokes the session (spec.revoked and the keyward.dev/revoked label).
	status, body := postJSON(t, "/"+e.ns+"/main/api/token/blacklist/", map[string]string{"refresh": pair.Refresh})
	if status != http.StatusOK {
		t.Fatalf("blacklist: %d %s", status, body)
	}
	loggedOut := time.Now()
	for _, v := range validators {
		for {
			resp := envoyHTTP(t, v, "GET", e.host, "/api", pair.Access)
			if resp.StatusCode == 401 {
				t.Logf("%s denies the logged-out session's access token %s after the logout returned", v.name, time.Since(loggedOut).Round(time.Millisecond))
				break
			}
			if time.Since(loggedOut) > time.Second {
				t.Fatalf("%s still answers %d more than 1s after the logout", v.name, resp.StatusCode)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if resp := viaNginx(t, "GET", e.host, "/api", pair.Access, nil); resp.StatusCode != 401 {
		t.Errorf("nginx after the logout: %d, want 401", resp.StatusCode)
	}
}

func postJSON(t *testing.T, path string, body any) (int, []byte) {
	t.Helper()
	data, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, "http://"+issuerAddr+path, bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp := do(t, req)
	return resp.StatusCode, resp.Body
}
