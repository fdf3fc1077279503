// Command loadtest measures keyward's validator behind nginx on 127.0.0.1, in one run:
// nginx -> static upstream (the baseline), nginx -> keyward validator -> static upstream, and
// nginx -> oauth2-proxy -> static upstream, each loaded with Debian's wrk using the same
// repeated ES256 access token; then the validator's HTTP and gRPC front ends head to head with
// the same Go load generator. It starts its own kube-apiserver and etcd (envtest), the
// SigningKey controller, a `keyward validator` process, a tiny OIDC discovery + JWKS server
// for oauth2-proxy, oauth2-proxy and nginx; everything listens on loopback and stops by
// itself. Run it through hack/loadtest-validator.sh.
package main

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/template"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
	"github.com/keyward/keyward/internal/keys"
	"github.com/keyward/keyward/internal/manager"
	"github.com/keyward/keyward/internal/testenv"
	"github.com/keyward/keyward/internal/token"
)

type config struct {
	keyward, oauth2Proxy, nginx, wrk string
	duration                         time.Duration
	connections, threads             int
	nginxWorkers                     int
	validatorProcs                   int
	grpcConns                        int
	rounds                           int
}

func main() {
	var c config
	flag.StringVar(&c.keyward, "keyward", "bin/keyward", "keyward binary")
	flag.StringVar(&c.oauth2Proxy, "oauth2-proxy", "", "oauth2-proxy v7.15.6 binary")
	flag.StringVar(&c.nginx, "nginx", "/usr/sbin/nginx", "nginx binary")
	flag.StringVar(&c.wrk, "wrk", "/usr/bin/wrk", "wrk binary")
	flag.DurationVar(&c.duration, "duration", 10*time.Second, "load time per path, split over the rounds")
	flag.IntVar(&c.rounds, "rounds", 3, "rounds: each runs every path in turn for duration/rounds, so that a change in the machine's background load hits every path alike")
	flag.IntVar(&c.connections, "connections", 8, "wrk connections (and Go load generator concurrency)")
	flag.IntVar(&c.threads, "threads", 2, "wrk threads")
	flag.IntVar(&c.nginxWorkers, "nginx-workers", 1, "nginx worker processes")
	flag.IntVar(&c.grpcConns, "grpc-connections", 1, "gRPC client connections the workers share (Envoy multiplexes checks on few HTTP/2 connections)")
	flag.IntVar(&c.validatorProcs, "validator-gomaxprocs", 0, "GOMAXPROCS of the validator process; 0 keeps Go's default (the number of CPUs)")
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.WriteTo(io.Discard)))
	if err := run(c); err != nil {
		fmt.Fprintln(os.Stderr, "loadtest:", err)
		os.Exit(1)
	}
}

