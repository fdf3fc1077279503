package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Labels of a Session. Label values cannot hold arbitrary subjects, so the subject label is a
// short hash of it (see the issuer's SubjectHash).
const (
	// LabelIssuer names the TokenIssuer a Session belongs to.
	LabelIssuer = "keyward.dev/issuer"
	// LabelSubject is a short hash of the Session's subject, to find a user's sessions.
	LabelSubject = "keyward.dev/subject"
	// LabelRevoked is "true" on a revoked Session. Validators cache only Sessions carrying it,
	// so whoever revokes a Session sets spec.revoked and this label; the controller adds the
	// label when only spec.revoked was set (an admin's kubectl edit).
	LabelRevoked = "keyward.dev/revoked"
)

// SessionRevokedReason says why a Session was revoked.
// +kubebuilder:validation:Enum=Logout;ReuseDetected;Admin;UserDisabled
type SessionRevokedReason string

// Reasons a Session is revoked.
const (
	// SessionRevokedLogout: the user blacklisted or revoked a token of the session.
	SessionRevokedLogout SessionRevokedReason = "Logout"
	// SessionRevokedReuseDetected: a superseded refresh token was presented after the grace
	// period, so the token family is presumed stolen.
	SessionRevokedReuseDetected SessionRevokedReason = "ReuseDetected"
	// SessionRevokedAdmin: spec.revoked was set by someone other than the issuer.
	SessionRevokedAdmin SessionRevokedReason = "Admin"
	// SessionRevokedUserDisabled: the user was disabled or removed and tried to refresh.
	SessionRevokedUserDisabled SessionRevokedReason = "UserDisabled"
)

// SessionSpec is a login session: one refresh-token family.
//
// The spec has no CEL transition rules on purpose: the API server evaluates them on every
// update, status updates included, and a refresh is a status update (they cost about a third
// of the refresh throughput). Revocation is sticky without them: status.revokedAt, once set,
// refuses the session's tokens whatever the spec says, and the controller sets spec.revoked
// and the revoked label back (see docs/adr/0005).
type SessionSpec struct {
	// issuerRef names the TokenIssuer, in the same namespace, that issued the session.
	// +required
	IssuerRef LocalObjectReference `json:"issuerRef"`

	// subject is the "sub" claim of the session's tokens: the user name.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	Subject string `json:"subject"`

	// clientID is the OAuth2 client the session was opened through, if any.
	// +optional
	// +kubebuilder:validation:MaxLength=256
	ClientID string `json:"clientID,omitempty"`

	// scope is the space-separated scope granted to the session.
	// +optional
	// +kubebuilder:validation:MaxLength=2048
	Scope string `json:"scope,omitempty"`

	// expiresAt is the absolute end of the session (login time plus the issuer's
	// refreshTokenLifetime). No token of the session is valid after it.
	// +required
	ExpiresAt metav1.Time `json:"expiresAt"`

	// revoked ends the session at once: its refresh tokens stop working and validators refuse
	// its access tokens (through the sid claim) within a second. It cannot be undone: once
	// status.revokedAt is set, the controller sets it back to true.
	// +optional
	Revoked bool `json:"revoked,omitempty"`
}

// SessionStatus is the refresh-token state of a Session. The issuer moves it forward with a
// compare-and-swap (an update conditioned on resourceVersion).
type SessionStatus struct {
	// refreshGeneration is the generation of the current refresh token. It is unset until the
	// first rotation: a new session is at generation 1, whose token's jti is "<sid>.1".
	// +optional
	// +kubebuilder:validation:Minimum=0
	RefreshGeneration int64 `json:"refreshGeneration,omitempty"`

	// refreshTokenID is the jti of the current refresh token.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	RefreshTokenID string `json:"refreshTokenID,omitempty"`

	// refreshIssuedAt is the iat of the current refresh token.
	// +optional
	RefreshIssuedAt *metav1.Time `json:"refreshIssuedAt,omitempty"`

	// refreshExpiresAt is the exp of the current refresh token.
	// +optional
	RefreshExpiresAt *metav1.Time `json:"refreshExpiresAt,omitempty"`

	// rotatedAt is when the current refresh token replaced the previous one, with
	// microsecond precision (the reuse grace period is counted from it).
	// +optional
	RotatedAt *metav1.MicroTime `json:"rotatedAt,omitempty"`

	// previousTokenID is the jti of the refresh token the current one replaced. Presented
	// again within the issuer's reuseGracePeriod after rotatedAt, it gets the current token
	// back; after that, it revokes the session.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	PreviousTokenID string `json:"previousTokenID,omitempty"`

	// revokedAt is when the session was revoked.
	// +optional
	RevokedAt *metav1.Time `json:"revokedAt,omitempty"`

	// revokedReason says why the session was revoked.
	// +optional
	RevokedReason SessionRevokedReason `json:"revokedReason,omitempty"`
}

// Session is a login session of a TokenIssuer: a refresh-token family. Its name is the sid
// claim of its tokens. The issuer creates it at login and rotates its refresh token; the
// controller deletes it once every token of it has expired.
// +kubebuilder:selectablefield:JSONPath=".spec.revoked"
// +kubebuilder:selectablefield:JSONPath=".spec.subject"
// +kubebuilder:selectablefield:JSONPath=".spec.issuerRef.name"
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=kws;kwsession,categories=keyward
// +kubebuilder:printcolumn:name="Issuer",type=string,JSONPath=`.spec.issuerRef.name`
// +kubebuilder:printcolumn:name="Subject",type=string,JSONPath=`.spec.subject`
// +kubebuilder:printcolumn:name="Generation",type=integer,JSONPath=`.status.refreshGeneration`
// +kubebuilder:printcolumn:name="Revoked",type=boolean,JSONPath=`.spec.revoked`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.revokedReason`
// +kubebuilder:printcolumn:name="Expires",type=string,JSONPath=`.spec.expiresAt`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type Session struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the standard object metadata.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitzero"`

	// spec is the session.
	// +required
	Spec SessionSpec `json:"spec"`

	// status is the session's refresh-token state.
	// +optional
	Status SessionStatus `json:"status,omitzero"`
}

// SessionList is a list of Sessions.
// +kubebuilder:object:root=true
type SessionList struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the standard list metadata.
	// +optional
	metav1.ListMeta `json:"metadata,omitzero"`
	// items are the Sessions.
	Items []Session `json:"items"`
}

func init() {
	SchemeBuilder.Register(&Session{}, &SessionList{})
}
