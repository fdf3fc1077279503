package v1alpha1

import (
	"context"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
	"github.com/keyward/keyward/internal/validator/expr"
)

// AccessPolicyValidator refuses when expressions that do not compile in the validators' CEL
// environment (the CRD's own CEL rules cannot compile a program), and warns about TokenIssuers
// the policy names that do not exist: requests those rules match are denied until they do.
type AccessPolicyValidator struct {
	Reader client.Reader
}

// ValidateCreate checks a new AccessPolicy.
func (v *AccessPolicyValidator) ValidateCreate(ctx context.Context, p *keywardv1.AccessPolicy) (admission.Warnings, error) {
	return v.validate(ctx, nil, p)
}

// ValidateUpdate checks a changed AccessPolicy: an expression that does not compile is refused
// only when it is new, so that a policy whose expressions a newer keyward no longer accepts can
// still be edited (its controller reports them; validators deny what they match).
func (v *AccessPolicyValidator) ValidateUpdate(ctx context.Context, old, p *keywardv1.AccessPolicy) (admission.Warnings, error) {
	return v.validate(ctx, old, p)
}

// ValidateDelete allows every deletion.
func (v *AccessPolicyValidator) ValidateDelete(ctx context.Context, p *keywardv1.AccessPolicy) (admission.Warnings, error) {
	return noDelete(ctx, p)
}

func (v *AccessPolicyValidator) validate(ctx context.Context, old, p *keywardv1.AccessPolicy) (admission.Warnings, error) {
	existing := map[string]bool{}
	if old != nil {
		for _, r := range old.Spec.Rules {
			existing[r.When] = true
		}
	}
	var errs field.ErrorList
	var warnings admission.Warnings
	checked := map[string]bool{}
	rules := field.NewPath("spec", "rules")
	for i, r := range p.Spec.Rules {
		if r.When != "" && !existing[r.When] {
			if _, err := expr.Compile(r.When); err != nil {
				errs = append(errs, field.Invalid(rules.Index(i).Child("when"), r.When, fmt.Sprintf("does not compile: %v", err)))
			}
		}
		for j, ref := range r.Issuers {
			if ref.Name == "" || checked[ref.Name] {
				continue
			}
			checked[ref.Name] = true
			path := rules.Index(i).Child("issuers").Index(j).Child("name")
			err := v.Reader.Get(ctx, client.ObjectKey{Namespace: p.Namespace, Name: ref.Name}, &keywardv1.TokenIssuer{})
			switch {
			case apierrors.IsNotFound(err):
				warnings = append(warnings, fmt.Sprintf("%s: TokenIssuer %q does not exist (yet) in namespace %q: requests the rule matches "+
					"are denied (unknown issuer) until it does", path, ref.Name, p.Namespace))
			case err != nil:
				warnings = append(warnings, fmt.Sprintf("%s: cannot check TokenIssuer %q: %v", path, ref.Name, err))
			}
		}
	}
	if len(errs) > 0 {
		return warnings, apierrors.NewInvalid(keywardv1.GroupVersion.WithKind("AccessPolicy").GroupKind(), p.Name, errs)
	}
	return warnings, nil
}
