package webhookcert

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
	crcache "sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
)

// Options configure a Rotator.
type Options struct {
	// Namespace and SecretName locate the Secret that holds the certificates.
	Namespace  string
	SecretName string
	// DNSNames are the serving certificate's names; see ServiceDNSNames.
	DNSNames []string
	// WebhookConfigName is the ValidatingWebhookConfiguration whose webhooks get the CA bundle;
	// none when empty.
	WebhookConfigName string
	// Lifetime of new certificates (DefaultLifetime when zero).
	Lifetime time.Duration
	// ReadOnly only loads the serving certificate from the Secret, which something else
	// writes (a cert-manager Certificate, whose CA cert-manager's cainjector injects).
	ReadOnly bool
	// Clock is the time source (the real clock when nil).
	Clock clock.WithTicker
	// Resync is how often the Secret and the configuration are checked without an event (10
	// minutes when zero).
	Resync time.Duration
}

// Rotator keeps the webhook's certificates: it is a manager runnable that runs on every
// replica (see the package comment), and it serves the current certificate through
// GetCertificate.
type Rotator struct {
	client client.Client
	cfg    *rest.Config
	scheme *runtime.Scheme
	o      Options
	log    logr.Logger

	cert atomic.Pointer[tls.Certificate]
	kick chan struct{}

	mu      sync.Mutex
	lastErr error
}

// New returns a Rotator. c reads and writes the Secret and the webhook configuration directly
// (not through a cache); cfg starts the watches that wake it up.
func New(cfg *rest.Config, c client.Client, scheme *runtime.Scheme, o Options) (*Rotator, error) {
	if o.Namespace == "" || o.SecretName == "" {
		return nil, errors.New("webhook certificate: namespace and secret name are required")
	}
	if !o.ReadOnly && len(o.DNSNames) == 0 {
		return nil, errors.New("webhook certificate: DNS names are required")
	}
	if o.Lifetime <= 0 {
		o.Lifetime = DefaultLifetime
	}
	if o.Clock == nil {
		o.Clock = clock.RealClock{}
	}
	if o.Resync <= 0 {
		o.Resync = 10 * time.Minute
	}
	return &Rotator{client: c, cfg: cfg, scheme: scheme, o: o, kick: make(chan struct{}, 1),
		log: logf.Log.WithName("webhook-cert")}, nil
}

// NeedLeaderElection is false: every replica serves the webhook, so every replica needs the
// certificate. Writes are compare-and-swap, so replicas never undo each other.
func (r *Rotator) NeedLeaderElection() bool { return false }

// GetCertificate serves the current certificate; use it as tls.Config.GetCertificate of the
// webhook server.
func (r *Rotator) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	c := r.cert.Load()
	if c == nil {
		return nil, errors.New("webhook serving certificate is not loaded yet")
	}
	return c, nil
}

// TLSOpt sets GetCertificate on the webhook server's TLS configuration.
func (r *Rotator) TLSOpt(c *tls.Config) { c.GetCertificate = r.GetCertificate }

// ReadyCheck fails until a serving certificate is loaded: the webhook Service routes only to
// replicas that can answer.
func (r *Rotator) ReadyCheck(_ *http.Request) error {
	if r.cert.Load() == nil {
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.lastErr != nil {
			return fmt.Errorf("no webhook serving certificate: %w", r.lastErr)
		}
		return errors.New("no webhook serving certificate yet")
	}
	return nil
}

// Start runs passes until ctx ends: at once, whenever the Secret or the webhook configuration
// changes, when a certificate is due, and every Resync.
func (r *Rotator) Start(ctx context.Context) error {
	watch, err := r.watch(ctx)
	if err != nil {
		return err
	}
	r.log.Info("Starting webhook certificate rotator", "secret", klog.KRef(r.o.Namespace, r.o.SecretName),
		"webhookConfiguration", r.o.WebhookConfigName, "readOnly", r.o.ReadOnly)
	backoff := time.Second
	for {
		next, err := r.Sync(ctx)
		if ctx.Err() != nil {
			return watch()
		}
		r.mu.Lock()
		r.lastErr = err
		r.mu.Unlock()
		// The renewal schedule follows the injected clock; retries after an error real time.
		wait := r.o.Resync
		retry := &time.Timer{} // a nil channel: never fires
		if err != nil {
			r.log.Error(err, "Cannot keep the webhook certificate", "retryIn", backoff)
			retry = time.NewTimer(backoff)
			backoff = min(backoff*2, time.Minute)
		} else {
			backoff = time.Second
			if !next.IsZero() {
				wait = min(wait, max(next.Sub(r.o.Clock.Now()), 0))
			}
		}
		timer := r.o.Clock.NewTimer(wait)
		select {
		case <-ctx.Done():
		case <-r.kick:
		case <-timer.C():
		case <-retry.C:
		}
		timer.Stop()
		if retry.C != nil {
			retry.Stop()
		}
		if ctx.Err() != nil {
			return watch()
		}
	}
}

