//go:build unix

package validator

import (
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

var (
	wrkRPS      = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	wrkRequests = regexp.MustCompile(`(\d+) requests in`)
	// h2load: "finished in 5.00s, 41234.80 req/s, ..." and "requests: 206174 total, 206174 started, 206174 done, 206174 succeeded, ...".
	h2loadRPS       = regexp.MustCompile(`finished in [0-9.]+m?s, ([0-9.]+) req/s`)
	h2loadSucceeded = regexp.MustCompile(`(\d+) succeeded`)
	h2loadStatus    = regexp.MustCompile(`status codes: (\d+) 2xx`)
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
			loadServer(b, wrk, args, func(out []byte) (rps, requests string, ok bool) {
				r, c := wrkRPS.FindSubmatch(out), wrkRequests.FindSubmatch(out)
				if r == nil || c == nil || strings.Contains(string(out), "Non-2xx") {
					return "", "", false
				}
				return string(r[1]), string(c[1]), true
			})
		})
	}
}

// loadServer runs the load tool once per benchmark iteration and reports the mean of the
// requests/s it printed and this process's CPU time per request. parse reads the rate and
// the request count from the tool's output, and fails when some answers were not 2xx.
func loadServer(b *testing.B, tool string, args []string, parse func(out []byte) (rps, requests string, ok bool)) {
	var requests, rps, cpu float64
	n := 0
	for b.Loop() {
		cpu0 := rusageSeconds(b)
		out, err := exec.CommandContext(b.Context(), tool, args...).CombinedOutput()
		if err != nil {
			b.Fatal(err, string(out))
		}
		cpu += rusageSeconds(b) - cpu0
		r, c, ok := parse(out)
		if !ok {
			b.Fatalf("%s's output has no rate, or answers that are not 2xx:\n%s", tool, out)
		}
		v, _ := strconv.ParseFloat(r, 64)
		count, _ := strconv.ParseFloat(c, 64)
		rps += v
		requests += count
		n++
	}
	b.ReportMetric(rps/float64(n), "req/s")
	b.ReportMetric(cpu/requests*1e6, "µs-cpu/req")
}

// rusageSeconds is this process's user + system CPU time.
func rusageSeconds(b *testing.B) float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// BenchmarkGRPCServerUnderH2load is BenchmarkHTTPServerUnderWrk for the gRPC front end:
// nghttp2's h2load (a separate process, like wrk a C client that costs little CPU) sends the
// same Envoy-shaped CheckRequest (envoyCheckRequest: the headers an Envoy sends, with the
// valid token) as unary gRPC calls for 5 s per iteration, with -m concurrent streams on -c
// connections, and the benchmark reports requests/s and this process's CPU per check. Every
// answer must be an OK CheckResponse with the identity headers (checked on one call before
// the load). Compare with BenchmarkHTTPServerUnderWrk run in the same command:
//
//	go test -run '^$' -bench 'ServerUnder' -benchtime 3x ./internal/validator/
func BenchmarkGRPCServerUnderH2load(b *testing.B) {
	h2load, err := exec.LookPath("h2load")
	if err != nil {
		b.Fatal("h2load is missing: apt-get install nghttp2-client (hack/install-deps.sh)")
	}
	f := newFixture(b)
	tok := f.token(nil)
	_, grpcAddr := startFrontEnds(b, f)
	in := envoyCheckRequest("Bearer " + tok)
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	resp, err := authv3.NewAuthorizationClient(conn).Check(b.Context(), in)
	_ = conn.Close()
	if err != nil || resp.GetStatus().GetCode() != 0 || resp.GetOkResponse() == nil {
		b.Fatalf("the benchmark's CheckRequest is not allowed: %v, %v", resp, err)
	}
	msg := mustWire(b, in)
	// A gRPC message: compressed flag 0, 4-byte big-endian length, the message.
	frame := append([]byte{0, 0, 0, 0, 0}, msg...)
	binary.BigEndian.PutUint32(frame[1:5], uint32(len(msg)))
	body := filepath.Join(b.TempDir(), "check.bin")
	if err := os.WriteFile(body, frame, 0o600); err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct{ name, conns, streams string }{
		{"1conn-8streams", "1", "8"},
		{"2conns-16streams", "2", "8"},
		{"8conns-1stream", "8", "1"}, // wrk's shape: 8 connections, a request in flight on each
	} {
		b.Run(c.name, func(b *testing.B) {
			args := []string{"-t1", "-c" + c.conns, "-m" + c.streams, "-D5", "-d", body,
				"-H", "content-type: application/grpc", "-H", "te: trailers",
				"http://" + grpcAddr + "/envoy.service.auth.v3.Authorization/Check"}
			loadServer(b, h2load, args, func(out []byte) (rps, requests string, ok bool) {
				r, done, st := h2loadRPS.FindSubmatch(out), h2loadSucceeded.FindSubmatch(out), h2loadStatus.FindSubmatch(out)
				if r == nil || done == nil || st == nil || string(done[1]) != string(st[1]) || string(done[1]) == "0" {
					return "", "", false
				}
				return string(r[1]), string(done[1]), true
			})
		})
	}
}
