package v1alpha1_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
)

func pkcs8PEM(t *testing.T, key any) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

func importing(sk *keywardv1.SigningKey, secretName string) *keywardv1.SigningKey {
	sk.Spec.Import = &keywardv1.KeyImport{SecretRef: keywardv1.LocalObjectReference{Name: secretName}}
	return sk
}

func TestSigningKeyImport(t *testing.T) {
	ns := newNamespace(t)
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	mustCreate(t, secret(ns, "p256", map[string][]byte{"key.pem": pkcs8PEM(t, p256)}))
	mustCreate(t, secret(ns, "rsa", map[string][]byte{"key.pem": pkcs8PEM(t, rsaKey)}))
	mustCreate(t, secret(ns, "no-pem", map[string][]byte{"key": []byte("0123456789abcdef0123456789abcdef")}))

	t.Run("a P-256 key imported as ES256 is accepted without warnings", func(t *testing.T) {
		c, w := newClient(t)
		if err := c.Create(ctxFor(t), importing(signingKey(ns, "good", keywardv1.AlgorithmES256), "p256")); err != nil {
			t.Fatal(err)
		}
		if got := w.take(); len(got) != 0 {
			t.Errorf("warnings: %q", got)
		}
	})
	t.Run("an RSA key imported as ES256 is refused, naming the Secret and the mismatch", func(t *testing.T) {
		c, _ := newClient(t)
		err := c.Create(ctxFor(t), importing(signingKey(ns, "rsa-as-es", keywardv1.AlgorithmES256), "rsa"))
		if !apierrors.IsInvalid(err) {
			t.Fatalf("want Invalid, got %v", err)
		}
		containsAll(t, "refusal", refusal(t, err), "spec.import.secretRef.name", `Secret "rsa" cannot be imported as a ES256 key`,
			"an RSA key cannot sign ES256")
	})
	t.Run("a Secret without key.pem is refused", func(t *testing.T) {
		c, _ := newClient(t)
		err := c.Create(ctxFor(t), importing(signingKey(ns, "no-pem", keywardv1.AlgorithmEdDSA), "no-pem"))
		containsAll(t, "refusal", refusal(t, err), `secret has no data key "key.pem"`)
	})
	t.Run("a Secret that does not exist yet is a warning", func(t *testing.T) {
		c, w := newClient(t)
		if err := c.Create(ctxFor(t), importing(signingKey(ns, "later", keywardv1.AlgorithmES256), "applied-later")); err != nil {
			t.Fatal(err)
		}
		oneWarning(t, w.take(), `Secret "applied-later" does not exist (yet)`, "ImportSecretNotFound")
	})
	t.Run("an update that leaves spec.import alone is not checked, so keys can always be revoked", func(t *testing.T) {
		c, _ := newClient(t)
		sk := importing(signingKey(ns, "revocable", keywardv1.AlgorithmES256), "p256")
		if err := c.Create(ctxFor(t), sk); err != nil {
			t.Fatal(err)
		}
		// The Secret changes under the SigningKey: now it would be refused.
		s := &corev1.Secret{}
		if err := c.Get(ctxFor(t), client.ObjectKey{Namespace: ns, Name: "p256"}, s); err != nil {
			t.Fatal(err)
		}
		s.Data["key.pem"] = pkcs8PEM(t, rsaKey)
		if err := c.Update(ctxFor(t), s); err != nil {
			t.Fatal(err)
		}
		sk.Spec.RevokedKeyIDs = []string{"some-kid"}
		if err := c.Update(ctxFor(t), sk); err != nil {
			t.Fatalf("revoking a key was refused: %v", err)
		}
		// Changing the algorithm is checked again.
		sk.Spec.Algorithm = keywardv1.AlgorithmES384
		containsAll(t, "refusal", refusal(t, c.Update(ctxFor(t), sk)), "cannot be imported as a ES384 key")
	})
}