func run(c config) error {
	dir, err := os.MkdirTemp("", "keyward-loadtest-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	var stops []func()
	defer func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}()

	step("starting kube-apiserver and etcd (envtest) and the controllers")
	env, err := testenv.Start()
	if err != nil {
		return err
	}
	stops = append(stops, func() { _ = env.Stop() })
	mgr, err := manager.New(env.Config, manager.Options{MetricsBindAddress: "0", HealthProbeBindAddress: "0"})
	if err != nil {
		return err
	}
	if err := manager.SetupControllers(ctx, mgr, manager.ControllerOptions{}); err != nil {
		return err
	}
	mgrCtx, mgrCancel := context.WithCancel(ctx)
	mgrDone := make(chan struct{})
	go func() { _ = mgr.Start(mgrCtx); close(mgrDone) }()
	stops = append(stops, func() { mgrCancel(); <-mgrDone })

	// The OIDC discovery + JWKS server oauth2-proxy reads; its URL is the issuer.
	discoveryAddr, err := freeAddr()
	if err != nil {
		return err
	}
	issuerURL := "http://" + discoveryAddr
	k := env.Client
	const ns = "demo"
	objs := []client.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}},
		&keywardv1.SigningKey{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "main"}, Spec: keywardv1.SigningKeySpec{Algorithm: keywardv1.AlgorithmES256}},
		&keywardv1.TokenIssuer{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "main"}, Spec: keywardv1.TokenIssuerSpec{
			Issuer: issuerURL, Audiences: []string{"api"}, SigningKeyRef: keywardv1.LocalObjectReference{Name: "main"},
			Users: keywardv1.SecretReference{SecretRef: keywardv1.LocalObjectReference{Name: "users"}}}},
		&keywardv1.AccessPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "app"}, Spec: keywardv1.AccessPolicySpec{
			Hosts: []string{"app.example.test"},
			Rules: []keywardv1.AccessRule{
				{Paths: []string{"/public/"}, Anonymous: true},
				{Paths: []string{"/admin/"}, Issuers: []keywardv1.IssuerReference{{Name: "main"}}, Audiences: []string{"api"}, When: "'admin' in claims.groups"},
				{Paths: []string{"/"}, Issuers: []keywardv1.IssuerReference{{Name: "main"}}, Audiences: []string{"api"},
					Headers: map[string]keywardv1.ClaimName{"X-User": "sub", "X-Groups": "groups"}},
			}}},
	}
	for _, o := range objs {
		if err := k.Create(ctx, o); err != nil {
			return fmt.Errorf("cannot create %T: %w", o, err)
		}
	}
	var signer *token.Signer
	var jwks string
	if err := poll(ctx, 30*time.Second, func() bool {
		var s corev1.Secret
		var cm corev1.ConfigMap
		if k.Get(ctx, client.ObjectKey{Namespace: ns, Name: "main-keyset"}, &s) != nil ||
			k.Get(ctx, client.ObjectKey{Namespace: ns, Name: "main-jwks"}, &cm) != nil {
			return false
		}
		ks, err := keys.ParseKeySet(s.Data[keywardv1.KeySetDataKey])
		if err != nil || ks.Active() == nil {
			return false
		}
		signer, err = token.NewSigner(ks.Active())
		jwks = cm.Data[keywardv1.JWKSDataKey]
		return err == nil && strings.Contains(jwks, signer.KID())
	}); err != nil {
		return errors.New("the SigningKey has no Active key")
	}
	now := time.Now()
	tok, err := signer.Sign(token.TypeAccess, &token.Claims{
		Issuer: issuerURL, Subject: "alice", Audience: []string{"api"}, ExpiresAt: now.Add(time.Hour), IssuedAt: now,
		ID: "loadtest-1", SessionID: "loadtest-session", TokenType: token.TokenTypeAccess, Groups: []string{"dev", "ops"},
		Email: "alice@example.test",
	})
	if err != nil {
		return err
	}
	stops = append(stops, serveDiscovery(discoveryAddr, issuerURL, jwks))

	step("starting keyward validator")
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := writeKubeconfig(env, kubeconfig); err != nil {
		return err
	}
	vHTTP, _ := freeAddr()
	vGRPC, _ := freeAddr()
	vProbe, _ := freeAddr()
	validatorEnv = nil
	if c.validatorProcs > 0 {
		validatorEnv = []string{fmt.Sprintf("GOMAXPROCS=%d", c.validatorProcs)}
	}
	stop, err := startProcess(dir, "keyward", c.keyward, "validator", "--kubeconfig", kubeconfig, "--authz-addr", vHTTP,
		"--authz-grpc-addr", vGRPC, "--health-probe-bind-address", vProbe, "--metrics-bind-address", "0")
	if err != nil {
		return err
	}
	stops = append(stops, stop)
	validatorPID := lastPID
	if err := poll(ctx, time.Minute, func() bool {
		return httpStatus("http://"+vHTTP+"/authz/api", map[string]string{"Host": "app.example.test", "Authorization": "Bearer " + tok}) == 200
	}); err != nil {
		return errors.New("the validator does not allow the token")
	}

	oauthAddr := ""
	if c.oauth2Proxy != "" {
		step("starting oauth2-proxy")
		oauthAddr, _ = freeAddr()
		stop, err := startProcess(dir, "oauth2-proxy", c.oauth2Proxy,
			"--http-address="+oauthAddr, "--provider=oidc", "--oidc-issuer-url="+issuerURL, "--client-id=api",
			"--client-secret=unused", "--cookie-secret=0123456789abcdef0123456789abcdef", "--cookie-secure=false",
			"--email-domain=*", "--skip-jwt-bearer-tokens=true", "--set-xauthrequest=true", "--upstream=static://200",
			"--insecure-oidc-allow-unverified-email=true", "--redirect-url=http://app.example.test/oauth2/callback",
			"--skip-provider-button=true", "--request-logging=false", "--auth-logging=false", "--standard-logging=false")
		if err != nil {
			return err
		}
		stops = append(stops, stop)
		if err := poll(ctx, time.Minute, func() bool {
			return httpStatus("http://"+oauthAddr+"/oauth2/auth", map[string]string{"Authorization": "Bearer " + tok}) == 202
		}); err != nil {
			return errors.New("oauth2-proxy does not accept the token (see its log)")
		}
	}

	step("starting nginx")
	ports := map[string]string{}
	for _, name := range []string{"static", "baseline", "keyward", "oauth2"} {
		ports[name], _ = freeAddr()
	}
	stop, err = startNginx(c, dir, ports, vHTTP, oauthAddr)
	if err != nil {
		return err
	}
	stops = append(stops, stop)

	targets := []string{"baseline", "keyward"}
	if oauthAddr != "" {
		targets = append(targets, "oauth2")
	}
	for _, t := range targets {
		url := "http://" + ports[t] + "/api/items"
		if st := httpStatus(url, map[string]string{"Host": "app.example.test", "Authorization": "Bearer " + tok}); st != 200 {
			return fmt.Errorf("nginx -> %s answers %d before the load", t, st)
		}
	}
	rounds := max(c.rounds, 1)
	slice := c
	slice.duration = max((c.duration / time.Duration(rounds)).Truncate(time.Second), time.Second) // wrk takes whole seconds
	perRound := map[string][]wrkResult{}
	var keywardCPU, keywardChecks float64
	for r := range rounds {
		for _, t := range targets {
			step(fmt.Sprintf("round %d/%d, wrk: nginx -> %s for %s", r+1, rounds, t, slice.duration))
			cpuBefore := cpuSeconds(validatorPID)
			res, err := runWrk(ctx, slice, "http://"+ports[t]+"/api/items", tok)
			if err != nil {
				return err
			}
			if t == "keyward" {
				keywardCPU += cpuSeconds(validatorPID) - cpuBefore
				keywardChecks += res.requests
			}
			perRound[t] = append(perRound[t], res)
		}
	}
	results := map[string]wrkResult{}
	for t, rs := range perRound {
		results[t] = combine(rs)
	}
	step("wrk: the validator's HTTP endpoint directly (Envoy-style /authz/<path>)")
	direct, err := runWrk(ctx, slice, "http://"+vHTTP+"/authz/api/items", tok)
	if err != nil {
		return err
	}
	step("Go load generator: HTTP /authz vs gRPC Check, same concurrency")
	cpu0 := cpuSeconds(validatorPID)
	httpRate, httpN, err := loadHTTP(ctx, c, vHTTP, tok)
	if err != nil {
		return err
	}
	cpu1 := cpuSeconds(validatorPID)
	grpcRate, grpcN, err := loadGRPC(ctx, c, vGRPC, tok)
	if err != nil {
		return err
	}
	cpu2 := cpuSeconds(validatorPID)
	httpCPU := (cpu1 - cpu0) / float64(httpN) * 1e6
	grpcCPU := (cpu2 - cpu1) / float64(grpcN) * 1e6

	procs := "default"
	if c.validatorProcs > 0 {
		procs = strconv.Itoa(c.validatorProcs)
	}
	fmt.Printf("\n## Validator load test (%s per path in %d rounds of %s, wrk -t%d -c%d, nginx worker_processes %d, validator GOMAXPROCS %s)\n\n",
		slice.duration*time.Duration(rounds), rounds, slice.duration, c.threads, c.connections, c.nginxWorkers, procs)
	fmt.Println("| path | requests/s | p50 (median of rounds) | p99 (median of rounds) | non-2xx | vs nginx alone |")
	fmt.Println("|---|---:|---:|---:|---:|---:|")
	base := results["baseline"].rps
	names := map[string]string{"baseline": "nginx -> static upstream", "keyward": "nginx -> keyward validator -> upstream", "oauth2": "nginx -> oauth2-proxy v7.15.6 -> upstream"}
	for _, t := range targets {
		r := results[t]
		fmt.Printf("| %s | %.0f | %s | %s | %d | %.2fx |\n", names[t], r.rps, r.p50, r.p99, r.non2xx, r.rps/base)
	}
	fmt.Printf("| keyward /authz directly (no nginx) | %.0f | %s | %s | %d | |\n", direct.rps, direct.p50, direct.p99, direct.non2xx)
	if oauthAddr != "" {
		fmt.Printf("\nkeyward / oauth2-proxy: %.2fx\n", results["keyward"].rps/results["oauth2"].rps)
	}
	fmt.Printf("\nValidator CPU per check behind nginx: %.1f µs (%.0f checks per validator CPU-second)\n",
		keywardCPU/keywardChecks*1e6, keywardChecks/keywardCPU)
	fmt.Println("\nPer round (requests/s, p99):")
	for r := range rounds {
		line := fmt.Sprintf("- round %d:", r+1)
		for _, t := range targets {
			line += fmt.Sprintf(" %s %.0f (%s);", t, perRound[t][r].rps, perRound[t][r].p99)
		}
		line += fmt.Sprintf(" keyward/baseline %.2fx", perRound["keyward"][r].rps/perRound["baseline"][r].rps)
		if oauthAddr != "" {
			line += fmt.Sprintf(", keyward/oauth2-proxy %.2fx", perRound["keyward"][r].rps/perRound["oauth2"][r].rps)
		}
		fmt.Println(line)
	}
	fmt.Printf("\nGo load generator, %d workers (HTTP: %d keep-alive connections; gRPC: %d HTTP/2 connections), %s each, client and validator on the same 2 cores:\n",
		c.connections, c.connections, max(c.grpcConns, 1), c.duration)
	fmt.Println("| front end | checks/s | validator CPU per check | checks per validator CPU-second |")
	fmt.Println("|---|---:|---:|---:|")
	fmt.Printf("| HTTP /authz (Envoy-style) | %.0f | %.1f µs | %.0f |\n", httpRate, httpCPU, 1e6/httpCPU)
	fmt.Printf("| gRPC Authorization/Check | %.0f | %.1f µs | %.0f |\n", grpcRate, grpcCPU, 1e6/grpcCPU)
	fmt.Printf("\ngRPC/HTTP: %.2fx checks/s, %.2fx checks per validator CPU-second\n", grpcRate/httpRate, httpCPU/grpcCPU)
	return nil
}

