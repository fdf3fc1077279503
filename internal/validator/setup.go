// Package validator is keyward's external authorization service: the decision core (Check),
// its HTTP forward-auth and Envoy gRPC front ends, and the observers that fill the in-memory
// state the core reads. Nothing on the request path calls the Kubernetes API.
package validator

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/cluster"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
)

// Defaults of Options.
const (
	DefaultAuthzAddr     = ":8081"
	DefaultGRPCAddr      = ":9001"
	DefaultPublicURL     = "http://localhost:8080"
	DefaultCacheSize     = 100_000
	DefaultSweepInterval = 30 * time.Second
)

// DefaultTrustedProxies are loopback only: a proxy in the same pod (or on the same host).
var DefaultTrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}

// Options configure the validator.
type Options struct {
	// AuthzAddr is the HTTP forward-auth address (path prefix /authz); empty disables it.
	AuthzAddr string
	// GRPCAddr is the Envoy ext_authz v3 gRPC address; empty disables it.
	GRPCAddr string
	// GRPCTransport is the gRPC server: GRPCTransportKeyward (default) or GRPCTransportGRPCGo.
	GRPCTransport string
	// HTTPTransport is the HTTP server: HTTPTransportKeyward (default; event loops, plain
	// TCP only) or HTTPTransportFastHTTP, which also serves HTTPTLS.
	HTTPTransport string
	// EventLoops is the number of event loops of each keyward transport on plain TCP (HTTP
	// and gRPC); DefaultHTTPEventLoops() when zero.
	EventLoops int
	// HTTPTLS and GRPCTLS, when set, make the HTTP and gRPC listeners serve TLS with these
	// configurations (tlsreload.Source.ServerConfig: reloaded certificates, TLS 1.2 at least,
	// client certificates for mutual TLS). The gRPC one must offer ALPN "h2".
	HTTPTLS, GRPCTLS *tls.Config
	// PublicURL is the base of the iss of TokenIssuers without spec.issuer:
	// {PublicURL}/{namespace}/{name}. It must equal the issuer role's.
	PublicURL string
	// TrustedProxies are the callers whose X-Forwarded-* and X-Original-* headers describe
	// the original request. Nil means DefaultTrustedProxies; empty trusts none.
	TrustedProxies []netip.Prefix
	// AllowUnmatched lets through requests to hosts no AccessPolicy names. Denied otherwise.
	AllowUnmatched bool
	// AllowHSKeys reads SigningKeys' key-set Secrets (starting a Secret informer, which needs
	// Secret read permission) to validate HS256/384/512 tokens. Off: such tokens are denied.
	AllowHSKeys bool
	// Namespaces restricts the watches to these namespaces; every namespace when empty.
	Namespaces []string
	// CacheSize bounds the verified-token cache (entries); DefaultCacheSize when zero.
	CacheSize int
	// MaxTokenLen caps the token size; token.DefaultMaxLen when zero.
	MaxTokenLen int
	// ExternalRefreshInterval is how often external issuers' JWKS are refetched (5m when zero);
	// ExternalMinInterval how soon an unknown kid may trigger another fetch (10s when zero).
	ExternalRefreshInterval time.Duration
	ExternalMinInterval     time.Duration
	// Clock is the decision clock; the real clock when nil.
	Clock clock.PassiveClock
	// OnListening, if set, is called with each server's bound address ("http" or "grpc"),
	// for tests binding port 0.
	OnListening func(protocol string, addr net.Addr)
}

func (o *Options) defaults() {
	if o.PublicURL == "" {
		o.PublicURL = DefaultPublicURL
	}
	if o.TrustedProxies == nil {
		o.TrustedProxies = DefaultTrustedProxies
	}
	if o.CacheSize <= 0 {
		o.CacheSize = DefaultCacheSize
	}
	if o.ExternalRefreshInterval <= 0 {
		o.ExternalRefreshInterval = defaultRefreshEvery
	}
	if o.ExternalMinInterval <= 0 {
		o.ExternalMinInterval = defaultUnknownKIDWait
	}
	if o.Clock == nil {
		o.Clock = clock.RealClock{}
	}
}

// Validator is a decision core with its state. Setup wires one to a manager; tests and
// benchmarks may build one with New and feed its state directly.
type Validator struct {
	*Checker
	store *store
	ready atomic.Bool
	// synced is closed when ready becomes true: the servers listen only from then on.
	synced chan struct{}
	opts   Options
}

