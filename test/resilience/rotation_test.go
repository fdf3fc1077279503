package resilience

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
)

// Rotation every 20 s: rotation.every cannot be under 1m (CRD rule), so three SigningKeys
// (each with its TokenIssuer) rotate every minute, created 20 s apart: a key somewhere
// becomes Active every 20 s. Access tokens live 10 s and refresh tokens 20 s with zero
// leeway, so a Retired key is removed 20 s after it retires. For the whole run the test
// mints tokens from the issuer (client_credentials, every 200 ms per TokenIssuer) and sends
// 100 requests/s with them to the validator: none may be refused. Along the way it revokes a
// Retired key whose tokens are still unexpired (spec.revokedKeyIDs) and, at the end, checks
// that tokens signed with removed and revoked keys are refused.
func TestKeyRotationUnderLoad(t *testing.T) {
	const (
		ns      = "rotation"
		stagger = 20 * time.Second
		runFor  = 170 * time.Second // from the first SigningKey
		rate    = 100
	)
	specs := []issuerSpec{
		{name: "k0", every: time.Minute, prepublish: 5 * time.Second, access: 10 * time.Second, refresh: 20 * time.Second},
		{name: "k1", every: time.Minute, prepublish: 5 * time.Second, access: 10 * time.Second, refresh: 20 * time.Second},
		{name: "k2", every: time.Minute, prepublish: 5 * time.Second, access: 10 * time.Second, refresh: 20 * time.Second},
	}
	createNamespace(t, ns)
	deleteKeywardObjects(t, ns)
	startKeyward(t, "controller", "controller", "--leader-elect=false")
	iss := startKeyward(t, "issuer", "issuer")
	val := startKeyward(t, "validator", "validator")
	for _, s := range specs {
		createIssuer(t, ns, s)
	}
	createPolicy(t, ns, "k0", "k1", "k2")

	start := time.Now()
	createSigningKey(t, ns, specs[0])
	watch := watchKeys(t, ns, "k0", "k1", "k2")
	base := func(name string) string { return issuerBase(iss.httpAddr, ns, name) }
	waitIssuerReady(t, base("k0"))
	val.waitReady(t, 30*time.Second)

	ctx, cancel := context.WithDeadline(t.Context(), start.Add(runFor))
	defer cancel()
	pool := newTokenPool()
	mints := []*mintStats{mintLoop(ctx, pool, 200*time.Millisecond, map[string]string{"k0": base("k0")})}
	first, _ := clientCredentials(t.Context(), base("k0"))
	waitAllowed(t, val.httpAddr, first)

	// The other SigningKeys, 20 s apart; each TokenIssuer joins the minting once it can sign.
	staggered := make(chan *mintStats, len(specs))
	go func() {
		defer close(staggered)
		for i, s := range specs[1:] {
			select {
			case <-time.After(time.Until(start.Add(time.Duration(i+1) * stagger))):
			case <-ctx.Done():
				return
			}
			if err := k8s.Create(ctx, signingKeyObject(ns, s)); err != nil {
				t.Errorf("cannot create SigningKey %s: %v", s.name, err)
				return
			}
			for ctx.Err() == nil {
				if tok, _ := clientCredentials(ctx, base(s.name)); tok != "" {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			staggered <- mintLoop(ctx, pool, 200*time.Millisecond, map[string]string{s.name: base(s.name)})
		}
	}()

	// Revoke k0's Retired key once k0 has rotated (at about 60 s), while tokens it signed are
	// still unexpired.
	revoked := make(chan revocation, 1)
	go func() { revoked <- revokeRetired(ctx, ns, "k0", watch, pool, val.httpAddr) }()

	load := runLoad(ctx, rate, 16, pool, func(ctx context.Context, m minted) (int, error) {
		return check(ctx, val.httpAddr, m.raw)
	})
	for m := range staggered {
		mints = append(mints, m)
	}
	rev := <-revoked
	elapsed := time.Since(start)
	watch.stop()

	t.Logf("load: %s over %s", load, elapsed.Round(time.Second))
	for name, n := range pool.kids() {
		t.Logf("tokens minted with kid %s (SigningKey %s): %d", name, watch.owner[name], n)
	}
	var minted, mintFailed int64
	for _, m := range mints {
		minted += m.ok.Load()
		mintFailed += m.failed.Load()
		if len(m.failures) > 0 {
			t.Errorf("the issuer did not mint: %v", m.failures)
		}
	}
	t.Logf("tokens minted: %d, mint failures: %d", minted, mintFailed)
	if n := load.notOK(); n != 0 {
		t.Errorf("%d valid tokens were refused (or failed): %v", n, load.refusals)
	}
	if load.sent < rate*int(runFor/time.Second)/2 {
		t.Errorf("only %d requests were made", load.sent)
	}
	if len(watch.violations) > 0 {
		t.Errorf("key-set violations in %d samples: %v", watch.samples, watch.violations)
	}

	// Rotations: every SigningKey's keys, as the watch saw them.
	activations := 0
	for _, s := range specs {
		sk := signingKey(t, ns, s.name)
		kids := 0
		for _, owner := range watch.owner {
			if owner == s.name {
				kids++
			}
		}
		activations += kids - 1
		t.Logf("SigningKey %s: %d keys seen, status %s", s.name, kids, keySummary(sk))
	}
	t.Logf("rotations (keys that took over signing) during the run: %d", activations)
	if activations < 5 {
		t.Errorf("only %d rotations in %s; want at least 5", activations, elapsed.Round(time.Second))
	}

	// Revoked: refused.
	if rev.err != "" {
		t.Error(rev.err)
	} else {
		t.Logf("revoked key %s: refused at the validator %s after the spec change (forged token and the issuer's own token %v)",
			rev.kid, rev.took.Round(time.Millisecond), rev.issuerToken)
	}
	// Removed: refused, while tokens forged the same way with published keys pass.
	removed, published := 0, 0
	for _, s := range specs {
		sk := signingKey(t, ns, s.name)
		inStatus := map[string]bool{}
		for _, k := range sk.Status.Keys {
			inStatus[k.KID] = true
		}
		for kid, owner := range watch.owner {
			if owner != s.name || kid == rev.kid {
				continue
			}
			tok := watch.forge(t, ns, s.name, kid)
			st, err := check(t.Context(), val.httpAddr, tok)
			if err != nil {
				t.Fatal(err)
			}
			if inStatus[kid] {
				published++
				if st != http.StatusOK {
					t.Errorf("a fresh token signed with published key %s of %s: %d, want 200", kid, s.name, st)
				}
				continue
			}
			removed++
			if st != http.StatusUnauthorized {
				t.Errorf("a fresh token signed with removed key %s of %s: %d, want 401", kid, s.name, st)
			}
		}
	}
	t.Logf("fresh tokens signed with removed keys: %d, all refused; with published keys: %d, all allowed", removed, published)
	if removed == 0 {
		t.Error("no key was removed during the run")
	}
}

func signingKeyObject(ns string, s issuerSpec) *keywardv1.SigningKey {
	sk := &keywardv1.SigningKey{}
	sk.Namespace, sk.Name = ns, s.name
	sk.Spec.Algorithm = keywardv1.AlgorithmES256
	sk.Spec.Rotation.Every.Duration = orDefault(s.every, 720*time.Hour)
	sk.Spec.Rotation.Prepublish.Duration = orDefault(s.prepublish, 10*time.Minute)
	return sk
}

// keySummary is a SigningKey's status.keys as "kid[:8] state activatedAt..retiredAt".
func keySummary(sk *keywardv1.SigningKey) string {
	ks := append([]keywardv1.KeyStatus(nil), sk.Status.Keys...)
	sort.Slice(ks, func(i, j int) bool { return ks[i].PublishedAt.Before(&ks[j].PublishedAt) })
	out := ""
	for _, k := range ks {
		out += fmt.Sprintf("[%s %s", k.KID[:8], k.State)
		if k.ActivatedAt != nil {
			out += " active " + k.ActivatedAt.Format("15:04:05")
		}
		if k.RetiredAt != nil {
			out += " retired " + k.RetiredAt.Format("15:04:05")
		}
		out += "] "
	}
	return out
}

type revocation struct {
	kid         string
	took        time.Duration
	issuerToken bool // an unexpired token the issuer minted with the key was refused too
	err         string
}

// revokeRetired waits for name's first Retired key, checks that a token signed with it is
// accepted, revokes it, and measures how long until the validator refuses tokens signed with it.
func revokeRetired(ctx context.Context, ns, name string, watch *keyWatch, pool *tokenPool, validator string) revocation {
	var kid string
	for kid == "" {
		if ctx.Err() != nil {
			return revocation{err: "no Retired key to revoke before the end of the run"}
		}
		var sk keywardv1.SigningKey
		if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &sk); err == nil {
			for _, k := range sk.Status.Keys {
				if k.State == keywardv1.KeyStateRetired {
					kid = k.KID
				}
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	forged, err := watch.tryForge(ns, name, kid)
	if err != nil {
		return revocation{kid: kid, err: err.Error()}
	}
	if st, err := check(ctx, validator, forged); err != nil || st != http.StatusOK {
		return revocation{kid: kid, err: fmt.Sprintf("before revocation, a token signed with Retired key %s: %d %v, want 200", kid, st, err)}
	}
	own, hasOwn := pool.latest(kid)
	hasOwn = hasOwn && time.Until(own.exp) > 3*time.Second
	pool.revoke(kid)
	var sk keywardv1.SigningKey
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &sk); err != nil {
		return revocation{kid: kid, err: err.Error()}
	}
	patch := client.MergeFrom(sk.DeepCopy())
	sk.Spec.RevokedKeyIDs = []string{kid}
	start := time.Now()
	if err := k8s.Patch(ctx, &sk, patch); err != nil {
		return revocation{kid: kid, err: fmt.Sprintf("cannot revoke %s: %v", kid, err)}
	}
	for time.Since(start) < 10*time.Second {
		st, err := check(ctx, validator, forged)
		if err == nil && st == http.StatusUnauthorized {
			took := time.Since(start)
			if hasOwn {
				if st, err := check(ctx, validator, own.raw); err != nil || st != http.StatusUnauthorized {
					return revocation{kid: kid, err: fmt.Sprintf("an unexpired issuer token of revoked key %s: %d %v, want 401", kid, st, err)}
				}
			}
			return revocation{kid: kid, took: took, issuerToken: hasOwn}
		}
		time.Sleep(10 * time.Millisecond)
	}
	return revocation{kid: kid, err: fmt.Sprintf("tokens of revoked key %s still accepted 10 s after the revocation", kid)}
}
