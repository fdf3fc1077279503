package controllers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
	"github.com/keyward/keyward/internal/keys"
)

// DefaultRetention is how long a Retired key stays published when no TokenIssuer uses the
// SigningKey: the default refresh-token lifetime plus the default leeway.
const DefaultRetention = 24*time.Hour + 30*time.Second

// PublishAllowance is added to spec.rotation.prepublish when scheduling a successor. It covers
// the time between the key-set Secret write and the JWKS ConfigMap write, and the propagation of
// the ConfigMap to its readers, so that consumers see a new key for the full prepublish time.
const PublishAllowance = 2 * time.Second

// Reasons of a SigningKey's Ready condition.
const (
	ReasonKeySetReady       = "KeySetReady"
	ReasonImportInvalid     = "ImportInvalid"
	ReasonImportNotFound    = "ImportSecretNotFound"
	ReasonSecretConflict    = "SecretConflict"
	ReasonConfigMapConflict = "ConfigMapConflict"
)

// signingKeyScope carries one reconcile's state between phases.
type signingKeyScope struct {
	sk  *keywardv1.SigningKey
	now time.Time

	// importRaw and importKID are the imported key, when spec.import is set and valid.
	importRaw any
	importKID string
	// importProblem, when set, says why spec.import cannot be used; it is reported as
	// Ready=False. The key set is then held (see holdImport), not left alone: revoked and
	// expired keys are still withdrawn.
	importProblem *metav1.Condition
	retention     time.Duration
	// keySet is the key set as stored in the Secret (nil until it is known to be stored), and
	// secretRV the resourceVersion of the Secret that holds it.
	keySet   *keys.KeySet
	secretRV string
	nextAt   time.Time

	// blocked, when set, stops the phases and is reported as Ready=False.
	blocked *metav1.Condition
}

// heldImportKID stands for an import that cannot be used. It is no thumbprint (those are
// base64url), so no key has it.
const heldImportKID = "(import unavailable)"

// holdImport records why spec.import cannot be used. The key set is held: Decide is told the
// import is revoked, so it creates and promotes nothing, keeps the Active key, and still
// withdraws revoked keys and Retired keys past their removesAt. Stopping all phases instead
// would leave a revoked key published and signing while the import is broken.
func (s *signingKeyScope) holdImport(reason, format string, args ...any) {
	s.importKID = heldImportKID
	s.importProblem = &metav1.Condition{
		Type: keywardv1.ConditionReady, Status: metav1.ConditionFalse,
		Reason: reason, Message: fmt.Sprintf(format, args...),
	}
}

func (s *signingKeyScope) block(reason, format string, args ...any) {
	s.blocked = &metav1.Condition{
		Type: keywardv1.ConditionReady, Status: metav1.ConditionFalse,
		Reason: reason, Message: fmt.Sprintf(format, args...),
	}
}

// SecretName is the name of a SigningKey's key-set Secret.
func SecretName(sk *keywardv1.SigningKey) string { return sk.Name + "-keyset" }

// JWKSConfigMapName is the name of a SigningKey's public JWKS ConfigMap.
func JWKSConfigMapName(sk *keywardv1.SigningKey) string { return sk.Name + "-jwks" }

// reconcileImport loads spec.import's key, labelling its Secret so that the cache sees later
// changes to it.
func (r *SigningKeyReconciler) reconcileImport(ctx context.Context, s *signingKeyScope) error {
	imp := s.sk.Spec.Import
	if imp == nil {
		return nil
	}
	secret, err := getReferencedSecret(ctx, r.Client, r.APIReader, s.sk.Namespace, imp.SecretRef.Name)
	if apierrors.IsNotFound(err) {
		s.holdImport(ReasonImportNotFound, "Secret %q named by spec.import was not found", imp.SecretRef.Name)
		return nil
	}
	if err != nil {
		return err
	}
	raw, err := keys.ParseImport(s.sk.Spec.Algorithm, secret.Data)
	if err != nil {
		s.holdImport(ReasonImportInvalid, "Secret %q named by spec.import: %v", imp.SecretRef.Name, err)
		return nil
	}
	stored, err := keys.NewStoredKey(keys.Lifecycle{Algorithm: s.sk.Spec.Algorithm}, raw)
	if err != nil {
		s.holdImport(ReasonImportInvalid, "Secret %q named by spec.import: %v", imp.SecretRef.Name, err)
		return nil
	}
	if slices.Contains(s.sk.Spec.RevokedKeyIDs, stored.KID) {
		// Decide withdraws the revoked key at once and imports nothing in its place.
		s.holdImport(ReasonImportInvalid, "the key in Secret %q has kid %s, which spec.revokedKeyIDs revokes", imp.SecretRef.Name, stored.KID)
		return nil
	}
	s.importRaw, s.importKID = raw, stored.KID
	return nil
}