// New builds a validator whose state is empty until fed. Its snapshots are rebuilt
// synchronously until Run starts the rebuild loop.
func New(o Options, log logr.Logger) *Validator {
	o.defaults()
	m := defaultMetrics()
	c := newTokenCache(o.CacheSize)
	newExt := func(spec *externalSpec) *externalIssuer {
		e := newExternalIssuer(spec, o.Clock, o.ExternalMinInterval, log, m)
		e.refresh(true)
		return e
	}
	st := newStore(o.PublicURL, o.AllowHSKeys, c, log, newExt)
	v := &Validator{store: st, opts: o, synced: make(chan struct{})}
	v.Checker = &Checker{store: st, cache: c, clock: o.Clock, allowUnmatched: o.AllowUnmatched,
		allowHS: o.AllowHSKeys, maxTokenLen: o.MaxTokenLen, metrics: m, log: log, ready: &v.ready}
	v.markReady()
	return v
}

// markReady marks the state synced: the core stops denying everything and the servers start
// listening.
func (v *Validator) markReady() {
	v.ready.Store(true)
	close(v.synced)
}

// Setup adds the validator to a manager: its own informer cache (AccessPolicies,
// TokenIssuers, JWKS ConfigMaps, revoked Sessions as metadata; key-set Secrets only with
// AllowHSKeys), the HTTP and gRPC servers, and the loops that keep its state. Every part runs
// on every replica (no leader election). The servers listen only once the informers have
// synced (and the core denies everything until then): a proxy in front of several replicas
// gets a refused connection from a replica that is starting, and tries another, instead of a
// deny from an empty state.
func Setup(ctx context.Context, mgr ctrl.Manager, o Options) error {
	log := ctrl.Log.WithName("validator")
	v := New(o, log)
	v.ready.Store(false)
	v.synced = make(chan struct{})
	o = v.opts

	cl, err := cluster.New(mgr.GetConfig(), func(co *cluster.Options) {
		co.Scheme = mgr.GetScheme()
		co.Logger = log
		co.Cache = cacheOptions(o)
	})
	if err != nil {
		return fmt.Errorf("cannot create validator cache: %w", err)
	}
	obs := &observer{store: v.store, log: log, tombstones: make(chan sessionTombstone, 4096)}
	if err := obs.watch(ctx, cl, o.AllowHSKeys); err != nil {
		return err
	}
	v.store.kick = make(chan struct{}, 1)
	runnables := []runnableFunc{
		func(ctx context.Context) error { return v.rebuildLoop(ctx, obs) },
		func(ctx context.Context) error { return v.janitor(ctx, obs) },
	}
	if err := mgr.Add(cl); err != nil {
		return fmt.Errorf("cannot add validator cache: %w", err)
	}
	for _, r := range runnables {
		if err := mgr.Add(r); err != nil {
			return fmt.Errorf("cannot add validator loop: %w", err)
		}
	}
	listening := func(proto string) func(net.Addr) {
		return func(a net.Addr) {
			if o.OnListening != nil {
				o.OnListening(proto, a)
			}
		}
	}
	if o.AuthzAddr != "" {
		h := &httpHandler{checker: v.Checker, trusted: o.TrustedProxies, log: log}
		if err := mgr.Add(&httpServer{addr: o.AuthzAddr, handler: h, log: log, ready: listening("http"), waitFor: v.synced, wrap: tlsListener(o.HTTPTLS), transport: o.HTTPTransport, eventLoops: o.EventLoops}); err != nil {
			return fmt.Errorf("cannot add HTTP forward auth server: %w", err)
		}
	}
	if o.GRPCAddr != "" {
		if err := mgr.Add(&grpcServer{addr: o.GRPCAddr, checker: v.Checker, log: log, ready: listening("grpc"), waitFor: v.synced, wrap: tlsListener(o.GRPCTLS), transport: o.GRPCTransport, eventLoops: o.EventLoops}); err != nil {
			return fmt.Errorf("cannot add gRPC authorization server: %w", err)
		}
	}
	if err := mgr.AddReadyzCheck("validator", func(*http.Request) error {
		if !v.ready.Load() {
			return errors.New("validator state not synced yet")
		}
		return nil
	}); err != nil {
		return fmt.Errorf("cannot add validator readiness check: %w", err)
	}
	return nil
}

// tlsListener returns what wraps a server's listener: TLS with cfg, or nothing when cfg is nil.
func tlsListener(cfg *tls.Config) func(net.Listener) net.Listener {
	if cfg == nil {
		return nil
	}
	return func(ln net.Listener) net.Listener { return tls.NewListener(ln, cfg) }
}