func TestTokenIssuerReferences(t *testing.T) {
	ns := newNamespace(t)
	mustCreate(t, signingKey(ns, "es", keywardv1.AlgorithmES256))
	mustCreate(t, signingKey(ns, "other", keywardv1.AlgorithmES256))
	mustCreate(t, signingKey(ns, "hs", keywardv1.AlgorithmHS256))
	mustCreate(t, usersSecret(ns, "users"))
	mustCreate(t, secret(ns, "not-users", map[string][]byte{"passwords": []byte("alice:x")}))
	mustCreate(t, secret(ns, "bad-clients", map[string][]byte{"clients.yaml": []byte("ci: {secretSHA256: nothex}")}))

	t.Run("a TokenIssuer whose references are all in order is accepted without warnings", func(t *testing.T) {
		c, w := newClient(t)
		if err := c.Create(ctxFor(t), tokenIssuer(ns, "good", "es", "users")); err != nil {
			t.Fatal(err)
		}
		if got := w.take(); len(got) != 0 {
			t.Errorf("warnings: %q", got)
		}
	})
	t.Run("a TokenIssuer with the iss and SigningKey of another is refused with the reason", func(t *testing.T) {
		c, _ := newClient(t)
		first := tokenIssuer(ns, "first", "es", "users")
		first.Spec.Issuer = "https://login.example.com"
		if err := c.Create(ctxFor(t), first); err != nil {
			t.Fatal(err)
		}
		twin := tokenIssuer(ns, "twin", "es", "users")
		twin.Spec.Issuer = "https://login.example.com/" // the same iss: trailing slash removed
		err := c.Create(ctxFor(t), twin)
		if !apierrors.IsInvalid(err) {
			t.Fatalf("want Invalid, got %v", err)
		}
		containsAll(t, "refusal", refusal(t, err), "spec.issuer", `TokenIssuer "first" has the same iss and the same SigningKey "es"`,
			"validators could not tell their tokens apart")

		// A TokenIssuer without spec.issuer whose default iss another one claims explicitly.
		claimer := tokenIssuer(ns, "claimer", "es", "users")
		claimer.Spec.Issuer = testPublicURL + "/" + ns + "/defaulted"
		if err := c.Create(ctxFor(t), claimer); err != nil {
			t.Fatal(err)
		}
		containsAll(t, "refusal", refusal(t, c.Create(ctxFor(t), tokenIssuer(ns, "defaulted", "es", "users"))), `TokenIssuer "claimer"`)
	})
	t.Run("the same iss with another SigningKey is accepted with a warning", func(t *testing.T) {
		c, w := newClient(t)
		ti := tokenIssuer(ns, "same-iss-other-key", "other", "users")
		ti.Spec.Issuer = "https://login.example.com"
		if err := c.Create(ctxFor(t), ti); err != nil {
			t.Fatal(err)
		}
		oneWarning(t, w.take(), `TokenIssuer "first" has the same iss "https://login.example.com"`)
	})
	t.Run("an update that leaves iss and SigningKey alone is not checked for a conflict; one that changes them is", func(t *testing.T) {
		c, _ := newClient(t)
		ti := &keywardv1.TokenIssuer{}
		if err := c.Get(ctxFor(t), client.ObjectKey{Namespace: ns, Name: "same-iss-other-key"}, ti); err != nil {
			t.Fatal(err)
		}
		ti.Spec.Audiences = []string{"api"}
		if err := c.Update(ctxFor(t), ti); err != nil {
			t.Fatal(err)
		}
		ti.Spec.SigningKeyRef.Name = "es"
		containsAll(t, "refusal", refusal(t, c.Update(ctxFor(t), ti)), `TokenIssuer "first" has the same iss`)
	})
	t.Run("references that do not exist yet are warnings", func(t *testing.T) {
		c, w := newClient(t)
		ti := tokenIssuer(ns, "early", "applied-later", "users-later")
		ti.Spec.Clients = &keywardv1.SecretReference{SecretRef: keywardv1.LocalObjectReference{Name: "clients-later"}}
		if err := c.Create(ctxFor(t), ti); err != nil {
			t.Fatal(err)
		}
		got := w.take()
		oneWarning(t, got, "spec.signingKeyRef", `SigningKey "applied-later" does not exist (yet)`, "SigningKeyNotFound")
		oneWarning(t, got, "spec.users.secretRef.name", `Secret "users-later" does not exist (yet)`)
		oneWarning(t, got, "spec.clients.secretRef.name", `Secret "clients-later" does not exist (yet)`)
	})
	t.Run("a users Secret without htpasswd and an invalid clients Secret are warnings", func(t *testing.T) {
		c, w := newClient(t)
		ti := tokenIssuer(ns, "bad-secrets", "es", "not-users")
		ti.Spec.Clients = &keywardv1.SecretReference{SecretRef: keywardv1.LocalObjectReference{Name: "bad-clients"}}
		if err := c.Create(ctxFor(t), ti); err != nil {
			t.Fatal(err)
		}
		got := w.take()
		oneWarning(t, got, "spec.users.secretRef.name", `Secret "not-users": no data key "htpasswd"`)
		oneWarning(t, got, "spec.clients.secretRef.name", `Secret "bad-clients"`, "secretSHA256 must be 64 hex digits")
	})
	t.Run("an HS SigningKey is a warning: only validators allowed HS keys verify its tokens", func(t *testing.T) {
		c, w := newClient(t)
		if err := c.Create(ctxFor(t), tokenIssuer(ns, "hs", "hs", "users")); err != nil {
			t.Fatal(err)
		}
		oneWarning(t, w.take(), `SigningKey "hs" uses HS256`, "--allow-hs-keys")
	})
	t.Run("a SigningKey that is not Ready is a warning with its reason", func(t *testing.T) {
		c, w := newClient(t)
		sk := signingKey(ns, "broken", keywardv1.AlgorithmES256)
		mustCreate(t, sk)
		sk.Status.Conditions = []metav1.Condition{{Type: keywardv1.ConditionReady, Status: metav1.ConditionFalse, Reason: "ImportInvalid",
			Message: "the key does not fit", LastTransitionTime: metav1.Now(), ObservedGeneration: sk.Generation}}
		if err := c.Status().Update(ctxFor(t), sk); err != nil {
			t.Fatal(err)
		}
		if err := c.Create(ctxFor(t), tokenIssuer(ns, "on-broken", "broken", "users")); err != nil {
			t.Fatal(err)
		}
		oneWarning(t, w.take(), `SigningKey "broken" is not Ready (ImportInvalid): the key does not fit`)
	})
}

