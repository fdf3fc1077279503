package validator

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestProfileHTTPServer serves the fixture on loopback and loads it with wrk for a few
// seconds, so that `go test -run TestProfileHTTPServer -cpuprofile` profiles the server alone.
// It runs only with KEYWARD_PROFILE_WRK=1.
func TestProfileHTTPServer(t *testing.T) {
	if os.Getenv("KEYWARD_PROFILE_WRK") == "" {
		t.Skip("set KEYWARD_PROFILE_WRK=1 to profile the HTTP front end under wrk")
	}
	f := newFixture(t)
	tok := f.token(nil)
	httpAddr, _ := startFrontEndsT(t, f)
	out, err := exec.Command("wrk", "-t1", "-c8", "-d5s", "-H", "Host: "+testHost, "-H", "Authorization: Bearer "+tok,
		"http://"+httpAddr+"/authz/api/items").CombinedOutput()
	if err != nil {
		t.Fatal(err, string(out))
	}
	t.Log(strings.TrimSpace(string(out)))
}
