package validator

import (
	"context"
	"net"
	"net/http"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/go-logr/logr"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
)

// grpcAuthz is the Envoy ext_authz v3 front end: it translates CheckRequest into a Request
// and the Decision into a CheckResponse, nothing more. It is registered with its own
// service description (authorizationService) so that a CheckRequest is decoded straight
// from the wire (checkRequest) rather than into the generated message.
type grpcAuthz struct {
	checker *Checker
}

// check answers envoy.service.auth.v3.Authorization/Check. It never returns an error: every
// failure, a request it cannot decode included, is a denied CheckResponse, which Envoy
// enforces whatever its failure_mode_allow.
func (g *grpcAuthz) check(ctx context.Context, in *checkRequest) encodedMessage {
	req := Request{Protocol: ProtocolGRPC, Invalid: ReasonMalformedRequest}
	if in.err == nil {
		req = in.request()
	}
	d := g.checker.Check(ctx, req)
	return checkResponse(&d)
}

// checkHandler is what authorizationService serves.
type checkHandler interface {
	check(ctx context.Context, in *checkRequest) encodedMessage
}

// authorizationService is envoy.service.auth.v3.Authorization with its Check method decoding
// the request with checkCodec.
var authorizationService = grpc.ServiceDesc{
	ServiceName: authv3.Authorization_ServiceDesc.ServiceName,
	HandlerType: (*checkHandler)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Check",
		Handler: func(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
			in := new(checkRequest)
			if err := dec(in); err != nil {
				// Not a decoding error (checkCodec keeps those in in.err): a message too large
				// or that cannot be decompressed, which grpc-go has answered with an error.
				return nil, err
			}
			if interceptor == nil {
				return srv.(checkHandler).check(ctx, in), nil
			}
			info := &grpc.UnaryServerInfo{Server: srv, FullMethod: authv3.Authorization_Check_FullMethodName}
			return interceptor(ctx, in, info, func(ctx context.Context, req any) (any, error) {
				return srv.(checkHandler).check(ctx, req.(*checkRequest)), nil
			})
		},
	}},
	Metadata: authv3.Authorization_ServiceDesc.Metadata,
}

// checkCodec decodes a CheckRequest into a checkRequest and passes every other message
// (the health service's) to the proto codec; encodedMessage is sent as it is. A
// CheckRequest it cannot decode is kept with its error (checkRequest.err) rather than
// refused: grpc-go would answer a refused message with an error status, which an Envoy with
// failure_mode_allow lets through; the handler denies it.
type checkCodec struct{ encoding.CodecV2 }

// encodedMessage is a message in its wire form, sent as it is. It is shared: never modify.
type encodedMessage []byte

func (c checkCodec) Marshal(v any) (mem.BufferSlice, error) {
	if m, ok := v.(encodedMessage); ok {
		return mem.BufferSlice{mem.SliceBuffer(m)}, nil
	}
	return c.CodecV2.Marshal(v)
}

func (c checkCodec) Unmarshal(data mem.BufferSlice, v any) error {
	r, ok := v.(*checkRequest)
	if !ok {
		return c.CodecV2.Unmarshal(data, v)
	}
	if len(data) == 1 {
		r.err = r.unmarshal(data[0].ReadOnlyData())
		return nil
	}
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	r.err = r.unmarshal(buf.ReadOnlyData()) // the strings it keeps are copies
	return nil
}

// checkResponse is the answer to Check: OK with the headers to set and to remove
// (encodeOKResponse), or one of the two denied answers.
func checkResponse(d *Decision) encodedMessage {
	switch {
	case d.Allowed():
		return encodeOKResponse(d)
	case d.Status == http.StatusForbidden:
		return denyForbidden
	default:
		return denyUnauthorized
	}
}

// denyUnauthorized and denyForbidden are the two denied answers, encoded once.
var (
	denyUnauthorized = mustMarshal(deniedResponse(int32(codes.Unauthenticated), typev3.StatusCode_Unauthorized, wwwInvalidToken))
	denyForbidden    = mustMarshal(deniedResponse(int32(codes.PermissionDenied), typev3.StatusCode_Forbidden, wwwInsufficientScope))
)

func mustMarshal(m proto.Message) encodedMessage {
	b, err := proto.Marshal(m)
	if err != nil {
		panic(err)
	}
	return b
}

