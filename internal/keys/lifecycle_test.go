package keys

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
)

// t0 is the injected clock's origin. Every instant in these tests is t0 plus an offset.
var t0 = time.Date(2026, time.March, 1, 12, 0, 0, 0, time.UTC)

func at(d time.Duration) time.Time { return t0.Add(d) }

const (
	every      = time.Hour
	prepublish = 10 * time.Minute
	retention  = 30 * time.Minute
)

// policy is the table's default policy (ES256, rotate every hour, prepublish 10m, retain 30m),
// changed by mods.
func policy(mods ...func(*Policy)) Policy {
	p := Policy{Algorithm: keywardv1.AlgorithmES256, Every: every, Prepublish: prepublish, Retention: retention}
	for _, mod := range mods {
		mod(&p)
	}
	return p
}

func revoking(kids ...string) func(*Policy) { return func(p *Policy) { p.Revoked = kids } }
func importing(kid string) func(*Policy)    { return func(p *Policy) { p.ImportKID = kid } }
func algorithm(a keywardv1.Algorithm) func(*Policy) {
	return func(p *Policy) { p.Algorithm = a }
}
func prepublishing(d time.Duration) func(*Policy) { return func(p *Policy) { p.Prepublish = d } }

// pendingKey is a generated ES256 key published at publishedAt that activates at activatesAt.
func pendingKey(kid string, publishedAt, activatesAt time.Time) Lifecycle {
	return Lifecycle{KID: kid, Algorithm: keywardv1.AlgorithmES256, PublishedAt: publishedAt, ActivatesAt: activatesAt}
}

// activeKey is a generated ES256 key published at publishedAt that has signed since activatedAt.
func activeKey(kid string, publishedAt, activatedAt time.Time) Lifecycle {
	return activated(pendingKey(kid, publishedAt, activatedAt), activatedAt)
}

// retiredKey is a generated ES256 key that signed from activatedAt to retiredAt and is
// published until retiredAt+retention.
func retiredKey(kid string, publishedAt, activatedAt, retiredAt time.Time) Lifecycle {
	return retired(activeKey(kid, publishedAt, activatedAt), retiredAt)
}

func activated(l Lifecycle, when time.Time) Lifecycle {
	l.ActivatedAt = &when
	return l
}

func retired(l Lifecycle, when time.Time) Lifecycle {
	removes := when.Add(retention)
	l.RetiredAt, l.RemovesAt = &when, &removes
	return l
}

func imported(l Lifecycle) Lifecycle {
	l.Imported = true
	return l
}

func withAlgorithm(l Lifecycle, a keywardv1.Algorithm) Lifecycle {
	l.Algorithm = a
	return l
}

// created is the Create of a plan: a key the caller makes, with no kid yet.
func created(a keywardv1.Algorithm, isImported bool, publishedAt, activatesAt time.Time, isActive bool) *Lifecycle {
	l := &Lifecycle{Algorithm: a, Imported: isImported, PublishedAt: publishedAt, ActivatesAt: activatesAt}
	if isActive {
		l.ActivatedAt = &activatesAt
	}
	return l
}

type decideTest struct {
	name       string
	current    []Lifecycle
	policy     Policy
	now        time.Time
	wantKeys   []Lifecycle // in publication order, without Create
	wantCreate *Lifecycle
	wantEvents []string // reasons, in order
	wantNextAt time.Time
	// noActive is set where the spec leaves nothing that may sign (a revoked import).
	noActive bool
}

