package issuer

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"
	"sigs.k8s.io/yaml"

	"github.com/keyward/keyward/internal/token"
)

// Data keys of the users and clients Secrets.
const (
	// HtpasswdDataKey holds "name:hash" lines (bcrypt or argon2id PHC strings).
	HtpasswdDataKey = "htpasswd"
	// UsersYAMLDataKey holds optional per-user settings: groups, claims, disabled.
	UsersYAMLDataKey = "users.yaml"
	// ClientsYAMLDataKey holds the OAuth2 clients of a clients Secret.
	ClientsYAMLDataKey = "clients.yaml"
)

// MaxPasswordBytes is the longest password accepted. bcrypt reads at most 72 bytes and
// silently ignores the rest; keyward refuses longer passwords for every user, whatever their
// hash, so that the refusal says nothing about the user.
const MaxPasswordBytes = 72

// Bounds on argon2id parameters read from a users Secret, so that a mistaken Secret cannot
// make each login take seconds or gigabytes.
const (
	maxArgonMemoryKiB = 256 << 10 // 256 MiB
	maxArgonTime      = 16
	maxArgonThreads   = 16
)

// passwordHash is one stored password hash.
type passwordHash interface {
	// verify compares password with the hash; it does the full work whatever the outcome.
	verify(password []byte) bool
	// params identifies the hash scheme and cost, for choosing a dummy of the same cost.
	params() string
}

type bcryptHash struct {
	hash []byte
	cost int
}

func (h *bcryptHash) verify(password []byte) bool {
	return bcrypt.CompareHashAndPassword(h.hash, password) == nil
}

func (h *bcryptHash) params() string { return "bcrypt:" + strconv.Itoa(h.cost) }

type argon2idHash struct {
	memory  uint32
	time    uint32
	threads uint8
	keyLen  uint32
	salt    []byte
	key     []byte
}

func (h *argon2idHash) verify(password []byte) bool {
	got := argon2.IDKey(password, h.salt, h.time, h.memory, h.threads, h.keyLen)
	return subtle.ConstantTimeCompare(got, h.key) == 1
}

func (h *argon2idHash) params() string {
	return fmt.Sprintf("argon2id:m=%d,t=%d,p=%d,s=%d,k=%d", h.memory, h.time, h.threads, len(h.salt), len(h.key))
}

// parseHash reads a bcrypt ($2a$, $2b$, $2y$) or argon2id PHC hash.
func parseHash(s string) (passwordHash, error) {
	switch {
	case strings.HasPrefix(s, "$2a$") || strings.HasPrefix(s, "$2b$") || strings.HasPrefix(s, "$2y$"):
		cost, err := bcrypt.Cost([]byte(s))
		if err != nil {
			return nil, fmt.Errorf("bad bcrypt hash: %w", err)
		}
		return &bcryptHash{hash: []byte(s), cost: cost}, nil
	case strings.HasPrefix(s, "$argon2id$"):
		return parseArgon2id(s)
	default:
		return nil, errors.New("unsupported hash: want bcrypt ($2a$, $2b$, $2y$) or argon2id")
	}
}

// parseArgon2id reads "$argon2id$v=19$m=<KiB>,t=<iterations>,p=<threads>$<salt>$<hash>", salt
// and hash in unpadded standard base64 (the PHC string format).
func parseArgon2id(s string) (passwordHash, error) {
	parts := strings.Split(s, "$")
	if len(parts) != 6 || parts[2] != "v=19" {
		return nil, errors.New("bad argon2id hash: want $argon2id$v=19$m=..,t=..,p=..$salt$hash")
	}
	var m, t, p uint64
	for _, kv := range strings.Split(parts[3], ",") {
		k, v, ok := strings.Cut(kv, "=")
		n, err := strconv.ParseUint(v, 10, 32)
		if !ok || err != nil {
			return nil, errors.New("bad argon2id parameters")
		}
		switch k {
		case "m":
			m = n
		case "t":
			t = n
		case "p":
			p = n
		default:
			return nil, errors.New("bad argon2id parameters")
		}
	}
	if m < 8*p || m > maxArgonMemoryKiB || t < 1 || t > maxArgonTime || p < 1 || p > maxArgonThreads {
		return nil, fmt.Errorf("argon2id parameters out of bounds (m <= %d KiB, t <= %d, p <= %d)", maxArgonMemoryKiB, maxArgonTime, maxArgonThreads)
	}
	salt, err1 := base64.RawStdEncoding.DecodeString(parts[4])
	key, err2 := base64.RawStdEncoding.DecodeString(parts[5])
	if err1 != nil || err2 != nil || len(salt) < 8 || len(key) < 16 || len(key) > 64 {
		return nil, errors.New("bad argon2id salt or hash")
	}
	return &argon2idHash{memory: uint32(m), time: uint32(t), threads: uint8(p), keyLen: uint32(len(key)), salt: salt, key: key}, nil //nolint:gosec // G115: bounded above
}

