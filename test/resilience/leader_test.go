package resilience

import (
	"fmt"
	"sort"
	"testing"
	"time"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
)

const leaderMetric = "leader_election_master_status"

// isLeader reads a controller's leader-election gauge.
func isLeader(k *kwProc) bool {
	v, err := k.metric(leaderMetric, `name="keyward-controller.keyward.dev"`)
	return err == nil && v == "1"
}

// Two `keyward controller` processes elect a leader on a Lease. Three SigningKeys rotate every
// minute, created 20 s apart, so that a rotation is due somewhere every 20 s. The leader is
// killed with SIGKILL three times (a new standby is started after each kill): the standby
// takes over, and every SigningKey's keys follow the schedule: each successor activates one
// `every` after its predecessor (never earlier: no doubled rotation; never later than the
// takeover allows: no skipped rotation), at most one key is ever Active, and no kid appears
// twice.
func TestControllerLeaderKilled(t *testing.T) {
	const (
		ns      = "leader"
		every   = time.Minute
		stagger = 20 * time.Second
		kills   = 3
	)
	names := []string{"l0", "l1", "l2"}
	createNamespace(t, ns)
	deleteKeywardObjects(t, ns)
	n := 0
	newController := func() *kwProc {
		n++
		return startKeyward(t, fmt.Sprintf("controller-%d", n), "controller", "--leader-election-namespace", ns)
	}
	ctrls := []*kwProc{newController(), newController()}
	leader := func() *kwProc {
		for _, c := range ctrls {
			if c.running() && isLeader(c) {
				return c
			}
		}
		return nil
	}
	eventually(t, 60*time.Second, "a controller leads", func() error {
		if leader() == nil {
			return errString("no leader")
		}
		return nil
	})
	start := time.Now()
	created := make(chan error, 1)
	go func() {
		for i, name := range names {
			time.Sleep(time.Until(start.Add(time.Duration(i) * stagger)))
			if err := k8s.Create(t.Context(), signingKeyObject(ns, issuerSpec{name: name, every: every, prepublish: 5 * time.Second})); err != nil {
				created <- err
				return
			}
		}
		created <- nil
	}()
	watch := watchKeys(t, ns, names...)

	var takeovers []time.Duration
	for k := range kills {
		// Kills at about 30 s, 55 s and 80 s: each takeover window overlaps a due rotation of
		// one of the SigningKeys (due at 60, 80, 100, ... s).
		time.Sleep(time.Until(start.Add(30*time.Second + time.Duration(k)*25*time.Second)))
		old := leader()
		if old == nil {
			t.Fatalf("kill %d: no leader", k+1)
		}
		killed := time.Now()
		old.kill()
		ctrls = append(ctrls, newController())
		var next *kwProc
		eventually(t, 60*time.Second, "a standby takes over", func() error {
			if next = leader(); next == nil {
				return errString("no leader")
			}
			return nil
		})
		took := time.Since(killed)
		takeovers = append(takeovers, took)
		t.Logf("kill %d: %s killed at +%s, %s took over after %s", k+1, old.name, killed.Sub(start).Round(time.Second), next.name, took.Round(time.Millisecond))
	}
	if err := <-created; err != nil {
		t.Fatalf("cannot create a SigningKey: %v", err)
	}
	maxTakeover := takeovers[0]
	for _, d := range takeovers {
		maxTakeover = max(maxTakeover, d)
	}
	// Let every SigningKey rotate at least twice (three keys activated); the last takeover may
	// have delayed a SigningKey's first key, and so its schedule.
	eventually(t, 2*every+maxTakeover+10*time.Second, "every SigningKey has rotated twice", func() error {
		for _, name := range names {
			activated := 0
			for _, k := range signingKey(t, ns, name).Status.Keys {
				if k.ActivatedAt != nil {
					activated++
				}
			}
			if activated < 3 {
				return fmt.Errorf("%s: %d keys activated", name, activated)
			}
		}
		return nil
	})
	watch.stop()

	if len(watch.violations) > 0 {
		t.Errorf("violations in %d samples: %v", watch.samples, watch.violations)
	}
	// Status timestamps have a resolution of one second; a rotation may be late by the
	// takeover plus a reconcile.
	late := maxTakeover + 5*time.Second
	rotations := 0
	now := time.Now()
	for _, name := range names {
		sk := signingKey(t, ns, name)
		t.Logf("SigningKey %s: %s", name, keySummary(sk))
		ks := append([]keywardv1.KeyStatus(nil), sk.Status.Keys...)
		sort.Slice(ks, func(i, j int) bool { return ks[i].PublishedAt.Before(&ks[j].PublishedAt) })
		seen := map[string]bool{}
		var prev *keywardv1.KeyStatus
		for i := range ks {
			k := &ks[i]
			if seen[k.KID] {
				t.Errorf("%s: kid %s twice", name, k.KID)
			}
			seen[k.KID] = true
			if k.ActivatedAt == nil {
				continue
			}
			if prev != nil {
				rotations++
				gap := k.ActivatedAt.Sub(prev.ActivatedAt.Time)
				switch {
				case gap < every-time.Second:
					t.Errorf("%s: key %s activated %s after its predecessor, before the %s schedule (doubled rotation)", name, k.KID, gap, every)
				case gap > every+late:
					t.Errorf("%s: key %s activated %s after its predecessor; schedule %s, slowest takeover %s (skipped or late rotation)", name, k.KID, gap, every, maxTakeover)
				}
				if prev.RetiredAt == nil || prev.RetiredAt.Sub(k.ActivatedAt.Time).Abs() > time.Second {
					t.Errorf("%s: key %s retired at %v, its successor activated at %v", name, prev.KID, prev.RetiredAt, k.ActivatedAt)
				}
			}
			prev = k
		}
		if prev == nil || prev.State != keywardv1.KeyStateActive {
			t.Errorf("%s: the newest activated key is not Active", name)
		} else if since := now.Sub(prev.ActivatedAt.Time); since > every+late {
			t.Errorf("%s: the Active key has signed for %s, past its %s schedule (skipped rotation)", name, since, every)
		}
	}
	t.Logf("takeovers: %v; rotations checked against the schedule: %d", takeovers, rotations)
	if rotations < len(names)*2 {
		t.Errorf("only %d rotations happened; want at least %d", rotations, len(names)*2)
	}
}
