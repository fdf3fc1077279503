package chart

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

var roles = []string{"controller", "issuer", "validator"}

var writeVerbs = []string{"create", "update", "patch", "delete", "deletecollection"}

func TestHelmLint(t *testing.T) {
	mustRun(t, nil, helmBin(t), "lint", "--strict", chartDir)
	mustRun(t, nil, helmBin(t), "lint", "--strict", chartDir, "--set", "watchNamespaces={a,b}", "--set", "validator.allowHSKeys=true")
}

func TestTemplateDefaults(t *testing.T) {
	m := helmTemplate(t)

	want := map[string]int{
		"CustomResourceDefinition": 4, "ServiceAccount": 3, "PodDisruptionBudget": 3, "Deployment": 3,
		// One per role, and the controller's one for its webhook's configuration (by name).
		"ClusterRole": 4, "ClusterRoleBinding": 4,
		// The controller's leader election and its webhook certificate, in the release namespace.
		"Role": 2, "RoleBinding": 2,
		"Service": 4, "ValidatingWebhookConfiguration": 1, // the webhook's Service and configuration
	}
	if got := m.kinds(); !maps.Equal(got, want) {
		t.Errorf("rendered kinds %v, want %v", got, want)
	}

	t.Run("CRDs are rendered as generated", func(t *testing.T) {
		files, err := filepath.Glob(filepath.Join(chartDir, "files", "crds", "*.yaml"))
		if err != nil || len(files) != 4 {
			t.Fatalf("CRD files %v, %v", files, err)
		}
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			want := parseManifest(t, string(b))[0]
			got := m.find(t, "CustomResourceDefinition", "", want.GetName())
			// The template re-encodes the YAML (fromYaml, toYaml): the schema must come out the
			// same. (Number formatting is checked by the API server in TestHelmInstall.)
			if !reflect.DeepEqual(got.Object["spec"], want.Object["spec"]) {
				t.Errorf("CRD %s: rendered spec differs from %s", want.GetName(), f)
			}
		}
	})

	t.Run("CRDs survive helm uninstall", func(t *testing.T) {
		for _, crd := range m.ofKind("CustomResourceDefinition") {
			if crd.GetAnnotations()["helm.sh/resource-policy"] != "keep" {
				t.Errorf("CRD %s lacks helm.sh/resource-policy: keep", crd.GetName())
			}
			if !strings.HasSuffix(crd.GetName(), ".keyward.dev") {
				t.Errorf("unexpected CRD %s", crd.GetName())
			}
		}
	})

	t.Run("each role runs as its own ServiceAccount", func(t *testing.T) {
		for _, r := range roles {
			d := deployment(t, m, "kw-keyward-"+r)
			if sa := d.Spec.Template.Spec.ServiceAccountName; sa != "kw-keyward-"+r {
				t.Errorf("%s runs as ServiceAccount %q", r, sa)
			}
			if args := d.Spec.Template.Spec.Containers[0].Args; args[0] != r {
				t.Errorf("%s runs `keyward %s`", r, args[0])
			}
		}
	})

	t.Run("least privilege", func(t *testing.T) {
		rules := map[string][]rbacv1.PolicyRule{}
		for _, r := range roles {
			byNS := rulesOf(t, m, "keyward-system", "kw-keyward-"+r)
			rules[r] = byNS[""]
			for ns, nsRules := range byNS {
				if ns == "" {
					continue
				}
				if r != "controller" || ns != "keyward-system" {
					t.Errorf("%s has a Role in namespace %s", r, ns)
				}
				// The controller's own namespace: leader election, and its webhook certificate's
				// Secret (by name; create cannot be limited to a name).
				for _, rule := range nsRules {
					for _, res := range rule.Resources {
						switch {
						case res == "leases" || res == "events":
						case res == "secrets" && (slices.Equal(rule.ResourceNames, []string{"kw-keyward-webhook-cert"}) || slices.Equal(rule.Verbs, []string{"create"})):
						default:
							t.Errorf("the controller's Roles in its namespace grant %v on %s", rule.Verbs, res)
						}
					}
				}
			}
		}
		for _, verb := range []string{"get", "list", "watch", "create", "update", "patch", "delete"} {
			if allows(rules["validator"], "", "secrets", verb) {
				t.Errorf("the validator may %s Secrets", verb)
			}
		}
		for _, verb := range []string{"get", "list", "watch"} {
			if !allows(rules["issuer"], "", "secrets", verb) {
				t.Errorf("the issuer may not %s Secrets (it reads users, clients and keys)", verb)
			}
		}
		for _, verb := range writeVerbs {
			for _, res := range []string{"secrets", "configmaps"} {
				if allows(rules["issuer"], "", res, verb) {
					t.Errorf("the issuer may %s %s", verb, res)
				}
				if allows(rules["validator"], "", res, verb) {
					t.Errorf("the validator may %s %s", verb, res)
				}
			}
		}
		for _, verb := range []string{"create", "update"} {
			for _, res := range []string{"secrets", "configmaps"} {
				if !allows(rules["controller"], "", res, verb) {
					t.Errorf("the controller may not %s %s", verb, res)
				}
			}
		}
		if !allows(rules["issuer"], "keyward.dev", "sessions", "create") {
			t.Error("the issuer may not create Sessions")
		}
		if allows(rules["validator"], "keyward.dev", "sessions", "create") || allows(rules["validator"], "keyward.dev", "sessions", "update") {
			t.Error("the validator may write Sessions")
		}
		for r, rs := range rules {
			for _, rule := range rs {
				if slices.Contains(rule.Verbs, "*") || slices.Contains(rule.Resources, "*") || slices.Contains(rule.APIGroups, "*") {
					t.Errorf("%s has a wildcard rule %+v", r, rule)
				}
			}
		}
	})

	t.Run("secure pod defaults", func(t *testing.T) {
		for _, r := range roles {
			d := deployment(t, m, "kw-keyward-"+r)
			pod := d.Spec.Template.Spec
			psc := pod.SecurityContext
			if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
				t.Errorf("%s: pod does not set runAsNonRoot", r)
			}
			if psc == nil || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
				t.Errorf("%s: pod does not use the RuntimeDefault seccomp profile", r)
			}
			if len(pod.Containers) != 1 {
				t.Fatalf("%s: %d containers", r, len(pod.Containers))
			}
			c := pod.Containers[0]
			sc := c.SecurityContext
			switch {
			case sc == nil:
				t.Errorf("%s: no container securityContext", r)
			case sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
				t.Errorf("%s: root filesystem is writable", r)
			case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
				t.Errorf("%s: privilege escalation allowed", r)
			case sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0:
				t.Errorf("%s: capabilities %+v, want all dropped", r, sc.Capabilities)
			}
			if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
				t.Errorf("%s: no CPU and memory requests", r)
			}
		}
	})

	t.Run("probes and graceful shutdown", func(t *testing.T) {
		for _, r := range roles {
			d := deployment(t, m, "kw-keyward-"+r)
			c := d.Spec.Template.Spec.Containers[0]
			if p := c.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/readyz" || p.HTTPGet.Port.String() != "probes" {
				t.Errorf("%s: readiness probe %+v, want GET /readyz on the probes port", r, p)
			}
			if p := c.LivenessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" {
				t.Errorf("%s: liveness probe %+v, want GET /healthz", r, p)
			}
			if !slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.Name == "probes" && p.ContainerPort == 9091 }) {
				t.Errorf("%s: no probes port 9091", r)
			}
			if !slices.Contains(c.Args, "--health-probe-bind-address=:9091") {
				t.Errorf("%s: probes not served on :9091: %v", r, c.Args)
			}
			delay := argValue(c.Args, "--shutdown-delay")
			dd, err := time.ParseDuration(delay)
			if err != nil || dd <= 0 {
				t.Errorf("%s: --shutdown-delay %q, want a positive duration", r, delay)
			}
			// The grace period covers the delay plus the servers' 10s drain.
			grace := d.Spec.Template.Spec.TerminationGracePeriodSeconds
			if grace == nil || time.Duration(*grace)*time.Second < dd+10*time.Second {
				t.Errorf("%s: terminationGracePeriodSeconds %v does not cover --shutdown-delay %s + 10s", r, grace, delay)
			}
		}
		if args := deployment(t, m, "kw-keyward-controller").Spec.Template.Spec.Containers[0].Args; !slices.Contains(args, "--leader-elect=true") ||
			argValue(args, "--leader-election-namespace") != "keyward-system" {
			t.Errorf("the controller does not elect a leader in its namespace: %v", args)
		}
	})

	t.Run("services", func(t *testing.T) {
		ports := func(name string) map[string]int32 {
			svc := convert[corev1.Service](t, m.find(t, "Service", "keyward-system", name))
			p := map[string]int32{}
			for _, sp := range svc.Spec.Ports {
				p[sp.Name] = sp.Port
			}
			if svc.Spec.Selector["app.kubernetes.io/component"] == "" {
				t.Errorf("Service %s does not select a component", name)
			}
			return p
		}
		if p := ports("kw-keyward-issuer"); p["http"] != 8080 || p["metrics"] != 9090 {
			t.Errorf("issuer Service ports %v", p)
		}
		if p := ports("kw-keyward-validator"); p["http"] != 8081 || p["grpc"] != 9001 || p["metrics"] != 9090 {
			t.Errorf("validator Service ports %v", p)
		}
	})
}

