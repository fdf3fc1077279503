// Package testenv starts a real kube-apiserver and etcd (controller-runtime envtest) with
// keyward's CRDs installed, for tests. The binaries come from hack/control-plane.sh, which
// `make test` runs and exports as KUBEBUILDER_ASSETS.
package testenv

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/keyward/keyward/internal/scheme"
)

// Env is a running control plane.
type Env struct {
	env    *envtest.Environment
	Config *rest.Config
	Client client.Client
}

// RepoRoot is the repository's root directory.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// Start starts etcd and kube-apiserver and installs the CRDs from config/crd. It fails
// when KUBEBUILDER_ASSETS is not set: tests against the API server never silently skip.
func Start() (*Env, error) {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		return nil, fmt.Errorf("KUBEBUILDER_ASSETS is not set: run the tests with `make test`, " +
			"or export KUBEBUILDER_ASSETS=$(hack/control-plane.sh bin)")
	}
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(RepoRoot(), "config", "crd")},
		ErrorIfCRDPathMissing: true,
		Scheme:                scheme.New(),
	}
	cfg, err := env.Start()
	if err != nil {
		return nil, fmt.Errorf("cannot start envtest: %w", err)
	}
	// Tests create many objects quickly; do not let client-side throttling slow them.
	cfg.QPS, cfg.Burst = 500, 1000
	c, err := client.New(cfg, client.Options{Scheme: env.Scheme})
	if err != nil {
		_ = env.Stop()
		return nil, fmt.Errorf("cannot create client: %w", err)
	}
	return &Env{env: env, Config: cfg, Client: c}, nil
}

// Stop stops the control plane.
func (e *Env) Stop() error { return e.env.Stop() }

// GVK is a convenience for tests that build unstructured objects.
func GVK(kind string) schema.GroupVersionKind {
	return schema.GroupVersionKind{Group: "keyward.dev", Version: "v1alpha1", Kind: kind}
}
