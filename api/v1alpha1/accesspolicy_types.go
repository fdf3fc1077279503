package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Reasons of an AccessPolicy's Ready condition.
const (
	// ReasonInvalidExpression: a rule's when expression does not compile or is not a bool.
	ReasonInvalidExpression = "InvalidExpression"
)

// HTTPMethod is an HTTP request method a rule applies to.
// +kubebuilder:validation:Enum=GET;HEAD;POST;PUT;PATCH;DELETE;OPTIONS;CONNECT;TRACE
type HTTPMethod string

// AccessPolicySpec says which requests to which hosts need which tokens.
type AccessPolicySpec struct {
	// hosts are the request hosts the policy covers: exact names ("app.example.com"), one-label
	// wildcards ("*.example.com" covers "a.example.com", not "example.com" nor
	// "a.b.example.com"), or "*" for every host. Names are compared case-insensitively and
	// without the port. An exact name wins over a wildcard, a wildcard over "*".
	// +required
	// +listType=set
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=253
	// +kubebuilder:validation:items:XValidation:rule="self == '*' || self.matches('^([*][.])?[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')",message="hosts must be lowercase DNS names, optionally starting with '*.', or '*'"
	Hosts []string `json:"hosts"`

	// rules are matched by path prefix (the longest prefix wins) and method. A request to a
	// covered host that no rule matches is denied.
	// +required
	// +listType=atomic
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=64
	Rules []AccessRule `json:"rules"`
}

// AccessRule is what a set of paths needs: nothing (anonymous) or a token from one of the
// listed issuers, for one of the audiences, satisfying an expression.
// +kubebuilder:validation:XValidation:rule="(has(self.anonymous) && self.anonymous) ? !has(self.issuers) && !has(self.audiences) && !has(self.when) && !has(self.headers) : has(self.issuers)",message="an anonymous rule has no issuers, audiences, when or headers; any other rule needs issuers"
type AccessRule struct {
	// paths are URL path prefixes, each starting with "/". They are compared with the request
	// path after percent-decoding and removal of dot segments and repeated slashes. A prefix
	// ending in "/" also covers the path without that slash ("/admin/" covers "/admin").
	// +required
	// +listType=set
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=1024
	// +kubebuilder:validation:items:XValidation:rule="self.startsWith('/')",message="paths must start with '/'"
	// +kubebuilder:validation:items:XValidation:rule="!self.contains('?') && !self.contains('#') && !self.contains('%') && !self.contains('//') && !self.contains('/./') && !self.contains('/../') && !self.endsWith('/.') && !self.endsWith('/..')",message="paths must be plain, normalized paths without query, fragment, percent-encoding or dot segments"
	Paths []string `json:"paths"`

	// methods restricts the rule to these HTTP methods; every method when empty. For the same
	// path, a rule listing the method wins over one without methods.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=9
	Methods []HTTPMethod `json:"methods,omitempty"`

	// anonymous lets every request through without a token. It excludes issuers, audiences,
	// when and headers.
	// +optional
	Anonymous bool `json:"anonymous,omitempty"`

	// issuers are the token issuers whose access tokens the rule accepts.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=8
	Issuers []IssuerReference `json:"issuers,omitempty"`

	// audiences, when set, require the token's aud to hold at least one of them.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=256
	Audiences []string `json:"audiences,omitempty"`

	// when is a CEL expression over the token's claims, as the map "claims", that must be
	// true, for example "'admin' in claims.groups" or "claims.scope.split(' ').exists(s, s ==
	// 'write')". A missing claim or any evaluation error counts as false (403).
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=2048
	When string `json:"when,omitempty"`

	// headers maps upstream request header names to claim names: the header gets the claim's
	// value (a list is comma-joined, a number or boolean is written as JSON, an object is not
	// sent). Inbound copies of these headers are removed.
	// +optional
	// +kubebuilder:validation:MaxProperties=16
	// +kubebuilder:validation:XValidation:rule="self.all(h, h.size() <= 64 && h.matches('^[A-Za-z0-9][A-Za-z0-9-]*$'))",message="header names must be letters, digits and '-', at most 64 characters"
	// +kubebuilder:validation:XValidation:rule="self.all(h, !(h.lowerAscii() in ['authorization', 'cookie', 'host', 'content-length', 'transfer-encoding', 'connection', 'x-auth-request-user', 'x-auth-request-email', 'x-auth-request-groups']))",message="headers must not set Authorization, Cookie, hop-by-hop or identity headers"
	Headers map[string]ClaimName `json:"headers,omitempty"`
}

