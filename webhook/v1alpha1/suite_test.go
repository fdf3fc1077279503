package v1alpha1_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
	"github.com/keyward/keyward/internal/scheme"
	"github.com/keyward/keyward/internal/testenv"
	webhookv1 "github.com/keyward/keyward/webhook/v1alpha1"
)

// The webhooks run in a real webhook server that a real kube-apiserver calls: envtest installs
// config/webhook/manifests.yaml (generated from the markers) pointing at it, with a CA it
// generates. Tests create objects through the API server and read its answers and warnings.

const testPublicURL = "https://keyward.test"

var (
	env *testenv.Env
	srv *webhookServer
	// suiteCtx lives as long as the tests: servers restarted by a test run under it.
	suiteCtx context.Context
)

func TestMain(m *testing.M) {
	os.Exit(testenv.Main(m, func(ctx context.Context, e *testenv.Env) (func() error, error) {
		env, suiteCtx = e, ctx
		srv = &webhookServer{opts: e.WebhookServerOptions()}
		if err := srv.start(ctx); err != nil {
			return nil, err
		}
		return func() error { srv.stop(); return nil }, nil
	}, testenv.WithWebhooks()))
}

// webhookServer is keyward's webhook server, which tests can stop and start again. It counts
// the admission requests it receives.
type webhookServer struct {
	opts  webhook.Options
	calls atomic.Int64

	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan error
}

// countingServer counts the requests of every webhook registered on it.
type countingServer struct {
	webhook.Server
	calls *atomic.Int64
}

func (c countingServer) Register(path string, h http.Handler) {
	c.Server.Register(path, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.calls.Add(1)
		h.ServeHTTP(w, r)
	}))
}

// start runs a new server and returns once the API server calls it.
func (s *webhookServer) start(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	inner := webhook.NewServer(s.opts)
	webhookv1.Register(countingServer{inner, &s.calls}, scheme.New(), env.Client, webhookv1.Options{PublicURL: testPublicURL})
	done := make(chan error, 1)
	go func() { done <- inner.Start(ctx) }()
	s.mu.Lock()
	s.cancel, s.done = cancel, done
	s.mu.Unlock()
	return waitCalled(ctx)
}

// stop stops the server and waits for it to return.
func (s *webhookServer) stop() {
	s.mu.Lock()
	cancel, done := s.cancel, s.done
	s.mu.Unlock()
	cancel()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
	}
}

// waitCalled creates an AccessPolicy whose expression does not compile until the API server
// refuses it: the webhook is installed, served, and called.
func waitCalled(ctx context.Context) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "probe-"}}
	if err := env.Client.Create(ctx, ns); err != nil {
		return err
	}
	deadline := time.Now().Add(time.Minute)
	for {
		p := policy(ns.Name, "probe", "claims.sub ==")
		err := env.Client.Create(ctx, p)
		if err != nil && strings.Contains(err.Error(), "does not compile") {
			return nil
		}
		if err == nil {
			_ = env.Client.Delete(ctx, p)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the API server does not call the webhook: last answer %w", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// warnings collects the warnings the API server sends back.
type warnings struct {
	mu   sync.Mutex
	list []string
}

func (w *warnings) HandleWarningHeader(_ int, _ string, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.list = append(w.list, text)
}

func (w *warnings) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := w.list
	w.list = nil
	return out
}

// newClient returns a client whose warnings the test reads.
func newClient(t *testing.T) (client.Client, *warnings) {
	t.Helper()
	w := &warnings{}
	cfg := rest.CopyConfig(env.Config)
	cfg.WarningHandler = w
	c, err := client.New(cfg, client.Options{Scheme: scheme.New()})
	if err != nil {
		t.Fatal(err)
	}
	return c, w
}

func ctxFor(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func newNamespace(t *testing.T) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "webhook-"}}
	if err := env.Client.Create(ctxFor(t), ns); err != nil {
		t.Fatalf("cannot create namespace: %v", err)
	}
	return ns.Name
}

func mustCreate(t *testing.T, obj client.Object) {
	t.Helper()
	if err := env.Client.Create(ctxFor(t), obj); err != nil {
		t.Fatalf("cannot create %T %s: %v", obj, obj.GetName(), err)
	}
}

// policy is an AccessPolicy with one rule for issuer "web" and the when expression (none when
// empty).
func policy(ns, name, when string, issuers ...string) *keywardv1.AccessPolicy {
	if len(issuers) == 0 {
		issuers = []string{"web"}
	}
	refs := make([]keywardv1.IssuerReference, len(issuers))
	for i, n := range issuers {
		refs[i] = keywardv1.IssuerReference{Name: n}
	}
	return &keywardv1.AccessPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: keywardv1.AccessPolicySpec{
			Hosts: []string{"app.example.com"},
			Rules: []keywardv1.AccessRule{{Paths: []string{"/"}, Issuers: refs, When: when}},
		},
	}
}

func signingKey(ns, name string, alg keywardv1.Algorithm) *keywardv1.SigningKey {
	return &keywardv1.SigningKey{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       keywardv1.SigningKeySpec{Algorithm: alg},
	}
}

func tokenIssuer(ns, name, key, users string) *keywardv1.TokenIssuer {
	return &keywardv1.TokenIssuer{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: keywardv1.TokenIssuerSpec{
			SigningKeyRef: keywardv1.LocalObjectReference{Name: key},
			Users:         keywardv1.SecretReference{SecretRef: keywardv1.LocalObjectReference{Name: users}},
		},
	}
}

func secret(ns, name string, data map[string][]byte) *corev1.Secret {
	return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Data: data}
}

// usersSecret is a valid users Secret.
func usersSecret(ns, name string) *corev1.Secret {
	return secret(ns, name, map[string][]byte{"htpasswd": []byte("alice:$2y$05$3IG1ysTP5Gm6ETyXoeExCeoQnjEsYTrL1KhPX9NU8WM1kAaAQfWZa\n")})
}

// refusal returns the API server's refusal message, failing the test when err is nil.
func refusal(t *testing.T, err error) string {
	t.Helper()
	if err == nil {
		t.Fatal("the API server accepted the object; want a refusal")
	}
	return err.Error()
}

func containsAll(t *testing.T, what, s string, parts ...string) {
	t.Helper()
	for _, p := range parts {
		if !strings.Contains(s, p) {
			t.Errorf("%s %q does not contain %q", what, s, p)
		}
	}
}

// oneWarning asserts there is exactly one warning containing every part.
func oneWarning(t *testing.T, got []string, parts ...string) {
	t.Helper()
	n := 0
	for _, w := range got {
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(w, p)
		}
		if ok {
			n++
		}
	}
	if n != 1 {
		t.Errorf("want one warning containing %q, got %q", parts, got)
	}
}
