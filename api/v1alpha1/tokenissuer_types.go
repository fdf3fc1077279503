package v1alpha1

import (
	"strings"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Reasons of a TokenIssuer's Ready condition.
const (
	ReasonReady                 = "Ready"
	ReasonSigningKeyNotFound    = "SigningKeyNotFound"
	ReasonSigningKeyNotReady    = "SigningKeyNotReady"
	ReasonUsersSecretNotFound   = "UsersSecretNotFound"
	ReasonClientsSecretNotFound = "ClientsSecretNotFound"
)

// TokenIssuerSpec defines an issuer of access and refresh tokens.
// +kubebuilder:validation:XValidation:rule="duration(self.refreshTokenLifetime) > duration(self.accessTokenLifetime)",message="refreshTokenLifetime must be longer than accessTokenLifetime"
// +kubebuilder:validation:XValidation:rule="!has(self.leeway) || duration(self.leeway) < duration(self.accessTokenLifetime)",message="leeway must be shorter than accessTokenLifetime"
type TokenIssuerSpec struct {
	// issuer is the URL used as the "iss" claim and as the base of discovery. When unset, the
	// issuer service uses {public URL}/{namespace}/{name}.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=512
	// +kubebuilder:validation:XValidation:rule="isURL(self) && url(self).getScheme() in ['https', 'http'] && url(self).getHostname() != ''",message="issuer must be an http or https URL with a host"
	// +kubebuilder:validation:XValidation:rule="!self.contains('?') && !self.contains('#')",message="issuer must not have a query or fragment"
	Issuer string `json:"issuer,omitempty"`

	// audiences are the "aud" values of issued access tokens.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=256
	Audiences []string `json:"audiences,omitempty"`

	// signingKeyRef names the SigningKey, in the same namespace, whose Active key signs tokens.
	// +required
	SigningKeyRef LocalObjectReference `json:"signingKeyRef"`

	// accessTokenLifetime is how long an access token is valid. At least 10s.
	// +optional
	// +kubebuilder:default="5m"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Format=duration
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('10s')",message="accessTokenLifetime must be at least 10s"
	AccessTokenLifetime metav1.Duration `json:"accessTokenLifetime,omitzero"`

	// refreshTokenLifetime is how long a login session (its refresh tokens) lasts. At least 10s
	// and longer than accessTokenLifetime.
	// +optional
	// +kubebuilder:default="24h"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Format=duration
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('10s')",message="refreshTokenLifetime must be at least 10s"
	RefreshTokenLifetime metav1.Duration `json:"refreshTokenLifetime,omitzero"`

	// refreshTokenRotation controls whether a refresh returns a new refresh token.
	// +optional
	// +kubebuilder:default={enabled: true, reuseGracePeriod: "5s"}
	RefreshTokenRotation RefreshTokenRotation `json:"refreshTokenRotation,omitzero"`

	// leeway is the clock skew tolerated when checking exp, nbf and iat. Shorter than
	// accessTokenLifetime.
	// +optional
	// +kubebuilder:default="30s"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Format=duration
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('0s') && duration(self) <= duration('5m')",message="leeway must be between 0s and 5m"
	Leeway *metav1.Duration `json:"leeway,omitempty"`

	// users names the Secret holding the users: data key "htpasswd" (lines "name:hash", bcrypt
	// or argon2id) and optional data key "users.yaml" (per user: groups, claims, disabled).
	// +required
	Users SecretReference `json:"users"`

	// clients names the Secret holding the OAuth2 clients allowed the client_credentials grant.
	// +optional
	Clients *SecretReference `json:"clients,omitempty"`

	// loginThrottling limits failed logins per username and per client address. A login
	// over either limit is answered 429 with Retry-After before any password hash is computed.
	// Successful logins do not count.
	// +optional
	// +kubebuilder:default={perUsername: {burst: 5, perMinute: 5}, perClientAddress: {burst: 20, perMinute: 30}}
	LoginThrottling LoginThrottling `json:"loginThrottling,omitzero"`

	// extraClaims are added to every access token. Registered and keyward claim names are
	// refused.
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=32
	ExtraClaims []ExtraClaim `json:"extraClaims,omitempty"`
}

// ExtraClaim is a claim added to every access token.
type ExtraClaim struct {
	// name is the claim name.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:XValidation:rule="!(self in ['iss', 'sub', 'aud', 'exp', 'nbf', 'iat', 'jti', 'sid', 'client_id', 'scope', 'token_type', 'gen', 'groups', 'email', 'typ', 'azp', 'auth_time', 'cnf', 'act'])",message="extraClaims must not set registered or keyward claims"
	Name string `json:"name"`

	// value is the claim's JSON value: a string, number, boolean, list or object.
	// +required
	// +kubebuilder:validation:XPreserveUnknownFields
	// +kubebuilder:validation:Schemaless
	Value apiextensionsv1.JSON `json:"value"`
}

// RefreshTokenRotation controls refresh-token rotation and reuse detection.
type RefreshTokenRotation struct {
	// enabled makes every refresh return a new refresh token and invalidate the old one. A
	// replay of an invalidated refresh token after reuseGracePeriod revokes the whole session.
	// +optional
	// +kubebuilder:default=true
	Enabled *bool `json:"enabled,omitempty"`

	// reuseGracePeriod is how long a retry of the previous refresh token gets the same
	// successor back instead of revoking the session (a client that lost the response).
	// +optional
	// +kubebuilder:default="5s"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Format=duration
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('0s') && duration(self) <= duration('1m')",message="reuseGracePeriod must be between 0s and 1m"
	ReuseGracePeriod *metav1.Duration `json:"reuseGracePeriod,omitempty"`
}

// LoginThrottling limits failed logins.
type LoginThrottling struct {
	// perUsername limits failed logins for one username, known or not. Once it is spent, an
	// address that has not failed for that username lately still gets one attempt (then one
	// per 1/perMinute), so that someone guessing a password cannot lock its owner out.
	// +optional
	// +kubebuilder:default={burst: 5, perMinute: 5}
	PerUsername LoginRateLimit `json:"perUsername,omitzero"`

	// perClientAddress limits failed logins from one client IP address (the TCP peer).
	// +optional
	// +kubebuilder:default={burst: 20, perMinute: 30}
	PerClientAddress LoginRateLimit `json:"perClientAddress,omitzero"`
}

// LoginRateLimit is a token bucket of failed logins: burst failures at once, refilled at
// perMinute per minute.
type LoginRateLimit struct {
	// burst is how many failed logins are allowed at once.
	// +optional
	// +kubebuilder:default=5
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=10000
	Burst int32 `json:"burst,omitempty"`

	// perMinute is how many more failed logins are allowed per minute once burst is spent.
	// +optional
	// +kubebuilder:default=5
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=60000
	PerMinute int32 `json:"perMinute,omitempty"`
}

// TokenIssuerStatus is the observed state of a TokenIssuer.
type TokenIssuerStatus struct {
	// conditions report Ready, with reasons such as SigningKeyNotFound and UsersSecretNotFound.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=8
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// observedGeneration is the generation last reconciled successfully.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// issuer is the "iss" of the tokens: spec.issuer, else the controller's public URL followed
	// by /{namespace}/{name}.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	Issuer string `json:"issuer,omitempty"`

	// endpoints are the URLs clients use, derived from issuer.
	// +optional
	Endpoints *IssuerEndpoints `json:"endpoints,omitempty"`
}

// IssuerEndpoints are the URLs of a TokenIssuer's main endpoints.
type IssuerEndpoints struct {
	// token is the simplejwt-compatible login endpoint (POST username and password).
	// +optional
	// +kubebuilder:validation:MaxLength=1100
	Token string `json:"token,omitempty"`

	// oauth2Token is the OAuth2 token endpoint (RFC 6749).
	// +optional
	// +kubebuilder:validation:MaxLength=1100
	OAuth2Token string `json:"oauth2Token,omitempty"`

	// jwks is the JWK Set of the keys that sign the tokens.
	// +optional
	// +kubebuilder:validation:MaxLength=1100
	JWKS string `json:"jwks,omitempty"`

	// discovery is the OpenID Connect discovery document.
	// +optional
	// +kubebuilder:validation:MaxLength=1100
	Discovery string `json:"discovery,omitempty"`
}

// EndpointsFor returns the endpoints of an issuer whose "iss" is iss.
func EndpointsFor(iss string) *IssuerEndpoints {
	return &IssuerEndpoints{
		Token:       iss + "/api/token/",
		OAuth2Token: iss + "/oauth2/token",
		JWKS:        iss + "/.well-known/jwks.json",
		Discovery:   iss + "/.well-known/openid-configuration",
	}
}

// TokenIssuer issues access and refresh tokens for the users in a Secret, signed by a SigningKey.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=ti;tokiss,categories=keyward
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`
// +kubebuilder:printcolumn:name="Signing Key",type=string,JSONPath=`.spec.signingKeyRef.name`
// +kubebuilder:printcolumn:name="Issuer",type=string,JSONPath=`.status.issuer`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type TokenIssuer struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the standard object metadata.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitzero"`

	// spec is the desired issuer.
	// +required
	Spec TokenIssuerSpec `json:"spec"`

	// status is the observed issuer.
	// +optional
	Status TokenIssuerStatus `json:"status,omitzero"`
}

