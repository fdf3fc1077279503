package tlsreload_test

import (
	"context"
	"crypto/tls"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/keyward/keyward/internal/testsupport"
	"github.com/keyward/keyward/internal/tlsreload"
)

// secretVolume mimics a kubelet Secret volume: the files are links into a data directory
// that an update replaces atomically.
type secretVolume struct {
	t   *testing.T
	dir string
	gen int
}

func newSecretVolume(t *testing.T) *secretVolume {
	return &secretVolume{t: t, dir: t.TempDir()}
}

func (v *secretVolume) path(name string) string { return filepath.Join(v.dir, name) }

func (v *secretVolume) write(files map[string][]byte) {
	v.t.Helper()
	v.gen++
	data := filepath.Join(v.dir, "..data-"+string(rune('a'+v.gen)))
	if err := os.Mkdir(data, 0o700); err != nil {
		v.t.Fatal(err)
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(data, name), b, 0o600); err != nil {
			v.t.Fatal(err)
		}
	}
	tmp := filepath.Join(v.dir, "..data_tmp")
	if err := os.Symlink(filepath.Base(data), tmp); err != nil {
		v.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(v.dir, "..data")); err != nil {
		v.t.Fatal(err)
	}
	for name := range files {
		link := filepath.Join(v.dir, name)
		if _, err := os.Lstat(link); err != nil {
			if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
				v.t.Fatal(err)
			}
		}
	}
}