// User is one user of a users Secret.
type User struct {
	Name     string
	hash     passwordHash
	Groups   []string
	Email    string
	Claims   map[string]any
	Disabled bool
}

// userSettings is one entry of users.yaml.
type userSettings struct {
	Groups   []string       `json:"groups,omitempty"`
	Claims   map[string]any `json:"claims,omitempty"`
	Disabled bool           `json:"disabled,omitempty"`
}

// Users is the parsed content of a users Secret.
type Users struct {
	byName map[string]*User
	// dummy is a hash of the most common scheme and cost among the users, compared against
	// for unknown users so that they cost the same work as known ones.
	dummy passwordHash
}

// Lookup returns the user called name, or nil.
func (u *Users) Lookup(name string) *User {
	if u == nil {
		return nil
	}
	return u.byName[name]
}

// Len is the number of users.
func (u *Users) Len() int { return len(u.byName) }

// dummyPassword is what an unknown user's password is compared with; nobody can log in
// with it because no User carries the dummy hash.
var dummyPassword = []byte("keyward-dummy-password-for-unknown-users")

// DummyCache keeps dummy hashes by scheme and cost, so that an edit of a users Secret does not
// compute a new bcrypt hash each time.
type DummyCache struct {
	mu sync.Mutex
	m  map[string]passwordHash
}

func (c *DummyCache) get(like passwordHash) (passwordHash, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	key := like.params()
	if d, ok := c.m[key]; ok {
		return d, nil
	}
	var d passwordHash
	switch h := like.(type) {
	case *bcryptHash:
		raw, err := bcrypt.GenerateFromPassword(dummyPassword, h.cost)
		if err != nil {
			return nil, fmt.Errorf("cannot make dummy hash: %w", err)
		}
		d = &bcryptHash{hash: raw, cost: h.cost}
	case *argon2idHash:
		salt := make([]byte, len(h.salt))
		copy(salt, "keyward-dummy-salt-keyward-dummy-salt")
		d = &argon2idHash{memory: h.memory, time: h.time, threads: h.threads, keyLen: h.keyLen, salt: salt,
			key: argon2.IDKey(dummyPassword, salt, h.time, h.memory, h.threads, h.keyLen)}
	}
	if c.m == nil {
		c.m = make(map[string]passwordHash)
	}
	c.m[key] = d
	return d, nil
}

