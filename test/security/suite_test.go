// Package security is keyward's attack catalogue: a table of malformed and malicious tokens
// and requests, each with the RFC, advisory or CVE it comes from, run through every way a
// token reaches keyward: the validator's HTTP forward-auth front end (raw HTTP/1.1 on
// 127.0.0.1), its Envoy ext_authz v3 gRPC front end (the generated go-control-plane client),
// and the issuer's simplejwt /api/token/verify/ endpoint.
//
// Everything is real: a kube-apiserver and etcd (envtest), keyward's controllers writing the
// key sets and JWKS, and the issuer and validator as `keyward all` wires them, in one
// manager in this process. Malicious tokens are minted with Go's crypto from the real
// private keys, read from the SigningKeys' key-set Secrets through the API, so that "valid
// signature, bad claims" cases are exactly that. The validator and issuer run on a frozen
// clock (now), so leeway boundaries are tested to the second.
//
// KEYWARD_TEST_LOGS=1 shows the manager's logs.
package security

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"golang.org/x/crypto/bcrypt"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
	"github.com/keyward/keyward/internal/issuer"
	"github.com/keyward/keyward/internal/keys"
	"github.com/keyward/keyward/internal/manager"
	"github.com/keyward/keyward/internal/testenv"
	"github.com/keyward/keyward/internal/validator"
)

const (
	ns        = "security"
	publicURL = "http://keyward.test"
	appHost   = "app.example.test"
	// leeway of the TokenIssuers "main" and "other".
	leeway = 30 * time.Second
	// trustedPeer is the only address the validator trusts for forwarded headers. Catalogue
	// requests come from 127.0.0.1, an untrusted peer; trusted-proxy cases dial from here.
	trustedPeer = "127.0.0.2"
)

// suite is what the tests share.
var suite struct {
	k8s        client.Client
	now        time.Time // the validator's and issuer's frozen clock
	issuerBase string    // http://127.0.0.1:port
	authzAddr  string    // validator HTTP
	grpc       authv3.AuthorizationClient

	main, other, rsa, ed *issuerKeys
}

// issuerKeys is a TokenIssuer with its SigningKey's Active key, read from the key-set Secret.
type issuerKeys struct {
	name string
	iss  string
	kid  string
	alg  keywardv1.Algorithm
	priv any // *ecdsa.PrivateKey, *rsa.PrivateKey or ed25519.PrivateKey
	// publicJWK is the published JWK of the key (JSON).
	publicJWK []byte
}

func (k *issuerKeys) ec() *ecdsa.PrivateKey     { return k.priv.(*ecdsa.PrivateKey) }
func (k *issuerKeys) rsaKey() *rsa.PrivateKey   { return k.priv.(*rsa.PrivateKey) }
func (k *issuerKeys) edKey() ed25519.PrivateKey { return k.priv.(ed25519.PrivateKey) }
func (k *issuerKeys) verifyURL() string {
	return suite.issuerBase + "/" + ns + "/" + k.name + "/api/token/verify/"
}
func (k *issuerKeys) base() string { return suite.issuerBase + "/" + ns + "/" + k.name + "/" }

func TestMain(m *testing.M) {
	os.Exit(testenv.Main(m, setup))
}

