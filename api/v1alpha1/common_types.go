package v1alpha1

// ConditionReady is the condition every keyward resource reports: True when the object is
// fully reconciled and usable.
const ConditionReady = "Ready"

// Labels keyward puts on (and selects) the Secrets and ConfigMaps it caches. keyward never
// caches every Secret in the cluster: only those carrying LabelUse.
const (
	// LabelUse marks a Secret or ConfigMap keyward reads; its value says what for.
	LabelUse = "keyward.dev/use"
	// LabelSigningKey names the SigningKey a key-set Secret or JWKS ConfigMap belongs to.
	LabelSigningKey = "keyward.dev/signing-key"

	// UseSigningKey is the LabelUse value of a key-set Secret the controller owns.
	UseSigningKey = "signing-key"
	// UseJWKS is the LabelUse value of a public JWKS ConfigMap the controller owns.
	UseJWKS = "jwks"
	// UseReferenced is the LabelUse value the controller puts on a Secret a keyward object
	// refers to (users, clients, key import), so that keyward's caches see it.
	UseReferenced = "referenced"
)

// SecretTypeSigningKey is the type of the Secret holding a SigningKey's private key set.
const SecretTypeSigningKey = "keyward.dev/signing-key"

// Data keys of the Secrets and ConfigMaps keyward writes or reads.
const (
	// KeySetDataKey holds the key set (private JWKs and lifecycle timestamps) in a key-set Secret.
	KeySetDataKey = "keyset.json"
	// JWKSDataKey holds the public JWK Set in a JWKS ConfigMap.
	JWKSDataKey = "jwks.json"
	// ImportPEMDataKey holds an imported PEM private key (PKCS#8, PKCS#1 or SEC1).
	ImportPEMDataKey = "key.pem"
	// ImportSecretDataKey holds an imported raw HMAC secret.
	ImportSecretDataKey = "key"
)

// LocalObjectReference names an object in the same namespace.
type LocalObjectReference struct {
	// name of the referenced object.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
}

// SecretReference names a Secret in the same namespace.
type SecretReference struct {
	// secretRef names the Secret.
	// +required
	SecretRef LocalObjectReference `json:"secretRef"`
}
