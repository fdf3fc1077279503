package resilience

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"text/template"
	"time"

	"github.com/keyward/keyward/internal/testsupport"
)

// nginxConf is the README's nginx auth_request integration with two validator replicas as
// the upstream: nginx tries the other replica when one refuses the connection or fails
// (proxy_next_upstream). Open-source nginx cannot probe /readyz; a starting validator
// does not listen until it is synced, which nginx sees as a refused connection.
var nginxConf = template.Must(template.New("nginx").Parse(`
worker_processes 1;
daemon off;
pid {{.Dir}}/nginx.pid;
error_log {{.Dir}}/nginx-error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path {{.Dir}}/client_body;
  proxy_temp_path {{.Dir}}/proxy;
  fastcgi_temp_path {{.Dir}}/fastcgi;
  uwsgi_temp_path {{.Dir}}/uwsgi;
  scgi_temp_path {{.Dir}}/scgi;

  upstream keyward {
    server {{.V1}} max_fails=1 fail_timeout=2s;
    server {{.V2}} max_fails=1 fail_timeout=2s;
    keepalive 32;
  }
  upstream app { server {{.Upstream}}; keepalive 32; }

  server {
    listen {{.Listen}};

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
      proxy_next_upstream error timeout http_502 http_503 http_504;
      proxy_next_upstream_tries 2;
      proxy_connect_timeout 1s;
    }

    location / {
      auth_request /_keyward;
      auth_request_set $kw_user $upstream_http_x_auth_request_user;
      proxy_set_header X-Auth-Request-User $kw_user;
      proxy_set_header Host $host;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass http://app;
    }
  }
}
`))

// startNginx runs nginx in front of the two validators and an upstream; it returns its
// address and stops when the test ends.
func startNginx(t *testing.T, v1, v2, upstream string) string {
	t.Helper()
	dir := filepath.Join(logDir(t), "nginx")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	listen := testsupport.MustFreeAddr(t)
	conf := filepath.Join(dir, "nginx.conf")
	f, err := os.Create(conf)
	if err != nil {
		t.Fatal(err)
	}
	err = nginxConf.Execute(f, map[string]string{"Dir": dir, "V1": v1, "V2": v2, "Upstream": upstream, "Listen": listen})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	p := newProc("nginx", logDir(t), nginxBin, "-p", dir, "-c", conf, "-e", filepath.Join(dir, "nginx-error.log"))
	if err := p.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.stop)
	eventually(t, 10*time.Second, "nginx listens", func() error {
		c, err := net.Dial("tcp", listen)
		if err != nil {
			return err
		}
		return c.Close()
	})
	return listen
}

// viaNginx sends a request for appHost through nginx.
func viaNginx(ctx context.Context, addr, tok string) (int, error) {
	return get(ctx, "http://"+addr+"/api/items", appHost, tok)
}

// probe records what one validator answers to a valid token, directly, every 20 ms, and
// when its /readyz turns 200 after a restart.
type probe struct {
	mu        sync.Mutex
	answers   map[string]int // "200", "401", "refused", ...
	refusals  []string
	firstOK   time.Time // first 200 after restartedAt
	readyAt   time.Time // first /readyz 200 after restartedAt
	restarted time.Time
}

func (p *probe) markRestart() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.restarted, p.firstOK, p.readyAt = time.Now(), time.Time{}, time.Time{}
}

func runProbe(ctx context.Context, v *kwProc, pool *tokenPool) *probe {
	p := &probe{answers: map[string]int{}}
	go func() {
		for ctx.Err() == nil {
			time.Sleep(20 * time.Millisecond)
			m, ok := pool.pick()
			if !ok {
				continue
			}
			rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			st, err := check(rctx, v.httpAddr, m.raw)
			cancel()
			ready := v.readyz()
			p.mu.Lock()
			switch {
			case err != nil:
				p.answers["no answer"]++
			default:
				p.answers[fmt.Sprint(st)]++
				if st != http.StatusOK && len(p.refusals) < 10 {
					p.refusals = append(p.refusals, fmt.Sprintf("%s: %d", time.Now().Format("15:04:05.000"), st))
				}
				if st == http.StatusOK && !p.restarted.IsZero() && p.firstOK.IsZero() {
					p.firstOK = time.Now()
				}
			}
			if ready && !p.restarted.IsZero() && p.readyAt.IsZero() {
				p.readyAt = time.Now()
			}
			p.mu.Unlock()
		}
	}()
	return p
}

