package manager_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
	"github.com/keyward/keyward/internal/issuer"
	"github.com/keyward/keyward/internal/manager"
	"github.com/keyward/keyward/internal/testenv"
	"github.com/keyward/keyward/internal/validator"

	"github.com/keyward/keyward/internal/testsupport"
)

var env *testenv.Env

func TestMain(m *testing.M) {
	os.Exit(testenv.Main(m, func(_ context.Context, e *testenv.Env) (func() error, error) {
		env = e
		return func() error { return nil }, nil
	}))
}

// controllerRules are the rules controller-gen generated for the controller role.
func controllerRules(t *testing.T) []rbacv1.PolicyRule { return roleRules(t, "controller") }

// roleRules are the rules controller-gen generated for a role (config/rbac/<role>_role.yaml).
func roleRules(t *testing.T, role string) []rbacv1.PolicyRule {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "config", "rbac", role+"_role.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var cr rbacv1.ClusterRole
	if err := yaml.Unmarshal(b, &cr); err != nil {
		t.Fatal(err)
	}
	return cr.Rules
}

func createNamespace(t *testing.T, name string) {
	t.Helper()
	err := env.Client.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

// startManager runs the controllers as user, restricted to namespaces, with probes on a free
// port, and returns the probe address.
func startManager(t *testing.T, user string, namespaces ...string) string {
	t.Helper()
	return startRole(t, "controller", user, namespaces...)
}

// startRole runs one of keyward's roles as cmd/keyward wires it, as user.
func startRole(t *testing.T, role, user string, namespaces ...string) string {
	t.Helper()
	cfg, err := env.AddUser(user)
	if err != nil {
		t.Fatal(err)
	}
	probes := testsupport.MustFreeAddr(t)
	mgr, err := manager.New(cfg, manager.Options{
		MetricsBindAddress: "0", HealthProbeBindAddress: probes, Namespaces: namespaces,
		SkipControllerNameValidation: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	switch role {
	case "controller":
		err = manager.SetupControllers(ctx, mgr, manager.ControllerOptions{
			PublicURL: "http://keyward.test", Namespaces: namespaces, SessionSweepInterval: time.Second,
		})
	case "issuer":
		var ln net.Listener
		if ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		err = issuer.Setup(ctx, mgr, issuer.Options{Listener: ln, PublicURL: "http://keyward.test", Namespaces: namespaces})
	case "validator":
		err = validator.Setup(ctx, mgr, validator.Options{AuthzAddr: "127.0.0.1:0", GRPCAddr: "127.0.0.1:0", Namespaces: namespaces})
	}
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("manager stopped with an error: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("manager did not stop within 30s")
		}
	})
	return probes
}

// readyz returns the status code of /readyz and its verbose body; 0 when not serving.
func readyz(addr string) (int, string) {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + "/readyz?verbose")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func eventually(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		ok, msg := cond()
		if ok {
			return
		}
		last = msg
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: not within %s (last: %s)", what, timeout, last)
}

// TestReadinessWaitsForInformers runs each role as a user that may not list anything: the
// informers cannot sync, and /readyz must fail while /healthz passes. Once the role's generated
// ClusterRole is bound to the user, the informers sync and /readyz passes, which also shows that
// each role's RBAC covers what it watches.
func TestReadinessWaitsForInformers(t *testing.T) {
	for _, role := range []string{"controller", "issuer", "validator"} {
		t.Run(role, func(t *testing.T) {
			user := "readiness-" + role
			probes := startRole(t, role, user)

			eventually(t, 30*time.Second, "the probe server serves", func() (bool, string) {
				code, body := readyz(probes)
				return code != 0, body
			})
			// The informers keep failing to list: the check fails every time it is asked.
			for i := range 5 {
				code, body := readyz(probes)
				if code == http.StatusOK {
					t.Fatalf("probe %d: /readyz is 200 while the informers cannot list:\n%s", i, body)
				}
				if !strings.Contains(body, "[-]informers failed") {
					t.Fatalf("probe %d: /readyz does not name the informers check:\n%s", i, body)
				}
				time.Sleep(200 * time.Millisecond)
			}
			resp, err := http.Get("http://" + probes + "/healthz")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("/healthz is %d while waiting for the informers, want 200 (liveness must not restart a syncing pod)", resp.StatusCode)
			}

			ctx := context.Background()
			cr := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: user}, Rules: roleRules(t, role)}
			binding := &rbacv1.ClusterRoleBinding{
				ObjectMeta: metav1.ObjectMeta{Name: user},
				RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: user},
				Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}},
			}
			for _, o := range []client.Object{cr, binding} {
				if err := env.Client.Create(ctx, o); err != nil {
					t.Fatal(err)
				}
			}
			eventually(t, 90*time.Second, "/readyz passes once the informers sync", func() (bool, string) {
				code, body := readyz(probes)
				return code == http.StatusOK, body
			})
		})
	}
}