// cacheOptions select what the validator caches: revoked Sessions only, JWKS ConfigMaps
// only, key-set Secrets only (and only when asked for).
func cacheOptions(o Options) cache.Options {
	session := &metav1.PartialObjectMetadata{}
	session.SetGroupVersionKind(sessionGVK)
	byObject := map[client.Object]cache.ByObject{
		&corev1.ConfigMap{}: {Label: labels.SelectorFromSet(labels.Set{keywardv1.LabelUse: keywardv1.UseJWKS})},
		session:             {Label: labels.SelectorFromSet(labels.Set{keywardv1.LabelRevoked: "true"})},
	}
	if o.AllowHSKeys {
		byObject[&corev1.Secret{}] = cache.ByObject{Label: labels.SelectorFromSet(labels.Set{keywardv1.LabelUse: keywardv1.UseSigningKey})}
	}
	opts := cache.Options{ByObject: byObject, DefaultTransform: cache.TransformStripManagedFields()}
	if len(o.Namespaces) > 0 {
		opts.DefaultNamespaces = map[string]cache.Config{}
		for _, ns := range o.Namespaces {
			opts.DefaultNamespaces[ns] = cache.Config{}
		}
	}
	return opts
}

// waitSynced blocks until synced is closed (at once when nil); false when ctx ends first.
func waitSynced(ctx context.Context, synced <-chan struct{}) bool {
	if synced == nil {
		return true
	}
	select {
	case <-synced:
		return true
	case <-ctx.Done():
		return false
	}
}

// listen opens a server's listener on addr, wrapped by wrap (TLS) if set; ready, if set,
// learns its address.
func listen(addr string, wrap func(net.Listener) net.Listener, ready func(net.Addr)) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("cannot listen on %s: %w", addr, err)
	}
	if wrap != nil {
		ln = wrap(ln)
	}
	if ready != nil {
		ready(ln.Addr())
	}
	return ln, nil
}

// acceptEach hands every connection accepted on ln to serve, until ln is closed (nil). An
// error that passes (out of file descriptors and the like) is retried after a pause, as
// net/http does; another one is returned.
func acceptEach(ln net.Listener, log logr.Logger, serve func(net.Conn)) error {
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			if !retryAccept(err) {
				return err
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			log.Error(err, "Cannot accept a connection", "address", ln.Addr().String(), "retryIn", backoff.String())
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		serve(c)
	}
}

// retryAccept reports whether an Accept error passes (out of file descriptors and the like).
func retryAccept(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM)
}

// serveUntilDone runs serve on a goroutine until ctx ends (nil) or serve returns first
// (its error, naming the server).
func serveUntilDone(ctx context.Context, server string, serve func() error) error {
	errc := make(chan error, 1)
	go func() { errc <- serve() }()
	select {
	case err := <-errc:
		return fmt.Errorf("%s failed: %w", server, err)
	case <-ctx.Done():
		return nil
	}
}

// runnableFunc is a manager runnable that runs on every replica.
type runnableFunc func(context.Context) error

func (f runnableFunc) Start(ctx context.Context) error { return f(ctx) }
func (f runnableFunc) NeedLeaderElection() bool        { return false }

// rebuildLoop publishes a snapshot after each burst of changes, and marks the validator
// ready once every informer has delivered its initial list.
func (v *Validator) rebuildLoop(ctx context.Context, obs *observer) error {
	v.store.rebuild()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-v.store.kick:
			v.store.rebuild()
		case <-tick.C:
			if !v.ready.Load() && obs.synced() {
				v.store.rebuild()
				v.markReady()
				tick.Stop()
			}
		}
	}
}

// janitor drops expired tokens, forgets old tombstones and refreshes external JWKS.
func (v *Validator) janitor(ctx context.Context, obs *observer) error {
	sweep := time.NewTicker(DefaultSweepInterval)
	defer sweep.Stop()
	refresh := time.NewTicker(v.opts.ExternalRefreshInterval)
	defer refresh.Stop()
	var tombstones []sessionTombstone
	for {
		select {
		case <-ctx.Done():
			return nil
		case t := <-obs.tombstones:
			tombstones = append(tombstones, t)
		case <-sweep.C:
			now := v.opts.Clock.Now()
			v.cache.sweep(now)
			kept := tombstones[:0]
			for _, t := range tombstones {
				if time.Now().After(t.at) {
					v.store.setSessionRevoked(t.key.namespace, t.key.name, false)
				} else {
					kept = append(kept, t)
				}
			}
			tombstones = kept
		case <-refresh.C:
			for _, e := range v.store.externalIssuers() {
				e.refresh(true)
			}
		}
	}
}

// Ready reports whether the validator's state is synced; until then it denies everything.
func (v *Validator) Ready() bool { return v.ready.Load() }