// ParseUsers reads a users Secret's data. Lines of htpasswd are "name:hash"; blank lines and
// lines starting with # are ignored. users.yaml maps names to groups, claims and disabled.
// Claims named like registered or keyward claims are refused, except email.
func ParseUsers(data map[string][]byte, dummies *DummyCache) (*Users, error) {
	raw, ok := data[HtpasswdDataKey]
	if !ok {
		return nil, fmt.Errorf("users Secret has no data key %q", HtpasswdDataKey)
	}
	u := &Users{byName: make(map[string]*User)}
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	line := 0
	costs := map[string]int{}
	var examples = map[string]passwordHash{}
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		name, hash, ok := strings.Cut(text, ":")
		if !ok || name == "" {
			return nil, fmt.Errorf("htpasswd line %d: want name:hash", line)
		}
		if _, dup := u.byName[name]; dup {
			return nil, fmt.Errorf("htpasswd line %d: user %q appears twice", line, name)
		}
		h, err := parseHash(hash)
		if err != nil {
			return nil, fmt.Errorf("htpasswd line %d (user %q): %w", line, name, err)
		}
		u.byName[name] = &User{Name: name, hash: h}
		costs[h.params()]++
		examples[h.params()] = h
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("cannot read htpasswd: %w", err)
	}
	if settingsRaw, ok := data[UsersYAMLDataKey]; ok && len(bytes.TrimSpace(settingsRaw)) > 0 {
		var settings map[string]userSettings
		if err := yaml.UnmarshalStrict(settingsRaw, &settings); err != nil {
			return nil, fmt.Errorf("cannot parse users.yaml: %w", err)
		}
		for name, s := range settings {
			user := u.byName[name]
			if user == nil {
				// Settings of a user without a password: nothing to apply.
				continue
			}
			user.Groups = s.Groups
			user.Disabled = s.Disabled
			for k, v := range s.Claims {
				if k == "email" {
					email, ok := v.(string)
					if !ok {
						return nil, fmt.Errorf("users.yaml: user %q: claim email is not a string", name)
					}
					user.Email = email
					continue
				}
				if token.IsRegistered(k) || reservedClaim(k) {
					return nil, fmt.Errorf("users.yaml: user %q: claim %q is reserved", name, k)
				}
				if user.Claims == nil {
					user.Claims = make(map[string]any)
				}
				user.Claims[k] = v
			}
		}
	}
	// The dummy follows the most common scheme and cost (ties: the highest key, so the
	// choice is stable).
	if len(examples) > 0 {
		keys := slices.Sorted(maps.Keys(costs))
		best := keys[0]
		for _, k := range keys {
			if costs[k] >= costs[best] {
				best = k
			}
		}
		d, err := dummies.get(examples[best])
		if err != nil {
			return nil, err
		}
		u.dummy = d
	} else {
		d, err := dummies.get(&bcryptHash{cost: bcrypt.DefaultCost})
		if err != nil {
			return nil, err
		}
		u.dummy = d
	}
	return u, nil
}

// reservedClaim reports names keyward sets itself besides those with a field in token.Claims.
func reservedClaim(name string) bool {
	switch name {
	case "typ", "azp", "auth_time", "cnf", "act", "rv":
		return true
	}
	return false
}

// Client is an OAuth2 client of a clients Secret.
type Client struct {
	ID           string
	secretSHA256 []byte
	Scopes       []string
	Audiences    []string
}

type clientSettings struct {
	SecretSHA256 string   `json:"secretSHA256"`
	Scopes       []string `json:"scopes,omitempty"`
	Audiences    []string `json:"audiences,omitempty"`
}

// Clients is the parsed content of a clients Secret.
type Clients struct {
	byID map[string]*Client
}

// dummyDigest is compared against for unknown clients, so that they cost the same.
var dummyDigest = sha256.Sum256([]byte("keyward-dummy-client-secret"))

// Authenticate checks a client's secret in constant time (SHA-256 of the presented secret
// against the stored digest) and returns the client, or nil.
func (c *Clients) Authenticate(id, secret string) *Client {
	got := sha256.Sum256([]byte(secret))
	var cl *Client
	if c != nil {
		cl = c.byID[id]
	}
	want := dummyDigest[:]
	if cl != nil {
		want = cl.secretSHA256
	}
	if subtle.ConstantTimeCompare(got[:], want) != 1 || cl == nil {
		return nil
	}
	return cl
}

// ParseClients reads a clients Secret's clients.yaml: a map from client ID to secretSHA256
// (64 hex digits: the SHA-256 of the client secret), scopes and audiences.
func ParseClients(data map[string][]byte) (*Clients, error) {
	raw, ok := data[ClientsYAMLDataKey]
	if !ok {
		return nil, fmt.Errorf("clients Secret has no data key %q", ClientsYAMLDataKey)
	}
	var settings map[string]clientSettings
	if err := yaml.UnmarshalStrict(raw, &settings); err != nil {
		return nil, fmt.Errorf("cannot parse clients.yaml: %w", err)
	}
	c := &Clients{byID: make(map[string]*Client, len(settings))}
	for id, s := range settings {
		digest, err := hex.DecodeString(strings.ToLower(s.SecretSHA256))
		if err != nil || len(digest) != sha256.Size {
			return nil, fmt.Errorf("clients.yaml: client %q: secretSHA256 must be 64 hex digits", id)
		}
		if id == "" || strings.ContainsAny(id, ": ") {
			return nil, fmt.Errorf("clients.yaml: client ID %q must be non-empty, without ':' or spaces", id)
		}
		c.byID[id] = &Client{ID: id, secretSHA256: digest, Scopes: s.Scopes, Audiences: s.Audiences}
	}
	return c, nil
}
