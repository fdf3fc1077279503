package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Algorithm is a JWS signature algorithm (RFC 7518, RFC 8037).
// +kubebuilder:validation:Enum=ES256;ES384;ES512;EdDSA;RS256;RS384;RS512;PS256;PS384;PS512;HS256;HS384;HS512
type Algorithm string

// Supported algorithms.
const (
	AlgorithmES256 Algorithm = "ES256"
	AlgorithmES384 Algorithm = "ES384"
	AlgorithmES512 Algorithm = "ES512"
	AlgorithmEdDSA Algorithm = "EdDSA"
	AlgorithmRS256 Algorithm = "RS256"
	AlgorithmRS384 Algorithm = "RS384"
	AlgorithmRS512 Algorithm = "RS512"
	AlgorithmPS256 Algorithm = "PS256"
	AlgorithmPS384 Algorithm = "PS384"
	AlgorithmPS512 Algorithm = "PS512"
	AlgorithmHS256 Algorithm = "HS256"
	AlgorithmHS384 Algorithm = "HS384"
	AlgorithmHS512 Algorithm = "HS512"
)

// Algorithms lists every supported algorithm.
var Algorithms = []Algorithm{
	AlgorithmES256, AlgorithmES384, AlgorithmES512, AlgorithmEdDSA,
	AlgorithmRS256, AlgorithmRS384, AlgorithmRS512,
	AlgorithmPS256, AlgorithmPS384, AlgorithmPS512,
	AlgorithmHS256, AlgorithmHS384, AlgorithmHS512,
}

// IsSymmetric reports whether the algorithm uses a shared secret (HMAC), whose key is never
// published in a JWKS.
func (a Algorithm) IsSymmetric() bool {
	return a == AlgorithmHS256 || a == AlgorithmHS384 || a == AlgorithmHS512
}

// KeyState is the lifecycle state of one key in a SigningKey's key set.
// +kubebuilder:validation:Enum=Pending;Active;Retired
type KeyState string

// Key lifecycle states.
const (
	// KeyStatePending keys are published but do not sign yet, so that consumers caching the
	// JWKS learn them before the first token they sign.
	KeyStatePending KeyState = "Pending"
	// KeyStateActive is the single key that signs new tokens.
	KeyStateActive KeyState = "Active"
	// KeyStateRetired keys no longer sign but stay published until every token they signed has
	// expired.
	KeyStateRetired KeyState = "Retired"
)

// SigningKeySpec defines a set of signing keys and how it rotates.
type SigningKeySpec struct {
	// algorithm is the JWS algorithm of the keys. HS256, HS384 and HS512 use a shared secret
	// that is never published; only roles allowed to read the key Secret can verify them.
	// Changing it rotates to a key of the new algorithm like a scheduled rotation.
	// +optional
	// +kubebuilder:default=ES256
	Algorithm Algorithm `json:"algorithm,omitempty"`

	// rotation controls how often a new key takes over signing.
	// +optional
	// +kubebuilder:default={every: "720h", prepublish: "10m"}
	Rotation KeyRotation `json:"rotation,omitzero"`

	// import brings an existing private key instead of generating one. An imported key is
	// published as Pending for rotation.prepublish like a generated one, then signs, and is not
	// rotated automatically.
	// +optional
	Import *KeyImport `json:"import,omitempty"`

	// revokedKeyIDs lists key IDs (kid) to withdraw at once, for example after a compromise.
	// A revoked key leaves the published JWKS immediately; if it was Active, another key takes
	// over signing immediately.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=128
	RevokedKeyIDs []string `json:"revokedKeyIDs,omitempty"`
}

// KeyRotation is the rotation schedule of a SigningKey.
// +kubebuilder:validation:XValidation:rule="duration(self.prepublish) < duration(self.every)",message="prepublish must be shorter than every"
type KeyRotation struct {
	// every is how long a key signs before its successor takes over. At least 1m.
	// +optional
	// +kubebuilder:default="720h"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Format=duration
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1m')",message="every must be at least 1m"
	Every metav1.Duration `json:"every,omitzero"`

	// prepublish is how long a new key is published before it signs, so that consumers that
	// cache the JWKS learn it first. At least 5s, shorter than every.
	// +optional
	// +kubebuilder:default="10m"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Format=duration
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('5s')",message="prepublish must be at least 5s"
	Prepublish metav1.Duration `json:"prepublish,omitzero"`
}

