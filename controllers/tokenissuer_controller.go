package controllers

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kerrors "k8s.io/apimachinery/pkg/util/errors"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
)

// missingReferenceRetry is how often a TokenIssuer whose Secret is missing looks again: a
// Secret created without keyward's label raises no watch event keyward can see.
const missingReferenceRetry = 30 * time.Second

// UsersDataKey is the data key of the htpasswd list in a users Secret.
const UsersDataKey = "htpasswd"

// TokenIssuerReconciler resolves a TokenIssuer's references and reports whether it can issue.
type TokenIssuerReconciler struct {
	client.Client
	// APIReader reads referenced Secrets the cache does not hold yet.
	APIReader client.Reader
	// PublicURL is the issuer service's public base URL (the --public-url of the issuer role),
	// from which status.issuer and status.endpoints are derived for a TokenIssuer without
	// spec.issuer.
	PublicURL string
}

// +kubebuilder:rbac:groups=keyward.dev,resources=tokenissuers,verbs=get;list;watch
// +kubebuilder:rbac:groups=keyward.dev,resources=tokenissuers/status,verbs=get;update;patch

// Reconcile sets the TokenIssuer's Ready condition from its SigningKey and Secrets.
func (r *TokenIssuerReconciler) Reconcile(ctx context.Context, req ctrl.Request) (_ ctrl.Result, retErr error) {
	ti := &keywardv1.TokenIssuer{}
	if err := r.Get(ctx, req.NamespacedName, ti); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !ti.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil
	}
	before := ti.DeepCopy()
	verdict, err := r.resolve(ctx, ti)
	defer func() {
		retErr = r.patchStatus(ctx, before, ti, verdict, retErr)
	}()
	if err != nil {
		return ctrl.Result{}, err
	}
	if verdict.Reason == keywardv1.ReasonUsersSecretNotFound || verdict.Reason == keywardv1.ReasonClientsSecretNotFound {
		return ctrl.Result{RequeueAfter: missingReferenceRetry}, nil
	}
	return ctrl.Result{}, nil
}

// resolve checks each reference in turn and returns the Ready condition.
func (r *TokenIssuerReconciler) resolve(ctx context.Context, ti *keywardv1.TokenIssuer) (metav1.Condition, error) {
	notReady := func(reason, format string, args ...any) metav1.Condition {
		return metav1.Condition{Type: keywardv1.ConditionReady, Status: metav1.ConditionFalse, Reason: reason, Message: fmt.Sprintf(format, args...)}
	}
	sk := &keywardv1.SigningKey{}
	if err := r.Get(ctx, client.ObjectKey{Namespace: ti.Namespace, Name: ti.Spec.SigningKeyRef.Name}, sk); err != nil {
		if apierrors.IsNotFound(err) {
			return notReady(keywardv1.ReasonSigningKeyNotFound, "SigningKey %q not found", ti.Spec.SigningKeyRef.Name), nil
		}
		return notReady("ReconcileError", "cannot get SigningKey"), fmt.Errorf("cannot get signing key: %w", err)
	}
	if !meta.IsStatusConditionTrue(sk.Status.Conditions, keywardv1.ConditionReady) {
		return notReady(keywardv1.ReasonSigningKeyNotReady, "SigningKey %q has no Active key yet", sk.Name), nil
	}
	refs := []struct {
		name, reason, what, dataKey string
	}{{ti.Spec.Users.SecretRef.Name, keywardv1.ReasonUsersSecretNotFound, "users", UsersDataKey}}
	if ti.Spec.Clients != nil {
		refs = append(refs, struct{ name, reason, what, dataKey string }{ti.Spec.Clients.SecretRef.Name, keywardv1.ReasonClientsSecretNotFound, "clients", ""})
	}
	for _, ref := range refs {
		secret, err := getReferencedSecret(ctx, r.Client, r.APIReader, ti.Namespace, ref.name)
		if apierrors.IsNotFound(err) {
			return notReady(ref.reason, "%s Secret %q not found", ref.what, ref.name), nil
		}
		if err != nil {
			return notReady("ReconcileError", "cannot read %s Secret", ref.what), err
		}
		if _, ok := secret.Data[ref.dataKey]; ref.dataKey != "" && !ok {
			return notReady(ref.reason, "%s Secret %q has no data key %q", ref.what, ref.name, ref.dataKey), nil
		}
	}
	return metav1.Condition{Type: keywardv1.ConditionReady, Status: metav1.ConditionTrue, Reason: keywardv1.ReasonReady,
		Message: fmt.Sprintf("Signing with SigningKey %q key %s", sk.Name, sk.Status.ActiveKeyID)}, nil
}

func (r *TokenIssuerReconciler) patchStatus(ctx context.Context, before, ti *keywardv1.TokenIssuer, cond metav1.Condition, reconcileErr error) error {
	ti.Status.Issuer = ti.EffectiveIssuer(r.PublicURL)
	ti.Status.Endpoints = keywardv1.EndpointsFor(ti.Status.Issuer)
	cond.ObservedGeneration = ti.Generation
	meta.SetStatusCondition(&ti.Status.Conditions, cond)
	if reconcileErr == nil {
		ti.Status.ObservedGeneration = ti.Generation
	}
	if equality.Semantic.DeepEqual(before.Status, ti.Status) {
		return reconcileErr
	}
	if err := r.Status().Patch(ctx, ti, client.MergeFrom(before)); err != nil && !apierrors.IsNotFound(err) {
		return kerrors.NewAggregate([]error{reconcileErr, fmt.Errorf("cannot patch status: %w", err)})
	}
	return reconcileErr
}

// SetupWithManager registers the reconciler, its index and its watches: a TokenIssuer is
// reconciled again when its SigningKey or one of its Secrets changes.
func (r *TokenIssuerReconciler) SetupWithManager(ctx context.Context, mgr ctrl.Manager) error {
	if err := mgr.GetFieldIndexer().IndexField(ctx, &keywardv1.TokenIssuer{}, indexReferencedSecrets, func(o client.Object) []string {
		ti := o.(*keywardv1.TokenIssuer)
		names := []string{ti.Spec.Users.SecretRef.Name}
		if ti.Spec.Clients != nil {
			names = append(names, ti.Spec.Clients.SecretRef.Name)
		}
		return names
	}); err != nil {
		return err
	}
	return ctrl.NewControllerManagedBy(mgr).
		For(&keywardv1.TokenIssuer{}).
		Watches(&keywardv1.SigningKey{}, handler.EnqueueRequestsFromMapFunc(r.issuersBy(indexSigningKeyRef))).
		Watches(&corev1.Secret{}, handler.EnqueueRequestsFromMapFunc(r.issuersBy(indexReferencedSecrets))).
		Named("tokenissuer").
		Complete(r)
}

// issuersBy maps an object to the TokenIssuers whose index field names it.
func (r *TokenIssuerReconciler) issuersBy(index string) handler.MapFunc {
	return func(ctx context.Context, o client.Object) []reconcile.Request {
		var list keywardv1.TokenIssuerList
		if err := r.List(ctx, &list, client.InNamespace(o.GetNamespace()), client.MatchingFields{index: o.GetName()}); err != nil {
			ctrl.LoggerFrom(ctx).Error(err, "Cannot list TokenIssuers", "index", index)
			return nil
		}
		reqs := make([]reconcile.Request, 0, len(list.Items))
		for i := range list.Items {
			reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])})
		}
		return reqs
	}
}