func step(s string) { fmt.Fprintf(os.Stderr, "==> %s\n", s) }

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer func() { _ = l.Close() }()
	return l.Addr().String(), nil
}

func poll(ctx context.Context, timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return errors.New("timed out")
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil
}

func httpStatus(url string, headers map[string]string) int {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0
	}
	for k, v := range headers {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return 0
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode
}

func writeKubeconfig(env *testenv.Env, path string) error {
	cfg := env.Config
	kc := clientcmdapi.NewConfig()
	kc.Clusters["envtest"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["envtest"] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData, Token: cfg.BearerToken}
	kc.Contexts["envtest"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "envtest"}
	kc.CurrentContext = "envtest"
	return clientcmd.WriteToFile(*kc, path)
}

// serveDiscovery serves an OIDC discovery document and the JWKS for oauth2-proxy.
func serveDiscovery(addr, issuer, jwks string) func() {
	mux := http.NewServeMux()
	mux.HandleFunc("/.well-known/openid-configuration", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"issuer": issuer, "jwks_uri": issuer + "/jwks", "authorization_endpoint": issuer + "/authorize",
			"token_endpoint": issuer + "/token", "response_types_supported": []string{"code"},
			"subject_types_supported": []string{"public"}, "id_token_signing_alg_values_supported": []string{"ES256"},
		})
	})
	mux.HandleFunc("/jwks", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, jwks)
	})
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.ListenAndServe() }()
	return func() { _ = srv.Close() }
}

