package v1alpha1_test

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
)

func TestEffectiveIssuer(t *testing.T) {
	for _, tc := range []struct {
		name, specIssuer, publicURL, want string
	}{
		{"spec.issuer is used as written", "https://auth.example.com/realm", "http://localhost:8080", "https://auth.example.com/realm"},
		{"a trailing slash of spec.issuer is dropped, so issuer and validator agree", "https://auth.example.com/", "http://localhost:8080", "https://auth.example.com"},
		{"without spec.issuer the public URL, namespace and name make the iss", "", "http://localhost:8080", "http://localhost:8080/demo/main"},
		{"a trailing slash of the public URL is dropped", "", "https://keyward.example.com/", "https://keyward.example.com/demo/main"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ti := &keywardv1.TokenIssuer{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "main"}}
			ti.Spec.Issuer = tc.specIssuer
			if got := ti.EffectiveIssuer(tc.publicURL); got != tc.want {
				t.Errorf("EffectiveIssuer(%q) = %q, want %q", tc.publicURL, got, tc.want)
			}
		})
	}
}