func deniedResponse(code int32, status typev3.StatusCode, www string) *authv3.CheckResponse {
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: code},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status: &typev3.HttpStatus{Code: status},
			Headers: []*corev3.HeaderValueOption{{
				Header:       &corev3.HeaderValue{Key: "www-authenticate", Value: www},
				AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
			}, {
				Header:       &corev3.HeaderValue{Key: "cache-control", Value: noStore},
				AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
			}},
		}},
	}
}

// grpcStreamWorkers is the number of goroutines reused for incoming calls. A call that finds
// them all busy gets a new goroutine, whose stack then grows during the call (7% of the
// server's CPU with 8 workers and 32 concurrent checks); Envoy multiplexes many concurrent
// checks on one connection, so there are more workers than concurrent checks are expected.
const grpcStreamWorkers = 128

// grpcServer serves Authorization/Check and the standard health service (Check; Watch only
// with grpc-go's transport) as a manager runnable on every replica.
type grpcServer struct {
	addr    string
	checker *Checker
	log     logr.Logger
	ready   func(net.Addr)
	// wrap, if set, wraps the listener (TLS).
	wrap func(net.Listener) net.Listener
	// waitFor, if set, delays listening until it is closed (the validator's state synced).
	waitFor <-chan struct{}
	// transport is GRPCTransportKeyward (the default when empty) or GRPCTransportGRPCGo.
	transport string
	// eventLoops is the number of event loops of GRPCTransportKeyward on plain TCP
	// (DefaultHTTPEventLoops when zero); on TLS it serves a goroutine per connection.
	eventLoops int
}

// The gRPC transports (Options.GRPCTransport): keyward's own unary HTTP/2 server
// (h2grpc.go, ADR 0014), or grpc-go's server, kept as a fallback.
const (
	GRPCTransportKeyward = "keyward"
	GRPCTransportGRPCGo  = "grpc-go"
)

func (s *grpcServer) NeedLeaderElection() bool { return false }

func (s *grpcServer) Start(ctx context.Context) error {
	if !waitSynced(ctx, s.waitFor) {
		return nil
	}
	ln, err := listen(s.addr, s.wrap, s.ready)
	if err != nil {
		return err
	}
	transport := s.transport
	if transport == "" {
		transport = GRPCTransportKeyward
	}
	s.log.Info("Serving Envoy ext_authz gRPC", "address", ln.Addr().String(), "transport", transport)
	if transport == GRPCTransportGRPCGo {
		return s.serveGRPCGo(ctx, ln)
	}
	srv := newH2Server(s.checker, s.log)
	if s.wrap == nil {
		return newH2LoopServer(srv, s.log, s.eventLoops).serve(ctx, ln)
	}
	if err := serveUntilDone(ctx, "gRPC authorization server", func() error { return srv.Serve(ln) }); err != nil {
		return err
	}
	_ = ln.Close()
	shutdownCtx, cancel := context.WithTimeout(context.Background(), grpcShutdownWait)
	defer cancel()
	srv.Shutdown(shutdownCtx)
	return nil
}

// grpcShutdownWait bounds a graceful stop of the gRPC server.
const grpcShutdownWait = 10 * time.Second

// serveGRPCGo serves with grpc-go's server (GRPCTransportGRPCGo) until ctx ends.
func (s *grpcServer) serveGRPCGo(ctx context.Context, ln net.Listener) error {
	srv := grpc.NewServer(
		// CheckRequests are decoded straight from the wire (checkRequest), answers are
		// encoded by hand or once (encodedMessage); the health service keeps protobuf.
		grpc.ForceServerCodecV2(checkCodec{encoding.GetCodecV2(grpcproto.Name)}),
		grpc.MaxRecvMsgSize(httpMaxBodyBytes),
		grpc.NumStreamWorkers(grpcStreamWorkers),
		// Large, static flow-control windows: fewer WINDOW_UPDATE frames (and system calls)
		// per check on the few multiplexed connections Envoy keeps, and no BDP pings.
		grpc.InitialWindowSize(1<<20),
		grpc.InitialConnWindowSize(4<<20),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10e9, PermitWithoutStream: true}),
	)
	srv.RegisterService(&authorizationService, &grpcAuthz{checker: s.checker})
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(authv3.Authorization_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(srv, hs)
	if err := serveUntilDone(ctx, "gRPC authorization server", func() error { return srv.Serve(ln) }); err != nil {
		return err
	}
	hs.Shutdown()
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(grpcShutdownWait):
		srv.Stop()
	}
	return nil
}
