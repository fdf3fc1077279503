package controllers_test

import (
	"context"
	"crypto"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jws"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
	"github.com/keyward/keyward/controllers"
	"github.com/keyward/keyward/internal/keys"
	"github.com/keyward/keyward/internal/manager"
	"github.com/keyward/keyward/internal/testenv"
)

// The controllers run in a real controller-runtime manager, wired by internal/manager exactly as
// `keyward controller` wires them, against a real kube-apiserver and etcd. Tests assert what
// the cluster holds (Secrets, ConfigMaps, status, Events), read with a direct, uncached client.
// Set KEYWARD_TEST_LOGS=1 to see the controllers' logs.

// pollInterval is how often tests look at the cluster.
const pollInterval = 250 * time.Millisecond

// testPublicURL is the issuer service's public URL the controllers are told.
const testPublicURL = "https://keyward.test/"

var (
	env *testenv.Env
	k8s client.Client
)

func TestMain(m *testing.M) {
	os.Exit(testenv.Main(m, func(ctx context.Context, e *testenv.Env) (func() error, error) {
		env, k8s = e, e.Client
		return startManager(ctx)
	}))
}

// startManager starts a manager with keyward's reconcilers, as cmd/keyward does, without
// metrics, health probes or leader election; with namespaces, its caches (and so its
// reconcilers) see only those. It returns once the caches are synced; stop waits for the
// manager to return after ctx is cancelled.
func startManager(ctx context.Context, namespaces ...string) (stop func() error, err error) {
	mgr, err := manager.New(env.Config, manager.Options{
		MetricsBindAddress:     "0",
		HealthProbeBindAddress: "0",
		LeaderElection:         false,
		Namespaces:             namespaces,
		// Several managers run the same controllers in this one process.
		SkipControllerNameValidation: true,
	})
	if err != nil {
		return nil, err
	}
	if err := manager.SetupControllers(ctx, mgr, manager.ControllerOptions{PublicURL: testPublicURL}); err != nil {
		return nil, err
	}
	return testenv.StartManager(ctx, mgr)
}

// callTimeout bounds one API call, or one attempt of eventually.
const callTimeout = 20 * time.Second

// eventually calls f until it returns nil, failing the test with f's last error after timeout.
// Each attempt gets its own context, cancelled when the attempt ends.
func eventually(t *testing.T, timeout time.Duration, f func(ctx context.Context) error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	attempt := func() error {
		ctx, cancel := context.WithTimeout(t.Context(), callTimeout)
		defer cancel()
		return f(ctx)
	}
	for {
		err := attempt()
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

// ctxFor is a context for one API call outside a polling loop.
func ctxFor(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), callTimeout)
	t.Cleanup(cancel)
	return ctx
}

// observe takes one snapshot in a polling loop, with its own bounded context.
func observe(t *testing.T, ns, name string) *snapshot {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), callTimeout)
	defer cancel()
	s, err := takeSnapshot(ctx, ns, name)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// newNamespace creates a namespace for one test. envtest runs no namespace or garbage
// collector controller, so nothing in it is deleted behind the tests' back.
func newNamespace(t *testing.T) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "ctrl-"}}
	if err := k8s.Create(ctxFor(t), ns); err != nil {
		t.Fatalf("cannot create namespace: %v", err)
	}
	return ns.Name
}

func create(t *testing.T, obj client.Object) {
	t.Helper()
	if err := k8s.Create(ctxFor(t), obj); err != nil {
		t.Fatalf("cannot create %T %s: %v", obj, obj.GetName(), err)
	}
}

// newSigningKey returns a SigningKey rotating every `every` with the given prepublish.
func newSigningKey(ns, name string, alg keywardv1.Algorithm, every, prepublish time.Duration) *keywardv1.SigningKey {
	return &keywardv1.SigningKey{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: keywardv1.SigningKeySpec{
			Algorithm: alg,
			Rotation:  keywardv1.KeyRotation{Every: metav1.Duration{Duration: every}, Prepublish: metav1.Duration{Duration: prepublish}},
		},
	}
}

// tokenIssuerSpec returns a TokenIssuer spec as JSON members, changed by mutate. TokenIssuers
// are built as unstructured objects because the Go type cannot send a zero leeway: `omitzero`
// drops it and the server defaults it to 30s.
func tokenIssuerSpec(signingKey, usersSecret string, mutate func(map[string]any)) map[string]any {
	spec := map[string]any{
		"signingKeyRef": map[string]any{"name": signingKey},
		"users":         map[string]any{"secretRef": map[string]any{"name": usersSecret}},
	}
	if mutate != nil {
		mutate(spec)
	}
	return spec
}

