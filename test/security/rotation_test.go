package security

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
	"github.com/keyward/keyward/internal/keys"
)

// Rotation: the SigningKey "rot" imports its key from a Secret, so that switching the import
// rotates at once (after prepublish, 5 s). Its TokenIssuer's tokens live at most 11 s and it
// has no leeway, so a Retired key is removed 11 s after it retires (DESIGN: Retired keys
// verify until every token they signed has expired).

const rotPrepublish = 5 * time.Second

func importSecret(name string) (*corev1.Secret, error) {
	raw, err := keys.Generate(keywardv1.AlgorithmES256)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(raw)
	if err != nil {
		return nil, err
	}
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Data:       map[string][]byte{keywardv1.ImportPEMDataKey: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})},
	}, nil
}

func rotationObjects() []client.Object {
	a, err := importSecret("rot-a")
	if err != nil {
		panic(err)
	}
	return []client.Object{
		a,
		&keywardv1.SigningKey{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "rot"},
			Spec: keywardv1.SigningKeySpec{Algorithm: keywardv1.AlgorithmES256,
				Rotation: keywardv1.KeyRotation{Every: metav1.Duration{Duration: 720 * time.Hour}, Prepublish: metav1.Duration{Duration: rotPrepublish}},
				Import:   &keywardv1.KeyImport{SecretRef: keywardv1.LocalObjectReference{Name: "rot-a"}}},
		},
		&keywardv1.TokenIssuer{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "rot"},
			Spec: keywardv1.TokenIssuerSpec{
				Audiences:            []string{"api"},
				SigningKeyRef:        keywardv1.LocalObjectReference{Name: "rot"},
				Users:                keywardv1.SecretReference{SecretRef: keywardv1.LocalObjectReference{Name: "users"}},
				AccessTokenLifetime:  metav1.Duration{Duration: 10 * time.Second},
				RefreshTokenLifetime: metav1.Duration{Duration: 11 * time.Second},
				Leeway:               &metav1.Duration{Duration: 0},
			},
		},
	}
}

// rotToken is a token of issuer rot, within its 10 s access-token lifetime.
func rotToken(k *issuerKeys) string {
	return mint(k, map[string]string{"exp": unix(10 * time.Second)}, nil)
}

// answers asks the three channels about a token of issuer rot.
func answers(ctx context.Context, k *issuerKeys, tok string) (httpCode, verify int, grpcOK bool, err error) {
	httpCode, _, err = httpAuthz(ctx, rawAuthz("/rot/x", "Bearer "+tok), false)
	if err != nil {
		return
	}
	code, _, err := grpcAuthz(ctx, checkReq("/rot/x", "Bearer "+tok, nil)())
	if err != nil {
		return
	}
	grpcOK = code == 0
	verify, _, err = verifyAt(ctx, k, tok)
	return
}

// eventuallyAnswer waits until every channel accepts (or every one refuses) the token.
func eventuallyAnswer(t *testing.T, k *issuerKeys, tok string, accepted bool, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		h, v, g, err := answers(t.Context(), k, tok)
		if err == nil && (h == 200) == accepted && (v == 200) == accepted && g == accepted && (accepted || h == 401 && v == 401) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: http %d, verify %d, grpc ok %v, err %v; want accepted=%v", within, h, v, g, err, accepted)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func keyState(t *testing.T, kid string) keywardv1.KeyState {
	t.Helper()
	ks, err := readKeySet(t.Context(), "rot")
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range ks.Keys {
		if k.KID == kid {
			return k.State()
		}
	}
	return ""
}

func rotKey(t *testing.T, kid string) *issuerKeys {
	t.Helper()
	ks, err := readKeySet(t.Context(), "rot")
	if err != nil {
		t.Fatal(err)
	}
	for i := range ks.Keys {
		if ks.Keys[i].KID == kid {
			k, err := keysOf("rot", &ks.Keys[i])
			if err != nil {
				t.Fatal(err)
			}
			return k
		}
	}
	t.Fatalf("no key %s in the key set", kid)
	return nil
}

func waitFor(t *testing.T, within time.Duration, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, within)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestRotation: a Retired key's tokens stay valid, a removed key's and a revoked key's do
// not, on all three channels. It waits on the controller's real schedule (about 20 s), in
// parallel with the other tests of the package.
func TestRotation(t *testing.T) {
	t.Parallel()
	a, err := readActiveKey(t.Context(), "rot")
	if err != nil {
		t.Fatal(err)
	}
	tokA := rotToken(a)
	t.Run("the Active key's token is accepted", func(t *testing.T) { eventuallyAnswer(t, a, tokA, true, 30*time.Second) })

	b, err := importSecret("rot-b")
	if err != nil {
		t.Fatal(err)
	}
	if err := suite.k8s.Create(t.Context(), b); err != nil {
		t.Fatal(err)
	}
	sk := &keywardv1.SigningKey{}
	if err := suite.k8s.Get(t.Context(), client.ObjectKey{Namespace: ns, Name: "rot"}, sk); err != nil {
		t.Fatal(err)
	}
	patch := client.MergeFrom(sk.DeepCopy())
	sk.Spec.Import.SecretRef.Name = "rot-b"
	if err := suite.k8s.Patch(t.Context(), sk, patch); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "key A retired", func() bool { return keyState(t, a.kid) == keywardv1.KeyStateRetired })
	ks, err := readKeySet(t.Context(), "rot")
	if err != nil {
		t.Fatal(err)
	}
	newKey := rotKey(t, ks.Active().KID)
	tokB := rotToken(newKey)
	t.Run("the new Active key's token is accepted", func(t *testing.T) { eventuallyAnswer(t, newKey, tokB, true, 30*time.Second) })
	t.Run("the Retired key's token is still accepted", func(t *testing.T) {
		if s := keyState(t, a.kid); s != keywardv1.KeyStateRetired {
			t.Fatalf("key A is %s, want Retired", s)
		}
		eventuallyAnswer(t, a, tokA, true, 0)
	})
	t.Run("the removed key's token is refused", func(t *testing.T) {
		waitFor(t, 40*time.Second, "key A removed", func() bool { return keyState(t, a.kid) == "" })
		eventuallyAnswer(t, a, tokA, false, 30*time.Second)
	})
	t.Run("a revoked key's token is refused", func(t *testing.T) {
		sk := &keywardv1.SigningKey{}
		if err := suite.k8s.Get(t.Context(), client.ObjectKey{Namespace: ns, Name: "rot"}, sk); err != nil {
			t.Fatal(err)
		}
		patch := client.MergeFrom(sk.DeepCopy())
		sk.Spec.RevokedKeyIDs = []string{newKey.kid}
		if err := suite.k8s.Patch(t.Context(), sk, patch); err != nil {
			t.Fatal(err)
		}
		eventuallyAnswer(t, newKey, tokB, false, 30*time.Second)
		if s := keyState(t, newKey.kid); s != "" {
			t.Errorf("revoked key is still in the key set as %s", s)
		}
	})
}
