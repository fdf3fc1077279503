package main

import (
	"os"
	"path/filepath"
	"testing"
)

// A kubeconfig given with --kubeconfig gets no client-side rate limit, like the config
// controller-runtime loads otherwise: client-go's default (5 requests/s) capped an issuer
// at 5 logins and refreshes a second.
func TestRestConfigHasNoClientSideRateLimit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kubeconfig")
	kc := `apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`
	if err := os.WriteFile(path, []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := restConfig(&options{kubeconfig: path})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.QPS >= 0 || cfg.RateLimiter != nil {
		t.Errorf("QPS %v, rate limiter %v: want no client-side rate limit (QPS < 0)", cfg.QPS, cfg.RateLimiter)
	}
}
