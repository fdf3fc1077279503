package resilience

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
	"github.com/keyward/keyward/internal/issuer"
	"github.com/keyward/keyward/internal/keys"
	"github.com/keyward/keyward/internal/token"
)

// The test users and client. Passwords are hashed at bcrypt's lowest cost.
const (
	userName     = "alice"
	userPassword = "wonderland"
	clientID     = "svc"
	clientSecret = "resilience-client-secret-0123456789abcdef"
	appHost      = "app.test"
)

// issuerSpec describes one SigningKey + TokenIssuer pair of a scenario.
type issuerSpec struct {
	name       string
	every      time.Duration // rotation.every; 720h when zero
	prepublish time.Duration // rotation.prepublish; 10m when zero
	access     time.Duration // accessTokenLifetime; 5m when zero
	refresh    time.Duration // refreshTokenLifetime; 24h when zero
}

// createNamespace creates a namespace with the users and clients Secrets.
func createNamespace(t *testing.T, ns string) {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(userPassword), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256Hex(clientSecret)
	for _, o := range []client.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "users"},
			StringData: map[string]string{issuer.HtpasswdDataKey: userName + ":" + string(h) + "\n"}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "clients"},
			StringData: map[string]string{issuer.ClientsYAMLDataKey: fmt.Sprintf("%s:\n  secretSHA256: %s\n  scopes: [read]\n  audiences: [api]\n", clientID, sum)}},
	} {
		create(t, o)
	}
}

func create(t *testing.T, o client.Object) {
	t.Helper()
	if err := k8s.Create(withTimeout(t), o); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("cannot create %T %s: %v", o, o.GetName(), err)
	}
}

func orDefault(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// createSigningKey creates the SigningKey of s.
func createSigningKey(t *testing.T, ns string, s issuerSpec) {
	t.Helper()
	create(t, &keywardv1.SigningKey{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: s.name},
		Spec: keywardv1.SigningKeySpec{Algorithm: keywardv1.AlgorithmES256, Rotation: keywardv1.KeyRotation{
			Every:      metav1.Duration{Duration: orDefault(s.every, 720*time.Hour)},
			Prepublish: metav1.Duration{Duration: orDefault(s.prepublish, 10*time.Minute)},
		}}})
}

// createIssuer creates the TokenIssuer of s (leeway 0, rotation on, 5 s reuse grace).
func createIssuer(t *testing.T, ns string, s issuerSpec) {
	t.Helper()
	zero := metav1.Duration{}
	grace := metav1.Duration{Duration: 5 * time.Second}
	on := true
	create(t, &keywardv1.TokenIssuer{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: s.name},
		Spec: keywardv1.TokenIssuerSpec{
			SigningKeyRef:        keywardv1.LocalObjectReference{Name: s.name},
			Audiences:            []string{"api"},
			AccessTokenLifetime:  metav1.Duration{Duration: orDefault(s.access, 5*time.Minute)},
			RefreshTokenLifetime: metav1.Duration{Duration: orDefault(s.refresh, 24*time.Hour)},
			Leeway:               &zero,
			RefreshTokenRotation: keywardv1.RefreshTokenRotation{Enabled: &on, ReuseGracePeriod: &grace},
			Users:                keywardv1.SecretReference{SecretRef: keywardv1.LocalObjectReference{Name: "users"}},
			Clients:              &keywardv1.SecretReference{SecretRef: keywardv1.LocalObjectReference{Name: "clients"}},
		}})
}

// createPolicy lets through to appHost requests with an access token of any of the issuers.
func createPolicy(t *testing.T, ns string, issuers ...string) {
	t.Helper()
	var refs []keywardv1.IssuerReference
	for _, n := range issuers {
		refs = append(refs, keywardv1.IssuerReference{Name: n})
	}
	create(t, &keywardv1.AccessPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "app"},
		Spec: keywardv1.AccessPolicySpec{Hosts: []string{appHost},
			Rules: []keywardv1.AccessRule{{Paths: []string{"/"}, Issuers: refs, Audiences: []string{"api"}}}}})
}

