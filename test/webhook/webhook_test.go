// Package webhook tests the admission webhook as it is installed: the Helm chart's
// ValidatingWebhookConfiguration, Service and RBAC (rendered with `helm template`) applied to a
// real kube-apiserver, and the `keyward controller` binary run with the chart's flags as the
// chart's controller ServiceAccount (impersonated), so that its permissions are the chart's.
// Only the webhook's address changes: the API server calls the binary on a loopback port
// instead of through the Service.
package webhook

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
	"github.com/keyward/keyward/internal/scheme"
	"github.com/keyward/keyward/internal/testenv"

	"github.com/keyward/keyward/internal/testsupport"
)

// chartRelease names a release of the chart and the objects it creates. Each test installs its
// own, so that tests and repeated runs (-count) never meet each other's objects.
type chartRelease struct {
	name, namespace string
	// webhook names the Service, the ValidatingWebhookConfiguration and the Secret prefix.
	webhook string
	// controllerUser is the controller's ServiceAccount as a user name.
	controllerUser string
	// tenant is a namespace for keyward objects the webhook checks.
	tenant string
}

var releases atomic.Int32

func newRelease() chartRelease {
	n := fmt.Sprintf("kw%d", releases.Add(1))
	ns := "keyward-" + n
	return chartRelease{name: n, namespace: ns, webhook: n + "-keyward-webhook",
		controllerUser: "system:serviceaccount:" + ns + ":" + n + "-keyward-controller", tenant: "tenant-" + n}
}

var env *testenv.Env

func TestMain(m *testing.M) {
	os.Exit(testenv.Main(m, func(_ context.Context, e *testenv.Env) (func() error, error) {
		env = e
		return func() error { return nil }, nil
	}))
}

func ctxFor(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func eventually(t *testing.T, timeout time.Duration, f func(ctx context.Context) error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		err := f(ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %v", timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// helmPath is the pinned helm `make test` passes in $HELM, else helm on $PATH.
func helmPath(t *testing.T) string {
	t.Helper()
	if helm := os.Getenv("HELM"); helm != "" {
		return helm
	}
	helm, err := exec.LookPath("helm")
	if err != nil {
		t.Fatal("helm not found: run the tests with `make test`, which sets $HELM")
	}
	return helm
}

// helmTemplate renders the chart as rel with extra helm arguments.
func helmTemplate(t *testing.T, rel chartRelease, extra ...string) []*unstructured.Unstructured {
	t.Helper()
	args := append([]string{"template", rel.name, filepath.Join(testenv.RepoRoot(), "charts", "keyward"), "--namespace", rel.namespace}, extra...)
	cmd := exec.Command(helmPath(t), args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helm template: %v\n%s", err, stderr.String())
	}
	var objs []*unstructured.Unstructured
	dec := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(out)))
	for {
		doc, err := dec.Read()
		if errors.Is(err, io.EOF) {
			return objs
		}
		if err != nil {
			t.Fatal(err)
		}
		u := &unstructured.Unstructured{}
		if err := utilyaml.Unmarshal(doc, &u.Object); err != nil {
			t.Fatal(err)
		}
		if len(u.Object) > 0 {
			objs = append(objs, u)
		}
	}
}

func convert[T any](t *testing.T, u *unstructured.Unstructured, out *T) *T {
	t.Helper()
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, out); err != nil {
		t.Fatal(err)
	}
	return out
}

// controllerProc is a running `keyward controller`.
type controllerProc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

func (p *controllerProc) stop(t *testing.T) {
	t.Helper()
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		t.Error("keyward controller did not stop within 30s")
	}
}

// syncBuffer is a bytes.Buffer safe for the process's writes and the test's reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// kubeconfigAs writes envtest's admin credentials, impersonating user.
func kubeconfigAs(t *testing.T, path, user string) {
	t.Helper()
	cfg := env.Config
	kc := clientcmdapi.NewConfig()
	kc.Clusters["envtest"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["envtest"] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData, Impersonate: user}
	kc.Contexts["envtest"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "envtest"}
	kc.CurrentContext = "envtest"
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
}

// setFlag replaces --name=... in args, or appends it.
func setFlag(args []string, name, value string) []string {
	for i, a := range args {
		if strings.HasPrefix(a, "--"+name+"=") {
			args[i] = "--" + name + "=" + value
			return args
		}
	}
	return append(args, "--"+name+"="+value)
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

func (w *warnings) all() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return strings.Join(w.list, "\n")
}

func badPolicy(ns, name string) *keywardv1.AccessPolicy {
	return &keywardv1.AccessPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: keywardv1.AccessPolicySpec{Hosts: []string{"app.example.com"},
			Rules: []keywardv1.AccessRule{{Paths: []string{"/"}, Issuers: []keywardv1.IssuerReference{{Name: "nobody"}}, When: "claims.sub =="}}},
	}
}

