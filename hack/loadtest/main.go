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
	"syscall"
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
	keyward, compareKeyward    string
	oauth2Proxy, oauth2Logging string
	nginx, wrk                 string
	duration                   time.Duration
	connections, threads       int
	nginxWorkers               int
	validatorProcs             int
	grpcConns                  int
	rounds                     int
	workers                    []int
}

func main() {
	var c config
	var workers string
	flag.StringVar(&c.keyward, "keyward", "bin/keyward", "keyward binary")
	flag.StringVar(&c.compareKeyward, "compare-keyward", "", "a second keyward binary (e.g. built from another commit), loaded in the same interleaved rounds behind its own nginx server, for A/B comparisons")
	flag.StringVar(&c.oauth2Proxy, "oauth2-proxy", "", "oauth2-proxy v7.15.6 binary")
	flag.StringVar(&c.oauth2Logging, "oauth2-proxy-logging", "on", "oauth2-proxy's logging: on (its defaults, as shipped: a line per request, to a file), off (--request-logging=false --auth-logging=false --standard-logging=false), or both (two oauth2-proxy processes, both measured)")
	flag.StringVar(&c.nginx, "nginx", "/usr/sbin/nginx", "nginx binary")
	flag.StringVar(&c.wrk, "wrk", "/usr/bin/wrk", "wrk binary")
	flag.DurationVar(&c.duration, "duration", 10*time.Second, "load time per path (and per front end and concurrency of the Go load generator), split over the rounds")
	flag.IntVar(&c.rounds, "rounds", 3, "rounds: each runs every path in turn for duration/rounds, so that a change in the machine's background load hits every path alike")
	flag.IntVar(&c.connections, "connections", 8, "wrk connections")
	flag.IntVar(&c.threads, "threads", 2, "wrk threads")
	flag.StringVar(&workers, "workers", "8,32,64", "concurrencies of the Go load generator (HTTP: one keep-alive connection per worker; gRPC: the workers share --grpc-connections); empty skips it")
	flag.IntVar(&c.nginxWorkers, "nginx-workers", 1, "nginx worker processes")
	flag.IntVar(&c.grpcConns, "grpc-connections", 1, "gRPC client connections the workers share (Envoy multiplexes its checks on one HTTP/2 connection per worker thread)")
	flag.IntVar(&c.validatorProcs, "validator-gomaxprocs", 0, "GOMAXPROCS of the validator processes; 0 keeps Go's default (the number of CPUs)")
	flag.Parse()
	for w := range strings.SplitSeq(workers, ",") {
		if w = strings.TrimSpace(w); w == "" {
			continue
		}
		n, err := strconv.Atoi(w)
		if err != nil || n < 1 {
			fmt.Fprintln(os.Stderr, "loadtest: bad -workers:", workers)
			os.Exit(2)
		}
		c.workers = append(c.workers, n)
	}
	switch c.oauth2Logging {
	case "on", "off", "both":
	default:
		fmt.Fprintln(os.Stderr, "loadtest: -oauth2-proxy-logging must be on, off or both")
		os.Exit(2)
	}
	ctrl.SetLogger(zap.New(zap.WriteTo(io.Discard)))
	if err := run(c); err != nil {
		fmt.Fprintln(os.Stderr, "loadtest:", err)
		os.Exit(1)
	}
}

// validatorProc is a running `keyward validator` process.
type validatorProc struct {
	name, bin  string
	pid        int
	http, grpc string
}

// target is a path wrk loads: a server of the nginx under test.
type target struct {
	name, title string
	listen      string
	// validator, when set, is the validator this target asks.
	validator *validatorProc
	// authPID is the auth service's process (validator or oauth2-proxy), if any.
	authPID int
	// CPU seconds of nginx's workers and of the auth service, and requests, over the rounds.
	nginxCPU, authCPU, requests float64
}

