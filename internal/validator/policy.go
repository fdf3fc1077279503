package validator

import (
	"cmp"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
	"github.com/keyward/keyward/internal/validator/expr"
)

// defaultExternalLeeway is the clock skew allowed on external issuers' tokens unless set.
const defaultExternalLeeway = 30 * time.Second

// compiledPolicy is an AccessPolicy ready for matching.
type compiledPolicy struct {
	key        string // namespace/name
	generation int64
	hosts      []string
	rules      []*compiledRule
	// externals are the external issuers the policy refers to.
	externals []*externalSpec
}

// compiledRule is one rule of a policy.
type compiledRule struct {
	policy    string // namespace/name
	index     int
	paths     []string
	methods   []string // nil: every method
	anonymous bool
	issuers   []string // issuer IDs: "namespace/name" or externalSpec.id()
	audiences []string
	when      *expr.Program
	whenSrc   string
	// invalid is set when the rule cannot be enforced (its expression does not compile): it
	// denies every request it matches.
	invalid bool
	headers []headerMapping
}

type headerMapping struct {
	name  string // canonical header name
	claim string
}

// externalSpec is how to reach an external issuer's keys.
type externalSpec struct {
	issuerURL    string
	discoveryURL string
	jwksURL      string
	caBundle     string
	leeway       time.Duration
}

// id identifies the external issuer: policies with the same settings share one key cache.
func (e *externalSpec) id() string {
	return fmt.Sprintf("external:%s|%s|%s|%s|%d", e.issuerURL, e.discoveryURL, e.jwksURL, hashString(e.caBundle), e.leeway)
}