// setup creates the cluster objects, starts keyward (controllers, issuer, validator) in one
// manager, and reads the keys the controllers generated.
func setup(ctx context.Context, env *testenv.Env) (func() error, error) {
	suite.k8s = env.Client
	suite.now = time.Now().Truncate(time.Second)
	clk := clocktesting.NewFakePassiveClock(suite.now)

	if err := createObjects(ctx); err != nil {
		return nil, err
	}
	mgr, err := manager.New(env.Config, manager.Options{MetricsBindAddress: "0", HealthProbeBindAddress: "0"})
	if err != nil {
		return nil, err
	}
	if err := manager.SetupControllers(ctx, mgr, manager.ControllerOptions{PublicURL: publicURL}); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	suite.issuerBase = "http://" + ln.Addr().String()
	if err := issuer.Setup(ctx, mgr, issuer.Options{Listener: ln, PublicURL: publicURL, Clock: clk}); err != nil {
		return nil, err
	}
	var mu sync.Mutex
	addrs := map[string]string{}
	listening := make(chan struct{}, 2)
	err = validator.Setup(ctx, mgr, validator.Options{
		AuthzAddr:      "127.0.0.1:0",
		GRPCAddr:       "127.0.0.1:0",
		PublicURL:      publicURL,
		TrustedProxies: []netip.Prefix{netip.MustParsePrefix(trustedPeer + "/32")},
		// HS tokens are read too: the confusion cases are harder with HS enabled.
		AllowHSKeys: true,
		Clock:       clk,
		// External issuers' JWKS are refetched every second (TestExternalIssuer changes one).
		ExternalRefreshInterval: time.Second,
		OnListening: func(proto string, a net.Addr) {
			mu.Lock()
			addrs[proto] = a.String()
			mu.Unlock()
			listening <- struct{}{}
		},
	})
	if err != nil {
		return nil, err
	}
	stop, err := testenv.StartManager(ctx, mgr)
	if err != nil {
		return nil, err
	}
	for range 2 {
		select {
		case <-listening:
		case <-time.After(30 * time.Second):
			return stop, errors.New("the validator did not listen within 30s")
		}
	}
	suite.authzAddr = addrs["http"]
	conn, err := grpc.NewClient(addrs["grpc"], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return stop, err
	}
	suite.grpc = authv3.NewAuthorizationClient(conn)
	for _, k := range []**issuerKeys{&suite.main, &suite.other, &suite.rsa, &suite.ed} {
		name := map[**issuerKeys]string{&suite.main: "main", &suite.other: "other", &suite.rsa: "rsa", &suite.ed: "ed"}[k]
		if *k, err = readActiveKey(ctx, name); err != nil {
			return stop, err
		}
	}
	if err := waitServing(ctx); err != nil {
		return stop, err
	}
	return func() error { _ = conn.Close(); return stop() }, nil
}

// signingKeys are the SigningKeys of the suite, each used by the TokenIssuer of the same name.
var signingKeys = map[string]keywardv1.Algorithm{
	"main": keywardv1.AlgorithmES256, "other": keywardv1.AlgorithmES256,
	"rsa": keywardv1.AlgorithmRS256, "ed": keywardv1.AlgorithmEdDSA,
}

func createObjects(ctx context.Context) error {
	c := suite.k8s
	hash, err := bcrypt.GenerateFromPassword([]byte("wonderland"), bcrypt.MinCost)
	if err != nil {
		return err
	}
	objs := []client.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}},
		&corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "users"},
			StringData: map[string]string{
				issuer.HtpasswdDataKey:  "alice:" + string(hash) + "\n",
				issuer.UsersYAMLDataKey: "alice:\n  groups: [dev]\n  claims:\n    email: alice@example.test\n",
			},
		},
	}
	for name, alg := range signingKeys {
		rotation := keywardv1.RefreshTokenRotation{}
		if name == "other" {
			// No reuse grace: TestMalleatedRefreshTokenIsTheSameToken replays at once.
			rotation.ReuseGracePeriod = &metav1.Duration{}
		}
		objs = append(objs, &keywardv1.SigningKey{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec: keywardv1.SigningKeySpec{Algorithm: alg,
				Rotation: keywardv1.KeyRotation{Every: metav1.Duration{Duration: 720 * time.Hour}, Prepublish: metav1.Duration{Duration: 10 * time.Minute}}},
		}, &keywardv1.TokenIssuer{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec: keywardv1.TokenIssuerSpec{
				Audiences:            []string{"api"},
				SigningKeyRef:        keywardv1.LocalObjectReference{Name: name},
				Users:                keywardv1.SecretReference{SecretRef: keywardv1.LocalObjectReference{Name: "users"}},
				Leeway:               &metav1.Duration{Duration: leeway},
				RefreshTokenRotation: rotation,
			},
		})
	}
	objs = append(objs, rotationObjects()...)
	objs = append(objs, &keywardv1.AccessPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "app"},
		Spec: keywardv1.AccessPolicySpec{
			Hosts: []string{appHost},
			Rules: []keywardv1.AccessRule{
				{Paths: []string{"/public/"}, Anonymous: true},
				{Paths: []string{"/rot/"}, Issuers: []keywardv1.IssuerReference{{Name: "rot"}}, Audiences: []string{"api"}},
				{Paths: []string{"/rsa/"}, Issuers: []keywardv1.IssuerReference{{Name: "rsa"}}, Audiences: []string{"api"}},
				{Paths: []string{"/ed/"}, Issuers: []keywardv1.IssuerReference{{Name: "ed"}}, Audiences: []string{"api"}},
				{Paths: []string{"/"}, Issuers: []keywardv1.IssuerReference{{Name: "main"}}, Audiences: []string{"api"},
					Headers: map[string]keywardv1.ClaimName{"X-User": "sub"}},
			},
		},
	})
	for _, o := range objs {
		if err := c.Create(ctx, o); err != nil {
			return fmt.Errorf("cannot create %T %s: %w", o, o.GetName(), err)
		}
	}
	return nil
}