// deleteKeywardObjects removes a scenario's SigningKeys, TokenIssuers and AccessPolicies at
// the end of a test, so that later tests' controllers do not keep rotating them.
func deleteKeywardObjects(t *testing.T, ns string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		for _, o := range []client.Object{&keywardv1.AccessPolicy{}, &keywardv1.TokenIssuer{}, &keywardv1.SigningKey{}} {
			_ = k8s.DeleteAllOf(ctx, o, client.InNamespace(ns))
		}
	})
}

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// issuerBase is the base URL of a TokenIssuer's endpoints at an issuer process.
func issuerBase(addr, ns, name string) string {
	return "http://" + addr + "/" + ns + "/" + name + "/"
}

var apiClient = &http.Client{Timeout: 10 * time.Second}

// answer is an HTTP status and body; err is a transport error.
type answer struct {
	status int
	body   []byte
	err    error
}

func (a answer) String() string {
	if a.err != nil {
		return a.err.Error()
	}
	return fmt.Sprintf("%d %s", a.status, a.body)
}

func post(ctx context.Context, c *http.Client, u, contentType, body string, basic ...string) answer {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, strings.NewReader(body))
	if err != nil {
		return answer{err: err}
	}
	req.Header.Set("Content-Type", contentType)
	if len(basic) == 2 {
		req.SetBasicAuth(basic[0], basic[1])
	}
	resp, err := c.Do(req)
	if err != nil {
		return answer{err: err}
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	return answer{status: resp.StatusCode, body: b, err: err}
}

// clientCredentials asks for an access token with the client_credentials grant, which
// writes nothing to the API.
func clientCredentials(ctx context.Context, base string) (string, answer) {
	a := post(ctx, apiClient, base+"oauth2/token", "application/x-www-form-urlencoded",
		url.Values{"grant_type": {"client_credentials"}}.Encode(), clientID, clientSecret)
	if a.err != nil || a.status != http.StatusOK {
		return "", a
	}
	var out struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.Unmarshal(a.body, &out); err != nil || out.AccessToken == "" {
		a.err = fmt.Errorf("bad token response: %s", a.body)
		return "", a
	}
	return out.AccessToken, a
}

// pair is an access and refresh token.
type pair struct{ access, refresh string }

// login is simplejwt's POST api/token/.
func login(ctx context.Context, base string) (pair, answer) {
	a := post(ctx, apiClient, base+"api/token/", "application/json", fmt.Sprintf(`{"username":%q,"password":%q}`, userName, userPassword))
	return pairOf(a)
}

// refresh is simplejwt's POST api/token/refresh/.
func refresh(ctx context.Context, c *http.Client, base, rt string) (pair, answer) {
	a := post(ctx, c, base+"api/token/refresh/", "application/json", fmt.Sprintf(`{"refresh":%q}`, rt))
	return pairOf(a)
}

func pairOf(a answer) (pair, answer) {
	if a.err != nil || a.status != http.StatusOK {
		return pair{}, a
	}
	var out struct {
		Access  string `json:"access"`
		Refresh string `json:"refresh"`
	}
	if err := json.Unmarshal(a.body, &out); err != nil || out.Access == "" {
		a.err = fmt.Errorf("bad token response: %s", a.body)
	}
	return pair{out.Access, out.Refresh}, a
}

// jwtInfo is what the tests read from a compact JWS's header and claims (not verified: the
// test minted or received it).
type jwtInfo struct {
	KID string
	JTI string
	SID string
	Gen int64
	Exp time.Time
}

func inspect(raw string) (jwtInfo, error) {
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		return jwtInfo{}, errors.New("not a compact JWS")
	}
	var h struct {
		KID string `json:"kid"`
	}
	var c struct {
		JTI string `json:"jti"`
		SID string `json:"sid"`
		Gen int64  `json:"gen"`
		Exp int64  `json:"exp"`
	}
	for i, v := range []any{&h, &c} {
		b, err := base64.RawURLEncoding.DecodeString(parts[i])
		if err != nil {
			return jwtInfo{}, err
		}
		if err := json.Unmarshal(b, v); err != nil {
			return jwtInfo{}, err
		}
	}
	return jwtInfo{KID: h.KID, JTI: c.JTI, SID: c.SID, Gen: c.Gen, Exp: time.Unix(c.Exp, 0)}, nil
}