func argValue(args []string, flag string) string {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, flag+"="); ok {
			return v
		}
	}
	return ""
}

func TestTemplateNamespaceRestricted(t *testing.T) {
	m := helmTemplate(t, "--set", "watchNamespaces={team-a,team-b}")
	assertOnlyWebhookClusterRBAC(t, m, "kw-keyward-webhook")
	webhookNamespaces := m.find(t, "ValidatingWebhookConfiguration", "", "kw-keyward-webhook")
	hooks, _, _ := unstructured.NestedSlice(webhookNamespaces.Object, "webhooks")
	for _, h := range hooks {
		exprs, _, _ := unstructured.NestedSlice(h.(map[string]any), "namespaceSelector", "matchExpressions")
		if !slices.ContainsFunc(exprs, func(e any) bool {
			m := e.(map[string]any)
			return m["operator"] == "In" && fmt.Sprint(m["values"]) == "[team-a team-b]"
		}) {
			t.Errorf("the webhook is not limited to team-a and team-b: %v", exprs)
		}
	}
	for _, r := range roles {
		byNS := rulesOf(t, m, "keyward-system", "kw-keyward-"+r)
		for _, ns := range []string{"team-a", "team-b"} {
			if len(byNS[ns]) == 0 {
				t.Errorf("%s has no Role in %s", r, ns)
			}
		}
		for ns := range byNS {
			// The controller: leader election and its webhook in keyward-system, and cluster-wide
			// its webhook's configuration alone (assertOnlyWebhookClusterRBAC).
			if ns != "team-a" && ns != "team-b" && (r != "controller" || ns != "keyward-system" && ns != "") {
				t.Errorf("%s has permissions in namespace %q", r, ns)
			}
		}
		for _, verb := range []string{"get", "list", "watch"} {
			if r == "validator" && allows(byNS["team-a"], "", "secrets", verb) {
				t.Errorf("the validator may %s Secrets in team-a", verb)
			}
		}
		args := deployment(t, m, "kw-keyward-"+r).Spec.Template.Spec.Containers[0].Args
		if argValue(args, "--watch-namespaces") != "team-a,team-b" {
			t.Errorf("%s is not told to watch team-a,team-b: %v", r, args)
		}
	}
}

