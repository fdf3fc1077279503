package v1alpha1

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
	"github.com/keyward/keyward/internal/keys"
)

// SigningKeyValidator checks a SigningKey's spec.import against the Secret it names: the Secret
// must hold a private key the algorithm can sign with. A key the issuer cannot sign with would
// hold the SigningKey (Ready=False, ImportInvalid) until someone looks at its status.
type SigningKeyValidator struct {
	Reader client.Reader
}

// ValidateCreate checks a new SigningKey.
func (v *SigningKeyValidator) ValidateCreate(ctx context.Context, sk *keywardv1.SigningKey) (admission.Warnings, error) {
	return v.validate(ctx, nil, sk)
}

// ValidateUpdate checks a changed SigningKey: the import only when spec.import or
// spec.algorithm changed, so that revoking keys (spec.revokedKeyIDs) is never refused.
func (v *SigningKeyValidator) ValidateUpdate(ctx context.Context, old, sk *keywardv1.SigningKey) (admission.Warnings, error) {
	return v.validate(ctx, old, sk)
}

// ValidateDelete allows every deletion.
func (v *SigningKeyValidator) ValidateDelete(ctx context.Context, sk *keywardv1.SigningKey) (admission.Warnings, error) {
	return noDelete(ctx, sk)
}

func (v *SigningKeyValidator) validate(ctx context.Context, old, sk *keywardv1.SigningKey) (admission.Warnings, error) {
	imp := sk.Spec.Import
	if imp == nil {
		return nil, nil
	}
	if old != nil && old.Spec.Import != nil && *old.Spec.Import == *imp && old.Spec.Algorithm == sk.Spec.Algorithm {
		return nil, nil
	}
	alg := sk.Spec.Algorithm
	if alg == "" {
		alg = keywardv1.AlgorithmES256
	}
	path := field.NewPath("spec", "import", "secretRef", "name")
	secret := &corev1.Secret{}
	if err := v.Reader.Get(ctx, client.ObjectKey{Namespace: sk.Namespace, Name: imp.SecretRef.Name}, secret); err != nil {
		if apierrors.IsNotFound(err) {
			return admission.Warnings{fmt.Sprintf("%s: Secret %q does not exist (yet): the SigningKey stays not Ready (%s) until it does",
				path, imp.SecretRef.Name, "ImportSecretNotFound")}, nil
		}
		return admission.Warnings{fmt.Sprintf("%s: cannot check Secret %q: %v", path, imp.SecretRef.Name, err)}, nil
	}
	if _, err := keys.ParseImport(alg, secret.Data); err != nil {
		return nil, apierrors.NewInvalid(keywardv1.GroupVersion.WithKind("SigningKey").GroupKind(), sk.Name, field.ErrorList{
			field.Invalid(path, imp.SecretRef.Name, fmt.Sprintf("Secret %q cannot be imported as a %s key: %v", imp.SecretRef.Name, alg, err)),
		})
	}
	return nil, nil
}
