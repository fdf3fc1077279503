package issuer

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
	"github.com/keyward/keyward/internal/keys"
	"github.com/keyward/keyward/internal/token"
)

// observer fills the Registry from the cache: for each TokenIssuer, its effective iss,
// lifetimes, the Signer of its SigningKey's Active key, verify keys of the whole key set, the
// public JWKS, users and clients. It runs on every replica (no leader election) and writes
// nothing to the cluster: "controllers write, observers serve".
type observer struct {
	client    client.Client
	registry  *Registry
	publicURL string
	dummies   DummyCache
}

// +kubebuilder:rbac:groups=keyward.dev,resources=tokenissuers,verbs=get;list;watch
// +kubebuilder:rbac:groups=keyward.dev,resources=signingkeys,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch

func (o *observer) setup(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		For(&keywardv1.TokenIssuer{}).
		Watches(&keywardv1.SigningKey{}, handler.EnqueueRequestsFromMapFunc(o.issuersFor)).
		Watches(&corev1.Secret{}, handler.EnqueueRequestsFromMapFunc(o.issuersFor)).
		WithOptions(controller.Options{NeedLeaderElection: ptr.To(false), MaxConcurrentReconciles: 2}).
		Named("issuer_observer").
		Complete(o)
}

// issuersFor maps a SigningKey or a Secret to the TokenIssuers of its namespace that use it.
func (o *observer) issuersFor(ctx context.Context, obj client.Object) []reconcile.Request {
	var list keywardv1.TokenIssuerList
	if err := o.client.List(ctx, &list, client.InNamespace(obj.GetNamespace())); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "Cannot list TokenIssuers")
		return nil
	}
	name := obj.GetName()
	var reqs []reconcile.Request
	for i := range list.Items {
		ti := &list.Items[i]
		uses := false
		switch obj.(type) {
		case *keywardv1.SigningKey:
			uses = ti.Spec.SigningKeyRef.Name == name
		case *corev1.Secret:
			uses = ti.Spec.Users.SecretRef.Name == name ||
				(ti.Spec.Clients != nil && ti.Spec.Clients.SecretRef.Name == name) ||
				ti.Spec.SigningKeyRef.Name+"-keyset" == name ||
				obj.GetLabels()[keywardv1.LabelSigningKey] == ti.Spec.SigningKeyRef.Name
		}
		if uses {
			reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(ti)})
		}
	}
	return reqs
}

// Reconcile rebuilds one TokenIssuer's snapshot. A problem the cluster must fix (a missing
// key, a broken users Secret) is recorded as the snapshot's notReady reason, served as 503,
// and logged; it is not retried until an object changes.
func (o *observer) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	ti := &keywardv1.TokenIssuer{}
	if err := o.client.Get(ctx, req.NamespacedName, ti); err != nil {
		if apierrors.IsNotFound(err) {
			o.registry.delete(req.NamespacedName)
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, err
	}
	cfg, err := o.build(ctx, ti)
	if err != nil {
		return ctrl.Result{}, err
	}
	if cfg.notReady != "" {
		ctrl.LoggerFrom(ctx).Info("TokenIssuer cannot issue yet", "reason", cfg.notReady)
	}
	o.registry.set(cfg)
	return ctrl.Result{}, nil
}