func run(c config) error {
	dir, err := os.MkdirTemp("", "keyward-loadtest-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Minute)
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
			// The one token lasts the whole run: validators refuse a token that outlives its
			// issuer's access-token lifetime.
			AccessTokenLifetime: metav1.Duration{Duration: time.Hour},
			Users:               keywardv1.SecretReference{SecretRef: keywardv1.LocalObjectReference{Name: "users"}}}},
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

	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := writeKubeconfig(env, kubeconfig); err != nil {
		return err
	}
	validators := []*validatorProc{{name: "keyward", bin: c.keyward}}
	if c.compareKeyward != "" {
		validators = append(validators, &validatorProc{name: "keyward-b", bin: c.compareKeyward})
	}
	for _, v := range validators {
		step("starting " + v.name + " validator (" + v.bin + ")")
		v.http, _ = freeAddr()
		v.grpc, _ = freeAddr()
		probe, _ := freeAddr()
		var env []string
		if c.validatorProcs > 0 {
			env = []string{fmt.Sprintf("GOMAXPROCS=%d", c.validatorProcs)}
		}
		stop, pid, err := startProcess(dir, v.name, env, v.bin, "validator", "--kubeconfig", kubeconfig, "--authz-addr", v.http,
			"--authz-grpc-addr", v.grpc, "--health-probe-bind-address", probe, "--metrics-bind-address", "0")
		if err != nil {
			return err
		}
		stops = append(stops, stop)
		v.pid = pid
		if err := poll(ctx, time.Minute, func() bool {
			return httpStatus("http://"+v.http+"/authz/api", map[string]string{"Host": "app.example.test", "Authorization": "Bearer " + tok}) == 200
		}); err != nil {
			return fmt.Errorf("the %s validator does not allow the token", v.name)
		}
	}

	// oauth2-proxy, as shipped (its default logging, to a file) and/or with logging off.
	oauthModes := map[string][]string{"on": {"on"}, "off": {"off"}, "both": {"on", "off"}}[c.oauth2Logging]
	oauthAddrs, oauthPIDs := map[string]string{}, map[string]int{}
	if c.oauth2Proxy != "" {
		for _, mode := range oauthModes {
			step("starting oauth2-proxy (logging " + mode + ")")
			addr, _ := freeAddr()
			args := []string{"--http-address=" + addr, "--provider=oidc", "--oidc-issuer-url=" + issuerURL, "--client-id=api",
				"--client-secret=unused", "--cookie-secret=0123456789abcdef0123456789abcdef", "--cookie-secure=false",
				"--email-domain=*", "--skip-jwt-bearer-tokens=true", "--set-xauthrequest=true", "--upstream=static://200",
				"--insecure-oidc-allow-unverified-email=true", "--redirect-url=http://app.example.test/oauth2/callback",
				"--skip-provider-button=true"}
			if mode == "off" {
				args = append(args, "--request-logging=false", "--auth-logging=false", "--standard-logging=false")
			}
			stop, pid, err := startProcess(dir, "oauth2-proxy-logging-"+mode, nil, c.oauth2Proxy, args...)
			if err != nil {
				return err
			}
			stops = append(stops, stop)
			if err := poll(ctx, time.Minute, func() bool {
				return httpStatus("http://"+addr+"/oauth2/auth", map[string]string{"Authorization": "Bearer " + tok}) == 202
			}); err != nil {
				return errors.New("oauth2-proxy does not accept the token (see its log)")
			}
			oauthAddrs[mode], oauthPIDs[mode] = addr, pid
		}
	}

	step("starting nginx")
	targets := []*target{{name: "baseline", title: "nginx -> static upstream"}}
	var authServers []authServer
	for _, v := range validators {
		t := &target{name: v.name, title: "nginx -> " + v.name + " validator -> upstream", validator: v, authPID: v.pid}
		if v.name != "keyward" {
			t.title = "nginx -> " + v.name + " (" + v.bin + ") -> upstream"
		}
		targets = append(targets, t)
		authServers = append(authServers, authServer{Name: v.name, Upstream: v.http, AuthPath: "/authz", Keyward: true})
	}
	for _, mode := range oauthModes {
		if addr := oauthAddrs[mode]; addr != "" {
			name := "oauth2-proxy"
			title := "nginx -> oauth2-proxy v7.15.6 (as shipped: default logging, to a file) -> upstream"
			if mode == "off" {
				title = "nginx -> oauth2-proxy v7.15.6 (logging off) -> upstream"
			}
			if len(oauthModes) > 1 || mode == "off" {
				name = "oauth2-proxy-logging-" + mode
			}
			targets = append(targets, &target{name: name, title: title, authPID: oauthPIDs[mode]})
			authServers = append(authServers, authServer{Name: name, Upstream: addr, AuthPath: "/oauth2/auth"})
		}
	}
	static, _ := freeAddr()
	for _, t := range targets {
		t.listen, _ = freeAddr()
	}
	for i := range authServers {
		authServers[i].Listen = targets[i+1].listen
		authServers[i].ID = i
	}
	stop, nginxPID, err := startNginx(c, dir, static, targets[0].listen, authServers)
	if err != nil {
		return err
	}
	stops = append(stops, stop)

	for _, t := range targets {
		url := "http://" + t.listen + "/api/items"
		if st := httpStatus(url, map[string]string{"Host": "app.example.test", "Authorization": "Bearer " + tok}); st != 200 {
			return fmt.Errorf("%s answers %d before the load", t.title, st)
		}
	}
	rounds := max(c.rounds, 1)
	slice := c
	slice.duration = max((c.duration / time.Duration(rounds)).Truncate(time.Second), time.Second) // wrk takes whole seconds
	perRound := map[string][]wrkResult{}
	nginxWorkers := childPIDs(nginxPID)
	for r := range rounds {
		for _, t := range targets {
			step(fmt.Sprintf("round %d/%d, wrk: %s for %s", r+1, rounds, t.title, slice.duration))
			nginx0, auth0 := cpuSeconds(nginxWorkers...), cpuSeconds(t.authPID)
			res, err := runWrk(ctx, slice, "http://"+t.listen+"/api/items", tok)
			if err != nil {
				return err
			}
			t.nginxCPU += cpuSeconds(nginxWorkers...) - nginx0
			t.authCPU += cpuSeconds(t.authPID) - auth0
			t.requests += res.requests
			perRound[t.name] = append(perRound[t.name], res)
		}
	}
	results := map[string]wrkResult{}
	for t, rs := range perRound {
		results[t] = combine(rs)
	}
	direct := map[string]wrkResult{}
	for _, v := range validators {
		step("wrk: the " + v.name + " validator's HTTP endpoint directly (Envoy-style /authz/<path>)")
		res, err := runWrk(ctx, slice, "http://"+v.http+"/authz/api/items", tok)
		if err != nil {
			return err
		}
		direct[v.name] = res
	}

	// The Go load generator: HTTP /authz and gRPC Check in alternation, at each concurrency.
	type genResult struct{ checks, seconds, cpu, clientCPU float64 }
	gen := map[string]*genResult{} // key: validator/front end/workers
	for _, w := range c.workers {
		for r := range rounds {
			for _, v := range validators {
				for _, fe := range []string{"http", "grpc"} {
					step(fmt.Sprintf("round %d/%d, Go load generator: %s %s, %d workers, %s", r+1, rounds, v.name, fe, w, slice.duration))
					cpu0, client0 := cpuSeconds(v.pid), selfCPUSeconds()
					var n int64
					var secs float64
					var err error
					if fe == "http" {
						n, secs, err = loadHTTP(ctx, slice, w, v.http, tok)
					} else {
						n, secs, err = loadGRPC(ctx, slice, w, v.grpc, tok)
					}
					if err != nil {
						return fmt.Errorf("%s %s: %w", v.name, fe, err)
					}
					key := fmt.Sprintf("%s/%s/%d", v.name, fe, w)
					if gen[key] == nil {
						gen[key] = &genResult{}
					}
					g := gen[key]
					g.checks += float64(n)
					g.seconds += secs
					g.cpu += cpuSeconds(v.pid) - cpu0
					g.clientCPU += selfCPUSeconds() - client0
				}
			}
		}
	}

	procs := "default"
	if c.validatorProcs > 0 {
		procs = strconv.Itoa(c.validatorProcs)
	}
	load, _ := os.ReadFile("/proc/loadavg")
	fmt.Printf("\n## Validator load test (%s per path in %d rounds of %s, wrk -t%d -c%d, nginx worker_processes %d, validator GOMAXPROCS %s; load average at the end: %s)\n\n",
		slice.duration*time.Duration(rounds), rounds, slice.duration, c.threads, c.connections, c.nginxWorkers, procs, strings.TrimSpace(string(load)))
	fmt.Println("| path | requests/s | p50 (median of rounds) | p99 (median of rounds) | non-2xx | vs nginx alone | CPU per request: nginx / auth service |")
	fmt.Println("|---|---:|---:|---:|---:|---:|---:|")
	base := results["baseline"].rps
	for _, t := range targets {
		r := results[t.name]
		auth := "-"
		if t.authPID != 0 {
			auth = fmt.Sprintf("%.1f µs", t.authCPU/t.requests*1e6)
		}
		fmt.Printf("| %s | %.0f | %s | %s | %d | %.2fx | %.1f µs / %s |\n", t.title, r.rps, r.p50, r.p99, r.non2xx, r.rps/base, t.nginxCPU/t.requests*1e6, auth)
	}
	for _, v := range validators {
		d := direct[v.name]
		fmt.Printf("| %s /authz directly (no nginx) | %.0f | %s | %s | %d | | |\n", v.name, d.rps, d.p50, d.p99, d.non2xx)
	}
	fmt.Println()
	for _, v := range validators {
		for _, t := range targets {
			if strings.HasPrefix(t.name, "oauth2") {
				fmt.Printf("%s / %s: %.2fx\n", v.name, t.name, results[v.name].rps/results[t.name].rps)
			}
		}
		for _, t := range targets {
			if t.validator == v && t.requests > 0 {
				fmt.Printf("%s validator CPU per check behind nginx: %.1f µs (%.0f checks per validator CPU-second); peak RSS %s\n",
					v.name, t.authCPU/t.requests*1e6, t.requests/t.authCPU, peakRSS(v.pid))
			}
		}
	}
	if len(validators) > 1 {
		fmt.Printf("keyward / keyward-b: %.2fx\n", results["keyward"].rps/results["keyward-b"].rps)
	}
	fmt.Println("\nPer round (requests/s, p99):")
	for r := range rounds {
		line := fmt.Sprintf("- round %d:", r+1)
		for _, t := range targets {
			line += fmt.Sprintf(" %s %.0f (%s);", t.name, perRound[t.name][r].rps, perRound[t.name][r].p99)
		}
		b := perRound["baseline"][r].rps
		for _, t := range targets[1:] {
			line += fmt.Sprintf(" %s/baseline %.2fx;", t.name, perRound[t.name][r].rps/b)
		}
		for _, t := range targets {
			if strings.HasPrefix(t.name, "oauth2") {
				line += fmt.Sprintf(" keyward/%s %.2fx;", t.name, perRound["keyward"][r].rps/perRound[t.name][r].rps)
			}
		}
		fmt.Println(strings.TrimSuffix(line, ";"))
	}
	if len(c.workers) > 0 {
		fmt.Printf("\nGo load generator (HTTP: one keep-alive connection per worker; gRPC: the workers share %d HTTP/2 connection(s)), %s per front end and concurrency in %d rounds, alternating; client and validator on the same machine:\n",
			max(c.grpcConns, 1), slice.duration*time.Duration(rounds), rounds)
		fmt.Println("| validator | workers | HTTP checks/s | gRPC checks/s | gRPC/HTTP | validator CPU per check HTTP / gRPC | load generator CPU per check HTTP / gRPC |")
		fmt.Println("|---|---:|---:|---:|---:|---:|---:|")
		for _, v := range validators {
			for _, w := range c.workers {
				h, g := gen[fmt.Sprintf("%s/http/%d", v.name, w)], gen[fmt.Sprintf("%s/grpc/%d", v.name, w)]
				hr, gr := h.checks/h.seconds, g.checks/g.seconds
				fmt.Printf("| %s | %d | %.0f | %.0f | %.2fx | %.1f / %.1f µs | %.1f / %.1f µs |\n", v.name, w, hr, gr, gr/hr,
					h.cpu/h.checks*1e6, g.cpu/g.checks*1e6, h.clientCPU/h.checks*1e6, g.clientCPU/g.checks*1e6)
			}
		}
	}
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