func TestAccessPolicy(t *testing.T) {
	ns := newNamespace(t)
	mustCreate(t, signingKey(ns, "es", keywardv1.AlgorithmES256))
	mustCreate(t, usersSecret(ns, "users"))
	mustCreate(t, tokenIssuer(ns, "web", "es", "users"))

	t.Run("a policy naming existing issuers with a good expression is accepted without warnings", func(t *testing.T) {
		c, w := newClient(t)
		if err := c.Create(ctxFor(t), policy(ns, "good", "'admin' in claims.groups")); err != nil {
			t.Fatal(err)
		}
		if got := w.take(); len(got) != 0 {
			t.Errorf("warnings: %q", got)
		}
	})
	t.Run("a policy naming an issuer that does not exist is accepted with a warning", func(t *testing.T) {
		c, w := newClient(t)
		if err := c.Create(ctxFor(t), policy(ns, "missing-issuer", "", "web", "nobody")); err != nil {
			t.Fatalf("refused: %v", err)
		}
		got := w.take()
		oneWarning(t, got, "spec.rules[0].issuers[1].name", `TokenIssuer "nobody" does not exist (yet)`, "denied")
		if len(got) != 1 {
			t.Errorf("want only the warning about nobody, got %q", got)
		}
		if err := c.Get(ctxFor(t), client.ObjectKey{Namespace: ns, Name: "missing-issuer"}, &keywardv1.AccessPolicy{}); err != nil {
			t.Errorf("the policy was not stored: %v", err)
		}
	})
	t.Run("expressions that do not compile are refused, naming the rule", func(t *testing.T) {
		for name, when := range map[string]string{
			"syntax":        "claims.sub ==",
			"not-bool":      "claims.sub + 'x'",
			"unknown-var":   "user.name == 'alice'",
			"unknown-macro": "claims.groups.anything(g, g == 'a')",
		} {
			t.Run(name, func(t *testing.T) {
				c, _ := newClient(t)
				err := c.Create(ctxFor(t), policy(ns, "bad-"+name, when))
				if !apierrors.IsInvalid(err) {
					t.Fatalf("want Invalid, got %v", err)
				}
				containsAll(t, "refusal", refusal(t, err), "spec.rules[0].when", "does not compile")
			})
		}
	})
	t.Run("an update keeping an expression that no longer compiles is accepted; a new one is checked", func(t *testing.T) {
		// A policy stored while the webhook was down (or by an older keyward).
		srv.stop()
		p := policy(ns, "legacy", "claims.sub ==")
		mustCreate(t, p)
		if err := srv.start(suiteCtx); err != nil {
			t.Fatal(err)
		}
		c, _ := newClient(t)
		p.Spec.Hosts = append(p.Spec.Hosts, "other.example.com")
		if err := c.Update(ctxFor(t), p); err != nil {
			t.Fatalf("an update keeping the expression was refused: %v", err)
		}
		p.Spec.Rules = append(p.Spec.Rules, keywardv1.AccessRule{Paths: []string{"/x"}, Issuers: p.Spec.Rules[0].Issuers, When: "claims."})
		containsAll(t, "refusal", refusal(t, c.Update(ctxFor(t), p)), "spec.rules[1].when")
	})
}

