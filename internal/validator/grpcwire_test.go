package validator

import (
	"reflect"
	"slices"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// requestFromCheck is the reference translation of a decoded CheckRequest: method, host and
// path of attributes.request.http, the Authorization header from header_map when it has
// entries (each occurrence separate), else from headers (Envoy joins repeated headers with
// commas), and the host from :authority when host is empty. checkRequest must give the same
// Request from the wire form of every message protobuf decodes.
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

// checkResponseMessage is the reference OK CheckResponse of an allow, built with the
// generated messages: encodeOKResponse must encode the same message.
func checkResponseMessage(d *Decision) *authv3.CheckResponse {
	ok := &authv3.OkHttpResponse{}
	for _, h := range d.Headers {
		ok.Headers = append(ok.Headers, &corev3.HeaderValueOption{
			Header:       &corev3.HeaderValue{Key: strings.ToLower(h.Name), Value: h.Value},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
		})
	}
	for _, name := range d.Remove {
		if !slices.ContainsFunc(d.Headers, func(h Header) bool { return h.Name == name }) {
			ok.HeadersToRemove = append(ok.HeadersToRemove, strings.ToLower(name))
		}
	}
	return &authv3.CheckResponse{
		Status:       &rpcstatus.Status{Code: int32(codes.OK)},
		HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: ok},
	}
}

func TestEncodeOKResponse(t *testing.T) {
	long := strings.Repeat("g", 300) // lengths over 127 take two varint bytes
	for _, d := range []Decision{
		{Status: 200},
		{Status: 200, Remove: identityHeaders},
		{Status: 200, Headers: []Header{{HeaderUser, "alice"}, {HeaderEmail, ""}, {HeaderGroups, "dev,ops"}, {"X-User", "alice"}},
			Remove: []string{HeaderUser, HeaderEmail, HeaderGroups, "X-User", "X-Groups"}},
		{Status: 200, Headers: []Header{{HeaderUser, "ålice ✓"}, {HeaderGroups, long}, {"X-" + long, long}}, Remove: identityHeaders},
	} {
		got := wireResponse(t, encodeOKResponse(&d))
		want := checkResponseMessage(&d)
		if !proto.Equal(got, want) {
			t.Errorf("%+v:\n got %v\nwant %v", d, got, want)
		}
		opts := proto.MarshalOptions{Deterministic: true}
		if b, _ := opts.Marshal(want); string(b) != string(encodeOKResponse(&d)) {
			t.Errorf("%+v: the encoding differs from protobuf's", d)
		}
	}
}

// testCodec is the server's codec.
var testCodec = checkCodec{encoding.GetCodecV2(grpcproto.Name)}

// decodeCheck marshals a CheckRequest and decodes it as the server does.
func decodeCheck(t testing.TB, in *authv3.CheckRequest) Request {
	t.Helper()
	b, err := proto.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var r checkRequest
	if err := testCodec.Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, &r); err != nil || r.err != nil {
		t.Fatal(err, r.err)
	}
	return r.request()
}

// wireResponse is a front-end answer as the client decodes it from the server's bytes.
func wireResponse(t testing.TB, resp any) *authv3.CheckResponse {
	t.Helper()
	data, err := testCodec.Marshal(resp)
	if err != nil {
		t.Fatal(err)
	}
	var out authv3.CheckResponse
	if err := proto.Unmarshal(data.Materialize(), &out); err != nil {
		t.Fatal(err)
	}
	return &out
}

// wire builds protobuf wire bytes by hand, for messages the generated code never writes
// (fields repeated, messages sent in parts, wrong wire types).
type wire []byte

func (w wire) bytes(num protowire.Number, v []byte) wire {
	w = protowire.AppendTag(w, num, protowire.BytesType)
	return protowire.AppendBytes(w, v)
}

func (w wire) str(num protowire.Number, v string) wire { return w.bytes(num, []byte(v)) }

func (w wire) varint(num protowire.Number, v uint64) wire {
	w = protowire.AppendTag(w, num, protowire.VarintType)
	return protowire.AppendVarint(w, v)
}

// checkOf wraps the wire form of an HttpRequest into a CheckRequest.
func checkOf(http ...wire) wire {
	var attrs wire
	for _, h := range http {
		attrs = attrs.bytes(fieldAttributesRequest, wire(nil).bytes(fieldRequestHTTP, h))
	}
	return wire(nil).bytes(fieldCheckRequestAttributes, attrs)
}

func entry(k, v string) []byte { return wire(nil).str(fieldMapEntryKey, k).str(fieldMapEntryValue, v) }