// lastPID is the pid of the process startProcess started last; validatorEnv is added to the
// environment of the next process it starts.
var (
	lastPID      int
	validatorEnv []string
)

func startProcess(dir, name, bin string, args ...string) (func(), error) {
	logf, err := os.Create(filepath.Join(dir, name+".log")) //nolint:gosec // a log file in the run's own temporary directory
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...) //nolint:gosec // the binaries are this tool's flags, run by the developer
	cmd.Env = append(os.Environ(), validatorEnv...)
	validatorEnv = nil
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("cannot start %s: %w", name, err)
	}
	lastPID = cmd.Process.Pid
	return func() {
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
		if os.Getenv("LOADTEST_LOGS") != "" {
			data, _ := os.ReadFile(logf.Name())
			fmt.Fprintf(os.Stderr, "----- %s -----\n%s\n", name, data)
		}
	}, nil
}

var nginxConf = template.Must(template.New("nginx").Parse(`
worker_processes {{.Workers}};
daemon off;
pid {{.Dir}}/nginx.pid;
error_log {{.Dir}}/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path {{.Dir}}/client_body;
  proxy_temp_path {{.Dir}}/proxy;
  fastcgi_temp_path {{.Dir}}/fastcgi;
  uwsgi_temp_path {{.Dir}}/uwsgi;
  scgi_temp_path {{.Dir}}/scgi;

  upstream static  { server {{.Static}}; keepalive 64; }
  upstream keyward { server {{.Validator}}; keepalive 64; }
  {{if .OAuth}}upstream oauth2  { server {{.OAuth}}; keepalive 64; }{{end}}

  # The static upstream every path ends at.
  server {
    listen {{.Static}};
    location / { return 200 "ok\n"; }
  }

  # Baseline: nginx -> static upstream.
  server {
    listen {{.Baseline}};
    location / {
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass http://static;
    }
  }

  # nginx -> keyward validator (auth_request) -> static upstream: the README's snippet.
  server {
    listen {{.Keyward}};
    location = /_keyward {
      internal;
      proxy_pass http://keyward/authz;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-URI $request_uri;
      proxy_set_header X-Original-Method $request_method;
      proxy_set_header X-Forwarded-Host $host;
      proxy_set_header X-Original-URL "";
      proxy_set_header X-Forwarded-Uri "";
      proxy_set_header X-Forwarded-Method "";
    }
    location / {
      auth_request /_keyward;
      auth_request_set $kw_user   $upstream_http_x_auth_request_user;
      auth_request_set $kw_email  $upstream_http_x_auth_request_email;
      auth_request_set $kw_groups $upstream_http_x_auth_request_groups;
      proxy_set_header X-Auth-Request-User   $kw_user;
      proxy_set_header X-Auth-Request-Email  $kw_email;
      proxy_set_header X-Auth-Request-Groups $kw_groups;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass http://static;
    }
  }
{{if .OAuth}}
  # nginx -> oauth2-proxy (auth_request to /oauth2/auth) -> static upstream.
  server {
    listen {{.OAuth2Listen}};
    location = /_oauth2 {
      internal;
      proxy_pass http://oauth2/oauth2/auth;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-URI $request_uri;
    }
    location / {
      auth_request /_oauth2;
      auth_request_set $o_user   $upstream_http_x_auth_request_user;
      auth_request_set $o_email  $upstream_http_x_auth_request_email;
      auth_request_set $o_groups $upstream_http_x_auth_request_groups;
      proxy_set_header X-Auth-Request-User   $o_user;
      proxy_set_header X-Auth-Request-Email  $o_email;
      proxy_set_header X-Auth-Request-Groups $o_groups;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass http://static;
    }
  }
{{end}}
}
`))

