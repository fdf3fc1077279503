package controllers

import (
	"context"
	"errors"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
)

// maxLeeway is the largest leeway a TokenIssuer may set; a Session whose TokenIssuer is gone
// is kept this long past its end.
const maxLeeway = 5 * time.Minute

// DefaultSessionSweepInterval is how often every Session is listed to delete the expired ones.
const DefaultSessionSweepInterval = time.Minute

// sessionSweepPageSize bounds each page of a sweep's Session list.
const sessionSweepPageSize = 500

// SessionReconciler garbage-collects Sessions once every token of theirs has expired, and
// completes revocations made by setting spec.revoked alone (an admin's edit): it adds the
// keyward.dev/revoked label that validators watch, and records when and why in status.
//
// It watches only revoked Sessions (the manager's cache selects spec.revoked=true, a CRD
// selectable field): a watch of every Session would cost the API server and this process an
// event per refresh, since every refresh writes its Session. Expired Sessions, and revocations
// someone tried to undo, are found by a sweep that lists every Session, page by page, at
// SweepInterval.
type SessionReconciler struct {
	client.Client
	// APIReader lists Sessions for the sweep, bypassing the revoked-only cache.
	APIReader client.Reader
	Clock     clock.PassiveClock
	// SweepInterval is the time between sweeps; DefaultSessionSweepInterval when zero.
	SweepInterval time.Duration
	// Namespaces restricts the sweep to these namespaces (a namespace-restricted install has no
	// permission to list Sessions cluster-wide); every namespace when empty.
	Namespaces []string
}

// +kubebuilder:rbac:groups=keyward.dev,resources=sessions,verbs=get;list;watch;update;patch;delete
// +kubebuilder:rbac:groups=keyward.dev,resources=sessions/status,verbs=get;update;patch

// SessionAction is what a Session needs now.
type SessionAction struct {
	// Delete: every token of the session has expired.
	Delete bool
	// LabelRevoked: spec.revoked is set but the label validators watch is not.
	LabelRevoked bool
	// RecordRevocation: spec.revoked is set but status.revokedAt is not.
	RecordRevocation bool
	// Unrevoked: status.revokedAt is set but spec.revoked was cleared; set it back.
	Unrevoked bool
	// RequeueAfter is when to look again (the deletion time).
	RequeueAfter time.Duration
}

// DecideSession is the pure decision behind the reconciler: a Session is deleted once its
// expiresAt plus the issuer's leeway has passed (no token of it can be valid any more, since
// no access token outlives its session), and a revoked one must carry the revoked label.
func DecideSession(s *keywardv1.Session, leeway time.Duration, now time.Time) SessionAction {
	deleteAt := s.Spec.ExpiresAt.Add(leeway)
	if !now.Before(deleteAt) {
		return SessionAction{Delete: true}
	}
	a := SessionAction{RequeueAfter: max(deleteAt.Sub(now), time.Second)}
	if s.Status.RevokedAt != nil {
		// Revocation is sticky: an edit that un-revokes the spec or drops the label is undone.
		a.Unrevoked = !s.Spec.Revoked
		a.LabelRevoked = s.Labels[keywardv1.LabelRevoked] != "true"
	} else if s.Spec.Revoked {
		a.LabelRevoked = s.Labels[keywardv1.LabelRevoked] != "true"
		a.RecordRevocation = s.Status.RevokedAt == nil
	}
	return a
}

// Reconcile applies DecideSession to a revoked Session.
func (r *SessionReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	s := &keywardv1.Session{}
	if err := r.Get(ctx, req.NamespacedName, s); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	return r.apply(ctx, s)
}

