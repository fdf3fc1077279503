package controllers

import (
	"context"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kerrors "k8s.io/apimachinery/pkg/util/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
	"github.com/keyward/keyward/internal/keys"
)

// patchStatus writes the SigningKey's status once per reconcile, from what the phases found.
// observedGeneration moves only when the reconcile succeeded. The patch is optimistic: a
// controller with a stale view (a second replica racing) gets a conflict instead of
// overwriting a newer status.
func (r *SigningKeyReconciler) patchStatus(ctx context.Context, before *keywardv1.SigningKey, s *signingKeyScope, reconcileErr error) error {
	if apierrors.IsConflict(reconcileErr) || apierrors.IsAlreadyExists(reconcileErr) {
		// Another writer got there first: this reconcile worked from a stale view, so it
		// reports nothing (not even Ready=False); the retry decides again from fresh data.
		return reconcileErr
	}
	sk := s.sk
	if s.keySet != nil {
		sk.Status.Keys = keyStatuses(s.keySet)
		sk.Status.ActiveKeyID = ""
		if active := s.keySet.Active(); active != nil {
			sk.Status.ActiveKeyID = active.KID
		}
		sk.Status.SecretName = SecretName(sk)
		sk.Status.JWKSConfigMapName = JWKSConfigMapName(sk)
	}
	cond := readyCondition(s, reconcileErr)
	cond.ObservedGeneration = sk.Generation
	meta.SetStatusCondition(&sk.Status.Conditions, cond)
	if reconcileErr == nil {
		sk.Status.ObservedGeneration = sk.Generation
	}
	if equality.Semantic.DeepEqual(before.Status, sk.Status) {
		return reconcileErr
	}
	err := r.Status().Patch(ctx, sk, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{}))
	if err != nil && !apierrors.IsNotFound(err) {
		return kerrors.NewAggregate([]error{reconcileErr, fmt.Errorf("cannot patch status: %w", err)})
	}
	return reconcileErr
}

func readyCondition(s *signingKeyScope, reconcileErr error) metav1.Condition {
	switch {
	case s.blocked != nil:
		return *s.blocked
	case s.importProblem != nil:
		return *s.importProblem
	case reconcileErr != nil:
		return metav1.Condition{Type: keywardv1.ConditionReady, Status: metav1.ConditionFalse,
			Reason: "ReconcileError", Message: reconcileErr.Error()}
	case s.keySet == nil || s.keySet.Active() == nil:
		return metav1.Condition{Type: keywardv1.ConditionReady, Status: metav1.ConditionFalse,
			Reason: "NoActiveKey", Message: "No key signs yet"}
	default:
		return metav1.Condition{Type: keywardv1.ConditionReady, Status: metav1.ConditionTrue,
			Reason: ReasonKeySetReady, Message: fmt.Sprintf("Key %s signs; %d keys published", s.keySet.Active().KID, len(s.keySet.Keys))}
	}
}

// keyStatuses reports the key set's lifecycle, oldest first.
func keyStatuses(ks *keys.KeySet) []keywardv1.KeyStatus {
	out := make([]keywardv1.KeyStatus, 0, len(ks.Keys))
	for i := range ks.Keys {
		l := &ks.Keys[i].Lifecycle
		st := keywardv1.KeyStatus{
			KID: l.KID, Algorithm: l.Algorithm, State: l.State(), Imported: l.Imported,
			PublishedAt: metav1.NewTime(l.PublishedAt),
			ActivatedAt: metaTime(l.ActivatedAt), RetiredAt: metaTime(l.RetiredAt), RemovesAt: metaTime(l.RemovesAt),
		}
		if l.State() == keywardv1.KeyStatePending {
			st.ActivatesAt = metaTime(&l.ActivatesAt)
		}
		out = append(out, st)
	}
	return out
}

func metaTime(t *time.Time) *metav1.Time {
	if t == nil {
		return nil
	}
	mt := metav1.NewTime(*t)
	return &mt
}
