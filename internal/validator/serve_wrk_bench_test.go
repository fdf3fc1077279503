//go:build unix

package validator

import (
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

var (
	wrkRPS      = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	wrkRequests = regexp.MustCompile(`(\d+) requests in`)
)

// BenchmarkHTTPServerUnderWrk serves the fixture's checker through the HTTP front end on
// loopback and loads it with Debian's wrk (a separate process: 1 thread, 8 connections, the
// same valid token) for 5 s per iteration. It reports the requests/s and the CPU time of this
// process (the server: user + system, from getrusage) per request. "nginx" sends what the
// README's nginx snippet sends (/authz with X-Original-URI, -Method and X-Forwarded-Host),
// "envoy" what Envoy's HTTP mode sends (/authz/<path>, the original Host). Profile the server
// alone with
//
//	go test -run '^$' -bench HTTPServerUnderWrk -cpuprofile cpu.out ./internal/validator/
func BenchmarkHTTPServerUnderWrk(b *testing.B) {
	wrk, err := exec.LookPath("wrk")
	if err != nil {
		b.Fatal("wrk is missing: run hack/install-deps.sh")
	}
	f := newFixture(b)
	tok := f.token(nil)
	httpAddr, _ := startFrontEnds(b, f)
	for _, c := range []struct {
		name, path string
		headers    []string
	}{
		{"nginx", "/authz", []string{"Host: keyward", "X-Original-URI: /api/items", "X-Original-Method: GET", "X-Forwarded-Host: " + testHost}},
		{"envoy", "/authz/api/items", []string{"Host: " + testHost}},
	} {
		b.Run(c.name, func(b *testing.B) {
			args := []string{"-t1", "-c8", "-d5s", "-H", "Authorization: Bearer " + tok}
			for _, h := range c.headers {
				args = append(args, "-H", h)
			}
			args = append(args, "http://"+httpAddr+c.path)
			var requests, rps, cpu float64
			n := 0
			for b.Loop() {
				cpu0 := rusageSeconds(b)
				out, err := exec.CommandContext(b.Context(), wrk, args...).CombinedOutput()
				if err != nil {
					b.Fatal(err, string(out))
				}
				cpu += rusageSeconds(b) - cpu0
				r, c := wrkRPS.FindSubmatch(out), wrkRequests.FindSubmatch(out)
				if r == nil || c == nil || strings.Contains(string(out), "Non-2xx") {
					b.Fatalf("wrk's output has no rate or non-2xx answers:\n%s", out)
				}
				v, _ := strconv.ParseFloat(string(r[1]), 64)
				count, _ := strconv.ParseFloat(string(c[1]), 64)
				rps += v
				requests += count
				n++
			}
			b.ReportMetric(rps/float64(n), "req/s")
			b.ReportMetric(cpu/requests*1e6, "µs-cpu/req")
		})
	}
}

// rusageSeconds is this process's user + system CPU time.
func rusageSeconds(b *testing.B) float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}
