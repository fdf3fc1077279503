package e2e

import (
	"context"
	"net"
	"net/http"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
	"github.com/keyward/keyward/internal/manager"
	"github.com/keyward/keyward/internal/token"
	"github.com/keyward/keyward/internal/validator"
)

// TestHSKeysOnlyWithTheFlag: an HS256 SigningKey's tokens are denied by the validators
// started without --allow-hs-keys (they never read Secrets), and allowed by a validator set up
// in-process with AllowHSKeys, which reads the key-set Secret.
func TestHSKeysOnlyWithTheFlag(t *testing.T) {
	ctx := t.Context()
	ns, host := "hs-keys", "hs.example.test"
	e := &issuerEnv{ns: ns, host: host}
	if err := k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	for _, o := range []client.Object{
		&keywardv1.SigningKey{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "main"}, Spec: keywardv1.SigningKeySpec{Algorithm: keywardv1.AlgorithmHS256}},
		&keywardv1.TokenIssuer{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "main"}, Spec: keywardv1.TokenIssuerSpec{
			SigningKeyRef: keywardv1.LocalObjectReference{Name: "main"},
			Users:         keywardv1.SecretReference{SecretRef: keywardv1.LocalObjectReference{Name: "users"}}}},
		&keywardv1.AccessPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "app"}, Spec: keywardv1.AccessPolicySpec{
			Hosts: []string{host},
			Rules: []keywardv1.AccessRule{{Paths: []string{"/"}, Issuers: []keywardv1.IssuerReference{{Name: "main"}}}}}},
	} {
		if err := k8s.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	e.signer = e.activeSigner(t, "")
	if e.signer.Algorithm() != keywardv1.AlgorithmHS256 {
		t.Fatalf("signer algorithm = %s", e.signer.Algorithm())
	}
	tok := e.token(t, nil)

	// In-process validator with AllowHSKeys, on its own manager.
	mgr, err := manager.New(env.Config, manager.Options{MetricsBindAddress: "0", HealthProbeBindAddress: "0", SkipControllerNameValidation: true})
	if err != nil {
		t.Fatal(err)
	}
	addrc := make(chan string, 1)
	if err := validator.Setup(ctx, mgr, validator.Options{
		AuthzAddr: "127.0.0.1:0", AllowHSKeys: true,
		OnListening: func(_ string, a net.Addr) { addrc <- a.String() },
	}); err != nil {
		t.Fatal(err)
	}
	mctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { _ = mgr.Start(mctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	hsValidator := &validatorProc{name: "in-process validator with AllowHSKeys", httpAddr: <-addrc}

	eventually(t, 30*time.Second, "the validator with AllowHSKeys allows the HS256 token", func() bool {
		return envoyHTTP(t, hsValidator, "GET", host, "/api", tok).StatusCode == http.StatusOK
	})
	for _, v := range validators {
		if resp := envoyHTTP(t, v, "GET", host, "/api", tok); resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s (no --allow-hs-keys): %d, want 401", v.name, resp.StatusCode)
		}
	}
	// A token signed with another secret under the same kid is refused.
	forged, err := token.NewSignerFromKey(e.signer.KID(), keywardv1.AlgorithmHS256, []byte("0123456789abcdef0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}
	e.signer = forged
	if resp := envoyHTTP(t, hsValidator, "GET", host, "/api", e.token(t, nil)); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("a token under the kid with another secret: %d, want 401", resp.StatusCode)
	}
}
