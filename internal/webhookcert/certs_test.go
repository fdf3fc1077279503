package webhookcert

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"slices"
	"testing"
	"time"
)

var (
	t0     = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	year   = 365 * 24 * time.Hour
	day    = 24 * time.Hour
	names  = []string{"keyward-webhook.keyward-system.svc", "127.0.0.1"}
	policy = Policy{DNSNames: names, Lifetime: year}
)

func always(*x509.Certificate) bool { return true }
func never(*x509.Certificate) bool  { return false }

// settle decides and applies until nothing changes, publishing after each write when publish
// is true, as the Rotator does; it returns the final bundle and the injected CAs.
func settle(t *testing.T, b *Bundle, injected []*x509.Certificate, now time.Time, publish bool) (*Bundle, []*x509.Certificate) {
	t.Helper()
	for range 6 {
		published := func(ca *x509.Certificate) bool {
			return slices.ContainsFunc(injected, func(c *x509.Certificate) bool { return c.Equal(ca) })
		}
		d := Decide(b, policy, now, published)
		if d.Changed() {
			usableBefore := b != nil && b.Cert != nil && trustedBy(b.Cert, injected, now) == nil
			nb, err := Apply(b, d, policy, now)
			if err != nil {
				t.Fatal(err)
			}
			if usableBefore && !nb.Cert.Equal(b.Cert) {
				// A replica may load the new certificate at once: the API server must already
				// trust it.
				if err := trustedBy(nb.Cert, injected, now); err != nil {
					t.Fatalf("at %s a working certificate was replaced by one the API server does not trust yet: %v", now, err)
				}
			}
			b = nb
			continue
		}
		if publish && !sameCAs(injected, b.CAs) {
			injected = slices.Clone(b.CAs)
			continue
		}
		return b, injected
	}
	t.Fatalf("no settled bundle at %s", now)
	return nil, nil
}

func sameCAs(a, b []*x509.Certificate) bool {
	return slices.EqualFunc(a, b, func(x, y *x509.Certificate) bool { return x.Equal(y) })
}

// trustedBy verifies a serving certificate as the API server does.
func trustedBy(cert *x509.Certificate, cas []*x509.Certificate, now time.Time) error {
	pool := x509.NewCertPool()
	for _, c := range cas {
		pool.AddCert(c)
	}
	for _, name := range names {
		if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, DNSName: name, CurrentTime: now,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			return err
		}
	}
	return nil
}

func TestDecide(t *testing.T) {
	fresh, _ := settle(t, nil, nil, t0, false)
	renew := t0.Add(244 * day) // past two thirds of a year
	foreignKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)

	tests := []struct {
		name      string
		bundle    *Bundle
		now       time.Time
		published func(*x509.Certificate) bool
		want      Decision // Reason and Next are checked apart
		wantNext  time.Time
	}{
		{name: "no Secret: a CA and a certificate at once", now: t0, published: never,
			want: Decision{NewCA: true, NewCert: true}},
		{name: "a fresh bundle: nothing to do until two thirds of the lifetime", bundle: fresh, now: t0.Add(time.Minute), published: always,
			wantNext: renewAt(fresh.Cert)},
		{name: "two thirds of the lifetime: a new CA; the certificate waits for it to be published", bundle: fresh, now: renew, published: always,
			want: Decision{NewCA: true, Waiting: true}},
		{name: "a CA whose key is lost: a new CA; the working certificate waits", now: t0.Add(time.Minute), published: always,
			bundle: &Bundle{CAs: fresh.CAs, CAKey: foreignKey, Cert: fresh.Cert, Key: fresh.Key},
			want:   Decision{NewCA: true, Waiting: true}},
		{name: "a certificate for other names: a new one from the published CA", now: t0.Add(time.Minute), published: always,
			bundle: func() *Bundle {
				b, _ := Apply(fresh, Decision{NewCert: true}, Policy{DNSNames: []string{"old.name.svc"}, Lifetime: year}, t0)
				return b
			}(),
			want: Decision{NewCert: true}},
		{name: "a certificate whose key does not match: a new one", now: t0.Add(time.Minute), published: never,
			bundle: &Bundle{CAs: fresh.CAs, CAKey: fresh.CAKey, Cert: fresh.Cert, Key: foreignKey},
			want:   Decision{NewCert: true}},
		{name: "everything expired (no controller ran for a year): all new at once", bundle: fresh, now: t0.Add(year + day), published: never,
			want: Decision{NewCA: true, NewCert: true, Drop: fresh.CAs}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Decide(tt.bundle, policy, tt.now, tt.published)
			if got.NewCA != tt.want.NewCA || got.NewCert != tt.want.NewCert || got.Waiting != tt.want.Waiting ||
				!sameCAs(got.Drop, tt.want.Drop) {
				t.Errorf("got NewCA=%v NewCert=%v Waiting=%v Drop=%d (%s), want NewCA=%v NewCert=%v Waiting=%v Drop=%d",
					got.NewCA, got.NewCert, got.Waiting, len(got.Drop), got.Reason, tt.want.NewCA, tt.want.NewCert, tt.want.Waiting, len(tt.want.Drop))
			}
			if !got.Next.Equal(tt.wantNext) {
				t.Errorf("next pass at %s, want %s", got.Next, tt.wantNext)
			}
			if (got.Changed() || got.Waiting) && got.Reason == "" {
				t.Error("a decision that changes something has no reason")
			}
		})
	}
}

