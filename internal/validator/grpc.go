package validator

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/go-logr/logr"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
)

// grpcAuthz is the Envoy ext_authz v3 front end: it translates CheckRequest into a Request
// and the Decision into a CheckResponse, nothing more.
type grpcAuthz struct {
	authv3.UnimplementedAuthorizationServer
	checker *Checker
}

// Check implements envoy.service.auth.v3.Authorization/Check. It never returns an error:
// every failure is a denied CheckResponse, which Envoy enforces whatever its failure_mode_allow.
func (g *grpcAuthz) Check(ctx context.Context, in *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	d := g.checker.Check(ctx, requestFromCheck(in))
	return checkResponse(&d), nil
}

// requestFromCheck reads attributes.request.http: method, host, path, and the Authorization
// header from headers (Envoy joins repeated headers with commas) or header_map (each
// occurrence separate).
func requestFromCheck(in *authv3.CheckRequest) Request {
	h := in.GetAttributes().GetRequest().GetHttp()
	req := Request{Protocol: ProtocolGRPC, Method: h.GetMethod(), Host: h.GetHost(), Path: h.GetPath()}
	if hm := h.GetHeaderMap(); hm != nil && len(hm.GetHeaders()) > 0 {
		for _, hv := range hm.GetHeaders() {
			if strings.EqualFold(hv.GetKey(), "authorization") {
				v := hv.GetValue()
				if v == "" {
					v = string(hv.GetRawValue())
				}
				req.Authorization = append(req.Authorization, v)
			}
		}
	} else if v, ok := h.GetHeaders()["authorization"]; ok {
		req.Authorization = []string{v}
	}
	if req.Host == "" {
		req.Host = h.GetHeaders()[":authority"]
	}
	return req
}

func checkResponse(d *Decision) *authv3.CheckResponse {
	if d.Allowed() {
		set := make(map[string]bool, len(d.Headers))
		ok := &authv3.OkHttpResponse{}
		for _, h := range d.Headers {
			name := strings.ToLower(h.Name)
			set[name] = true
			ok.Headers = append(ok.Headers, &corev3.HeaderValueOption{
				Header:       &corev3.HeaderValue{Key: name, Value: h.Value},
				AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
			})
		}
		// Headers set above overwrite inbound copies; the rest are removed.
		for _, name := range d.Remove {
			if n := strings.ToLower(name); !set[n] {
				ok.HeadersToRemove = append(ok.HeadersToRemove, n)
			}
		}
		return &authv3.CheckResponse{
			Status:       &rpcstatus.Status{Code: int32(codes.OK)},
			HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: ok},
		}
	}
	code, status, www := codes.Unauthenticated, typev3.StatusCode_Unauthorized, wwwInvalidToken[0]
	if d.Status == http.StatusForbidden {
		code, status, www = codes.PermissionDenied, typev3.StatusCode_Forbidden, wwwInsufficientScope[0]
	}
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(code)},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status: &typev3.HttpStatus{Code: status},
			Headers: []*corev3.HeaderValueOption{{
				Header:       &corev3.HeaderValue{Key: "www-authenticate", Value: www},
				AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
			}, {
				Header:       &corev3.HeaderValue{Key: "cache-control", Value: "no-store"},
				AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
			}},
		}},
	}
}

// grpcStreamWorkers is the number of goroutines reused for incoming calls instead of one new
// goroutine per call.
const grpcStreamWorkers = 8

// grpcServer serves Authorization/Check and the standard health service as a manager
// runnable on every replica.
type grpcServer struct {
	addr    string
	checker *Checker
	log     logr.Logger
	ready   func(net.Addr)
	// wrap, if set, wraps the listener (TLS).
	wrap func(net.Listener) net.Listener
}

func (s *grpcServer) NeedLeaderElection() bool { return false }

func (s *grpcServer) Start(ctx context.Context) error {
	srv := grpc.NewServer(
		grpc.MaxRecvMsgSize(1<<20),
		// Large flow-control windows: fewer WINDOW_UPDATE frames (and system calls) per check
		// on the few multiplexed connections Envoy keeps.
		grpc.NumStreamWorkers(grpcStreamWorkers),
		grpc.InitialWindowSize(1<<20),
		grpc.InitialConnWindowSize(4<<20),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10e9, PermitWithoutStream: true}),
	)
	authv3.RegisterAuthorizationServer(srv, &grpcAuthz{checker: s.checker})
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(authv3.Authorization_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(srv, hs)

	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		return fmt.Errorf("cannot listen on %s: %w", s.addr, err)
	}
	if s.wrap != nil {
		ln = s.wrap(ln)
	}
	if s.ready != nil {
		s.ready(ln.Addr())
	}
	s.log.Info("Serving Envoy ext_authz gRPC", "address", ln.Addr().String())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("gRPC authorization server failed: %w", err)
	case <-ctx.Done():
	}
	hs.Shutdown()
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		srv.Stop()
	}
	return nil
}
