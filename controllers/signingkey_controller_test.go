package controllers_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jws"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
	"github.com/keyward/keyward/controllers"
	"github.com/keyward/keyward/internal/keys"
)

// TestSigningKeyAlgorithms runs first and alone (it is not parallel with the other tests): its
// 4096-bit RSA keys keep the controller's single worker busy for seconds, which would blur the
// timing the rotation tests measure.
func TestSigningKeyAlgorithms(t *testing.T) {
	ns := newNamespace(t)
	for _, alg := range keywardv1.Algorithms {
		t.Run(fmt.Sprintf("a new %s SigningKey becomes Ready with its Secret and JWKS", alg), func(t *testing.T) {
			t.Parallel()
			name := strings.ToLower(string(alg))
			sk := newSigningKey(ns, name, alg, 720*time.Hour, 10*time.Minute)
			create(t, sk)
			snap := waitSigningKeyReady(t, ns, name, 2*time.Minute)

			c, _ := readyCondition(snap.sk.Status.Conditions)
			if c.Reason != controllers.ReasonKeySetReady {
				t.Errorf("Ready reason = %q, want %q", c.Reason, controllers.ReasonKeySetReady)
			}
			if snap.sk.Status.SecretName != snap.secret.Name || snap.sk.Status.JWKSConfigMapName != snap.cm.Name {
				t.Errorf("status names Secret %q and ConfigMap %q, want %q and %q",
					snap.sk.Status.SecretName, snap.sk.Status.JWKSConfigMapName, snap.secret.Name, snap.cm.Name)
			}
			if snap.sk.Status.ObservedGeneration != snap.sk.Generation {
				t.Errorf("observedGeneration = %d, want %d", snap.sk.Status.ObservedGeneration, snap.sk.Generation)
			}

			// The key-set Secret: typed, owned, labelled, one Active key of the algorithm.
			if snap.secret.Type != keywardv1.SecretTypeSigningKey {
				t.Errorf("Secret type = %q, want %q", snap.secret.Type, keywardv1.SecretTypeSigningKey)
			}
			checkOwnedAndLabelled(t, snap.secret, snap.sk, keywardv1.UseSigningKey)
			if len(snap.keySet.Keys) != 1 {
				t.Fatalf("key set has %d keys, want 1", len(snap.keySet.Keys))
			}
			stored := &snap.keySet.Keys[0]
			if stored.State() != keywardv1.KeyStateActive || stored.Algorithm != alg || stored.KID != snap.sk.Status.ActiveKeyID {
				t.Errorf("stored key is %s %s %s, want Active %s %s", stored.State(), stored.Algorithm, stored.KID, alg, snap.sk.Status.ActiveKeyID)
			}
			private, err := stored.Key()
			if err != nil {
				t.Fatal(err)
			}
			if tp, err := private.Thumbprint(crypto.SHA256); err != nil || base64.RawURLEncoding.EncodeToString(tp) != stored.KID {
				t.Errorf("kid %s is not the RFC 7638 thumbprint of the stored key (%v)", stored.KID, err)
			}
			if len(snap.sk.Status.Keys) != 1 || snap.sk.Status.Keys[0].State != keywardv1.KeyStateActive ||
				snap.sk.Status.Keys[0].KID != stored.KID || snap.sk.Status.Keys[0].Algorithm != alg {
				t.Errorf("status.keys = %+v, want the one Active %s key %s", snap.sk.Status.Keys, alg, stored.KID)
			}

			// The JWKS ConfigMap: owned, labelled, public keys only, never an HS key.
			checkOwnedAndLabelled(t, snap.cm, snap.sk, keywardv1.UseJWKS)
			published, err := publishedKIDs(snap.jwks)
			if err != nil {
				t.Fatal(err)
			}
			if alg.IsSymmetric() {
				if len(published) != 0 {
					t.Fatalf("an %s key is published: %s", alg, snap.jwks)
				}
				if bytes.Contains(snap.jwks, []byte(stored.KID)) {
					t.Fatalf("the JWKS mentions the %s kid: %s", alg, snap.jwks)
				}
				return
			}
			if !slices.Equal(published, []string{stored.KID}) {
				t.Fatalf("published kids = %v, want [%s]", published, stored.KID)
			}
			set, err := jwk.Parse(snap.jwks)
			if err != nil {
				t.Fatal(err)
			}
			pub, _ := set.LookupKeyID(stored.KID)
			if got, _ := pub.Algorithm(); got.String() != string(alg) {
				t.Errorf("published alg = %s, want %s", got, alg)
			}
			token, err := signWith(stored)
			if err != nil {
				t.Fatal(err)
			}
			if err := verifyWith(token, snap.jwks); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func checkOwnedAndLabelled(t *testing.T, obj client.Object, sk *keywardv1.SigningKey, use string) {
	t.Helper()
	owner := metav1.GetControllerOf(obj)
	if owner == nil || owner.UID != sk.UID || owner.Kind != "SigningKey" {
		t.Errorf("%s is controlled by %+v, want SigningKey %s (%s)", obj.GetName(), owner, sk.Name, sk.UID)
	}
	labels := obj.GetLabels()
	if labels[keywardv1.LabelUse] != use || labels[keywardv1.LabelSigningKey] != sk.Name {
		t.Errorf("%s has labels %v, want %s=%s and %s=%s", obj.GetName(), labels, keywardv1.LabelUse, use, keywardv1.LabelSigningKey, sk.Name)
	}
}

// keyHistory is what a test saw of one kid over time.
type keyHistory struct {
	states    []keywardv1.KeyState // successive states in the key-set Secret
	published time.Time            // first seen in the JWKS
	activated time.Time            // first seen Active in the Secret
	removesAt *time.Time
	removed   bool // seen in neither the Secret nor the JWKS after being seen
	// publishedAt and activatedAt are the controller's own timestamps, from the Secret.
	publishedAt, activatedAt time.Time
}

func (h *keyHistory) walked() bool {
	return slices.Equal(h.states, []keywardv1.KeyState{keywardv1.KeyStatePending, keywardv1.KeyStateActive, keywardv1.KeyStateRetired}) && h.removed
}

// TestSigningKeyRotation watches a fast rotation (every 1m, prepublish 10s) for about 2.5
// minutes: the first key signs at once, its successor is published 10s before it signs, and a
// retired key stays published for the TokenIssuer's refresh lifetime plus leeway (20s), then
// goes. At every observation exactly one key is Active and a token it signs verifies against
// the JWKS as published at that moment.
func TestSigningKeyRotation(t *testing.T) {
	t.Parallel()
	const (
		every      = time.Minute
		prepublish = 10 * time.Second
		// retention is the TokenIssuer's refreshTokenLifetime (20s) plus its leeway (0s).
		retention = 20 * time.Second
		// Each observation lags the change it sees by up to one poll (pollInterval plus the
		// time the three reads take, more on a loaded machine), so a gap measured between two
		// observations can be short by up to that much. The controller's own timestamps are
		// checked exactly.
		observationTolerance = time.Second
		// removalGrace is how long after removesAt a retired key may still be seen.
		removalGrace = 5 * time.Second
		// The walk needs about 140s after the first activation: the second key is published
		// at 50s, signs at 60s, retires at 120s and is removed at 140s.
		walkTimeout = 3 * time.Minute
	)
	ns := newNamespace(t)
	// The TokenIssuer exists before the first retirement, so retention is 20s throughout.
	createTokenIssuer(t, ns, "issuer", tokenIssuerSpec("rotating", "users", func(s map[string]any) {
		s["accessTokenLifetime"], s["refreshTokenLifetime"], s["leeway"] = "10s", "20s", "0s"
	}))
	create(t, newSigningKey(ns, "rotating", keywardv1.AlgorithmES256, every, prepublish))
	first := waitSigningKeyReady(t, ns, "rotating", time.Minute)
	firstKID := first.sk.Status.ActiveKeyID

	history := map[string]*keyHistory{}
	var order, activeOrder []string
	seen := func(kid string) *keyHistory {
		h, ok := history[kid]
		if !ok {
			h = &keyHistory{}
			history[kid] = h
			order = append(order, kid)
		}
		return h
	}
	deadline := time.Now().Add(walkTimeout)
	observations := 0
	for {
		snap := observe(t, ns, "rotating")
		observations++
		published, err := publishedKIDs(snap.jwks)
		if err != nil {
			t.Fatal(err)
		}

		active, pending := snap.secretKeys(keywardv1.KeyStateActive), snap.secretKeys(keywardv1.KeyStatePending)
		if len(active) != 1 || len(pending) > 1 {
			t.Fatalf("at %s the key set has Active %v and Pending %v, want one Active and at most one Pending", snap.start.Format(time.StampMilli), active, pending)
		}
		statusActive, statusPending := snap.statusKeys(keywardv1.KeyStateActive), snap.statusKeys(keywardv1.KeyStatePending)
		if len(statusActive) != 1 || len(statusPending) > 1 || snap.sk.Status.ActiveKeyID != statusActive[0] {
			t.Fatalf("at %s status has Active %v, Pending %v and activeKeyID %q, want one Active named by activeKeyID and at most one Pending",
				snap.start.Format(time.StampMilli), statusActive, statusPending, snap.sk.Status.ActiveKeyID)
		}
		if err := stillReady(snap); err != nil {
			t.Fatalf("at %s %v", snap.start.Format(time.StampMilli), err)
		}
		token, err := signWith(snap.storedKey(active[0]))
		if err != nil {
			t.Fatal(err)
		}
		if err := verifyWith(token, snap.jwks); err != nil {
			t.Fatalf("at %s a token signed by the Active key %s: %v (published: %v)", snap.start.Format(time.StampMilli), active[0], err, published)
		}
		if len(activeOrder) == 0 || activeOrder[len(activeOrder)-1] != active[0] {
			if slices.Contains(activeOrder, active[0]) {
				t.Fatalf("key %s is Active again after %v", active[0], activeOrder)
			}
			activeOrder = append(activeOrder, active[0])
		}

		for i := range snap.keySet.Keys {
			k := &snap.keySet.Keys[i]
			h := seen(k.KID)
			state := k.State()
			if n := len(h.states); n == 0 || h.states[n-1] != state {
				h.states = append(h.states, state)
			}
			h.publishedAt = k.PublishedAt
			switch state {
			case keywardv1.KeyStateActive:
				if h.activated.IsZero() {
					h.activated = snap.start
					h.activatedAt = *k.ActivatedAt
				}
			case keywardv1.KeyStateRetired:
				if k.RemovesAt == nil || k.RetiredAt == nil || k.RemovesAt.Sub(*k.RetiredAt) != retention {
					t.Fatalf("retired key %s: retiredAt %v, removesAt %v, want removesAt %s after retiredAt", k.KID, k.RetiredAt, k.RemovesAt, retention)
				}
				h.removesAt = k.RemovesAt
				// The ConfigMap was read before snap.end: if the key was gone by then, it left
				// before removesAt.
				if snap.end.Before(*k.RemovesAt) && !contains(published, k.KID) {
					t.Fatalf("retired key %s left the JWKS before its removesAt %s (observed at %s)", k.KID, k.RemovesAt.Format(time.StampMilli), snap.end.Format(time.StampMilli))
				}
			}
		}
		for _, kid := range published {
			if h := seen(kid); h.published.IsZero() {
				h.published = snap.start
			}
		}
		for kid, h := range history {
			inSecret, inJWKS := snap.storedKey(kid) != nil, contains(published, kid)
			inStatus := slices.ContainsFunc(snap.sk.Status.Keys, func(k keywardv1.KeyStatus) bool { return k.KID == kid })
			if h.removesAt != nil && snap.start.After(h.removesAt.Add(removalGrace)) && (inSecret || inJWKS || inStatus) {
				t.Fatalf("key %s is still kept (Secret %t, JWKS %t, status %t) %s after its removesAt %s",
					kid, inSecret, inJWKS, inStatus, snap.start.Sub(*h.removesAt), h.removesAt.Format(time.StampMilli))
			}
			if !inSecret && !inJWKS && len(h.states) > 0 {
				if h.removesAt == nil {
					t.Fatalf("key %s (%v) vanished without being retired", kid, h.states)
				}
				h.removed = true
			}
		}

		if slices.ContainsFunc(order, func(kid string) bool { return history[kid].walked() }) && history[firstKID].removed {
			break
		}
		if time.Now().After(deadline) {
			var b strings.Builder
			for _, kid := range order {
				fmt.Fprintf(&b, "\n  %s: %v removed=%t", kid, history[kid].states, history[kid].removed)
			}
			t.Fatalf("no key walked Pending -> Active -> Retired -> removed within %s:%s", walkTimeout, b.String())
		}
		select {
		case <-time.After(pollInterval):
		case <-t.Context().Done():
			t.Fatal(t.Context().Err())
		}
	}

	if got := history[firstKID].states; !slices.Equal(got, []keywardv1.KeyState{keywardv1.KeyStateActive, keywardv1.KeyStateRetired}) {
		t.Errorf("the first key went through %v, want Active then Retired", got)
	}
	if len(activeOrder) < 3 {
		t.Errorf("saw Active keys %v, want at least three successive keys", activeOrder)
	}
	for _, kid := range order {
		h := history[kid]
		if kid == firstKID || h.activated.IsZero() {
			continue
		}
		if h.states[0] != keywardv1.KeyStatePending {
			t.Errorf("key %s first appeared as %s, want Pending", kid, h.states[0])
		}
		if got := h.activatedAt.Sub(h.publishedAt); got < prepublish {
			t.Errorf("key %s signed %s after it was published (controller timestamps), want at least %s", kid, got, prepublish)
		}
		if h.published.IsZero() || h.published.After(h.activated) {
			t.Errorf("key %s was Active (at %s) before it was seen in the JWKS (at %s)", kid, h.activated.Format(time.StampMilli), h.published.Format(time.StampMilli))
			continue
		}
		if got := h.activated.Sub(h.published); got < prepublish-observationTolerance {
			t.Errorf("key %s was in the JWKS %s before it signed, want at least %s (less a %s observation tolerance)", kid, got, prepublish, observationTolerance)
		}
	}
	t.Logf("%d observations; Active keys in turn: %v", observations, activeOrder)
}

// stillReady checks that a SigningKey that was Ready still is: rotations, and the conflicts a
// racing writer causes, never make it unready.
func stillReady(s *snapshot) error {
	c, err := readyCondition(s.sk.Status.Conditions)
	if err != nil {
		return err
	}
	if c.Status != metav1.ConditionTrue {
		return fmt.Errorf("the SigningKey is no longer Ready: %s: %s", c.Reason, c.Message)
	}
	return nil
}

// waitKeySet polls the SigningKey's Secret, JWKS and status until check passes.
func waitKeySet(t *testing.T, ns, name string, timeout time.Duration, check func(s *snapshot, published []string) error) *snapshot {
	t.Helper()
	var last *snapshot
	eventually(t, timeout, func(ctx context.Context) error {
		s, err := takeSnapshot(ctx, ns, name)
		if err != nil {
			return err
		}
		published, err := publishedKIDs(s.jwks)
		if err != nil {
			return err
		}
		if err := check(s, published); err != nil {
			return err
		}
		last = s
		return nil
	})
	return last
}

// withdrawn checks that kid is in none of the Secret, the JWKS and status.
func withdrawn(s *snapshot, published []string, kid string) error {
	if s.storedKey(kid) != nil || contains(published, kid) ||
		slices.ContainsFunc(s.sk.Status.Keys, func(k keywardv1.KeyStatus) bool { return k.KID == kid }) {
		return fmt.Errorf("key %s is still in the Secret, the JWKS or status", kid)
	}
	return nil
}

func TestSigningKeyRevocation(t *testing.T) {
	t.Parallel()
	// withdrawWithin is how soon after the spec change a revoked key must be gone.
	const withdrawWithin = 3 * time.Second

	revoke := func(t *testing.T, ns, name, kid string) {
		t.Helper()
		update(t, &keywardv1.SigningKey{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}, func(sk *keywardv1.SigningKey) {
			sk.Spec.RevokedKeyIDs = append(sk.Spec.RevokedKeyIDs, kid)
		})
	}
	changeAlgorithm := func(t *testing.T, ns, name string, alg keywardv1.Algorithm) {
		t.Helper()
		update(t, &keywardv1.SigningKey{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}, func(sk *keywardv1.SigningKey) {
			sk.Spec.Algorithm = alg
		})
	}

	t.Run("revoking the Active key withdraws it at once and another key signs", func(t *testing.T) {
		t.Parallel()
		ns := newNamespace(t)
		create(t, newSigningKey(ns, "revoke-active", keywardv1.AlgorithmES256, time.Hour, 5*time.Second))
		before := waitSigningKeyReady(t, ns, "revoke-active", time.Minute)
		revoked := before.sk.Status.ActiveKeyID
		oldToken, err := signWith(before.storedKey(revoked))
		if err != nil {
			t.Fatal(err)
		}

		revoke(t, ns, "revoke-active", revoked)
		after := waitKeySet(t, ns, "revoke-active", withdrawWithin, func(s *snapshot, published []string) error {
			if err := withdrawn(s, published, revoked); err != nil {
				return err
			}
			active := s.secretKeys(keywardv1.KeyStateActive)
			if len(active) != 1 || s.sk.Status.ActiveKeyID != active[0] {
				return fmt.Errorf("key set has Active %v, status names %q: want one new Active key", active, s.sk.Status.ActiveKeyID)
			}
			return nil
		})
		newToken, err := signWith(after.storedKey(after.sk.Status.ActiveKeyID))
		if err != nil {
			t.Fatal(err)
		}
		if err := verifyWith(newToken, after.jwks); err != nil {
			t.Errorf("the new Active key: %v", err)
		}
		if err := verifyWith(oldToken, after.jwks); err == nil {
			t.Error("a token signed by the revoked key still verifies against the JWKS")
		}
	})

	t.Run("revoking a Pending key withdraws it and the Active key keeps signing", func(t *testing.T) {
		t.Parallel()
		ns := newNamespace(t)
		create(t, newSigningKey(ns, "revoke-pending", keywardv1.AlgorithmES256, time.Hour, 30*time.Second))
		active := waitSigningKeyReady(t, ns, "revoke-pending", time.Minute).sk.Status.ActiveKeyID
		// A new algorithm publishes a successor that waits prepublish (30s) before it signs.
		changeAlgorithm(t, ns, "revoke-pending", keywardv1.AlgorithmES384)
		var pending string
		waitKeySet(t, ns, "revoke-pending", 10*time.Second, func(s *snapshot, published []string) error {
			p := s.statusKeys(keywardv1.KeyStatePending)
			if len(p) != 1 || !contains(published, p[0]) {
				return fmt.Errorf("status has Pending %v, JWKS %v: want one published Pending key", p, published)
			}
			pending = p[0]
			return nil
		})

		revoke(t, ns, "revoke-pending", pending)
		waitKeySet(t, ns, "revoke-pending", withdrawWithin, func(s *snapshot, published []string) error {
			if err := withdrawn(s, published, pending); err != nil {
				return err
			}
			if a := s.secretKeys(keywardv1.KeyStateActive); !slices.Equal(a, []string{active}) || s.sk.Status.ActiveKeyID != active {
				return fmt.Errorf("Active key is %v (status %q), want %s unchanged", a, s.sk.Status.ActiveKeyID, active)
			}
			return nil
		})
	})

	t.Run("revoking a Retired key withdraws it and the Active key keeps signing", func(t *testing.T) {
		t.Parallel()
		ns := newNamespace(t)
		create(t, newSigningKey(ns, "revoke-retired", keywardv1.AlgorithmES256, time.Hour, 5*time.Second))
		retired := waitSigningKeyReady(t, ns, "revoke-retired", time.Minute).sk.Status.ActiveKeyID
		changeAlgorithm(t, ns, "revoke-retired", keywardv1.AlgorithmES384)
		var active string
		waitKeySet(t, ns, "revoke-retired", 30*time.Second, func(s *snapshot, published []string) error {
			if r := s.statusKeys(keywardv1.KeyStateRetired); !slices.Equal(r, []string{retired}) || !contains(published, retired) {
				return fmt.Errorf("status has Retired %v, JWKS %v: want %s Retired and published", r, published, retired)
			}
			active = s.sk.Status.ActiveKeyID
			return nil
		})

		revoke(t, ns, "revoke-retired", retired)
		waitKeySet(t, ns, "revoke-retired", withdrawWithin, func(s *snapshot, published []string) error {
			if err := withdrawn(s, published, retired); err != nil {
				return err
			}
			if a := s.secretKeys(keywardv1.KeyStateActive); !slices.Equal(a, []string{active}) || s.sk.Status.ActiveKeyID != active {
				return fmt.Errorf("Active key is %v (status %q), want %s unchanged", a, s.sk.Status.ActiveKeyID, active)
			}
			return nil
		})
	})
}

func TestSigningKeySecretRegenerated(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t)
	sk := newSigningKey(ns, "regen", keywardv1.AlgorithmES256, time.Hour, 5*time.Second)
	create(t, sk)
	before := waitSigningKeyReady(t, ns, "regen", time.Minute)
	lost := before.sk.Status.ActiveKeyID
	oldToken, err := signWith(before.storedKey(lost))
	if err != nil {
		t.Fatal(err)
	}

	if err := k8s.Delete(ctxFor(t), before.secret); err != nil {
		t.Fatalf("cannot delete the key-set Secret: %v", err)
	}
	after := waitKeySet(t, ns, "regen", 30*time.Second, func(s *snapshot, published []string) error {
		if s.secret.UID == before.secret.UID {
			return fmt.Errorf("the key-set Secret is not regenerated yet")
		}
		active := s.secretKeys(keywardv1.KeyStateActive)
		if len(active) != 1 || active[0] == lost || s.sk.Status.ActiveKeyID != active[0] {
			return fmt.Errorf("key set has Active %v, status names %q: want one new Active key", active, s.sk.Status.ActiveKeyID)
		}
		if r := s.statusKeys(keywardv1.KeyStateRetired); !slices.Equal(r, []string{lost}) {
			return fmt.Errorf("status has Retired %v, want the lost key %s", r, lost)
		}
		if !contains(published, lost) || !contains(published, active[0]) {
			return fmt.Errorf("JWKS has %v, want the lost key %s and the new key %s", published, lost, active[0])
		}
		return nil
	})

	checkOwnedAndLabelled(t, after.secret, after.sk, keywardv1.UseSigningKey)
	if after.secret.Type != keywardv1.SecretTypeSigningKey {
		t.Errorf("regenerated Secret has type %q", after.secret.Type)
	}
	kept := after.storedKey(lost)
	if kept.State() != keywardv1.KeyStateRetired || kept.RemovesAt == nil || !kept.PublicOnly {
		t.Errorf("the lost key is kept as %s (removesAt %v, publicOnly %t), want Retired, public only, with a removesAt", kept.State(), kept.RemovesAt, kept.PublicOnly)
	}
	if bytes.Contains(kept.JWK, []byte(`"d"`)) {
		t.Error("the regenerated Secret holds a private part for the lost key")
	}
	if err := verifyWith(oldToken, after.jwks); err != nil {
		t.Errorf("a token signed before the loss no longer verifies: %v", err)
	}
	newToken, err := signWith(after.storedKey(after.sk.Status.ActiveKeyID))
	if err != nil {
		t.Fatal(err)
	}
	if err := verifyWith(newToken, after.jwks); err != nil {
		t.Errorf("the new Active key: %v", err)
	}

	eventually(t, 30*time.Second, func(ctx context.Context) error {
		var events eventsv1.EventList
		if err := k8s.List(ctx, &events, client.InNamespace(ns)); err != nil {
			return err
		}
		var reasons []string
		for _, e := range events.Items {
			if e.Regarding.Kind == "SigningKey" && e.Regarding.Name == "regen" && e.Regarding.UID == after.sk.UID &&
				e.Reason == "SecretRegenerated" && e.Type == corev1.EventTypeWarning {
				return nil
			}
			reasons = append(reasons, e.Type+"/"+e.Reason)
		}
		return fmt.Errorf("no Warning SecretRegenerated event for the SigningKey; events: %v", reasons)
	})
}

// TestSigningKeyOwnedObjectsRelabelled removes keyward's label from the key-set Secret and the
// JWKS ConfigMap. The label-restricted cache then no longer sees them; the controller must find
// them on the API server and label them again, keeping the keys, not regenerate them.
func TestSigningKeyOwnedObjectsRelabelled(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t)
	create(t, newSigningKey(ns, "relabel", keywardv1.AlgorithmES256, time.Hour, 5*time.Second))
	before := waitSigningKeyReady(t, ns, "relabel", time.Minute)

	unlabel := func(obj client.Object) {
		update(t, obj, func(o client.Object) {
			labels := o.GetLabels()
			delete(labels, keywardv1.LabelUse)
			o.SetLabels(labels)
		})
	}
	unlabel(before.secret.DeepCopy())
	unlabel(before.cm.DeepCopy())

	after := waitKeySet(t, ns, "relabel", 15*time.Second, func(s *snapshot, _ []string) error {
		if s.secret.Labels[keywardv1.LabelUse] != keywardv1.UseSigningKey || s.cm.Labels[keywardv1.LabelUse] != keywardv1.UseJWKS {
			return fmt.Errorf("labels are Secret %v, ConfigMap %v: not restored yet", s.secret.Labels, s.cm.Labels)
		}
		return nil
	})
	if after.secret.UID != before.secret.UID || !bytes.Equal(after.secret.Data[keywardv1.KeySetDataKey], before.secret.Data[keywardv1.KeySetDataKey]) {
		t.Error("the key-set Secret was replaced or its key set changed")
	}
	if after.cm.UID != before.cm.UID || !bytes.Equal(after.jwks, before.jwks) {
		t.Error("the JWKS ConfigMap was replaced or its JWKS changed")
	}
	if err := stillReady(after); err != nil {
		t.Error(err)
	}
}

// importSecret returns a Secret holding key as PKCS#8 PEM under key.pem, without keyward's label.
func importSecret(t *testing.T, ns, name string, key *ecdsa.PrivateKey) *corev1.Secret {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Data:       map[string][]byte{keywardv1.ImportPEMDataKey: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})},
	}
}

