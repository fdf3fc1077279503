package webhookcert_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/keyward/keyward/internal/scheme"
	"github.com/keyward/keyward/internal/testenv"
	"github.com/keyward/keyward/internal/webhookcert"
)

var env *testenv.Env

func TestMain(m *testing.M) {
	os.Exit(testenv.Main(m, func(_ context.Context, e *testenv.Env) (func() error, error) {
		env = e
		return func() error { return nil }, nil
	}))
}

const deniedMessage = "denied by the test webhook"

func ctxFor(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// eventually calls f until it returns nil, failing the test with its last error after a minute.
func eventually(t *testing.T, f func(ctx context.Context) error) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		err := f(ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within a minute: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port
}

// servedCert returns the certificate the server presents in a new handshake.
func servedCert(addr string) (*x509.Certificate, error) {
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		return nil, err
	}
	defer func() { _ = conn.Close() }()
	return conn.ConnectionState().PeerCertificates[0], nil
}

func parseCAs(t *testing.T, bundle []byte) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for {
		var block *pem.Block
		block, bundle = pem.Decode(bundle)
		if block == nil {
			return out
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
}

// TestRotatorEndToEnd runs two rotators (two controller replicas) and a webhook server that
// serves the first one's certificate, behind a ValidatingWebhookConfiguration that the real
// API server calls for ConfigMaps in one namespace with failurePolicy Fail: a ConfigMap refused
// with the webhook's own message proves the API server trusted the certificate. A fake clock,
// set in the past so that every certificate is valid in real time too, drives the rotation.
func TestRotatorEndToEnd(t *testing.T) {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "rotator-"}}
	if err := env.Client.Create(ctxFor(t), ns); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Get(ctxFor(t), client.ObjectKeyFromObject(ns), ns); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	vwc := &admissionregistrationv1.ValidatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: ns.Name},
		Webhooks: []admissionregistrationv1.ValidatingWebhook{{
			Name:                    "configmaps.rotator.keyward.dev",
			ClientConfig:            admissionregistrationv1.WebhookClientConfig{URL: ptr.To("https://" + addr + "/deny")},
			Rules:                   []admissionregistrationv1.RuleWithOperations{{Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create}, Rule: admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"configmaps"}}}},
			FailurePolicy:           ptr.To(admissionregistrationv1.Fail),
			SideEffects:             ptr.To(admissionregistrationv1.SideEffectClassNone),
			AdmissionReviewVersions: []string{"v1"},
			TimeoutSeconds:          ptr.To[int32](5),
			NamespaceSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": ns.Name}},
		}},
	}
	if err := env.Client.Create(ctxFor(t), vwc); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(context.Background(), vwc) })

	start := time.Now().Add(-250 * 24 * time.Hour) // two thirds of a year ago, and a little more
	clk := clocktesting.NewFakeClock(start)
	newRotator := func() *webhookcert.Rotator {
		r, err := webhookcert.New(env.Config, env.Client, scheme.New(), webhookcert.Options{
			Namespace: ns.Name, SecretName: "keyward-webhook-cert",
			DNSNames:          append(webhookcert.ServiceDNSNames("keyward-webhook", ns.Name), "127.0.0.1"),
			WebhookConfigName: vwc.Name, Clock: clk,
		})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	ctx, cancel := context.WithCancel(context.Background())
	rot1, rot2 := newRotator(), newRotator()
	done := make(chan error, 3)
	go func() { done <- rot1.Start(ctx) }()
	go func() { done <- rot2.Start(ctx) }()

	srv := webhook.NewServer(webhook.Options{Host: "127.0.0.1", Port: port, TLSOpts: []func(*tls.Config){rot1.TLSOpt}})
	srv.Register("/deny", &admission.Webhook{Handler: admission.HandlerFunc(func(context.Context, admission.Request) admission.Response {
		return admission.Denied(deniedMessage)
	})})
	go func() { done <- srv.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		for range 3 {
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("stopped with an error: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Error("a rotator or the server did not stop")
			}
		}
	})

	// state reads the Secret and the injected bundle, and checks that they agree, that both
	// replicas and the server hold the Secret's certificate, and that the API server calls the
	// webhook.
	type state struct {
		cas  []*x509.Certificate
		cert *x509.Certificate
	}
	var seq int
	check := func(ctx context.Context) (*state, error) {
		s := &corev1.Secret{}
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns.Name, Name: "keyward-webhook-cert"}, s); err != nil {
			return nil, err
		}
		got := &state{cas: parseCAs(t, s.Data[webhookcert.CADataKey])}
		if block, _ := pem.Decode(s.Data[webhookcert.CertDataKey]); block != nil {
			got.cert, _ = x509.ParseCertificate(block.Bytes)
		}
		if got.cert == nil || len(got.cas) == 0 {
			return nil, fmt.Errorf("secret holds %d CAs and certificate %v", len(got.cas), got.cert != nil)
		}
		cur := &admissionregistrationv1.ValidatingWebhookConfiguration{}
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(vwc), cur); err != nil {
			return nil, err
		}
		if !bytes.Equal(cur.Webhooks[0].ClientConfig.CABundle, s.Data[webhookcert.CADataKey]) {
			return nil, fmt.Errorf("caBundle is not the Secret's ca.crt")
		}
		for i, r := range []*webhookcert.Rotator{rot1, rot2} {
			c, err := r.GetCertificate(nil)
			if err != nil {
				return nil, fmt.Errorf("replica %d: %w", i+1, err)
			}
			if !c.Leaf.Equal(got.cert) {
				return nil, fmt.Errorf("replica %d serves another certificate than the Secret's", i+1)
			}
		}
		served, err := servedCert(addr)
		if err != nil {
			return nil, err
		}
		if !served.Equal(got.cert) {
			return nil, fmt.Errorf("the server presents another certificate than the Secret's")
		}
		seq++
		err = env.Client.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: fmt.Sprintf("cm-%d", seq)}})
		if err == nil || !strings.Contains(err.Error(), deniedMessage) {
			return nil, fmt.Errorf("the API server did not get the webhook's answer: %w", err)
		}
		return got, nil
	}
	waitFor := func(cond func(*state) error) *state {
		t.Helper()
		var last *state
		eventually(t, func(ctx context.Context) error {
			s, err := check(ctx)
			if err != nil {
				return err
			}
			if err := cond(s); err != nil {
				return err
			}
			last = s
			return nil
		})
		return last
	}

	// 1. Created from nothing: one CA, a certificate it signed, injected, served, called.
	first := waitFor(func(s *state) error {
		if len(s.cas) != 1 || s.cert.CheckSignatureFrom(s.cas[0]) != nil {
			return fmt.Errorf("want one CA that signed the certificate, got %d CAs", len(s.cas))
		}
		return nil
	})

	// 2. A chart upgrade resets the caBundle: it is injected again.
	eventually(t, func(ctx context.Context) error {
		cur := &admissionregistrationv1.ValidatingWebhookConfiguration{}
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(vwc), cur); err != nil {
			return err
		}
		cur.Webhooks[0].ClientConfig.CABundle = nil
		return env.Client.Update(ctx, cur)
	})
	waitFor(func(s *state) error {
		if !s.cert.Equal(first.cert) {
			return fmt.Errorf("the certificate changed")
		}
		return nil
	})

	// 3. Two thirds of the lifetime later: a new CA and certificate; the old CA stays trusted.
	clk.Step(250 * 24 * time.Hour)
	rotated := waitFor(func(s *state) error {
		if len(s.cas) != 2 || !s.cas[1].Equal(first.cas[0]) || s.cert.Equal(first.cert) || s.cert.CheckSignatureFrom(s.cas[0]) != nil {
			return fmt.Errorf("not rotated yet: %d CAs", len(s.cas))
		}
		return nil
	})
	if !rotated.cert.NotAfter.After(first.cert.NotAfter) {
		t.Errorf("the new certificate expires %s, not after the old one (%s)", rotated.cert.NotAfter, first.cert.NotAfter)
	}

	// 4. Once the old CA has expired it leaves the bundle; the API server still calls.
	clk.Step(120 * 24 * time.Hour)
	waitFor(func(s *state) error {
		if len(s.cas) != 1 || !s.cas[0].Equal(rotated.cas[0]) || !s.cert.Equal(rotated.cert) {
			return fmt.Errorf("want only the new CA and the same certificate, got %d CAs", len(s.cas))
		}
		return nil
	})
}