func createTokenIssuer(t *testing.T, ns, name string, spec map[string]any) {
	t.Helper()
	u := &unstructured.Unstructured{Object: map[string]any{"spec": spec}}
	u.SetGroupVersionKind(testenv.GVK("TokenIssuer"))
	u.SetNamespace(ns)
	u.SetName(name)
	create(t, u)
}

// update applies mutate to the latest version of obj and writes it, retrying on conflicts.
func update[T client.Object](t *testing.T, obj T, mutate func(T)) {
	t.Helper()
	eventually(t, 20*time.Second, func(ctx context.Context) error {
		if err := k8s.Get(ctx, client.ObjectKeyFromObject(obj), obj); err != nil {
			return err
		}
		mutate(obj)
		return k8s.Update(ctx, obj)
	})
}

// snapshot is what the cluster holds for one SigningKey at one moment: the key-set Secret is
// read first, then the JWKS ConfigMap, then the SigningKey, so the ConfigMap is never older
// than the Secret it was derived from.
type snapshot struct {
	start, end time.Time

	secret *corev1.Secret
	keySet *keys.KeySet
	cm     *corev1.ConfigMap
	jwks   []byte
	sk     *keywardv1.SigningKey
}

func takeSnapshot(ctx context.Context, ns, name string) (*snapshot, error) {
	s := &snapshot{start: time.Now()}
	ref := &keywardv1.SigningKey{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	s.secret = &corev1.Secret{}
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: controllers.SecretName(ref)}, s.secret); err != nil {
		return nil, fmt.Errorf("cannot get key-set Secret: %w", err)
	}
	ks, err := keys.ParseKeySet(s.secret.Data[keywardv1.KeySetDataKey])
	if err != nil {
		return nil, err
	}
	s.keySet = ks
	s.cm = &corev1.ConfigMap{}
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: controllers.JWKSConfigMapName(ref)}, s.cm); err != nil {
		return nil, fmt.Errorf("cannot get JWKS ConfigMap: %w", err)
	}
	jwks, ok := s.cm.Data[keywardv1.JWKSDataKey]
	if !ok {
		return nil, fmt.Errorf("ConfigMap %s has no data key %s", s.cm.Name, keywardv1.JWKSDataKey)
	}
	s.jwks = []byte(jwks)
	s.sk = &keywardv1.SigningKey{}
	if err := k8s.Get(ctx, client.ObjectKeyFromObject(ref), s.sk); err != nil {
		return nil, fmt.Errorf("cannot get SigningKey: %w", err)
	}
	s.end = time.Now()
	return s, nil
}

// secretKeys returns the kids of the key set in the given state.
func (s *snapshot) secretKeys(state keywardv1.KeyState) []string {
	var out []string
	for _, k := range s.keySet.Keys {
		if k.State() == state {
			out = append(out, k.KID)
		}
	}
	return out
}

// statusKeys returns the kids of status.keys in the given state.
func (s *snapshot) statusKeys(state keywardv1.KeyState) []string {
	var out []string
	for _, k := range s.sk.Status.Keys {
		if k.State == state {
			out = append(out, k.KID)
		}
	}
	return out
}

func (s *snapshot) storedKey(kid string) *keys.StoredKey {
	for i := range s.keySet.Keys {
		if s.keySet.Keys[i].KID == kid {
			return &s.keySet.Keys[i]
		}
	}
	return nil
}

