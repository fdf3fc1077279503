package v1alpha1_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
	"github.com/keyward/keyward/internal/testenv"
)

// The CRDs' validation (OpenAPI schema and CEL rules) is checked against a real kube-apiserver:
// a valid base object is accepted, and each case applies one mutation to it and expects the
// server's error message to contain a given substring (or expects the object to be accepted).
// Objects are built as unstructured maps so that a case can send what the Go types cannot
// express (an unknown algorithm, a malformed duration).

var k8s client.Client

func TestMain(m *testing.M) {
	os.Exit(testenv.Main(m, func(_ context.Context, env *testenv.Env) (func() error, error) {
		k8s = env.Client
		return func() error { return nil }, nil
	}))
}

type object = map[string]any

// celCase is one mutation of a valid base object. An empty wantErr means the server accepts it.
type celCase struct {
	name    string
	mutate  func(o object)
	wantErr string
}

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// newNamespace creates a namespace for one test. envtest runs no namespace controller, so it is
// not deleted: object names never collide because every test has its own namespace.
func newNamespace(t *testing.T) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "cel-"}}
	if err := k8s.Create(testContext(t), ns); err != nil {
		t.Fatalf("cannot create namespace: %v", err)
	}
	return ns.Name
}

func newObject(kind, namespace, name string, spec object) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: object{"spec": spec}}
	u.SetGroupVersionKind(testenv.GVK(kind))
	u.SetNamespace(namespace)
	u.SetName(name)
	return u
}

// set sets a nested field, creating the maps on its path.
func set(o object, value any, path ...string) {
	for _, p := range path[:len(path)-1] {
		next, ok := o[p].(object)
		if !ok {
			next = object{}
			o[p] = next
		}
		o = next
	}
	o[path[len(path)-1]] = value
}

// del removes a nested field.
func del(o object, path ...string) {
	for _, p := range path[:len(path)-1] {
		next, ok := o[p].(object)
		if !ok {
			return
		}
		o = next
	}
	delete(o, path[len(path)-1])
}

// listOf returns n strings made by f, as a JSON list.
func listOf(n int, f func(i int) string) []any {
	out := make([]any, n)
	for i := range out {
		out[i] = f(i)
	}
	return out
}

// checkCreate dry-runs the creation of obj and compares the outcome with wantErr.
func checkCreate(t *testing.T, obj *unstructured.Unstructured, wantErr string) {
	t.Helper()
	err := k8s.Create(testContext(t), obj, client.DryRunAll)
	checkOutcome(t, err, wantErr)
}

func checkOutcome(t *testing.T, err error, wantErr string) {
	t.Helper()
	switch {
	case wantErr == "" && err != nil:
		t.Fatalf("want the object accepted, got: %v", err)
	case wantErr != "" && err == nil:
		t.Fatalf("want the object refused with %q, but the server accepted it", wantErr)
	case wantErr != "" && !strings.Contains(err.Error(), wantErr):
		t.Fatalf("want an error containing %q, got: %v", wantErr, err)
	}
}

func baseSigningKeySpec() object {
	return object{
		"algorithm":     "ES256",
		"rotation":      object{"every": "1h", "prepublish": "10m"},
		"import":        object{"secretRef": object{"name": "imported-key"}},
		"revokedKeyIDs": []any{"kid-1", "kid-2"},
	}
}