func TestDecide(t *testing.T) {
	// A key "a" that has signed since t0 and was published prepublish before.
	a := activeKey("a", at(-prepublish), t0)
	// Its scheduled successor "b", published at every-prepublish, activating at every.
	b := pendingKey("b", at(every-prepublish), at(every))
	// "old" signed before "a" and is published until t0+retention.
	old := retiredKey("old", at(-every-prepublish), at(-every), t0)

	tests := []decideTest{
		// The ordinary life of a key set.
		{
			name:       "a new signing key gets its first key active at once",
			policy:     policy(),
			now:        t0,
			wantCreate: created(keywardv1.AlgorithmES256, false, t0, t0, true),
			wantNextAt: at(every - prepublish),
		},
		{
			name:       "a new signing key with another algorithm gets a first key of that algorithm",
			policy:     policy(algorithm(keywardv1.AlgorithmEdDSA)),
			now:        t0,
			wantCreate: created(keywardv1.AlgorithmEdDSA, false, t0, t0, true),
			wantNextAt: at(every - prepublish),
		},
		{
			name:       "an active key inside its period changes nothing",
			current:    []Lifecycle{a},
			policy:     policy(),
			now:        at(every - prepublish - time.Nanosecond),
			wantKeys:   []Lifecycle{a},
			wantNextAt: at(every - prepublish),
		},
		{
			name:       "an active key reaching every minus prepublish gets a pending successor that activates at every",
			current:    []Lifecycle{a},
			policy:     policy(),
			now:        at(every - prepublish),
			wantKeys:   []Lifecycle{a},
			wantCreate: created(keywardv1.AlgorithmES256, false, at(every-prepublish), at(every), false),
			wantNextAt: at(every),
		},
		{
			name:       "a successor published late still waits prepublish before it activates",
			current:    []Lifecycle{a},
			policy:     policy(),
			now:        at(every - time.Minute),
			wantKeys:   []Lifecycle{a},
			wantCreate: created(keywardv1.AlgorithmES256, false, at(every-time.Minute), at(every-time.Minute+prepublish), false),
			wantNextAt: at(every - time.Minute + prepublish),
		},
		{
			name:       "a pending successor waits for its activation time",
			current:    []Lifecycle{b, a},
			policy:     policy(),
			now:        at(every - time.Nanosecond),
			wantKeys:   []Lifecycle{a, b},
			wantNextAt: at(every),
		},
		{
			name:       "a pending successor activates on time and retires the key it replaces",
			current:    []Lifecycle{a, b},
			policy:     policy(),
			now:        at(every),
			wantKeys:   []Lifecycle{retired(a, at(every)), activated(b, at(every))},
			wantEvents: []string{"KeyRetired", "KeyActivated"},
			wantNextAt: at(every + retention),
		},
		{
			name:       "a retired key stays published until the instant before removesAt",
			current:    []Lifecycle{old, a},
			policy:     policy(),
			now:        at(retention - time.Nanosecond),
			wantKeys:   []Lifecycle{old, a},
			wantNextAt: at(retention),
		},
		{
			name:       "a retired key is removed when removesAt is reached",
			current:    []Lifecycle{old, a},
			policy:     policy(),
			now:        at(retention),
			wantKeys:   []Lifecycle{a},
			wantEvents: []string{"KeyRemoved"},
			wantNextAt: at(every - prepublish),
		},

		// Restarts and clocks.
		{
			name:       "a restart in the middle of a rotation promotes the overdue pending key",
			current:    []Lifecycle{a, b},
			policy:     policy(),
			now:        at(every + 3*time.Hour),
			wantKeys:   []Lifecycle{retired(a, at(every+3*time.Hour)), activated(b, at(every+3*time.Hour))},
			wantEvents: []string{"KeyRetired", "KeyActivated"},
			// The promoted key signs a full period from now, not from its stale schedule.
			wantNextAt: at(every + 3*time.Hour + retention),
		},
		{
			name:       "a restart after the retention of a retired key removes it and promotes the overdue pending key in one plan",
			current:    []Lifecycle{old, a, b},
			policy:     policy(),
			now:        at(2 * every),
			wantKeys:   []Lifecycle{retired(a, at(2*every)), activated(b, at(2*every))},
			wantEvents: []string{"KeyRemoved", "KeyRetired", "KeyActivated"},
			wantNextAt: at(2*every + retention),
		},
		{
			name:       "a clock that jumps far past every publishes a pending successor that still waits prepublish",
			current:    []Lifecycle{a},
			policy:     policy(),
			now:        at(100 * every),
			wantKeys:   []Lifecycle{a},
			wantCreate: created(keywardv1.AlgorithmES256, false, at(100*every), at(100*every+prepublish), false),
			wantNextAt: at(100*every + prepublish),
		},
		{
			name:       "a clock that jumps backward removes no retired key early",
			current:    []Lifecycle{old, a},
			policy:     policy(),
			now:        at(-24 * time.Hour),
			wantKeys:   []Lifecycle{old, a},
			wantNextAt: at(retention),
		},
		{
			name:       "a clock that jumps backward before the active key's activation neither activates the pending key nor creates another",
			current:    []Lifecycle{old, a, b},
			policy:     policy(),
			now:        at(-24 * time.Hour),
			wantKeys:   []Lifecycle{old, a, b},
			wantNextAt: at(retention),
		},
		{
			name: "a clock that jumps backward just after a promotion keeps the promoted key the only active one",
			current: []Lifecycle{
				retired(a, at(every)), activated(b, at(every)),
			},
			policy: policy(),
			now:    at(every - 5*time.Minute),
			wantKeys: []Lifecycle{
				retired(a, at(every)), activated(b, at(every)),
			},
			wantNextAt: at(every + retention),
		},

		// Revocation.
		{
			name:       "a revoked active key with a pending successor hands signing to the successor at once",
			current:    []Lifecycle{a, b},
			policy:     policy(revoking("a")),
			now:        at(every - 8*time.Minute),
			wantKeys:   []Lifecycle{activated(b, at(every-8*time.Minute))},
			wantEvents: []string{"KeyRevoked", "KeyActivated"},
			wantNextAt: at(2*every - 8*time.Minute - prepublish),
		},
		{
			name:       "a revoked active key without a successor is replaced by a new key active at once",
			current:    []Lifecycle{old, a},
			policy:     policy(revoking("a")),
			now:        at(5 * time.Minute),
			wantKeys:   []Lifecycle{old},
			wantCreate: created(keywardv1.AlgorithmES256, false, at(5*time.Minute), at(5*time.Minute), true),
			wantEvents: []string{"KeyRevoked"},
			wantNextAt: at(retention),
		},
		{
			name:       "a revoked active key whose pending successor has the old algorithm is replaced by a new key active at once",
			current:    []Lifecycle{a, b},
			policy:     policy(revoking("a"), algorithm(keywardv1.AlgorithmES384)),
			now:        at(every - 8*time.Minute),
			wantCreate: created(keywardv1.AlgorithmES384, false, at(every-8*time.Minute), at(every-8*time.Minute), true),
			wantEvents: []string{"KeyRevoked", "KeyWithdrawn"},
			wantNextAt: at(2*every - 8*time.Minute - prepublish),
		},
		{
			name:       "a revoked retired key leaves the published set at once",
			current:    []Lifecycle{old, a},
			policy:     policy(revoking("old")),
			now:        at(time.Minute),
			wantKeys:   []Lifecycle{a},
			wantEvents: []string{"KeyRevoked"},
			wantNextAt: at(every - prepublish),
		},
		{
			name:       "a revoked pending key is withdrawn at once and a new successor waits a full prepublish",
			current:    []Lifecycle{a, b},
			policy:     policy(revoking("b")),
			now:        at(every - 2*time.Minute),
			wantKeys:   []Lifecycle{a},
			wantCreate: created(keywardv1.AlgorithmES256, false, at(every-2*time.Minute), at(every-2*time.Minute+prepublish), false),
			wantEvents: []string{"KeyRevoked"},
			wantNextAt: at(every - 2*time.Minute + prepublish),
		},
		{
			name:       "a revoked kid that is not in the set changes nothing",
			current:    []Lifecycle{a},
			policy:     policy(revoking("gone")),
			now:        at(time.Minute),
			wantKeys:   []Lifecycle{a},
			wantNextAt: at(every - prepublish),
		},

		// Damaged or raced stores.
		{
			name: "a damaged set with two active keys keeps only the most recently activated one",
			current: []Lifecycle{
				activeKey("newer", at(-5*time.Minute), at(5*time.Minute)), a,
			},
			policy: policy(),
			now:    at(10 * time.Minute),
			wantKeys: []Lifecycle{
				retired(a, at(10*time.Minute)), activeKey("newer", at(-5*time.Minute), at(5*time.Minute)),
			},
			wantEvents: []string{"KeyRetired"},
			wantNextAt: at(10*time.Minute + retention),
		},
		{
			name: "a damaged set with three active keys and a due pending key ends with exactly the pending key active",
			current: []Lifecycle{
				activeKey("x", at(-3*time.Hour), at(-2*time.Hour)),
				activeKey("y", at(-2*time.Hour), at(-time.Hour)),
				a, b,
			},
			policy: policy(),
			now:    at(every),
			wantKeys: []Lifecycle{
				retired(activeKey("x", at(-3*time.Hour), at(-2*time.Hour)), at(every)),
				retired(activeKey("y", at(-2*time.Hour), at(-time.Hour)), at(every)),
				retired(a, at(every)),
				activated(b, at(every)),
			},
			wantEvents: []string{"KeyRetired", "KeyRetired", "KeyRetired", "KeyActivated"},
			wantNextAt: at(every + retention),
		},
		{
			name:       "two pending keys written by racing reconcilers are reduced to the newest",
			current:    []Lifecycle{b, pendingKey("b2", at(every-prepublish+time.Second), at(every+time.Second)), a},
			policy:     policy(),
			now:        at(every - prepublish + 2*time.Second),
			wantKeys:   []Lifecycle{a, pendingKey("b2", at(every-prepublish+time.Second), at(every+time.Second))},
			wantEvents: []string{"KeyWithdrawn"},
			wantNextAt: at(every + time.Second),
		},

		// Imports.
		{
			name:       "a new signing key with an import makes the imported key active at once",
			policy:     policy(importing("imp")),
			now:        t0,
			wantCreate: created(keywardv1.AlgorithmES256, true, t0, t0, true),
		},
		{
			name:       "an import added to a generated key set publishes the imported key for prepublish first",
			current:    []Lifecycle{a},
			policy:     policy(importing("imp")),
			now:        at(time.Minute),
			wantKeys:   []Lifecycle{a},
			wantCreate: created(keywardv1.AlgorithmES256, true, at(time.Minute), at(time.Minute+prepublish), false),
			wantNextAt: at(time.Minute + prepublish),
		},
		{
			name:       "an imported pending key activates after prepublish and retires the generated key",
			current:    []Lifecycle{a, imported(pendingKey("imp", at(time.Minute), at(time.Minute+prepublish)))},
			policy:     policy(importing("imp")),
			now:        at(time.Minute + prepublish),
			wantKeys:   []Lifecycle{retired(a, at(time.Minute+prepublish)), activated(imported(pendingKey("imp", at(time.Minute), at(time.Minute+prepublish))), at(time.Minute+prepublish))},
			wantEvents: []string{"KeyRetired", "KeyActivated"},
			wantNextAt: at(time.Minute + prepublish + retention),
		},
		{
			name:       "an imported active key is never rotated on schedule",
			current:    []Lifecycle{imported(activeKey("imp", at(-prepublish), t0))},
			policy:     policy(importing("imp")),
			now:        at(1000 * every),
			wantKeys:   []Lifecycle{imported(activeKey("imp", at(-prepublish), t0))},
			wantNextAt: time.Time{},
		},
		{
			name:       "an import changed to another key publishes the new key for prepublish first",
			current:    []Lifecycle{imported(activeKey("imp", at(-prepublish), t0))},
			policy:     policy(importing("imp2")),
			now:        at(time.Minute),
			wantKeys:   []Lifecycle{imported(activeKey("imp", at(-prepublish), t0))},
			wantCreate: created(keywardv1.AlgorithmES256, true, at(time.Minute), at(time.Minute+prepublish), false),
			wantNextAt: at(time.Minute + prepublish),
		},
		{
			name:       "an import changed while the previous import is pending withdraws it and publishes the new one",
			current:    []Lifecycle{a, imported(pendingKey("imp", at(time.Minute), at(time.Minute+prepublish)))},
			policy:     policy(importing("imp2")),
			now:        at(2 * time.Minute),
			wantKeys:   []Lifecycle{a},
			wantCreate: created(keywardv1.AlgorithmES256, true, at(2*time.Minute), at(2*time.Minute+prepublish), false),
			wantEvents: []string{"KeyWithdrawn"},
			wantNextAt: at(2*time.Minute + prepublish),
		},
		{
			name:       "an import removed publishes a generated successor for prepublish first",
			current:    []Lifecycle{imported(activeKey("imp", at(-prepublish), t0))},
			policy:     policy(),
			now:        at(1000 * every),
			wantKeys:   []Lifecycle{imported(activeKey("imp", at(-prepublish), t0))},
			wantCreate: created(keywardv1.AlgorithmES256, false, at(1000*every), at(1000*every+prepublish), false),
			wantNextAt: at(1000*every + prepublish),
		},
		{
			name:       "an import removed while the imported key is pending withdraws it and keeps the generated schedule",
			current:    []Lifecycle{a, imported(pendingKey("imp", at(time.Minute), at(time.Minute+prepublish)))},
			policy:     policy(),
			now:        at(2 * time.Minute),
			wantKeys:   []Lifecycle{a},
			wantEvents: []string{"KeyWithdrawn"},
			wantNextAt: at(every - prepublish),
		},
		{
			name: "an import switched back to a key that is still retired reinstates it for prepublish instead of importing it twice",
			current: []Lifecycle{
				imported(retiredKey("imp", at(-2*time.Hour), at(-time.Hour), t0)),
				imported(activeKey("imp2", at(-prepublish), t0)),
			},
			policy: policy(importing("imp")),
			now:    at(time.Minute),
			wantKeys: []Lifecycle{
				imported(pendingKey("imp", at(-2*time.Hour), at(time.Minute+prepublish))),
				imported(activeKey("imp2", at(-prepublish), t0)),
			},
			wantEvents: []string{"KeyReinstated"},
			wantNextAt: at(time.Minute + prepublish),
		},
		{
			name:     "a revoked imported active key is not imported again while the spec still names it",
			current:  []Lifecycle{imported(activeKey("imp", at(-prepublish), t0))},
			policy:   policy(importing("imp"), revoking("imp")),
			now:      at(time.Minute),
			wantKeys: []Lifecycle{},
			// Nothing may sign: the spec asks for a compromised key only.
			wantEvents: []string{"KeyRevoked"},
			noActive:   true,
		},
		{
			name:       "a revoked import is not published as the successor of a generated key",
			current:    []Lifecycle{a},
			policy:     policy(importing("imp"), revoking("imp")),
			now:        at(time.Minute),
			wantKeys:   []Lifecycle{a},
			wantNextAt: time.Time{},
		},

		// Algorithm changes.
		{
			name:       "an algorithm change publishes a successor of the new algorithm for prepublish first",
			current:    []Lifecycle{a},
			policy:     policy(algorithm(keywardv1.AlgorithmES384)),
			now:        at(time.Minute),
			wantKeys:   []Lifecycle{a},
			wantCreate: created(keywardv1.AlgorithmES384, false, at(time.Minute), at(time.Minute+prepublish), false),
			wantNextAt: at(time.Minute + prepublish),
		},
		{
			name:       "an algorithm change withdraws a pending successor of the old algorithm",
			current:    []Lifecycle{a, b},
			policy:     policy(algorithm(keywardv1.AlgorithmRS256)),
			now:        at(every - 5*time.Minute),
			wantKeys:   []Lifecycle{a},
			wantCreate: created(keywardv1.AlgorithmRS256, false, at(every-5*time.Minute), at(every-5*time.Minute+prepublish), false),
			wantEvents: []string{"KeyWithdrawn"},
			wantNextAt: at(every - 5*time.Minute + prepublish),
		},
		{
			name:       "an algorithm changed back before its successor activated withdraws the successor and returns to the schedule",
			current:    []Lifecycle{a, withAlgorithm(pendingKey("c", at(time.Minute), at(time.Minute+prepublish)), keywardv1.AlgorithmES384)},
			policy:     policy(),
			now:        at(2 * time.Minute),
			wantKeys:   []Lifecycle{a},
			wantEvents: []string{"KeyWithdrawn"},
			wantNextAt: at(every - prepublish),
		},
		{
			name: "a successor of the new algorithm activates after prepublish and retires the old-algorithm key",
			current: []Lifecycle{
				a, withAlgorithm(pendingKey("c", at(time.Minute), at(time.Minute+prepublish)), keywardv1.AlgorithmES384),
			},
			policy: policy(algorithm(keywardv1.AlgorithmES384)),
			now:    at(time.Minute + prepublish),
			wantKeys: []Lifecycle{
				retired(a, at(time.Minute+prepublish)),
				activated(withAlgorithm(pendingKey("c", at(time.Minute), at(time.Minute+prepublish)), keywardv1.AlgorithmES384), at(time.Minute+prepublish)),
			},
			wantEvents: []string{"KeyRetired", "KeyActivated"},
			wantNextAt: at(time.Minute + prepublish + retention),
		},

		// Prepublish changes.
		{
			name:       "a prepublish raised while a successor is pending delays its activation until it was published that long",
			current:    []Lifecycle{a, b},
			policy:     policy(prepublishing(20 * time.Minute)),
			now:        at(every),
			wantKeys:   []Lifecycle{a, pendingKey("b", at(every-prepublish), at(every+10*time.Minute))},
			wantEvents: []string{"KeyRescheduled"},
			wantNextAt: at(every + 10*time.Minute),
		},

		// NextAt.
		{
			name:       "the next change of a set with a pending key is its activation, not the active key's schedule",
			current:    []Lifecycle{a, b},
			policy:     policy(),
			now:        at(every - prepublish + time.Second),
			wantKeys:   []Lifecycle{a, b},
			wantNextAt: at(every),
		},
		{
			name:       "the next change is the earliest removal when a retired key leaves before anything else",
			current:    []Lifecycle{retiredKey("r2", at(-2*every), at(-every), at(-10*time.Minute)), old, a},
			policy:     policy(),
			now:        at(time.Minute),
			wantKeys:   []Lifecycle{retiredKey("r2", at(-2*every), at(-every), at(-10*time.Minute)), old, a},
			wantNextAt: at(retention - 10*time.Minute),
		},
		{
			name:       "the next change of an imported key with a retired predecessor is the predecessor's removal only",
			current:    []Lifecycle{old, imported(activeKey("imp", at(-prepublish), t0))},
			policy:     policy(importing("imp")),
			now:        at(time.Minute),
			wantKeys:   []Lifecycle{old, imported(activeKey("imp", at(-prepublish), t0))},
			wantNextAt: at(retention),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			plan := decideChecked(t, tc.current, tc.policy, tc.now)
			if !equalKeys(plan.Keys, tc.wantKeys) {
				t.Errorf("Keys:\n got %s\nwant %s", describe(plan.Keys), describe(tc.wantKeys))
			}
			if !reflect.DeepEqual(plan.Create, tc.wantCreate) {
				t.Errorf("Create:\n got %s\nwant %s", describeCreate(plan.Create), describeCreate(tc.wantCreate))
			}
			if got := reasons(plan.Events); !slices.Equal(got, tc.wantEvents) {
				t.Errorf("event reasons = %q, want %q", got, tc.wantEvents)
			}
			if !plan.NextAt.Equal(tc.wantNextAt) {
				t.Errorf("NextAt = %s, want %s", offset(plan.NextAt), offset(tc.wantNextAt))
			}
			if want := len(tc.wantEvents) > 0 || tc.wantCreate != nil; plan.Changed() != want {
				t.Errorf("Changed() = %v, want %v", plan.Changed(), want)
			}
			applied := apply(plan, fillKID(tc.policy, "new"))
			if n := countState(applied, keywardv1.KeyStateActive); n != 1 && !tc.noActive {
				t.Errorf("the applied set has %d Active keys, want exactly 1: %s", n, describe(applied))
			}
		})
	}
}

