package resilience

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
)

// Two `keyward issuer` processes serve one TokenIssuer. Twelve clients log in and refresh
// as fast as the issuers answer, alternating between the two; one issuer is killed with
// SIGKILL in the middle of it and started again 3 s later. A client whose refresh fails in
// transport retries the same refresh token at the other issuer at once (within the 5 s reuse
// grace), as a client library would. Every token pair a client received must keep working:
// its access token validates at the validator, the last refresh token refreshes, and no
// Session is left half-rotated (its current generation and jti are the client's latest, it is
// not revoked).
func TestIssuerKilledDuringRefreshes(t *testing.T) {
	const (
		ns      = "issuerkill"
		clients = 12
		killAt  = 4 * time.Second
		restart = 3 * time.Second
		runFor  = 12 * time.Second
	)
	spec := issuerSpec{name: "r0", access: 2 * time.Minute, refresh: 10 * time.Minute}
	createNamespace(t, ns)
	deleteKeywardObjects(t, ns)
	startKeyward(t, "controller", "controller", "--leader-elect=false")
	issuers := []*kwProc{startKeyward(t, "issuer-a", "issuer"), startKeyward(t, "issuer-b", "issuer")}
	val := startKeyward(t, "validator", "validator")
	createIssuer(t, ns, spec)
	createPolicy(t, ns, spec.name)
	createSigningKey(t, ns, spec)
	bases := []string{issuerBase(issuers[0].httpAddr, ns, spec.name), issuerBase(issuers[1].httpAddr, ns, spec.name)}
	for _, b := range bases {
		waitIssuerReady(t, b)
	}
	val.waitReady(t, 30*time.Second)

	type clientRun struct {
		pairs    []pair
		retries  int
		failures []string
	}
	runs := make([]*clientRun, clients)
	var inflight [2]atomic.Int32
	var refreshes atomic.Int64
	ctx, cancel := context.WithTimeout(t.Context(), runFor)
	defer cancel()
	var wg sync.WaitGroup
	for i := range clients {
		r := &clientRun{}
		runs[i] = r
		c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{}}
		p, a := login(t.Context(), bases[i%2])
		if a.status != http.StatusOK {
			t.Fatalf("client %d cannot log in: %s", i, a)
		}
		r.pairs = append(r.pairs, p)
		wg.Go(func() {
			for j := 0; ctx.Err() == nil; j++ {
				cur := r.pairs[len(r.pairs)-1]
				target := (i + j) % 2
				inflight[target].Add(1)
				next, a := refresh(context.WithoutCancel(ctx), c, bases[target], cur.refresh)
				inflight[target].Add(-1)
				refreshes.Add(1)
				// A transport error (the issuer died, or is down): retry at the other one.
				for tries := 0; a.err != nil && tries < 20; tries++ {
					r.retries++
					target = 1 - target
					next, a = refresh(context.WithoutCancel(ctx), c, bases[target], cur.refresh)
					refreshes.Add(1)
					if a.err != nil {
						time.Sleep(100 * time.Millisecond)
					}
				}
				if a.err != nil || a.status != http.StatusOK {
					r.failures = append(r.failures, fmt.Sprintf("refresh %d at issuer %d: %s", j, target, a))
					return
				}
				r.pairs = append(r.pairs, next)
			}
		})
	}
	time.Sleep(killAt)
	inFlightAtKill := inflight[0].Load()
	issuers[0].kill()
	killed := time.Now()
	time.Sleep(restart)
	if err := issuers[0].start(); err != nil {
		t.Fatal(err)
	}
	issuers[0].waitReady(t, 30*time.Second)
	restarted := time.Since(killed)
	wg.Wait()

	pairs, retries := 0, 0
	for i, r := range runs {
		pairs += len(r.pairs)
		retries += r.retries
		for _, f := range r.failures {
			t.Errorf("client %d: %s", i, f)
		}
	}
	t.Logf("%d refresh requests by %d clients, %d pairs received; issuer-a killed with %d refreshes in flight, serving again %s after the kill; %d refreshes retried at the other issuer",
		refreshes.Load(), clients, pairs, inFlightAtKill, restarted.Round(time.Millisecond), retries)

	// Every access token received validates.
	checked := 0
	for i, r := range runs {
		for j, p := range r.pairs {
			st, err := check(t.Context(), val.httpAddr, p.access)
			checked++
			if err != nil || st != http.StatusOK {
				t.Errorf("client %d pair %d: its access token: %d %v, want 200", i, j, st, err)
			}
		}
	}
	// Sessions: the current generation is the client's latest token, and nothing is revoked.
	for i, r := range runs {
		last := r.pairs[len(r.pairs)-1]
		info, err := inspect(last.refresh)
		if err != nil {
			t.Fatal(err)
		}
		var s keywardv1.Session
		if err := k8s.Get(withTimeout(t), client.ObjectKey{Namespace: ns, Name: info.SID}, &s); err != nil {
			t.Fatalf("client %d: session %s: %v", i, info.SID, err)
		}
		gen, jti := s.Status.RefreshGeneration, s.Status.RefreshTokenID
		if gen == 0 { // never rotated: generation 1 is implicit
			gen, jti = 1, info.SID+".1"
		}
		switch {
		case s.Spec.Revoked || s.Status.RevokedAt != nil:
			t.Errorf("client %d: session %s revoked (%s)", i, s.Name, s.Status.RevokedReason)
		case gen != info.Gen || jti != info.JTI:
			t.Errorf("client %d: session %s at generation %d jti %s; the client's latest refresh token is generation %d jti %s",
				i, s.Name, gen, jti, info.Gen, info.JTI)
		case gen > 1 && (s.Status.PreviousTokenID == "" || s.Status.RotatedAt == nil):
			t.Errorf("client %d: session %s half-rotated: %+v", i, s.Name, s.Status)
		}
		if int64(len(r.pairs)) != info.Gen {
			t.Errorf("client %d received %d pairs, its latest refresh token is generation %d", i, len(r.pairs), info.Gen)
		}
		// The latest refresh token refreshes, at either issuer.
		if _, a := refresh(t.Context(), apiClient, bases[i%2], last.refresh); a.status != http.StatusOK {
			t.Errorf("client %d: its latest refresh token: %s, want 200", i, a)
		}
	}
	t.Logf("access tokens checked at the validator: %d", checked)
}