// apply carries out what DecideSession says of one Session.
func (r *SessionReconciler) apply(ctx context.Context, s *keywardv1.Session) (ctrl.Result, error) {
	if !s.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil
	}
	leeway := maxLeeway
	ti := &keywardv1.TokenIssuer{}
	if err := r.Get(ctx, client.ObjectKey{Namespace: s.Namespace, Name: s.Spec.IssuerRef.Name}, ti); err == nil {
		leeway = ti.Spec.LeewayDuration()
	} else if !apierrors.IsNotFound(err) {
		return ctrl.Result{}, fmt.Errorf("cannot get token issuer: %w", err)
	}
	now := r.Clock.Now()
	a := DecideSession(s, leeway, now)
	log := ctrl.LoggerFrom(ctx)
	if a.Delete {
		// Conditioned on the version read: a Session changed meanwhile is decided again.
		err := r.Delete(ctx, s, client.Preconditions{UID: &s.UID, ResourceVersion: &s.ResourceVersion})
		if err != nil && !apierrors.IsNotFound(err) {
			return ctrl.Result{}, fmt.Errorf("cannot delete expired session: %w", err)
		}
		log.V(1).Info("Deleted expired session", "reason", "Expired")
		return ctrl.Result{}, nil
	}
	if a.LabelRevoked || a.Unrevoked {
		before := s.DeepCopy()
		if s.Labels == nil {
			s.Labels = map[string]string{}
		}
		s.Labels[keywardv1.LabelRevoked] = "true"
		s.Spec.Revoked = true
		if err := r.Patch(ctx, s, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})); err != nil {
			return ctrl.Result{}, fmt.Errorf("cannot label revoked session: %w", err)
		}
		if a.Unrevoked {
			log.Info("Session was un-revoked; revocation is final, revoking it again", "reason", "RevocationIsFinal")
		} else {
			log.Info("Labelled revoked session", "reason", "Admin")
		}
	}
	if a.RecordRevocation {
		before := s.DeepCopy()
		t := metav1.NewTime(now)
		s.Status.RevokedAt = &t
		if s.Status.RevokedReason == "" {
			s.Status.RevokedReason = keywardv1.SessionRevokedAdmin
		}
		if err := r.Status().Patch(ctx, s, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})); err != nil {
			return ctrl.Result{}, fmt.Errorf("cannot record session revocation: %w", err)
		}
	}
	return ctrl.Result{RequeueAfter: a.RequeueAfter}, nil
}

// SetupWithManager registers the reconciler and its sweep.
func (r *SessionReconciler) SetupWithManager(_ context.Context, mgr ctrl.Manager) error {
	if err := mgr.Add(&sessionSweep{r: r}); err != nil {
		return err
	}
	return ctrl.NewControllerManagedBy(mgr).
		For(&keywardv1.Session{}).
		Named("session").
		Complete(r)
}

// sessionSweep is the leader-elected runnable that lists every Session at an interval.
type sessionSweep struct{ r *SessionReconciler }

func (s *sessionSweep) NeedLeaderElection() bool { return true }

func (s *sessionSweep) Start(ctx context.Context) error {
	interval := s.r.SweepInterval
	if interval <= 0 {
		interval = DefaultSessionSweepInterval
	}
	log := ctrl.LoggerFrom(ctx).WithName("session-sweep")
	ctx = ctrl.LoggerInto(ctx, log)
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		if err := s.r.sweep(ctx); err != nil && ctx.Err() == nil {
			log.Error(err, "Session sweep failed; retrying at the next interval")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
	}
}

// sweep applies DecideSession to every Session of the watched namespaces.
func (r *SessionReconciler) sweep(ctx context.Context) error {
	if len(r.Namespaces) == 0 {
		return r.sweepNamespace(ctx, "")
	}
	var errs []error
	for _, ns := range r.Namespaces {
		errs = append(errs, r.sweepNamespace(ctx, ns))
	}
	return errors.Join(errs...)
}

// sweepNamespace applies DecideSession to every Session of namespace ("" for all), listing
// them from the API server page by page.
func (r *SessionReconciler) sweepNamespace(ctx context.Context, namespace string) error {
	var list keywardv1.SessionList
	base := []client.ListOption{client.Limit(sessionSweepPageSize), client.InNamespace(namespace)}
	opts := base
	for {
		if err := r.APIReader.List(ctx, &list, opts...); err != nil {
			return fmt.Errorf("cannot list sessions: %w", err)
		}
		for i := range list.Items {
			if _, err := r.apply(ctx, &list.Items[i]); err != nil {
				ctrl.LoggerFrom(ctx).Error(err, "Cannot apply session decision", "session", client.ObjectKeyFromObject(&list.Items[i]))
			}
		}
		if list.Continue == "" {
			return nil
		}
		opts = append(base[:len(base):len(base)], client.Continue(list.Continue))
	}
}
