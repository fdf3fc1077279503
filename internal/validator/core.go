package validator

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/utils/clock"

	"github.com/keyward/keyward/internal/token"
	"github.com/keyward/keyward/internal/validator/expr"
)

// Checker is the decision core: Check answers one Request from the snapshots the observers
// fill. It never calls the Kubernetes API and is safe for concurrent use.
type Checker struct {
	store          *store
	cache          *tokenCache
	clock          clock.PassiveClock
	allowUnmatched bool
	allowHS        bool
	maxTokenLen    int
	metrics        *metrics
	log            logr.Logger
	ready          *atomic.Bool
}

// Check decides whether the request may pass. It fails closed: a cancelled context, an
// internal error or anything it cannot judge is a deny.
func (c *Checker) Check(ctx context.Context, req Request) (d Decision) {
	start := time.Now()
	defer func() {
		if p := recover(); p != nil {
			d = Decision{Status: http.StatusUnauthorized, Reason: ReasonInternal, Remove: identityHeaders}
			c.log.Error(nil, "Panic in authorization check", "panic", p)
		}
		if nw, ok := ctx.(*noWaitContext); ok && nw.wouldWait {
			return // not decided: the caller runs Check
		}
		if d.Allowed() && ctx.Err() != nil {
			d = Decision{Status: http.StatusUnauthorized, Reason: ReasonCanceled, Remove: d.Remove}
		}
		c.metrics.decision(req.Protocol, &d, time.Since(start))
		if log := c.log.V(1); log.Enabled() {
			log.Info("Decision", "protocol", req.Protocol, "status", d.Status, "reason", d.Reason,
				"policy", d.Policy, "token", d.TokenHash, "jti", d.JTI, "method", req.Method)
		}
	}()
	return c.check(ctx, &req)
}

// tryCheck is Check for a caller that must not block (the gRPC transport decides on the
// connection's goroutine): where the decision would wait, for an external issuer's keys
// being fetched, it gives up, records nothing and returns false; the caller then runs Check
// where waiting is harmless. ctx is the caller's, reused from one call to the next.
func (c *Checker) tryCheck(ctx *noWaitContext, req Request) (Decision, bool) {
	*ctx = noWaitContext{Context: context.Background()}
	d := c.Check(ctx, req)
	return d, !ctx.wouldWait
}

// noWaitContext is the context of tryCheck. Whatever would wait sets wouldWait and returns
// at once (externalIssuer.keyFor).
type noWaitContext struct {
	context.Context
	wouldWait bool
}

func deny(status int, reason Reason, remove []string) Decision {
	return Decision{Status: status, Reason: reason, Remove: remove}
}

func (c *Checker) check(ctx context.Context, req *Request) Decision {
	if ctx.Err() != nil {
		return deny(http.StatusUnauthorized, ReasonCanceled, identityHeaders)
	}
	if c.ready != nil && !c.ready.Load() {
		return deny(http.StatusUnauthorized, ReasonNotReady, identityHeaders)
	}
	if req.Invalid != "" {
		return deny(http.StatusForbidden, req.Invalid, identityHeaders)
	}
	if req.Method == "" || req.Host == "" || req.Path == "" {
		return deny(http.StatusForbidden, ReasonMissingOriginal, identityHeaders)
	}
	host := normalizeHost(req.Host)
	path, ok := normalizePath(req.Path)
	if !ok {
		return deny(http.StatusForbidden, ReasonBadPath, identityHeaders)
	}
	snap := c.store.snap.Load()
	rule, remove := snap.index.match(host, path, req.Method)
	if rule == nil {
		if c.allowUnmatched && !snap.index.covers(host) {
			return Decision{Status: http.StatusOK, Reason: ReasonUnmatchedAllowed, Remove: remove}
		}
		if snap.index.covers(host) {
			return deny(http.StatusForbidden, ReasonNoRule, remove)
		}
		return deny(http.StatusForbidden, ReasonNoPolicy, remove)
	}
	d := Decision{Remove: remove, Policy: rule.policy}
	switch {
	case rule.invalid:
		d.Status, d.Reason = http.StatusForbidden, ReasonInvalidPolicy
		return d
	case rule.anonymous:
		d.Status, d.Reason = http.StatusOK, ReasonAnonymous
		return d
	}
	raw, reason := bearerToken(req.Authorization)
	if reason != "" {
		d.Status, d.Reason = http.StatusUnauthorized, reason
		return d
	}
	h := hashToken(raw)
	if c.log.V(1).Enabled() {
		d.TokenHash = h.short()
	}
	e, reason := c.verify(ctx, snap, rule, raw, h)
	if reason != "" {
		d.Status, d.Reason = http.StatusUnauthorized, reason
		return d
	}
	claims := e.claims
	d.JTI = claims.ID
	if len(rule.audiences) > 0 && !slices.ContainsFunc(claims.Audience, func(a string) bool { return slices.Contains(rule.audiences, a) }) {
		d.Status, d.Reason = http.StatusUnauthorized, ReasonRuleAudience
		return d
	}
	if rule.when != nil {
		if ok, _ := rule.when.Eval(claimsMap(claims)); !ok {
			d.Status, d.Reason = http.StatusForbidden, ReasonWhenFalse
			return d
		}
	}
	d.Status, d.Reason = http.StatusOK, ReasonAllowed
	d.Headers = make([]Header, 0, 3+len(rule.headers))
	d.Headers = append(d.Headers, Header{HeaderUser, claims.Subject})
	if claims.Email != "" {
		d.Headers = append(d.Headers, Header{HeaderEmail, claims.Email})
	}
	if e.groups != "" {
		d.Headers = append(d.Headers, Header{HeaderGroups, e.groups})
	}
	for _, m := range rule.headers {
		if v, ok := claimHeaderValue(e, m.claim); ok {
			d.Headers = append(d.Headers, Header{m.name, v})
		}
	}
	return d
}