// publishedKIDs parses the JWKS and checks every key in it: a public JWK (no private or
// symmetric member) whose kid is its RFC 7638 SHA-256 thumbprint.
func publishedKIDs(jwks []byte) ([]string, error) {
	var set struct {
		Keys []map[string]any `json:"keys"`
	}
	if err := json.Unmarshal(jwks, &set); err != nil {
		return nil, fmt.Errorf("cannot decode JWKS: %w", err)
	}
	if set.Keys == nil {
		return nil, fmt.Errorf("JWKS has no keys member: %s", jwks)
	}
	kids := make([]string, 0, len(set.Keys))
	for _, members := range set.Keys {
		for _, private := range []string{"d", "p", "q", "dp", "dq", "qi", "k", "oth"} {
			if _, ok := members[private]; ok {
				return nil, fmt.Errorf("published JWK %v has the private member %q", members["kid"], private)
			}
		}
		raw, _ := json.Marshal(members)
		key, err := jwk.ParseKey(raw)
		if err != nil {
			return nil, fmt.Errorf("cannot parse published JWK: %w", err)
		}
		tp, err := key.Thumbprint(crypto.SHA256)
		if err != nil {
			return nil, err
		}
		kid, _ := members["kid"].(string)
		if want := base64.RawURLEncoding.EncodeToString(tp); kid != want {
			return nil, fmt.Errorf("published JWK has kid %q, want its thumbprint %q", kid, want)
		}
		if members["use"] != "sig" {
			return nil, fmt.Errorf("published JWK %s has use %v, want sig", kid, members["use"])
		}
		if _, ok := members["alg"].(string); !ok {
			return nil, fmt.Errorf("published JWK %s has no alg", kid)
		}
		kids = append(kids, kid)
	}
	return kids, nil
}

// signWith signs a token with a stored private key, kid in the protected header.
func signWith(k *keys.StoredKey) ([]byte, error) {
	if k.PublicOnly {
		return nil, fmt.Errorf("key %s has no private part", k.KID)
	}
	key, err := k.Key()
	if err != nil {
		return nil, err
	}
	alg, err := keys.JWA(k.Algorithm)
	if err != nil {
		return nil, err
	}
	hdr := jws.NewHeaders()
	if err := hdr.Set(jws.KeyIDKey, k.KID); err != nil {
		return nil, err
	}
	return jws.Sign([]byte(`{"sub":"keyward-test"}`), jws.WithKey(alg, key, jws.WithProtectedHeaders(hdr)))
}

// verifyWith verifies a token against a published JWKS, choosing the key by kid.
func verifyWith(token, jwks []byte) error {
	set, err := jwk.Parse(jwks)
	if err != nil {
		return fmt.Errorf("cannot parse JWKS: %w", err)
	}
	if _, err := jws.Verify(token, jws.WithKeySet(set)); err != nil {
		return fmt.Errorf("token does not verify against the JWKS: %w", err)
	}
	return nil
}

// readyCondition returns the object's Ready condition, or an error when it has none yet.
func readyCondition(conditions []metav1.Condition) (*metav1.Condition, error) {
	c := meta.FindStatusCondition(conditions, keywardv1.ConditionReady)
	if c == nil {
		return nil, errors.New("no Ready condition yet")
	}
	return c, nil
}

// waitSigningKeyReady waits until the SigningKey is Ready and its Secret and ConfigMap exist.
func waitSigningKeyReady(t *testing.T, ns, name string, timeout time.Duration) *snapshot {
	t.Helper()
	var snap *snapshot
	eventually(t, timeout, func(ctx context.Context) error {
		s, err := takeSnapshot(ctx, ns, name)
		if err != nil {
			return err
		}
		c, err := readyCondition(s.sk.Status.Conditions)
		if err != nil {
			return err
		}
		if c.Status != metav1.ConditionTrue || s.sk.Status.ActiveKeyID == "" {
			return fmt.Errorf("SigningKey not Ready: %s: %s", c.Reason, c.Message)
		}
		if c.ObservedGeneration != s.sk.Generation {
			return fmt.Errorf("Ready condition is for generation %d, want %d", c.ObservedGeneration, s.sk.Generation)
		}
		snap = s
		return nil
	})
	return snap
}

// waitSigningKeyCondition waits until the SigningKey's Ready condition has the given status and
// reason.
func waitSigningKeyCondition(t *testing.T, ns, name string, status metav1.ConditionStatus, reason string, timeout time.Duration) *keywardv1.SigningKey {
	t.Helper()
	sk := &keywardv1.SigningKey{}
	eventually(t, timeout, func(ctx context.Context) error {
		if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, sk); err != nil {
			return err
		}
		c, err := readyCondition(sk.Status.Conditions)
		if err != nil {
			return err
		}
		if c.Status != status || c.Reason != reason || c.ObservedGeneration != sk.Generation {
			return fmt.Errorf("Ready is %s/%s (generation %d of %d): %s, want %s/%s", c.Status, c.Reason, c.ObservedGeneration, sk.Generation, c.Message, status, reason)
		}
		return nil
	})
	return sk
}

func isNotFound(err error) bool { return apierrors.IsNotFound(err) }

func contains(list []string, s string) bool { return slices.Contains(list, s) }