// TestNamespaceRestriction runs the controllers restricted to one namespace, as a user whose
// only permissions are the controller role's rules in a Role of that namespace (what the Helm
// chart renders for watchNamespaces). The manager syncs, reconciles in its namespace and
// ignores the objects of others.
func TestNamespaceRestriction(t *testing.T) {
	ctx := context.Background()
	const user, inside, outside = "restricted-controller", "team-inside", "team-outside"
	createNamespace(t, inside)
	createNamespace(t, outside)
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: user, Namespace: inside}, Rules: controllerRules(t)}
	binding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: user, Namespace: inside},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: user},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}},
	}
	for _, o := range []client.Object{role, binding} {
		if err := env.Client.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	// The outside objects exist before the manager starts: its initial list would see them.
	// An expired Session is what the sweep, which lists from the API server, deletes.
	for _, ns := range []string{outside, inside} {
		sk := &keywardv1.SigningKey{ObjectMeta: metav1.ObjectMeta{Name: "main", Namespace: ns}}
		expired := &keywardv1.Session{
			ObjectMeta: metav1.ObjectMeta{Name: "expired", Namespace: ns},
			Spec: keywardv1.SessionSpec{
				IssuerRef: keywardv1.LocalObjectReference{Name: "main"}, Subject: "alice",
				ExpiresAt: metav1.NewTime(time.Now().Add(-time.Hour)),
			},
		}
		for _, o := range []client.Object{sk, expired} {
			if err := env.Client.Create(ctx, o); err != nil {
				t.Fatal(err)
			}
		}
	}
	probes := startManager(t, user, inside)

	eventually(t, 60*time.Second, "the manager is ready with a namespaced Role only", func() (bool, string) {
		code, body := readyz(probes)
		return code == http.StatusOK, body
	})
	eventually(t, 60*time.Second, "the SigningKey inside the namespace is Ready", func() (bool, string) {
		var sk keywardv1.SigningKey
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: inside, Name: "main"}, &sk); err != nil {
			return false, err.Error()
		}
		return meta.IsStatusConditionTrue(sk.Status.Conditions, "Ready"), fmt.Sprint(sk.Status.Conditions)
	})
	eventually(t, 60*time.Second, "the sweep deletes the expired Session inside the namespace", func() (bool, string) {
		err := env.Client.Get(ctx, client.ObjectKey{Namespace: inside, Name: "expired"}, &keywardv1.Session{})
		return apierrors.IsNotFound(err), fmt.Sprint(err)
	})
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: outside, Name: "expired"}, &keywardv1.Session{}); err != nil {
		t.Errorf("the expired Session outside the watched namespace: %v, want it left alone", err)
	}
	var sk keywardv1.SigningKey
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: outside, Name: "main"}, &sk); err != nil {
		t.Fatal(err)
	}
	if len(sk.Status.Conditions) != 0 || len(sk.Status.Keys) != 0 {
		t.Errorf("the SigningKey outside the watched namespace was reconciled: %+v", sk.Status)
	}
	var secrets corev1.SecretList
	if err := env.Client.List(ctx, &secrets, client.InNamespace(outside)); err != nil {
		t.Fatal(err)
	}
	if len(secrets.Items) != 0 {
		t.Errorf("the controller wrote %d Secrets outside the watched namespace", len(secrets.Items))
	}
}

func TestGracefulStop(t *testing.T) {
	t.Run("without a delay the context is the signal's", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		stopCtx, check := manager.GracefulStop(ctx, 0)
		cancel()
		<-stopCtx.Done()
		if err := check(nil); err != nil {
			t.Errorf("the readiness check fails without a delay: %v", err)
		}
	})
	t.Run("with a delay the pod turns unready first, then stops", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		stopCtx, check := manager.GracefulStop(ctx, 3*time.Second)
		if err := check(nil); err != nil {
			t.Fatalf("the readiness check fails before the signal: %v", err)
		}
		cancel()
		eventually(t, 5*time.Second, "the readiness check fails after the signal", func() (bool, string) {
			return check(nil) != nil, ""
		})
		if stopCtx.Err() != nil {
			t.Fatal("the manager's context was cancelled before the delay, while the pod was unready")
		}
		select {
		case <-stopCtx.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("the manager's context was not cancelled after the delay")
		}
	})
}

// TestNamespaceRestrictionEveryRole runs the issuer and the validator restricted to one
// namespace with only their generated rules in a Role there: every cache they start stays in
// that namespace, so they sync and turn ready.
func TestNamespaceRestrictionEveryRole(t *testing.T) {
	ctx := context.Background()
	const ns = "team-roles"
	createNamespace(t, ns)
	for _, role := range []string{"issuer", "validator"} {
		t.Run(role, func(t *testing.T) {
			user := "restricted-" + role
			r := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: user, Namespace: ns}, Rules: roleRules(t, role)}
			binding := &rbacv1.RoleBinding{
				ObjectMeta: metav1.ObjectMeta{Name: user, Namespace: ns},
				RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: user},
				Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}},
			}
			for _, o := range []client.Object{r, binding} {
				if err := env.Client.Create(ctx, o); err != nil {
					t.Fatal(err)
				}
			}
			probes := startRole(t, role, user, ns)
			eventually(t, 60*time.Second, "the "+role+" is ready with a namespaced Role only", func() (bool, string) {
				code, body := readyz(probes)
				return code == http.StatusOK, body
			})
		})
	}
}