// watch starts a cache holding only the Secret and the webhook configuration, by name, whose
// events wake the loop. It returns how to wait for the cache to stop.
func (r *Rotator) watch(ctx context.Context) (wait func() error, err error) {
	byName := func(name string) crcache.ByObject {
		return crcache.ByObject{Field: fields.OneTermEqualSelector("metadata.name", name)}
	}
	opts := crcache.Options{Scheme: r.scheme, ByObject: map[client.Object]crcache.ByObject{}}
	secret := byName(r.o.SecretName)
	secret.Namespaces = map[string]crcache.Config{r.o.Namespace: {}}
	opts.ByObject[&corev1.Secret{}] = secret
	if r.o.WebhookConfigName != "" && !r.o.ReadOnly {
		opts.ByObject[&admissionregistrationv1.ValidatingWebhookConfiguration{}] = byName(r.o.WebhookConfigName)
	}
	c, err := crcache.New(r.cfg, opts)
	if err != nil {
		return nil, fmt.Errorf("cannot create webhook certificate cache: %w", err)
	}
	kick := toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { r.Kick() },
		UpdateFunc: func(any, any) { r.Kick() },
		DeleteFunc: func(any) { r.Kick() },
	}
	for obj := range opts.ByObject {
		inf, err := c.GetInformer(ctx, obj)
		if err != nil {
			return nil, fmt.Errorf("cannot watch %T: %w", obj, err)
		}
		if _, err := inf.AddEventHandler(kick); err != nil {
			return nil, err
		}
	}
	done := make(chan error, 1)
	go func() { done <- c.Start(ctx) }()
	return func() error { return <-done }, nil
}

// Kick asks for a pass now.
func (r *Rotator) Kick() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Sync makes one pass: read the Secret and the webhook configuration, renew what is due
// (writing the Secret), inject the CA bundle, and load the serving certificate. It returns when
// the next pass is due (zero: at the next event or resync).
func (r *Rotator) Sync(ctx context.Context) (next time.Time, err error) {
	// A few rounds: a rotation writes a new CA, injects it, then issues the certificate it
	// signs; a conflict with another replica's write means deciding again from what it wrote.
	for range 6 {
		secret := &corev1.Secret{}
		err := r.client.Get(ctx, client.ObjectKey{Namespace: r.o.Namespace, Name: r.o.SecretName}, secret)
		if err != nil && !apierrors.IsNotFound(err) {
			return time.Time{}, fmt.Errorf("cannot get secret: %w", err)
		}
		exists := err == nil
		b := ParseBundle(secret.Data)
		if r.o.ReadOnly {
			return time.Time{}, r.load(b)
		}

		vwc, err := r.webhookConfig(ctx)
		if err != nil {
			return time.Time{}, err
		}
		published := func(ca *x509.Certificate) bool {
			if r.o.WebhookConfigName == "" {
				return true
			}
			return vwc != nil && injected(vwc, ca)
		}
		now := r.o.Clock.Now()
		policy := Policy{DNSNames: r.o.DNSNames, Lifetime: r.o.Lifetime}
		d := Decide(b, policy, now, published)
		if d.Changed() {
			nb, err := Apply(b, d, policy, now)
			if err != nil {
				return time.Time{}, err
			}
			if err := r.write(ctx, secret, exists, nb); err != nil {
				if apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) {
					continue
				}
				return time.Time{}, err
			}
			r.log.Info("Renewed webhook certificates", "reason", d.Reason, "newCA", d.NewCA, "newCertificate", d.NewCert,
				"droppedCAs", len(d.Drop), "secret", klog.KRef(r.o.Namespace, r.o.SecretName))
			continue
		}
		if vwc != nil {
			changed, err := r.inject(ctx, vwc, b.CABundle())
			if apierrors.IsConflict(err) {
				continue
			}
			if err != nil {
				return time.Time{}, err
			}
			if changed {
				continue // a certificate may have been waiting for this CA
			}
		}
		if err := r.load(b); err != nil {
			return time.Time{}, err
		}
		if r.o.WebhookConfigName != "" && vwc == nil {
			return time.Time{}, fmt.Errorf("validating webhook configuration %s not found: cannot inject the CA bundle", r.o.WebhookConfigName)
		}
		return d.Next, nil
	}
	return time.Time{}, errors.New("webhook certificates did not settle")
}

