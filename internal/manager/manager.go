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

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
	"github.com/keyward/keyward/controllers"
	"github.com/keyward/keyward/internal/scheme"
)

// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=get;list;watch;create;update;patch;delete

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
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		return nil, err
	}
	if err := mgr.AddReadyzCheck(CacheSyncedCheckName, CacheSyncedCheck(mgr.GetCache())); err != nil {
		return nil, err
	}
	return mgr, nil
}

// CacheSyncedCheckName names the readiness check that fails until the manager's informer
// cache has synced.
const CacheSyncedCheckName = "informer-cache-synced"

// cacheSyncProbeTimeout bounds how long one probe waits for the cache.
const cacheSyncProbeTimeout = 100 * time.Millisecond

// CacheSyncedCheck is a readiness check that fails until every informer of c has synced: a
// replica whose caches are empty would answer from nothing (an issuer without its
// TokenIssuers). Each probe waits at most 100ms; once synced, the check passes without
// waiting (informers do not unsync).
func CacheSyncedCheck(c cache.Cache) healthz.Checker {
	var synced atomic.Bool
	return func(req *http.Request) error {
		if synced.Load() {
			return nil
		}
		ctx, cancel := context.WithTimeout(req.Context(), cacheSyncProbeTimeout)
		defer cancel()
		if !c.WaitForCacheSync(ctx) {
			return errors.New("informer caches have not synced yet")
		}
		synced.Store(true)
		return nil
	}
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
}

// SetupControllers registers keyward's reconcilers with the manager.
func SetupControllers(ctx context.Context, mgr ctrl.Manager, o ControllerOptions) error {
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
	}).SetupWithManager(ctx, mgr); err != nil {
		return fmt.Errorf("cannot set up Session controller: %w", err)
	}
	return nil
}