func startNginx(c config, dir string, ports map[string]string, validatorAddr, oauthAddr string) (func(), error) {
	conf := filepath.Join(dir, "nginx.conf")
	f, err := os.Create(conf) //nolint:gosec // the nginx config in the run's own temporary directory
	if err != nil {
		return nil, err
	}
	err = nginxConf.Execute(f, map[string]any{"Dir": dir, "Workers": c.nginxWorkers, "Static": ports["static"], "Baseline": ports["baseline"],
		"Keyward": ports["keyward"], "Validator": validatorAddr, "OAuth": oauthAddr, "OAuth2Listen": ports["oauth2"]})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	stop, err := startProcess(dir, "nginx", c.nginx, "-p", dir, "-c", conf, "-e", filepath.Join(dir, "nginx-error.log"))
	if err != nil {
		return nil, err
	}
	for range 100 {
		if conn, err := net.Dial("tcp", ports["keyward"]); err == nil {
			_ = conn.Close()
			return stop, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return stop, errors.New("nginx did not start")
}

type wrkResult struct {
	rps      float64
	requests float64
	p50, p99 string
	non2xx   int
}

// combine averages the rates of rounds of equal length and takes the median latencies.
func combine(rs []wrkResult) wrkResult {
	var out wrkResult
	p50s, p99s := make([]string, 0, len(rs)), make([]string, 0, len(rs))
	for _, r := range rs {
		out.rps += r.rps / float64(len(rs))
		out.non2xx += r.non2xx
		p50s = append(p50s, r.p50)
		p99s = append(p99s, r.p99)
	}
	out.p50, out.p99 = medianDuration(p50s), medianDuration(p99s)
	return out
}

// medianDuration returns the median of wrk durations ("612.00us", "1.20ms", "2.00s").
func medianDuration(ds []string) string {
	parse := func(s string) float64 {
		for _, u := range []struct {
			suffix string
			scale  float64
		}{{"us", 1e-6}, {"ms", 1e-3}, {"s", 1}} {
			if v, ok := strings.CutSuffix(s, u.suffix); ok {
				f, _ := strconv.ParseFloat(v, 64)
				return f * u.scale
			}
		}
		return 0
	}
	sorted := slices.Clone(ds)
	slices.SortFunc(sorted, func(a, b string) int { return cmp.Compare(parse(a), parse(b)) })
	return sorted[len(sorted)/2]
}

var (
	reRPS    = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	reP50    = regexp.MustCompile(`(?m)^\s+50%\s+(\S+)`)
	reP99    = regexp.MustCompile(`(?m)^\s+99%\s+(\S+)`)
	reNon2xx = regexp.MustCompile(`Non-2xx or 3xx responses:\s+(\d+)`)
	reTotal  = regexp.MustCompile(`(\d+) requests in`)
)

func runWrk(ctx context.Context, c config, url, tok string) (wrkResult, error) {
	cmd := exec.CommandContext(ctx, c.wrk, //nolint:gosec // wrk with this tool's own arguments fmt.Sprintf("-t%d", c.threads), fmt.Sprintf("-c%d", c.connections),
		fmt.Sprintf("-d%ds", int(c.duration.Seconds())), "--latency",
		"-H", "Host: app.example.test", "-H", "Authorization: Bearer "+tok, url)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return wrkResult{}, fmt.Errorf("wrk failed: %w\n%s", err, out)
	}
	s := string(out)
	var r wrkResult
	if m := reRPS.FindStringSubmatch(s); m != nil {
		r.rps, _ = strconv.ParseFloat(m[1], 64)
	}
	if m := reP50.FindStringSubmatch(s); m != nil {
		r.p50 = m[1]
	}
	if m := reP99.FindStringSubmatch(s); m != nil {
		r.p99 = m[1]
	}
	if m := reNon2xx.FindStringSubmatch(s); m != nil {
		r.non2xx, _ = strconv.Atoi(m[1])
	}
	if m := reTotal.FindStringSubmatch(s); m != nil {
		r.requests, _ = strconv.ParseFloat(m[1], 64)
	}
	fmt.Fprintln(os.Stderr, indent(s))
	if r.rps == 0 {
		return r, fmt.Errorf("cannot read wrk's output:\n%s", s)
	}
	return r, nil
}

func indent(s string) string {
	var b strings.Builder
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		b.WriteString("    " + sc.Text() + "\n")
	}
	return b.String()
}