func TestRotationKeepsTheOldCAUntilTheNewCertificateIsServed(t *testing.T) {
	b, injected := settle(t, nil, nil, t0, true)
	first := b

	// At two thirds of the lifetime, without publication: only the CA is added.
	now := t0.Add(244 * day)
	unpublished, _ := settle(t, b, injected, now, false)
	if len(unpublished.CAs) != 2 || !unpublished.CAs[1].Equal(first.CAs[0]) {
		t.Fatalf("want the new CA followed by the old one, got %d CAs", len(unpublished.CAs))
	}
	if !unpublished.Cert.Equal(first.Cert) {
		t.Fatal("the certificate changed before its CA was published")
	}

	// Published: the certificate comes from the new CA; the old CA stays trusted.
	b, injected = settle(t, unpublished, injected, now, true)
	if b.Cert.Equal(first.Cert) || !signedBy(b.Cert, b.CAs[0]) || len(injected) != 2 {
		t.Fatalf("want a certificate from the new CA and both CAs injected; got %d injected", len(injected))
	}
	if err := trustedBy(first.Cert, injected, now); err != nil {
		t.Errorf("a replica still serving the old certificate is not trusted: %v", err)
	}

	// The old CA expires and leaves the bundle.
	b, injected = settle(t, b, injected, first.CAs[0].NotAfter, true)
	if len(b.CAs) != 1 || len(injected) != 1 || !b.CAs[0].Equal(injected[0]) {
		t.Fatalf("want one CA left, got %d in the Secret and %d injected", len(b.CAs), len(injected))
	}
}

// TestRotationSimulation runs the rotator's passes once a day for five years: the served
// certificate is always valid and trusted by the injected bundle, the bundle never holds more
// than two CAs, and renewals happen about every two thirds of a year.
func TestRotationSimulation(t *testing.T) {
	b, injected := settle(t, nil, nil, t0, true)
	renewals := 0
	for now := t0; now.Before(t0.Add(5 * year)); now = now.Add(day) {
		before := b.Cert
		b, injected = settle(t, b, injected, now, true)
		if !b.Cert.Equal(before) {
			renewals++
		}
		if err := trustedBy(b.Cert, injected, now); err != nil {
			t.Fatalf("day %d: the served certificate is not trusted: %v", int(now.Sub(t0)/day), err)
		}
		if len(b.CAs) > 2 {
			t.Fatalf("day %d: %d CAs in the bundle", int(now.Sub(t0)/day), len(b.CAs))
		}
	}
	if renewals != 7 { // 5 years / (2/3 year) = 7.5
		t.Errorf("%d renewals in 5 years, want 7", renewals)
	}
}

func TestBundleRoundTrip(t *testing.T) {
	b, _ := settle(t, nil, nil, t0, false)
	data, err := b.Data()
	if err != nil {
		t.Fatal(err)
	}
	got := ParseBundle(data)
	if !sameCAs(got.CAs, b.CAs) || !got.Cert.Equal(b.Cert) || !publicKeyMatches(got.Cert, got.Key) || !publicKeyMatches(got.CAs[0], got.CAKey) {
		t.Fatal("the bundle does not survive the Secret")
	}
	if d := Decide(got, policy, t0.Add(time.Hour), always); d.Changed() || d.Waiting {
		t.Errorf("a parsed fresh bundle is not current: %s", d.Reason)
	}
	if d := Decide(ParseBundle(map[string][]byte{CADataKey: []byte("garbage"), CertDataKey: []byte("x")}), policy, t0, never); !d.NewCA || !d.NewCert {
		t.Errorf("a damaged Secret is not replaced: %+v", d)
	}
}