// TokenIssuerList is a list of TokenIssuers.
// +kubebuilder:object:root=true
type TokenIssuerList struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the standard list metadata.
	// +optional
	metav1.ListMeta `json:"metadata,omitzero"`
	// items are the TokenIssuers.
	Items []TokenIssuer `json:"items"`
}

func init() {
	SchemeBuilder.Register(&TokenIssuer{}, &TokenIssuerList{})
}

// Defaults of the TokenIssuer fields where zero is a meaningful value, for objects that did not
// go through the API server's defaulting.
const (
	DefaultLeeway               = 30 * time.Second
	DefaultReuseGracePeriod     = 5 * time.Second
	DefaultAccessTokenLifetime  = 5 * time.Minute
	DefaultRefreshTokenLifetime = 24 * time.Hour
)

// AccessTokenLifetimeDuration returns spec.accessTokenLifetime, or its default when unset.
func (s *TokenIssuerSpec) AccessTokenLifetimeDuration() time.Duration {
	if s.AccessTokenLifetime.Duration <= 0 {
		return DefaultAccessTokenLifetime
	}
	return s.AccessTokenLifetime.Duration
}

// RefreshTokenLifetimeDuration returns spec.refreshTokenLifetime, or its default when unset.
func (s *TokenIssuerSpec) RefreshTokenLifetimeDuration() time.Duration {
	if s.RefreshTokenLifetime.Duration <= 0 {
		return DefaultRefreshTokenLifetime
	}
	return s.RefreshTokenLifetime.Duration
}

