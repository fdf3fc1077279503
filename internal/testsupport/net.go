package testsupport

import (
	"net"
	"testing"
)

// FreeAddr returns 127.0.0.1:<a port that was free a moment ago>, for a process or server
// a test starts on a fixed address.
func FreeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer func() { _ = l.Close() }()
	return l.Addr().String(), nil
}

// MustFreeAddr is FreeAddr failing the test on an error.
func MustFreeAddr(t testing.TB) string {
	t.Helper()
	a, err := FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	return a
}
