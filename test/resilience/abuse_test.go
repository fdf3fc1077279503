package resilience

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// slowResult is what a slow client saw: how long until the server gave up on it, and what it
// answered, if anything.
type slowResult struct {
	cutAfter time.Duration
	answer   string // status line, or "closed without an answer"
	sent     int    // bytes trickled before the cut
}

// slowClient sends head at once, then trickle one byte per interval (cycling), until the
// server closes the connection or answers; it gives up after limit.
func slowClient(addr, head, trickle string, interval, limit time.Duration) (slowResult, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return slowResult{}, err
	}
	defer func() { _ = c.Close() }()
	start := time.Now()
	if _, err := io.WriteString(c, head); err != nil {
		return slowResult{}, err
	}
	answered := make(chan string, 1)
	go func() {
		_ = c.SetReadDeadline(start.Add(limit))
		line, err := bufio.NewReader(c).ReadString('\n')
		switch {
		case err == nil:
			answered <- strings.TrimSpace(line)
		case errors.Is(err, io.EOF) || strings.Contains(err.Error(), "reset"):
			answered <- "closed without an answer"
		default:
			answered <- "error: " + err.Error()
		}
	}()
	sent := 0
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case a := <-answered:
			if strings.HasPrefix(a, "error: ") {
				return slowResult{}, fmt.Errorf("not cut off within %s: %s", limit, a)
			}
			return slowResult{cutAfter: time.Since(start), answer: a, sent: sent}, nil
		case <-tick.C:
			if _, err := c.Write([]byte{trickle[sent%len(trickle)]}); err == nil {
				sent++
			}
		}
	}
}

// rawExchange sends a raw request and returns the response status code.
func rawExchange(addr, raw string) (int, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return 0, err
	}
	defer func() { _ = c.Close() }()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	go func() { _, _ = io.WriteString(c, raw) }()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, err
	}
	_ = resp.Body.Close()
	return resp.StatusCode, nil
}

// Slow clients are cut off by the servers' timeouts, and oversized bodies and headers are
// refused with 413 and 431, at the issuer and at the validator (both as processes). TLS is
// not tested here: keyward's listeners are plain HTTP in this branch (TLS termination and its
// version floor are tested with the TLS listeners).
func TestSlowAndOversizedRequests(t *testing.T) {
	const ns = "abuse"
	spec := issuerSpec{name: "a0"}
	createNamespace(t, ns)
	deleteKeywardObjects(t, ns)
	startKeyward(t, "controller", "controller", "--leader-elect=false")
	iss := startKeyward(t, "issuer", "issuer")
	val := startKeyward(t, "validator", "validator")
	createIssuer(t, ns, spec)
	createPolicy(t, ns, spec.name)
	createSigningKey(t, ns, spec)
	waitIssuerReady(t, issuerBase(iss.httpAddr, ns, spec.name))
	val.waitReady(t, 30*time.Second)
	loginPath := "/" + ns + "/" + spec.name + "/api/token/"

	t.Run("slow clients are cut off", func(t *testing.T) {
		cases := []struct {
			name, addr, head, trickle string
		}{
			{"issuer, headers one byte a second (ReadHeaderTimeout 5s)", iss.httpAddr,
				"POST " + loginPath + " HTTP/1.1\r\nHost: keyward.test\r\n", "X-Slow: aaaaaaaa\r\n"},
			{"issuer, body one byte a second (ReadTimeout 10s)", iss.httpAddr,
				"POST " + loginPath + " HTTP/1.1\r\nHost: keyward.test\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n", `{"username":"alice","password":"aaaa`},
			{"validator, headers one byte a second (ReadTimeout 10s)", val.httpAddr,
				"GET /authz/api/items HTTP/1.1\r\nHost: " + appHost + "\r\n", "X-Slow: aaaaaaaa\r\n"},
			{"validator, body one byte a second (ReadTimeout 10s)", val.httpAddr,
				"POST /authz/api/items HTTP/1.1\r\nHost: " + appHost + "\r\nContent-Length: 1000\r\n\r\n", "aaaaaaaa"},
		}
		var wg sync.WaitGroup
		results := make([]slowResult, len(cases))
		errs := make([]error, len(cases))
		for i, c := range cases {
			wg.Go(func() { results[i], errs[i] = slowClient(c.addr, c.head, c.trickle, time.Second, 40*time.Second) })
		}
		wg.Wait()
		for i, c := range cases {
			if errs[i] != nil {
				t.Errorf("%s: %v", c.name, errs[i])
				continue
			}
			r := results[i]
			t.Logf("%s: cut off after %s (%d bytes trickled): %s", c.name, r.cutAfter.Round(10*time.Millisecond), r.sent, r.answer)
			if strings.Contains(r.answer, " 200 ") {
				t.Errorf("%s: the slow request was served: %s", c.name, r.answer)
			}
		}
	})

	t.Run("oversized bodies and headers", func(t *testing.T) {
		bigJSON := `{"username":"alice","password":"` + strings.Repeat("a", 17<<10) + `"}`
		chunk := fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(bigJSON), bigJSON)
		cases := []struct {
			name, addr, raw string
			want            int
		}{
			{"issuer: a 17 KiB body (cap 16 KiB)", iss.httpAddr,
				fmt.Sprintf("POST %s HTTP/1.1\r\nHost: keyward.test\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", loginPath, len(bigJSON), bigJSON), 413},
			{"issuer: a 17 KiB chunked body", iss.httpAddr,
				fmt.Sprintf("POST %s HTTP/1.1\r\nHost: keyward.test\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n%s", loginPath, chunk), 413},
			{"issuer: a 64 KiB header (cap 16 KiB)", iss.httpAddr,
				fmt.Sprintf("POST %s HTTP/1.1\r\nHost: keyward.test\r\nX-Big: %s\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}", loginPath, strings.Repeat("a", 64<<10)), 431},
			{"validator: a 2 MiB body (cap 1 MiB)", val.httpAddr,
				fmt.Sprintf("POST /authz/api/items HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", appHost, 2<<20, strings.Repeat("a", 2<<20)), 413},
			{"validator: an 80 KiB header (cap 64 KiB)", val.httpAddr,
				fmt.Sprintf("GET /authz/api/items HTTP/1.1\r\nHost: %s\r\nCookie: %s\r\nConnection: close\r\n\r\n", appHost, strings.Repeat("a", 80<<10)), 431},
		}
		for _, c := range cases {
			got, err := rawExchange(c.addr, c.raw)
			if err != nil {
				t.Errorf("%s: %v", c.name, err)
				continue
			}
			t.Logf("%s: %d", c.name, got)
			if got != c.want {
				t.Errorf("%s: %d, want %d", c.name, got, c.want)
			}
		}
	})
}
