// Package webhookcert keeps the admission webhook's serving certificate: a self-signed CA and a
// serving certificate for the webhook Service, stored in a Secret, injected as caBundle into the
// ValidatingWebhookConfiguration, renewed before they expire, and served from memory through
// tls.Config.GetCertificate (no file is written: the controller's root filesystem is read-only).
//
// Every controller replica runs the Rotator: the webhook server runs on every replica, so each
// needs the certificate. Decisions are recomputed from the certificates' own dates on every pass
// (Decide), and every write is conditioned on resourceVersion, so replicas and restarts agree.
package webhookcert

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"slices"
	"time"
)

// Data keys of the webhook Secret. tls.crt and tls.key are those of a kubernetes.io/tls Secret,
// so that a cert-manager Certificate can write the same Secret.
const (
	CADataKey    = "ca.crt"
	CAKeyDataKey = "ca.key"
	CertDataKey  = "tls.crt"
	KeyDataKey   = "tls.key"
)

// DefaultLifetime is the validity of generated CA and serving certificates. Both are renewed
// once two thirds of it have passed.
const DefaultLifetime = 365 * 24 * time.Hour

// backdate is subtracted from NotBefore so that an API server whose clock is a little behind
// accepts a certificate issued just now.
const backdate = time.Hour

// Bundle is the content of the webhook Secret, parsed.
type Bundle struct {
	// CAs are the trusted CA certificates (ca.crt), newest first. The newest signs; older ones
	// stay trusted until they expire, so that replicas still serving a certificate they signed
	// keep working while they pick up the new one.
	CAs []*x509.Certificate
	// CAKey is the private key of CAs[0].
	CAKey crypto.Signer
	// Cert and Key are the serving certificate (tls.crt) and its key (tls.key).
	Cert *x509.Certificate
	Key  crypto.Signer
}

// ParseBundle reads a webhook Secret's data. Missing or unparsable members are left nil: Decide
// replaces what is unusable.
func ParseBundle(data map[string][]byte) *Bundle {
	b := &Bundle{}
	rest := data[CADataKey]
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if c, err := x509.ParseCertificate(block.Bytes); err == nil && block.Type == "CERTIFICATE" && c.IsCA {
			b.CAs = append(b.CAs, c)
		}
	}
	b.CAKey = parseKey(data[CAKeyDataKey])
	if block, _ := pem.Decode(data[CertDataKey]); block != nil && block.Type == "CERTIFICATE" {
		b.Cert, _ = x509.ParseCertificate(block.Bytes)
	}
	b.Key = parseKey(data[KeyDataKey])
	return b
}

func parseKey(data []byte) crypto.Signer {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil
	}
	var key any
	var err error
	switch block.Type {
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		return nil
	}
	if err != nil {
		return nil
	}
	s, _ := key.(crypto.Signer)
	return s
}

// Data encodes the bundle as Secret data. A bundle without a CA key (cert-manager's) has no
// ca.key.
func (b *Bundle) Data() (map[string][]byte, error) {
	data := map[string][]byte{CADataKey: b.CABundle()}
	if b.CAKey != nil {
		k, err := encodeKey(b.CAKey)
		if err != nil {
			return nil, err
		}
		data[CAKeyDataKey] = k
	}
	if b.Cert != nil && b.Key != nil {
		k, err := encodeKey(b.Key)
		if err != nil {
			return nil, err
		}
		data[CertDataKey] = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: b.Cert.Raw})
		data[KeyDataKey] = k
	}
	return data, nil
}