// TestCheckRequestWire decodes messages protobuf decodes in less common ways, and compares
// with the reference translation of protobuf's decoding.
func TestCheckRequestWire(t *testing.T) {
	headerValue := func(k, v string) []byte { return wire(nil).str(fieldHeaderValueKey, k).str(fieldHeaderValueValue, v) }
	cases := []struct {
		name string
		msg  wire
	}{
		{"a realistic Envoy request", mustWire(t, envoyCheckRequest("Bearer t"))},
		{"a scalar sent twice: the last wins",
			checkOf(wire(nil).str(fieldHTTPPath, "/public/").str(fieldHTTPPath, "/admin/").str(fieldHTTPHost, "h").str(fieldHTTPMethod, "GET"))},
		{"a map key sent twice: the last wins",
			checkOf(wire(nil).str(fieldHTTPPath, "/").bytes(fieldHTTPHeaders, entry("authorization", "Bearer a")).bytes(fieldHTTPHeaders, entry("authorization", "Bearer b")))},
		{"a map entry without a value, and one with its key twice",
			checkOf(wire(nil).bytes(fieldHTTPHeaders, wire(nil).str(fieldMapEntryKey, "authorization")).
				bytes(fieldHTTPHeaders, wire(nil).str(fieldMapEntryKey, "x").str(fieldMapEntryKey, ":authority").str(fieldMapEntryValue, "h")))},
		{"the request in two parts is merged",
			checkOf(wire(nil).str(fieldHTTPPath, "/a").bytes(fieldHTTPHeaders, entry("authorization", "Bearer a")),
				wire(nil).str(fieldHTTPHost, "h").bytes(fieldHTTPHeaderMap, wire(nil).bytes(fieldHeaderMapHeaders, headerValue("Authorization", "Bearer m"))))},
		{"header_map in two parts is merged",
			checkOf(wire(nil).bytes(fieldHTTPHeaderMap, wire(nil).bytes(fieldHeaderMapHeaders, headerValue("authorization", "Bearer a"))).
				bytes(fieldHTTPHeaderMap, wire(nil).bytes(fieldHeaderMapHeaders, headerValue("AUTHORIZATION", "Bearer b"))))},
		{"an empty header_map falls back to headers",
			checkOf(wire(nil).bytes(fieldHTTPHeaderMap, nil).bytes(fieldHTTPHeaders, entry("authorization", "Bearer a")))},
		{"a header_map without authorization hides headers' one",
			checkOf(wire(nil).bytes(fieldHTTPHeaderMap, wire(nil).bytes(fieldHeaderMapHeaders, headerValue("x", "y"))).bytes(fieldHTTPHeaders, entry("authorization", "Bearer a")))},
		{"raw_value when value is empty",
			checkOf(wire(nil).bytes(fieldHTTPHeaderMap, wire(nil).bytes(fieldHeaderMapHeaders,
				wire(nil).str(fieldHeaderValueKey, "authorization").bytes(fieldHeaderValueRawValue, []byte("Bearer \xff")))))},
		{"fields of the wrong wire type are unknown fields",
			checkOf(wire(nil).varint(fieldHTTPPath, 7).str(fieldHTTPPath, "/p").varint(fieldHTTPHeaders, 1).varint(fieldHTTPHeaderMap, 1))},
		{"unknown fields are skipped",
			wire(nil).varint(99, 1).bytes(2, []byte("x")).bytes(fieldCheckRequestAttributes, wire(nil).bytes(40, []byte("peer")).varint(50, 3).
				bytes(fieldAttributesRequest, wire(nil).bytes(1, []byte{}).bytes(fieldRequestHTTP, wire(nil).str(fieldHTTPMethod, "POST").varint(9, 12))))},
		{"an empty message", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var in authv3.CheckRequest
			if err := proto.Unmarshal(c.msg, &in); err != nil {
				t.Fatalf("protobuf refuses the message: %v", err)
			}
			var r checkRequest
			if err := r.unmarshal(c.msg); err != nil {
				t.Fatal(err)
			}
			if got, want := r.request(), requestFromCheck(&in); !reflect.DeepEqual(got, want) {
				t.Fatalf("request = %+v, want %+v", got, want)
			}
		})
	}
	t.Run("invalid UTF-8 in a string field read is refused, as protobuf does", func(t *testing.T) {
		for _, msg := range []wire{
			checkOf(wire(nil).str(fieldHTTPPath, "/\xff")),
			checkOf(wire(nil).bytes(fieldHTTPHeaders, entry("authorization", "Bearer \xff"))),
			checkOf(wire(nil).bytes(fieldHTTPHeaders, entry("x\xff", "y"))),
			checkOf(wire(nil).bytes(fieldHTTPHeaderMap, wire(nil).bytes(fieldHeaderMapHeaders, wire(nil).str(fieldHeaderValueValue, "\xff")))),
			checkOf(wire(nil).str(7, "q=\xff")), // query
		} {
			var in authv3.CheckRequest
			if err := proto.Unmarshal(msg, &in); err == nil {
				t.Fatalf("protobuf accepts %q", msg)
			}
			var r checkRequest
			if err := r.unmarshal(msg); err == nil {
				t.Errorf("accepted %q", msg)
			}
		}
	})
	t.Run("a truncated message is refused", func(t *testing.T) {
		msg := mustWire(t, envoyCheckRequest("Bearer t"))
		for _, n := range []int{1, 2, 10, len(msg) - 1} {
			var r checkRequest
			if err := r.unmarshal(msg[:n]); err == nil {
				t.Errorf("accepted the first %d bytes", n)
			}
		}
	})
}

