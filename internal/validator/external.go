package validator

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/utils/clock"

	"github.com/keyward/keyward/internal/token"
)

// Limits of external JWKS fetching.
const (
	maxExternalBody       = 1 << 20
	externalFetchTimeout  = 5 * time.Second
	defaultRefreshEvery   = 5 * time.Minute
	defaultUnknownKIDWait = 10 * time.Second
	// unknownKIDWait bounds how long a check waits for a refetch on an unknown kid.
	unknownKIDWait = 3 * time.Second
)

// externalIssuer keeps the keys of an issuer outside the cluster: fetched over HTTPS, cached
// with the last known good set (a failed fetch keeps the previous keys; a set that was never
// fetched verifies nothing), refreshed periodically and on an unknown kid at most once per
// minInterval.
type externalIssuer struct {
	spec        *externalSpec
	client      *http.Client
	clock       clock.PassiveClock
	minInterval time.Duration
	log         logr.Logger
	metrics     *metrics

	keys    atomic.Pointer[map[string]*token.VerifyKey]
	stopped atomic.Bool

	mu          sync.Mutex
	lastAttempt time.Time
	inflight    chan struct{} // closed when the running fetch ends
	configErr   error
}

func newExternalIssuer(spec *externalSpec, clk clock.PassiveClock, minInterval time.Duration, log logr.Logger, m *metrics) *externalIssuer {
	e := &externalIssuer{spec: spec, clock: clk, minInterval: minInterval, log: log.WithValues("issuer", spec.issuerURL), metrics: m}
	e.client, e.configErr = httpClientFor(spec.caBundle)
	return e
}

// httpClientFor returns a client trusting the CA bundle (or the system roots), following no
// redirects.
func httpClientFor(caBundle string) (*http.Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	var err error
	if caBundle != "" {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM([]byte(caBundle)) {
			err = errors.New("caBundle holds no PEM certificate")
		}
		tr.TLSClientConfig.RootCAs = pool
	}
	return &http.Client{
		Transport:     tr,
		Timeout:       externalFetchTimeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}, err
}

func (e *externalIssuer) stop() { e.stopped.Store(true) }

func (e *externalIssuer) key(kid string) *token.VerifyKey {
	m := e.keys.Load()
	if m == nil {
		return nil
	}
	return (*m)[kid]
}

// keyFor returns the key with the kid, refetching the set first when the kid is unknown and
// the last attempt is older than minInterval. It waits for the fetch at most until ctx ends.
func (e *externalIssuer) keyFor(ctx context.Context, kid string) *token.VerifyKey {
	if k := e.key(kid); k != nil {
		return k
	}
	done := e.refresh(false)
	if done == nil {
		return nil
	}
	if nw, ok := ctx.(*noWaitContext); ok {
		nw.wouldWait = true
		return nil
	}
	timer := time.NewTimer(unknownKIDWait)
	defer timer.Stop()
	select {
	case <-done:
	case <-ctx.Done():
		return nil
	case <-timer.C:
		return nil
	}
	return e.key(kid)
}

// refresh starts a fetch unless one is running (whose end it returns) or, without force, one
// was attempted less than minInterval ago (it returns nil).
func (e *externalIssuer) refresh(force bool) <-chan struct{} {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.inflight != nil {
		return e.inflight
	}
	now := e.clock.Now()
	if !force && !e.lastAttempt.IsZero() && now.Sub(e.lastAttempt) < e.minInterval {
		return nil
	}
	e.lastAttempt = now
	done := make(chan struct{})
	e.inflight = done
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*externalFetchTimeout)
		err := e.fetch(ctx)
		cancel()
		result := "success"
		if err != nil {
			result = "error"
			e.log.Error(err, "Cannot fetch external JWKS; keeping the last known good keys")
		}
		e.metrics.jwksFetch(result)
		e.mu.Lock()
		e.inflight = nil
		e.mu.Unlock()
		close(done)
	}()
	return done
}

// fetch reads the JWKS (through discovery unless jwksURL is set) and replaces the keys.
func (e *externalIssuer) fetch(ctx context.Context) error {
	if e.configErr != nil {
		return e.configErr
	}
	jwksURL := e.spec.jwksURL
	if jwksURL == "" {
		disc := e.spec.discoveryURL
		if disc == "" {
			disc = strings.TrimSuffix(e.spec.issuerURL, "/") + "/.well-known/openid-configuration"
		}
		body, err := e.get(ctx, disc)
		if err != nil {
			return fmt.Errorf("cannot read discovery document: %w", err)
		}
		var doc struct {
			Issuer  string `json:"issuer"`
			JWKSURI string `json:"jwks_uri"`
		}
		if err := json.Unmarshal(body, &doc); err != nil {
			return fmt.Errorf("cannot decode discovery document: %w", err)
		}
		if doc.Issuer != e.spec.issuerURL {
			return errors.New("discovery document names another issuer")
		}
		if doc.JWKSURI == "" {
			return errors.New("discovery document has no jwks_uri")
		}
		jwksURL = doc.JWKSURI
	}
	body, err := e.get(ctx, jwksURL)
	if err != nil {
		return fmt.Errorf("cannot read JWKS: %w", err)
	}
	ks, err := token.VerifyKeysFromJWKS(body)
	if err != nil {
		return err
	}
	e.keys.Store(&ks)
	return nil
}

func (e *externalIssuer) get(ctx context.Context, rawURL string) ([]byte, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("invalid URL: %w", err)
	}
	if u.Scheme != "https" && (u.Scheme != "http" || !isLoopback(u.Hostname())) {
		return nil, errors.New("URL must be https (http only for loopback addresses)")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := e.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %d", resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxExternalBody+1))
	if err != nil {
		return nil, err
	}
	if len(body) > maxExternalBody {
		return nil, errors.New("response exceeds 1 MiB")
	}
	return body, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