// TestDecideConcurrentReconcilers simulates two reconcilers (a leader change, or two replicas
// during a handover) by feeding one reconciler's applied plan to the other, with clocks that
// disagree by a few seconds. Writes are conditioned on resourceVersion, so the loser of a race
// re-reads the winner's set and decides again.
func TestDecideConcurrentReconcilers(t *testing.T) {
	p := policy()
	a := activeKey("a", at(-prepublish), t0)

	t.Run("two reconcilers deciding from the same input make the same plan", func(t *testing.T) {
		for _, now := range []time.Time{t0, at(every - prepublish), at(every), at(every + retention)} {
			current := []Lifecycle{a, pendingKey("b", at(every-prepublish), at(every))}
			first, second := Decide(current, p, now), Decide(slices.Clone(current), p, now)
			if !reflect.DeepEqual(first, second) {
				t.Errorf("at %s: plans differ:\n%+v\n%+v", offset(now), first, second)
			}
		}
	})

	t.Run("a second reconciler seeing the first one's pending key does not create another", func(t *testing.T) {
		one := Decide([]Lifecycle{a}, p, at(every-prepublish))
		if one.Create == nil {
			t.Fatal("the first reconciler created no successor")
		}
		afterOne := apply(one, fillKID(p, "b"))
		// The second reconciler's clock is behind, equal, or ahead.
		for _, skew := range []time.Duration{-5 * time.Second, 0, 5 * time.Second} {
			two := decideChecked(t, afterOne, p, at(every-prepublish+skew))
			if two.Changed() {
				t.Errorf("skew %s: the second reconciler changed the set: create=%s events=%q", skew, describeCreate(two.Create), reasons(two.Events))
			}
		}
	})

	t.Run("a reconciler whose clock is behind does not undo a promotion or activate a second key", func(t *testing.T) {
		current := []Lifecycle{a, pendingKey("b", at(every-prepublish), at(every))}
		afterOne := apply(decideChecked(t, current, p, at(every)), fillKID(p, "x"))
		two := decideChecked(t, afterOne, p, at(every-30*time.Second))
		if two.Changed() {
			t.Errorf("the lagging reconciler changed the set: create=%s events=%q", describeCreate(two.Create), reasons(two.Events))
		}
		if got := activeKIDs(two.Keys); !slices.Equal(got, []string{"b"}) {
			t.Errorf("Active keys = %q, want [b]", got)
		}
	})

	t.Run("the loser of a write race that re-reads the winner's set converges without a second successor", func(t *testing.T) {
		// Both read {a} at nearly the same time and both plan a successor.
		one := Decide([]Lifecycle{a}, p, at(every-prepublish))
		two := Decide([]Lifecycle{a}, p, at(every-prepublish+2*time.Second))
		if one.Create == nil || two.Create == nil {
			t.Fatal("expected both reconcilers to plan a successor")
		}
		// The first write wins; the second is rejected, re-read and decided again.
		winner := apply(one, fillKID(p, "b1"))
		again := decideChecked(t, winner, p, at(every-prepublish+2*time.Second))
		if again.Changed() {
			t.Errorf("the re-decided plan changed the set: create=%s events=%q", describeCreate(again.Create), reasons(again.Events))
		}
		// Had the store merged both writes anyway, the older pending key is withdrawn.
		merged := append(apply(one, fillKID(p, "b1")), fillKID(p, "b2")(*two.Create))
		fixed := decideChecked(t, merged, p, at(every-prepublish+3*time.Second))
		if got := kidsInState(fixed.Keys, keywardv1.KeyStatePending); !slices.Equal(got, []string{"b2"}) {
			t.Errorf("Pending keys after merging both writes = %q, want [b2]", got)
		}
		if fixed.Create != nil {
			t.Errorf("a third successor was planned: %s", describeCreate(fixed.Create))
		}
	})

	t.Run("two reconcilers alternating at every step keep exactly one active key through many rotations", func(t *testing.T) {
		keys := []Lifecycle{}
		now, n := t0, 0
		for step := range 2000 {
			// Reconciler one's clock is right, reconciler two's runs 3s behind.
			decideAt := now
			if step%2 == 1 {
				decideAt = now.Add(-3 * time.Second)
			}
			plan := decideChecked(t, keys, p, decideAt)
			keys = apply(plan, func(l Lifecycle) Lifecycle { n++; l.KID = fmt.Sprintf("k%d", n); return l })
			if got := countState(keys, keywardv1.KeyStateActive); got != 1 {
				t.Fatalf("step %d at %s: %d Active keys: %s", step, offset(decideAt), got, describe(keys))
			}
			if got := countState(keys, keywardv1.KeyStatePending); got > 1 {
				t.Fatalf("step %d at %s: %d Pending keys: %s", step, offset(decideAt), got, describe(keys))
			}
			now = now.Add(97 * time.Second)
		}
	})
}