// FuzzCheckRequestWire: whatever protobuf decodes, checkRequest decodes to the same
// Request.
func FuzzCheckRequestWire(f *testing.F) {
	f.Add([]byte(mustWire(f, envoyCheckRequest("Bearer t"))))
	f.Add([]byte(checkOf(wire(nil).bytes(fieldHTTPHeaderMap, wire(nil).bytes(fieldHeaderMapHeaders, wire(nil).str(1, "Authorization").str(2, "a"))))))
	f.Add([]byte(checkOf(wire(nil).str(fieldHTTPPath, "/a"), wire(nil).bytes(fieldHTTPHeaders, entry(":authority", "h")))))
	f.Fuzz(func(t *testing.T, b []byte) {
		var in authv3.CheckRequest
		if proto.Unmarshal(b, &in) != nil {
			return // protobuf refuses it; checkRequest may decide on the fields it reads
		}
		var r checkRequest
		if err := r.unmarshal(b); err != nil {
			t.Fatalf("protobuf decodes %q, checkRequest does not: %v", b, err)
		}
		if got, want := r.request(), requestFromCheck(&in); !reflect.DeepEqual(got, want) {
			t.Fatalf("%q: request = %+v, want %+v", b, got, want)
		}
	})
}

func mustWire(t testing.TB, m proto.Message) wire {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// envoyCheckRequest is a CheckRequest as Envoy sends it for a browser-like request: peers,
// time, every request header, context extensions.
func envoyCheckRequest(authorization string) *authv3.CheckRequest {
	peer := func(ip string, port uint32) *authv3.AttributeContext_Peer {
		return &authv3.AttributeContext_Peer{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}}
	}
	headers := map[string]string{
		":authority": testHost, ":method": "GET", ":path": "/api/items?page=2", ":scheme": "https",
		"accept": "application/json", "accept-encoding": "gzip, deflate, br", "accept-language": "en-US,en;q=0.9",
		"user-agent":      "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
		"x-forwarded-for": "203.0.113.7", "x-forwarded-proto": "https", "x-request-id": "5f0c7c1e-8d5b-4c52-9a55-6d8a7c3f1b2e",
		"x-envoy-expected-rq-timeout-ms": "15000", "cookie": "session=abc; theme=dark",
	}
	if authorization != "" {
		headers["authorization"] = authorization
	}
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source: peer("203.0.113.7", 51234), Destination: peer("10.0.0.5", 8443),
		Request: &authv3.AttributeContext_Request{
			Time: timestamppb.Now(),
			Http: &authv3.AttributeContext_HttpRequest{Id: "1234567890", Method: "GET", Headers: headers,
				Path: "/api/items?page=2", Host: testHost, Scheme: "https", Protocol: "HTTP/2"},
		},
		ContextExtensions: map[string]string{"virtual_host": "app"},
	}}
}

// rawCodec sends and receives messages in their wire form, for requests no generated client
// would send.
type rawCodec struct{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(*v.(*[]byte))}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*v.(*[]byte) = data.Materialize()
	return nil
}

func (rawCodec) Name() string { return grpcproto.Name }

// TestGRPCServer talks to the gRPC server: Check with the generated client, a CheckRequest
// that cannot be decoded (denied, not an error), and the health service (protobuf).
func TestGRPCServer(t *testing.T) {
	f := newFixture(t)
	_, addr := startFrontEndsT(t, f)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	ctx := t.Context()

	resp, err := authv3.NewAuthorizationClient(conn).Check(ctx, envoyCheckRequest("Bearer "+f.token(nil)))
	if err != nil || codes.Code(resp.GetStatus().GetCode()) != codes.OK {
		t.Fatalf("a valid token: %v, %v", resp, err)
	}
	if got := resp.GetOkResponse().GetHeaders()[0].GetHeader(); got.GetKey() != "x-auth-request-user" || got.GetValue() != "alice" {
		t.Errorf("first header %v", got)
	}

	for _, msg := range [][]byte{{0x0a, 0x05, 0x22}, checkOf(wire(nil).str(fieldHTTPPath, "/\xff"))} {
		var out []byte
		if err := conn.Invoke(ctx, authv3.Authorization_Check_FullMethodName, &msg, &out, grpc.ForceCodecV2(rawCodec{})); err != nil {
			t.Fatalf("%q: %v", msg, err)
		}
		var resp authv3.CheckResponse
		if err := proto.Unmarshal(out, &resp); err != nil {
			t.Fatal(err)
		}
		if codes.Code(resp.GetStatus().GetCode()) != codes.PermissionDenied || resp.GetDeniedResponse().GetStatus().GetCode() != typev3.StatusCode_Forbidden {
			t.Errorf("%q: %v, want a 403 deny", msg, &resp)
		}
	}

	h, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: authv3.Authorization_ServiceDesc.ServiceName})
	if err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health: %v, %v", h, err)
	}
}