// reconcileRetention computes how long Retired keys stay published: the longest token lifetime
// plus leeway among the TokenIssuers that use this SigningKey.
func (r *SigningKeyReconciler) reconcileRetention(ctx context.Context, s *signingKeyScope) error {
	var issuers keywardv1.TokenIssuerList
	if err := r.List(ctx, &issuers, client.InNamespace(s.sk.Namespace), client.MatchingFields{indexSigningKeyRef: s.sk.Name}); err != nil {
		return fmt.Errorf("cannot list TokenIssuers: %w", err)
	}
	s.retention = Retention(issuers.Items)
	return nil
}

// Retention is how long a key retired now must stay published so that every token it signed
// for the given issuers can still be verified.
func Retention(issuers []keywardv1.TokenIssuer) time.Duration {
	if len(issuers) == 0 {
		return DefaultRetention
	}
	var longest time.Duration
	for i := range issuers {
		spec := &issuers[i].Spec
		lifetime := max(spec.AccessTokenLifetime.Duration, spec.RefreshTokenLifetime.Duration)
		longest = max(longest, lifetime+spec.LeewayDuration())
	}
	return longest
}

// reconcileKeySet decides the next key set and stores it in the key-set Secret. Every write is
// conditioned on the Secret's resourceVersion, so two controllers racing cannot both rotate.
func (r *SigningKeyReconciler) reconcileKeySet(ctx context.Context, s *signingKeyScope) error {
	log := ctrl.LoggerFrom(ctx)
	secret := &corev1.Secret{}
	err := r.getOwned(ctx, client.ObjectKey{Namespace: s.sk.Namespace, Name: SecretName(s.sk)}, secret)
	var (
		current   *keys.KeySet
		recovered bool
	)
	switch {
	case apierrors.IsNotFound(err):
		secret = nil
		current, recovered, err = r.recoverKeySet(ctx, s)
		if err != nil {
			return err
		}
	case err != nil:
		return fmt.Errorf("cannot get key-set secret: %w", err)
	case !metav1.IsControlledBy(secret, s.sk):
		s.block(ReasonSecretConflict, "Secret %q exists and is not owned by this SigningKey", secret.Name)
		return nil
	default:
		current, err = keys.ParseKeySet(secret.Data[keywardv1.KeySetDataKey])
		if err != nil {
			// A damaged key set cannot be repaired by retrying; start over as after a loss.
			log.Error(err, "Key-set Secret is damaged; regenerating", "reason", "KeySetDamaged")
			current, recovered, err = r.recoverKeySet(ctx, s)
			if err != nil {
				return err
			}
		}
	}

	revoked := s.sk.Spec.RevokedKeyIDs
	if s.importProblem != nil {
		// A held import: see holdImport.
		revoked = append(slices.Clone(revoked), heldImportKID)
	}
	plan := keys.Decide(current.Lifecycles(), keys.Policy{
		Algorithm:  s.sk.Spec.Algorithm,
		Every:      s.sk.Spec.Rotation.Every.Duration,
		Prepublish: s.sk.Spec.Rotation.Prepublish.Duration + PublishAllowance,
		Retention:  s.retention,
		Revoked:    revoked,
		ImportKID:  s.importKID,
	}, s.now)

	next, err := s.applyPlan(current, &plan)
	if err != nil {
		return err
	}
	switch {
	case secret == nil && len(next.Keys) == 0 && !recovered:
		// Nothing to store: a new SigningKey whose import cannot be used yet.
		return nil
	case secret != nil && !plan.Changed() && !recovered && hasLabels(secret, managedLabels(s.sk, keywardv1.UseSigningKey)):
		s.keySet, s.secretRV, s.nextAt = next, secret.ResourceVersion, plan.NextAt
		return nil
	}

	data, err := next.Marshal()
	if err != nil {
		return fmt.Errorf("cannot encode key set: %w", err)
	}
	if secret == nil {
		secret = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: s.sk.Namespace, Name: SecretName(s.sk)}}
		secret.Type = keywardv1.SecretTypeSigningKey
		secret.Labels = managedLabels(s.sk, keywardv1.UseSigningKey)
		secret.Data = map[string][]byte{keywardv1.KeySetDataKey: data}
		if err := controllerutil.SetControllerReference(s.sk, secret, r.Scheme()); err != nil {
			return err
		}
		if err := r.Create(ctx, secret); err != nil {
			return fmt.Errorf("cannot create key-set secret: %w", err)
		}
	} else {
		secret.Data = map[string][]byte{keywardv1.KeySetDataKey: data}
		secret.Labels = withLabels(secret.Labels, managedLabels(s.sk, keywardv1.UseSigningKey))
		// Update carries the resourceVersion read above: a concurrent writer makes this fail
		// with a conflict, and the next reconcile decides again from the winner's key set.
		if err := r.Update(ctx, secret); err != nil {
			return fmt.Errorf("cannot update key-set secret: %w", err)
		}
	}
	// Only a stored key set is reported in status and published: a write that failed (a racing
	// writer won) leaves both alone.
	s.keySet, s.secretRV, s.nextAt = next, secret.ResourceVersion, plan.NextAt
	if recovered {
		r.Recorder.Eventf(s.sk, nil, corev1.EventTypeWarning, "SecretRegenerated", "Regenerate",
			"Key-set Secret %s was missing or damaged and has been regenerated; keys it held can no longer sign", secret.Name)
	}
	for _, e := range plan.Events {
		eventType := corev1.EventTypeNormal
		if e.Warning {
			eventType = corev1.EventTypeWarning
		}
		r.Recorder.Eventf(s.sk, nil, eventType, e.Reason, "Rotate", "%s", e.Message)
		log.Info("Key set changed", "reason", e.Reason, "message", e.Message)
	}
	return nil
}