// readActiveKey waits for the SigningKey's key set and returns its Active key.
func readActiveKey(ctx context.Context, name string) (*issuerKeys, error) {
	deadline := time.Now().Add(time.Minute)
	for {
		ks, err := readKeySet(ctx, name)
		if err == nil {
			if a := ks.Active(); a != nil {
				return keysOf(name, a)
			}
			err = errors.New("no Active key yet")
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("key set of SigningKey %s: %w", name, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func readKeySet(ctx context.Context, name string) (*keys.KeySet, error) {
	s := &corev1.Secret{}
	if err := suite.k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: name + "-keyset"}, s); err != nil {
		return nil, err
	}
	return keys.ParseKeySet(s.Data[keywardv1.KeySetDataKey])
}

// keysOf exports a stored key's private key and public JWK.
func keysOf(issuerName string, k *keys.StoredKey) (*issuerKeys, error) {
	key, err := k.Key()
	if err != nil {
		return nil, err
	}
	var priv any
	if err := jwk.Export(key, &priv); err != nil {
		return nil, err
	}
	pub, err := keys.Public(key)
	if err != nil {
		return nil, err
	}
	pubJSON, err := json.Marshal(pub)
	if err != nil {
		return nil, err
	}
	return &issuerKeys{name: issuerName, iss: publicURL + "/" + ns + "/" + issuerName, kid: k.KID, alg: k.Algorithm, priv: priv, publicJWK: pubJSON}, nil
}

// waitServing waits until a token of each issuer is accepted by the validator and the
// issuer: the informers have seen the JWKS ConfigMaps and the policy.
func waitServing(ctx context.Context) error {
	deadline := time.Now().Add(time.Minute)
	for _, k := range []*issuerKeys{suite.main, suite.rsa, suite.ed} {
		tok := mint(k, nil, nil)
		path := map[string]string{"main": "/api/items", "rsa": "/rsa/x", "ed": "/ed/x"}[k.name]
		for {
			code, _, err := httpAuthz(ctx, rawAuthz(path, "Bearer "+tok), false)
			vcode, _, verr := verifyAt(ctx, k, tok)
			if err == nil && verr == nil && code == 200 && vcode == 200 {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("issuer %s not serving within a minute: validator %d, verify %d: %w", k.name, code, vcode, errors.Join(err, verr))
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return nil
}

// rawAuthz is the request Envoy's HTTP mode (and any proxy that appends the original path)
// sends: GET /authz<path> with the original Host and Authorization.
func rawAuthz(path, authorization string, extra ...string) string {
	return rawAuthzHost(appHost, path, authorization, extra...)
}

func rawAuthzHost(host, path, authorization string, extra ...string) string {
	var b strings.Builder
	b.WriteString("GET /authz" + path + " HTTP/1.1\r\nHost: " + host + "\r\n")
	if authorization != "" {
		b.WriteString("Authorization: " + authorization + "\r\n")
	}
	for _, h := range extra {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("Connection: close\r\n\r\n")
	return b.String()
}
