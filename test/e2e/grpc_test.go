package e2e

import (
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/keyward/keyward/internal/testsupport"
)

func grpcClient(t *testing.T, v *validatorProc) (authv3.AuthorizationClient, healthpb.HealthClient) {
	t.Helper()
	conn, err := grpc.NewClient(v.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return authv3.NewAuthorizationClient(conn), healthpb.NewHealthClient(conn)
}

func checkRequest(method, host, path, tok string, extra map[string]string) *authv3.CheckRequest {
	return testsupport.CheckRequest(method, host, path, tok, extra)
}

// TestGRPC asks both validators the shared decision cases through the generated Envoy v3
// client.
func TestGRPC(t *testing.T) {
	e := demoEnv(t)
	wantCode := map[int]codes.Code{200: codes.OK, 401: codes.Unauthenticated, 403: codes.PermissionDenied}
	wantHTTP := map[int]typev3.StatusCode{401: typev3.StatusCode_Unauthorized, 403: typev3.StatusCode_Forbidden}
	for _, v := range validators {
		authz, health := grpcClient(t, v)
		t.Run(v.name+": the health service is serving", func(t *testing.T) {
			for _, svc := range []string{"", "envoy.service.auth.v3.Authorization"} {
				resp, err := health.Check(t.Context(), &healthpb.HealthCheckRequest{Service: svc})
				if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
					t.Fatalf("health of %q: %v, %v", svc, resp.GetStatus(), err)
				}
			}
		})
		for _, c := range decisionCases() {
			t.Run(v.name+": "+c.name, func(t *testing.T) {
				tok := ""
				if c.token != nil {
					tok = c.token(t, e)
				}
				resp, err := authz.Check(t.Context(), checkRequest(c.method, e.host, c.path, tok, nil))
				if err != nil {
					t.Fatal(err)
				}
				if got := codes.Code(resp.GetStatus().GetCode()); got != wantCode[c.want] {
					t.Fatalf("code = %v, want %v", got, wantCode[c.want])
				}
				if c.want != 200 && resp.GetDeniedResponse().GetStatus().GetCode() != wantHTTP[c.want] {
					t.Errorf("denied HTTP status = %v", resp.GetDeniedResponse().GetStatus().GetCode())
				}
			})
		}
		t.Run(v.name+": an allow sets identity headers and removes forged ones", func(t *testing.T) {
			resp, err := authz.Check(t.Context(), checkRequest("GET", e.host, "/api", e.token(t, nil), map[string]string{"x-auth-request-user": "mallory"}))
			if err != nil {
				t.Fatal(err)
			}
			ok := resp.GetOkResponse()
			got := map[string]string{}
			for _, h := range ok.GetHeaders() {
				if h.GetAppendAction() != corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD {
					t.Errorf("%s is not overwritten", h.GetHeader().GetKey())
				}
				got[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
			}
			for k, want := range map[string]string{"x-auth-request-user": "alice", "x-auth-request-groups": "dev,ops", "x-user": "alice", "x-groups": "dev,ops", "x-auth-request-email": "alice@example.test"} {
				if got[k] != want {
					t.Errorf("%s = %q, want %q", k, got[k], want)
				}
			}
		})
		t.Run(v.name+": two authorization headers in header_map are denied", func(t *testing.T) {
			req := checkRequest("GET", e.host, "/api", "", nil)
			req.Attributes.Request.Http.HeaderMap = &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
				{Key: "authorization", Value: "Bearer " + e.token(t, nil)}, {Key: "authorization", Value: "Bearer " + e.token(t, nil)}}}
			resp, err := authz.Check(t.Context(), req)
			if err != nil {
				t.Fatal(err)
			}
			if codes.Code(resp.GetStatus().GetCode()) != codes.Unauthenticated {
				t.Fatalf("code = %v", resp.GetStatus().GetCode())
			}
		})
	}
}
