// Package v1alpha1 is keyward's validating admission webhook for keyward.dev/v1alpha1. It
// checks only what the CRD schema's CEL rules cannot: references to other objects, the content
// of referenced Secrets, and AccessPolicy expressions compiled as the validators compile them.
// A reference to an object that does not exist yet is a warning, never a refusal, so that
// objects can be applied in any order (docs/adr/0011-admission-webhook.md).
//
// Refusals are ratcheted: an update is refused only for what it changes, so that an object made
// invalid by something else (a Secret edited later, a newer CEL library) can still be edited,
// and a key can always be revoked.
package v1alpha1

import (
	"context"
	"fmt"

	"k8s.io/apimachinery/pkg/runtime"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
)

// Paths of the webhooks; the +kubebuilder:webhook markers name the same paths.
const (
	SigningKeyPath   = "/validate-keyward-dev-v1alpha1-signingkey"
	TokenIssuerPath  = "/validate-keyward-dev-v1alpha1-tokenissuer"
	AccessPolicyPath = "/validate-keyward-dev-v1alpha1-accesspolicy"
)

// failurePolicy=ignore: see docs/adr/0011-admission-webhook.md. The Helm chart renders its own
// configuration (with a namespaceSelector) from values; these markers generate
// config/webhook/manifests.yaml.
//
// +kubebuilder:webhook:path=/validate-keyward-dev-v1alpha1-signingkey,mutating=false,failurePolicy=ignore,sideEffects=None,groups=keyward.dev,resources=signingkeys,verbs=create;update,versions=v1alpha1,name=signingkeys.keyward.dev,admissionReviewVersions=v1,timeoutSeconds=3
// +kubebuilder:webhook:path=/validate-keyward-dev-v1alpha1-tokenissuer,mutating=false,failurePolicy=ignore,sideEffects=None,groups=keyward.dev,resources=tokenissuers,verbs=create;update,versions=v1alpha1,name=tokenissuers.keyward.dev,admissionReviewVersions=v1,timeoutSeconds=3
// +kubebuilder:webhook:path=/validate-keyward-dev-v1alpha1-accesspolicy,mutating=false,failurePolicy=ignore,sideEffects=None,groups=keyward.dev,resources=accesspolicies,verbs=create;update,versions=v1alpha1,name=accesspolicies.keyward.dev,admissionReviewVersions=v1,timeoutSeconds=3

// Options configure the webhooks.
type Options struct {
	// PublicURL is the issuer's public base URL, from which a TokenIssuer without spec.issuer
	// gets its iss (as the issuer, the validator and the controller compute it).
	PublicURL string
}

// Register serves the webhooks on srv. reader reads the objects the checks look at; it should
// read the API server directly (a manager's APIReader), not a cache: a SigningKey applied a
// moment before the TokenIssuer that names it must be found.
func Register(srv webhook.Server, scheme *runtime.Scheme, reader client.Reader, o Options) {
	srv.Register(SigningKeyPath, admission.WithValidator[*keywardv1.SigningKey](scheme, &SigningKeyValidator{Reader: reader}).
		WithRecoverPanic(true))
	srv.Register(TokenIssuerPath, admission.WithValidator[*keywardv1.TokenIssuer](scheme, &TokenIssuerValidator{Reader: reader, PublicURL: o.PublicURL}).
		WithRecoverPanic(true))
	srv.Register(AccessPolicyPath, admission.WithValidator[*keywardv1.AccessPolicy](scheme, &AccessPolicyValidator{Reader: reader}).
		WithRecoverPanic(true))
}

// Setup registers the webhooks with the manager's webhook server.
func Setup(mgr ctrl.Manager, o Options) error {
	if mgr.GetWebhookServer() == nil {
		return fmt.Errorf("manager has no webhook server")
	}
	Register(mgr.GetWebhookServer(), mgr.GetScheme(), mgr.GetAPIReader(), o)
	return nil
}

// noDelete is the ValidateDelete of every validator: deletions are never checked.
func noDelete[T any](context.Context, T) (admission.Warnings, error) { return nil, nil }
