package keys

import (
	"fmt"
	"slices"
	"time"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
)

// Lifecycle is the stored timeline of one key. States are derived from its timestamps, never
// kept separately, so every reconcile recomputes them from durable data and a restart or a
// leader change in the middle of a rotation is harmless.
type Lifecycle struct {
	KID       string              `json:"kid"`
	Algorithm keywardv1.Algorithm `json:"alg"`
	Imported  bool                `json:"imported,omitempty"`
	// PublishedAt is when the key entered the published set.
	PublishedAt time.Time `json:"publishedAt"`
	// ActivatesAt is when a Pending key is scheduled to start signing.
	ActivatesAt time.Time `json:"activatesAt"`
	// ActivatedAt is when the key started signing; nil while Pending.
	ActivatedAt *time.Time `json:"activatedAt,omitempty"`
	// RetiredAt is when the key stopped signing; nil while Pending or Active.
	RetiredAt *time.Time `json:"retiredAt,omitempty"`
	// RemovesAt is when a Retired key leaves the published set.
	RemovesAt *time.Time `json:"removesAt,omitempty"`
}

// State derives the key's lifecycle state from its timestamps.
func (l *Lifecycle) State() keywardv1.KeyState {
	switch {
	case l.RetiredAt != nil:
		return keywardv1.KeyStateRetired
	case l.ActivatedAt != nil:
		return keywardv1.KeyStateActive
	default:
		return keywardv1.KeyStatePending
	}
}

// Policy is what the SigningKey's spec and its TokenIssuers say about the key set.
type Policy struct {
	// Algorithm is spec.algorithm.
	Algorithm keywardv1.Algorithm
	// Every is spec.rotation.every.
	Every time.Duration
	// Prepublish is spec.rotation.prepublish.
	Prepublish time.Duration
	// Retention is how long a Retired key stays published: the longest token lifetime plus
	// leeway among the TokenIssuers that use the key.
	Retention time.Duration
	// Revoked are the kids in spec.revokedKeyIDs.
	Revoked []string
	// ImportKID is the kid of the key in spec.import's Secret; empty without an import.
	ImportKID string
}

// Event describes one transition, for a Kubernetes Event.
type Event struct {
	Warning bool
	Reason  string
	Message string
}

// Plan is the outcome of one lifecycle decision.
type Plan struct {
	// Keys is the key set after the transitions, without Create.
	Keys []Lifecycle
	// Create, when set, is a key to add: the caller makes (or imports) the key, fills in KID
	// and appends it. Its timestamps say whether it is Pending or Active at once.
	Create *Lifecycle
	// Events are the transitions made, in order.
	Events []Event
	// NextAt is when the plan must be recomputed (a scheduled activation, publication or
	// removal); zero when nothing is scheduled.
	NextAt time.Time
}

// Changed reports whether the plan alters the key set.
func (p *Plan) Changed() bool { return p.Create != nil || len(p.Events) > 0 }

// Decide computes the next key set from the current one, the policy and the clock. It is a
// pure function: same input, same plan. Invariants of its output: at most one Active key;
// revoked kids are gone; Retired keys past RemovesAt are gone; a successor is published for at
// least Prepublish before it signs, except when nothing else can sign (a new SigningKey, or the
// Active key revoked or lost), where it becomes Active at once; a kid is never planned twice. A
// revoked ImportKID is never created again, even when that leaves no Active key: the caller
// reports the spec as unusable until it changes.
func Decide(current []Lifecycle, p Policy, now time.Time) Plan {
	var plan Plan
	keys := make([]Lifecycle, 0, len(current))
	for _, k := range current {
		switch {
		case slices.Contains(p.Revoked, k.KID):
			plan.event(true, "KeyRevoked", "Key %s (%s) revoked and withdrawn from the published set", k.KID, k.State())
		case k.State() == keywardv1.KeyStateRetired && k.RemovesAt != nil && !now.Before(*k.RemovesAt):
			plan.event(false, "KeyRemoved", "Key %s removed: every token it signed has expired", k.KID)
		case k.State() == keywardv1.KeyStateRetired && p.ImportKID != "" && k.KID == p.ImportKID:
			// The import was switched back to a key still published as Retired: make it the
			// successor again instead of importing it a second time under the same kid. Like
			// any import change, it is a successor for Prepublish before it signs.
			k.Imported, k.ActivatesAt = true, now.Add(p.Prepublish)
			k.ActivatedAt, k.RetiredAt, k.RemovesAt = nil, nil, nil
			plan.event(false, "KeyReinstated", "Retired key %s is the imported key again: it signs from %s", k.KID, k.ActivatesAt.UTC().Format(time.RFC3339))
			keys = append(keys, k)
		case k.State() == keywardv1.KeyStatePending && !p.wants(k):
			plan.event(false, "KeyWithdrawn", "Pending key %s withdrawn: the spec no longer asks for it", k.KID)
		case k.State() == keywardv1.KeyStatePending && k.ActivatesAt.Before(k.PublishedAt.Add(p.Prepublish)):
			// Prepublish grew after the key was scheduled: it still waits the new Prepublish.
			k.ActivatesAt = k.PublishedAt.Add(p.Prepublish)
			plan.event(false, "KeyRescheduled", "Pending key %s signs from %s: prepublish is now %s", k.KID, k.ActivatesAt.UTC().Format(time.RFC3339), p.Prepublish)
			keys = append(keys, k)
		default:
			keys = append(keys, k)
		}
	}
	slices.SortStableFunc(keys, func(a, b Lifecycle) int { return a.PublishedAt.Compare(b.PublishedAt) })

	active := plan.singleActive(keys, p, now)
	pending := -1
	for i := range keys {
		if keys[i].State() == keywardv1.KeyStatePending {
			pending = i // the newest wanted pending key wins; older ones are withdrawn below
		}
	}
	for i := range keys {
		if keys[i].State() == keywardv1.KeyStatePending && i != pending {
			plan.event(false, "KeyWithdrawn", "Pending key %s withdrawn: superseded by %s", keys[i].KID, keys[pending].KID)
			keys[i].KID = "" // marked for removal
		}
	}

	switch {
	case pending >= 0 && (active < 0 || !now.Before(keys[pending].ActivatesAt)):
		// Promote the pending key: its time has come, or nothing else can sign.
		if active >= 0 {
			plan.retire(&keys[active], p, now)
		}
		keys[pending].ActivatedAt = ptr(now)
		plan.event(false, "KeyActivated", "Key %s now signs new tokens", keys[pending].KID)
	case p.ImportKID != "" && slices.Contains(p.Revoked, p.ImportKID):
		// spec.import names a revoked key: importing it would publish (and maybe sign with) it
		// again, only for the next reconcile to revoke it, forever. Create nothing.
	case pending < 0 && active < 0:
		create := &Lifecycle{Algorithm: p.Algorithm, Imported: p.ImportKID != "", PublishedAt: now, ActivatesAt: now, ActivatedAt: ptr(now)}
		plan.Create = create
	case pending < 0 && p.needsSuccessor(keys[active], now):
		create := &Lifecycle{Algorithm: p.Algorithm, Imported: p.ImportKID != "", PublishedAt: now,
			ActivatesAt: latest(now.Add(p.Prepublish), keys[active].ActivatedAt.Add(p.Every))}
		if !p.rotatesOnSchedule(keys[active]) {
			create.ActivatesAt = now.Add(p.Prepublish)
		}
		plan.Create = create
	}
	plan.Keys = slices.DeleteFunc(keys, func(k Lifecycle) bool { return k.KID == "" })
	plan.NextAt = p.nextAt(plan.Keys, plan.Create)
	return plan
}

