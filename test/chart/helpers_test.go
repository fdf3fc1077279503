// Package chart tests the Helm chart (charts/keyward) and the kustomize tree (config/): what
// they render, with the pinned helm and kubectl, and what a real kube-apiserver (envtest, with
// RBAC authorization) makes of them.
package chart

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"github.com/keyward/keyward/internal/testenv"
)

// chartDir is the chart under test.
var chartDir = filepath.Join(testenv.RepoRoot(), "charts", "keyward")

// helmBin is the pinned helm: $HELM (set by `make test`), else the Makefile's cache path.
func helmBin(t *testing.T) string {
	t.Helper()
	if h := os.Getenv("HELM"); h != "" {
		return h
	}
	cache := os.Getenv("KEYWARD_CACHE")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache", "keyward")
	}
	h := filepath.Join(cache, "tools", "helm-v3.22.0", "helm")
	if _, err := os.Stat(h); err != nil {
		t.Fatalf("helm is not installed at %s: run the tests with `make test` (it installs the pinned helm), or set $HELM", h)
	}
	return h
}

// kubectlBin is the kubectl built with the control plane (hack/control-plane.sh bin).
func kubectlBin(t *testing.T) string {
	t.Helper()
	k := filepath.Join(os.Getenv("KUBEBUILDER_ASSETS"), "kubectl")
	if _, err := os.Stat(k); err != nil {
		t.Fatalf("kubectl is missing from $KUBEBUILDER_ASSETS: %v", err)
	}
	return k
}

// run runs a command and returns its stdout; stderr is part of the error.
func run(t *testing.T, stdin []byte, name string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	// helm keeps its cache and config under $HOME unless told otherwise; keep them out of it.
	tmp := t.TempDir()
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+tmp, "HELM_CONFIG_HOME="+tmp, "HELM_DATA_HOME="+tmp)
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %w\n%s", filepath.Base(name), strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

func mustRun(t *testing.T, stdin []byte, name string, args ...string) string {
	t.Helper()
	out, err := run(t, stdin, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// manifest is a rendered set of objects.
type manifest []*unstructured.Unstructured

func parseManifest(t *testing.T, s string) manifest {
	t.Helper()
	var m manifest
	dec := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(s), 4096)
	for {
		var obj map[string]any
		err := dec.Decode(&obj)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("cannot parse the rendered manifest: %v", err)
		}
		if obj == nil {
			continue
		}
		m = append(m, &unstructured.Unstructured{Object: obj})
	}
	return m
}

// helmTemplate renders the chart as release "kw" in namespace keyward-system.
func helmTemplate(t *testing.T, args ...string) manifest {
	t.Helper()
	out := mustRun(t, nil, helmBin(t), append([]string{"template", "kw", chartDir, "--namespace", "keyward-system"}, args...)...)
	return parseManifest(t, out)
}

func (m manifest) ofKind(kind string) manifest {
	var out manifest
	for _, o := range m {
		if o.GetKind() == kind {
			out = append(out, o)
		}
	}
	return out
}

func (m manifest) kinds() map[string]int {
	k := map[string]int{}
	for _, o := range m {
		k[o.GetKind()]++
	}
	return k
}

func (m manifest) find(t *testing.T, kind, namespace, name string) *unstructured.Unstructured {
	t.Helper()
	for _, o := range m {
		if o.GetKind() == kind && o.GetName() == name && o.GetNamespace() == namespace {
			return o
		}
	}
	t.Fatalf("%s %s/%s is not rendered", kind, namespace, name)
	return nil
}

func convert[T any](t *testing.T, o *unstructured.Unstructured) *T {
	t.Helper()
	out := new(T)
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, out); err != nil {
		t.Fatalf("cannot convert %s %s: %v", o.GetKind(), o.GetName(), err)
	}
	return out
}

func deployment(t *testing.T, m manifest, name string) *appsv1.Deployment {
	t.Helper()
	return convert[appsv1.Deployment](t, m.find(t, "Deployment", "keyward-system", name))
}

// rulesOf returns the rules of every (Cluster)Role bound to the ServiceAccount sa of namespace
// saNamespace, by the namespace of the binding ("" for cluster-wide).
func rulesOf(t *testing.T, m manifest, saNamespace, sa string) map[string][]rbacv1.PolicyRule {
	t.Helper()
	roles := map[string][]rbacv1.PolicyRule{}
	for _, o := range m {
		switch o.GetKind() {
		case "ClusterRole":
			roles["ClusterRole/"+o.GetName()] = convert[rbacv1.ClusterRole](t, o).Rules
		case "Role":
			roles["Role/"+o.GetNamespace()+"/"+o.GetName()] = convert[rbacv1.Role](t, o).Rules
		}
	}
	out := map[string][]rbacv1.PolicyRule{}
	for _, o := range m {
		var ref rbacv1.RoleRef
		var subjects []rbacv1.Subject
		switch o.GetKind() {
		case "ClusterRoleBinding":
			b := convert[rbacv1.ClusterRoleBinding](t, o)
			ref, subjects = b.RoleRef, b.Subjects
		case "RoleBinding":
			b := convert[rbacv1.RoleBinding](t, o)
			ref, subjects = b.RoleRef, b.Subjects
		default:
			continue
		}
		bound := slices.ContainsFunc(subjects, func(s rbacv1.Subject) bool {
			return s.Kind == "ServiceAccount" && s.Name == sa && s.Namespace == saNamespace
		})
		if !bound {
			continue
		}
		key := "ClusterRole/" + ref.Name
		if ref.Kind == "Role" {
			key = "Role/" + o.GetNamespace() + "/" + ref.Name
		}
		rules, ok := roles[key]
		if !ok {
			t.Fatalf("%s %s refers to %s, which is not rendered", o.GetKind(), o.GetName(), key)
		}
		out[o.GetNamespace()] = append(out[o.GetNamespace()], rules...)
	}
	return out
}

// allows reports whether rules grant verb on resource of group.
func allows(rules []rbacv1.PolicyRule, group, resource, verb string) bool {
	match := func(list []string, v string) bool { return slices.Contains(list, v) || slices.Contains(list, "*") }
	for _, r := range rules {
		if match(r.APIGroups, group) && match(r.Resources, resource) && match(r.Verbs, verb) {
			return true
		}
	}
	return false
}

// assertOnlyWebhookClusterRBAC checks that the only cluster-wide RBAC of a namespace-restricted
// install is the controller's access to its own ValidatingWebhookConfiguration, by name.
func assertOnlyWebhookClusterRBAC(t *testing.T, m manifest, webhook string) {
	t.Helper()
	for _, o := range append(m.ofKind("ClusterRole"), m.ofKind("ClusterRoleBinding")...) {
		if o.GetName() != webhook {
			t.Errorf("a namespace-restricted install renders %s %s", o.GetKind(), o.GetName())
		}
	}
	for _, o := range m.ofKind("ClusterRole") {
		var cr rbacv1.ClusterRole
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &cr); err != nil {
			t.Fatal(err)
		}
		for _, r := range cr.Rules {
			if !slices.Equal(r.Resources, []string{"validatingwebhookconfigurations"}) || !slices.Equal(r.ResourceNames, []string{webhook}) {
				t.Errorf("ClusterRole %s grants %v on %v (names %v)", cr.Name, r.Verbs, r.Resources, r.ResourceNames)
			}
		}
	}
}