// authzClient talks to validators; keep-alive connections like a proxy's.
var authzClient = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}

// check asks a validator (Envoy HTTP style: /authz + the original path, Host) about a
// request to appHost carrying tok. It returns the status.
func check(ctx context.Context, addr, tok string) (int, error) {
	return checkHost(ctx, addr, appHost, tok)
}

// checkHost is check for another host.
func checkHost(ctx context.Context, addr, host, tok string) (int, error) {
	return get(ctx, "http://"+addr+"/authz/api/items", host, tok)
}

// get sends GET url with Host host and, unless tok is empty, the bearer token; it returns
// the status once the body is read.
func get(ctx context.Context, url, host, tok string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	req.Host = host
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := authzClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer func() { _ = resp.Body.Close() }()
	_, err = io.ReadAll(resp.Body)
	return resp.StatusCode, err
}

// minted is a token an issuer returned.
type minted struct {
	raw    string
	kid    string
	exp    time.Time
	issuer string
	at     time.Time
}

// tokenPool holds the tokens the issuers minted lately; load picks valid ones from it.
type tokenPool struct {
	mu      sync.Mutex
	toks    []minted
	revoked map[string]bool
	byKID   map[string]int
	rnd     *rand.Rand
}

func newTokenPool() *tokenPool {
	return &tokenPool{revoked: map[string]bool{}, byKID: map[string]int{}, rnd: rand.New(rand.NewPCG(1, 2))}
}

func (p *tokenPool) add(issuerName, raw string) error {
	info, err := inspect(raw)
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.toks = append(p.toks, minted{raw: raw, kid: info.KID, exp: info.Exp, issuer: issuerName, at: time.Now()})
	if len(p.toks) > 200 {
		p.toks = slices.Delete(p.toks, 0, len(p.toks)-200)
	}
	p.byKID[info.KID]++
	return nil
}

// pick returns a random token that is valid for at least 2 more seconds and whose key is not
// revoked.
func (p *tokenPool) pick() (minted, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	limit := time.Now().Add(2 * time.Second)
	for range 20 {
		if len(p.toks) == 0 {
			return minted{}, false
		}
		m := p.toks[p.rnd.IntN(len(p.toks))]
		if m.exp.After(limit) && !p.revoked[m.kid] {
			return m, true
		}
	}
	for i := len(p.toks) - 1; i >= 0; i-- {
		if m := p.toks[i]; m.exp.After(limit) && !p.revoked[m.kid] {
			return m, true
		}
	}
	return minted{}, false
}

// latest returns the newest token signed by kid.
func (p *tokenPool) latest(kid string) (minted, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := len(p.toks) - 1; i >= 0; i-- {
		if p.toks[i].kid == kid {
			return p.toks[i], true
		}
	}
	return minted{}, false
}

func (p *tokenPool) revoke(kid string) {
	p.mu.Lock()
	p.revoked[kid] = true
	p.mu.Unlock()
}

func (p *tokenPool) kids() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]int{}
	for k, v := range p.byKID {
		out[k] = v
	}
	return out
}

// mintLoop asks each issuer for a client_credentials token every interval until ctx ends,
// and counts the answers that were not tokens.
type mintStats struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	failures   map[string]int
}

func (s *mintStats) fail(what string) {
	s.failed.Add(1)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failures == nil {
		s.failures = map[string]int{}
	}
	s.failures[what]++
}