// webhookConfig returns the webhook configuration, nil when there is none (not configured, or
// not found).
func (r *Rotator) webhookConfig(ctx context.Context) (*admissionregistrationv1.ValidatingWebhookConfiguration, error) {
	if r.o.WebhookConfigName == "" {
		return nil, nil
	}
	vwc := &admissionregistrationv1.ValidatingWebhookConfiguration{}
	if err := r.client.Get(ctx, client.ObjectKey{Name: r.o.WebhookConfigName}, vwc); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("cannot get validating webhook configuration %s: %w", r.o.WebhookConfigName, err)
	}
	return vwc, nil
}

// injected reports whether every webhook of the configuration trusts ca.
func injected(vwc *admissionregistrationv1.ValidatingWebhookConfiguration, ca *x509.Certificate) bool {
	for _, w := range vwc.Webhooks {
		if !bundleHas(w.ClientConfig.CABundle, ca) {
			return false
		}
	}
	return true
}

func bundleHas(bundle []byte, ca *x509.Certificate) bool {
	for _, c := range ParseBundle(map[string][]byte{CADataKey: bundle}).CAs {
		if c.Equal(ca) {
			return true
		}
	}
	return false
}

func (r *Rotator) write(ctx context.Context, secret *corev1.Secret, exists bool, b *Bundle) error {
	data, err := b.Data()
	if err != nil {
		return err
	}
	if !exists {
		secret = &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Namespace: r.o.Namespace, Name: r.o.SecretName,
				Labels: map[string]string{"app.kubernetes.io/name": "keyward", "app.kubernetes.io/component": "webhook"}},
			Type: corev1.SecretTypeOpaque,
			Data: data,
		}
		if err := r.client.Create(ctx, secret); err != nil {
			return fmt.Errorf("cannot create secret: %w", err)
		}
		return nil
	}
	secret.Data = data // Update sends resourceVersion: a compare-and-swap
	if err := r.client.Update(ctx, secret); err != nil {
		return fmt.Errorf("cannot update secret: %w", err)
	}
	return nil
}

// inject sets the CA bundle on every webhook of the configuration, conditioned on its
// resourceVersion. It reports whether it changed anything.
func (r *Rotator) inject(ctx context.Context, vwc *admissionregistrationv1.ValidatingWebhookConfiguration, bundle []byte) (bool, error) {
	changed := false
	for i := range vwc.Webhooks {
		if !bytes.Equal(vwc.Webhooks[i].ClientConfig.CABundle, bundle) {
			vwc.Webhooks[i].ClientConfig.CABundle = bundle
			changed = true
		}
	}
	if !changed {
		return false, nil
	}
	if err := r.client.Update(ctx, vwc); err != nil {
		return false, fmt.Errorf("cannot inject CA bundle into validating webhook configuration %s: %w", vwc.Name, err)
	}
	r.log.Info("Injected the CA bundle", "validatingWebhookConfiguration", vwc.Name)
	return true, nil
}

// load makes the bundle's serving certificate the one served, if it changed.
func (r *Rotator) load(b *Bundle) error {
	if b.Cert == nil || b.Key == nil {
		return errors.New("secret holds no serving certificate")
	}
	if cur := r.cert.Load(); cur != nil && cur.Leaf != nil && cur.Leaf.Equal(b.Cert) {
		return nil
	}
	if !publicKeyMatches(b.Cert, b.Key) {
		return errors.New("serving certificate and key do not match")
	}
	r.cert.Store(&tls.Certificate{Certificate: [][]byte{b.Cert.Raw}, PrivateKey: b.Key, Leaf: b.Cert})
	r.log.Info("Serving a new webhook certificate", "notAfter", b.Cert.NotAfter, "issuer", b.Cert.Issuer.CommonName)
	return nil
}