// serveHTTPS serves "ok" over TLS from src on 127.0.0.1 and returns the address.
func serveHTTPS(t *testing.T, src *tlsreload.Source) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler:           http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") }),
		ReadHeaderTimeout: 5 * time.Second,
		// Refused handshakes are what some tests expect: keep them out of the test output.
		ErrorLog: log.New(io.Discard, "", 0),
	}
	go func() { _ = srv.Serve(src.Listener(ln)) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

func handshake(addr string, cfg *tls.Config) (*tls.ConnectionState, error) {
	d := &net.Dialer{Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	st := conn.ConnectionState()
	return &st, nil
}

func TestMinimumVersionIsTLS12(t *testing.T) {
	root := testsupport.NewCA(t, "root")
	vol := newSecretVolume(t)
	crt, key := root.Issue(t, "server")
	vol.write(map[string][]byte{"tls.crt": crt, "tls.key": key})
	src, err := tlsreload.New(tlsreload.Options{CertFile: vol.path("tls.crt"), KeyFile: vol.path("tls.key")})
	if err != nil {
		t.Fatal(err)
	}
	addr := serveHTTPS(t, src)
	pool := root.Pool()

	cases := []struct {
		name    string
		version uint16
		ok      bool
	}{
		{"a TLS 1.0 client is refused", tls.VersionTLS10, false},
		{"a TLS 1.1 client is refused", tls.VersionTLS11, false},
		{"a TLS 1.2 client is served", tls.VersionTLS12, true},
		{"a TLS 1.3 client is served", tls.VersionTLS13, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st, err := handshake(addr, &tls.Config{RootCAs: pool, MinVersion: c.version, MaxVersion: c.version})
			if c.ok {
				if err != nil {
					t.Fatalf("handshake failed: %v", err)
				}
				if st.Version != c.version {
					t.Fatalf("negotiated version %x, want %x", st.Version, c.version)
				}
				return
			}
			if err == nil {
				t.Fatalf("handshake with version %x succeeded, want a refusal", c.version)
			}
		})
	}
}

func TestRotatedCertificateIsServedWithoutRestart(t *testing.T) {
	root := testsupport.NewCA(t, "root")
	vol := newSecretVolume(t)
	crt1, key1 := root.Issue(t, "first")
	vol.write(map[string][]byte{"tls.crt": crt1, "tls.key": key1})
	src, err := tlsreload.New(tlsreload.Options{CertFile: vol.path("tls.crt"), KeyFile: vol.path("tls.key")})
	if err != nil {
		t.Fatal(err)
	}
	addr := serveHTTPS(t, src)
	pool := root.Pool()
	served := func() string {
		t.Helper()
		st, err := handshake(addr, &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
		if err != nil {
			t.Fatalf("handshake failed: %v", err)
		}
		return st.PeerCertificates[0].Subject.CommonName
	}
	if got := served(); got != "first" {
		t.Fatalf("served %q, want first", got)
	}

	crt2, key2 := root.Issue(t, "second")
	vol.write(map[string][]byte{"tls.crt": crt2, "tls.key": key2})
	if got := served(); got != "second" {
		t.Fatalf("after rotation served %q, want second", got)
	}

	// A broken update (a key that does not match the certificate) keeps the last good pair.
	crt3, _ := root.Issue(t, "third")
	vol.write(map[string][]byte{"tls.crt": crt3, "tls.key": key2})
	if got := served(); got != "second" {
		t.Fatalf("after a mismatched update served %q, want second", got)
	}
	// ...until a good pair arrives.
	crt4, key4 := root.Issue(t, "fourth")
	vol.write(map[string][]byte{"tls.crt": crt4, "tls.key": key4})
	if got := served(); got != "fourth" {
		t.Fatalf("after a good update served %q, want fourth", got)
	}
}

func TestNewRefusesUnusableFiles(t *testing.T) {
	root := testsupport.NewCA(t, "root")
	vol := newSecretVolume(t)
	crt, _ := root.Issue(t, "a")
	_, otherKey := root.Issue(t, "b")
	vol.write(map[string][]byte{"tls.crt": crt, "tls.key": otherKey, "ca.crt": []byte("not PEM")})
	for name, o := range map[string]tlsreload.Options{
		"missing files":     {CertFile: vol.path("nope.crt"), KeyFile: vol.path("nope.key")},
		"mismatched key":    {CertFile: vol.path("tls.crt"), KeyFile: vol.path("tls.key")},
		"no files named":    {},
		"client CA not PEM": {CertFile: vol.path("tls.crt"), KeyFile: vol.path("tls.crt"), ClientCAFile: vol.path("ca.crt")},
	} {
		if _, err := tlsreload.New(o); err == nil {
			t.Errorf("%s: New succeeded, want an error", name)
		}
	}
}

// TestGRPCMutualTLS serves the gRPC health service the way the validator serves ext_authz:
// a plain gRPC server on a tlsreload listener with a client CA.
func TestGRPCMutualTLS(t *testing.T) {
	serverCA, clientCA, otherCA := testsupport.NewCA(t, "server-ca"), testsupport.NewCA(t, "client-ca"), testsupport.NewCA(t, "other-ca")
	vol := newSecretVolume(t)
	crt, key := serverCA.Issue(t, "validator")
	vol.write(map[string][]byte{"tls.crt": crt, "tls.key": key, "ca.crt": clientCA.PEM})
	src, err := tlsreload.New(tlsreload.Options{
		CertFile: vol.path("tls.crt"), KeyFile: vol.path("tls.key"), ClientCAFile: vol.path("ca.crt"),
		NextProtos: []string{"h2"},
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go func() { _ = srv.Serve(src.Listener(ln)) }()
	t.Cleanup(srv.Stop)

	roots := serverCA.Pool()
	check := func(certs []tls.Certificate) error {
		t.Helper()
		conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(
			&tls.Config{RootCAs: roots, Certificates: certs, MinVersion: tls.VersionTLS12})))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}
	pair := func(c *testsupport.CA) []tls.Certificate {
		crt, key := c.Issue(t, "envoy")
		kp, err := tls.X509KeyPair(crt, key)
		if err != nil {
			t.Fatal(err)
		}
		return []tls.Certificate{kp}
	}

	if err := check(nil); err == nil {
		t.Error("a client without a certificate was served")
	}
	if err := check(pair(otherCA)); err == nil {
		t.Error("a client with a certificate of another CA was served")
	}
	if err := check(pair(clientCA)); err != nil {
		t.Errorf("a client with a certificate of the client CA was refused: %v", err)
	}

	// The client CA bundle reloads too: after the volume names another CA, its clients pass
	// and the first CA's do not.
	vol.write(map[string][]byte{"tls.crt": crt, "tls.key": key, "ca.crt": otherCA.PEM})
	if err := check(pair(otherCA)); err != nil {
		t.Errorf("after the CA rotation a client of the new CA was refused: %v", err)
	}
	if err := check(pair(clientCA)); err == nil {
		t.Error("after the CA rotation a client of the old CA was served")
	}
}
