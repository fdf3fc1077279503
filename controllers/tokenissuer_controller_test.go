package controllers_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
	"github.com/keyward/keyward/controllers"
)

// missingSecretRetry bounds how long a TokenIssuer takes to notice a Secret created without
// keyward's label: no watch event reaches keyward for it, so the controller looks again every
// 30s (controllers.missingReferenceRetry), plus slack for a loaded machine.
const missingSecretRetry = 30*time.Second + 15*time.Second

const htpasswd = "alice:$2y$10$8K1p/a0dL1LXMIgoEDFrwOfMQbLgtnOoKsWc.6U6H0llP3puzeDGe\n"

func usersSecret(ns, name string, data map[string][]byte) *corev1.Secret {
	return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Data: data}
}

// waitTokenIssuer waits until the TokenIssuer's Ready condition, for its current generation,
// has the given status and reason.
func waitTokenIssuer(t *testing.T, ns, name string, status metav1.ConditionStatus, reason string, timeout time.Duration) *keywardv1.TokenIssuer {
	t.Helper()
	ti := &keywardv1.TokenIssuer{}
	eventually(t, timeout, func(ctx context.Context) error {
		if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, ti); err != nil {
			return err
		}
		c, err := readyCondition(ti.Status.Conditions)
		if err != nil {
			return err
		}
		if c.Status != status || c.Reason != reason || c.ObservedGeneration != ti.Generation {
			return fmt.Errorf("Ready is %s/%s (generation %d of %d): %s, want %s/%s", c.Status, c.Reason, c.ObservedGeneration, ti.Generation, c.Message, status, reason)
		}
		return nil
	})
	return ti
}

// TestTokenIssuerReadiness follows one TokenIssuer whose references appear after it and then
// go away: the controller re-checks on its own, without any change to the TokenIssuer.
func TestTokenIssuerReadiness(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t)
	createTokenIssuer(t, ns, "issuer", tokenIssuerSpec("signing", "users", nil))
	waitTokenIssuer(t, ns, "issuer", metav1.ConditionFalse, keywardv1.ReasonSigningKeyNotFound, 20*time.Second)

	sk := newSigningKey(ns, "signing", keywardv1.AlgorithmES256, 720*time.Hour, 10*time.Minute)
	create(t, sk)
	waitTokenIssuer(t, ns, "issuer", metav1.ConditionFalse, keywardv1.ReasonUsersSecretNotFound, 30*time.Second)

	// Created as users create it: without keyward's label.
	create(t, usersSecret(ns, "users", map[string][]byte{controllers.UsersDataKey: []byte(htpasswd)}))
	ti := waitTokenIssuer(t, ns, "issuer", metav1.ConditionTrue, keywardv1.ReasonReady, missingSecretRetry)
	if ti.Status.ObservedGeneration != ti.Generation {
		t.Errorf("observedGeneration = %d, want %d", ti.Status.ObservedGeneration, ti.Generation)
	}
	wantIss := "https://keyward.test/" + ns + "/issuer"
	if ti.Status.Issuer != wantIss || ti.Status.Endpoints == nil ||
		ti.Status.Endpoints.JWKS != wantIss+"/.well-known/jwks.json" || ti.Status.Endpoints.Token != wantIss+"/api/token/" {
		t.Errorf("status issuer %q endpoints %+v, want iss %q and endpoints under it", ti.Status.Issuer, ti.Status.Endpoints, wantIss)
	}
	waitLabelledReferenced(t, ns, "users")

	// Once labelled, the users Secret is watched: deleting it, then creating it again, is seen
	// at once, well before the periodic re-check.
	users := &corev1.Secret{}
	if err := k8s.Get(ctxFor(t), client.ObjectKey{Namespace: ns, Name: "users"}, users); err != nil {
		t.Fatal(err)
	}
	if err := k8s.Delete(ctxFor(t), users); err != nil {
		t.Fatalf("cannot delete the users Secret: %v", err)
	}
	waitTokenIssuer(t, ns, "issuer", metav1.ConditionFalse, keywardv1.ReasonUsersSecretNotFound, 10*time.Second)
	labelled := usersSecret(ns, "users", map[string][]byte{controllers.UsersDataKey: []byte(htpasswd)})
	labelled.Labels = map[string]string{keywardv1.LabelUse: keywardv1.UseReferenced}
	create(t, labelled)
	waitTokenIssuer(t, ns, "issuer", metav1.ConditionTrue, keywardv1.ReasonReady, 10*time.Second)

	if err := k8s.Delete(ctxFor(t), sk); err != nil {
		t.Fatalf("cannot delete the SigningKey: %v", err)
	}
	waitTokenIssuer(t, ns, "issuer", metav1.ConditionFalse, keywardv1.ReasonSigningKeyNotFound, 10*time.Second)
}

func TestTokenIssuerReferences(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t)
	create(t, newSigningKey(ns, "signing", keywardv1.AlgorithmES256, 720*time.Hour, 10*time.Minute))
	// A SigningKey that cannot sign: its import Secret does not exist.
	create(t, withImport(newSigningKey(ns, "no-key", keywardv1.AlgorithmES256, 720*time.Hour, 10*time.Minute), "missing"))
	create(t, usersSecret(ns, "users", map[string][]byte{controllers.UsersDataKey: []byte(htpasswd)}))
	create(t, usersSecret(ns, "no-htpasswd", map[string][]byte{"passwd": []byte(htpasswd)}))
	create(t, usersSecret(ns, "clients", map[string][]byte{"clients": []byte("svc:hash\n")}))
	waitSigningKeyReady(t, ns, "signing", time.Minute)

	withClients := func(name string) func(map[string]any) {
		return func(s map[string]any) { s["clients"] = map[string]any{"secretRef": map[string]any{"name": name}} }
	}
	cases := []struct {
		name       string
		signingKey string
		users      string
		mutate     func(map[string]any)
		wantStatus metav1.ConditionStatus
		wantReason string
	}{
		{name: "a TokenIssuer whose SigningKey, users and clients exist is Ready",
			signingKey: "signing", users: "users", mutate: withClients("clients"),
			wantStatus: metav1.ConditionTrue, wantReason: keywardv1.ReasonReady},
		{name: "a TokenIssuer whose SigningKey has no Active key is not Ready",
			signingKey: "no-key", users: "users",
			wantStatus: metav1.ConditionFalse, wantReason: keywardv1.ReasonSigningKeyNotReady},
		{name: "a TokenIssuer whose users Secret has no htpasswd entry is not Ready",
			signingKey: "signing", users: "no-htpasswd",
			wantStatus: metav1.ConditionFalse, wantReason: keywardv1.ReasonUsersSecretNotFound},
		{name: "a TokenIssuer whose clients Secret is missing is not Ready",
			signingKey: "signing", users: "users", mutate: withClients("missing-clients"),
			wantStatus: metav1.ConditionFalse, wantReason: keywardv1.ReasonClientsSecretNotFound},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			name := fmt.Sprintf("issuer-%d", i)
			createTokenIssuer(t, ns, name, tokenIssuerSpec(tc.signingKey, tc.users, tc.mutate))
			waitTokenIssuer(t, ns, name, tc.wantStatus, tc.wantReason, 30*time.Second)
		})
	}
}