// verify returns the verified token from the cache or, on a miss, parses, verifies and
// validates it against the rule's issuers and caches it.
func (c *Checker) verify(ctx context.Context, snap *snapshot, rule *compiledRule, raw string, h tokenHash) (*cacheEntry, Reason) {
	now := c.clock.Now()
	if e := c.cache.get(h); e != nil {
		if is := snap.issuers[e.issuerID]; is != nil && slices.Contains(rule.issuers, e.issuerID) &&
			is.iss == e.claims.Issuer && is.key(e.kid) == e.key && now.Before(e.claims.ExpiresAt.Add(is.leeway)) {
			if c.store.isRevoked(e.sessionNS, e.claims.SessionID) {
				c.cache.delete(h)
				return nil, ReasonSessionRevoked
			}
			c.metrics.cacheResult(true)
			return e, ""
		}
		if !now.Before(e.expires) {
			c.cache.delete(h)
		}
	}
	c.metrics.cacheResult(false)

	t, err := token.Parse([]byte(raw), c.maxTokenLen)
	if err != nil {
		return nil, tokenReason(err)
	}
	var is *issuer
	for _, id := range rule.issuers {
		if cand := snap.issuers[id]; cand != nil && cand.iss == t.Claims.Issuer {
			is = cand
			break
		}
	}
	if is == nil {
		return nil, ReasonUnknownIssuer
	}
	hdr := t.Header()
	if hdr.Alg.IsSymmetric() && (!c.allowHS || is.ext != nil) {
		return nil, ReasonHSKeysDisabled
	}
	k := is.key(hdr.KID)
	if k == nil && is.ext != nil {
		k = is.ext.keyFor(ctx, hdr.KID)
	}
	if err := token.Verify(t, k); err != nil {
		return nil, tokenReason(err)
	}
	typ := token.TokenTypeAccess
	if is.ext != nil {
		typ = token.TypeExternalAccess
	}
	if err := token.Validate(t, token.Expect{Issuer: is.iss, Type: typ, Now: now, Leeway: is.leeway, MaxLifetime: is.maxLifetime}); err != nil {
		return nil, tokenReason(err)
	}
	if c.store.isRevoked(is.namespace, t.Claims.SessionID) {
		return nil, ReasonSessionRevoked
	}
	if ctx.Err() != nil {
		return nil, ReasonCanceled
	}
	// A copy of the claims, so that the cache does not keep the token's signing input alive.
	claims := t.Claims
	e := &cacheEntry{
		claims:    &claims,
		issuerID:  is.id,
		kid:       hdr.KID,
		key:       k,
		keySource: is.keySource,
		sessionNS: is.namespace,
		groups:    strings.Join(t.Claims.Groups, ","),
		expires:   t.Claims.ExpiresAt.Add(is.leeway),
	}
	c.cache.put(h, e, now)
	return e, ""
}

// claimsMap is the claims as the CEL variable "claims".
func claimsMap(c *token.Claims) map[string]any {
	m := make(map[string]any, 14+len(c.Extra))
	for k, v := range c.Extra {
		m[k] = expr.Normalize(v)
	}
	str := func(k, v string) {
		if v != "" {
			m[k] = v
		}
	}
	str("iss", c.Issuer)
	str("sub", c.Subject)
	str("jti", c.ID)
	str("sid", c.SessionID)
	str("client_id", c.ClientID)
	str("scope", c.Scope)
	str("token_type", c.TokenType)
	str("email", c.Email)
	if c.Audience != nil {
		m["aud"] = c.Audience
	}
	if c.Groups != nil {
		m["groups"] = c.Groups
	}
	for k, t := range map[string]time.Time{"exp": c.ExpiresAt, "nbf": c.NotBefore, "iat": c.IssuedAt} {
		if !t.IsZero() {
			m[k] = t.Unix()
		}
	}
	if c.Generation != 0 {
		m["gen"] = c.Generation
	}
	return m
}

// claimHeaderValue renders a claim as a header value: strings as they are, lists of strings
// comma-joined, numbers and booleans as JSON. Objects, missing claims and values with control
// characters give no header.
func claimHeaderValue(e *cacheEntry, name string) (string, bool) {
	c := e.claims
	var v string
	switch name {
	case "iss":
		v = c.Issuer
	case "sub":
		v = c.Subject
	case "aud":
		v = strings.Join(c.Audience, ",")
	case "jti":
		v = c.ID
	case "sid":
		v = c.SessionID
	case "client_id":
		v = c.ClientID
	case "scope":
		v = c.Scope
	case "token_type":
		v = c.TokenType
	case "email":
		v = c.Email
	case "groups":
		v = e.groups
	case "exp", "nbf", "iat":
		t := map[string]time.Time{"exp": c.ExpiresAt, "nbf": c.NotBefore, "iat": c.IssuedAt}[name]
		if !t.IsZero() {
			v = strconv.FormatInt(t.Unix(), 10)
		}
	default:
		switch x := c.Extra[name].(type) {
		case string:
			v = x
		case json.Number:
			v = x.String()
		case bool:
			v = strconv.FormatBool(x)
		case []any:
			parts := make([]string, 0, len(x))
			for _, e := range x {
				s, ok := e.(string)
				if !ok {
					return "", false
				}
				parts = append(parts, s)
			}
			v = strings.Join(parts, ",")
		}
	}
	if v == "" {
		return "", false
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < 0x20 && c != '\t' || c == 0x7f {
			return "", false
		}
	}
	return v, true
}
