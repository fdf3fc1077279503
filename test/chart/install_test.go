package chart

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keyward/keyward/internal/testenv"
)

var (
	env *testenv.Env
	// kubeconfig is an administrator's kubeconfig of the control plane, for helm and kubectl.
	kubeconfig string
)

// TestMain starts a kube-apiserver (with RBAC authorization, as envtest configures it)
// without keyward's CRDs: the chart installs them.
func TestMain(m *testing.M) {
	os.Exit(func() int {
		var err error
		if env, err = testenv.Start(testenv.WithoutCRDs()); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer func() { _ = env.Stop() }()
		dir, err := os.MkdirTemp("", "keyward-chart-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		if kubeconfig, err = env.WriteKubeconfig(dir); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return m.Run()
	}())
}

func helm(t *testing.T, args ...string) string {
	t.Helper()
	return mustRun(t, nil, helmBin(t), append([]string{"--kubeconfig", kubeconfig}, args...)...)
}

func kubectl(t *testing.T, stdin []byte, args ...string) (string, error) {
	t.Helper()
	return run(t, stdin, kubectlBin(t), append([]string{"--kubeconfig", kubeconfig}, args...)...)
}

func createNamespace(t *testing.T, name string) {
	t.Helper()
	err := env.Client.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

// canI asks the API server, as the ServiceAccount, whether it may verb resource in namespace
// ("" for every namespace, that is cluster-wide).
func canI(t *testing.T, sa, verb, resource, namespace string) bool {
	t.Helper()
	args := []string{"auth", "can-i", verb, resource, "--as", sa}
	if namespace == "" {
		args = append(args, "--all-namespaces")
	} else {
		args = append(args, "--namespace", namespace)
	}
	out, err := kubectl(t, nil, args...)
	answer := strings.TrimSpace(out)
	switch {
	case answer == "yes" && err == nil:
		return true
	case strings.HasPrefix(answer, "no"):
		return false
	}
	t.Fatalf("kubectl auth can-i: %q, %v", out, err)
	return false
}

// mayI asks the same question as canI with a SubjectAccessReview, without a kubectl process
// per question: for the exhaustive checks.
func mayI(t *testing.T, sa, verb, resource, namespace string) bool {
	t.Helper()
	res, group, _ := strings.Cut(resource, ".")
	saNS := strings.Split(sa, ":")[2]
	sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
		User:   sa,
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + saNS, "system:authenticated"},
		ResourceAttributes: &authorizationv1.ResourceAttributes{
			Namespace: namespace, Verb: verb, Group: group, Resource: res,
		},
	}}
	if err := env.Client.Create(context.Background(), sar); err != nil {
		t.Fatal(err)
	}
	return sar.Status.Allowed
}

// assertInstalled checks that every object of the release's manifest exists on the server.
func assertInstalled(t *testing.T, release, namespace string) manifest {
	t.Helper()
	m := parseManifest(t, helm(t, "get", "manifest", release, "--namespace", namespace))
	if len(m) == 0 {
		t.Fatal("the release has no objects")
	}
	for _, o := range m {
		got := &unstructured.Unstructured{}
		got.SetGroupVersionKind(o.GroupVersionKind())
		key := client.ObjectKey{Namespace: o.GetNamespace(), Name: o.GetName()}
		if err := env.Client.Get(context.Background(), key, got); err != nil {
			t.Errorf("%s %s: %v", o.GetKind(), key, err)
		}
	}
	return m
}

func crdEstablished(t *testing.T, name string) bool {
	t.Helper()
	crd := &unstructured.Unstructured{}
	crd.SetAPIVersion("apiextensions.k8s.io/v1")
	crd.SetKind("CustomResourceDefinition")
	if err := env.Client.Get(context.Background(), client.ObjectKey{Name: name}, crd); err != nil {
		t.Fatalf("CRD %s: %v", name, err)
	}
	conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
	for _, c := range conds {
		cm, _ := c.(map[string]any)
		if cm["type"] == "Established" && cm["status"] == "True" {
			return true
		}
	}
	return false
}

var keywardCRDs = []string{"accesspolicies.keyward.dev", "sessions.keyward.dev", "signingkeys.keyward.dev", "tokenissuers.keyward.dev"}