func TestSigningKeyValidation(t *testing.T) {
	ns := newNamespace(t)
	cases := []celCase{
		{name: "the base object is accepted", mutate: func(object) {}},
		{name: "a spec with no field at all is accepted and defaulted", mutate: func(o object) { clear(o) }},
		{name: "an unknown algorithm is refused", mutate: func(o object) { o["algorithm"] = "none" }, wantErr: `Unsupported value: "none"`},
		{name: "an algorithm in the wrong case is refused", mutate: func(o object) { o["algorithm"] = "es256" }, wantErr: `Unsupported value: "es256"`},
		{name: "an algorithm jwx knows but keyward does not is refused", mutate: func(o object) { o["algorithm"] = "ES256K" }, wantErr: `Unsupported value: "ES256K"`},
		{name: "every of exactly 1m is accepted", mutate: func(o object) { set(o, "1m", "rotation", "every"); set(o, "5s", "rotation", "prepublish") }},
		{name: "every shorter than 1m is refused", mutate: func(o object) { set(o, "59s", "rotation", "every"); set(o, "5s", "rotation", "prepublish") }, wantErr: "every must be at least 1m"},
		{name: "every that is not a duration is refused", mutate: func(o object) { set(o, "monthly", "rotation", "every") }, wantErr: "spec.rotation.every in body must be of type duration"},
		{name: "prepublish of exactly 5s is accepted", mutate: func(o object) { set(o, "5s", "rotation", "prepublish") }},
		{name: "prepublish shorter than 5s is refused", mutate: func(o object) { set(o, "4s", "rotation", "prepublish") }, wantErr: "prepublish must be at least 5s"},
		{name: "a zero prepublish is refused", mutate: func(o object) { set(o, "0s", "rotation", "prepublish") }, wantErr: "prepublish must be at least 5s"},
		{name: "prepublish that is not a duration is refused", mutate: func(o object) { set(o, "soon", "rotation", "prepublish") }, wantErr: "spec.rotation.prepublish in body must be of type duration"},
		{name: "prepublish equal to every is refused", mutate: func(o object) { set(o, "1h", "rotation", "prepublish") }, wantErr: "prepublish must be shorter than every"},
		{name: "prepublish longer than every is refused", mutate: func(o object) { set(o, "2h", "rotation", "prepublish") }, wantErr: "prepublish must be shorter than every"},
		{name: "prepublish longer than the default every is refused", mutate: func(o object) { del(o, "rotation", "every"); set(o, "721h", "rotation", "prepublish") }, wantErr: "prepublish must be shorter than every"},
		{name: "every shorter than the default prepublish is refused", mutate: func(o object) { del(o, "rotation", "prepublish"); set(o, "5m", "rotation", "every") }, wantErr: "prepublish must be shorter than every"},
		{name: "an import without secretRef is refused", mutate: func(o object) { set(o, object{}, "import") }, wantErr: "spec.import.secretRef: Required value"},
		{name: "an import secretRef without name is refused", mutate: func(o object) { set(o, object{}, "import", "secretRef") }, wantErr: "spec.import.secretRef.name: Required value"},
		{name: "an import secretRef with an empty name is refused", mutate: func(o object) { set(o, "", "import", "secretRef", "name") }, wantErr: "spec.import.secretRef.name in body should be at least 1 chars long"},
		{name: "an import secretRef name longer than 253 characters is refused", mutate: func(o object) { set(o, strings.Repeat("a", 254), "import", "secretRef", "name") }, wantErr: "spec.import.secretRef.name: Too long"},
		{name: "64 revokedKeyIDs are accepted", mutate: func(o object) {
			o["revokedKeyIDs"] = listOf(64, func(i int) string { return fmt.Sprintf("kid-%d", i) })
		}},
		{name: "65 revokedKeyIDs are refused", mutate: func(o object) {
			o["revokedKeyIDs"] = listOf(65, func(i int) string { return fmt.Sprintf("kid-%d", i) })
		}, wantErr: "must have at most 64 items"},
		{name: "an empty revoked key ID is refused", mutate: func(o object) { o["revokedKeyIDs"] = []any{""} }, wantErr: "spec.revokedKeyIDs[0] in body should be at least 1 chars long"},
		{name: "a revoked key ID longer than 128 characters is refused", mutate: func(o object) { o["revokedKeyIDs"] = []any{strings.Repeat("k", 129)} }, wantErr: "spec.revokedKeyIDs[0]: Too long"},
		{name: "a revoked key ID listed twice is refused", mutate: func(o object) { o["revokedKeyIDs"] = []any{"kid-1", "kid-1"} }, wantErr: `Duplicate value: "kid-1"`},
	}
	for _, alg := range keywardv1.Algorithms {
		cases = append(cases, celCase{name: fmt.Sprintf("algorithm %s is accepted", alg), mutate: func(o object) { o["algorithm"] = string(alg) }})
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			spec := baseSigningKeySpec()
			tc.mutate(spec)
			checkCreate(t, newObject("SigningKey", ns, fmt.Sprintf("sk-%d", i), spec), tc.wantErr)
		})
	}

	t.Run("a SigningKey without spec is refused", func(t *testing.T) {
		u := newObject("SigningKey", ns, "no-spec", nil)
		delete(u.Object, "spec")
		checkCreate(t, u, "spec: Required value")
	})
}

