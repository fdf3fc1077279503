package v1alpha1

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
	"github.com/keyward/keyward/internal/issuer"
)

// TokenIssuerValidator checks a TokenIssuer's references. It refuses one thing: a TokenIssuer
// with the same iss and the same SigningKey as another TokenIssuer of its namespace, whose
// tokens validators could not tell apart (a policy naming one would accept the other's). What
// may still change (a SigningKey or Secret applied next, a key becoming Ready) gives warnings.
type TokenIssuerValidator struct {
	Reader client.Reader
	// PublicURL is the issuer's public base URL (see Options).
	PublicURL string
}

// ValidateCreate checks a new TokenIssuer.
func (v *TokenIssuerValidator) ValidateCreate(ctx context.Context, ti *keywardv1.TokenIssuer) (admission.Warnings, error) {
	return v.validate(ctx, nil, ti)
}

// ValidateUpdate checks a changed TokenIssuer: the iss conflict only when its iss or
// SigningKey changed.
func (v *TokenIssuerValidator) ValidateUpdate(ctx context.Context, old, ti *keywardv1.TokenIssuer) (admission.Warnings, error) {
	return v.validate(ctx, old, ti)
}

// ValidateDelete allows every deletion.
func (v *TokenIssuerValidator) ValidateDelete(ctx context.Context, ti *keywardv1.TokenIssuer) (admission.Warnings, error) {
	return noDelete(ctx, ti)
}

func (v *TokenIssuerValidator) validate(ctx context.Context, old, ti *keywardv1.TokenIssuer) (admission.Warnings, error) {
	var warnings admission.Warnings
	warnings = append(warnings, v.signingKeyWarnings(ctx, ti)...)
	warnings = append(warnings, v.secretWarnings(ctx, ti)...)

	iss := ti.EffectiveIssuer(v.PublicURL)
	if old != nil && old.EffectiveIssuer(v.PublicURL) == iss && old.Spec.SigningKeyRef == ti.Spec.SigningKeyRef {
		return warnings, nil
	}
	list := &keywardv1.TokenIssuerList{}
	if err := v.Reader.List(ctx, list, client.InNamespace(ti.Namespace)); err != nil {
		return append(warnings, fmt.Sprintf("cannot check that iss %q is unique: %v", iss, err)), nil
	}
	for i := range list.Items {
		other := &list.Items[i]
		if other.Name == ti.Name || other.EffectiveIssuer(v.PublicURL) != iss {
			continue
		}
		if other.Spec.SigningKeyRef == ti.Spec.SigningKeyRef {
			return warnings, apierrors.NewInvalid(keywardv1.GroupVersion.WithKind("TokenIssuer").GroupKind(), ti.Name, field.ErrorList{
				field.Invalid(field.NewPath("spec", "issuer"), iss, fmt.Sprintf(
					"TokenIssuer %q has the same iss and the same SigningKey %q: validators could not tell their tokens apart, "+
						"so a policy naming one would accept the other's; set a different spec.issuer or spec.signingKeyRef",
					other.Name, ti.Spec.SigningKeyRef.Name)),
			})
		}
		warnings = append(warnings, fmt.Sprintf("spec.issuer: TokenIssuer %q has the same iss %q: its discovery document "+
			"can describe only one of them", other.Name, iss))
	}
	return warnings, nil
}

// signingKeyWarnings says what will keep the SigningKey from signing this issuer's tokens,
// or from being verified by every validator.
func (v *TokenIssuerValidator) signingKeyWarnings(ctx context.Context, ti *keywardv1.TokenIssuer) admission.Warnings {
	name := ti.Spec.SigningKeyRef.Name
	sk := &keywardv1.SigningKey{}
	if err := v.Reader.Get(ctx, client.ObjectKey{Namespace: ti.Namespace, Name: name}, sk); err != nil {
		if apierrors.IsNotFound(err) {
			return admission.Warnings{fmt.Sprintf("spec.signingKeyRef: SigningKey %q does not exist (yet): the TokenIssuer stays not Ready (%s) until it does",
				name, keywardv1.ReasonSigningKeyNotFound)}
		}
		return admission.Warnings{fmt.Sprintf("spec.signingKeyRef: cannot check SigningKey %q: %v", name, err)}
	}
	var out admission.Warnings
	if !sk.DeletionTimestamp.IsZero() {
		out = append(out, fmt.Sprintf("spec.signingKeyRef: SigningKey %q is being deleted", name))
	}
	if sk.Spec.Algorithm.IsSymmetric() {
		out = append(out, fmt.Sprintf("spec.signingKeyRef: SigningKey %q uses %s, a shared secret that is never published: only validators "+
			"started with --allow-hs-keys (which then read key-set Secrets) can verify its tokens", name, sk.Spec.Algorithm))
	}
	if c := meta.FindStatusCondition(sk.Status.Conditions, keywardv1.ConditionReady); c != nil && c.Status == metav1.ConditionFalse &&
		c.ObservedGeneration == sk.Generation {
		out = append(out, fmt.Sprintf("spec.signingKeyRef: SigningKey %q is not Ready (%s): %s", name, c.Reason, c.Message))
	}
	return out
}

// secretWarnings says what is missing from the users and clients Secrets. They are read
// directly: keyward's caches see them only once the controller has labelled them.
func (v *TokenIssuerValidator) secretWarnings(ctx context.Context, ti *keywardv1.TokenIssuer) admission.Warnings {
	var out admission.Warnings
	check := func(path, name string, problem func(*corev1.Secret) error) {
		s := &corev1.Secret{}
		if err := v.Reader.Get(ctx, client.ObjectKey{Namespace: ti.Namespace, Name: name}, s); err != nil {
			if apierrors.IsNotFound(err) {
				out = append(out, fmt.Sprintf("%s: Secret %q does not exist (yet): the TokenIssuer stays not Ready until it does", path, name))
			} else {
				out = append(out, fmt.Sprintf("%s: cannot check Secret %q: %v", path, name, err))
			}
			return
		}
		if err := problem(s); err != nil {
			out = append(out, fmt.Sprintf("%s: Secret %q: %v; the issuer refuses to issue tokens until it is fixed", path, name, err))
		}
	}
	check("spec.users.secretRef.name", ti.Spec.Users.SecretRef.Name, func(s *corev1.Secret) error {
		if _, ok := s.Data[issuer.HtpasswdDataKey]; !ok {
			return fmt.Errorf("no data key %q", issuer.HtpasswdDataKey)
		}
		return nil
	})
	if ti.Spec.Clients != nil {
		check("spec.clients.secretRef.name", ti.Spec.Clients.SecretRef.Name, func(s *corev1.Secret) error {
			_, err := issuer.ParseClients(s.Data)
			return err
		})
	}
	return out
}