// TestDecideSimulation runs a SigningKey for hours of simulated time with a fast schedule and a
// clock that advances by random 0-15s steps, applying each plan as the controller would, and
// checks the lifecycle invariants after every step. The "with spec changes" variants also
// revoke keys, change the algorithm, the import and the prepublish time at random.
func TestDecideSimulation(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3, 7, 42, 2026} {
		t.Run(fmt.Sprintf("a quiet signing key with seed %d", seed), func(t *testing.T) {
			simulate(t, seed, false)
		})
		t.Run(fmt.Sprintf("a signing key with spec changes with seed %d", seed), func(t *testing.T) {
			simulate(t, seed, true)
		})
	}
}

func simulate(t *testing.T, seed uint64, changes bool) {
	const (
		hours   = 6
		maxStep = 15 * time.Second
	)
	rng := rand.New(rand.NewPCG(seed, 0x6b657977617264))
	p := Policy{Algorithm: keywardv1.AlgorithmES256, Every: time.Minute, Prepublish: 20 * time.Second, Retention: 5 * time.Minute}
	const minPrepublish = 20 * time.Second
	// Bound on the set: one Active, one Pending, and the Retired keys of the last Retention.
	// Only a promotion retires a key, and a promoted key was published after the previous
	// promotion and at least Prepublish before its own (a revocation removes the Active key
	// instead of retiring it), so promotions are at least Prepublish apart.
	maxKeys := 2 + int(p.Retention/minPrepublish) + 1
	if !changes {
		// Promotions are at least Every apart.
		maxKeys = 2 + int(p.Retention/p.Every) + 1
	}

	var (
		keys        []Lifecycle
		now         = t0
		end         = t0.Add(hours * time.Hour)
		nextAt      time.Time
		generated   int
		imports     []string
		gone        = map[string]bool{} // generated kids that left the set
		lastActive  *Lifecycle
		activations int
		maxSeen     int
	)
	newKID := func(l Lifecycle) Lifecycle {
		if l.Imported {
			l.KID = p.ImportKID
			return l
		}
		generated++
		l.KID = fmt.Sprintf("k%d", generated)
		return l
	}
	for step := 0; now.Before(end); step++ {
		specChanged, revokedActive := false, false
		if changes && step > 0 {
			specChanged, revokedActive = changeSpec(rng, &p, keys, &imports)
		}
		before := slices.Clone(keys)
		plan := decideChecked(t, keys, p, now)
		if !specChanged && step > 0 && plan.Changed() && (nextAt.IsZero() || now.Before(nextAt)) {
			t.Fatalf("step %d at %s: the set changed before NextAt %s without a spec change: events=%q create=%s",
				step, offset(now), offset(nextAt), reasons(plan.Events), describeCreate(plan.Create))
		}
		keys = apply(plan, newKID)
		nextAt = plan.NextAt
		where := fmt.Sprintf("step %d at %s (%s)", step, offset(now), describe(keys))

		actives := kidsInState(keys, keywardv1.KeyStateActive)
		if len(actives) != 1 {
			t.Fatalf("%s: %d Active keys, want exactly 1", where, len(actives))
		}
		active := keys[slices.IndexFunc(keys, func(l Lifecycle) bool { return l.KID == actives[0] })]
		if lastActive == nil || lastActive.KID != active.KID || !lastActive.ActivatedAt.Equal(*active.ActivatedAt) {
			// A key started signing in this step.
			activations++
			if !active.ActivatedAt.Equal(now) {
				t.Fatalf("%s: %s activated at %s, not now", where, active.KID, offset(*active.ActivatedAt))
			}
			exempt := step == 0 || revokedActive
			if !exempt && active.ActivatedAt.Sub(active.PublishedAt) < p.Prepublish {
				t.Fatalf("%s: %s signs %s after its publication, less than prepublish %s",
					where, active.KID, active.ActivatedAt.Sub(active.PublishedAt), p.Prepublish)
			}
			if !changes && lastActive != nil {
				// A scheduled rotation: the successor signs at activatedAt+Every, late by at
				// most two clock steps (one publishing it, one activating it).
				if period := active.ActivatedAt.Sub(*lastActive.ActivatedAt); period < p.Every || period > p.Every+2*maxStep {
					t.Fatalf("%s: %s signed for %s, want between %s and %s", where, lastActive.KID, period, p.Every, p.Every+2*maxStep)
				}
			}
			if lastActive != nil && !revokedActive {
				// The key it replaced is Retired now, kept for Retention.
				i := slices.IndexFunc(keys, func(l Lifecycle) bool { return l.KID == lastActive.KID })
				if i < 0 || keys[i].State() != keywardv1.KeyStateRetired || !keys[i].RetiredAt.Equal(now) {
					t.Fatalf("%s: the previous Active key %s was not retired now", where, lastActive.KID)
				}
			}
		}
		lastActive = &active

		seen := map[string]bool{}
		for _, k := range keys {
			if seen[k.KID] {
				t.Fatalf("%s: kid %s appears twice", where, k.KID)
			}
			seen[k.KID] = true
			if gone[k.KID] {
				t.Fatalf("%s: generated key %s came back after it left the set", where, k.KID)
			}
			switch k.State() {
			case keywardv1.KeyStateRetired:
				if !now.Before(*k.RemovesAt) {
					t.Fatalf("%s: Retired key %s still published at or after its removesAt %s", where, k.KID, offset(*k.RemovesAt))
				}
				if !k.RemovesAt.Equal(k.RetiredAt.Add(p.Retention)) {
					t.Fatalf("%s: Retired key %s removesAt %s, want retiredAt+retention", where, k.KID, offset(*k.RemovesAt))
				}
			case keywardv1.KeyStatePending:
				if !now.Before(k.ActivatesAt) {
					t.Fatalf("%s: Pending key %s is overdue", where, k.KID)
				}
			}
		}
		for _, k := range before {
			if seen[k.KID] {
				if k.State() == keywardv1.KeyStateRetired {
					after := keys[slices.IndexFunc(keys, func(l Lifecycle) bool { return l.KID == k.KID })]
					if after.State() != keywardv1.KeyStateRetired && k.KID != p.ImportKID {
						t.Fatalf("%s: Retired key %s became %s", where, k.KID, after.State())
					}
				}
				continue
			}
			if !k.Imported {
				gone[k.KID] = true
			}
			switch {
			case slices.Contains(p.Revoked, k.KID):
			case k.State() == keywardv1.KeyStateRetired:
				if now.Before(*k.RemovesAt) {
					t.Fatalf("%s: Retired key %s removed before its removesAt %s", where, k.KID, offset(*k.RemovesAt))
				}
			case k.State() == keywardv1.KeyStatePending:
				if !specChanged {
					t.Fatalf("%s: Pending key %s withdrawn without a spec change", where, k.KID)
				}
			default:
				t.Fatalf("%s: Active key %s left the set without being revoked", where, k.KID)
			}
		}
		maxSeen = max(maxSeen, len(keys))
		if len(keys) > maxKeys {
			t.Fatalf("%s: %d keys, want at most %d", where, len(keys), maxKeys)
		}
		now = now.Add(time.Duration(rng.IntN(int(maxStep/time.Second)+1)) * time.Second)
	}
	// Without spec changes a key activates about once a minute.
	if !changes && activations < hours*60*4/5 {
		t.Errorf("%d activations in %d hours, want about %d", activations, hours, hours*60)
	}
	t.Logf("%d activations, %d generated keys, at most %d keys at once (bound %d)", activations, generated, maxSeen, maxKeys)
}

