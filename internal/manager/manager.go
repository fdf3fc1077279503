// Package manager builds keyward's controller manager: a cache that holds only the Secrets and
// ConfigMaps carrying keyward's label, and the reconcilers. cmd/keyward and the controller tests
// share it, so the tests run the controllers exactly as the binary wires them.
package manager

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
	"github.com/keyward/keyward/controllers"
	"github.com/keyward/keyward/internal/scheme"
)

// The leader-election Lease is granted by a Role in the controller's own namespace
// (config/rbac/leader_election_role.yaml), not by the cluster-wide role controller-gen writes.

// Options configure the manager.
type Options struct {
	// MetricsBindAddress is the address of the Prometheus metrics endpoint; "0" disables it.
	MetricsBindAddress string
	// HealthProbeBindAddress is the address of /healthz and /readyz; "0" disables them.
	HealthProbeBindAddress string
	// LeaderElection elects a leader so that only one replica reconciles at a time.
	LeaderElection bool
	// LeaderElectionID names the leader-election Lease.
	LeaderElectionID string
	// LeaderElectionNamespace is the namespace of the leader-election Lease.
	LeaderElectionNamespace string
	// Namespaces restricts the caches, and so the reconcilers, to these namespaces; every
	// namespace when empty.
	Namespaces []string
	// WebhookServer serves the admission webhooks (package webhook/v1alpha1); none when nil.
	WebhookServer webhook.Server
	// SkipControllerNameValidation lets one process run several managers with the same
	// controllers (tests that run two controller replicas side by side).
	SkipControllerNameValidation bool
}

// New creates a manager with keyward's scheme and cache options. It registers no reconciler:
// call SetupControllers.
func New(cfg *rest.Config, o Options) (ctrl.Manager, error) {
	opts := ctrl.Options{
		Scheme:                        scheme.New(),
		Cache:                         CacheOptions(o.Namespaces...),
		Metrics:                       metricsserver.Options{BindAddress: o.MetricsBindAddress},
		HealthProbeBindAddress:        o.HealthProbeBindAddress,
		LeaderElection:                o.LeaderElection,
		LeaderElectionID:              o.LeaderElectionID,
		LeaderElectionNamespace:       o.LeaderElectionNamespace,
		LeaderElectionReleaseOnCancel: true,
		WebhookServer:                 o.WebhookServer,
	}
	if o.SkipControllerNameValidation {
		skip := true
		opts.Controller = config.Controller{SkipNameValidation: &skip}
	}
	mgr, err := ctrl.NewManager(cfg, opts)
	if err != nil {
		return nil, fmt.Errorf("cannot create manager: %w", err)
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return nil, err
	}
	synced := &syncedMarker{cache: mgr.GetCache()}
	if err := mgr.Add(synced); err != nil {
		return nil, fmt.Errorf("cannot add cache-sync marker: %w", err)
	}
	if err := mgr.AddReadyzCheck("informers", synced.check); err != nil {
		return nil, err
	}
	return mgr, nil
}

// syncedMarker is a readiness check that passes only once the informer caches have synced.
// controller-runtime's manager serves /readyz before it starts its caches, and its ping check
// passes at once: a pod would receive traffic while its informers are still listing.
//
// The marker is a runnable that needs no leader election: the manager starts such runnables
// only after every cache it holds (its own and those added with mgr.Add, such as the
// validator's and the issuer's) has synced, so its start is the moment they all have. Informers
// created later (a controller's watches, when it starts) are covered by asking the manager's
// cache, without blocking the probe.
type syncedMarker struct {
	cache   cache.Cache
	started atomic.Bool
}

func (m *syncedMarker) Start(context.Context) error { m.started.Store(true); return nil }
func (m *syncedMarker) NeedLeaderElection() bool    { return false }

// probeSyncWait bounds how long one readiness probe waits for the informers.
const probeSyncWait = 100 * time.Millisecond

func (m *syncedMarker) check(req *http.Request) error {
	if !m.started.Load() {
		return errors.New("informer caches have not synced yet")
	}
	ctx, cancel := context.WithTimeout(req.Context(), probeSyncWait)
	defer cancel()
	if !m.cache.WaitForCacheSync(ctx) {
		return errors.New("informers have not synced yet")
	}
	return nil
}

