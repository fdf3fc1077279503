package webhook

import (
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	rbacv1 "k8s.io/api/rbac/v1"

	"github.com/keyward/keyward/internal/testenv"
)

// rendered is what the chart renders for the webhook with some values.
type rendered struct {
	vwc            *admissionregistrationv1.ValidatingWebhookConfiguration
	controllerArgs []string
	ports          []string
	clusterRole    *rbacv1.ClusterRole
	role           *rbacv1.Role
	kinds          []string
}

func render(t *testing.T, rel chartRelease, set ...string) *rendered {
	t.Helper()
	args := []string{}
	for _, s := range set {
		args = append(args, "--set", s)
	}
	r := &rendered{}
	for _, u := range helmTemplate(t, rel, args...) {
		r.kinds = append(r.kinds, u.GetKind()+"/"+u.GetName())
		switch {
		case u.GetKind() == "ValidatingWebhookConfiguration":
			r.vwc = convert(t, u, &admissionregistrationv1.ValidatingWebhookConfiguration{})
		case u.GetKind() == "Deployment" && strings.HasSuffix(u.GetName(), "-controller"):
			c := convert(t, u, &appsv1.Deployment{}).Spec.Template.Spec.Containers[0]
			r.controllerArgs = c.Args
			for _, p := range c.Ports {
				r.ports = append(r.ports, p.Name)
			}
		case u.GetKind() == "ClusterRole" && u.GetName() == rel.webhook:
			r.clusterRole = convert(t, u, &rbacv1.ClusterRole{})
		case u.GetKind() == "Role" && u.GetName() == rel.webhook:
			r.role = convert(t, u, &rbacv1.Role{})
		}
	}
	return r
}

func hasArg(args []string, arg string) bool { return slices.Contains(args, arg) }

func TestChartRendersTheWebhook(t *testing.T) {
	rel := newRelease()
	t.Run("by default: on, keyward.dev only, fail open, short timeout, kube-system and its namespace excluded", func(t *testing.T) {
		r := render(t, rel)
		if r.vwc == nil || len(r.vwc.Webhooks) != 3 {
			t.Fatalf("want a configuration with 3 webhooks, got %v", r.vwc)
		}
		for _, w := range r.vwc.Webhooks {
			if *w.FailurePolicy != admissionregistrationv1.Ignore || *w.TimeoutSeconds != 3 || *w.SideEffects != admissionregistrationv1.SideEffectClassNone ||
				!slices.Equal(w.AdmissionReviewVersions, []string{"v1"}) {
				t.Errorf("webhook %s: failurePolicy %s, timeout %d, sideEffects %s, versions %q", w.Name, *w.FailurePolicy, *w.TimeoutSeconds, *w.SideEffects, w.AdmissionReviewVersions)
			}
			for _, rule := range w.Rules {
				if !slices.Equal(rule.APIGroups, []string{"keyward.dev"}) || slices.ContainsFunc(rule.Resources, func(s string) bool { return strings.Contains(s, "/") || s == "*" }) {
					t.Errorf("webhook %s covers %q %q", w.Name, rule.APIGroups, rule.Resources)
				}
			}
			exprs := w.NamespaceSelector.MatchExpressions
			if len(exprs) != 1 || exprs[0].Key != "kubernetes.io/metadata.name" || exprs[0].Operator != "NotIn" ||
				!slices.Equal(exprs[0].Values, []string{"kube-system", rel.namespace}) {
				t.Errorf("webhook %s: namespaceSelector %+v", w.Name, exprs)
			}
		}
		for _, a := range []string{"--webhook-port=9443", "--webhook-service-name=" + rel.webhook, "--webhook-config-name=" + rel.webhook,
			"--webhook-secret-name=" + rel.webhook + "-cert", "--webhook-namespace=" + rel.namespace} {
			if !hasArg(r.controllerArgs, a) {
				t.Errorf("controller args %q lack %s", r.controllerArgs, a)
			}
		}
		if !slices.Contains(r.ports, "webhook") {
			t.Errorf("controller ports %q lack webhook", r.ports)
		}
		if r.clusterRole == nil || len(r.clusterRole.Rules) != 1 || !slices.Equal(r.clusterRole.Rules[0].ResourceNames, []string{rel.webhook}) {
			t.Errorf("the webhook ClusterRole is not limited to the configuration by name: %+v", r.clusterRole)
		}
		if r.role == nil || !slices.Equal(r.role.Rules[0].ResourceNames, []string{rel.webhook + "-cert"}) {
			t.Errorf("the webhook Role is not limited to its Secret by name: %+v", r.role)
		}
	})
	t.Run("disabled: no webhook objects, no webhook flags", func(t *testing.T) {
		r := render(t, rel, "webhook.enabled=false")
		for _, k := range r.kinds {
			if strings.Contains(k, "webhook") {
				t.Errorf("renders %s", k)
			}
		}
		for _, a := range r.controllerArgs {
			if strings.HasPrefix(a, "--webhook") {
				t.Errorf("controller arg %s", a)
			}
		}
	})
	t.Run("with cert-manager: a Certificate and CA injection; the controller only reads", func(t *testing.T) {
		r := render(t, rel, "webhook.certManager.enabled=true")
		if got := r.vwc.Annotations["cert-manager.io/inject-ca-from"]; got != rel.namespace+"/"+rel.webhook {
			t.Errorf("inject-ca-from %q", got)
		}
		for _, k := range []string{"Certificate/" + rel.webhook, "Issuer/" + rel.webhook} {
			if !slices.Contains(r.kinds, k) {
				t.Errorf("no %s in %q", k, r.kinds)
			}
		}
		if r.clusterRole != nil {
			t.Error("the controller may still update the webhook configuration")
		}
		for _, rule := range r.role.Rules {
			if slices.ContainsFunc(rule.Verbs, func(v string) bool { return v != "get" && v != "list" && v != "watch" }) {
				t.Errorf("the controller may write the Secret: %q", rule.Verbs)
			}
		}
		if !hasArg(r.controllerArgs, "--webhook-cert-manager=true") {
			t.Errorf("controller args %q", r.controllerArgs)
		}
	})
	t.Run("namespaces, more exclusions and Fail are honoured", func(t *testing.T) {
		r := render(t, rel, "webhook.namespaces={team-a,team-b}", "webhook.excludeNamespaces={ops}", "webhook.failurePolicy=Fail")
		w := r.vwc.Webhooks[0]
		exprs := w.NamespaceSelector.MatchExpressions
		if len(exprs) != 2 || !slices.Equal(exprs[0].Values, []string{"kube-system", rel.namespace, "ops"}) ||
			exprs[1].Operator != "In" || !slices.Equal(exprs[1].Values, []string{"team-a", "team-b"}) {
			t.Errorf("namespaceSelector %+v", exprs)
		}
		if *w.FailurePolicy != admissionregistrationv1.Fail {
			t.Errorf("failurePolicy %s", *w.FailurePolicy)
		}
	})
	t.Run("the schema refuses a failurePolicy the API server would not accept", func(t *testing.T) {
		cmd := exec.Command(helmPath(t), "template", rel.name, filepath.Join(testenv.RepoRoot(), "charts", "keyward"), "--set", "webhook.failurePolicy=Open")
		if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "failurePolicy") {
			t.Errorf("helm template accepted failurePolicy=Open: %v %s", err, out)
		}
	})
}