// Two validators behind nginx take 150 requests/s with valid tokens. The first is restarted
// gracefully (SIGTERM, then started again), then the second is killed with SIGKILL and
// started again. No request through nginx may be refused; each restarted validator answers
// nothing but 200 to valid tokens (before it is synced it does not listen), and its /readyz
// turns 200 only when it allows valid tokens.
func TestValidatorRestartBehindNginx(t *testing.T) {
	const (
		ns   = "vrestart"
		rate = 150
	)
	spec := issuerSpec{name: "v0"}
	createNamespace(t, ns)
	deleteKeywardObjects(t, ns)
	startKeyward(t, "controller", "controller", "--leader-elect=false")
	iss := startKeyward(t, "issuer", "issuer")
	vals := []*kwProc{startKeyward(t, "validator-1", "validator"), startKeyward(t, "validator-2", "validator")}
	createIssuer(t, ns, spec)
	createPolicy(t, ns, spec.name)
	createSigningKey(t, ns, spec)
	base := issuerBase(iss.httpAddr, ns, spec.name)
	waitIssuerReady(t, base)
	first, _ := clientCredentials(t.Context(), base)
	for _, v := range vals {
		v.waitReady(t, 30*time.Second)
		waitAllowed(t, v.httpAddr, first)
	}
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) }))
	t.Cleanup(app.Close)
	nginx := startNginx(t, vals[0].httpAddr, vals[1].httpAddr, app.Listener.Addr().String())

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	pool := newTokenPool()
	mintLoop(ctx, pool, 200*time.Millisecond, map[string]string{spec.name: base})
	eventually(t, 10*time.Second, "tokens are minted", func() error {
		if _, ok := pool.pick(); !ok {
			return errString("none yet")
		}
		return nil
	})
	probes := []*probe{runProbe(ctx, vals[0], pool), runProbe(ctx, vals[1], pool)}
	var load *loadStats
	var wg sync.WaitGroup
	wg.Go(func() {
		load = runLoad(ctx, rate, 16, pool, func(ctx context.Context, m minted) (int, error) {
			return viaNginx(ctx, nginx, m.raw)
		})
	})
	// restartOne stops validator i (SIGTERM or SIGKILL), starts it again and returns how long
	// it was out; once its /readyz says 200, it must allow a valid token at once.
	restartOne := func(i int, how string) time.Duration {
		v := vals[i]
		time.Sleep(5 * time.Second)
		stopped := time.Now()
		if how == "SIGKILL" {
			v.kill()
		} else {
			v.stop()
		}
		probes[i].markRestart()
		if err := v.start(); err != nil {
			t.Fatal(err)
		}
		v.waitReady(t, 60*time.Second)
		out := time.Since(stopped)
		m, _ := pool.pick()
		if st, err := check(t.Context(), v.httpAddr, m.raw); err != nil || st != http.StatusOK {
			t.Errorf("validator-%d reports ready but answers %d %v to a valid token", i+1, st, err)
		}
		return out
	}
	took := []time.Duration{restartOne(0, "SIGTERM"), restartOne(1, "SIGKILL")}
	time.Sleep(5 * time.Second)
	cancel()
	wg.Wait()

	t.Logf("through nginx: %s", load)
	if n := load.notOK(); n != 0 {
		t.Errorf("%d requests with valid tokens were refused or failed through nginx: %v", n, load.refusals)
	}
	for i, p := range probes {
		p.mu.Lock()
		t.Logf("validator-%d (restarted with %s, ready again %s after the stop): direct answers to valid tokens %v; first 200 %s and /readyz 200 %s after the new process started",
			i+1, []string{"SIGTERM", "SIGKILL"}[i], took[i].Round(time.Millisecond), p.answers,
			sinceOrNever(p.restarted, p.firstOK), sinceOrNever(p.restarted, p.readyAt))
		for code, n := range p.answers {
			if code != "200" && code != "no answer" {
				t.Errorf("validator-%d answered %s to a valid token %d times: %v", i+1, code, n, p.refusals)
			}
		}
		if p.readyAt.IsZero() || p.firstOK.IsZero() {
			t.Errorf("validator-%d: no /readyz 200 or no 200 to a valid token after its restart", i+1)
		}
		p.mu.Unlock()
	}
}

func sinceOrNever(from, at time.Time) string {
	if at.IsZero() {
		return "never"
	}
	return at.Sub(from).Round(time.Millisecond).String()
}