// LeewayDuration returns spec.leeway, or its default when unset. Zero is a valid leeway.
func (s *TokenIssuerSpec) LeewayDuration() time.Duration {
	if s.Leeway == nil {
		return DefaultLeeway
	}
	return s.Leeway.Duration
}

// IsEnabled reports whether refresh-token rotation is on (the default).
func (r *RefreshTokenRotation) IsEnabled() bool { return r.Enabled == nil || *r.Enabled }

// GracePeriod returns reuseGracePeriod, or its default when unset. Zero is a valid grace.
func (r *RefreshTokenRotation) GracePeriod() time.Duration {
	if r.ReuseGracePeriod == nil {
		return DefaultReuseGracePeriod
	}
	return r.ReuseGracePeriod.Duration
}

// EffectiveIssuer is the "iss" of the tokens a TokenIssuer issues: spec.issuer without a
// trailing slash, else {publicURL}/{namespace}/{name}. The issuer, the validator and the
// controller all derive it here, so they never disagree.
func (ti *TokenIssuer) EffectiveIssuer(publicURL string) string {
	if ti.Spec.Issuer != "" {
		return strings.TrimSuffix(ti.Spec.Issuer, "/")
	}
	return strings.TrimSuffix(publicURL, "/") + "/" + ti.Namespace + "/" + ti.Name
}