// TestScope checks what the API server sends to the webhook, and that the cluster keeps
// working when the webhook is down.
func TestScope(t *testing.T) {
	t.Run("the configuration covers keyward.dev alone, fails open and times out quickly", func(t *testing.T) {
		list := &admissionregistrationv1.ValidatingWebhookConfigurationList{}
		if err := env.Client.List(ctxFor(t), list); err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, cfg := range list.Items {
			for _, w := range cfg.Webhooks {
				n++
				for _, r := range w.Rules {
					if len(r.APIGroups) != 1 || r.APIGroups[0] != keywardv1.GroupVersion.Group {
						t.Errorf("webhook %s covers API groups %q", w.Name, r.APIGroups)
					}
					for _, res := range r.Resources {
						if res == "*" || res == "*/*" {
							t.Errorf("webhook %s covers resources %q", w.Name, res)
						}
					}
				}
				if w.FailurePolicy == nil || *w.FailurePolicy != admissionregistrationv1.Ignore {
					t.Errorf("webhook %s: failurePolicy %v, want Ignore", w.Name, w.FailurePolicy)
				}
				if w.TimeoutSeconds == nil || *w.TimeoutSeconds > 5 {
					t.Errorf("webhook %s: timeoutSeconds %v, want at most 5", w.Name, w.TimeoutSeconds)
				}
				if w.SideEffects == nil || *w.SideEffects != admissionregistrationv1.SideEffectClassNone {
					t.Errorf("webhook %s: sideEffects %v, want None", w.Name, w.SideEffects)
				}
			}
		}
		if n != 3 {
			t.Errorf("want 3 webhooks (SigningKey, TokenIssuer, AccessPolicy), got %d", n)
		}
	})

	t.Run("objects outside keyward.dev are never sent to the webhook", func(t *testing.T) {
		ns := newNamespace(t)
		before := srv.calls.Load()
		mustCreate(t, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "cm"}, Data: map[string]string{"a": "b"}})
		mustCreate(t, secret(ns, "s", map[string][]byte{"a": []byte("b")}))
		if got := srv.calls.Load() - before; got != 0 {
			t.Errorf("the webhook received %d requests for a ConfigMap and a Secret", got)
		}
		mustCreate(t, policy(ns, "p", ""))
		if got := srv.calls.Load() - before; got != 1 {
			t.Errorf("the webhook received %d requests for one AccessPolicy, want 1", got)
		}
	})

	t.Run("with the webhook down, the cluster and keyward's own objects keep working", func(t *testing.T) {
		ns := newNamespace(t)
		srv.stop()
		t.Cleanup(func() {
			if err := srv.start(suiteCtx); err != nil {
				t.Errorf("cannot restart the webhook: %v", err)
			}
		})
		mustCreate(t, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "cm"}})
		mustCreate(t, secret(ns, "s", map[string][]byte{"a": []byte("b")}))
		mustCreate(t, signingKey(ns, "es", keywardv1.AlgorithmES256))
		mustCreate(t, tokenIssuer(ns, "web", "es", "users"))
		// failurePolicy Ignore: even what the webhook would refuse is admitted (the controller
		// reports it; validators deny what an invalid rule matches).
		mustCreate(t, policy(ns, "unchecked", "claims.sub =="))
		sk := &keywardv1.SigningKey{}
		if err := env.Client.Get(ctxFor(t), client.ObjectKey{Namespace: ns, Name: "es"}, sk); err != nil {
			t.Fatal(err)
		}
		sk.Spec.RevokedKeyIDs = []string{"compromised"}
		if err := env.Client.Update(ctxFor(t), sk); err != nil {
			t.Errorf("revoking a key with the webhook down: %v", err)
		}
	})
}
