package chart

import (
	"path/filepath"
	"slices"
	"testing"

	"github.com/keyward/keyward/internal/testenv"
)

// TestKustomizeDefault renders config/default with kubectl's kustomize and has the API server
// accept it (server-side dry run): the kubebuilder-style install is kept working.
func TestKustomizeDefault(t *testing.T) {
	out, err := kubectl(t, nil, "kustomize", filepath.Join(testenv.RepoRoot(), "config", "default"))
	if err != nil {
		t.Fatal(err)
	}
	m := parseManifest(t, out)
	want := map[string]int{
		"Namespace": 1, "CustomResourceDefinition": 4, "ServiceAccount": 3, "ClusterRole": 3, "ClusterRoleBinding": 3,
		"Role": 1, "RoleBinding": 1, "Deployment": 3, "Service": 2,
	}
	got := m.kinds()
	for k, n := range want {
		if got[k] != n {
			t.Errorf("%d %s rendered, want %d (all: %v)", got[k], k, n, got)
		}
	}
	for _, o := range m {
		if o.GetNamespace() != "" && o.GetNamespace() != "keyward-system" {
			t.Errorf("%s %s is in namespace %s", o.GetKind(), o.GetName(), o.GetNamespace())
		}
	}
	for _, r := range roles {
		d := deployment(t, m, "keyward-"+r)
		if d.Spec.Template.Spec.ServiceAccountName != "keyward-"+r {
			t.Errorf("%s runs as %q", r, d.Spec.Template.Spec.ServiceAccountName)
		}
		if c := d.Spec.Template.Spec.Containers[0]; c.Image != "ghcr.io/keyward/keyward:0.1.0" || c.Args[0] != r {
			t.Errorf("%s runs %s %v", r, c.Image, c.Args)
		}
	}
	if rules := rulesOf(t, m, "keyward-system", "keyward-validator")[""]; allows(rules, "", "secrets", "get") || allows(rules, "", "secrets", "list") {
		t.Error("config/rbac lets the validator read Secrets")
	}
	if rules := rulesOf(t, m, "keyward-system", "keyward-issuer")[""]; slices.ContainsFunc(writeVerbs, func(v string) bool { return allows(rules, "", "secrets", v) }) {
		t.Error("config/rbac lets the issuer write Secrets")
	}

	// An API server of its own: the Helm tests install objects of the same names in
	// keyward-system.
	own, err := testenv.Start(testenv.WithoutCRDs())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = own.Stop() }()
	kc, err := own.WriteKubeconfig(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	// The namespace must exist for a dry run of the objects in it.
	if out, err := run(t, nil, kubectlBin(t), "--kubeconfig", kc, "create", "namespace", "keyward-system"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if out, err := run(t, []byte(out), kubectlBin(t), "--kubeconfig", kc, "apply", "--dry-run=server", "--server-side", "--field-manager=keyward-test", "-f", "-"); err != nil {
		t.Fatalf("the API server refuses config/default: %v\n%s", err, out)
	}
}