func TestSigningKeyDefaults(t *testing.T) {
	ns := newNamespace(t)
	cases := []struct {
		name           string
		spec           object
		wantAlgorithm  keywardv1.Algorithm
		wantEvery      time.Duration
		wantPrepublish time.Duration
	}{
		{name: "an empty spec gets ES256, every 720h and prepublish 10m", spec: object{},
			wantAlgorithm: keywardv1.AlgorithmES256, wantEvery: 720 * time.Hour, wantPrepublish: 10 * time.Minute},
		{name: "a rotation with only every gets prepublish 10m", spec: object{"algorithm": "EdDSA", "rotation": object{"every": "2h"}},
			wantAlgorithm: keywardv1.AlgorithmEdDSA, wantEvery: 2 * time.Hour, wantPrepublish: 10 * time.Minute},
		{name: "a rotation with only prepublish gets every 720h", spec: object{"rotation": object{"prepublish": "1m"}},
			wantAlgorithm: keywardv1.AlgorithmES256, wantEvery: 720 * time.Hour, wantPrepublish: time.Minute},
		{name: "explicit values are kept", spec: object{"algorithm": "HS512", "rotation": object{"every": "1m", "prepublish": "5s"}},
			wantAlgorithm: keywardv1.AlgorithmHS512, wantEvery: time.Minute, wantPrepublish: 5 * time.Second},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testContext(t)
			name := fmt.Sprintf("defaults-%d", i)
			if err := k8s.Create(ctx, newObject("SigningKey", ns, name, tc.spec)); err != nil {
				t.Fatalf("cannot create SigningKey: %v", err)
			}
			// Read back what the server stored, not what the create returned.
			var sk keywardv1.SigningKey
			if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &sk); err != nil {
				t.Fatalf("cannot get SigningKey: %v", err)
			}
			if sk.Spec.Algorithm != tc.wantAlgorithm {
				t.Errorf("algorithm = %q, want %q", sk.Spec.Algorithm, tc.wantAlgorithm)
			}
			if sk.Spec.Rotation.Every.Duration != tc.wantEvery {
				t.Errorf("rotation.every = %s, want %s", sk.Spec.Rotation.Every.Duration, tc.wantEvery)
			}
			if sk.Spec.Rotation.Prepublish.Duration != tc.wantPrepublish {
				t.Errorf("rotation.prepublish = %s, want %s", sk.Spec.Rotation.Prepublish.Duration, tc.wantPrepublish)
			}
		})
	}
}

func TestSigningKeyStatusValidation(t *testing.T) {
	ns := newNamespace(t)
	ctx := testContext(t)
	if err := k8s.Create(ctx, newObject("SigningKey", ns, "status", object{})); err != nil {
		t.Fatalf("cannot create SigningKey: %v", err)
	}
	key := func() object {
		return object{"kid": "kid-1", "algorithm": "ES256", "state": "Active", "publishedAt": "2026-01-01T00:00:00Z"}
	}
	condition := func(typ string) object {
		return object{"type": typ, "status": "True", "reason": "Ready", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}
	}
	cases := []celCase{
		{name: "a valid status is accepted", mutate: func(object) {}},
		{name: "an unknown key state is refused", mutate: func(s object) { s["keys"].([]any)[0].(object)["state"] = "Revoked" }, wantErr: `Unsupported value: "Revoked"`},
		{name: "an unknown key algorithm is refused", mutate: func(s object) { s["keys"].([]any)[0].(object)["algorithm"] = "none" }, wantErr: `Unsupported value: "none"`},
		{name: "a key without publishedAt is refused", mutate: func(s object) { delete(s["keys"].([]any)[0].(object), "publishedAt") }, wantErr: "publishedAt: Required value"},
		{name: "a kid longer than 128 characters is refused", mutate: func(s object) { s["keys"].([]any)[0].(object)["kid"] = strings.Repeat("k", 129) }, wantErr: "status.keys[0].kid: Too long"},
		{name: "the same kid listed twice is refused", mutate: func(s object) { s["keys"] = []any{key(), key()} }, wantErr: "Duplicate value"},
		{name: "an activeKeyID longer than 128 characters is refused", mutate: func(s object) { s["activeKeyID"] = strings.Repeat("k", 129) }, wantErr: "status.activeKeyID: Too long"},
		{name: "a secretName longer than 253 characters is refused", mutate: func(s object) { s["secretName"] = strings.Repeat("s", 254) }, wantErr: "status.secretName: Too long"},
		{name: "a jwksConfigMapName longer than 253 characters is refused", mutate: func(s object) { s["jwksConfigMapName"] = strings.Repeat("c", 254) }, wantErr: "status.jwksConfigMapName: Too long"},
		{name: "nine conditions are refused", mutate: func(s object) {
			s["conditions"] = listOf(9, func(i int) string { return fmt.Sprintf("Type%d", i) })
			for i, typ := range s["conditions"].([]any) {
				s["conditions"].([]any)[i] = condition(typ.(string))
			}
		}, wantErr: "must have at most 8 items"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testContext(t)
			u := newObject("SigningKey", ns, "status", nil)
			if err := k8s.Get(ctx, client.ObjectKeyFromObject(u), u); err != nil {
				t.Fatalf("cannot get SigningKey: %v", err)
			}
			status := object{"activeKeyID": "kid-1", "keys": []any{key()}, "conditions": []any{condition("Ready")}}
			tc.mutate(status)
			u.Object["status"] = status
			checkOutcome(t, k8s.Status().Update(ctx, u, client.DryRunAll), tc.wantErr)
		})
	}
}