// changeSpec applies a random spec change (or none) to p, as a user editing the SigningKey
// would. It reports whether it changed anything and whether it revoked the Active key.
func changeSpec(rng *rand.Rand, p *Policy, keys []Lifecycle, imports *[]string) (changed, revokedActive bool) {
	switch n := rng.IntN(400); {
	case n < 2: // Revoke the Active key, as after a compromise.
		for _, k := range keys {
			if k.State() == keywardv1.KeyStateActive {
				p.Revoked = append(slices.Clone(p.Revoked), k.KID)
				if k.KID == p.ImportKID {
					// The user also stops importing the compromised key.
					p.ImportKID = ""
				}
				return true, true
			}
		}
	case n < 4: // Revoke another key.
		others := slices.DeleteFunc(slices.Clone(keys), func(l Lifecycle) bool { return l.State() == keywardv1.KeyStateActive })
		if len(others) > 0 {
			k := others[rng.IntN(len(others))]
			p.Revoked = append(slices.Clone(p.Revoked), k.KID)
			if k.KID == p.ImportKID {
				p.ImportKID = ""
			}
			return true, false
		}
	case n < 6: // Switch algorithm.
		p.Algorithm = map[keywardv1.Algorithm]keywardv1.Algorithm{
			keywardv1.AlgorithmES256: keywardv1.AlgorithmES384,
			keywardv1.AlgorithmES384: keywardv1.AlgorithmES256,
		}[p.Algorithm]
		return true, false
	case n < 7: // Import a new key.
		kid := fmt.Sprintf("imp%d", len(*imports)+1)
		*imports = append(*imports, kid)
		p.ImportKID = kid
		return true, false
	case n < 8: // Import a key imported before, unless it was revoked.
		if len(*imports) > 0 {
			kid := (*imports)[rng.IntN(len(*imports))]
			if !slices.Contains(p.Revoked, kid) && kid != p.ImportKID {
				p.ImportKID = kid
				return true, false
			}
		}
	case n < 9: // Stop importing.
		if p.ImportKID != "" {
			p.ImportKID = ""
			return true, false
		}
	case n < 10: // Change the prepublish time.
		if p.Prepublish == 20*time.Second {
			p.Prepublish = 40 * time.Second
		} else {
			p.Prepublish = 20 * time.Second
		}
		return true, false
	}
	return false, false
}

