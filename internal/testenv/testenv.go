// Package testenv starts a real kube-apiserver and etcd (controller-runtime envtest) with
// keyward's CRDs installed, for tests. The binaries come from hack/control-plane.sh, which
// `make test` runs and exports as KUBEBUILDER_ASSETS.
package testenv

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

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

// Option changes the control plane Start starts.
type Option func(*envtest.Environment)

// WithWebhooks installs the webhook configurations in config/webhook, changed to call a local
// webhook server (see Env.WebhookServerOptions) with a CA envtest generates.
func WithWebhooks() Option {
	return func(e *envtest.Environment) {
		e.WebhookInstallOptions.Paths = []string{filepath.Join(RepoRoot(), "config", "webhook")}
	}
}

// WithoutCRDs leaves keyward's CRDs out, for tests that install them the way users do (the
// Helm chart, kustomize).
func WithoutCRDs() Option {
	return func(e *envtest.Environment) {
		e.CRDDirectoryPaths, e.ErrorIfCRDPathMissing = nil, false
	}
}

// Start starts etcd and kube-apiserver and installs the CRDs from config/crd. It fails
// when KUBEBUILDER_ASSETS is not set: tests against the API server never silently skip.
func Start(opts ...Option) (*Env, error) {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		return nil, fmt.Errorf("KUBEBUILDER_ASSETS is not set: run the tests with `make test`, " +
			"or export KUBEBUILDER_ASSETS=$(hack/control-plane.sh bin)")
	}
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(RepoRoot(), "config", "crd")},
		ErrorIfCRDPathMissing: true,
		Scheme:                scheme.New(),
	}
	for _, o := range opts {
		o(env)
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

// WebhookServerOptions are the options of a webhook server that the webhook configurations
// installed by WithWebhooks call: host, port and the directory of the certificate they trust.
func (e *Env) WebhookServerOptions() webhook.Options {
	o := e.env.WebhookInstallOptions
	return webhook.Options{Host: o.LocalServingHost, Port: o.LocalServingPort, CertDir: o.LocalServingCertDir}
}

// Stop stops the control plane.
func (e *Env) Stop() error { return e.env.Stop() }

// AddUser provisions a user authenticated by a client certificate, with the given groups,
// and returns its configuration. The API server authorizes with RBAC: a user outside
// system:masters can do only what a (Cluster)RoleBinding grants it.
func (e *Env) AddUser(name string, groups ...string) (*rest.Config, error) {
	u, err := e.env.AddUser(envtest.User{Name: name, Groups: groups}, nil)
	if err != nil {
		return nil, fmt.Errorf("cannot add user %s: %w", name, err)
	}
	cfg := u.Config()
	cfg.QPS, cfg.Burst = 500, 1000
	return cfg, nil
}

// WriteKubeconfig writes a kubeconfig for an administrator (system:masters) of the control
// plane into dir and returns its path, for kubectl and helm.
func (e *Env) WriteKubeconfig(dir string) (string, error) {
	u, err := e.env.AddUser(envtest.User{Name: "keyward-test-admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return "", fmt.Errorf("cannot add the admin user: %w", err)
	}
	b, err := u.KubeConfig()
	if err != nil {
		return "", fmt.Errorf("cannot build a kubeconfig: %w", err)
	}
	path := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return "", err
	}
	return path, nil
}

// GVK is a convenience for tests that build unstructured objects.
func GVK(kind string) schema.GroupVersionKind {
	return schema.GroupVersionKind{Group: "keyward.dev", Version: "v1alpha1", Kind: kind}
}

// Main runs a package's tests against a control plane: it sets the controller-runtime logger
// (silent unless $KEYWARD_TEST_LOGS is set), starts the control plane, calls setup (which may
// start managers and servers under ctx and returns how to stop them), runs the tests, and tears
// everything down. Use it as `func TestMain(m *testing.M) { os.Exit(testenv.Main(m, setup)) }`;
// setup may be nil. opts change the control plane (see WithWebhooks).
//
// Under `go test -fuzz` (the fuzzing process and its workers) no control plane is started:
// fuzz targets do not use one, and every worker would start its own. Run fuzzing with
// -run '^$' so that no test that needs the control plane runs there.
func Main(m *testing.M, setup func(ctx context.Context, env *Env) (stop func() error, err error), opts ...Option) int {
	flag.Parse()
	if fuzzing() {
		return m.Run()
	}
	logOut := io.Discard
	if os.Getenv("KEYWARD_TEST_LOGS") != "" {
		logOut = os.Stderr
	}
	ctrl.SetLogger(zap.New(zap.WriteTo(logOut), zap.UseDevMode(true)))

	env, err := Start(opts...)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() {
		if err := env.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "cannot stop envtest:", err)
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stop := func() error { return nil }
	if setup != nil {
		if stop, err = setup(ctx, env); err != nil {
			fmt.Fprintln(os.Stderr, "cannot set up the tests:", err)
			return 1
		}
	}
	code := m.Run()
	cancel()
	if err := stop(); err != nil {
		fmt.Fprintln(os.Stderr, "stopped with an error:", err)
	}
	return code
}

// fuzzing reports whether the test binary runs under `go test -fuzz`.
func fuzzing() bool {
	for _, name := range []string{"test.fuzz", "test.fuzzworker"} {
		if f := flag.Lookup(name); f != nil && f.Value.String() != "" && f.Value.String() != "false" {
			return true
		}
	}
	return false
}

// StartManager starts mgr in the background and returns once its caches are synced. stop waits
// (at most 30 s) for the manager to return after ctx is cancelled.
func StartManager(ctx context.Context, mgr ctrl.Manager) (stop func() error, err error) {
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	syncCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if !mgr.GetCache().WaitForCacheSync(syncCtx) {
		return nil, errors.New("manager caches did not sync")
	}
	return func() error {
		select {
		case err := <-done:
			return err
		case <-time.After(30 * time.Second):
			return errors.New("manager did not stop within 30s")
		}
	}, nil
}