// TestHelmInstall installs the chart with its default values into a fresh API server. Without
// a kubelet no pod runs: the test checks what the API server accepted and what it authorizes.
func TestHelmInstall(t *testing.T) {
	const ns, release = "keyward-system", "keyward"
	out := helm(t, "install", release, chartDir, "--namespace", ns, "--create-namespace", "--wait=false")
	// NOTES.txt tells the next commands.
	for _, want := range []string{
		"kubectl -n keyward-system rollout status deploy/keyward-controller deploy/keyward-issuer deploy/keyward-validator",
		"kubectl auth can-i get secrets --as=system:serviceaccount:keyward-system:keyward-validator --all-namespaces",
		"http://keyward-validator.keyward-system.svc:8081/authz",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("helm install's notes lack %q:\n%s", want, out)
		}
	}
	m := assertInstalled(t, release, ns)
	if n := len(m.ofKind("Deployment")); n != 3 {
		t.Errorf("%d Deployments installed, want 3", n)
	}

	deadline := time.Now().Add(time.Minute)
	for _, name := range keywardCRDs {
		for !crdEstablished(t, name) {
			if time.Now().After(deadline) {
				t.Fatalf("CRD %s is not Established", name)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	// The API serves the kinds: a SigningKey can be created (and is validated by its schema).
	createNamespace(t, "team-x")
	if out, err := kubectl(t, []byte("apiVersion: keyward.dev/v1alpha1\nkind: SigningKey\nmetadata: {name: main, namespace: team-x}\nspec: {algorithm: ES256}\n"), "apply", "-f", "-"); err != nil {
		t.Fatalf("cannot create a SigningKey: %v\n%s", err, out)
	}

	sa := func(role string) string { return "system:serviceaccount:" + ns + ":keyward-" + role }
	namespaces := []string{"", ns, "default", "kube-system", "team-x"}
	// What the issue asks, with kubectl auth can-i as a user would ask it.
	for _, where := range namespaces {
		for _, verb := range []string{"get", "list"} {
			if canI(t, sa("validator"), verb, "secrets", where) {
				t.Errorf("kubectl auth can-i: the validator can %s Secrets in namespace %q", verb, where)
			}
		}
		for _, verb := range []string{"create", "update"} {
			if canI(t, sa("issuer"), verb, "secrets", where) {
				t.Errorf("kubectl auth can-i: the issuer can %s Secrets in namespace %q", verb, where)
			}
			if !canI(t, sa("controller"), verb, "secrets", where) {
				t.Errorf("kubectl auth can-i: the controller cannot %s Secrets in namespace %q", verb, where)
			}
		}
	}
	canI := mayI // the rest, exhaustively
	for _, where := range namespaces {
		for _, verb := range []string{"get", "list", "watch", "create", "update", "delete"} {
			if canI(t, sa("validator"), verb, "secrets", where) {
				t.Errorf("the validator can %s Secrets in namespace %q", verb, where)
			}
		}
		for _, verb := range []string{"create", "update", "patch", "delete"} {
			for _, res := range []string{"secrets", "configmaps"} {
				if canI(t, sa("issuer"), verb, res, where) {
					t.Errorf("the issuer can %s %s in namespace %q", verb, res, where)
				}
			}
		}
		for _, verb := range []string{"get", "list", "watch"} {
			if !canI(t, sa("issuer"), verb, "secrets", where) {
				t.Errorf("the issuer cannot %s Secrets in namespace %q", verb, where)
			}
		}
		for _, verb := range []string{"create", "update"} {
			for _, res := range []string{"secrets", "configmaps"} {
				if !canI(t, sa("controller"), verb, res, where) {
					t.Errorf("the controller cannot %s %s in namespace %q", verb, res, where)
				}
			}
		}
		if !canI(t, sa("issuer"), "create", "sessions.keyward.dev", where) {
			t.Errorf("the issuer cannot create Sessions in namespace %q", where)
		}
		if canI(t, sa("validator"), "update", "sessions.keyward.dev", where) || canI(t, sa("validator"), "update", "configmaps", where) {
			t.Errorf("the validator can write in namespace %q", where)
		}
		if !canI(t, sa("validator"), "watch", "accesspolicies.keyward.dev", where) {
			t.Errorf("the validator cannot watch AccessPolicies in namespace %q", where)
		}
	}
	// Leader election: Leases in the release namespace only.
	if !canI(t, sa("controller"), "update", "leases.coordination.k8s.io", ns) {
		t.Error("the controller cannot update its leader-election Lease")
	}
	if canI(t, sa("controller"), "update", "leases.coordination.k8s.io", "default") {
		t.Error("the controller can update Leases outside its namespace")
	}

	t.Run("helm upgrade upgrades the CRDs", func(t *testing.T) {
		// An older CRD on the server (here: one without its printer columns) is brought back to
		// the chart's by an upgrade; Helm's crds/ directory would leave it as it is.
		if out, err := kubectl(t, nil, "patch", "crd", "signingkeys.keyward.dev", "--type", "json",
			"-p", `[{"op":"remove","path":"/spec/versions/0/additionalPrinterColumns"}]`); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if n := printerColumns(t, "signingkeys.keyward.dev"); n != 0 {
			t.Fatalf("the patch left %d printer columns", n)
		}
		helm(t, "upgrade", release, chartDir, "--namespace", ns, "--wait=false")
		if n := printerColumns(t, "signingkeys.keyward.dev"); n == 0 {
			t.Error("helm upgrade did not restore the CRD's printer columns")
		}
	})

	t.Run("helm uninstall keeps the CRDs and the objects", func(t *testing.T) {
		helm(t, "uninstall", release, "--namespace", ns, "--wait=false")
		for _, name := range keywardCRDs {
			if !crdEstablished(t, name) {
				t.Errorf("CRD %s is gone after helm uninstall", name)
			}
		}
		if out, err := kubectl(t, nil, "get", "signingkey", "main", "--namespace", "team-x"); err != nil {
			t.Errorf("the SigningKey is gone after helm uninstall: %v\n%s", err, out)
		}
		// A reinstall adopts nothing and fails on nothing: the kept CRDs carry the release's
		// annotations, so the same release name can be installed again.
		helm(t, "install", release, chartDir, "--namespace", ns, "--wait=false")
		assertInstalled(t, release, ns)
	})
}

func printerColumns(t *testing.T, crd string) int {
	t.Helper()
	out, err := kubectl(t, nil, "get", "crd", crd, "-o", "jsonpath={.spec.versions[0].additionalPrinterColumns[*].name}")
	if err != nil {
		t.Fatal(err)
	}
	return len(strings.Fields(out))
}

// TestHelmInstallNamespaceRestricted installs a second release restricted to two namespaces:
// Roles there, nothing anywhere else. The CRDs are the first release's (crds.install=false).
func TestHelmInstallNamespaceRestricted(t *testing.T) {
	const ns, release = "kw-restricted", "kw"
	inside := []string{"team-a", "team-b"}
	for _, n := range inside {
		createNamespace(t, n)
	}
	helm(t, "install", release, chartDir, "--namespace", ns, "--create-namespace", "--wait=false",
		"--set", "watchNamespaces={team-a,team-b}", "--set", "crds.install=false")
	m := assertInstalled(t, release, ns)
	if n := len(m.ofKind("CustomResourceDefinition")); n != 0 {
		t.Errorf("the restricted release installed %d CRDs", n)
	}
	assertOnlyWebhookClusterRBAC(t, m, release+"-keyward-webhook")

	sa := func(role string) string { return "system:serviceaccount:" + ns + ":kw-keyward-" + role }
	// kubectl auth can-i, as a user would ask.
	for _, where := range []string{"", "default", "team-x"} {
		for _, role := range roles {
			if canI(t, sa(role), "list", "secrets", where) || canI(t, sa(role), "list", "signingkeys.keyward.dev", where) {
				t.Errorf("kubectl auth can-i: the %s can list in namespace %q, outside its namespaces", role, where)
			}
		}
	}
	if !canI(t, sa("controller"), "create", "secrets", "team-a") {
		t.Error("kubectl auth can-i: the controller cannot create Secrets in team-a")
	}
	if canI(t, sa("validator"), "get", "secrets", "team-a") {
		t.Error("kubectl auth can-i: the validator can get Secrets in team-a")
	}
	canI := mayI // the rest, exhaustively
	for _, where := range inside {
		if !canI(t, sa("controller"), "create", "secrets", where) || !canI(t, sa("controller"), "update", "configmaps", where) {
			t.Errorf("the controller cannot write Secrets and ConfigMaps in %s", where)
		}
		if !canI(t, sa("issuer"), "get", "secrets", where) || canI(t, sa("issuer"), "create", "secrets", where) {
			t.Errorf("the issuer's Secret access in %s is not read-only", where)
		}
		if canI(t, sa("validator"), "get", "secrets", where) || canI(t, sa("validator"), "list", "secrets", where) {
			t.Errorf("the validator can read Secrets in %s", where)
		}
		if !canI(t, sa("validator"), "list", "tokenissuers.keyward.dev", where) {
			t.Errorf("the validator cannot list TokenIssuers in %s", where)
		}
	}
	outside := []string{"", "default", "kube-system", "team-x", ns}
	resources := []string{"secrets", "configmaps", "signingkeys.keyward.dev", "tokenissuers.keyward.dev", "accesspolicies.keyward.dev", "sessions.keyward.dev"}
	for _, role := range roles {
		for _, where := range outside {
			for _, res := range resources {
				for _, verb := range []string{"get", "list", "watch", "create", "update"} {
					// The controller creates its webhook certificate's Secret in its own namespace
					// (create cannot be limited to a name); every other verb there is by name.
					if role == "controller" && where == ns && res == "secrets" && verb == "create" {
						continue
					}
					if canI(t, sa(role), verb, res, where) {
						t.Errorf("the %s can %s %s in namespace %q, outside its namespaces", role, verb, res, where)
					}
				}
			}
		}
	}
}