// loadHTTP runs c.connections goroutines asking the validator's HTTP endpoint, Envoy-style,
// for c.duration, and returns the allowed checks per second.
func loadHTTP(ctx context.Context, c config, addr, tok string) (float64, int64, error) {
	tr := &http.Transport{MaxIdleConnsPerHost: c.connections, MaxConnsPerHost: c.connections}
	cl := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	defer tr.CloseIdleConnections()
	return loadLoop(ctx, c, func() func() error {
		return func() error {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/authz/api/items", nil)
			req.Host = "app.example.test"
			req.Header.Set("Authorization", "Bearer "+tok)
			resp, err := cl.Do(req)
			if err != nil {
				return err
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode != 200 {
				return fmt.Errorf("status %d", resp.StatusCode)
			}
			return nil
		}
	})
}

// loadGRPC does the same through Authorization/Check, the workers sharing c.grpcConns
// HTTP/2 connections, as Envoy multiplexes its checks.
func loadGRPC(ctx context.Context, c config, addr, tok string) (float64, int64, error) {
	clients := make(chan authv3.AuthorizationClient, c.connections)
	conns := make([]authv3.AuthorizationClient, 0, c.grpcConns)
	for range max(c.grpcConns, 1) {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return 0, 0, err
		}
		defer func() { _ = conn.Close() }()
		conns = append(conns, authv3.NewAuthorizationClient(conn))
	}
	for i := range c.connections {
		clients <- conns[i%len(conns)]
	}
	req := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{
		Http: &authv3.AttributeContext_HttpRequest{Method: "GET", Host: "app.example.test", Path: "/api/items",
			Headers: map[string]string{"authorization": "Bearer " + tok, ":authority": "app.example.test", ":path": "/api/items", ":method": "GET"}},
	}}}
	return loadLoop(ctx, c, func() func() error {
		authz := <-clients
		return func() error { return grpcCall(ctx, authz, req) }
	})
}