func TestChartWebhookWithTheBinary(t *testing.T) {
	k8s := env.Client
	rel := newRelease()
	for _, ns := range []string{rel.namespace, rel.tenant} {
		if err := k8s.Create(ctxFor(t), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			t.Fatal(err)
		}
	}

	// The chart's objects the webhook needs, the webhook configuration calling a loopback port.
	webhookAddr := testsupport.MustFreeAddr(t)
	_, webhookPort, _ := net.SplitHostPort(webhookAddr)
	var args []string
	var vwc *admissionregistrationv1.ValidatingWebhookConfiguration
	for _, u := range helmTemplate(t, rel) {
		switch u.GetKind() {
		case "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Service":
		case "ValidatingWebhookConfiguration":
			vwc = convert(t, u, &admissionregistrationv1.ValidatingWebhookConfiguration{})
			for i := range vwc.Webhooks {
				cc := &vwc.Webhooks[i].ClientConfig
				if cc.Service == nil || cc.Service.Name != rel.webhook || cc.Service.Namespace != rel.namespace || ptr.Deref(cc.Service.Port, 0) != 443 {
					t.Fatalf("webhook %s does not call the chart's Service: %+v", vwc.Webhooks[i].Name, cc.Service)
				}
				cc.URL = ptr.To("https://" + webhookAddr + *cc.Service.Path)
				cc.Service = nil
			}
			u = &unstructured.Unstructured{Object: mustToUnstructured(t, vwc)}
			u.SetGroupVersionKind(admissionregistrationv1.SchemeGroupVersion.WithKind("ValidatingWebhookConfiguration"))
		case "Deployment":
			d := convert(t, u, &appsv1.Deployment{})
			if strings.HasSuffix(d.Name, "-controller") {
				args = d.Spec.Template.Spec.Containers[0].Args
			}
			continue
		default:
			continue
		}
		if err := k8s.Create(ctxFor(t), u); err != nil {
			t.Fatalf("cannot create %s %s: %v", u.GetKind(), u.GetName(), err)
		}
	}
	if vwc == nil || len(args) == 0 || args[0] != "controller" {
		t.Fatalf("the chart renders no webhook configuration or controller Deployment (args %q)", args)
	}

	// keyward controller with the chart's flags, as the chart's ServiceAccount.
	dir := t.TempDir()
	bin := filepath.Join(dir, "keyward")
	build := exec.Command("go", "build", "-o", bin, "./cmd/keyward")
	build.Dir = testenv.RepoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("cannot build keyward: %v\n%s", err, out)
	}
	kubeconfigAs(t, filepath.Join(dir, "kubeconfig"), rel.controllerUser)
	probeAddr := testsupport.MustFreeAddr(t)
	args = setFlag(args, "webhook-port", webhookPort)
	args = setFlag(args, "health-probe-bind-address", probeAddr)
	args = setFlag(args, "metrics-bind-address", "0")
	args = setFlag(args, "webhook-extra-names", "127.0.0.1")
	args = setFlag(args, "leader-election-namespace", rel.namespace)
	args = setFlag(args, "kubeconfig", filepath.Join(dir, "kubeconfig"))
	start := func() *controllerProc {
		log := &syncBuffer{}
		cmd := exec.Command(bin, args...)
		cmd.Stdout, cmd.Stderr = log, log
		cmd.Env = append(os.Environ(), "POD_NAMESPACE="+rel.namespace)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		p := &controllerProc{cmd: cmd, done: make(chan struct{})}
		go func() { _ = cmd.Wait(); close(p.done) }()
		t.Cleanup(func() {
			p.stop(t)
			if t.Failed() || os.Getenv("KEYWARD_TEST_LOGS") != "" {
				t.Logf("keyward controller log:\n%s", log.String())
			}
		})
		return p
	}
	proc := start()

	// Ready once it serves a certificate, which it generated, stored and injected.
	eventually(t, time.Minute, func(ctx context.Context) error {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+probeAddr+"/readyz", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		defer func() { _ = resp.Body.Close() }()
		if resp.StatusCode != http.StatusOK {
			body, _ := io.ReadAll(resp.Body)
			return fmt.Errorf("readyz: %d %s", resp.StatusCode, body)
		}
		return nil
	})
	cur := &admissionregistrationv1.ValidatingWebhookConfiguration{}
	if err := k8s.Get(ctxFor(t), client.ObjectKey{Name: rel.webhook}, cur); err != nil {
		t.Fatal(err)
	}
	secret := &corev1.Secret{}
	if err := k8s.Get(ctxFor(t), client.ObjectKey{Namespace: rel.namespace, Name: rel.webhook + "-cert"}, secret); err != nil {
		t.Fatalf("the controller did not create the webhook Secret the chart names: %v", err)
	}
	for _, w := range cur.Webhooks {
		if len(w.ClientConfig.CABundle) == 0 || !bytes.Equal(w.ClientConfig.CABundle, secret.Data["ca.crt"]) {
			t.Errorf("webhook %s: caBundle is not the Secret's CA", w.Name)
		}
	}

	wc := &warnings{}
	cfg := rest.CopyConfig(env.Config)
	cfg.WarningHandler = wc
	c, err := client.New(cfg, client.Options{Scheme: scheme.New()})
	if err != nil {
		t.Fatal(err)
	}

	t.Run("a policy in a tenant namespace is checked: a bad expression is refused", func(t *testing.T) {
		err := c.Create(ctxFor(t), badPolicy(rel.tenant, "bad"))
		if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "spec.rules[0].when") || !strings.Contains(err.Error(), "does not compile") {
			t.Fatalf("want a refusal naming spec.rules[0].when, got %v", err)
		}
	})
	t.Run("a policy naming a missing issuer is admitted with a warning", func(t *testing.T) {
		p := badPolicy(rel.tenant, "missing-issuer")
		p.Spec.Rules[0].When = ""
		if err := c.Create(ctxFor(t), p); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(wc.all(), `TokenIssuer "nobody" does not exist (yet)`) {
			t.Errorf("no warning about the missing issuer; warnings: %q", wc.all())
		}
	})
	t.Run("kube-system and the release namespace are never checked", func(t *testing.T) {
		for _, ns := range []string{"kube-system", rel.namespace} {
			if err := c.Create(ctxFor(t), badPolicy(ns, "unchecked-"+rel.name)); err != nil {
				t.Errorf("%s: %v", ns, err)
			}
		}
	})
	t.Run("the controller may update its own webhook configuration only", func(t *testing.T) {
		other := &admissionregistrationv1.ValidatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "someone-elses-" + rel.name}}
		if err := k8s.Create(ctxFor(t), other); err != nil {
			t.Fatal(err)
		}
		asController := rest.CopyConfig(env.Config)
		asController.Impersonate = rest.ImpersonationConfig{UserName: rel.controllerUser}
		ac, err := client.New(asController, client.Options{Scheme: scheme.New()})
		if err != nil {
			t.Fatal(err)
		}
		other.Labels = map[string]string{"touched": "true"}
		if err := ac.Update(ctxFor(t), other); !apierrors.IsForbidden(err) {
			t.Errorf("updating another webhook configuration: want Forbidden, got %v", err)
		}
		own := &admissionregistrationv1.ValidatingWebhookConfiguration{}
		if err := ac.Get(ctxFor(t), client.ObjectKey{Name: rel.webhook}, own); err != nil {
			t.Errorf("reading its own: %v", err)
		}
	})
	t.Run("with the controller stopped, the cluster and keyward objects are admitted", func(t *testing.T) {
		proc.stop(t)
		if err := c.Create(ctxFor(t), &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: rel.tenant, Name: "cm"}}); err != nil {
			t.Errorf("ConfigMap: %v", err)
		}
		if err := c.Create(ctxFor(t), &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: rel.tenant, Name: "s"}}); err != nil {
			t.Errorf("Secret: %v", err)
		}
		// failurePolicy Ignore: admitted unchecked.
		if err := c.Create(ctxFor(t), badPolicy(rel.tenant, "while-down")); err != nil {
			t.Errorf("AccessPolicy with the webhook down: %v", err)
		}
	})
	t.Run("restarted, it reuses the stored certificate and checks again", func(t *testing.T) {
		before := secret.Data["tls.crt"]
		start()
		eventually(t, time.Minute, func(ctx context.Context) error {
			err := c.Create(ctx, badPolicy(rel.tenant, "after-restart"))
			if err == nil {
				_ = c.Delete(ctx, badPolicy(rel.tenant, "after-restart"))
				return errors.New("admitted: the webhook is not answering yet")
			}
			if !strings.Contains(err.Error(), "does not compile") {
				return err
			}
			return nil
		})
		s := &corev1.Secret{}
		if err := k8s.Get(ctxFor(t), client.ObjectKeyFromObject(secret), s); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(s.Data["tls.crt"], before) {
			t.Error("the restarted controller replaced a valid certificate")
		}
	})
}

func mustToUnstructured(t *testing.T, obj any) map[string]any {
	t.Helper()
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		t.Fatal(err)
	}
	return m
}
