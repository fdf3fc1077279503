package issuer_test

import (
	"bytes"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/keyward/keyward/internal/testenv"

	"github.com/keyward/keyward/internal/testsupport"
)

// writeKubeconfig writes a kubeconfig for the test control plane.
func writeKubeconfig(t *testing.T) string {
	t.Helper()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["envtest"] = &clientcmdapi.Cluster{Server: env.Config.Host, CertificateAuthorityData: env.Config.CAData}
	cfg.AuthInfos["envtest"] = &clientcmdapi.AuthInfo{ClientCertificateData: env.Config.CertData, ClientKeyData: env.Config.KeyData, Token: env.Config.BearerToken}
	cfg.Contexts["envtest"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "envtest"}
	cfg.CurrentContext = "envtest"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// buildKeyward builds cmd/keyward into a temporary directory.
func buildKeyward(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "keyward")
	cmd := exec.CommandContext(t.Context(), "go", "build", "-o", bin, "./cmd/keyward")
	cmd.Dir = testenv.RepoRoot()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cannot build keyward: %v\n%s", err, out)
	}
	return bin
}

// startIssuerProcess runs `keyward issuer` and returns its address once it serves f.
func startIssuerProcess(t *testing.T, bin, kubeconfig string, f *fixture) string {
	t.Helper()
	addr := testsupport.MustFreeAddr(t)
	var logs bytes.Buffer
	var mu sync.Mutex
	cmd := exec.Command(bin, "issuer", "--kubeconfig", kubeconfig, "--issuer-addr", addr,
		"--public-url", "http://keyward.test", "--metrics-bind-address", "0", "--health-probe-bind-address", "0")
	cmd.Stdout = &lockedWriter{w: &logs, mu: &mu}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			t.Errorf("keyward issuer did not stop on SIGTERM within 15s")
		}
		if t.Failed() {
			mu.Lock()
			t.Logf("keyward issuer %s logs:\n%s", addr, logs.String())
			mu.Unlock()
		}
	})
	base := "http://" + addr + "/" + f.ns + "/" + f.name + "/"
	eventually(t, 60*time.Second, func() error {
		resp, err := httpClient.Post(base+"api/token/", "application/json", strings.NewReader("{}"))
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	})
	return base
}

type lockedWriter struct {
	w  *bytes.Buffer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// Two `keyward issuer` processes, each with its own cache, race to refresh the same token:
// exactly one successor is written, and both answer with it.
func TestTwoIssuerProcessesRace(t *testing.T) {
	f := newFixture(t, defaultUsers(t, testCost), func(spec map[string]any) {
		spec["refreshTokenRotation"] = map[string]any{"enabled": true, "reuseGracePeriod": "10s"}
	})
	bin, kubeconfig := buildKeyward(t), writeKubeconfig(t)
	a := startIssuerProcess(t, bin, kubeconfig, f)
	b := startIssuerProcess(t, bin, kubeconfig, f)
	for round := range 5 {
		_, refresh := f.loginOK(t, "alice", "wonderland")
		sid := claimsOf(t, refresh)["sid"].(string)
		jtis := successorsOf(t, concurrentRefresh(t, []string{a, b}, refresh, 8))
		if len(jtis) != 1 {
			t.Errorf("round %d: 8 concurrent refreshes through two processes gave %d successors: %v", round, len(jtis), jtis)
		}
		if s := f.session(t, sid); s.Status.RefreshGeneration != 2 || s.Spec.Revoked {
			t.Errorf("round %d: session generation %d revoked %v, want 2 and not revoked", round, s.Status.RefreshGeneration, s.Spec.Revoked)
		}
	}
	// A revocation through one process reaches the other's verify endpoint through its watch.
	access, refresh := f.loginOK(t, "alice", "wonderland")
	if r := postJSON(t, a+"api/token/blacklist/", map[string]string{"refresh": refresh}); r.status != 200 {
		t.Fatalf("blacklist through a: %d %s", r.status, r.body)
	}
	start := time.Now()
	eventually(t, 5*time.Second, func() error {
		if r := postJSON(t, b+"api/token/verify/", map[string]string{"token": access}); r.status != 401 {
			return fmt.Errorf("b still accepts the revoked session's access token: %d", r.status)
		}
		return nil
	})
	t.Logf("revocation through one process reached the other in %v", time.Since(start).Round(time.Millisecond))
}