// ClaimName is the name of a token claim.
// +kubebuilder:validation:MinLength=1
// +kubebuilder:validation:MaxLength=128
type ClaimName string

// IssuerReference is a TokenIssuer in the policy's namespace (name), or an external OIDC
// issuer (issuerURL, with its keys found by discovery or at jwksURL).
// +kubebuilder:validation:XValidation:rule="has(self.name) != has(self.issuerURL)",message="exactly one of name and issuerURL must be set"
// +kubebuilder:validation:XValidation:rule="has(self.issuerURL) || (!has(self.discoveryURL) && !has(self.jwksURL) && !has(self.caBundle) && !has(self.leeway))",message="discoveryURL, jwksURL, caBundle and leeway apply to external issuers (issuerURL) only"
// +kubebuilder:validation:XValidation:rule="!(has(self.discoveryURL) && has(self.jwksURL))",message="discoveryURL and jwksURL are mutually exclusive"
type IssuerReference struct {
	// name is a TokenIssuer in the policy's namespace.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name,omitempty"`

	// issuerURL is an external issuer: its tokens' exact iss. Unless jwksURL is set, its keys
	// are found through OIDC discovery at discoveryURL, by default
	// {issuerURL}/.well-known/openid-configuration. https is required (http only for
	// loopback addresses, for tests).
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=512
	// +kubebuilder:validation:XValidation:rule="isURL(self) && url(self).getScheme() in ['https', 'http'] && url(self).getHostname() != '' && !self.contains('?') && !self.contains('#')",message="issuerURL must be an http or https URL with a host and no query or fragment"
	IssuerURL string `json:"issuerURL,omitempty"`

	// discoveryURL is where the external issuer's OpenID configuration is read.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=512
	// +kubebuilder:validation:XValidation:rule="isURL(self) && url(self).getScheme() in ['https', 'http'] && url(self).getHostname() != ''",message="discoveryURL must be an http or https URL with a host"
	DiscoveryURL string `json:"discoveryURL,omitempty"`

	// jwksURL is where the external issuer's JWK Set is read, skipping discovery.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=512
	// +kubebuilder:validation:XValidation:rule="isURL(self) && url(self).getScheme() in ['https', 'http'] && url(self).getHostname() != ''",message="jwksURL must be an http or https URL with a host"
	JWKSURL string `json:"jwksURL,omitempty"`

	// caBundle holds PEM certificates that verify the external issuer's TLS server; the
	// system roots when unset.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=65536
	CABundle string `json:"caBundle,omitempty"`

	// leeway is the clock skew tolerated on an external issuer's exp, nbf and iat (default
	// 30s). A TokenIssuer's own spec.leeway applies to its tokens.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Format=duration
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('0s') && duration(self) <= duration('5m')",message="leeway must be between 0s and 5m"
	Leeway *metav1.Duration `json:"leeway,omitempty"`
}

// AccessPolicyStatus is the observed state of an AccessPolicy.
type AccessPolicyStatus struct {
	// conditions report Ready: False with reason InvalidExpression when a when expression does
	// not compile; the message names the rule.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=8
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// observedGeneration is the generation last reconciled successfully.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
}

// AccessPolicy says which requests need which tokens: validators answer their ingress's
// external authorization checks with it.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=ap;apol,categories=keyward
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`
// +kubebuilder:printcolumn:name="Hosts",type=string,JSONPath=`.spec.hosts`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type AccessPolicy struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the standard object metadata.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitzero"`

	// spec is the desired policy.
	// +required
	Spec AccessPolicySpec `json:"spec"`

	// status is the observed policy.
	// +optional
	Status AccessPolicyStatus `json:"status,omitzero"`
}

// AccessPolicyList is a list of AccessPolicies.
// +kubebuilder:object:root=true
type AccessPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the standard list metadata.
	// +optional
	metav1.ListMeta `json:"metadata,omitzero"`
	// items are the AccessPolicies.
	Items []AccessPolicy `json:"items"`
}

func init() {
	SchemeBuilder.Register(&AccessPolicy{}, &AccessPolicyList{})
}