func ecKey(t *testing.T, curve elliptic.Curve) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(curve, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// thumbprint is the RFC 7638 SHA-256 thumbprint of a public key, base64url.
func thumbprint(t *testing.T, pub crypto.PublicKey) string {
	t.Helper()
	key, err := jwk.Import(pub)
	if err != nil {
		t.Fatal(err)
	}
	tp, err := key.Thumbprint(crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(tp)
}

func waitLabelledReferenced(t *testing.T, ns, name string) {
	t.Helper()
	eventually(t, 20*time.Second, func(ctx context.Context) error {
		var s corev1.Secret
		if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &s); err != nil {
			return err
		}
		if got := s.Labels[keywardv1.LabelUse]; got != keywardv1.UseReferenced {
			return fmt.Errorf("Secret %s has %s=%q, want %q", name, keywardv1.LabelUse, got, keywardv1.UseReferenced)
		}
		return nil
	})
}

func withImport(sk *keywardv1.SigningKey, secret string) *keywardv1.SigningKey {
	sk.Spec.Import = &keywardv1.KeyImport{SecretRef: keywardv1.LocalObjectReference{Name: secret}}
	return sk
}

func TestSigningKeyImport(t *testing.T) {
	t.Parallel()

	t.Run("a PKCS#8 P-256 key imported by an ES256 SigningKey signs", func(t *testing.T) {
		t.Parallel()
		ns := newNamespace(t)
		key := ecKey(t, elliptic.P256())
		create(t, importSecret(t, ns, "imported", key))
		create(t, withImport(newSigningKey(ns, "import", keywardv1.AlgorithmES256, 720*time.Hour, 10*time.Minute), "imported"))

		snap := waitSigningKeyReady(t, ns, "import", time.Minute)
		want := thumbprint(t, &key.PublicKey)
		if snap.sk.Status.ActiveKeyID != want {
			t.Fatalf("Active kid = %s, want the imported key's thumbprint %s", snap.sk.Status.ActiveKeyID, want)
		}
		if len(snap.sk.Status.Keys) != 1 || !snap.sk.Status.Keys[0].Imported {
			t.Errorf("status.keys = %+v, want the one imported key", snap.sk.Status.Keys)
		}
		// A token signed with the original key, outside keyward, verifies against the JWKS.
		hdr := jws.NewHeaders()
		if err := hdr.Set(jws.KeyIDKey, want); err != nil {
			t.Fatal(err)
		}
		token, err := jws.Sign([]byte(`{"sub":"imported"}`), jws.WithKey(jwa.ES256(), key, jws.WithProtectedHeaders(hdr)))
		if err != nil {
			t.Fatal(err)
		}
		if err := verifyWith(token, snap.jwks); err != nil {
			t.Error(err)
		}
		waitLabelledReferenced(t, ns, "imported")
	})

	t.Run("revoking the imported Active key withdraws it at once", func(t *testing.T) {
		t.Parallel()
		ns := newNamespace(t)
		key := ecKey(t, elliptic.P256())
		create(t, importSecret(t, ns, "compromised", key))
		create(t, withImport(newSigningKey(ns, "import", keywardv1.AlgorithmES256, 720*time.Hour, 10*time.Minute), "compromised"))
		kid := waitSigningKeyReady(t, ns, "import", time.Minute).sk.Status.ActiveKeyID

		update(t, &keywardv1.SigningKey{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "import"}}, func(sk *keywardv1.SigningKey) {
			sk.Spec.RevokedKeyIDs = append(sk.Spec.RevokedKeyIDs, kid)
		})
		waitKeySet(t, ns, "import", 3*time.Second, func(s *snapshot, published []string) error {
			if err := withdrawn(s, published, kid); err != nil {
				return err
			}
			if s.sk.Status.ActiveKeyID != "" {
				return fmt.Errorf("status names Active key %q, want none: the import is revoked", s.sk.Status.ActiveKeyID)
			}
			return nil
		})
		waitSigningKeyCondition(t, ns, "import", metav1.ConditionFalse, controllers.ReasonImportInvalid, 10*time.Second)
	})

	t.Run("an import Secret created after its SigningKey is found", func(t *testing.T) {
		t.Parallel()
		ns := newNamespace(t)
		create(t, withImport(newSigningKey(ns, "import", keywardv1.AlgorithmES256, 720*time.Hour, 10*time.Minute), "later"))
		waitSigningKeyCondition(t, ns, "import", metav1.ConditionFalse, controllers.ReasonImportNotFound, 30*time.Second)

		// Created as users create it: without keyward's label, so no watch event reaches keyward.
		key := ecKey(t, elliptic.P256())
		create(t, importSecret(t, ns, "later", key))
		snap := waitSigningKeyReady(t, ns, "import", missingSecretRetry)
		if want := thumbprint(t, &key.PublicKey); snap.sk.Status.ActiveKeyID != want {
			t.Errorf("Active kid = %s, want the imported key's thumbprint %s", snap.sk.Status.ActiveKeyID, want)
		}
	})

	t.Run("a P-384 key imported by an ES256 SigningKey is refused until it is replaced", func(t *testing.T) {
		t.Parallel()
		ns := newNamespace(t)
		secret := importSecret(t, ns, "wrong-curve", ecKey(t, elliptic.P384()))
		create(t, secret)
		create(t, withImport(newSigningKey(ns, "import", keywardv1.AlgorithmES256, 720*time.Hour, 10*time.Minute), "wrong-curve"))

		sk := waitSigningKeyCondition(t, ns, "import", metav1.ConditionFalse, controllers.ReasonImportInvalid, 30*time.Second)
		if sk.Status.ActiveKeyID != "" {
			t.Errorf("a SigningKey with an invalid import has Active key %s", sk.Status.ActiveKeyID)
		}
		if err := k8s.Get(ctxFor(t), client.ObjectKey{Namespace: ns, Name: controllers.SecretName(sk)}, &corev1.Secret{}); !isNotFound(err) {
			t.Errorf("a key-set Secret exists for an invalid import (err %v)", err)
		}
		waitLabelledReferenced(t, ns, "wrong-curve")

		// The import Secret is watched once labelled: fixing it makes the SigningKey Ready.
		good := ecKey(t, elliptic.P256())
		update(t, secret, func(s *corev1.Secret) { s.Data = importSecret(t, ns, s.Name, good).Data })
		snap := waitSigningKeyReady(t, ns, "import", 30*time.Second)
		if want := thumbprint(t, &good.PublicKey); snap.sk.Status.ActiveKeyID != want {
			t.Errorf("Active kid = %s, want the replaced key's thumbprint %s", snap.sk.Status.ActiveKeyID, want)
		}
	})
}