// wants reports whether a Pending key is still the successor the spec asks for.
func (p Policy) wants(k Lifecycle) bool {
	if p.ImportKID != "" {
		return k.KID == p.ImportKID
	}
	return !k.Imported && k.Algorithm == p.Algorithm
}

// rotatesOnSchedule reports whether an Active key is replaced when its time is up; imported
// keys are kept until the spec changes.
func (p Policy) rotatesOnSchedule(active Lifecycle) bool {
	return p.ImportKID == "" && !active.Imported && active.Algorithm == p.Algorithm
}

// needsSuccessor reports whether a successor of the Active key must be published now.
func (p Policy) needsSuccessor(active Lifecycle, now time.Time) bool {
	switch {
	case p.ImportKID != "":
		return active.KID != p.ImportKID
	case active.Imported || active.Algorithm != p.Algorithm:
		return true
	default:
		return !now.Before(active.ActivatedAt.Add(p.Every - p.Prepublish))
	}
}

// singleActive returns the index of the Active key, retiring all but the most recently
// activated one if a damaged store holds several. It returns -1 when none is Active.
func (plan *Plan) singleActive(keys []Lifecycle, p Policy, now time.Time) int {
	active := -1
	for i := range keys {
		if keys[i].State() != keywardv1.KeyStateActive {
			continue
		}
		if active >= 0 {
			older, newer := active, i
			if keys[i].ActivatedAt.Before(*keys[active].ActivatedAt) {
				older, newer = i, active
			}
			plan.retire(&keys[older], p, now)
			active = newer
			continue
		}
		active = i
	}
	return active
}

func (plan *Plan) retire(k *Lifecycle, p Policy, now time.Time) {
	k.RetiredAt = ptr(now)
	k.RemovesAt = ptr(now.Add(p.Retention))
	plan.event(false, "KeyRetired", "Key %s retired: it verifies tokens until %s", k.KID, k.RemovesAt.UTC().Format(time.RFC3339))
}

func (plan *Plan) event(warning bool, reason, format string, args ...any) {
	plan.Events = append(plan.Events, Event{Warning: warning, Reason: reason, Message: fmt.Sprintf(format, args...)})
}

// nextAt is the earliest scheduled change of the key set.
func (p Policy) nextAt(keys []Lifecycle, create *Lifecycle) time.Time {
	var next time.Time
	consider := func(t time.Time) {
		if next.IsZero() || t.Before(next) {
			next = t
		}
	}
	hasPending := create != nil && create.ActivatedAt == nil
	for _, k := range keys {
		switch k.State() {
		case keywardv1.KeyStatePending:
			hasPending = true
			consider(k.ActivatesAt)
		case keywardv1.KeyStateRetired:
			if k.RemovesAt != nil {
				consider(*k.RemovesAt)
			}
		}
	}
	if create != nil && create.ActivatedAt == nil {
		consider(create.ActivatesAt)
	}
	if !hasPending {
		for _, k := range keys {
			if k.State() == keywardv1.KeyStateActive && p.rotatesOnSchedule(k) {
				consider(k.ActivatedAt.Add(p.Every - p.Prepublish))
			}
		}
		if create != nil && create.ActivatedAt != nil && p.rotatesOnSchedule(*create) {
			consider(create.ActivatedAt.Add(p.Every - p.Prepublish))
		}
	}
	return next
}

func latest(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func ptr[T any](v T) *T { return &v }
