package e2e

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/keyward/keyward/internal/testsupport"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
)

func writeFiles(t *testing.T, dir string, files map[string][]byte) {
	t.Helper()
	for name, b := range files {
		// Write and rename, as a Secret volume update replaces files whole.
		tmp := filepath.Join(dir, "."+name+".tmp")
		if err := os.WriteFile(tmp, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
}

// answer is what a test reads of an HTTP response.
type answer struct {
	StatusCode int
	Header     http.Header
}

// TestTLSListeners runs `keyward validator` and `keyward issuer` with TLS flags, as the Helm
// chart does with TLS Secrets mounted: HTTPS forward auth, gRPC ext_authz with mutual TLS, an
// HTTPS issuer, TLS 1.2 at least, and a renewed certificate served without a restart.
func TestTLSListeners(t *testing.T) {
	e := demoEnv(t)
	serverCA, envoyCA, otherCA := testsupport.NewCA(t, "server-ca"), testsupport.NewCA(t, "envoy-ca"), testsupport.NewCA(t, "other-ca")
	dir := t.TempDir()
	crt, key := serverCA.Issue(t, "keyward-1")
	writeFiles(t, dir, map[string][]byte{"tls.crt": crt, "tls.key": key, "ca.crt": envoyCA.PEM})
	file := func(name string) string { return filepath.Join(dir, name) }

	v, err := startValidator(t.Context(), dir, keywardBin, kubeconfigPath, "validator-tls", "",
		"--authz-tls-cert", file("tls.crt"), "--authz-tls-key", file("tls.key"),
		"--authz-grpc-tls-cert", file("tls.crt"), "--authz-grpc-tls-key", file("tls.key"),
		"--authz-grpc-client-ca", file("ca.crt"))
	if v != nil {
		t.Cleanup(v.stop)
	}
	if err != nil {
		t.Fatal(err)
	}
	iss := &validatorProc{name: "issuer-tls"}
	for _, a := range []*string{&iss.httpAddr, &iss.probeAddr} {
		if *a, err = testsupport.FreeAddr(); err != nil {
			t.Fatal(err)
		}
	}
	if iss.log, err = os.Create(filepath.Join(dir, "issuer-tls.log")); err != nil {
		t.Fatal(err)
	}
	iss.cmd = exec.CommandContext(t.Context(), keywardBin, "issuer", "--kubeconfig", kubeconfigPath,
		"--issuer-addr", iss.httpAddr, "--health-probe-bind-address", iss.probeAddr, "--metrics-bind-address", "0",
		"--issuer-tls-cert", file("tls.crt"), "--issuer-tls-key", file("tls.key"))
	iss.cmd.Stdout, iss.cmd.Stderr = iss.log, iss.log
	if err := iss.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(iss.stop)
	for _, p := range []*validatorProc{v, iss} {
		if err := p.waitReady(t.Context(), time.Minute); err != nil {
			logs, _ := os.ReadFile(filepath.Join(dir, p.name+".log"))
			t.Fatalf("%v\n%s", err, logs)
		}
	}

	roots := serverCA.Pool()
	// httpsGet returns the status and headers of a GET over TLS of exactly version.
	httpsGet := func(t *testing.T, url, host, tok string, version uint16) (answer, error) {
		t.Helper()
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: version, MaxVersion: version}}
		defer tr.CloseIdleConnections()
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
		req.Host = host
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
		if err != nil {
			return answer{}, err
		}
		_ = resp.Body.Close()
		return answer{resp.StatusCode, resp.Header}, nil
	}

	t.Run("HTTPS forward auth decides", func(t *testing.T) {
		for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
			resp, err := httpsGet(t, "https://"+v.httpAddr+"/authz/api/items", e.host, e.token(t, nil), version)
			if err != nil {
				t.Fatalf("TLS %x: %v", version, err)
			}
			if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Auth-Request-User") != "alice" {
				t.Errorf("TLS %x: %d user %q, want 200 alice", version, resp.StatusCode, resp.Header.Get("X-Auth-Request-User"))
			}
		}
		resp, err := httpsGet(t, "https://"+v.httpAddr+"/authz/api/items", e.host, "", tls.VersionTLS13)
		if err != nil || resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("without a token: %v %v, want 401", resp, err)
		}
	})
	t.Run("TLS 1.1 is refused", func(t *testing.T) {
		for _, addr := range []string{v.httpAddr, v.grpcAddr, iss.httpAddr} {
			if _, err := httpsGet(t, "https://"+addr+"/", e.host, "", tls.VersionTLS11); err == nil {
				t.Errorf("%s accepted TLS 1.1", addr)
			}
		}
	})
	t.Run("plain HTTP gets no decision", func(t *testing.T) {
		resp, err := http.Get("http://" + v.httpAddr + "/authz/")
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden {
				t.Errorf("plain HTTP to the TLS listener got a decision: %d", resp.StatusCode)
			}
		}
	})

	grpcCheck := func(t *testing.T, clientCA *testsupport.CA) (*authv3.CheckResponse, error) {
		t.Helper()
		cfg := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
		if clientCA != nil {
			c, k := clientCA.Issue(t, "envoy")
			pair, err := tls.X509KeyPair(c, k)
			if err != nil {
				t.Fatal(err)
			}
			cfg.Certificates = []tls.Certificate{pair}
		}
		conn, err := grpc.NewClient(v.grpcAddr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		return authv3.NewAuthorizationClient(conn).Check(ctx, checkRequest("GET", e.host, "/api/items", e.token(t, nil), nil))
	}
	t.Run("gRPC requires a client certificate of the client CA", func(t *testing.T) {
		if _, err := grpcCheck(t, nil); err == nil {
			t.Error("a client without a certificate was answered")
		}
		if _, err := grpcCheck(t, otherCA); err == nil {
			t.Error("a client with a certificate of another CA was answered")
		}
		resp, err := grpcCheck(t, envoyCA)
		if err != nil {
			t.Fatal(err)
		}
		if codes.Code(resp.GetStatus().GetCode()) != codes.OK {
			t.Errorf("Check over mutual TLS: %v, want OK", resp.GetStatus())
		}
	})
	t.Run("the issuer serves HTTPS", func(t *testing.T) {
		// A TokenIssuer that does not exist: the issuer's own JSON 404, over TLS.
		resp, err := httpsGet(t, fmt.Sprintf("https://%s/nowhere/none/.well-known/jwks.json", iss.httpAddr), "", "", tls.VersionTLS13)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusNotFound || resp.Header.Get("Content-Type") != "application/json" {
			t.Errorf("over HTTPS: %d %q, want the issuer's JSON 404", resp.StatusCode, resp.Header.Get("Content-Type"))
		}
	})

	t.Run("a renewed certificate is served without a restart", func(t *testing.T) {
		crt2, key2 := serverCA.Issue(t, "keyward-2")
		writeFiles(t, dir, map[string][]byte{"tls.crt": crt2, "tls.key": key2})
		// keyward checks the files at most every 10 seconds.
		for _, addr := range []string{v.httpAddr, v.grpcAddr, iss.httpAddr} {
			deadline := time.Now().Add(45 * time.Second)
			for {
				conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}})
				cn := ""
				if err == nil {
					cn = conn.ConnectionState().PeerCertificates[0].Subject.CommonName
					_ = conn.Close()
				}
				if cn == "keyward-2" {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s still serves %q (%v) 45s after the renewal", addr, cn, err)
				}
				time.Sleep(500 * time.Millisecond)
			}
		}
		if err := v.cmd.Process.Signal(syscall.Signal(0)); err != nil {
			t.Fatalf("the validator exited during the renewal: %v", err)
		}
	})
}