func mintLoop(ctx context.Context, pool *tokenPool, interval time.Duration, bases map[string]string) *mintStats {
	st := &mintStats{}
	for name, base := range bases {
		go func() {
			tick := time.NewTicker(interval)
			defer tick.Stop()
			for {
				tok, a := clientCredentials(ctx, base)
				if ctx.Err() != nil {
					return
				}
				if tok == "" {
					st.fail(name + ": " + shortAnswer(a))
				} else if err := pool.add(name, tok); err != nil {
					st.fail(name + ": " + err.Error())
				} else {
					st.ok.Add(1)
				}
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
			}
		}()
	}
	return st
}

func shortAnswer(a answer) string {
	if a.err != nil {
		s := a.err.Error()
		if i := strings.LastIndex(s, ": "); i >= 0 {
			s = s[i+2:]
		}
		return s
	}
	return fmt.Sprintf("%d %s", a.status, a.body)
}

// loadStats counts the answers of a load run.
type loadStats struct {
	mu       sync.Mutex
	sent     int
	byStatus map[int]int
	errors   map[string]int
	noToken  int
	dropped  int
	// refusals are up to 20 examples of valid tokens refused.
	refusals []string
}

func (s *loadStats) record(status int, err error, detail string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sent++
	if err != nil {
		if s.errors == nil {
			s.errors = map[string]int{}
		}
		s.errors[shortAnswer(answer{err: err})]++
		return
	}
	if s.byStatus == nil {
		s.byStatus = map[int]int{}
	}
	s.byStatus[status]++
	if status != http.StatusOK && len(s.refusals) < 20 {
		s.refusals = append(s.refusals, fmt.Sprintf("%s: %d %s", time.Now().Format("15:04:05.000"), status, detail))
	}
}

// notOK is every answer but a 200, transport errors included.
func (s *loadStats) notOK() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.sent - s.byStatus[http.StatusOK]
	return n
}

func (s *loadStats) fiveXX() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for st, c := range s.byStatus {
		if st >= 500 {
			n += c
		}
	}
	return n
}

func (s *loadStats) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return fmt.Sprintf("sent %d, by status %v, transport errors %v, skipped (no valid token) %d, dropped (workers busy) %d",
		s.sent, s.byStatus, s.errors, s.noToken, s.dropped)
}

// runLoad calls do at rate per second with up to workers in flight until ctx ends, and
// returns once every call has finished. do gets a valid token from pool.
func runLoad(ctx context.Context, rate, workers int, pool *tokenPool, do func(ctx context.Context, m minted) (int, error)) *loadStats {
	st := &loadStats{}
	jobs := make(chan struct{}, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range jobs {
				m, ok := pool.pick()
				if !ok {
					st.mu.Lock()
					st.noToken++
					st.mu.Unlock()
					continue
				}
				// The request outlives ctx: a request in flight when the load stops completes.
				rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
				status, err := do(rctx, m)
				cancel()
				st.record(status, err, fmt.Sprintf("issuer %s kid %s minted %s exp %s", m.issuer, m.kid,
					m.at.Format("15:04:05.000"), m.exp.Format("15:04:05")))
			}
		})
	}
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			close(jobs)
			wg.Wait()
			return st
		case <-tick.C:
			select {
			case jobs <- struct{}{}:
			default:
				st.mu.Lock()
				st.dropped++
				st.mu.Unlock()
			}
		}
	}
}

// keyWatch samples SigningKeys' status and key-set Secrets while a test runs: at most one
// Active key and no kid twice, in every sample; and it keeps a signer for every key it saw.
type keyWatch struct {
	mu         sync.Mutex
	samples    int
	violations []string
	signers    map[string]*token.Signer
	owner      map[string]string // kid -> SigningKey name
	stop       func()
}

