package keys

import (
	"encoding/json"
	"fmt"

	"github.com/lestrrat-go/jwx/v3/jwk"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
)

// StoredKey is one key of a key set as kept in the key-set Secret: its lifecycle and its JWK.
// The JWK is private, except for a key recovered after its Secret was lost, whose public part
// only survives (from the JWKS ConfigMap); such a key can verify but never sign.
type StoredKey struct {
	Lifecycle
	JWK json.RawMessage `json:"jwk"`
	// PublicOnly marks a key recovered without its private part.
	PublicOnly bool `json:"publicOnly,omitempty"`
}

// KeySet is the content of a key-set Secret's "keyset.json".
type KeySet struct {
	Keys []StoredKey `json:"keys"`
}

// ParseKeySet decodes a key set.
func ParseKeySet(data []byte) (*KeySet, error) {
	var ks KeySet
	if err := json.Unmarshal(data, &ks); err != nil {
		return nil, fmt.Errorf("cannot decode key set: %w", err)
	}
	for i := range ks.Keys {
		if ks.Keys[i].KID == "" || len(ks.Keys[i].JWK) == 0 {
			return nil, fmt.Errorf("cannot decode key set: key %d has no kid or no JWK", i)
		}
	}
	return &ks, nil
}

// Marshal encodes the key set for the Secret.
func (ks *KeySet) Marshal() ([]byte, error) {
	return json.Marshal(ks)
}

// Lifecycles returns the lifecycle of every key.
func (ks *KeySet) Lifecycles() []Lifecycle {
	out := make([]Lifecycle, len(ks.Keys))
	for i := range ks.Keys {
		out[i] = ks.Keys[i].Lifecycle
	}
	return out
}

// Active returns the Active key, or nil.
func (ks *KeySet) Active() *StoredKey {
	for i := range ks.Keys {
		if ks.Keys[i].State() == keywardv1.KeyStateActive {
			return &ks.Keys[i]
		}
	}
	return nil
}

// Key parses the stored JWK.
func (k *StoredKey) Key() (jwk.Key, error) {
	key, err := jwk.ParseKey(k.JWK)
	if err != nil {
		return nil, fmt.Errorf("cannot parse key %s: %w", k.KID, err)
	}
	return key, nil
}

// NewStoredKey stores a raw private key under the given lifecycle, filling in its kid.
func NewStoredKey(l Lifecycle, raw any) (StoredKey, error) {
	key, err := JWK(l.Algorithm, raw)
	if err != nil {
		return StoredKey{}, err
	}
	kid, _ := key.KeyID()
	l.KID = kid
	data, err := json.Marshal(key)
	if err != nil {
		return StoredKey{}, fmt.Errorf("cannot encode key %s: %w", kid, err)
	}
	return StoredKey{Lifecycle: l, JWK: data}, nil
}

// PublicJWKS returns the public JWK Set of every asymmetric key in the set. Symmetric (HS) keys
// are shared secrets and are never included.
func (ks *KeySet) PublicJWKS() ([]byte, error) {
	set := jwk.NewSet()
	for i := range ks.Keys {
		k := &ks.Keys[i]
		if k.Algorithm.IsSymmetric() {
			continue
		}
		key, err := k.Key()
		if err != nil {
			return nil, err
		}
		pub, err := Public(key)
		if err != nil {
			return nil, fmt.Errorf("cannot publish key %s: %w", k.KID, err)
		}
		if err := set.AddKey(pub); err != nil {
			return nil, fmt.Errorf("cannot publish key %s: %w", k.KID, err)
		}
	}
	return json.Marshal(set)
}

// PublicKeysByKID reads a published JWK Set and returns each key's JSON by kid.
func PublicKeysByKID(jwks []byte) (map[string][]byte, error) {
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(jwks, &set); err != nil {
		return nil, fmt.Errorf("cannot decode JWK set: %w", err)
	}
	out := make(map[string][]byte, len(set.Keys))
	for _, raw := range set.Keys {
		var head struct {
			KID string `json:"kid"`
		}
		if err := json.Unmarshal(raw, &head); err != nil || head.KID == "" {
			continue
		}
		out[head.KID] = raw
	}
	return out, nil
}
