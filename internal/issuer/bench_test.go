package issuer

import (
	"testing"

	"golang.org/x/crypto/bcrypt"
)

// BenchmarkBcryptCost10 is the ceiling of password logins on this machine: one compare per
// login, run on every core (b.RunParallel). docs/benchmarks.md compares logins/s with it.
func BenchmarkBcryptCost10(b *testing.B) {
	h, err := bcrypt.GenerateFromPassword([]byte("bench-password"), 10)
	if err != nil {
		b.Fatal(err)
	}
	hash := &bcryptHash{hash: h, cost: 10}
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if !hash.verify([]byte("bench-password")) {
				b.Error("no match")
			}
		}
	})
}