// GracefulStop delays a stop so that endpoints stop sending traffic before the listeners
// close. It returns a context that is cancelled delay after ctx is (at once when delay is
// zero), and a readiness check that fails from the moment ctx is cancelled. Run the manager
// under the returned context and add the check: on SIGTERM the pod turns unready, the
// endpoints controller and the proxies drop it, and only then do the servers stop accepting
// connections and drain the requests in flight.
func GracefulStop(ctx context.Context, delay time.Duration) (context.Context, healthz.Checker) {
	var draining atomic.Bool
	check := func(*http.Request) error {
		if draining.Load() {
			return errors.New("shutting down")
		}
		return nil
	}
	if delay <= 0 {
		return ctx, check
	}
	stopCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	go func() {
		<-ctx.Done()
		draining.Store(true)
		ctrl.Log.Info("Shutting down: unready, waiting before closing the listeners", "delay", delay.String())
		t := time.NewTimer(delay)
		defer t.Stop()
		<-t.C
		cancel()
	}()
	return stopCtx, check
}

// WarmInformers creates the manager cache's informers for objs before the manager starts, so
// that its caches (and so the readiness check) include them. Controllers otherwise create
// their informers only when they start.
func WarmInformers(ctx context.Context, mgr ctrl.Manager, objs ...client.Object) error {
	for _, obj := range objs {
		if _, err := mgr.GetCache().GetInformer(ctx, obj, cache.BlockUntilSynced(false)); err != nil {
			return fmt.Errorf("cannot create informer for %T: %w", obj, err)
		}
	}
	return nil
}

// CacheOptions restrict the Secret and ConfigMap caches to objects carrying keyward's label:
// keyward never caches every Secret in the cluster. With namespaces, every cache is restricted
// to them.
func CacheOptions(namespaces ...string) cache.Options {
	req, err := labels.NewRequirement(keywardv1.LabelUse, selection.Exists, nil)
	utilruntime.Must(err)
	selector := labels.NewSelector().Add(*req)
	opts := cache.Options{ByObject: map[client.Object]cache.ByObject{
		&corev1.Secret{}:    {Label: selector},
		&corev1.ConfigMap{}: {Label: selector},
		// Every refresh writes its Session: the controllers watch only revoked ones (see
		// controllers.SessionReconciler).
		&keywardv1.Session{}: {Field: fields.OneTermEqualSelector("spec.revoked", "true")},
	}}
	if len(namespaces) > 0 {
		opts.DefaultNamespaces = make(map[string]cache.Config, len(namespaces))
		for _, ns := range namespaces {
			opts.DefaultNamespaces[ns] = cache.Config{}
		}
	}
	return opts
}

// ControllerOptions tune the reconcilers; the zero value gives the defaults.
type ControllerOptions struct {
	// PublicURL is the issuer service's public base URL, for TokenIssuer status.
	PublicURL string
	// SessionSweepInterval is how often every Session is listed to delete expired ones
	// (controllers.DefaultSessionSweepInterval when zero).
	SessionSweepInterval time.Duration
	// Namespaces restricts the Session sweep, which lists from the API server rather than the
	// cache, to the namespaces the manager's cache watches (Options.Namespaces); all when empty.
	Namespaces []string
}

// SetupControllers registers keyward's reconcilers with the manager, and creates the
// informers they watch at once (WarmInformers): readiness then waits for them, and a standby
// replica has warm caches when it becomes the leader.
func SetupControllers(ctx context.Context, mgr ctrl.Manager, o ControllerOptions) error {
	if err := WarmInformers(ctx, mgr, &keywardv1.SigningKey{}, &keywardv1.TokenIssuer{}, &keywardv1.AccessPolicy{},
		&keywardv1.Session{}, &corev1.Secret{}, &corev1.ConfigMap{}); err != nil {
		return err
	}
	if err := (&controllers.SigningKeyReconciler{
		Client:    mgr.GetClient(),
		APIReader: mgr.GetAPIReader(),
		Recorder:  mgr.GetEventRecorder("keyward-signingkey"),
		Clock:     clock.RealClock{},
	}).SetupWithManager(ctx, mgr); err != nil {
		return fmt.Errorf("cannot set up SigningKey controller: %w", err)
	}
	if err := (&controllers.TokenIssuerReconciler{
		Client:    mgr.GetClient(),
		APIReader: mgr.GetAPIReader(),
		PublicURL: o.PublicURL,
	}).SetupWithManager(ctx, mgr); err != nil {
		return fmt.Errorf("cannot set up TokenIssuer controller: %w", err)
	}
	if err := (&controllers.AccessPolicyReconciler{Client: mgr.GetClient()}).SetupWithManager(ctx, mgr); err != nil {
		return fmt.Errorf("cannot set up AccessPolicy controller: %w", err)
	}
	if err := (&controllers.SessionReconciler{
		Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Clock: clock.RealClock{}, SweepInterval: o.SessionSweepInterval,
		Namespaces: o.Namespaces,
	}).SetupWithManager(ctx, mgr); err != nil {
		return fmt.Errorf("cannot set up Session controller: %w", err)
	}
	return nil
}
