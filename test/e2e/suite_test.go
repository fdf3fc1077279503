// Package e2e is keyward's end-to-end suite for the validator: a real nginx (Debian's, with
// auth_request) in front of a small upstream that echoes the headers it receives, two
// `keyward validator` processes (the binary, built by the suite) behind it, a real
// kube-apiserver and etcd (envtest), and the real SigningKey controller writing the key set
// and the JWKS. Tokens are minted with internal/token from the SigningKey's real key-set
// Secret.
package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/keyward/keyward/internal/manager"
	"github.com/keyward/keyward/internal/testenv"

	"github.com/keyward/keyward/internal/testsupport"
)

// nginxBin is Debian's nginx; auth_request is built in.
const nginxBin = "/usr/sbin/nginx"

var (
	env *testenv.Env
	k8s client.Client
	// validators are the two validator processes; nginx talks to the first.
	validators [2]*validatorProc
	nginxAddr  string
	upstream   *httptest.Server
	// issuerAddr is a `keyward issuer` process, which issues the tokens of TestIssuedTokens.
	issuerAddr string
	// keywardBin and kubeconfigPath let tests start more processes (tls_test.go).
	keywardBin, kubeconfigPath string
)

type validatorProc struct {
	name      string
	httpAddr  string
	grpcAddr  string
	probeAddr string
	cmd       *exec.Cmd
	log       *os.File
}

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	logOut := io.Discard
	if os.Getenv("KEYWARD_TEST_LOGS") != "" {
		logOut = os.Stderr
	}
	ctrl.SetLogger(zap.New(zap.WriteTo(logOut), zap.UseDevMode(true)))
	if _, err := os.Stat(nginxBin); err != nil {
		fmt.Fprintln(os.Stderr, "nginx is missing: run hack/install-deps.sh:", err)
		return 1
	}
	var err error
	env, err = testenv.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = env.Stop() }()
	k8s = env.Client
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	dir, err := os.MkdirTemp("", "keyward-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = os.RemoveAll(dir) }()
	stop, err := setup(ctx, dir)
	defer stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "cannot set up the end-to-end environment:", err)
		dumpLogs(dir)
		return 1
	}
	code := m.Run()
	if code != 0 {
		dumpLogs(dir)
	}
	return code
}

// setup starts the controllers, the upstream, two validators and nginx. stop undoes what was
// started, even after an error.
func setup(ctx context.Context, dir string) (stop func(), err error) {
	var stops []func()
	stop = func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	// The controllers, in-process, as `keyward controller` wires them.
	mgr, err := manager.New(env.Config, manager.Options{MetricsBindAddress: "0", HealthProbeBindAddress: "0"})
	if err != nil {
		return stop, err
	}
	if err := manager.SetupControllers(ctx, mgr, manager.ControllerOptions{}); err != nil {
		return stop, err
	}
	mgrCtx, mgrCancel := context.WithCancel(ctx)
	mgrDone := make(chan struct{})
	go func() { _ = mgr.Start(mgrCtx); close(mgrDone) }()
	stops = append(stops, func() { mgrCancel(); <-mgrDone })

	// The upstream echoes the request headers it received as JSON.
	upstream = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(r.Header)
	}))
	stops = append(stops, upstream.Close)

	bin := filepath.Join(dir, "keyward")
	build := exec.Command("go", "build", "-o", bin, "./cmd/keyward")
	build.Dir = testenv.RepoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		return stop, fmt.Errorf("cannot build keyward: %w\n%s", err, out)
	}
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := writeKubeconfig(kubeconfig); err != nil {
		return stop, err
	}
	keywardBin, kubeconfigPath = bin, kubeconfig
	for i := range validators {
		// The second validator trusts no proxy: forwarded headers are ignored there.
		trusted := "127.0.0.0/8,::1/128"
		if i == 1 {
			trusted = ""
		}
		v, err := startValidator(ctx, dir, bin, kubeconfig, fmt.Sprintf("validator-%d", i), trusted)
		if v != nil {
			stops = append(stops, v.stop)
		}
		if err != nil {
			return stop, err
		}
		validators[i] = v
	}
	issuer, err := startIssuer(ctx, dir, bin, kubeconfig)
	if issuer != nil {
		stops = append(stops, issuer.stop)
	}
	if err != nil {
		return stop, err
	}
	for _, v := range append(validators[:], issuer) {
		if err := v.waitReady(ctx, time.Minute); err != nil {
			return stop, err
		}
	}
	nginxStop, err := startNginx(dir, validators[0].httpAddr, strings.TrimPrefix(upstream.URL, "http://"))
	if nginxStop != nil {
		stops = append(stops, nginxStop)
	}
	return stop, err
}

