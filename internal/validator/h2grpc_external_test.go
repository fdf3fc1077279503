package validator

import (
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/go-logr/logr"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/keyward/keyward/internal/token"
)

// heldOIDCServer is an OIDC issuer whose JWKS answers can be held: while held, a request
// for the keys is announced on entered and waits for release.
type heldOIDCServer struct {
	*httptest.Server
	mu      sync.Mutex
	jwks    []byte
	held    bool
	entered chan struct{}
	release chan struct{}
	once    sync.Once
}

// unhold releases the held requests (once).
func (s *heldOIDCServer) unhold() { s.once.Do(func() { close(s.release) }) }

func newHeldOIDCServer(t *testing.T) *heldOIDCServer {
	s := &heldOIDCServer{entered: make(chan struct{}, 1), release: make(chan struct{})}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/.well-known/openid-configuration":
			_ = json.NewEncoder(w).Encode(map[string]string{"issuer": s.URL, "jwks_uri": s.URL + "/keys"})
		case "/keys":
			s.mu.Lock()
			held, jwks := s.held, s.jwks
			s.mu.Unlock()
			if held {
				s.entered <- struct{}{}
				<-s.release
				s.mu.Lock()
				jwks = s.jwks
				s.mu.Unlock()
			}
			_, _ = w.Write(jwks)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(s.Close)
	t.Cleanup(s.unhold) // runs first: Close waits for the held requests
	return s
}

// TestGRPCCheckWaitingForExternalKeysDoesNotHoldTheConnection: the gRPC transport decides
// on the connection's goroutine, except a check that waits for an external issuer's keys
// (an unknown kid triggering a refetch), which must not stall the other checks Envoy
// multiplexes on the same connection. The waiting check is answered once the keys arrive.
func TestGRPCCheckWaitingForExternalKeysDoesNotHoldTheConnection(t *testing.T) {
	t.Run("event loop", func(t *testing.T) { testGRPCWaitingCheck(t, true) })
	t.Run("goroutine per connection", func(t *testing.T) { testGRPCWaitingCheck(t, false) })
}

func testGRPCWaitingCheck(t *testing.T, loop bool) {
	srv := newHeldOIDCServer(t)
	k1, _ := externalKey(t)
	srv.jwks = (&keysSet{k1}).jwks(t)
	f := newFixture(t)
	f.v.store.setPolicy(externalPolicy(srv.URL))
	waitFetched(t, f)

	var addr string
	if loop {
		addr = startH2Loop(t, f)
	} else {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		h2 := newH2Server(f.v.Checker, logr.Discard())
		go func() { _ = h2.Serve(ln) }()
		t.Cleanup(func() { _ = ln.Close(); h2.Shutdown(t.Context()) })
		addr = ln.Addr().String()
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	client := authv3.NewAuthorizationClient(conn)

	// A token of a key the issuer has just published: its kid is unknown to the validator,
	// and the last fetch is older than the minimum interval, so the check waits for a fetch.
	k2, s2 := externalKey(t)
	srv.mu.Lock()
	srv.held, srv.jwks = true, (&keysSet{k1, k2}).jwks(t)
	srv.mu.Unlock()
	f.clock.SetTime(f.clock.Now().Add(time.Minute))
	in := envoyCheckRequest("Bearer " + f.tokenWith(s2, token.TypeAccess, func(c *token.Claims) { c.Issuer = srv.URL }))
	in.Attributes.Request.Http.Host = "ext.example.test"
	waiting := make(chan *authv3.CheckResponse, 1)
	go func() {
		resp, err := client.Check(t.Context(), in)
		if err != nil {
			t.Error(err)
		}
		waiting <- resp
	}()
	select {
	case <-srv.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the unknown kid did not trigger a JWKS fetch")
	}

	// While that check waits, others on the same connection are answered.
	for range 3 {
		resp, err := client.Check(t.Context(), envoyCheckRequest("Bearer "+f.token(nil)))
		if err != nil || codes.Code(resp.GetStatus().GetCode()) != codes.OK {
			t.Fatalf("a cached token's check while another waits: %v, %v", resp, err)
		}
	}
	select {
	case resp := <-waiting:
		t.Fatalf("the check waiting for the fetch was answered before the fetch ended: %v", resp)
	default:
	}

	srv.unhold()
	select {
	case resp := <-waiting:
		if codes.Code(resp.GetStatus().GetCode()) != codes.OK {
			t.Errorf("the token of the new key after the fetch: %v, want allowed", resp)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting check was never answered")
	}
}
