package issuer

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
	"github.com/keyward/keyward/internal/token"
)

// +kubebuilder:rbac:groups=keyward.dev,resources=sessions,verbs=get;list;watch;create;update
// +kubebuilder:rbac:groups=keyward.dev,resources=sessions/status,verbs=get;update
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// lowerBase32 encodes session IDs: lowercase letters and digits 2-7, a valid DNS label.
var lowerBase32 = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// newSessionID returns 128 random bits as 26 lowercase base32 characters: the Session's name
// and the sid claim.
func newSessionID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return lowerBase32.EncodeToString(b[:])
}

// newTokenID returns 128 random bits, base64url: a jti.
func newTokenID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// SubjectHash is the keyward.dev/subject label value of a subject: the first 20 hex digits of
// its SHA-256 (label values cannot hold arbitrary subjects).
func SubjectHash(subject string) string {
	sum := sha256.Sum256([]byte(subject))
	return hex.EncodeToString(sum[:10])
}

// refreshState is what a refresh token of a session says about itself: its generation, jti,
// iat and exp. The Session's status records the current one.
type refreshState struct {
	gen      int64
	jti      string
	iat, exp time.Time
}

// Verdicts of decideRefresh.
type verdict int

const (
	// verdictRotate: the token is the current generation; write its successor.
	verdictRotate verdict = iota + 1
	// verdictKeep: rotation is off and the token is current; it stays the refresh token.
	verdictKeep
	// verdictGrace: the token is the previous generation, presented again within the grace
	// period; answer with the current generation (its successor) again.
	verdictGrace
	// verdictReuse: a superseded token after the grace period; revoke the session.
	verdictReuse
	// verdictRevoked: the session is revoked.
	verdictRevoked
	// verdictInvalid: the token does not belong to this session, or the session is over.
	verdictInvalid
)

// refreshInput is what decideRefresh looks at.
type refreshInput struct {
	session *keywardv1.Session
	// issuer is the TokenIssuer's name; subject, jti and gen come from the presented token.
	issuer, subject, jti string
	gen                  int64
	rotate               bool
	grace                time.Duration
	now                  time.Time
}

// decideRefresh says what a presented refresh token is worth against its Session. It is a
// pure function of the Session, the token and the clock.
func decideRefresh(in refreshInput) verdict {
	s := in.session
	st := effectiveStatus(s)
	switch {
	case s.Spec.Revoked || st.RevokedAt != nil:
		return verdictRevoked
	case s.Spec.IssuerRef.Name != in.issuer || s.Spec.Subject != in.subject:
		return verdictInvalid
	case !in.now.Before(s.Spec.ExpiresAt.Time):
		return verdictInvalid
	case st.RefreshTokenID == "":
		return verdictInvalid
	case in.jti == st.RefreshTokenID && in.gen == st.RefreshGeneration:
		if in.rotate {
			return verdictRotate
		}
		return verdictKeep
	case in.gen > st.RefreshGeneration:
		// A generation this session never had: not minted by keyward for this session.
		return verdictInvalid
	case in.jti == st.PreviousTokenID && in.gen == st.RefreshGeneration-1 &&
		st.RotatedAt != nil && in.now.Before(st.RotatedAt.Add(in.grace)):
		return verdictGrace
	default:
		return verdictReuse
	}
}

// firstTokenID is the jti of a session's first refresh token: the sid and generation 1. It is
// unique (the sid is), and known before the Session exists, so a login writes the Session once,
// with an empty status.
func firstTokenID(sid string) string { return sid + ".1" }

// effectiveStatus is a Session's status with the implicit first generation filled in: a
// Session whose status has no generation yet is at generation 1, whose token's jti is
// firstTokenID and whose times are the Session's creation and end.
func effectiveStatus(s *keywardv1.Session) *keywardv1.SessionStatus {
	if s.Status.RefreshGeneration != 0 {
		return &s.Status
	}
	st := s.Status.DeepCopy()
	st.RefreshGeneration = 1
	st.RefreshTokenID = firstTokenID(s.Name)
	st.RefreshIssuedAt = s.CreationTimestamp.DeepCopy()
	st.RefreshExpiresAt = s.Spec.ExpiresAt.DeepCopy()
	return st
}