// compilePolicy compiles an AccessPolicy. A rule whose expression does not compile is kept
// and marked invalid, so that it denies what it matches instead of letting a shorter rule
// allow it.
func compilePolicy(p *keywardv1.AccessPolicy) *compiledPolicy {
	key := p.Namespace + "/" + p.Name
	cp := &compiledPolicy{key: key, generation: p.Generation}
	for _, h := range p.Spec.Hosts {
		cp.hosts = append(cp.hosts, strings.ToLower(h))
	}
	seenExt := map[string]bool{}
	for i, r := range p.Spec.Rules {
		cr := &compiledRule{
			policy:    key,
			index:     i,
			paths:     slices.Clone(r.Paths),
			anonymous: r.Anonymous,
			audiences: slices.Clone(r.Audiences),
			whenSrc:   r.When,
		}
		for _, m := range r.Methods {
			cr.methods = append(cr.methods, string(m))
		}
		for _, ref := range r.Issuers {
			if ref.Name != "" {
				cr.issuers = append(cr.issuers, p.Namespace+"/"+ref.Name)
				continue
			}
			ext := &externalSpec{issuerURL: ref.IssuerURL, discoveryURL: ref.DiscoveryURL, jwksURL: ref.JWKSURL,
				caBundle: ref.CABundle, leeway: defaultExternalLeeway}
			if ref.Leeway != nil {
				ext.leeway = ref.Leeway.Duration
			}
			id := ext.id()
			cr.issuers = append(cr.issuers, id)
			if !seenExt[id] {
				seenExt[id] = true
				cp.externals = append(cp.externals, ext)
			}
		}
		if !r.Anonymous && len(cr.issuers) == 0 {
			cr.invalid = true // the API refuses this; never allow on it
		}
		if r.When != "" {
			prg, err := expr.Compile(r.When)
			if err != nil {
				cr.invalid = true
			} else {
				cr.when = prg
			}
		}
		for _, name := range slices.Sorted(mapKeys(r.Headers)) {
			cr.headers = append(cr.headers, headerMapping{name: http.CanonicalHeaderKey(name), claim: string(r.Headers[name])})
		}
		cp.rules = append(cp.rules, cr)
	}
	return cp
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// ruleEntry is one path prefix of one rule.
type ruleEntry struct {
	prefix string
	rule   *compiledRule
}

// hostRules are the rules of every policy covering one host pattern, in match order, and
// the headers the validator owns for that host.
type hostRules struct {
	entries []ruleEntry
	remove  []string
}

// policyIndex finds the rule for a request.
type policyIndex struct {
	exact    map[string]*hostRules // "app.example.com"
	wildcard map[string]*hostRules // ".example.com" for "*.example.com"
	any      *hostRules            // "*"
}

func buildIndex(policies []*compiledPolicy) *policyIndex {
	idx := &policyIndex{exact: map[string]*hostRules{}, wildcard: map[string]*hostRules{}}
	add := func(hr **hostRules, p *compiledPolicy) {
		if *hr == nil {
			*hr = &hostRules{}
		}
		for _, r := range p.rules {
			for _, path := range r.paths {
				(*hr).entries = append((*hr).entries, ruleEntry{prefix: path, rule: r})
			}
		}
	}
	for _, p := range policies {
		for _, h := range p.hosts {
			switch {
			case h == "*":
				add(&idx.any, p)
			case strings.HasPrefix(h, "*."):
				hr := idx.wildcard[h[1:]]
				add(&hr, p)
				idx.wildcard[h[1:]] = hr
			default:
				hr := idx.exact[h]
				add(&hr, p)
				idx.exact[h] = hr
			}
		}
	}
	finish := func(hr *hostRules) {
		if hr == nil {
			return
		}
		// Longest prefix first; for the same prefix a rule naming methods first; then a fixed
		// order so that every replica decides alike.
		slices.SortStableFunc(hr.entries, func(a, b ruleEntry) int {
			if c := cmp.Compare(len(b.prefix), len(a.prefix)); c != 0 {
				return c
			}
			if c := cmp.Compare(b.prefix, a.prefix); c != 0 {
				return c
			}
			if c := cmpBool(len(a.rule.methods) > 0, len(b.rule.methods) > 0); c != 0 {
				return -c
			}
			if c := cmp.Compare(a.rule.policy, b.rule.policy); c != 0 {
				return c
			}
			return cmp.Compare(a.rule.index, b.rule.index)
		})
		seen := map[string]bool{}
		hr.remove = slices.Clone(identityHeaders)
		for _, h := range identityHeaders {
			seen[h] = true
		}
		for _, e := range hr.entries {
			for _, m := range e.rule.headers {
				if !seen[m.name] {
					seen[m.name] = true
					hr.remove = append(hr.remove, m.name)
				}
			}
		}
	}
	for _, hr := range idx.exact {
		finish(hr)
	}
	for _, hr := range idx.wildcard {
		finish(hr)
	}
	finish(idx.any)
	return idx
}

func cmpBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

// match returns the rule for a normalized host, path and method, and the headers the
// validator owns for the host: those of every host pattern that covers it. Hosts are tried
// from the most specific pattern: exact, then one-label wildcard, then "*"; the first pattern
// with a matching rule decides.
func (idx *policyIndex) match(host, path, method string) (*compiledRule, []string) {
	tiers := [3]*hostRules{idx.exact[host], nil, idx.any}
	if dot := strings.IndexByte(host, '.'); dot > 0 {
		tiers[1] = idx.wildcard[host[dot:]]
	}
	var rule *compiledRule
	var remove []string
	merged := false
	for _, hr := range tiers {
		if hr == nil {
			continue
		}
		switch {
		case remove == nil:
			remove = hr.remove
		case !merged:
			remove = slices.Clone(remove)
			merged = true
			fallthrough
		default:
			for _, h := range hr.remove {
				if !slices.Contains(remove, h) {
					remove = append(remove, h)
				}
			}
		}
		if rule == nil {
			rule = hr.find(path, method)
		}
	}
	if remove == nil {
		remove = identityHeaders
	}
	return rule, remove
}

// find returns the first rule, in match order, whose prefix and methods match.
func (hr *hostRules) find(path, method string) *compiledRule {
	for i := range hr.entries {
		e := &hr.entries[i]
		if !prefixMatches(e.prefix, path) {
			continue
		}
		if len(e.rule.methods) > 0 && !slices.Contains(e.rule.methods, method) {
			continue
		}
		return e.rule
	}
	return nil
}

// covers reports whether any policy names the host.
func (idx *policyIndex) covers(host string) bool {
	if idx.exact[host] != nil || idx.any != nil {
		return true
	}
	dot := strings.IndexByte(host, '.')
	return dot > 0 && idx.wildcard[host[dot:]] != nil
}

// prefixMatches: path starts with prefix, or prefix is path plus a trailing slash.
func prefixMatches(prefix, path string) bool {
	if strings.HasPrefix(path, prefix) {
		return true
	}
	return len(prefix) > 1 && prefix[len(prefix)-1] == '/' && path == prefix[:len(prefix)-1]
}
