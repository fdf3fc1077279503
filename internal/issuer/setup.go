// Package issuer is keyward's token service: simplejwt-compatible endpoints (/api/token/...)
// and OAuth2/OIDC endpoints (/oauth2/..., /.well-known/...) for every TokenIssuer, served under
// /{namespace}/{name}/ on every replica.
//
// An observer (a controller without leader election) keeps an in-memory Registry of each
// TokenIssuer's effective configuration, signer, verify keys, users and clients, read through
// the manager's cache; a second, label-selected cache watches revoked Sessions. The handlers
// read only these; the request path calls the Kubernetes API only for Sessions (create at
// login, read and compare-and-swap at refresh and revocation).
package issuer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"runtime"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
)

// Options configure the issuer service.
type Options struct {
	// Addr is the HTTP listen address, such as ":8080". Ignored when Listener is set.
	Addr string
	// Listener, when set, is used instead of listening on Addr (tests pass 127.0.0.1:0).
	Listener net.Listener
	// PublicURL is the base of the default iss, {PublicURL}/{namespace}/{name}, of TokenIssuers
	// without spec.issuer. Default http://localhost:8080.
	PublicURL string
	// HashConcurrency bounds concurrent password hash computations; default GOMAXPROCS.
	HashConcurrency int
	// Namespaces restricts the revoked-Session watch to these namespaces (all when empty), as
	// manager.Options.Namespaces restricts the manager's cache.
	Namespaces []string
	// Clock is the time source; default the real clock.
	Clock clock.PassiveClock
	// ShutdownTimeout bounds the graceful shutdown; default 10s.
	ShutdownTimeout time.Duration
}

// Setup adds the issuer to a manager: the observer controller, the revoked-Session watch and
// the HTTP server. None of them needs leader election: every replica serves.
func Setup(ctx context.Context, mgr ctrl.Manager, o Options) error {
	_, err := setup(ctx, mgr, o)
	return err
}

func setup(ctx context.Context, mgr ctrl.Manager, o Options) (*Server, error) {
	if o.PublicURL == "" {
		o.PublicURL = "http://localhost:8080"
	}
	if o.HashConcurrency <= 0 {
		o.HashConcurrency = runtime.GOMAXPROCS(0)
	}
	if o.Clock == nil {
		o.Clock = clock.RealClock{}
	}
	if o.ShutdownTimeout <= 0 {
		o.ShutdownTimeout = 10 * time.Second
	}
	if o.Addr == "" && o.Listener == nil {
		return nil, errors.New("issuer needs an address or a listener")
	}
	registerMetrics()
	reg := newRegistry()

	obs := &observer{client: mgr.GetClient(), registry: reg, publicURL: o.PublicURL}
	if err := obs.setup(mgr); err != nil {
		return nil, fmt.Errorf("cannot set up issuer observer: %w", err)
	}
	// Create the observer's informers now rather than when its controller starts, so that the
	// manager's caches, and so its readiness check, include them.
	for _, obj := range []client.Object{&keywardv1.TokenIssuer{}, &keywardv1.SigningKey{}, &corev1.Secret{}} {
		if _, err := mgr.GetCache().GetInformer(ctx, obj, cache.BlockUntilSynced(false)); err != nil {
			return nil, fmt.Errorf("cannot watch %T: %w", obj, err)
		}
	}
	if err := watchRevoked(ctx, mgr, reg.revoked, o.Namespaces); err != nil {
		return nil, err
	}
	rd := &readiness{cache: mgr.GetCache(), registry: reg}
	if err := mgr.AddReadyzCheck(RegistryReadyCheckName, rd.check); err != nil {
		return nil, fmt.Errorf("cannot add issuer readiness check: %w", err)
	}
	srv := &Server{
		ready:    rd.ready,
		registry: reg,
		sessions: &sessionStore{
			client:   mgr.GetClient(),
			reader:   mgr.GetAPIReader(),
			recorder: mgr.GetEventRecorder("keyward-issuer"),
			revoked:  reg.revoked,
		},
		hashSem:  make(chan struct{}, o.HashConcurrency),
		clock:    o.Clock,
		addr:     o.Addr,
		listener: o.Listener,
		log:      ctrl.Log.WithName("issuer"),
		shutdown: o.ShutdownTimeout,
	}
	if err := mgr.Add(srv); err != nil {
		return nil, fmt.Errorf("cannot add issuer server: %w", err)
	}
	return srv, nil
}