// decideChecked runs Decide and checks the properties every plan has: Decide is pure (it does
// not change its input, and the same input gives the same plan); the applied plan is a fixed
// point (deciding again at the same instant changes nothing); NextAt is exact (nothing changes
// before it, something changes at it) and never in the past; revoked kids are gone, no Retired
// key is past its removesAt, kids are unique, and at most one key is Active.
func decideChecked(t *testing.T, current []Lifecycle, p Policy, now time.Time) Plan {
	t.Helper()
	snapshot := deepCopy(current)
	plan := Decide(current, p, now)
	if !reflect.DeepEqual(current, snapshot) {
		t.Fatalf("Decide changed its input:\n got %s\nwant %s", describe(current), describe(snapshot))
	}
	if again := Decide(deepCopy(current), p, now); !reflect.DeepEqual(plan, again) {
		t.Fatalf("Decide gave two plans for one input:\n%+v\n%+v", plan, again)
	}
	applied := apply(plan, fillKID(p, "fresh"))
	if n := countState(applied, keywardv1.KeyStateActive); n > 1 {
		t.Errorf("the applied plan has %d Active keys: %s", n, describe(applied))
	}
	seen := map[string]bool{}
	for _, k := range applied {
		if seen[k.KID] {
			t.Errorf("the applied plan holds kid %s twice: %s", k.KID, describe(applied))
		}
		seen[k.KID] = true
		if slices.Contains(p.Revoked, k.KID) {
			t.Errorf("the applied plan still holds revoked key %s", k.KID)
		}
		if k.State() == keywardv1.KeyStateRetired && !now.Before(*k.RemovesAt) {
			t.Errorf("the applied plan still holds Retired key %s past its removesAt", k.KID)
		}
	}
	if fixed := Decide(applied, p, now); fixed.Changed() {
		t.Errorf("deciding again at the same instant changes the set: create=%s events=%q", describeCreate(fixed.Create), reasons(fixed.Events))
	} else if !fixed.NextAt.Equal(plan.NextAt) {
		t.Errorf("deciding again at the same instant moves NextAt from %s to %s", offset(plan.NextAt), offset(fixed.NextAt))
	}
	if plan.NextAt.IsZero() {
		if later := Decide(applied, p, now.Add(10000*time.Hour)); later.Changed() {
			t.Errorf("NextAt is zero but the set changes later: create=%s events=%q", describeCreate(later.Create), reasons(later.Events))
		}
		return plan
	}
	if !plan.NextAt.After(now) {
		t.Errorf("NextAt %s is not after now %s", offset(plan.NextAt), offset(now))
	}
	if early := Decide(applied, p, plan.NextAt.Add(-time.Nanosecond)); early.Changed() {
		t.Errorf("the set changes before NextAt %s: create=%s events=%q", offset(plan.NextAt), describeCreate(early.Create), reasons(early.Events))
	}
	if due := Decide(applied, p, plan.NextAt); !due.Changed() {
		t.Errorf("nothing changes at NextAt %s", offset(plan.NextAt))
	}
	return plan
}