func startProcess(dir, name string, env []string, bin string, args ...string) (stop func(), pid int, err error) {
	logf, err := os.Create(filepath.Join(dir, name+".log")) //nolint:gosec // a log file in the run's own temporary directory
	if err != nil {
		return nil, 0, err
	}
	cmd := exec.Command(bin, args...) //nolint:gosec // the binaries are this tool's flags, run by the developer
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, 0, fmt.Errorf("cannot start %s: %w", name, err)
	}
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
	}, cmd.Process.Pid, nil
}

// authServer is an nginx server that asks an auth service (auth_request) and then proxies to
// the static upstream.
type authServer struct {
	ID       int
	Name     string
	Listen   string
	Upstream string
	AuthPath string
	// Keyward selects the README's snippet; otherwise oauth2-proxy's (/oauth2/auth).
	Keyward bool
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
{{range .Auth}}
  upstream auth{{.ID}} { server {{.Upstream}}; keepalive 64; }
{{if .Keyward}}
  # nginx -> {{.Name}} (auth_request) -> static upstream: the README's snippet.
  server {
    listen {{.Listen}};
    location = /_auth {
      internal;
      proxy_pass http://auth{{.ID}}{{.AuthPath}};
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
      auth_request /_auth;
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
{{else}}
  # nginx -> {{.Name}} (auth_request to /oauth2/auth) -> static upstream.
  server {
    listen {{.Listen}};
    location = /_auth {
      internal;
      proxy_pass http://auth{{.ID}}{{.AuthPath}};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-URI $request_uri;
    }
    location / {
      auth_request /_auth;
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
{{end}}{{end}}
}
`))

func startNginx(c config, dir, static, baseline string, auth []authServer) (stop func(), pid int, err error) {
	conf := filepath.Join(dir, "nginx.conf")
	f, err := os.Create(conf) //nolint:gosec // the nginx config in the run's own temporary directory
	if err != nil {
		return nil, 0, err
	}
	err = nginxConf.Execute(f, map[string]any{"Dir": dir, "Workers": c.nginxWorkers, "Static": static, "Baseline": baseline, "Auth": auth})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, 0, err
	}
	stop, pid, err = startProcess(dir, "nginx", nil, c.nginx, "-p", dir, "-c", conf, "-e", filepath.Join(dir, "nginx-error.log"))
	if err != nil {
		return nil, 0, err
	}
	for range 100 {
		if conn, err := net.Dial("tcp", baseline); err == nil {
			_ = conn.Close()
			if len(childPIDs(pid)) == c.nginxWorkers {
				return stop, pid, nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return stop, pid, errors.New("nginx did not start")
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
	//nolint:gosec // wrk with this tool's own arguments
	cmd := exec.CommandContext(ctx, c.wrk, fmt.Sprintf("-t%d", c.threads), fmt.Sprintf("-c%d", c.connections),
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

// loadHTTP runs workers goroutines asking the validator's HTTP endpoint, Envoy-style, each on
// its own keep-alive connection, for c.duration, and returns the allowed checks and the time.
func loadHTTP(ctx context.Context, c config, workers int, addr, tok string) (int64, float64, error) {
	tr := &http.Transport{MaxIdleConnsPerHost: workers, MaxConnsPerHost: workers}
	cl := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	defer tr.CloseIdleConnections()
	return loadLoop(ctx, c.duration, workers, func() func() error {
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
func loadGRPC(ctx context.Context, c config, workers int, addr, tok string) (int64, float64, error) {
	conns := make([]authv3.AuthorizationClient, 0, c.grpcConns)
	for range max(c.grpcConns, 1) {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return 0, 0, err
		}
		defer func() { _ = conn.Close() }()
		conns = append(conns, authv3.NewAuthorizationClient(conn))
	}
	clients := make(chan authv3.AuthorizationClient, workers)
	for i := range workers {
		clients <- conns[i%len(conns)]
	}
	req := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{
		Http: &authv3.AttributeContext_HttpRequest{Method: "GET", Host: "app.example.test", Path: "/api/items",
			Headers: map[string]string{"authorization": "Bearer " + tok, ":authority": "app.example.test", ":path": "/api/items", ":method": "GET"}},
	}}}
	return loadLoop(ctx, c.duration, workers, func() func() error {
		authz := <-clients
		return func() error { return grpcCall(ctx, authz, req) }
	})
}

func grpcCall(ctx context.Context, authz authv3.AuthorizationClient, req *authv3.CheckRequest) error {
	resp, err := authz.Check(ctx, req)
	if err != nil {
		return err
	}
	if resp.GetStatus().GetCode() != int32(codes.OK) {
		return fmt.Errorf("code %d", resp.GetStatus().GetCode())
	}
	return nil
}

// loadLoop runs workers goroutines, each with its own call from newCall, for d and returns
// the number of successful calls and the time taken.
func loadLoop(ctx context.Context, d time.Duration, workers int, newCall func() func() error) (int64, float64, error) {
	var n atomic.Int64
	var firstErr atomic.Value
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	start := time.Now()
	for range workers {
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
	return n.Load(), time.Since(start).Seconds(), nil
}

// peakRSS is a process's peak resident set size (VmHWM), from /proc.
func peakRSS(pid int) string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "?"
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "?"
}

// cpuSeconds is the user+system CPU time of processes, from /proc; 0 for pid 0.
func cpuSeconds(pids ...int) float64 {
	var sum float64
	for _, pid := range pids {
		if pid == 0 {
			continue
		}
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(data)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		utime, _ := strconv.ParseFloat(fields[11], 64)
		stime, _ := strconv.ParseFloat(fields[12], 64)
		sum += (utime + stime) / 100 // USER_HZ
	}
	return sum
}

// selfCPUSeconds is this process's user+system CPU time (the load generator's, plus the
// idle controllers of the run).
func selfCPUSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// childPIDs are the children of a process (nginx's workers), from /proc.
func childPIDs(pid int) []int {
	data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	var pids []int
	for f := range strings.FieldsSeq(string(data)) {
		if p, err := strconv.Atoi(f); err == nil {
			pids = append(pids, p)
		}
	}
	return pids
}
