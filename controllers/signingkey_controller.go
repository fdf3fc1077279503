// Package controllers holds keyward's reconcilers: SigningKey (key generation, publication and
// rotation) and TokenIssuer (reference resolution and readiness).
package controllers

import (
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
)

// Field indexes the reconcilers register.
const (
	indexSigningKeyRef     = "spec.signingKeyRef.name"
	indexImportSecretRef   = "spec.import.secretRef.name"
	indexReferencedSecrets = "keyward.referencedSecrets"
)

// SigningKeyReconciler keeps each SigningKey's key set: it generates or imports keys, stores
// them in a Secret it owns, publishes their public parts in a ConfigMap it owns, and moves them
// through Pending -> Active -> Retired -> removed.
type SigningKeyReconciler struct {
	client.Client
	// APIReader reads objects the cache does not hold (an unlabelled import Secret).
	APIReader client.Reader
	Recorder  recorder.EventRecorder
	Clock     clock.PassiveClock
}

// +kubebuilder:rbac:groups=keyward.dev,resources=signingkeys,verbs=get;list;watch
// +kubebuilder:rbac:groups=keyward.dev,resources=signingkeys/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=keyward.dev,resources=tokenissuers,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=configmaps,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile brings one SigningKey's key set, Secret, ConfigMap and status up to date and
// schedules the next lifecycle step.
func (r *SigningKeyReconciler) Reconcile(ctx context.Context, req ctrl.Request) (_ ctrl.Result, retErr error) {
	sk := &keywardv1.SigningKey{}
	if err := r.Get(ctx, req.NamespacedName, sk); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !sk.DeletionTimestamp.IsZero() {
		// The Secret and ConfigMap are owned by the SigningKey and go with it.
		return ctrl.Result{}, nil
	}

	s := &signingKeyScope{sk: sk, now: r.Clock.Now()}
	before := sk.DeepCopy()
	defer func() {
		retErr = r.patchStatus(ctx, before, s, retErr)
	}()

	for _, phase := range []func(context.Context, *signingKeyScope) error{
		r.reconcileImport,
		r.reconcileRetention,
		r.reconcileKeySet,
		r.reconcileJWKS,
	} {
		if err := phase(ctx, s); err != nil {
			return ctrl.Result{}, err
		}
		if s.blocked != nil {
			// The conflicting object is not keyward's and may carry no keyward label, so its
			// removal raises no event keyward sees: look again later.
			return ctrl.Result{RequeueAfter: missingReferenceRetry}, nil
		}
	}
	return ctrl.Result{RequeueAfter: s.requeueAfter()}, nil
}

// SetupWithManager registers the reconciler, its indexes and its watches.
func (r *SigningKeyReconciler) SetupWithManager(ctx context.Context, mgr ctrl.Manager) error {
	idx := mgr.GetFieldIndexer()
	if err := idx.IndexField(ctx, &keywardv1.TokenIssuer{}, indexSigningKeyRef, func(o client.Object) []string {
		return []string{o.(*keywardv1.TokenIssuer).Spec.SigningKeyRef.Name}
	}); err != nil {
		return err
	}
	if err := idx.IndexField(ctx, &keywardv1.SigningKey{}, indexImportSecretRef, func(o client.Object) []string {
		if imp := o.(*keywardv1.SigningKey).Spec.Import; imp != nil {
			return []string{imp.SecretRef.Name}
		}
		return nil
	}); err != nil {
		return err
	}
	return ctrl.NewControllerManagedBy(mgr).
		For(&keywardv1.SigningKey{}, builder.WithPredicates(predicate.Or(predicate.GenerationChangedPredicate{}, predicate.LabelChangedPredicate{}))).
		Owns(&corev1.Secret{}).
		Owns(&corev1.ConfigMap{}).
		Watches(&keywardv1.TokenIssuer{}, handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
			ti := o.(*keywardv1.TokenIssuer)
			return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: ti.Namespace, Name: ti.Spec.SigningKeyRef.Name}}}
		})).
		Watches(&corev1.Secret{}, handler.EnqueueRequestsFromMapFunc(r.signingKeysImporting)).
		Named("signingkey").
		Complete(r)
}

// signingKeysImporting maps an import Secret to the SigningKeys that import it.
func (r *SigningKeyReconciler) signingKeysImporting(ctx context.Context, o client.Object) []reconcile.Request {
	if o.GetLabels()[keywardv1.LabelUse] != keywardv1.UseReferenced {
		return nil
	}
	var list keywardv1.SigningKeyList
	if err := r.List(ctx, &list, client.InNamespace(o.GetNamespace()), client.MatchingFields{indexImportSecretRef: o.GetName()}); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "Cannot list SigningKeys importing a Secret", "secret", client.ObjectKeyFromObject(o))
		return nil
	}
	reqs := make([]reconcile.Request, 0, len(list.Items))
	for i := range list.Items {
		reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])})
	}
	return reqs
}

// requeueAfter is the delay until the next scheduled lifecycle step, or until the next look
// at an import Secret that was not found.
func (s *signingKeyScope) requeueAfter() time.Duration {
	var d time.Duration
	if !s.nextAt.IsZero() {
		d = max(s.nextAt.Sub(s.now), time.Second) // never spin
	}
	if s.importProblem != nil && s.importProblem.Reason == ReasonImportNotFound {
		// An import Secret created without keyward's label raises no event keyward sees.
		if d == 0 || d > missingReferenceRetry {
			d = missingReferenceRetry
		}
	}
	return d
}