// applyPlan builds the stored key set a plan describes, creating or importing its new key.
func (s *signingKeyScope) applyPlan(current *keys.KeySet, plan *keys.Plan) (*keys.KeySet, error) {
	byKID := make(map[string]keys.StoredKey, len(current.Keys))
	for _, k := range current.Keys {
		byKID[k.KID] = k
	}
	next := &keys.KeySet{Keys: make([]keys.StoredKey, 0, len(plan.Keys)+1)}
	for _, l := range plan.Keys {
		k := byKID[l.KID]
		k.Lifecycle = l
		next.Keys = append(next.Keys, k)
	}
	if plan.Create == nil {
		return next, nil
	}
	raw := s.importRaw
	if !plan.Create.Imported {
		var err error
		if raw, err = keys.Generate(plan.Create.Algorithm); err != nil {
			return nil, fmt.Errorf("cannot generate %s key: %w", plan.Create.Algorithm, err)
		}
	}
	created, err := keys.NewStoredKey(*plan.Create, raw)
	if err != nil {
		return nil, err
	}
	if _, exists := byKID[created.KID]; exists {
		// Only an import can collide: the same key imported again after it was retired. The
		// rest of the plan (revocations, removals) still applies.
		s.importProblem = &metav1.Condition{Type: keywardv1.ConditionReady, Status: metav1.ConditionFalse, Reason: ReasonImportInvalid,
			Message: fmt.Sprintf("the imported key %s was already used by this SigningKey; import a new key", created.KID)}
		plan.Create = nil
		return next, nil
	}
	plan.Events = append(plan.Events, keys.Event{Reason: "KeyCreated", Message: fmt.Sprintf("Key %s published as %s", created.KID, created.State())})
	next.Keys = append(next.Keys, created)
	return next, nil
}