func stateOf(s *keywardv1.Session) refreshState {
	st := effectiveStatus(s)
	rs := refreshState{gen: st.RefreshGeneration, jti: st.RefreshTokenID}
	if st.RefreshIssuedAt != nil {
		rs.iat = st.RefreshIssuedAt.Time
	}
	if st.RefreshExpiresAt != nil {
		rs.exp = st.RefreshExpiresAt.Time
	}
	return rs
}

// Errors of the session store that handlers translate into responses.
var (
	errSessionInvalid = errors.New("refresh token does not match a live session")
	errSessionRevoked = errors.New("session is revoked")
)

// sessionStore keeps Sessions in the Kubernetes API. Reads go to the API server (never to a
// cache, which could be stale), writes are conditioned on resourceVersion.
type sessionStore struct {
	client   client.Client // writes
	reader   client.Reader // uncached reads
	recorder recorder.EventRecorder
	revoked  *revokedSet
}

// maxCASAttempts bounds the compare-and-swap loop; every conflict means another writer made
// progress, so this is only reached under pathological contention.
const maxCASAttempts = 8

// create opens a Session for a login and records its first refresh token (generation 1).
func (s *sessionStore) create(ctx context.Context, cfg *issuerConfig, subject, clientID, scope string, now time.Time) (*keywardv1.Session, refreshState, error) {
	now = now.Truncate(time.Second)
	expires := now.Add(cfg.refreshTTL)
	sess := &keywardv1.Session{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: cfg.key.Namespace,
			Name:      newSessionID(),
			Labels: map[string]string{
				keywardv1.LabelIssuer:  cfg.key.Name,
				keywardv1.LabelSubject: SubjectHash(subject),
			},
		},
		Spec: keywardv1.SessionSpec{
			IssuerRef: keywardv1.LocalObjectReference{Name: cfg.key.Name},
			Subject:   subject,
			ClientID:  clientID,
			Scope:     scope,
			ExpiresAt: metav1.NewTime(expires),
		},
	}
	if err := s.client.Create(ctx, sess); err != nil {
		return nil, refreshState{}, fmt.Errorf("cannot create session: %w", err)
	}
	// Generation 1 is implicit in an empty status (effectiveStatus): one write per login.
	return sess, refreshState{gen: 1, jti: firstTokenID(sess.Name), iat: now, exp: expires}, nil
}

// get reads a Session from the API server.
func (s *sessionStore) get(ctx context.Context, key types.NamespacedName) (*keywardv1.Session, error) {
	sess := &keywardv1.Session{}
	if err := s.reader.Get(ctx, key, sess); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, errSessionInvalid
		}
		return nil, fmt.Errorf("cannot get session %s: %w", key.Name, err)
	}
	return sess, nil
}

// refresh presents a verified refresh token to its Session and returns the refresh state to
// answer with: a new generation (rotation), the same token (rotation off), or the successor
// already written for this token (a retry within the grace period). Concurrent refreshes of
// one token, through any number of issuer processes, write exactly one successor: the status
// update carries the resourceVersion read, and a loser re-reads and decides again. A superseded
// token after the grace period revokes the session.
func (s *sessionStore) refresh(ctx context.Context, cfg *issuerConfig, c *token.Claims, now time.Time) (*keywardv1.Session, refreshState, error) {
	key := types.NamespacedName{Namespace: cfg.key.Namespace, Name: c.SessionID}
	if sess, next, ok := s.rotateFast(ctx, cfg, c, now); ok {
		return sess, next, nil
	}
	for range maxCASAttempts {
		sess, err := s.get(ctx, key)
		if err != nil {
			return nil, refreshState{}, err
		}
		v := decideRefresh(refreshInput{session: sess, issuer: cfg.key.Name, subject: c.Subject, jti: c.ID,
			gen: c.Generation, rotate: cfg.rotate, grace: cfg.grace, now: now})
		switch v {
		case verdictRevoked:
			s.revoked.add(key)
			return nil, refreshState{}, errSessionRevoked
		case verdictInvalid:
			return nil, refreshState{}, errSessionInvalid
		case verdictKeep, verdictGrace:
			return sess, stateOf(sess), nil
		case verdictReuse:
			refreshReuse.WithLabelValues(cfg.label).Inc()
			ctrl.LoggerFrom(ctx).Info("Refresh token reuse detected; revoking session", "session", key.Name,
				"jti", c.ID, "generation", c.Generation, "currentGeneration", sess.Status.RefreshGeneration, "reason", "ReuseDetected")
			if err := s.revoke(ctx, cfg, sess, keywardv1.SessionRevokedReuseDetected, now); err != nil {
				return nil, refreshState{}, err
			}
			return nil, refreshState{}, errSessionRevoked
		case verdictRotate:
			t := now.Truncate(time.Second)
			cur := effectiveStatus(sess)
			next := refreshState{gen: cur.RefreshGeneration + 1, jti: newTokenID(), iat: t, exp: sess.Spec.ExpiresAt.Time}
			sess.Status.PreviousTokenID = cur.RefreshTokenID
			sess.Status.RotatedAt = &metav1.MicroTime{Time: now}
			sess.Status.RefreshGeneration = next.gen
			sess.Status.RefreshTokenID = next.jti
			sess.Status.RefreshIssuedAt = ptrTime(next.iat)
			sess.Status.RefreshExpiresAt = ptrTime(next.exp)
			err := s.client.Status().Update(ctx, sess)
			switch {
			case err == nil:
				return sess, next, nil
			case apierrors.IsConflict(err):
				continue // another writer won; decide again from what it wrote
			case apierrors.IsNotFound(err):
				return nil, refreshState{}, errSessionInvalid
			default:
				return nil, refreshState{}, fmt.Errorf("cannot rotate session %s: %w", key.Name, err)
			}
		}
	}
	return nil, refreshState{}, fmt.Errorf("cannot rotate session %s: %d conflicting writes in a row", key.Name, maxCASAttempts)
}