// TestReadOnlyServesWhatCertManagerWrites: with cert-manager, the rotator never writes; it
// serves the certificate of the Secret cert-manager keeps, and follows its renewals.
func TestReadOnlyServesWhatCertManagerWrites(t *testing.T) {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "readonly-"}}
	if err := env.Client.Create(ctxFor(t), ns); err != nil {
		t.Fatal(err)
	}
	issue := func() map[string][]byte {
		b, err := webhookcert.Apply(nil, webhookcert.Decision{NewCA: true, NewCert: true},
			webhookcert.Policy{DNSNames: []string{"keyward-webhook.x.svc"}, Lifetime: time.Hour}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		data, err := b.Data()
		if err != nil {
			t.Fatal(err)
		}
		delete(data, webhookcert.CAKeyDataKey) // cert-manager's Secret holds no CA key
		return data
	}
	rot, err := webhookcert.New(env.Config, env.Client, scheme.New(), webhookcert.Options{
		Namespace: ns.Name, SecretName: "cm-cert", ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rot.Start(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	if _, err := rot.GetCertificate(nil); err == nil {
		t.Error("a certificate is served before the Secret exists")
	}
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: "cm-cert"}, Type: corev1.SecretTypeTLS, Data: issue()}
	if err := env.Client.Create(ctxFor(t), secret); err != nil {
		t.Fatal(err)
	}
	serves := func(data map[string][]byte) func(context.Context) error {
		return func(context.Context) error {
			c, err := rot.GetCertificate(nil)
			if err != nil {
				return err
			}
			block, _ := pem.Decode(data[webhookcert.CertDataKey])
			if !bytes.Equal(c.Certificate[0], block.Bytes) {
				return fmt.Errorf("serves another certificate")
			}
			return nil
		}
	}
	eventually(t, serves(secret.Data))
	secret.Data = issue()
	if err := env.Client.Update(ctxFor(t), secret); err != nil {
		t.Fatal(err)
	}
	eventually(t, serves(secret.Data))

	got := &corev1.Secret{}
	if err := env.Client.Get(ctxFor(t), client.ObjectKeyFromObject(secret), got); err != nil {
		t.Fatal(err)
	}
	if got.ResourceVersion != secret.ResourceVersion {
		t.Error("the read-only rotator wrote the Secret")
	}
}