func baseTokenIssuerSpec() object {
	return object{
		"issuer":               "https://auth.example.com/realms/main",
		"audiences":            []any{"api", "web"},
		"signingKeyRef":        object{"name": "signing"},
		"accessTokenLifetime":  "5m",
		"refreshTokenLifetime": "24h",
		"refreshTokenRotation": object{"enabled": true, "reuseGracePeriod": "5s"},
		"leeway":               "30s",
		"users":                object{"secretRef": object{"name": "users"}},
		"clients":              object{"secretRef": object{"name": "clients"}},
		"extraClaims":          []any{object{"name": "tenant", "value": "acme"}},
	}
}

// reservedClaims are the claim names extraClaims must not set.
var reservedClaims = []string{"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "sid", "client_id", "scope",
	"token_type", "gen", "groups", "email", "typ", "azp", "auth_time", "cnf", "act"}

func TestTokenIssuerValidation(t *testing.T) {
	ns := newNamespace(t)
	cases := []celCase{
		{name: "the base object is accepted", mutate: func(object) {}},
		{name: "a spec with only the required fields is accepted", mutate: func(o object) {
			for k := range o {
				if k != "signingKeyRef" && k != "users" {
					delete(o, k)
				}
			}
		}},
		{name: "a refresh token lifetime equal to the access token lifetime is refused", mutate: func(o object) { o["refreshTokenLifetime"] = "5m" }, wantErr: "refreshTokenLifetime must be longer than accessTokenLifetime"},
		{name: "a refresh token lifetime shorter than the access token lifetime is refused", mutate: func(o object) { o["refreshTokenLifetime"] = "1m" }, wantErr: "refreshTokenLifetime must be longer than accessTokenLifetime"},
		{name: "an access token lifetime above the default refresh token lifetime is refused", mutate: func(o object) { delete(o, "refreshTokenLifetime"); o["accessTokenLifetime"] = "25h" }, wantErr: "refreshTokenLifetime must be longer than accessTokenLifetime"},
		{name: "a refresh token lifetime shorter than 10s is refused", mutate: func(o object) { o["refreshTokenLifetime"] = "9s" }, wantErr: "refreshTokenLifetime must be at least 10s"},
		{name: "a refresh token lifetime that is not a duration is refused", mutate: func(o object) { o["refreshTokenLifetime"] = "a day" }, wantErr: "spec.refreshTokenLifetime in body must be of type duration"},
		{name: "a leeway equal to the access token lifetime is refused", mutate: func(o object) { o["accessTokenLifetime"] = "30s" }, wantErr: "leeway must be shorter than accessTokenLifetime"},
		{name: "a leeway longer than the access token lifetime is refused", mutate: func(o object) { o["leeway"] = "5m" }, wantErr: "leeway must be shorter than accessTokenLifetime"},
		{name: "a default leeway not shorter than the access token lifetime is refused", mutate: func(o object) { delete(o, "leeway"); o["accessTokenLifetime"] = "30s" }, wantErr: "leeway must be shorter than accessTokenLifetime"},
		{name: "a leeway of 0s is accepted", mutate: func(o object) { o["leeway"] = "0s" }},
		{name: "a leeway of exactly 5m is accepted", mutate: func(o object) { o["leeway"] = "5m"; o["accessTokenLifetime"] = "10m" }},
		{name: "a leeway longer than 5m is refused", mutate: func(o object) { o["leeway"] = "6m"; o["accessTokenLifetime"] = "10m" }, wantErr: "leeway must be between 0s and 5m"},
		{name: "a negative leeway is refused", mutate: func(o object) { o["leeway"] = "-1s" }, wantErr: "leeway must be between 0s and 5m"},
		{name: "an access token lifetime of exactly 10s is accepted", mutate: func(o object) { o["accessTokenLifetime"] = "10s"; o["leeway"] = "0s" }},
		{name: "an access token lifetime shorter than 10s is refused", mutate: func(o object) { o["accessTokenLifetime"] = "9s" }, wantErr: "accessTokenLifetime must be at least 10s"},
		{name: "an access token lifetime that is not a duration is refused", mutate: func(o object) { o["accessTokenLifetime"] = "five minutes" }, wantErr: "spec.accessTokenLifetime in body must be of type duration"},
		{name: "an http issuer is accepted", mutate: func(o object) { o["issuer"] = "http://keyward.keyward-system.svc:8080/default/main" }},
		{name: "an issuer without a path is accepted", mutate: func(o object) { o["issuer"] = "https://auth.example.com" }},
		{name: "an issuer without a scheme is refused", mutate: func(o object) { o["issuer"] = "auth.example.com/realms/main" }, wantErr: "issuer must be an http or https URL with a host"},
		{name: "an issuer with the ftp scheme is refused", mutate: func(o object) { o["issuer"] = "ftp://auth.example.com/realms/main" }, wantErr: "issuer must be an http or https URL with a host"},
		{name: "an issuer without a host is refused", mutate: func(o object) { o["issuer"] = "https:///realms/main" }, wantErr: "issuer must be an http or https URL with a host"},
		{name: "an issuer that is a bare path is refused", mutate: func(o object) { o["issuer"] = "/realms/main" }, wantErr: "issuer must be an http or https URL with a host"},
		{name: "an issuer with a query is refused", mutate: func(o object) { o["issuer"] = "https://auth.example.com/realms/main?tenant=a" }, wantErr: "issuer must not have a query or fragment"},
		{name: "an issuer with an empty query is refused", mutate: func(o object) { o["issuer"] = "https://auth.example.com/?" }, wantErr: "issuer must not have a query or fragment"},
		{name: "an issuer with a fragment is refused", mutate: func(o object) { o["issuer"] = "https://auth.example.com/realms/main#top" }, wantErr: "issuer must not have a query or fragment"},
		{name: "an empty issuer is refused", mutate: func(o object) { o["issuer"] = "" }, wantErr: "spec.issuer in body should be at least 1 chars long"},
		{name: "an issuer longer than 512 characters is refused", mutate: func(o object) { o["issuer"] = "https://auth.example.com/" + strings.Repeat("p", 500) }, wantErr: "spec.issuer: Too long"},
		{name: "16 audiences are accepted", mutate: func(o object) { o["audiences"] = listOf(16, func(i int) string { return fmt.Sprintf("aud-%d", i) }) }},
		{name: "17 audiences are refused", mutate: func(o object) { o["audiences"] = listOf(17, func(i int) string { return fmt.Sprintf("aud-%d", i) }) }, wantErr: "must have at most 16 items"},
		{name: "an empty audience is refused", mutate: func(o object) { o["audiences"] = []any{""} }, wantErr: "spec.audiences[0] in body should be at least 1 chars long"},
		{name: "an audience longer than 256 characters is refused", mutate: func(o object) { o["audiences"] = []any{strings.Repeat("a", 257)} }, wantErr: "spec.audiences[0]: Too long"},
		{name: "an audience listed twice is refused", mutate: func(o object) { o["audiences"] = []any{"api", "api"} }, wantErr: `Duplicate value: "api"`},
		{name: "a missing signingKeyRef is refused", mutate: func(o object) { delete(o, "signingKeyRef") }, wantErr: "spec.signingKeyRef: Required value"},
		{name: "a signingKeyRef with an empty name is refused", mutate: func(o object) { set(o, "", "signingKeyRef", "name") }, wantErr: "spec.signingKeyRef.name in body should be at least 1 chars long"},
		{name: "a signingKeyRef name longer than 253 characters is refused", mutate: func(o object) { set(o, strings.Repeat("n", 254), "signingKeyRef", "name") }, wantErr: "spec.signingKeyRef.name: Too long"},
		{name: "missing users are refused", mutate: func(o object) { delete(o, "users") }, wantErr: "spec.users: Required value"},
		{name: "users without secretRef are refused", mutate: func(o object) { set(o, object{}, "users") }, wantErr: "spec.users.secretRef: Required value"},
		{name: "a users secretRef without name is refused", mutate: func(o object) { set(o, object{}, "users", "secretRef") }, wantErr: "spec.users.secretRef.name: Required value"},
		{name: "clients without secretRef are refused", mutate: func(o object) { set(o, object{}, "clients") }, wantErr: "spec.clients.secretRef: Required value"},
		{name: "a clients secretRef with an empty name is refused", mutate: func(o object) { set(o, "", "clients", "secretRef", "name") }, wantErr: "spec.clients.secretRef.name in body should be at least 1 chars long"},
		{name: "a reuse grace period of 0s is accepted", mutate: func(o object) { set(o, "0s", "refreshTokenRotation", "reuseGracePeriod") }},
		{name: "a reuse grace period of exactly 1m is accepted", mutate: func(o object) { set(o, "1m", "refreshTokenRotation", "reuseGracePeriod") }},
		{name: "a reuse grace period longer than 1m is refused", mutate: func(o object) { set(o, "61s", "refreshTokenRotation", "reuseGracePeriod") }, wantErr: "reuseGracePeriod must be between 0s and 1m"},
		{name: "a negative reuse grace period is refused", mutate: func(o object) { set(o, "-1s", "refreshTokenRotation", "reuseGracePeriod") }, wantErr: "reuseGracePeriod must be between 0s and 1m"},
		{name: "a non-boolean rotation switch is refused", mutate: func(o object) { set(o, "yes", "refreshTokenRotation", "enabled") }, wantErr: "spec.refreshTokenRotation.enabled in body must be of type boolean"},
		{name: "extra claims of every JSON type are accepted", mutate: func(o object) {
			o["extraClaims"] = []any{
				object{"name": "tenant", "value": "acme"},
				object{"name": "level", "value": int64(3)},
				object{"name": "beta", "value": true},
				object{"name": "roles", "value": []any{"a", "b"}},
				object{"name": "org", "value": object{"id": "o-1", "units": []any{"x"}}},
			}
		}},
		{name: "an extra claim with an empty name is refused", mutate: func(o object) { o["extraClaims"] = []any{object{"name": "", "value": "x"}} }, wantErr: "spec.extraClaims[0].name in body should be at least 1 chars long"},
		{name: "an extra claim name longer than 64 characters is refused", mutate: func(o object) { o["extraClaims"] = []any{object{"name": strings.Repeat("c", 65), "value": "x"}} }, wantErr: "spec.extraClaims[0].name: Too long"},
		{name: "an extra claim without a value is refused", mutate: func(o object) { o["extraClaims"] = []any{object{"name": "tenant"}} }, wantErr: "spec.extraClaims[0].value: Required value"},
		{name: "an extra claim listed twice is refused", mutate: func(o object) {
			o["extraClaims"] = []any{object{"name": "tenant", "value": "a"}, object{"name": "tenant", "value": "b"}}
		}, wantErr: "Duplicate value"},
		{name: "32 extra claims are accepted", mutate: func(o object) {
			o["extraClaims"] = listOf(32, func(i int) string { return fmt.Sprintf("c%d", i) })
			for i, n := range o["extraClaims"].([]any) {
				o["extraClaims"].([]any)[i] = object{"name": n, "value": "x"}
			}
		}},
		{name: "33 extra claims are refused", mutate: func(o object) {
			o["extraClaims"] = listOf(33, func(i int) string { return fmt.Sprintf("c%d", i) })
			for i, n := range o["extraClaims"].([]any) {
				o["extraClaims"].([]any)[i] = object{"name": n, "value": "x"}
			}
		}, wantErr: "must have at most 32 items"},
		{name: "a claim name that only starts like a reserved one is accepted", mutate: func(o object) {
			o["extraClaims"] = []any{object{"name": "issuer_region", "value": "eu"}, object{"name": "Sub", "value": "x"}}
		}},
	}
	for _, claim := range reservedClaims {
		cases = append(cases, celCase{
			name: fmt.Sprintf("the reserved claim %q as an extra claim is refused", claim),
			mutate: func(o object) {
				o["extraClaims"] = []any{object{"name": "tenant", "value": "acme"}, object{"name": claim, "value": "x"}}
			},
			wantErr: fmt.Sprintf("spec.extraClaims[1].name: Invalid value: %q: extraClaims must not set registered or keyward claims", claim),
		})
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			spec := baseTokenIssuerSpec()
			tc.mutate(spec)
			checkCreate(t, newObject("TokenIssuer", ns, fmt.Sprintf("ti-%d", i), spec), tc.wantErr)
		})
	}

	t.Run("a TokenIssuer without spec is refused", func(t *testing.T) {
		u := newObject("TokenIssuer", ns, "no-spec", nil)
		delete(u.Object, "spec")
		checkCreate(t, u, "spec: Required value")
	})
}

