// Package resilience holds keyward's failure tests: a real etcd and kube-apiserver, started
// by the tests as processes so that they can be stopped and restarted, keyward's roles as
// separate `keyward controller|issuer|validator` processes, nginx where a proxy is needed,
// and load produced by the tests on 127.0.0.1 at a bounded rate for a bounded time. Each test
// asserts what users rely on (no valid token refused, no 5xx, no key doubled or skipped) and
// logs the figures docs/security.md reports. They run with `make test-resilience`.
package resilience

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/keyward/keyward/internal/scheme"
	"github.com/keyward/keyward/internal/testenv"

	"github.com/keyward/keyward/internal/testsupport"
)

// proc is a child process in a process group of its own, so that a kill reaches everything
// it started. Its output goes to a log file.
type proc struct {
	name    string
	path    string
	args    []string
	logPath string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

func newProc(name, logDir, path string, args ...string) *proc {
	return &proc{name: name, path: path, args: args, logPath: filepath.Join(logDir, name+".log")}
}

// start starts the process; its log is appended to.
func (p *proc) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	fmt.Fprintf(logf, "----- start %s at %s -----\n", p.name, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(p.path, p.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		_ = logf.Close()
		return fmt.Errorf("cannot start %s: %w", p.name, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		_ = logf.Close()
		close(done)
	}()
	p.cmd, p.done = cmd, done
	return nil
}

// running reports whether the process has been started and has not exited.
func (p *proc) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// exited is closed when the current process exits.
func (p *proc) exited() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.done
}

// signal sends sig to the process group and waits (at most wait) for the process to exit;
// after that it is killed.
func (p *proc) signal(sig syscall.Signal, wait time.Duration) {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-done:
		return
	default:
	}
	_ = syscall.Kill(-cmd.Process.Pid, sig)
	select {
	case <-done:
	case <-time.After(wait):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
}

// kill is kill -9.
func (p *proc) kill() { p.signal(syscall.SIGKILL, 10*time.Second) }

// stop is a graceful stop: SIGTERM, then SIGKILL after 20 s.
func (p *proc) stop() { p.signal(syscall.SIGTERM, 20*time.Second) }

// tail returns the end of the log.
func (p *proc) tail(n int) string {
	data, err := os.ReadFile(p.logPath)
	if err != nil {
		return err.Error()
	}
	if len(data) > n {
		data = data[len(data)-n:]
	}
	return string(data)
}

// controlPlane is etcd and kube-apiserver as processes, started like `hack/control-plane.sh
// up` starts them (static token of a system:masters user, RBAC, a service-account key), with
// a data directory that survives a stop, so that both can be stopped and started again.
type controlPlane struct {
	dir        string
	etcd, api  *proc
	apiAddr    string
	token      string
	kubeconfig string
	cfg        *rest.Config
}

func startControlPlane(binDir, dir string) (*controlPlane, error) {
	cp := &controlPlane{dir: dir}
	etcdAddr, err := testsupport.FreeAddr()
	if err != nil {
		return nil, err
	}
	peerAddr, err := testsupport.FreeAddr()
	if err != nil {
		return nil, err
	}
	if cp.apiAddr, err = testsupport.FreeAddr(); err != nil {
		return nil, err
	}
	_, apiPort, _ := net.SplitHostPort(cp.apiAddr)
	tok := make([]byte, 24)
	_, _ = rand.Read(tok)
	cp.token = hex.EncodeToString(tok)
	tokens := filepath.Join(dir, "tokens.csv")
	if err := os.WriteFile(tokens, []byte(cp.token+",admin,admin,system:masters\n"), 0o600); err != nil {
		return nil, err
	}
	saKey := filepath.Join(dir, "sa.key")
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(saKey, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600); err != nil {
		return nil, err
	}
	cp.etcd = newProc("etcd", dir, filepath.Join(binDir, "etcd"),
		"--data-dir", filepath.Join(dir, "etcd-data"),
		"--listen-client-urls", "http://"+etcdAddr, "--advertise-client-urls", "http://"+etcdAddr,
		"--listen-peer-urls", "http://"+peerAddr, "--initial-advertise-peer-urls", "http://"+peerAddr,
		"--initial-cluster", "default=http://"+peerAddr,
		"--unsafe-no-fsync")
	cp.api = newProc("kube-apiserver", dir, filepath.Join(binDir, "kube-apiserver"),
		"--etcd-servers", "http://"+etcdAddr,
		"--cert-dir", filepath.Join(dir, "certs"),
		"--secure-port", apiPort, "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
		"--token-auth-file", tokens,
		"--authorization-mode", "RBAC",
		"--service-account-issuer", "https://kubernetes.default.svc",
		"--service-account-key-file", saKey, "--service-account-signing-key-file", saKey,
		"--service-cluster-ip-range", "10.0.0.0/24",
		"--disable-admission-plugins", "ServiceAccount",
		"--endpoint-reconciler-type", "none")
	cp.kubeconfig = filepath.Join(dir, "kubeconfig")
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {server: "https://%s", insecure-skip-tls-verify: true}
users:
- name: admin
  user: {token: %s}
contexts:
- name: local
  context: {cluster: local, user: admin}
current-context: local
`, cp.apiAddr, cp.token)
	if err := os.WriteFile(cp.kubeconfig, []byte(kc), 0o600); err != nil {
		return nil, err
	}
	if cp.cfg, err = clientcmd.BuildConfigFromFlags("", cp.kubeconfig); err != nil {
		return nil, err
	}
	cp.cfg.QPS, cp.cfg.Burst = 200, 400
	if err := cp.up(); err != nil {
		cp.down()
		return nil, err
	}
	return cp, nil
}

// up starts etcd and kube-apiserver and waits until the API server is ready.
func (cp *controlPlane) up() error {
	if err := cp.etcd.start(); err != nil {
		return err
	}
	if err := cp.api.start(); err != nil {
		return err
	}
	return cp.waitReady(90 * time.Second)
}

// down stops kube-apiserver, then etcd: SIGTERM, and SIGKILL after 5 s (kube-apiserver's
// graceful shutdown waits for long-running requests).
func (cp *controlPlane) down() {
	cp.api.signal(syscall.SIGTERM, 5*time.Second)
	cp.etcd.signal(syscall.SIGTERM, 5*time.Second)
}

var insecureClient = &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
	TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, // the test API server's self-signed certificate
}}

// ready reports whether /readyz answers 200.
func (cp *controlPlane) ready() bool {
	req, _ := http.NewRequest(http.MethodGet, "https://"+cp.apiAddr+"/readyz", nil)
	req.Header.Set("Authorization", "Bearer "+cp.token)
	resp, err := insecureClient.Do(req)
	if err != nil {
		return false
	}
	_ = resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func (cp *controlPlane) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if !cp.api.running() {
			return fmt.Errorf("kube-apiserver exited:\n%s", cp.api.tail(3000))
		}
		if cp.ready() {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("kube-apiserver not ready within %s:\n%s", timeout, cp.api.tail(3000))
}

func (cp *controlPlane) installCRDs() error {
	_, err := envtest.InstallCRDs(cp.cfg, envtest.CRDInstallOptions{
		Paths: []string{filepath.Join(testenv.RepoRoot(), "config", "crd")}, ErrorIfPathMissing: true,
	})
	return err
}

func (cp *controlPlane) client() (client.Client, error) {
	return client.New(cp.cfg, client.Options{Scheme: scheme.New()})
}

// buildKeyward builds cmd/keyward into dir.
func buildKeyward(dir string) (string, error) {
	bin := filepath.Join(dir, "keyward")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/keyward")
	cmd.Dir = testenv.RepoRoot()
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("cannot build keyward: %w\n%s", err, out)
	}
	return bin, nil
}

// kwProc is a keyward role process on 127.0.0.1 ports.
type kwProc struct {
	*proc
	role                                       string
	httpAddr, grpcAddr, probeAddr, metricsAddr string
}

// startKeyward starts `keyward <role>` with free ports, logs in the test's log directory,
// and stops it (SIGTERM) when the test ends. It does not wait for readiness.
func startKeyward(t *testing.T, name, role string, extra ...string) *kwProc {
	t.Helper()
	k := &kwProc{role: role, probeAddr: testsupport.MustFreeAddr(t), metricsAddr: testsupport.MustFreeAddr(t)}
	args := []string{role, "--kubeconfig", cp.kubeconfig, "--public-url", publicURL,
		"--health-probe-bind-address", k.probeAddr, "--metrics-bind-address", k.metricsAddr}
	switch role {
	case "issuer":
		k.httpAddr = testsupport.MustFreeAddr(t)
		args = append(args, "--issuer-addr", k.httpAddr)
	case "validator":
		k.httpAddr, k.grpcAddr = testsupport.MustFreeAddr(t), testsupport.MustFreeAddr(t)
		args = append(args, "--authz-addr", k.httpAddr, "--authz-grpc-addr", k.grpcAddr)
	}
	args = append(args, extra...)
	k.proc = newProc(name, logDir(t), keywardBin, args...)
	if err := k.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.stop)
	return k
}

// readyz reports whether the process's /readyz answers 200.
func (k *kwProc) readyz() bool {
	resp, err := quickClient.Get("http://" + k.probeAddr + "/readyz")
	if err != nil {
		return false
	}
	_ = resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func (k *kwProc) waitReady(t *testing.T, timeout time.Duration) {
	t.Helper()
	eventually(t, timeout, k.name+" is ready", func() error {
		if !k.running() {
			return fmt.Errorf("%s exited:\n%s", k.name, k.tail(3000))
		}
		if !k.readyz() {
			return errors.New("/readyz is not 200")
		}
		return nil
	})
}

// metric returns the value of the first sample of name whose labels contain every one of
// labels ("" when absent).
func (k *kwProc) metric(name string, labels ...string) (string, error) {
	resp, err := quickClient.Get("http://" + k.metricsAddr + "/metrics")
	if err != nil {
		return "", err
	}
	defer func() { _ = resp.Body.Close() }()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
lines:
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		for _, l := range labels {
			if !strings.Contains(line, l) {
				continue lines
			}
		}
		return line[strings.LastIndexByte(line, ' ')+1:], nil
	}
	return "", sc.Err()
}

var quickClient = &http.Client{Timeout: 2 * time.Second}

// logDir is a directory for the test's process logs, kept under the suite's directory and
// printed (tails) when the test fails.
func logDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(suiteDir, strings.ReplaceAll(t.Name(), "/", "_"))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	registerLogDump(t, dir)
	return dir
}

var dumpRegistered sync.Map

func registerLogDump(t *testing.T, dir string) {
	if _, loaded := dumpRegistered.LoadOrStore(t.Name(), true); loaded {
		return
	}
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			data, err := os.ReadFile(filepath.Join(dir, e.Name()))
			if err != nil {
				continue
			}
			if len(data) > 6000 {
				data = data[len(data)-6000:]
			}
			t.Logf("----- %s (tail) -----\n%s", e.Name(), data)
		}
	})
}

// eventually calls f until it returns nil, failing the test with its last error after timeout.
func eventually(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting until %s: %v", timeout, what, err)
		}
		select {
		case <-time.After(100 * time.Millisecond):
		case <-t.Context().Done():
			t.Fatalf("cancelled waiting until %s: %v", what, err)
		}
	}
}

// withTimeout is a context for one API call.
func withTimeout(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}