// writeKubeconfig writes envtest's client credentials for the validator processes.
func writeKubeconfig(path string) error {
	cfg := env.Config
	kc := clientcmdapi.NewConfig()
	kc.Clusters["envtest"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["envtest"] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData, Token: cfg.BearerToken}
	kc.Contexts["envtest"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "envtest"}
	kc.CurrentContext = "envtest"
	return clientcmd.WriteToFile(*kc, path)
}

func startValidator(ctx context.Context, dir, bin, kubeconfig, name, trusted string, extra ...string) (*validatorProc, error) {
	v := &validatorProc{name: name}
	var err error
	for _, a := range []*string{&v.httpAddr, &v.grpcAddr, &v.probeAddr} {
		if *a, err = testsupport.FreeAddr(); err != nil {
			return nil, err
		}
	}
	v.log, err = os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		return nil, err
	}
	v.cmd = exec.CommandContext(ctx, bin, "validator",
		"--kubeconfig", kubeconfig,
		"--authz-addr", v.httpAddr,
		"--authz-grpc-addr", v.grpcAddr,
		"--health-probe-bind-address", v.probeAddr,
		"--metrics-bind-address", "0",
		"--public-url", "http://localhost:8080",
		"--trusted-proxies", trusted,
		"--zap-log-level", "debug",
	)
	v.cmd.Args = append(v.cmd.Args, extra...)
	v.cmd.Stdout, v.cmd.Stderr = v.log, v.log
	if err := v.cmd.Start(); err != nil {
		return nil, fmt.Errorf("cannot start %s: %w", name, err)
	}
	return v, nil
}

// startIssuer starts `keyward issuer` with the validators' --public-url.
func startIssuer(ctx context.Context, dir, bin, kubeconfig string) (*validatorProc, error) {
	p := &validatorProc{name: "issuer"}
	var err error
	for _, a := range []*string{&p.httpAddr, &p.probeAddr} {
		if *a, err = testsupport.FreeAddr(); err != nil {
			return nil, err
		}
	}
	if p.log, err = os.Create(filepath.Join(dir, "issuer.log")); err != nil {
		return nil, err
	}
	p.cmd = exec.CommandContext(ctx, bin, "issuer", "--kubeconfig", kubeconfig, "--issuer-addr", p.httpAddr,
		"--health-probe-bind-address", p.probeAddr, "--metrics-bind-address", "0", "--public-url", "http://localhost:8080")
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("cannot start the issuer: %w", err)
	}
	issuerAddr = p.httpAddr
	return p, nil
}

func (v *validatorProc) stop() {
	if v.cmd.Process != nil {
		_ = v.cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = v.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = v.cmd.Process.Kill()
			<-done
		}
	}
	_ = v.log.Close()
}

func (v *validatorProc) waitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		resp, err := http.Get("http://" + v.probeAddr + "/readyz")
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready within %s", v.name, timeout)
}

// nginxConf is config/samples/nginx.conf, the documented nginx integration, with the
// suite's loopback addresses in place of the sample's. Its paths are relative to the prefix
// (nginx -p dir).
func nginxConf(validatorAddr, upstreamAddr, listen string) ([]byte, error) {
	b, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "config", "samples", "nginx.conf"))
	if err != nil {
		return nil, err
	}
	conf := string(b)
	for _, r := range [][2]string{
		{"server 127.0.0.1:8081;", "server " + validatorAddr + ";"},
		{"server 127.0.0.1:8000;", "server " + upstreamAddr + ";"},
		{"listen 127.0.0.1:8088;", "listen " + listen + ";"},
	} {
		if n := strings.Count(conf, r[0]); n != 1 {
			return nil, fmt.Errorf("config/samples/nginx.conf has %q %d times, want once", r[0], n)
		}
		conf = strings.Replace(conf, r[0], r[1], 1)
	}
	return []byte(conf), nil
}

func startNginx(dir, validatorAddr, upstreamAddr string) (func(), error) {
	listen, err := testsupport.FreeAddr()
	if err != nil {
		return nil, err
	}
	b, err := nginxConf(validatorAddr, upstreamAddr, listen)
	if err != nil {
		return nil, err
	}
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, b, 0o600); err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(dir, "nginx.log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(nginxBin, "-p", dir, "-c", conf, "-e", filepath.Join(dir, "nginx-error.log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("cannot start nginx: %w", err)
	}
	stop := func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		_ = logf.Close()
	}
	for range 100 {
		if c, err := net.Dial("tcp", listen); err == nil {
			_ = c.Close()
			nginxAddr = listen
			return stop, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return stop, errors.New("nginx did not listen within 5s")
}

func dumpLogs(dir string) {
	for _, name := range []string{"validator-0.log", "validator-1.log", "issuer.log", "nginx-error.log", "nginx.log"} {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			continue
		}
		if len(data) > 8000 {
			data = data[len(data)-8000:]
		}
		fmt.Fprintf(os.Stderr, "----- %s (tail) -----\n%s\n", name, data)
	}
}
