// Command loadgen is a bounded load generator for keyward's issuer: it sends logins, refreshes
// or client_credentials grants to one TokenIssuer on a local address for a fixed time with a
// fixed number of workers, and prints throughput and latency percentiles.
//
//	go run ./hack/loadgen -base http://127.0.0.1:8080/bench/main/ -mode refresh -c 16 -d 20s
//
// It refuses targets outside the loopback range: it is for measuring a process on this machine.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
)

func main() {
	base := flag.String("base", "http://127.0.0.1:8080/bench/main/", "Base URL of the TokenIssuer (with the trailing slash).")
	mode := flag.String("mode", "client_credentials", "login, refresh or client_credentials.")
	workers := flag.Int("c", 8, "Concurrent workers.")
	duration := flag.Duration("d", 10*time.Second, "How long to send requests (at most 5m).")
	maxRequests := flag.Int("n", 1_000_000, "Stop after this many requests in total.")
	user := flag.String("user", "bench", "Username for login and refresh.")
	password := flag.String("password", "bench-password", "Password for login and refresh.")
	clientID := flag.String("client-id", "bench", "Client ID for client_credentials.")
	clientSecret := flag.String("client-secret", "", "Client secret for client_credentials.")
	flag.Parse()

	u, err := url.Parse(*base)
	if err != nil || !loopback(u.Hostname()) {
		fmt.Fprintln(os.Stderr, "loadgen: -base must be an http URL on the loopback range")
		os.Exit(2)
	}
	if *duration > 5*time.Minute {
		*duration = 5 * time.Minute
	}
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: *workers, MaxConnsPerHost: *workers}}
	login := func() (string, int, error) {
		body, _ := json.Marshal(map[string]string{"username": *user, "password": *password})
		return call(client, *base+"api/token/", "application/json", body, "", "", "refresh")
	}

	var mu sync.Mutex
	var latencies []time.Duration
	statuses := map[int]int{}
	var sent int
	deadline := time.Now().Add(*duration)
	var wg sync.WaitGroup
	start := time.Now()
	for range *workers {
		wg.Go(func() {
			var refresh string
			if *mode == "refresh" {
				var status int
				if refresh, status, err = login(); err != nil || status != 200 {
					fmt.Fprintf(os.Stderr, "loadgen: login for refresh failed: %d %v\n", status, err)
					return
				}
			}
			for time.Now().Before(deadline) {
				mu.Lock()
				if sent >= *maxRequests {
					mu.Unlock()
					return
				}
				sent++
				mu.Unlock()
				t0 := time.Now()
				var status int
				var err error
				switch *mode {
				case "login":
					_, status, err = login()
				case "refresh":
					body, _ := json.Marshal(map[string]string{"refresh": refresh})
					var next string
					next, status, err = call(client, *base+"api/token/refresh/", "application/json", body, "", "", "refresh")
					if status == 200 {
						refresh = next
					}
				case "client_credentials":
					_, status, err = call(client, *base+"oauth2/token", "application/x-www-form-urlencoded",
						[]byte("grant_type=client_credentials"), *clientID, *clientSecret, "access_token")
				default:
					fmt.Fprintln(os.Stderr, "loadgen: unknown mode", *mode)
					os.Exit(2)
				}
				d := time.Since(t0)
				if err != nil {
					status = -1
				}
				mu.Lock()
				statuses[status]++
				if status == 200 {
					latencies = append(latencies, d)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	slices.Sort(latencies)
	pct := func(p float64) time.Duration {
		if len(latencies) == 0 {
			return 0
		}
		return latencies[min(len(latencies)-1, int(float64(len(latencies))*p))]
	}
	fmt.Printf("mode=%s workers=%d elapsed=%.1fs ok=%d statuses=%v rate=%.1f/s p50=%v p99=%v\n",
		*mode, *workers, elapsed.Seconds(), len(latencies), statuses, float64(len(latencies))/elapsed.Seconds(),
		pct(0.50).Round(10*time.Microsecond), pct(0.99).Round(10*time.Microsecond))
}

// call posts a body and returns the named string field of a 200 answer.
func call(c *http.Client, u, contentType string, body []byte, user, pass, field string) (string, int, error) {
	req, err := http.NewRequest(http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return "", 0, err
	}
	req.Header.Set("Content-Type", contentType)
	if user != "" {
		req.SetBasicAuth(url.QueryEscape(user), url.QueryEscape(pass))
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", 0, err
	}
	defer func() { _ = resp.Body.Close() }()
	data, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		return "", resp.StatusCode, err
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		return "", resp.StatusCode, err
	}
	s, _ := m[field].(string)
	return s, resp.StatusCode, nil
}

func loopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