// revokedCache is a cache of revoked Sessions only, started with the manager's caches on
// every replica.
type revokedCache struct{ cache.Cache }

// GetCache makes the manager start it with its caches, before the runnables, on every replica.
func (c revokedCache) GetCache() cache.Cache { return c.Cache }

// watchRevoked fills the revoked set from a cache holding only Sessions labelled
// keyward.dev/revoked=true. Watching keeps revocations by other replicas, and by admins,
// visible to /api/token/verify/ and introspection within the watch latency, without an API call
// per request.
func watchRevoked(ctx context.Context, mgr ctrl.Manager, set *revokedSet, namespaces []string) error {
	sel := labels.SelectorFromSet(labels.Set{keywardv1.LabelRevoked: "true"})
	opts := cache.Options{
		Scheme:   mgr.GetScheme(),
		Mapper:   mgr.GetRESTMapper(),
		ByObject: map[client.Object]cache.ByObject{&keywardv1.Session{}: {Label: sel}},
	}
	if len(namespaces) > 0 {
		opts.DefaultNamespaces = make(map[string]cache.Config, len(namespaces))
		for _, ns := range namespaces {
			opts.DefaultNamespaces[ns] = cache.Config{}
		}
	}
	c, err := cache.New(mgr.GetConfig(), opts)
	if err != nil {
		return fmt.Errorf("cannot create revoked-session cache: %w", err)
	}
	inf, err := c.GetInformer(ctx, &keywardv1.Session{}, cache.BlockUntilSynced(false))
	if err != nil {
		return fmt.Errorf("cannot watch revoked sessions: %w", err)
	}
	keyOf := func(obj any) (types.NamespacedName, bool) {
		if d, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
			obj = d.Obj
		}
		s, ok := obj.(*keywardv1.Session)
		if !ok {
			return types.NamespacedName{}, false
		}
		return types.NamespacedName{Namespace: s.Namespace, Name: s.Name}, true
	}
	if _, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if k, ok := keyOf(obj); ok {
				set.add(k)
			}
		},
		UpdateFunc: func(_, obj any) {
			if k, ok := keyOf(obj); ok {
				set.add(k)
			}
		},
		// A revoked Session leaves the watch only when the controller deletes it, once every
		// token of it has expired: nothing is left to refuse.
		DeleteFunc: func(obj any) {
			if k, ok := keyOf(obj); ok {
				set.remove(k)
			}
		},
	}); err != nil {
		return fmt.Errorf("cannot watch revoked sessions: %w", err)
	}
	return mgr.Add(revokedCache{c})
}

// RegistryReadyCheckName names the issuer's readiness check: it fails until every TokenIssuer
// in the cache has a snapshot in the registry.
const RegistryReadyCheckName = "issuer-registry"

// readiness says whether the issuer can answer for every TokenIssuer: the manager's cache has
// synced and the observer has built a snapshot (ready to issue or not) of every TokenIssuer it
// holds. Before that a request for an existing TokenIssuer would get a 404. Once true it
// stays true (TokenIssuers created later are served as soon as the observer sees them, like
// any change).
type readiness struct {
	cache    cache.Cache
	registry *Registry
	done     atomic.Bool
}

func (r *readiness) ready(ctx context.Context) error {
	if r.done.Load() {
		return nil
	}
	syncCtx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if !r.cache.WaitForCacheSync(syncCtx) {
		return errors.New("informer caches have not synced yet")
	}
	var list keywardv1.TokenIssuerList
	if err := r.cache.List(ctx, &list); err != nil {
		return fmt.Errorf("cannot list TokenIssuers: %w", err)
	}
	keys := make([]types.NamespacedName, len(list.Items))
	for i := range list.Items {
		keys[i] = client.ObjectKeyFromObject(&list.Items[i])
	}
	if k, missing := r.registry.missing(keys); missing {
		return fmt.Errorf("TokenIssuer %s not observed yet", k)
	}
	r.done.Store(true)
	return nil
}

func (r *readiness) check(req *http.Request) error { return r.ready(req.Context()) }