// apply returns the key set after plan, as the controller stores it: the plan's keys plus its
// Create, named by kid.
func apply(plan Plan, kid func(Lifecycle) Lifecycle) []Lifecycle {
	keys := deepCopy(plan.Keys)
	if plan.Create != nil {
		keys = append(keys, kid(*plan.Create))
	}
	return keys
}

// fillKID names a created key as the controller does: an imported key has the import's kid,
// a generated one a fresh kid.
func fillKID(p Policy, fresh string) func(Lifecycle) Lifecycle {
	return func(l Lifecycle) Lifecycle {
		if l.Imported {
			l.KID = p.ImportKID
		} else {
			l.KID = fresh
		}
		return l
	}
}

func deepCopy(keys []Lifecycle) []Lifecycle {
	if keys == nil {
		return nil
	}
	out := make([]Lifecycle, len(keys))
	for i, k := range keys {
		out[i] = k
		for _, p := range []**time.Time{&out[i].ActivatedAt, &out[i].RetiredAt, &out[i].RemovesAt} {
			if *p != nil {
				v := **p
				*p = &v
			}
		}
	}
	return out
}

func equalKeys(got, want []Lifecycle) bool {
	if len(got) == 0 && len(want) == 0 {
		return true
	}
	return reflect.DeepEqual(got, want)
}

