package v1alpha1_test

import (
	"fmt"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Validation of the Session resource and of TokenIssuer.spec.loginThrottling, against a real
// kube-apiserver.

func baseSessionSpec() object {
	return object{
		"issuerRef": object{"name": "main"},
		"subject":   "alice",
		"clientID":  "svc",
		"scope":     "read write",
		"expiresAt": "2030-01-01T00:00:00Z",
	}
}

func TestSessionValidation(t *testing.T) {
	ns := newNamespace(t)
	cases := []celCase{
		{name: "the base object is accepted", mutate: func(object) {}},
		{name: "a revoked session is accepted", mutate: func(o object) { o["revoked"] = true }},
		{name: "a session without subject is refused", mutate: func(o object) { delete(o, "subject") }, wantErr: "spec.subject: Required value"},
		{name: "an empty subject is refused", mutate: func(o object) { o["subject"] = "" }, wantErr: "spec.subject in body should be at least 1 chars long"},
		{name: "a subject longer than 256 characters is refused", mutate: func(o object) { o["subject"] = strings.Repeat("s", 257) }, wantErr: "spec.subject: Too long"},
		{name: "a session without expiresAt is refused", mutate: func(o object) { delete(o, "expiresAt") }, wantErr: "spec.expiresAt: Required value"},
		{name: "a session without issuerRef is refused", mutate: func(o object) { delete(o, "issuerRef") }, wantErr: "spec.issuerRef: Required value"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			spec := baseSessionSpec()
			tc.mutate(spec)
			checkCreate(t, newObject("Session", ns, fmt.Sprintf("s-%d", i), spec), tc.wantErr)
		})
	}
}

func TestTokenIssuerLoginThrottlingValidation(t *testing.T) {
	ns := newNamespace(t)
	base := func() object {
		return object{
			"signingKeyRef": object{"name": "main"},
			"users":         object{"secretRef": object{"name": "users"}},
		}
	}
	cases := []celCase{
		{name: "custom limits are accepted", mutate: func(o object) {
			set(o, object{"burst": 3, "perMinute": 1}, "loginThrottling", "perUsername")
			set(o, object{"burst": 10000, "perMinute": 60000}, "loginThrottling", "perClientAddress")
		}},
		{name: "a zero burst is refused", mutate: func(o object) { set(o, 0, "loginThrottling", "perUsername", "burst") }, wantErr: "spec.loginThrottling.perUsername.burst in body should be greater than or equal to 1"},
		{name: "a burst over 10000 is refused", mutate: func(o object) { set(o, 10001, "loginThrottling", "perClientAddress", "burst") }, wantErr: "spec.loginThrottling.perClientAddress.burst in body should be less than or equal to 10000"},
		{name: "a zero rate is refused", mutate: func(o object) { set(o, 0, "loginThrottling", "perClientAddress", "perMinute") }, wantErr: "spec.loginThrottling.perClientAddress.perMinute in body should be greater than or equal to 1"},
		{name: "a rate over 60000 per minute is refused", mutate: func(o object) { set(o, 60001, "loginThrottling", "perUsername", "perMinute") }, wantErr: "spec.loginThrottling.perUsername.perMinute in body should be less than or equal to 60000"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			spec := base()
			tc.mutate(spec)
			checkCreate(t, newObject("TokenIssuer", ns, fmt.Sprintf("ti-%d", i), spec), tc.wantErr)
		})
	}
	t.Run("an issuer without loginThrottling gets the defaults", func(t *testing.T) {
		obj := newObject("TokenIssuer", ns, "defaults", base())
		if err := k8s.Create(testContext(t), obj, client.DryRunAll); err != nil {
			t.Fatal(err)
		}
		got, _, _ := unstructured.NestedMap(obj.Object, "spec", "loginThrottling")
		want := "map[perClientAddress:map[burst:20 perMinute:30] perUsername:map[burst:5 perMinute:5]]"
		if fmt.Sprint(got) != want {
			t.Errorf("loginThrottling defaults %v, want %s", got, want)
		}
	})
}