// ClaimResourceVersion is the refresh-token claim holding the Session's resourceVersion
// after the write that recorded the token. It is not a secret: it names a version of the
// Session, nothing more.
const ClaimResourceVersion = "rv"

// rotateFast rotates without reading the Session first. A refresh token carries the
// resourceVersion of the Session write that recorded it as current; a status update
// conditioned on that version succeeds only if nothing touched the Session since, which
// means the token is still the current generation and the session is neither revoked nor
// changed. The new status is then fully determined by the token. Any conflict (a rotation by
// someone else, a revocation, a label) falls back to the read-and-decide path. This halves
// the API calls of a refresh.
func (s *sessionStore) rotateFast(ctx context.Context, cfg *issuerConfig, c *token.Claims, now time.Time) (*keywardv1.Session, refreshState, bool) {
	rv, _ := c.Extra[ClaimResourceVersion].(string)
	if rv == "" || !cfg.rotate || !now.Before(c.ExpiresAt) {
		return nil, refreshState{}, false
	}
	next := refreshState{gen: c.Generation + 1, jti: newTokenID(), iat: now.Truncate(time.Second), exp: c.ExpiresAt}
	sess := &keywardv1.Session{
		ObjectMeta: metav1.ObjectMeta{Namespace: cfg.key.Namespace, Name: c.SessionID, ResourceVersion: rv},
		// A status update keeps the stored spec and metadata; only status is sent.
		Status: keywardv1.SessionStatus{
			RefreshGeneration: next.gen,
			RefreshTokenID:    next.jti,
			RefreshIssuedAt:   ptrTime(next.iat),
			RefreshExpiresAt:  ptrTime(next.exp),
			RotatedAt:         &metav1.MicroTime{Time: now},
			PreviousTokenID:   c.ID,
		},
	}
	if err := s.client.Status().Update(ctx, sess); err != nil {
		if !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
			ctrl.LoggerFrom(ctx).Error(err, "Fast rotation failed; reading the session", "session", c.SessionID)
		}
		return nil, refreshState{}, false
	}
	if sess.Spec.IssuerRef.Name != cfg.key.Name || sess.Spec.Subject != c.Subject {
		// Cannot happen for a token keyward signed for this session; refuse anyway.
		return nil, refreshState{}, false
	}
	return sess, next, true
}

// logout revokes the session of a verified refresh token (simplejwt's blacklist, RFC 7009
// revocation). A current token, or the previous one within the grace period, ends the
// session as a logout; a superseded one is reuse, revokes the session as such and is refused.
func (s *sessionStore) logout(ctx context.Context, cfg *issuerConfig, c *token.Claims, now time.Time) error {
	key := types.NamespacedName{Namespace: cfg.key.Namespace, Name: c.SessionID}
	sess, err := s.get(ctx, key)
	if err != nil {
		return err
	}
	v := decideRefresh(refreshInput{session: sess, issuer: cfg.key.Name, subject: c.Subject, jti: c.ID,
		gen: c.Generation, rotate: true, grace: cfg.grace, now: now})
	switch v {
	case verdictRevoked:
		s.revoked.add(key)
		return errSessionRevoked
	case verdictInvalid:
		return errSessionInvalid
	case verdictReuse:
		refreshReuse.WithLabelValues(cfg.label).Inc()
		if err := s.revoke(ctx, cfg, sess, keywardv1.SessionRevokedReuseDetected, now); err != nil {
			return err
		}
		return errSessionRevoked
	default:
		return s.revoke(ctx, cfg, sess, keywardv1.SessionRevokedLogout, now)
	}
}

