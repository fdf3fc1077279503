package issuer_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"golang.org/x/crypto/bcrypt"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
	"github.com/keyward/keyward/internal/issuer"
	"github.com/keyward/keyward/internal/manager"
	"github.com/keyward/keyward/internal/testenv"
)

// The issuer runs as it runs for users: a manager from internal/manager with keyward's
// controllers (which create the key sets, label the users Secrets and collect Sessions) and
// issuer.Setup, serving real HTTP on 127.0.0.1, against a real kube-apiserver and etcd.
// Tests talk to it over HTTP and assert what the cluster holds with a direct client.
// KEYWARD_TEST_LOGS=1 shows the manager's logs.

const pollInterval = 100 * time.Millisecond

var (
	env     *testenv.Env
	k8s     client.Client
	baseURL string // http://127.0.0.1:<port>
)

// Test passwords are hashed at bcrypt's lowest cost, except where the cost matters (timing).
const testCost = bcrypt.MinCost

func TestMain(m *testing.M) {
	os.Exit(testenv.Main(m, func(ctx context.Context, e *testenv.Env) (func() error, error) {
		env, k8s = e, e.Client
		addr, stop, err := startKeyward(ctx, true)
		baseURL = "http://" + addr
		return stop, err
	}))
}

// startKeyward starts a manager with the issuer (and, with controllers, keyward's reconcilers)
// on 127.0.0.1 and a free port, and returns the address once its caches are synced.
func startKeyward(ctx context.Context, controllers bool) (string, func() error, error) {
	mgr, err := manager.New(env.Config, manager.Options{
		MetricsBindAddress:           "0",
		HealthProbeBindAddress:       "0",
		SkipControllerNameValidation: true,
	})
	if err != nil {
		return "", nil, err
	}
	if controllers {
		if err := manager.SetupControllers(ctx, mgr, manager.ControllerOptions{SessionSweepInterval: 2 * time.Second}); err != nil {
			return "", nil, err
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	if err := issuer.Setup(ctx, mgr, issuer.Options{Listener: ln, PublicURL: "http://keyward.test"}); err != nil {
		return "", nil, err
	}
	stop, err := testenv.StartManager(ctx, mgr)
	if err != nil {
		return "", nil, err
	}
	return ln.Addr().String(), stop, nil
}

// eventually calls f until it returns nil, failing the test with f's last error after timeout.
func eventually(t *testing.T, timeout time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %v", timeout, err)
		}
		select {
		case <-time.After(pollInterval):
		case <-t.Context().Done():
			t.Fatalf("test cancelled while waiting: %v", err)
		}
	}
}

func ctxFor(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func hash(t *testing.T, password string, cost int) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(password), cost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

// fixture is one TokenIssuer with its SigningKey, users and clients, in a namespace of its own.
type fixture struct {
	ns, name string
	base     string // base URL of the issuer's endpoints, with a trailing slash
	iss      string
}

// clientSecret is the secret of the test client "svc" (scopes read, write; audience api).
const clientSecret = "s3cr3t-0123456789abcdefghijklmnopqrstuvwxyz"

// issuerSpec returns the default TokenIssuer spec of a fixture; mutate changes it.
type specMutation func(spec map[string]any)

// users are "name:hash" lines and users.yaml content.
type users struct {
	htpasswd string
	yaml     string
}

// defaultUsers: alice/wonderland (groups admin, dev; email), bob/builder (disabled).
func defaultUsers(t *testing.T, cost int) users {
	return users{
		htpasswd: "alice:" + hash(t, "wonderland", cost) + "\nbob:" + hash(t, "builder", cost) + "\n",
		yaml:     "alice:\n  groups: [admin, dev]\n  claims:\n    email: alice@example.test\n    team: blue\nbob:\n  disabled: true\n",
	}
}

func newFixture(t *testing.T, u users, mutate specMutation) *fixture {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "iss-"}}
	if err := k8s.Create(ctxFor(t), ns); err != nil {
		t.Fatalf("cannot create namespace: %v", err)
	}
	f := &fixture{ns: ns.Name, name: "main"}
	f.base = baseURL + "/" + f.ns + "/" + f.name + "/"
	f.iss = "http://keyward.test/" + f.ns + "/" + f.name
	create(t, &keywardv1.SigningKey{
		ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: "main"},
		Spec: keywardv1.SigningKeySpec{Algorithm: keywardv1.AlgorithmES256,
			Rotation: keywardv1.KeyRotation{Every: metav1.Duration{Duration: 720 * time.Hour}, Prepublish: metav1.Duration{Duration: 10 * time.Minute}}},
	})
	// The users Secret is not labelled: the controller labels what a TokenIssuer names.
	create(t, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: "users"},
		StringData: map[string]string{issuer.HtpasswdDataKey: u.htpasswd, issuer.UsersYAMLDataKey: u.yaml},
	})
	create(t, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: "clients"},
		StringData: map[string]string{issuer.ClientsYAMLDataKey: fmt.Sprintf(
			"svc:\n  secretSHA256: %s\n  scopes: [read, write]\n  audiences: [api]\nother:\n  secretSHA256: %s\n  scopes: [read]\n",
			sha256Hex(clientSecret), sha256Hex("other-secret-0123456789abcdefghijklmnop"))},
	})
	spec := map[string]any{
		"audiences":            []any{"api"},
		"signingKeyRef":        map[string]any{"name": "main"},
		"users":                map[string]any{"secretRef": map[string]any{"name": "users"}},
		"clients":              map[string]any{"secretRef": map[string]any{"name": "clients"}},
		"refreshTokenRotation": map[string]any{"enabled": true, "reuseGracePeriod": "2s"},
		"extraClaims":          []any{map[string]any{"name": "tenant", "value": "acme"}},
	}
	if mutate != nil {
		mutate(spec)
	}
	u2 := &unstructured.Unstructured{Object: map[string]any{"spec": spec}}
	u2.SetGroupVersionKind(testenv.GVK("TokenIssuer"))
	u2.SetNamespace(f.ns)
	u2.SetName(f.name)
	create(t, u2)
	// Ready: the login endpoint answers a bad request with 400 rather than 503.
	eventually(t, 30*time.Second, func() error {
		resp := post(t, f.base+"api/token/", "application/json", "{}")
		if resp.status != http.StatusBadRequest {
			return fmt.Errorf("login endpoint answers %d %s", resp.status, resp.body)
		}
		return nil
	})
	return f
}