// TestTwoManagers runs a second manager, with leader election off, next to the suite's (the
// second one's caches see only the test's namespace): both reconcile the same SigningKey
// through a rotation (every 1m, prepublish 5s) for about 90s. Their writes are conditioned on
// resourceVersion, so of two racing writes one fails instead of overwriting the other.
//
// Polling every 250ms cannot see a write that was overwritten milliseconds later, so the test
// also watches the key-set Secret and the SigningKey and checks every version the API server
// stored: one Active key and at most one Pending key in each; every step between two Secret
// versions one the lifecycle allows (a Pending key is never replaced or dropped, an Active key
// only retires); status never reports a key the Secret did not hold, and never loses Ready.
func TestTwoManagers(t *testing.T) {
	t.Parallel()
	const watchFor = 90 * time.Second
	ns := newNamespace(t)

	ctx, cancel := context.WithCancel(context.Background())
	stop, err := startManager(ctx, ns)
	if err != nil {
		cancel()
		t.Fatalf("cannot start the second manager: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		if err := stop(); err != nil {
			t.Errorf("second manager: %v", err)
		}
	})

	wc, err := client.NewWithWatch(env.Config, client.Options{Scheme: k8s.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	// Resource version "0" starts the watches from the API server's watch cache as it is: a
	// watch without one waits for the cache to catch up with etcd, which etcd 3.4 cannot
	// signal, and times out. Nothing exists yet, so no version is missed.
	fromCache := &client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: "0"}}
	secretVersions, err := wc.Watch(t.Context(), &corev1.SecretList{}, fromCache, client.InNamespace(ns),
		client.MatchingFields{"metadata.name": "contended-keyset"})
	if err != nil {
		t.Fatalf("cannot watch the key-set Secret: %v", err)
	}
	defer secretVersions.Stop()
	skVersions, err := wc.Watch(t.Context(), &keywardv1.SigningKeyList{}, fromCache, client.InNamespace(ns),
		client.MatchingFields{"metadata.name": "contended"})
	if err != nil {
		t.Fatalf("cannot watch the SigningKey: %v", err)
	}
	defer skVersions.Stop()

	create(t, newSigningKey(ns, "contended", keywardv1.AlgorithmES256, time.Minute, 5*time.Second))

	var (
		stored      map[string]keywardv1.KeyState // key states in the last Secret version
		activeOrder []string
		wasReady    bool
		versions    int
		// Every kid/state pair status reports must be one a Secret version held.
		inSecret, inStatus = map[string]bool{}, map[string]bool{}
	)
	onSecret := func(e watch.Event) {
		secret, ok := e.Object.(*corev1.Secret)
		if !ok || (e.Type != watch.Added && e.Type != watch.Modified) {
			t.Fatalf("unexpected watch event on the key-set Secret: %s %v", e.Type, e.Object)
		}
		versions++
		ks, err := keys.ParseKeySet(secret.Data[keywardv1.KeySetDataKey])
		if err != nil {
			t.Fatalf("Secret version %s: %v", secret.ResourceVersion, err)
		}
		next := map[string]keywardv1.KeyState{}
		for _, k := range ks.Keys {
			next[k.KID] = k.State()
			inSecret[k.KID+"/"+string(k.State())] = true
		}
		if err := lifecycleStep(stored, next); err != nil {
			t.Fatalf("Secret version %s: %v (before: %v, after: %v)", secret.ResourceVersion, err, stored, next)
		}
		stored = next
		if a := ks.Active(); len(activeOrder) == 0 || activeOrder[len(activeOrder)-1] != a.KID {
			activeOrder = append(activeOrder, a.KID)
		}
	}
	onSigningKey := func(e watch.Event) {
		sk, ok := e.Object.(*keywardv1.SigningKey)
		if !ok || (e.Type != watch.Added && e.Type != watch.Modified) {
			t.Fatalf("unexpected watch event on the SigningKey: %s %v", e.Type, e.Object)
		}
		versions++
		active, pending := 0, 0
		for _, k := range sk.Status.Keys {
			inStatus[k.KID+"/"+string(k.State)] = true
			switch k.State {
			case keywardv1.KeyStateActive:
				active++
				if sk.Status.ActiveKeyID != k.KID {
					t.Fatalf("SigningKey version %s: activeKeyID %q, but %s is Active", sk.ResourceVersion, sk.Status.ActiveKeyID, k.KID)
				}
			case keywardv1.KeyStatePending:
				pending++
			}
		}
		if active > 1 || pending > 1 {
			t.Fatalf("SigningKey version %s: status has %d Active and %d Pending keys: %+v", sk.ResourceVersion, active, pending, sk.Status.Keys)
		}
		c := meta.FindStatusCondition(sk.Status.Conditions, keywardv1.ConditionReady)
		switch {
		case c != nil && c.Status == metav1.ConditionTrue:
			wasReady = true
		case wasReady:
			t.Fatalf("SigningKey version %s: no longer Ready: %+v", sk.ResourceVersion, c)
		}
	}
	drain := func() {
		for {
			select {
			case e, ok := <-secretVersions.ResultChan():
				if !ok {
					t.Fatal("the watch on the key-set Secret ended")
				}
				onSecret(e)
			case e, ok := <-skVersions.ResultChan():
				if !ok {
					t.Fatal("the watch on the SigningKey ended")
				}
				onSigningKey(e)
			default:
				return
			}
		}
	}

	waitSigningKeyReady(t, ns, "contended", 30*time.Second)
	end := time.Now().Add(watchFor)
	for time.Now().Before(end) {
		drain()
		// At every observed moment, a token signed by the stored Active key verifies against
		// the JWKS as published.
		snap := observe(t, ns, "contended")
		active := snap.secretKeys(keywardv1.KeyStateActive)
		if len(active) != 1 {
			t.Fatalf("at %s the key set has Active %v", snap.start.Format(time.StampMilli), active)
		}
		token, err := signWith(snap.storedKey(active[0]))
		if err != nil {
			t.Fatal(err)
		}
		if err := verifyWith(token, snap.jwks); err != nil {
			t.Fatalf("at %s a token signed by the Active key %s: %v", snap.start.Format(time.StampMilli), active[0], err)
		}
		select {
		case <-time.After(pollInterval):
		case <-t.Context().Done():
			t.Fatal(t.Context().Err())
		}
	}
	drain()

	if len(activeOrder) < 2 {
		t.Fatalf("saw Active keys %v: no rotation happened while both managers ran", activeOrder)
	}
	for pair := range inStatus {
		if !inSecret[pair] {
			t.Errorf("status reported key %s, which no version of the key-set Secret held", pair)
		}
	}
	t.Logf("%d versions checked; Active keys in turn: %v", versions, activeOrder)
}