// recoverKeySet rebuilds what can be saved of a key set whose Secret is gone: the public keys of
// the previously published keys, from the JWKS ConfigMap, stay published (verify-only) for their
// retention so tokens they signed remain valid. Keys that never signed are dropped. The result
// has no Active key, so a new key takes over signing at once.
func (r *SigningKeyReconciler) recoverKeySet(ctx context.Context, s *signingKeyScope) (*keys.KeySet, bool, error) {
	if len(s.sk.Status.Keys) == 0 {
		return &keys.KeySet{}, false, nil
	}
	published := map[string][]byte{}
	cm := &corev1.ConfigMap{}
	err := r.getOwned(ctx, client.ObjectKey{Namespace: s.sk.Namespace, Name: JWKSConfigMapName(s.sk)}, cm)
	switch {
	case err == nil && metav1.IsControlledBy(cm, s.sk):
		published, err = keys.PublicKeysByKID([]byte(cm.Data[keywardv1.JWKSDataKey]))
		if err != nil {
			ctrl.LoggerFrom(ctx).Error(err, "Cannot read published keys for recovery", "reason", "JWKSDamaged")
			published = map[string][]byte{}
		}
	case err != nil && !apierrors.IsNotFound(err):
		return nil, false, fmt.Errorf("cannot get JWKS configmap: %w", err)
	}
	ks := &keys.KeySet{}
	for _, st := range s.sk.Status.Keys {
		jwkData, ok := published[st.KID]
		if !ok || st.State == keywardv1.KeyStatePending {
			continue
		}
		l := keys.Lifecycle{KID: st.KID, Algorithm: st.Algorithm, Imported: st.Imported, PublishedAt: st.PublishedAt.Time}
		if st.ActivatedAt != nil {
			l.ActivatesAt = st.ActivatedAt.Time
			l.ActivatedAt = ptrTo(st.ActivatedAt.Time)
		}
		if st.State == keywardv1.KeyStateActive || st.RetiredAt == nil || st.RemovesAt == nil {
			l.RetiredAt, l.RemovesAt = ptrTo(s.now), ptrTo(s.now.Add(s.retention))
		} else {
			l.RetiredAt, l.RemovesAt = ptrTo(st.RetiredAt.Time), ptrTo(st.RemovesAt.Time)
		}
		ks.Keys = append(ks.Keys, keys.StoredKey{Lifecycle: l, JWK: jwkData, PublicOnly: true})
	}
	return ks, true, nil
}

// reconcileJWKS publishes the public keys of the key set in the JWKS ConfigMap.
func (r *SigningKeyReconciler) reconcileJWKS(ctx context.Context, s *signingKeyScope) error {
	if s.keySet == nil {
		// No key set is stored yet (an import that cannot be used): nothing to publish.
		return nil
	}
	jwks, err := s.keySet.PublicJWKS()
	if err != nil {
		return err
	}
	cm := &corev1.ConfigMap{}
	err = r.getOwned(ctx, client.ObjectKey{Namespace: s.sk.Namespace, Name: JWKSConfigMapName(s.sk)}, cm)
	switch {
	case apierrors.IsNotFound(err):
		if err := r.keySetCurrent(ctx, s); err != nil {
			return err
		}
		cm = &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: s.sk.Namespace, Name: JWKSConfigMapName(s.sk),
			Labels: managedLabels(s.sk, keywardv1.UseJWKS)}}
		cm.Data = map[string]string{keywardv1.JWKSDataKey: string(jwks)}
		if err := controllerutil.SetControllerReference(s.sk, cm, r.Scheme()); err != nil {
			return err
		}
		if err := r.Create(ctx, cm); err != nil {
			return fmt.Errorf("cannot create JWKS configmap: %w", err)
		}
		return nil
	case err != nil:
		return fmt.Errorf("cannot get JWKS configmap: %w", err)
	case !metav1.IsControlledBy(cm, s.sk):
		s.block(ReasonConfigMapConflict, "ConfigMap %q exists and is not owned by this SigningKey", cm.Name)
		return nil
	case bytes.Equal([]byte(cm.Data[keywardv1.JWKSDataKey]), jwks) && hasLabels(cm, managedLabels(s.sk, keywardv1.UseJWKS)):
		return nil
	}
	if err := r.keySetCurrent(ctx, s); err != nil {
		return err
	}
	cm.Data = map[string]string{keywardv1.JWKSDataKey: string(jwks)}
	cm.Labels = withLabels(cm.Labels, managedLabels(s.sk, keywardv1.UseJWKS))
	if err := r.Update(ctx, cm); err != nil {
		return fmt.Errorf("cannot update JWKS configmap: %w", err)
	}
	return nil
}

