package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"os"
	"strings"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	"github.com/keyward/keyward/internal/webhookcert"
	webhookv1 "github.com/keyward/keyward/webhook/v1alpha1"
)

// webhookFlags are the admission webhook's flags, for the roles that run the controllers.
type webhookFlags struct {
	port        int
	certDir     string
	certManager bool
	namespace   string
	secretName  string
	serviceName string
	configName  string
	extraNames  string
}

func (f *webhookFlags) bind(fs *flag.FlagSet) {
	ns := os.Getenv("POD_NAMESPACE")
	if ns == "" {
		ns = "default"
	}
	fs.IntVar(&f.port, "webhook-port", 0, "Port of the admission webhook server (TLS); 0 disables the webhook.")
	fs.StringVar(&f.certDir, "webhook-cert-dir", "", "Serve the webhook with tls.crt and tls.key from this directory (reloaded when they change) instead of the certificate in --webhook-secret-name.")
	fs.BoolVar(&f.certManager, "webhook-cert-manager", false, "cert-manager writes --webhook-secret-name and injects the CA: only read the certificate, never generate or inject one.")
	fs.StringVar(&f.namespace, "webhook-namespace", ns, "Namespace of the webhook Service and Secret (default $POD_NAMESPACE or \"default\").")
	fs.StringVar(&f.secretName, "webhook-secret-name", "keyward-webhook-cert", "Secret holding the webhook's CA and serving certificate; the controller creates and renews it.")
	fs.StringVar(&f.serviceName, "webhook-service-name", "keyward-webhook", "Service in front of the webhook: the serving certificate is for its DNS names.")
	fs.StringVar(&f.configName, "webhook-config-name", "keyward-webhook", "ValidatingWebhookConfiguration whose caBundle the controller keeps; empty injects none.")
	fs.StringVar(&f.extraNames, "webhook-extra-names", "", "Comma-separated DNS names or IP addresses the generated serving certificate also holds (a webhook configuration with a url, for local runs).")
}

// server returns the webhook server the flags describe, and the rotator that gives it its
// certificate (nil when the certificate comes from --webhook-cert-dir). Both nil when the
// webhook is off.
func (f *webhookFlags) server(cfg *rest.Config, scheme *runtime.Scheme) (webhook.Server, *webhookcert.Rotator, error) {
	if f.port <= 0 {
		return nil, nil, nil
	}
	if f.certDir != "" {
		return webhook.NewServer(webhook.Options{Port: f.port, CertDir: f.certDir, TLSOpts: []func(*tls.Config){tls12}}), nil, nil
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return nil, nil, fmt.Errorf("cannot create webhook certificate client: %w", err)
	}
	rot, err := webhookcert.New(cfg, c, scheme, webhookcert.Options{
		Namespace:         f.namespace,
		SecretName:        f.secretName,
		DNSNames:          append(webhookcert.ServiceDNSNames(f.serviceName, f.namespace), splitList(f.extraNames)...),
		WebhookConfigName: f.configName,
		ReadOnly:          f.certManager,
	})
	if err != nil {
		return nil, nil, err
	}
	return webhook.NewServer(webhook.Options{Port: f.port, TLSOpts: []func(*tls.Config){tls12, rot.TLSOpt}}), rot, nil
}

func splitList(s string) []string {
	var out []string
	for _, e := range strings.Split(s, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}

// tls12 sets TLS 1.2 as the minimum and serves HTTP/1.1 only: the API server needs no HTTP/2,
// and HTTP/2 brings its stream-reset attacks (CVE-2023-44487) for nothing.
func tls12(c *tls.Config) {
	c.MinVersion = tls.VersionTLS12
	c.NextProtos = []string{"http/1.1"}
}

// setupWebhook registers the admission webhooks, and the rotator with a readiness check that
// passes once it serves a certificate.
func setupWebhook(mgr ctrl.Manager, rot *webhookcert.Rotator, publicURL string) error {
	if err := webhookv1.Setup(mgr, webhookv1.Options{PublicURL: publicURL}); err != nil {
		return err
	}
	if rot == nil {
		return nil
	}
	if err := mgr.Add(rot); err != nil {
		return err
	}
	return mgr.AddReadyzCheck("webhook-certificate", rot.ReadyCheck)
}