// KeyImport names a Secret holding a private key to use instead of a generated one.
type KeyImport struct {
	// secretRef names a Secret in the SigningKey's namespace. Its data key "key.pem" holds a PEM
	// private key (PKCS#8, PKCS#1 or SEC1); for HS algorithms the data key "key" holds the raw
	// secret (at least as many bytes as the hash output).
	// +required
	SecretRef LocalObjectReference `json:"secretRef"`
}

// KeyStatus reports one key of the set and its lifecycle.
type KeyStatus struct {
	// kid is the key ID, the RFC 7638 JWK thumbprint (SHA-256, base64url).
	// +required
	// +kubebuilder:validation:MaxLength=128
	KID string `json:"kid"`

	// algorithm is the key's JWS algorithm.
	// +required
	Algorithm Algorithm `json:"algorithm"`

	// state is Pending, Active or Retired.
	// +required
	State KeyState `json:"state"`

	// imported is true for a key that came from spec.import.
	// +optional
	Imported bool `json:"imported,omitempty"`

	// publishedAt is when the key was first published (became Pending).
	// +required
	PublishedAt metav1.Time `json:"publishedAt"`

	// activatesAt is when a Pending key is scheduled to start signing.
	// +optional
	ActivatesAt *metav1.Time `json:"activatesAt,omitempty"`

	// activatedAt is when the key started signing.
	// +optional
	ActivatedAt *metav1.Time `json:"activatedAt,omitempty"`

	// retiredAt is when the key stopped signing.
	// +optional
	RetiredAt *metav1.Time `json:"retiredAt,omitempty"`

	// removesAt is when a Retired key leaves the published set: every token it signed has
	// expired by then.
	// +optional
	RemovesAt *metav1.Time `json:"removesAt,omitempty"`
}

// SigningKeyStatus is the observed state of a SigningKey.
type SigningKeyStatus struct {
	// conditions report Ready.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=8
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// observedGeneration is the generation last reconciled successfully.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// activeKeyID is the kid of the key that signs new tokens.
	// +optional
	// +kubebuilder:validation:MaxLength=128
	ActiveKeyID string `json:"activeKeyID,omitempty"`

	// secretName is the Secret holding the private key set.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	SecretName string `json:"secretName,omitempty"`

	// jwksConfigMapName is the ConfigMap holding the public JWK Set under the key "jwks.json".
	// +optional
	// +kubebuilder:validation:MaxLength=253
	JWKSConfigMapName string `json:"jwksConfigMapName,omitempty"`

	// keys lists the published keys and their lifecycle.
	// +optional
	// +listType=map
	// +listMapKey=kid
	// +kubebuilder:validation:MaxItems=1000
	Keys []KeyStatus `json:"keys,omitempty"`
}

// SigningKey is a rotating set of JWS signing keys. The controller keeps the private keys in a
// Secret it owns and publishes the public keys in a ConfigMap it owns.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=sk;skey,categories=keyward
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Algorithm",type=string,JSONPath=`.spec.algorithm`
// +kubebuilder:printcolumn:name="Active Key",type=string,JSONPath=`.status.activeKeyID`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type SigningKey struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the standard object metadata.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitzero"`

	// spec is the desired key set.
	// +required
	Spec SigningKeySpec `json:"spec"`

	// status is the observed key set.
	// +optional
	Status SigningKeyStatus `json:"status,omitzero"`
}

// SigningKeyList is a list of SigningKeys.
// +kubebuilder:object:root=true
type SigningKeyList struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the standard list metadata.
	// +optional
	metav1.ListMeta `json:"metadata,omitzero"`
	// items are the SigningKeys.
	Items []SigningKey `json:"items"`
}

func init() {
	SchemeBuilder.Register(&SigningKey{}, &SigningKeyList{})
}
