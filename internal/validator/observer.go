package validator

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/cluster"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
)

// +kubebuilder:rbac:groups=keyward.dev,resources=accesspolicies;tokenissuers,verbs=get;list;watch
// +kubebuilder:rbac:groups=keyward.dev,resources=sessions,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=configmaps,verbs=get;list;watch

// sessionGVK is the kind the revoked-session watch reads as metadata only.
var sessionGVK = keywardv1.GroupVersion.WithKind("Session")

// revokedTombstone is how long a revoked Session that was deleted (or lost its label) stays
// revoked in memory: longer than any access token of it can live.
const revokedTombstone = 24 * time.Hour

// observer feeds the store from informers: AccessPolicies, TokenIssuers, JWKS ConfigMaps,
// revoked Sessions (metadata only), and key-set Secrets only with AllowHSKeys.
type observer struct {
	store *store
	log   logr.Logger
	regs  []toolscache.ResourceEventHandlerRegistration
	// tombstones are deleted revoked Sessions and when to forget them.
	tombstones chan sessionTombstone
}

type sessionTombstone struct {
	key sessionKey
	at  time.Time
}

// watch registers the event handlers on the cluster's informers.
func (o *observer) watch(ctx context.Context, cl cluster.Cluster, allowHS bool) error {
	add := func(obj client.Object, h toolscache.ResourceEventHandlerFuncs) error {
		inf, err := cl.GetCache().GetInformer(ctx, obj)
		if err != nil {
			return fmt.Errorf("cannot get informer for %T: %w", obj, err)
		}
		reg, err := inf.AddEventHandler(h)
		if err != nil {
			return fmt.Errorf("cannot watch %T: %w", obj, err)
		}
		o.regs = append(o.regs, reg)
		return nil
	}
	if err := add(&keywardv1.AccessPolicy{}, toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { o.policy(obj) },
		UpdateFunc: func(_, obj any) { o.policy(obj) },
		DeleteFunc: func(obj any) {
			if p, ok := unwrap(obj).(*keywardv1.AccessPolicy); ok {
				o.store.deletePolicy(p.Namespace, p.Name)
			}
		},
	}); err != nil {
		return err
	}
	if err := add(&keywardv1.TokenIssuer{}, toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { o.tokenIssuer(obj) },
		UpdateFunc: func(_, obj any) { o.tokenIssuer(obj) },
		DeleteFunc: func(obj any) {
			if ti, ok := unwrap(obj).(*keywardv1.TokenIssuer); ok {
				o.store.deleteTokenIssuer(ti.Namespace, ti.Name)
			}
		},
	}); err != nil {
		return err
	}
	if err := add(&corev1.ConfigMap{}, toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { o.configMap(obj) },
		UpdateFunc: func(_, obj any) { o.configMap(obj) },
		DeleteFunc: func(obj any) {
			if cm, ok := unwrap(obj).(*corev1.ConfigMap); ok {
				o.store.deleteJWKS(cm.Namespace, signingKeyOf(cm, "-jwks"))
			}
		},
	}); err != nil {
		return err
	}
	session := &metav1.PartialObjectMetadata{}
	session.SetGroupVersionKind(sessionGVK)
	if err := add(session, toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { o.session(obj, false) },
		UpdateFunc: func(_, obj any) { o.session(obj, false) },
		DeleteFunc: func(obj any) { o.session(obj, true) },
	}); err != nil {
		return err
	}
	if allowHS {
		if err := add(&corev1.Secret{}, toolscache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { o.secret(obj) },
			UpdateFunc: func(_, obj any) { o.secret(obj) },
			DeleteFunc: func(obj any) {
				if s, ok := unwrap(obj).(*corev1.Secret); ok {
					o.store.deleteKeySet(s.Namespace, signingKeyOf(s, "-keyset"))
				}
			},
		}); err != nil {
			return err
		}
	}
	return nil
}

// synced reports whether every handler has seen its informer's initial list.
func (o *observer) synced() bool {
	for _, r := range o.regs {
		if !r.HasSynced() {
			return false
		}
	}
	return true
}

func unwrap(obj any) any {
	if d, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
		return d.Obj
	}
	return obj
}

// signingKeyOf names the SigningKey a ConfigMap or Secret belongs to: its label, else its
// name without the suffix.
func signingKeyOf(obj metav1.Object, suffix string) string {
	if sk := obj.GetLabels()[keywardv1.LabelSigningKey]; sk != "" {
		return sk
	}
	return strings.TrimSuffix(obj.GetName(), suffix)
}

func (o *observer) policy(obj any) {
	if p, ok := obj.(*keywardv1.AccessPolicy); ok {
		o.store.setPolicy(p)
	}
}

func (o *observer) tokenIssuer(obj any) {
	if ti, ok := obj.(*keywardv1.TokenIssuer); ok {
		o.store.setTokenIssuer(ti)
	}
}

func (o *observer) configMap(obj any) {
	cm, ok := obj.(*corev1.ConfigMap)
	if !ok {
		return
	}
	if err := o.store.setJWKS(cm.Namespace, signingKeyOf(cm, "-jwks"), []byte(cm.Data[keywardv1.JWKSDataKey])); err != nil {
		o.log.Error(err, "Ignoring the keys of an unreadable JWKS ConfigMap", "configMap", klog.KObj(cm))
	}
}

func (o *observer) secret(obj any) {
	s, ok := obj.(*corev1.Secret)
	if !ok || s.Type != keywardv1.SecretTypeSigningKey {
		return
	}
	if err := o.store.setKeySet(s.Namespace, signingKeyOf(s, "-keyset"), s.Data[keywardv1.KeySetDataKey]); err != nil {
		o.log.Error(err, "Ignoring unreadable HS keys", "secret", klog.KObj(s))
	}
}

// session records a revoked Session. The informer only lists Sessions labelled revoked, so
// an object leaving it (deleted, or unlabelled) stays revoked for revokedTombstone.
func (o *observer) session(obj any, gone bool) {
	m, ok := unwrap(obj).(metav1.Object)
	if !ok {
		return
	}
	if gone {
		select {
		case o.tombstones <- sessionTombstone{sessionKey{m.GetNamespace(), m.GetName()}, time.Now().Add(revokedTombstone)}:
		default:
			// The janitor is behind: keep the session revoked for the life of the process.
		}
		return
	}
	if m.GetLabels()[keywardv1.LabelRevoked] == "true" {
		o.store.setSessionRevoked(m.GetNamespace(), m.GetName(), true)
	}
}
