package controllers

import (
	"context"
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
	"github.com/keyward/keyward/internal/validator/expr"
)

// maxConditionMessage keeps the Ready message within the API's limit (32768).
const maxConditionMessage = 4096

// AccessPolicyReconciler compiles an AccessPolicy's CEL expressions, as every validator
// does, and reports those that do not compile in the Ready condition. Validators deny what
// an invalid rule matches; they never need this controller to decide.
type AccessPolicyReconciler struct {
	client.Client
}

// +kubebuilder:rbac:groups=keyward.dev,resources=accesspolicies,verbs=get;list;watch
// +kubebuilder:rbac:groups=keyward.dev,resources=accesspolicies/status,verbs=get;update;patch

// Reconcile sets the AccessPolicy's Ready condition.
func (r *AccessPolicyReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	p := &keywardv1.AccessPolicy{}
	if err := r.Get(ctx, req.NamespacedName, p); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !p.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil
	}
	before := p.DeepCopy()
	return ctrl.Result{}, r.patchStatus(ctx, before, p, policyCondition(p))
}

// policyCondition is the Ready condition of a policy: True unless an expression does not
// compile.
func policyCondition(p *keywardv1.AccessPolicy) metav1.Condition {
	errs := expr.PolicyErrors(p)
	if len(errs) == 0 {
		return metav1.Condition{Type: keywardv1.ConditionReady, Status: metav1.ConditionTrue, Reason: keywardv1.ReasonReady,
			Message: "every expression compiles"}
	}
	msg := strings.Join(errs, "; ")
	if len(msg) > maxConditionMessage {
		msg = msg[:maxConditionMessage] + "..."
	}
	return metav1.Condition{Type: keywardv1.ConditionReady, Status: metav1.ConditionFalse, Reason: keywardv1.ReasonInvalidExpression,
		Message: fmt.Sprintf("requests matching these rules are denied: %s", msg)}
}

func (r *AccessPolicyReconciler) patchStatus(ctx context.Context, before, p *keywardv1.AccessPolicy, cond metav1.Condition) error {
	cond.ObservedGeneration = p.Generation
	meta.SetStatusCondition(&p.Status.Conditions, cond)
	p.Status.ObservedGeneration = p.Generation
	if equality.Semantic.DeepEqual(before.Status, p.Status) {
		return nil
	}
	if err := r.Status().Patch(ctx, p, client.MergeFrom(before)); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("cannot patch status: %w", err)
	}
	return nil
}

// SetupWithManager registers the reconciler. Only spec changes (generation) matter.
func (r *AccessPolicyReconciler) SetupWithManager(_ context.Context, mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		For(&keywardv1.AccessPolicy{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Named("accesspolicy").
		Complete(r)
}