func TestTokenIssuerDefaults(t *testing.T) {
	ns := newNamespace(t)
	required := func() object {
		return object{"signingKeyRef": object{"name": "signing"}, "users": object{"secretRef": object{"name": "users"}}}
	}
	type want struct {
		access, refresh, leeway, grace time.Duration
		rotation                       bool
	}
	cases := []struct {
		name   string
		mutate func(o object)
		want   want
	}{
		{name: "only the required fields get 5m, 24h, 30s leeway and rotation with a 5s grace",
			mutate: func(object) {},
			want:   want{access: 5 * time.Minute, refresh: 24 * time.Hour, leeway: 30 * time.Second, grace: 5 * time.Second, rotation: true}},
		{name: "rotation switched off keeps the default grace",
			mutate: func(o object) { set(o, false, "refreshTokenRotation", "enabled") },
			want:   want{access: 5 * time.Minute, refresh: 24 * time.Hour, leeway: 30 * time.Second, grace: 5 * time.Second, rotation: false}},
		{name: "a grace period alone keeps rotation enabled",
			mutate: func(o object) { set(o, "20s", "refreshTokenRotation", "reuseGracePeriod") },
			want:   want{access: 5 * time.Minute, refresh: 24 * time.Hour, leeway: 30 * time.Second, grace: 20 * time.Second, rotation: true}},
		{name: "explicit lifetimes and leeway are kept",
			mutate: func(o object) {
				o["accessTokenLifetime"] = "10s"
				o["refreshTokenLifetime"] = "20s"
				o["leeway"] = "0s"
			},
			want: want{access: 10 * time.Second, refresh: 20 * time.Second, leeway: 0, grace: 5 * time.Second, rotation: true}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testContext(t)
			name := fmt.Sprintf("defaults-%d", i)
			spec := required()
			tc.mutate(spec)
			if err := k8s.Create(ctx, newObject("TokenIssuer", ns, name, spec)); err != nil {
				t.Fatalf("cannot create TokenIssuer: %v", err)
			}
			var ti keywardv1.TokenIssuer
			if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &ti); err != nil {
				t.Fatalf("cannot get TokenIssuer: %v", err)
			}
			got := want{
				access: ti.Spec.AccessTokenLifetime.Duration, refresh: ti.Spec.RefreshTokenLifetime.Duration,
				leeway: ti.Spec.Leeway.Duration, grace: ti.Spec.RefreshTokenRotation.ReuseGracePeriod.Duration,
			}
			if ti.Spec.RefreshTokenRotation.Enabled == nil {
				t.Fatal("refreshTokenRotation.enabled was not defaulted")
			}
			got.rotation = *ti.Spec.RefreshTokenRotation.Enabled
			if got != tc.want {
				t.Errorf("defaults = %+v, want %+v", got, tc.want)
			}
		})
	}
}
