package validator

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"fmt"
	"math/big"
	"runtime"
	"strings"
	"testing"

	"github.com/lestrrat-go/jwx/v3/jwk"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
	"github.com/keyward/keyward/internal/token"
)

// benchAlgs are the algorithms of the cache-hit and cache-miss benchmarks.
var benchAlgs = []keywardv1.Algorithm{
	keywardv1.AlgorithmES256, keywardv1.AlgorithmES384, keywardv1.AlgorithmES512, keywardv1.AlgorithmEdDSA,
	keywardv1.AlgorithmRS256, keywardv1.AlgorithmPS256, keywardv1.AlgorithmHS256,
}

// benchFixture is the sample policy with TokenIssuer main signing with alg.
func benchFixture(b *testing.B, alg keywardv1.Algorithm) (*fixture, *token.Signer) {
	f := newFixture(b)
	f.v.allowHS = true
	sk := "bench-" + strings.ToLower(string(alg))
	k := f.addKey(sk, alg)
	f.useSigningKey(sk)
	return f, k.signer
}

// BenchmarkCheck is the decision core on the sample policy's "/" rule (audience check and two
// mapped headers): a cache hit repeats one token, a cache miss presents a fresh token each time.
func BenchmarkCheck(b *testing.B) {
	for _, alg := range benchAlgs {
		b.Run(string(alg)+"/hit", func(b *testing.B) {
			f, s := benchFixture(b, alg)
			req := request("/api/items", f.tokenWith(s, token.TypeAccess, nil))
			ctx := b.Context()
			if d := f.v.Check(ctx, req); !d.Allowed() {
				b.Fatalf("denied: %s", d.Reason)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if d := f.v.Check(ctx, req); !d.Allowed() {
					b.Fatal(d.Reason)
				}
			}
		})
		b.Run(string(alg)+"/miss", func(b *testing.B) { benchMiss(b, alg) })
	}
}

// BenchmarkStdlibES256Verify is the floor of a cache miss: SHA-256 of a keyward access
// token's signing input and crypto/ecdsa's P-256 verification, nothing else.
func BenchmarkStdlibES256Verify(b *testing.B) {
	f, s := benchFixture(b, keywardv1.AlgorithmES256)
	raw := f.tokenWith(s, token.TypeAccess, nil)
	dot := strings.LastIndexByte(raw, '.')
	input := []byte(raw[:dot])
	sig, err := decodeB64(raw[dot+1:])
	if err != nil {
		b.Fatal(err)
	}
	key, err := f.keys[keywardv1.AlgorithmES256].stored.Key()
	if err != nil {
		b.Fatal(err)
	}
	var priv ecdsa.PrivateKey
	if err := jwk.Export(key, &priv); err != nil {
		b.Fatal(err)
	}
	pub := &priv.PublicKey
	b.ReportAllocs()
	for b.Loop() {
		d := sha256.Sum256(input)
		r := new(big.Int).SetBytes(sig[:32])
		ss := new(big.Int).SetBytes(sig[32:])
		if !ecdsa.Verify(pub, d[:], r, ss) {
			b.Fatal("signature does not verify")
		}
	}
}

// BenchmarkMemory fills the verified-token cache with 100,000 ES256 tokens over 1,000
// AccessPolicies and reports the live heap (MB) it takes, measured after a GC.
func BenchmarkMemory(b *testing.B) {
	for b.Loop() {
		runtime.GC()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		f, s := benchFixture(b, keywardv1.AlgorithmES256)
		for i := range 1000 {
			p := samplePolicy()
			p.Name = fmt.Sprintf("app-%d", i)
			p.Spec.Hosts = []string{fmt.Sprintf("app-%d.example.test", i)}
			f.v.store.setPolicy(p)
		}
		runtime.GC()
		var withPolicies runtime.MemStats
		runtime.ReadMemStats(&withPolicies)
		const n = 100_000
		ctx := b.Context()
		for i := range n {
			req := request("/api", f.tokenWith(s, token.TypeAccess, func(c *token.Claims) {
				c.Subject = fmt.Sprintf("user-%d", i)
				c.SessionID = fmt.Sprintf("session-%d", i)
			}))
			req.Host = fmt.Sprintf("app-%d.example.test", i%1000)
			if d := f.v.Check(ctx, req); !d.Allowed() {
				b.Fatal(d.Reason)
			}
		}
		if got := f.v.cache.len(); got != n {
			b.Fatalf("cache holds %d tokens, want %d", got, n)
		}
		runtime.GC()
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/(1<<20), "MB-heap")
		b.ReportMetric(float64(withPolicies.HeapAlloc-before.HeapAlloc)/(1<<20), "MB-policies")
		b.ReportMetric(float64(after.HeapAlloc-withPolicies.HeapAlloc)/n, "B/token")
		runtime.KeepAlive(f)
	}
}

var _ = metav1.Now

// BenchmarkES256MissVsStdlib alternates a cache-miss check and the bare standard-library
// verification three times, so that the ratio compares runs made under the same load.
func BenchmarkES256MissVsStdlib(b *testing.B) {
	for round := range 3 {
		b.Run(fmt.Sprintf("round%d/miss", round), func(b *testing.B) { benchMiss(b, keywardv1.AlgorithmES256) })
		b.Run(fmt.Sprintf("round%d/stdlib", round), BenchmarkStdlibES256Verify)
	}
}

// benchMiss checks b.N fresh tokens, minted before the timer starts (and their garbage
// collected), so that every check is a cache miss and nothing but checking is timed.
func benchMiss(b *testing.B, alg keywardv1.Algorithm) {
	f, s := benchFixture(b, alg)
	reqs := make([]Request, b.N)
	for i := range reqs {
		reqs[i] = request("/api/items", f.tokenWith(s, token.TypeAccess, nil))
	}
	ctx := b.Context()
	runtime.GC()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if d := f.v.Check(ctx, reqs[i]); !d.Allowed() {
			b.Fatal(d.Reason)
		}
	}
}