// CABundle is the PEM of the trusted CAs, newest first: the webhook configuration's caBundle.
func (b *Bundle) CABundle() []byte {
	var buf bytes.Buffer
	for _, c := range b.CAs {
		_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return buf.Bytes()
}

func encodeKey(k crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("cannot encode private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// Policy is what the certificates must be.
type Policy struct {
	// DNSNames are the serving certificate's names (the webhook Service's DNS names); a name
	// that is an IP address becomes an IP address of the certificate.
	DNSNames []string
	// Lifetime is the validity of new certificates.
	Lifetime time.Duration
}

// Decision says what a pass of the rotator must change. The zero value changes nothing.
type Decision struct {
	// NewCA generates a CA that becomes CAs[0] and signs from now on.
	NewCA bool
	// NewCert issues a serving certificate from CAs[0] (the new CA when NewCA).
	NewCert bool
	// Drop lists CAs that leave the bundle (expired).
	Drop []*x509.Certificate
	// Waiting is set when a serving certificate is due but the newest CA is not yet in the
	// webhook configuration's caBundle: the API server would not trust a certificate it signed.
	Waiting bool
	// Reason says why, for logs and events.
	Reason string
	// Next is when the bundle next needs a pass (a renewal or an expiry), zero if never.
	Next time.Time
}

// Changed reports whether the Secret must be written.
func (d Decision) Changed() bool { return d.NewCA || d.NewCert || len(d.Drop) > 0 }

// renewAt is when two thirds of a certificate's validity have passed.
func renewAt(c *x509.Certificate) time.Time {
	return c.NotBefore.Add(c.NotAfter.Sub(c.NotBefore) * 2 / 3)
}

// Decide says how to bring a bundle (nil for no Secret) in line with the policy at now.
// published reports whether a CA is in the caBundle the API server uses; only a published CA
// may sign the serving certificate in use, except when no usable serving certificate exists
// at all (nothing could be served anyway).
//
// A rotation therefore takes two passes: the first adds a new CA to the bundle (the old one
// stays trusted), the rotator injects the bundle, and the next pass, seeing the new CA
// published, issues the serving certificate from it. Expired CAs leave the bundle.
func Decide(b *Bundle, p Policy, now time.Time, published func(*x509.Certificate) bool) Decision {
	if b == nil {
		b = &Bundle{}
	}
	var d Decision
	var reasons []string

	// The signing CA: CAs[0], with its key, not yet due for renewal.
	caOK := len(b.CAs) > 0 && b.CAKey != nil && publicKeyMatches(b.CAs[0], b.CAKey) && now.Before(renewAt(b.CAs[0]))
	if !caOK {
		d.NewCA = true
		switch {
		case len(b.CAs) == 0 || b.CAKey == nil || !publicKeyMatches(b.CAs[0], b.CAKey):
			reasons = append(reasons, "no usable CA")
		default:
			reasons = append(reasons, "CA is due for renewal")
		}
	}
	for _, c := range b.CAs {
		if !now.Before(c.NotAfter) {
			d.Drop = append(d.Drop, c)
		}
	}
	if len(d.Drop) > 0 {
		reasons = append(reasons, fmt.Sprintf("%d expired CA(s) leave the bundle", len(d.Drop)))
	}

	// The serving certificate: usable means the API server can trust it now; current means it
	// is also signed by the signing CA, has the right names and is not due for renewal.
	usable := b.Cert != nil && b.Key != nil && publicKeyMatches(b.Cert, b.Key) &&
		!now.Before(b.Cert.NotBefore) && now.Before(b.Cert.NotAfter) && signedByOneOf(b.Cert, b.CAs, d.Drop)
	current := usable && !d.NewCA && signedBy(b.Cert, b.CAs[0]) && sameNames(certNames(b.Cert), p.DNSNames) &&
		now.Before(renewAt(b.Cert))
	switch {
	case current:
	case !usable:
		d.NewCert = true
		reasons = append(reasons, "no usable serving certificate")
	case d.NewCA || !published(b.CAs[0]):
		// The CA that would sign it is new, or not yet in the caBundle: keep serving the current
		// certificate until the next pass.
		d.Waiting = true
		reasons = append(reasons, "serving certificate is due; waiting for the new CA to be in the caBundle")
	default:
		d.NewCert = true
		reasons = append(reasons, "serving certificate is due for renewal")
	}
	d.Reason = joinReasons(reasons)

	// Next pass: the earliest renewal or expiry of what is kept. After a write the rotator
	// decides again from what it wrote.
	if !d.Changed() {
		if !d.Waiting {
			d.Next = earliest(renewAt(b.CAs[0]), renewAt(b.Cert))
		}
		for _, c := range b.CAs[1:] {
			d.Next = earliest(d.Next, c.NotAfter)
		}
	}
	return d
}

func joinReasons(r []string) string {
	out := ""
	for i, s := range r {
		if i > 0 {
			out += "; "
		}
		out += s
	}
	return out
}

func earliest(a, b time.Time) time.Time {
	if a.IsZero() || (!b.IsZero() && b.Before(a)) {
		return b
	}
	return a
}

// certNames are a certificate's DNS names and IP addresses, as strings.
func certNames(c *x509.Certificate) []string {
	out := slices.Clone(c.DNSNames)
	for _, ip := range c.IPAddresses {
		out = append(out, ip.String())
	}
	return out
}

func sameNames(a, b []string) bool {
	return slices.Equal(slices.Sorted(slices.Values(a)), slices.Sorted(slices.Values(b)))
}

func signedBy(c, ca *x509.Certificate) bool {
	return c.CheckSignatureFrom(ca) == nil
}

func signedByOneOf(c *x509.Certificate, cas, dropped []*x509.Certificate) bool {
	for _, ca := range cas {
		if !slices.Contains(dropped, ca) && signedBy(c, ca) {
			return true
		}
	}
	return false
}

func publicKeyMatches(c *x509.Certificate, key crypto.Signer) bool {
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	return ok && pub.Equal(c.PublicKey)
}

// Apply returns the bundle the decision describes, generating what it asks for.
func Apply(b *Bundle, d Decision, p Policy, now time.Time) (*Bundle, error) {
	if b == nil {
		b = &Bundle{}
	}
	out := &Bundle{CAKey: b.CAKey, Cert: b.Cert, Key: b.Key}
	for _, c := range b.CAs {
		if !slices.Contains(d.Drop, c) {
			out.CAs = append(out.CAs, c)
		}
	}
	if d.NewCA {
		ca, key, err := newCA(now, p.Lifetime)
		if err != nil {
			return nil, err
		}
		out.CAs = append([]*x509.Certificate{ca}, out.CAs...)
		out.CAKey = key
		// A CA whose key is lost can sign nothing more; keep it only while a certificate it
		// signed may be in use (until it expires).
	}
	if d.NewCert {
		cert, key, err := newServingCert(out.CAs[0], out.CAKey, p.DNSNames, now, p.Lifetime)
		if err != nil {
			return nil, err
		}
		out.Cert, out.Key = cert, key
	}
	// Never more than the signing CA and the one before it: an older CA can have signed
	// nothing still in use.
	if len(out.CAs) > 2 {
		out.CAs = out.CAs[:2]
	}
	return out, nil
}

func serial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

func newCA(now time.Time, lifetime time.Duration) (*x509.Certificate, crypto.Signer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("cannot generate CA key: %w", err)
	}
	sn, err := serial()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: fmt.Sprintf("keyward-webhook-ca@%d", now.Unix())},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(lifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("cannot create CA certificate: %w", err)
	}
	c, err := x509.ParseCertificate(der)
	return c, key, err
}

func newServingCert(ca *x509.Certificate, caKey crypto.Signer, names []string, now time.Time, lifetime time.Duration) (*x509.Certificate, crypto.Signer, error) {
	if len(names) == 0 {
		return nil, nil, errors.New("cannot issue a serving certificate without DNS names")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("cannot generate serving key: %w", err)
	}
	sn, err := serial()
	if err != nil {
		return nil, nil, err
	}
	notAfter := now.Add(lifetime)
	if notAfter.After(ca.NotAfter) {
		notAfter = ca.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: names[0]},
		NotBefore:    now.Add(-backdate),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		return nil, nil, fmt.Errorf("cannot create serving certificate: %w", err)
	}
	c, err := x509.ParseCertificate(der)
	return c, key, err
}

// ServiceDNSNames are the names a Service is called by inside the cluster.
func ServiceDNSNames(service, namespace string) []string {
	return []string{
		service,
		service + "." + namespace,
		service + "." + namespace + ".svc",
		service + "." + namespace + ".svc.cluster.local",
	}
}