func create(t *testing.T, obj client.Object) {
	t.Helper()
	if err := k8s.Create(ctxFor(t), obj); err != nil {
		t.Fatalf("cannot create %T %s: %v", obj, obj.GetName(), err)
	}
}

// response is a read HTTP response.
type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("body is not a JSON object: %v: %s", err, r.body)
	}
	return m
}

func (r response) str(t *testing.T, key string) string {
	t.Helper()
	s, _ := r.json(t)[key].(string)
	if s == "" {
		t.Fatalf("body has no string %q: %s", key, r.body)
	}
	return s
}

var httpClient = &http.Client{Timeout: 30 * time.Second}

func do(t *testing.T, req *http.Request) response {
	t.Helper()
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: body}
}

func post(t *testing.T, url, contentType, body string) response {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	return do(t, req)
}

func postJSON(t *testing.T, url string, v any) response {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return post(t, url, "application/json", string(b))
}

// postForm posts a form, with HTTP Basic client credentials when user is not empty.
func postForm(t *testing.T, u string, form url.Values, user, pass string) response {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, u, strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if user != "" {
		req.SetBasicAuth(url.QueryEscape(user), url.QueryEscape(pass))
	}
	return do(t, req)
}

func get(t *testing.T, u string) response {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	return do(t, req)
}

func (f *fixture) login(t *testing.T, user, password string) response {
	t.Helper()
	return postJSON(t, f.base+"api/token/", map[string]string{"username": user, "password": password})
}

// loginOK logs in and returns the access and refresh tokens.
func (f *fixture) loginOK(t *testing.T, user, password string) (access, refresh string) {
	t.Helper()
	r := f.login(t, user, password)
	if r.status != http.StatusOK {
		t.Fatalf("login of %s: %d %s", user, r.status, r.body)
	}
	return r.str(t, "access"), r.str(t, "refresh")
}

func (f *fixture) refresh(t *testing.T, refresh string) response {
	t.Helper()
	return postJSON(t, f.base+"api/token/refresh/", map[string]string{"refresh": refresh})
}

func (f *fixture) verify(t *testing.T, tok string) response {
	t.Helper()
	return postJSON(t, f.base+"api/token/verify/", map[string]string{"token": tok})
}

func (f *fixture) introspect(t *testing.T, tok string) map[string]any {
	t.Helper()
	r := postForm(t, f.base+"oauth2/introspect", url.Values{"token": {tok}}, "svc", clientSecret)
	if r.status != http.StatusOK {
		t.Fatalf("introspect: %d %s", r.status, r.body)
	}
	return r.json(t)
}

func (f *fixture) label() string { return f.ns + "/" + f.name }

// claimsOf decodes a token's payload without verifying it (tests look at what was issued).
func claimsOf(t *testing.T, tok string) map[string]any {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("not a compact JWS: %q", tok)
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		t.Fatal(err)
	}
	return m
}

func headerOf(t *testing.T, tok string) map[string]any {
	t.Helper()
	raw, err := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[0])
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// metricValue reads a counter of the manager's registry by its labels; 0 when absent.
func metricValue(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	families, err := metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, fam := range families {
		if fam.GetName() != name {
			continue
		}
		for _, m := range fam.GetMetric() {
			if matches(m, labels) {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func matches(m *dto.Metric, labels map[string]string) bool {
	n := 0
	for _, lp := range m.GetLabel() {
		if v, ok := labels[lp.GetName()]; ok {
			if v != lp.GetValue() {
				return false
			}
			n++
		}
	}
	return n == len(labels)
}

func (f *fixture) hashes(t *testing.T) float64 {
	return metricValue(t, "keyward_issuer_password_hash_computations_total", map[string]string{"issuer": f.label()})
}

func (f *fixture) session(t *testing.T, sid string) *keywardv1.Session {
	t.Helper()
	s := &keywardv1.Session{}
	if err := k8s.Get(ctxFor(t), client.ObjectKey{Namespace: f.ns, Name: sid}, s); err != nil {
		t.Fatalf("cannot get session %s: %v", sid, err)
	}
	return s
}

func (f *fixture) setUsers(t *testing.T, u users) {
	t.Helper()
	s := &corev1.Secret{}
	if err := k8s.Get(ctxFor(t), client.ObjectKey{Namespace: f.ns, Name: "users"}, s); err != nil {
		t.Fatal(err)
	}
	s.Data = map[string][]byte{issuer.HtpasswdDataKey: []byte(u.htpasswd), issuer.UsersYAMLDataKey: []byte(u.yaml)}
	if err := k8s.Update(ctxFor(t), s); err != nil {
		t.Fatal(err)
	}
}