func reasons(events []Event) []string {
	var out []string
	for _, e := range events {
		out = append(out, e.Reason)
		if e.Warning != (e.Reason == "KeyRevoked") {
			out = append(out, "(unexpected warning flag)")
		}
	}
	return out
}

func countState(keys []Lifecycle, s keywardv1.KeyState) int {
	return len(kidsInState(keys, s))
}

func kidsInState(keys []Lifecycle, s keywardv1.KeyState) []string {
	var out []string
	for _, k := range keys {
		if k.State() == s {
			out = append(out, k.KID)
		}
	}
	return out
}

func activeKIDs(keys []Lifecycle) []string { return kidsInState(keys, keywardv1.KeyStateActive) }

// offset renders an instant relative to t0.
func offset(t time.Time) string {
	if t.IsZero() {
		return "zero"
	}
	return "t0" + fmt.Sprintf("%+v", t.Sub(t0))
}

func describe(keys []Lifecycle) string {
	var parts []string
	for _, k := range keys {
		parts = append(parts, describeKey(k))
	}
	return "[" + strings.Join(parts, " ") + "]"
}

func describeCreate(l *Lifecycle) string {
	if l == nil {
		return "nil"
	}
	return describeKey(*l)
}

func describeKey(k Lifecycle) string {
	s := fmt.Sprintf("%s{%s %s pub=%s act=%s", k.KID, k.State(), k.Algorithm, offset(k.PublishedAt), offset(k.ActivatesAt))
	if k.Imported {
		s += " imported"
	}
	for _, f := range []struct {
		name string
		t    *time.Time
	}{{"activated", k.ActivatedAt}, {"retired", k.RetiredAt}, {"removes", k.RemovesAt}} {
		if f.t != nil {
			s += " " + f.name + "=" + offset(*f.t)
		}
	}
	return s + "}"
}