// lifecycleStep checks one step between two versions of a key set that only rotates (no spec
// change, retention far longer than the test): each version has exactly one Active key and at
// most one Pending key; a Pending key stays Pending or becomes Active; the Active key stays
// Active or retires; a Retired key stays; a new key is Pending, or Active when it is the first.
func lifecycleStep(prev, next map[string]keywardv1.KeyState) error {
	count := map[keywardv1.KeyState]int{}
	for _, st := range next {
		count[st]++
	}
	if count[keywardv1.KeyStateActive] != 1 || count[keywardv1.KeyStatePending] > 1 {
		return fmt.Errorf("%d Active and %d Pending keys", count[keywardv1.KeyStateActive], count[keywardv1.KeyStatePending])
	}
	allowed := map[keywardv1.KeyState][]keywardv1.KeyState{
		keywardv1.KeyStatePending: {keywardv1.KeyStatePending, keywardv1.KeyStateActive},
		keywardv1.KeyStateActive:  {keywardv1.KeyStateActive, keywardv1.KeyStateRetired},
		keywardv1.KeyStateRetired: {keywardv1.KeyStateRetired},
	}
	for kid, st := range prev {
		nst, ok := next[kid]
		if !ok {
			return fmt.Errorf("%s key %s was dropped", st, kid)
		}
		if !slices.Contains(allowed[st], nst) {
			return fmt.Errorf("%s key %s became %s", st, kid, nst)
		}
	}
	for kid, st := range next {
		if _, ok := prev[kid]; ok || st == keywardv1.KeyStatePending || (st == keywardv1.KeyStateActive && len(prev) == 0) {
			continue
		}
		return fmt.Errorf("key %s appeared as %s", kid, st)
	}
	return nil
}