func TestTemplateOptions(t *testing.T) {
	t.Run("allowHSKeys grants the validator Secret reads, nothing more", func(t *testing.T) {
		m := helmTemplate(t, "--set", "validator.allowHSKeys=true")
		rules := rulesOf(t, m, "keyward-system", "kw-keyward-validator")[""]
		if !allows(rules, "", "secrets", "get") || !allows(rules, "", "secrets", "watch") {
			t.Error("the validator may not read Secrets with allowHSKeys")
		}
		for _, verb := range writeVerbs {
			if allows(rules, "", "secrets", verb) {
				t.Errorf("the validator may %s Secrets with allowHSKeys", verb)
			}
		}
		args := deployment(t, m, "kw-keyward-validator").Spec.Template.Spec.Containers[0].Args
		if !slices.Contains(args, "--allow-hs-keys=true") {
			t.Errorf("validator args %v", args)
		}
	})

	t.Run("TLS from Secrets", func(t *testing.T) {
		m := helmTemplate(t, "--set", "issuer.tls.secretName=issuer-tls", "--set", "validator.tls.secretName=authz-tls",
			"--set", "validator.grpcTLS.secretName=grpc-tls", "--set", "validator.grpcTLS.clientCASecretName=envoy-ca")
		check := func(role string, flags map[string]string, secrets []string) {
			pod := deployment(t, m, "kw-keyward-"+role).Spec.Template.Spec
			args := pod.Containers[0].Args
			for flag, want := range flags {
				if got := argValue(args, flag); got != want {
					t.Errorf("%s: %s=%q, want %q", role, flag, got, want)
				}
			}
			var mounted []string
			for _, v := range pod.Volumes {
				if v.Secret != nil {
					mounted = append(mounted, v.Secret.SecretName)
				}
			}
			if !slices.Equal(mounted, secrets) {
				t.Errorf("%s mounts Secrets %v, want %v", role, mounted, secrets)
			}
			for _, vm := range pod.Containers[0].VolumeMounts {
				if !vm.ReadOnly {
					t.Errorf("%s: volume %s is writable", role, vm.Name)
				}
			}
		}
		check("issuer", map[string]string{
			"--issuer-tls-cert": "/etc/keyward/tls/issuer/tls.crt", "--issuer-tls-key": "/etc/keyward/tls/issuer/tls.key",
		}, []string{"issuer-tls"})
		check("validator", map[string]string{
			"--authz-tls-cert":       "/etc/keyward/tls/authz/tls.crt",
			"--authz-grpc-tls-cert":  "/etc/keyward/tls/authz-grpc/tls.crt",
			"--authz-grpc-tls-key":   "/etc/keyward/tls/authz-grpc/tls.key",
			"--authz-grpc-client-ca": "/etc/keyward/tls/authz-grpc-client-ca/ca.crt",
		}, []string{"authz-tls", "grpc-tls", "envoy-ca"})
		// Mounting a Secret is the kubelet's doing: the validator still has no Secret permission.
		if rules := rulesOf(t, m, "keyward-system", "kw-keyward-validator")[""]; allows(rules, "", "secrets", "get") {
			t.Error("TLS gave the validator Secret permissions")
		}
	})

	t.Run("client CA without a server certificate is refused", func(t *testing.T) {
		_, err := run(t, nil, helmBin(t), "template", "kw", chartDir, "--set", "validator.grpcTLS.clientCASecretName=ca")
		if err == nil || !strings.Contains(err.Error(), "needs validator.grpcTLS.secretName") {
			t.Errorf("got %v, want a refusal naming validator.grpcTLS.secretName", err)
		}
	})

	t.Run("autoscaling", func(t *testing.T) {
		m := helmTemplate(t, "--set", "issuer.autoscaling.enabled=true", "--set", "validator.autoscaling.enabled=true", "--set", "validator.autoscaling.maxReplicas=7")
		if n := len(m.ofKind("HorizontalPodAutoscaler")); n != 2 {
			t.Fatalf("%d HorizontalPodAutoscalers, want 2", n)
		}
		hpa := m.find(t, "HorizontalPodAutoscaler", "keyward-system", "kw-keyward-validator")
		if max, _, _ := unstructuredInt(hpa.Object, "spec", "maxReplicas"); max != 7 {
			t.Errorf("validator HPA maxReplicas %d", max)
		}
		for _, r := range []string{"issuer", "validator"} {
			if d := deployment(t, m, "kw-keyward-"+r); d.Spec.Replicas != nil {
				t.Errorf("%s Deployment sets replicas %d while an HPA scales it", r, *d.Spec.Replicas)
			}
		}
	})

	t.Run("ServiceMonitors select the metrics ports", func(t *testing.T) {
		m := helmTemplate(t, "--set", "serviceMonitor.enabled=true")
		sms := m.ofKind("ServiceMonitor")
		if len(sms) != 3 {
			t.Fatalf("%d ServiceMonitors, want 3", len(sms))
		}
		for _, sm := range sms {
			sel := sm.Object["spec"].(map[string]any)["selector"].(map[string]any)["matchLabels"].(map[string]any)
			var matched int
			for _, svc := range m.ofKind("Service") {
				labels := svc.GetLabels()
				ok := true
				for k, v := range sel {
					ok = ok && labels[k] == v
				}
				if ok {
					matched++
					s := convert[corev1.Service](t, svc)
					if !slices.ContainsFunc(s.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == "metrics" }) {
						t.Errorf("ServiceMonitor %s selects Service %s without a metrics port", sm.GetName(), svc.GetName())
					}
				}
			}
			if matched != 1 {
				t.Errorf("ServiceMonitor %s selects %d Services, want 1", sm.GetName(), matched)
			}
		}
	})

	t.Run("crds.install=false leaves the CRDs out", func(t *testing.T) {
		if n := len(helmTemplate(t, "--set", "crds.install=false").ofKind("CustomResourceDefinition")); n != 0 {
			t.Errorf("%d CRDs rendered", n)
		}
	})

	t.Run("the schema refuses unknown values", func(t *testing.T) {
		for _, set := range []string{"validator.allowHsKeys=true", "issuer.replicas=-1", "publicURL=keyward.example", "watchNamespaces={Not_A_Namespace}"} {
			if _, err := run(t, nil, helmBin(t), "template", "kw", chartDir, "--set", set); err == nil {
				t.Errorf("--set %s was accepted", set)
			}
		}
	})
}

func unstructuredInt(obj map[string]any, fields ...string) (int64, bool, error) {
	var cur any = obj
	for _, f := range fields {
		m, ok := cur.(map[string]any)
		if !ok {
			return 0, false, nil
		}
		cur = m[f]
	}
	switch v := cur.(type) {
	case int64:
		return v, true, nil
	case float64:
		return int64(v), true, nil
	case int:
		return int64(v), true, nil
	}
	return 0, false, nil
}