// revokeByID revokes a session by its sid (an access token's), whatever its state.
func (s *sessionStore) revokeByID(ctx context.Context, cfg *issuerConfig, sid string, reason keywardv1.SessionRevokedReason, now time.Time) error {
	sess, err := s.get(ctx, types.NamespacedName{Namespace: cfg.key.Namespace, Name: sid})
	if err != nil {
		return err
	}
	if sess.Spec.IssuerRef.Name != cfg.key.Name {
		return errSessionInvalid
	}
	return s.revoke(ctx, cfg, sess, reason, now)
}

// revoke records when and why in status, then sets spec.revoked and the keyward.dev/revoked
// label (validators watch the label). Status comes first so that the controller, which
// records "Admin" for a spec.revoked without a revokedAt, never mistakes an issuer's
// revocation for an admin's; decideRefresh already refuses a session with a revokedAt. Both
// writes are conditioned on resourceVersion and retried from a fresh read on conflict.
func (s *sessionStore) revoke(ctx context.Context, cfg *issuerConfig, sess *keywardv1.Session, reason keywardv1.SessionRevokedReason, now time.Time) error {
	key := client.ObjectKeyFromObject(sess)
	s.revoked.add(key) // this process refuses the session's tokens from now on
	first := true
	for range maxCASAttempts {
		if !first {
			var err error
			if sess, err = s.get(ctx, key); err != nil {
				if errors.Is(err, errSessionInvalid) {
					return nil // deleted: nothing left to revoke
				}
				return err
			}
		}
		first = false
		if sess.Status.RevokedAt == nil {
			sess.Status.RevokedAt = ptrTime(now)
			sess.Status.RevokedReason = reason
			if err := s.client.Status().Update(ctx, sess); err != nil {
				if apierrors.IsConflict(err) {
					continue
				}
				return fmt.Errorf("cannot record revocation of session %s: %w", key.Name, err)
			}
			sessionsRevoked.WithLabelValues(cfg.label, string(reason)).Inc()
			if reason == keywardv1.SessionRevokedReuseDetected {
				s.recorder.Eventf(sess, nil, corev1.EventTypeWarning, "RefreshTokenReused", "Revoke",
					"A superseded refresh token of subject %q was presented after the reuse grace period; the session is revoked", safeSubject(sess.Spec.Subject))
			}
		}
		if sess.Spec.Revoked && sess.Labels[keywardv1.LabelRevoked] == "true" {
			return nil
		}
		sess.Spec.Revoked = true
		if sess.Labels == nil {
			sess.Labels = map[string]string{}
		}
		sess.Labels[keywardv1.LabelRevoked] = "true"
		if err := s.client.Update(ctx, sess); err != nil {
			if apierrors.IsConflict(err) {
				continue
			}
			return fmt.Errorf("cannot revoke session %s: %w", key.Name, err)
		}
		return nil
	}
	return fmt.Errorf("cannot revoke session %s: %d conflicting writes in a row", key.Name, maxCASAttempts)
}

// refreshActive reports whether a verified refresh token is still usable: its session is live
// and it is the current generation (or the previous one within the grace period).
func (s *sessionStore) refreshActive(ctx context.Context, cfg *issuerConfig, c *token.Claims, now time.Time) (bool, error) {
	sess, err := s.get(ctx, types.NamespacedName{Namespace: cfg.key.Namespace, Name: c.SessionID})
	if errors.Is(err, errSessionInvalid) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	v := decideRefresh(refreshInput{session: sess, issuer: cfg.key.Name, subject: c.Subject, jti: c.ID,
		gen: c.Generation, rotate: cfg.rotate, grace: cfg.grace, now: now})
	return v == verdictRotate || v == verdictKeep || v == verdictGrace, nil
}

func ptrTime(t time.Time) *metav1.Time {
	mt := metav1.NewTime(t)
	return &mt
}

// safeSubject keeps log lines free of control characters a subject could carry.
func safeSubject(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, s)
}
