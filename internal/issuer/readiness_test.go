package issuer_test

import (
	"context"
	"net/http"
	"testing"
)

// A replica that starts while TokenIssuers exist answers for them from its first response
// (regression: its server listened as soon as the caches had synced, before the observer had
// built the snapshots, and answered 404 for an existing TokenIssuer in between; a restarted
// issuer behind a load balancer turned refreshes into 404s).
func TestNewReplicaAnswersForExistingIssuersAtOnce(t *testing.T) {
	f := newFixture(t, defaultUsers(t, testCost), nil)
	for range 3 {
		ctx, cancel := context.WithCancel(t.Context())
		addr, stop, err := startKeyward(ctx, false)
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		r := post(t, "http://"+addr+"/"+f.ns+"/"+f.name+"/api/token/", "application/json", "{}")
		cancel()
		if err := stop(); err != nil {
			t.Error(err)
		}
		if r.status != http.StatusBadRequest {
			t.Fatalf("first answer of a new replica for an existing TokenIssuer: %d %s, want 400", r.status, r.body)
		}
	}
}