func (o *observer) build(ctx context.Context, ti *keywardv1.TokenIssuer) (*issuerConfig, error) {
	key := client.ObjectKeyFromObject(ti)
	spec := &ti.Spec
	cfg := &issuerConfig{
		key:        key,
		label:      key.String(),
		iss:        ti.EffectiveIssuer(o.publicURL),
		audiences:  spec.Audiences,
		accessTTL:  spec.AccessTokenLifetimeDuration(),
		refreshTTL: spec.RefreshTokenLifetimeDuration(),
		leeway:     spec.LeewayDuration(),
		rotate:     spec.RefreshTokenRotation.IsEnabled(),
		grace:      spec.RefreshTokenRotation.GracePeriod(),
		perUser:    rateSpecOf(spec.LoginThrottling.PerUsername, 5, 5),
		perAddress: rateSpecOf(spec.LoginThrottling.PerClientAddress, 20, 30),
	}
	if len(spec.ExtraClaims) > 0 {
		cfg.extraClaims = make(map[string]any, len(spec.ExtraClaims))
		for _, c := range spec.ExtraClaims {
			var v any
			if err := json.Unmarshal(c.Value.Raw, &v); err != nil {
				cfg.notReady = fmt.Sprintf("extra claim %q is not JSON", c.Name)
				return cfg, nil
			}
			cfg.extraClaims[c.Name] = v
		}
	}

	// Signing and verification keys, from the key-set Secret through the cache.
	sk := &keywardv1.SigningKey{}
	if err := o.client.Get(ctx, types.NamespacedName{Namespace: ti.Namespace, Name: spec.SigningKeyRef.Name}, sk); err != nil {
		if apierrors.IsNotFound(err) {
			cfg.notReady = fmt.Sprintf("SigningKey %q not found", spec.SigningKeyRef.Name)
			return cfg, nil
		}
		return nil, fmt.Errorf("cannot get signing key: %w", err)
	}
	cfg.jwksMaxAge = sk.Spec.Rotation.Prepublish.Duration / 2
	if cfg.jwksMaxAge <= 0 {
		cfg.jwksMaxAge = 5 * time.Minute
	}
	secretName := sk.Status.SecretName
	if secretName == "" {
		secretName = sk.Name + "-keyset"
	}
	ksSecret := &corev1.Secret{}
	if err := o.client.Get(ctx, types.NamespacedName{Namespace: ti.Namespace, Name: secretName}, ksSecret); err != nil {
		if apierrors.IsNotFound(err) {
			cfg.notReady = fmt.Sprintf("key-set Secret %q not found", secretName)
			return cfg, nil
		}
		return nil, fmt.Errorf("cannot get key-set secret: %w", err)
	}
	ks, err := keys.ParseKeySet(ksSecret.Data[keywardv1.KeySetDataKey])
	if err != nil {
		cfg.notReady = "key set is damaged: " + err.Error()
		return cfg, nil
	}
	cfg.verifyKeys = make(map[string]*token.VerifyKey, len(ks.Keys))
	for i := range ks.Keys {
		vk, err := token.VerifyKeyFromStored(&ks.Keys[i])
		if err != nil {
			ctrl.LoggerFrom(ctx).Error(err, "Cannot use a key of the key set for verification", "kid", ks.Keys[i].KID)
			continue
		}
		cfg.verifyKeys[vk.KID] = vk
	}
	if cfg.jwks, err = ks.PublicJWKS(); err != nil {
		cfg.notReady = "cannot publish the key set: " + err.Error()
		return cfg, nil
	}
	active := ks.Active()
	if active == nil {
		cfg.notReady = fmt.Sprintf("SigningKey %q has no Active key", sk.Name)
		return cfg, nil
	}
	if cfg.signer, err = token.NewSigner(active); err != nil {
		cfg.notReady = "cannot sign with the Active key: " + err.Error()
		return cfg, nil
	}

	// Users and clients, from their Secrets through the cache (the controller labels them
	// keyward.dev/use=referenced so that the cache holds them).
	users := &corev1.Secret{}
	if err := o.client.Get(ctx, types.NamespacedName{Namespace: ti.Namespace, Name: spec.Users.SecretRef.Name}, users); err != nil {
		if apierrors.IsNotFound(err) {
			cfg.notReady = fmt.Sprintf("users Secret %q not found (or not labelled %s)", spec.Users.SecretRef.Name, keywardv1.LabelUse)
			return cfg, nil
		}
		return nil, fmt.Errorf("cannot get users secret: %w", err)
	}
	if cfg.users, err = ParseUsers(users.Data, &o.dummies); err != nil {
		cfg.notReady = "users Secret is invalid: " + err.Error()
		return cfg, nil
	}
	if spec.Clients != nil {
		clients := &corev1.Secret{}
		if err := o.client.Get(ctx, types.NamespacedName{Namespace: ti.Namespace, Name: spec.Clients.SecretRef.Name}, clients); err != nil {
			if apierrors.IsNotFound(err) {
				cfg.notReady = fmt.Sprintf("clients Secret %q not found (or not labelled %s)", spec.Clients.SecretRef.Name, keywardv1.LabelUse)
				return cfg, nil
			}
			return nil, fmt.Errorf("cannot get clients secret: %w", err)
		}
		if cfg.clients, err = ParseClients(clients.Data); err != nil {
			cfg.notReady = "clients Secret is invalid: " + err.Error()
			return cfg, nil
		}
	}
	return cfg, nil
}

func rateSpecOf(l keywardv1.LoginRateLimit, burst, perMinute int) rateSpec {
	s := rateSpec{burst: int(l.Burst), perMinute: int(l.PerMinute)}
	if s.burst <= 0 {
		s.burst = burst
	}
	if s.perMinute <= 0 {
		s.perMinute = perMinute
	}
	return s
}