func grpcCall(ctx context.Context, authz authv3.AuthorizationClient, req *authv3.CheckRequest) error {
	{
		resp, err := authz.Check(ctx, req)
		if err != nil {
			return err
		}
		if resp.GetStatus().GetCode() != int32(codes.OK) {
			return fmt.Errorf("code %d", resp.GetStatus().GetCode())
		}
		return nil
	}
}

// loadLoop runs c.connections workers, each with its own call from newCall, for c.duration
// and returns the rate and count of successful calls.
func loadLoop(ctx context.Context, c config, newCall func() func() error) (float64, int64, error) {
	var n atomic.Int64
	var firstErr atomic.Value
	deadline := time.Now().Add(c.duration)
	var wg sync.WaitGroup
	start := time.Now()
	for range c.connections {
		call := newCall()
		wg.Go(func() {
			for time.Now().Before(deadline) && ctx.Err() == nil {
				if err := call(); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				n.Add(1)
			}
		})
	}
	wg.Wait()
	if err, ok := firstErr.Load().(error); ok {
		return 0, 0, err
	}
	return float64(n.Load()) / time.Since(start).Seconds(), n.Load(), nil
}

// cpuSeconds is the user+system CPU time of a process, from /proc.
func cpuSeconds(pid int) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(data)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	utime, _ := strconv.ParseFloat(fields[11], 64)
	stime, _ := strconv.ParseFloat(fields[12], 64)
	return (utime + stime) / 100 // USER_HZ
}