// keySetCurrent confirms, just before the JWKS is written, that the key set it is derived from
// is still the stored one. The ConfigMap write is conditioned on the ConfigMap's own
// resourceVersion only; without this check a reconcile working from a stale cached Secret (or
// a second replica that lost a race) would publish an older key set over a newer one,
// re-publishing a revoked key or dropping a Pending one. It returns a conflict, like a lost
// write, when the key set changed.
func (r *SigningKeyReconciler) keySetCurrent(ctx context.Context, s *signingKeyScope) error {
	live := &corev1.Secret{}
	err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: s.sk.Namespace, Name: SecretName(s.sk)}, live)
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("cannot get key-set secret: %w", err)
	}
	if err != nil || live.ResourceVersion != s.secretRV {
		return apierrors.NewConflict(corev1.Resource("secrets"), SecretName(s.sk),
			errors.New("the key set changed since it was read; the JWKS will be published from the new one"))
	}
	return nil
}

// getOwned reads a Secret or ConfigMap the SigningKey owns. The cache holds only objects
// labelled keyward.dev/use and can lag behind writes; on a cache miss the API server is asked,
// so that an owned object the cache has not seen yet, or that lost its label, is updated (and
// relabelled) instead of being created again, which would fail with AlreadyExists on every
// retry.
func (r *SigningKeyReconciler) getOwned(ctx context.Context, key client.ObjectKey, obj client.Object) error {
	err := r.Get(ctx, key, obj)
	if !apierrors.IsNotFound(err) {
		return err
	}
	return r.APIReader.Get(ctx, key, obj)
}

// hasLabels reports whether obj carries every label of want.
func hasLabels(obj client.Object, want map[string]string) bool {
	got := obj.GetLabels()
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	return true
}

// withLabels returns labels with want set, keeping labels others put on the object.
func withLabels(labels, want map[string]string) map[string]string {
	out := maps.Clone(labels)
	if out == nil {
		out = map[string]string{}
	}
	maps.Copy(out, want)
	return out
}

// managedLabels are the labels of a Secret or ConfigMap keyward owns.
func managedLabels(sk *keywardv1.SigningKey, use string) map[string]string {
	return map[string]string{
		keywardv1.LabelUse:             use,
		keywardv1.LabelSigningKey:      sk.Name,
		"app.kubernetes.io/managed-by": "keyward",
	}
}

// getReferencedSecret reads a Secret a keyward object refers to. keyward caches only Secrets
// labelled keyward.dev/use; a referenced Secret missing from the cache is read from the API
// server and labelled, so that the cache (and every issuer replica) sees it from then on.
func getReferencedSecret(ctx context.Context, c client.Client, apiReader client.Reader, namespace, name string) (*corev1.Secret, error) {
	secret := &corev1.Secret{}
	key := client.ObjectKey{Namespace: namespace, Name: name}
	err := c.Get(ctx, key, secret)
	if err == nil {
		return secret, nil
	}
	if !apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("cannot get secret %s: %w", name, err)
	}
	if err := apiReader.Get(ctx, key, secret); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, err
		}
		return nil, fmt.Errorf("cannot get secret %s: %w", name, err)
	}
	if _, labelled := secret.Labels[keywardv1.LabelUse]; !labelled {
		patch := client.MergeFrom(secret.DeepCopy())
		if secret.Labels == nil {
			secret.Labels = map[string]string{}
		}
		secret.Labels[keywardv1.LabelUse] = keywardv1.UseReferenced
		if err := c.Patch(ctx, secret, patch); err != nil {
			return nil, fmt.Errorf("cannot label secret %s: %w", name, err)
		}
		ctrl.LoggerFrom(ctx).Info("Labelled referenced Secret so keyward caches it", "secret", key, "label", keywardv1.LabelUse)
	}
	return secret, nil
}

func ptrTo[T any](v T) *T { return &v }
