// Package scheme builds the runtime scheme keyward's clients use: client-go's built-in types
// and keyward.dev/v1alpha1.
package scheme

import (
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
)

// New returns a scheme with the Kubernetes built-in types and keyward's API.
func New() *runtime.Scheme {
	s := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(s))
	utilruntime.Must(keywardv1.AddToScheme(s))
	return s
}