func watchKeys(t *testing.T, ns string, names ...string) *keyWatch {
	w := &keyWatch{signers: map[string]*token.Signer{}, owner: map[string]string{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			for _, n := range names {
				w.sample(ctx, ns, n)
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	w.stop = func() { cancel(); <-done }
	t.Cleanup(w.stop)
	return w
}

func (w *keyWatch) sample(ctx context.Context, ns, name string) {
	var sk keywardv1.SigningKey
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &sk); err != nil {
		return // the API may be down on purpose
	}
	var sec corev1.Secret
	secErr := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: name + "-keyset"}, &sec)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.samples++
	seen, active := map[string]bool{}, 0
	for _, k := range sk.Status.Keys {
		if seen[k.KID] {
			w.violations = append(w.violations, fmt.Sprintf("%s: kid %s twice in status.keys", name, k.KID))
		}
		seen[k.KID] = true
		if k.State == keywardv1.KeyStateActive {
			active++
		}
	}
	if active > 1 {
		w.violations = append(w.violations, fmt.Sprintf("%s: %d Active keys in status.keys", name, active))
	}
	if secErr != nil {
		return
	}
	ks, err := keys.ParseKeySet(sec.Data[keywardv1.KeySetDataKey])
	if err != nil {
		return
	}
	active = 0
	for i := range ks.Keys {
		k := &ks.Keys[i]
		if k.State() == keywardv1.KeyStateActive {
			active++
		}
		if _, ok := w.signers[k.KID]; ok || k.PublicOnly {
			continue
		}
		if s, err := token.NewSigner(k); err == nil {
			w.signers[k.KID] = s
			w.owner[k.KID] = name
		}
	}
	if active > 1 {
		w.violations = append(w.violations, fmt.Sprintf("%s: %d Active keys in the key-set Secret", name, active))
	}
}

func (w *keyWatch) signer(kid string) *token.Signer {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.signers[kid]
}

// forge signs a fresh access token (valid for a minute) of issuer ns/name with the key kid,
// as only the issuer could: the test kept the private key from the key-set Secret.
func (w *keyWatch) forge(t *testing.T, ns, name, kid string) string {
	t.Helper()
	raw, err := w.tryForge(ns, name, kid)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// tryForge is forge for goroutines other than the test's.
func (w *keyWatch) tryForge(ns, name, kid string) (string, error) {
	s := w.signer(kid)
	if s == nil {
		return "", fmt.Errorf("no private key seen for kid %s", kid)
	}
	now := time.Now()
	// Valid for 5 s, within every test issuer's access-token lifetime: validators refuse a
	// token that outlives it.
	return s.Sign(token.TypeAccess, &token.Claims{
		Issuer: publicURL + "/" + ns + "/" + name, Subject: clientID, Audience: []string{"api"},
		ExpiresAt: now.Add(5 * time.Second), IssuedAt: now, ID: fmt.Sprintf("forged-%d", now.UnixNano()),
		ClientID: clientID, Scope: "read", TokenType: token.TokenTypeAccess,
	})
}

// signingKey reads a SigningKey.
func signingKey(t *testing.T, ns, name string) *keywardv1.SigningKey {
	t.Helper()
	var sk keywardv1.SigningKey
	if err := k8s.Get(withTimeout(t), client.ObjectKey{Namespace: ns, Name: name}, &sk); err != nil {
		t.Fatal(err)
	}
	return &sk
}

// activeKID is the kid of the Active key in a SigningKey's status ("" when none).
func activeKID(sk *keywardv1.SigningKey) string {
	for _, k := range sk.Status.Keys {
		if k.State == keywardv1.KeyStateActive {
			return k.KID
		}
	}
	return ""
}

// waitIssuerReady waits until the issuer process mints tokens for the TokenIssuer.
func waitIssuerReady(t *testing.T, base string) {
	t.Helper()
	eventually(t, 60*time.Second, base+" mints tokens", func() error {
		if tok, a := clientCredentials(t.Context(), base); tok == "" {
			return errors.New(shortAnswer(a))
		}
		return nil
	})
}

// waitAllowed waits until a validator allows a token.
func waitAllowed(t *testing.T, addr, tok string) {
	t.Helper()
	eventually(t, 30*time.Second, "the validator allows a fresh token", func() error {
		st, err := check(t.Context(), addr, tok)
		if err != nil {
			return err
		}
		if st != http.StatusOK {
			return fmt.Errorf("status %d", st)
		}
		return nil
	})
}
