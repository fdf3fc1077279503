package validator

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/go-logr/logr"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/keyward/keyward/internal/testsupport"
)

// Tests of the gRPC front end's HTTP/2 transport (h2grpc.go), in three layers:
//
//   - interop: grpc-go's client against both transports (keyward's and grpc-go's server), as
//     Envoy's ext_authz client uses them, in clear text and over TLS;
//   - protocol: a hand-driven HTTP/2 client (h2Client) sends what real clients rarely do
//     (split frames, zero windows, resets, errors) and reads every frame of the answer;
//   - in memory: FuzzH2Conn runs a server connection on a byte string (runH2Conn); the
//     connection must not panic, must end at the end of its input, and must write
//     well-formed HTTP/2.
//
// Waits are bounded (h2TestWait) only so that a missing answer fails instead of hanging;
// nothing asserts how long anything takes.

const h2TestWait = 10 * time.Second

// Servers and the answers expected from them.

var grpcTransports = []string{GRPCTransportKeyward, GRPCTransportGRPCGo}

// startGRPCTransport serves the fixture's checker through grpcServer with the transport
// (GRPCTransportKeyward or GRPCTransportGRPCGo), the listener wrapped by wrap if not nil.
func startGRPCTransport(t testing.TB, f *fixture, transport string, wrap func(net.Listener) net.Listener) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	addrs := make(chan string, 1)
	gs := &grpcServer{addr: "127.0.0.1:0", checker: f.v.Checker, log: logr.Discard(), wrap: wrap,
		ready: func(a net.Addr) { addrs <- a.String() }, transport: transport}
	errc := make(chan error, 1)
	go func() { errc <- gs.Start(ctx) }()
	select {
	case a := <-addrs:
		return a
	case err := <-errc:
		t.Fatalf("the %s transport did not start: %v", transport, err)
	case <-time.After(h2TestWait):
		t.Fatalf("the %s transport did not start", transport)
	}
	return ""
}

// startH2 runs an h2Server on a loopback listener. The cleanup closes the listener and
// shuts the server down; Serve must then return nil.
func startH2(t testing.TB, f *fixture) (*h2Server, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := newH2Server(f.v.Checker, logr.Discard())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		_ = ln.Close()
		ctx, cancel := context.WithTimeout(context.Background(), h2TestWait)
		defer cancel()
		srv.Shutdown(ctx)
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(h2TestWait):
			t.Error("Serve did not return after the listener was closed")
		}
	})
	return srv, ln.Addr().String()
}

// startH2Loop serves the fixture's checker with the keyward transport on event loops (as
// grpcServer does on plain TCP), on a loopback listener, until the test ends.
func startH2Loop(t testing.TB, f *fixture) string {
	addr, _ := startH2LoopStop(t, f)
	return addr
}

// startH2LoopStop is startH2Loop with a graceful stop, which returns once the server has
// stopped or wait ends.
func startH2LoopStop(t testing.TB, f *fixture) (addr string, stop func(wait context.Context)) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	srv := newH2LoopServer(newH2Server(f.v.Checker, logr.Discard()), logr.Discard(), 1)
	go func() { served <- srv.serve(ctx, ln) }()
	var once sync.Once
	stop = func(wait context.Context) {
		once.Do(func() {
			cancel()
			select {
			case err := <-served:
				if err != nil {
					t.Errorf("serve: %v", err)
				}
			case <-wait.Done():
				t.Error("the event-loop server did not stop")
			}
		})
	}
	t.Cleanup(func() {
		wait, cancelWait := context.WithTimeout(context.Background(), grpcShutdownWait+h2TestWait)
		defer cancelWait()
		stop(wait)
	})
	return ln.Addr().String(), stop
}

func dialGRPC(t testing.TB, addr string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	if len(opts) == 0 {
		opts = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	}
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// callCtx bounds one call.
func callCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), h2TestWait)
	t.Cleanup(cancel)
	return ctx
}

// checkAllowed reports why resp is not the fixture's allow of alice ("" if it is).
func checkAllowed(resp *authv3.CheckResponse) string {
	if c := codes.Code(resp.GetStatus().GetCode()); c != codes.OK || resp.GetOkResponse() == nil {
		return fmt.Sprintf("not an OK response: %v", resp)
	}
	for _, h := range resp.GetOkResponse().GetHeaders() {
		if h.GetHeader().GetKey() == "x-auth-request-user" {
			if v := h.GetHeader().GetValue(); v != "alice" {
				return fmt.Sprintf("x-auth-request-user %q, want alice", v)
			}
			return ""
		}
	}
	return fmt.Sprintf("no x-auth-request-user header: %v", resp)
}

// checkDenied reports why resp is not a deny with the gRPC code and HTTP status ("" if it is).
func checkDenied(resp *authv3.CheckResponse, code codes.Code, httpStatus typev3.StatusCode) string {
	if c := codes.Code(resp.GetStatus().GetCode()); c != code || resp.GetDeniedResponse().GetStatus().GetCode() != httpStatus {
		return fmt.Sprintf("got %v, want a deny %v/%d", resp, code, httpStatus)
	}
	return ""
}

// largeCheck is a valid CheckRequest of about 1 MB (a request body Envoy forwards with
// with_request_body), under the 1 MiB limit.
func largeCheck(t testing.TB, tok string) *authv3.CheckRequest {
	req := envoyCheckRequest("Bearer " + tok)
	req.Attributes.Request.Http.Body = strings.Repeat("b", 1000_000)
	if n := proto.Size(req); n > h2MaxMessage {
		t.Fatalf("the request is %d bytes, above the limit", n)
	}
	return req
}

// Interop with grpc-go's client, through both transports.

// TestH2GRPCInterop: what Envoy's ext_authz client sees, the same through both transports:
// allow and deny are CheckResponses, a CheckRequest that cannot be decoded is a deny (never
// an RPC error, which failure_mode_allow would let through), the health service answers for
// the server and the Authorization service only, and another method is Unimplemented.
func TestH2GRPCInterop(t *testing.T) {
	f := newFixture(t)
	tok := f.token(nil)
	for _, transport := range grpcTransports {
		t.Run(transport, func(t *testing.T) {
			conn := dialGRPC(t, startGRPCTransport(t, f, transport, nil))
			authz := authv3.NewAuthorizationClient(conn)

			resp, err := authz.Check(callCtx(t), envoyCheckRequest("Bearer "+tok))
			if err != nil {
				t.Fatalf("a valid token: %v", err)
			}
			if why := checkAllowed(resp); why != "" {
				t.Errorf("a valid token: %s", why)
			}

			resp, err = authz.Check(callCtx(t), envoyCheckRequest(""))
			if err != nil {
				t.Fatalf("no token: %v", err)
			}
			if why := checkDenied(resp, codes.Unauthenticated, typev3.StatusCode_Unauthorized); why != "" {
				t.Errorf("no token: %s", why)
			}

			for _, msg := range [][]byte{{0x0a, 0x05, 0x22}, {0xff}, checkOf(wire(nil).str(fieldHTTPPath, "/\xff"))} {
				var out []byte
				if err := conn.Invoke(callCtx(t), authv3.Authorization_Check_FullMethodName, &msg, &out, grpc.ForceCodecV2(rawCodec{})); err != nil {
					t.Fatalf("undecodable %q: an RPC error: %v", msg, err)
				}
				var resp authv3.CheckResponse
				if err := proto.Unmarshal(out, &resp); err != nil {
					t.Fatal(err)
				}
				if why := checkDenied(&resp, codes.PermissionDenied, typev3.StatusCode_Forbidden); why != "" {
					t.Errorf("undecodable %q: %s", msg, why)
				}
			}

			health := healthpb.NewHealthClient(conn)
			for _, service := range []string{"", authv3.Authorization_ServiceDesc.ServiceName} {
				h, err := health.Check(callCtx(t), &healthpb.HealthCheckRequest{Service: service})
				if err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
					t.Errorf("health of %q: %v, %v", service, h, err)
				}
			}
			if _, err := health.Check(callCtx(t), &healthpb.HealthCheckRequest{Service: "other"}); status.Code(err) != codes.NotFound {
				t.Errorf("health of another service: %v, want NotFound", err)
			}

			in, out := []byte(mustWire(t, envoyCheckRequest("Bearer "+tok))), []byte(nil)
			err = conn.Invoke(callCtx(t), "/envoy.service.auth.v3.Authorization/Nope", &in, &out, grpc.ForceCodecV2(rawCodec{}))
			if status.Code(err) != codes.Unimplemented {
				t.Errorf("an unknown method: %v, want Unimplemented", err)
			}
		})
	}
}

// TestH2GRPCConcurrent: Envoy multiplexes many checks on few connections. 200 goroutines
// make 20 calls each on one ClientConn, allows, denies and health checks mixed, and each
// gets its own answer (streams are not crossed, windows are returned, none is lost).
func TestH2GRPCConcurrent(t *testing.T) {
	f := newFixture(t)
	tok := f.token(nil)
	allow, deny := envoyCheckRequest("Bearer "+tok), envoyCheckRequest("")
	for _, transport := range grpcTransports {
		t.Run(transport, func(t *testing.T) {
			conn := dialGRPC(t, startGRPCTransport(t, f, transport, nil))
			authz, health := authv3.NewAuthorizationClient(conn), healthpb.NewHealthClient(conn)
			ctx, cancel := context.WithTimeout(context.Background(), 4*h2TestWait)
			defer cancel()
			concurrently(t, 200, func(g int) string {
				for i := range 20 {
					var why string
					switch (g + i) % 3 {
					case 0:
						resp, err := authz.Check(ctx, allow)
						if why = fmt.Sprint(err); err == nil {
							why = checkAllowed(resp)
						}
					case 1:
						resp, err := authz.Check(ctx, deny)
						if why = fmt.Sprint(err); err == nil {
							why = checkDenied(resp, codes.Unauthenticated, typev3.StatusCode_Unauthorized)
						}
					default:
						h, err := health.Check(ctx, &healthpb.HealthCheckRequest{})
						if why = fmt.Sprint(err); err == nil && h.GetStatus() == healthpb.HealthCheckResponse_SERVING {
							why = ""
						}
					}
					if why != "" {
						return fmt.Sprintf("goroutine %d call %d: %s", g, i, why)
					}
				}
				return ""
			})
		})
	}
}

// TestH2GRPCLargeConcurrent: CheckRequests up to the 1 MiB limit are served (Envoy sends
// the request body with with_request_body), also 8 concurrent calls on one connection.
func TestH2GRPCLargeConcurrent(t *testing.T) {
	f := newFixture(t)
	tok := f.token(nil)
	req := largeCheck(t, tok)
	for _, transport := range grpcTransports {
		t.Run(transport, func(t *testing.T) {
			conn := dialGRPC(t, startGRPCTransport(t, f, transport, nil))
			authz := authv3.NewAuthorizationClient(conn)
			ctx, cancel := context.WithTimeout(context.Background(), 2*h2TestWait)
			defer cancel()
			concurrently(t, 8, func(i int) string {
				resp, err := authz.Check(ctx, req)
				if err != nil {
					return fmt.Sprintf("call %d: %v", i, err)
				}
				if why := checkAllowed(resp); why != "" {
					return fmt.Sprintf("call %d: %s", i, why)
				}
				return ""
			})
		})
	}
}

// TestH2GRPCLargeOnOneConnection: a connection lives long (Envoy keeps it for days) and
// carries any number of large requests one after another: what one request held is
// released when it is answered. 24 requests of 1 MB each, more than a connection buffers
// at once, on one connection.
func TestH2GRPCLargeOnOneConnection(t *testing.T) {
	f := newFixture(t)
	req := largeCheck(t, f.token(nil))
	for _, transport := range grpcTransports {
		t.Run(transport, func(t *testing.T) {
			conn := dialGRPC(t, startGRPCTransport(t, f, transport, nil))
			authz := authv3.NewAuthorizationClient(conn)
			for i := range 24 {
				resp, err := authz.Check(callCtx(t), req)
				if err != nil {
					t.Fatalf("call %d: %v", i, err)
				}
				if why := checkAllowed(resp); why != "" {
					t.Fatalf("call %d: %s", i, why)
				}
			}
		})
	}
}

// TestH2GRPCLargeInterleaved: several large requests in progress at once on one
// connection, none ended while all are being sent (grpc-go and Envoy send the DATA of
// concurrent streams in turns), are all answered: the connection window is not held by
// unfinished requests, or the client could never finish any of them.
func TestH2GRPCLargeInterleaved(t *testing.T) {
	f := newFixture(t)
	msg := []byte(mustWire(t, largeCheck(t, f.token(nil))))
	const n = 6 // 6 MB: more than the connection window
	for _, transport := range grpcTransports {
		t.Run(transport, func(t *testing.T) {
			conn := dialGRPC(t, startGRPCTransport(t, f, transport, nil))
			ctx, cancel := context.WithTimeout(context.Background(), 2*h2TestWait)
			defer cancel()
			// A unary method called as a client stream: each message is sent, and END_STREAM
			// only once every message is on its way.
			desc := &grpc.StreamDesc{ClientStreams: true}
			streams := make([]grpc.ClientStream, n)
			for i := range streams {
				s, err := conn.NewStream(ctx, desc, authv3.Authorization_Check_FullMethodName, grpc.ForceCodecV2(rawCodec{}))
				if err != nil {
					t.Fatal(err)
				}
				if err := s.SendMsg(&msg); err != nil {
					t.Fatalf("stream %d: %v", i, err)
				}
				streams[i] = s
			}
			concurrently(t, n, func(i int) string {
				s := streams[i]
				var out []byte
				if err := s.CloseSend(); err != nil {
					return fmt.Sprintf("stream %d: %v", i, err)
				}
				if err := s.RecvMsg(&out); err != nil {
					return fmt.Sprintf("stream %d: %v", i, err)
				}
				var resp authv3.CheckResponse
				if err := proto.Unmarshal(out, &resp); err != nil {
					return fmt.Sprintf("stream %d: %v", i, err)
				}
				if why := checkAllowed(&resp); why != "" {
					return fmt.Sprintf("stream %d: %s", i, why)
				}
				return ""
			})
		})
	}
}

// concurrently runs call(0) ... call(n-1) at once and reports what each returns that is
// not empty as an error.
func concurrently(t *testing.T, n int, call func(i int) string) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan string, n)
	for i := range n {
		wg.Go(func() {
			if why := call(i); why != "" {
				errs <- why
			}
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

// TestH2GRPCTLS: the transport behind a TLS listener (ALPN h2), as the validator serves it
// with a certificate, answers grpc-go's TLS client.
func TestH2GRPCTLS(t *testing.T) {
	f := newFixture(t)
	ca := testsupport.NewCA(t, "keyward-test-ca")
	certPEM, keyPEM := ca.Issue(t, "keyward-validator")
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	serverTLS := &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS12}
	for _, transport := range grpcTransports {
		t.Run(transport, func(t *testing.T) {
			addr := startGRPCTransport(t, f, transport, func(ln net.Listener) net.Listener { return tls.NewListener(ln, serverTLS) })
			creds := credentials.NewTLS(&tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS12})
			conn := dialGRPC(t, addr, grpc.WithTransportCredentials(creds))
			resp, err := authv3.NewAuthorizationClient(conn).Check(callCtx(t), envoyCheckRequest("Bearer "+f.token(nil)))
			if err != nil {
				t.Fatal(err)
			}
			if why := checkAllowed(resp); why != "" {
				t.Error(why)
			}
			h, err := healthpb.NewHealthClient(conn).Check(callCtx(t), &healthpb.HealthCheckRequest{})
			if err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				t.Errorf("health: %v, %v", h, err)
			}
		})
	}
}

// The hand-driven HTTP/2 client: frames read (h2Frame), frames written (h2Writer), a
// connection (h2Client) and a stream's answer (h2Answer).

// h2Frame is a frame the server sent, copied out of the Framer's buffers.
type h2Frame struct {
	Type       http2.FrameType
	Flags      http2.Flags
	Stream     uint32
	Data       []byte              // DATA payload (padding removed), PING data, GOAWAY debug data
	Fields     []hpack.HeaderField // HEADERS with its CONTINUATION, decoded
	Code       http2.ErrCode       // RST_STREAM, GOAWAY
	LastStream uint32              // GOAWAY
	Settings   []http2.Setting     // SETTINGS
	Increment  uint32              // WINDOW_UPDATE
}

func copyFrame(f http2.Frame) h2Frame {
	h := f.Header()
	out := h2Frame{Type: h.Type, Flags: h.Flags, Stream: h.StreamID}
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		out.Fields = slices.Clone(f.Fields)
	case *http2.DataFrame:
		out.Data = bytes.Clone(f.Data())
	case *http2.PingFrame:
		out.Data = bytes.Clone(f.Data[:])
	case *http2.RSTStreamFrame:
		out.Code = f.ErrCode
	case *http2.GoAwayFrame:
		out.Code, out.LastStream, out.Data = f.ErrCode, f.LastStreamID, bytes.Clone(f.DebugData())
	case *http2.SettingsFrame:
		_ = f.ForeachSetting(func(s http2.Setting) error { out.Settings = append(out.Settings, s); return nil })
	case *http2.WindowUpdateFrame:
		out.Increment = f.Increment
	}
	return out
}

func (f h2Frame) endStream() bool {
	return (f.Type == http2.FrameHeaders || f.Type == http2.FrameData) && f.Flags.Has(http2.FlagHeadersEndStream)
}

func (f h2Frame) header(name string) string {
	for _, hf := range f.Fields {
		if hf.Name == name {
			return hf.Value
		}
	}
	return ""
}

func (f h2Frame) String() string {
	s := fmt.Sprintf("%v stream=%d flags=%v", f.Type, f.Stream, f.Flags)
	switch f.Type {
	case http2.FrameHeaders:
		s += fmt.Sprintf(" %v", f.Fields)
	case http2.FrameData, http2.FramePing:
		s += fmt.Sprintf(" %d bytes", len(f.Data))
	case http2.FrameRSTStream:
		s += " " + f.Code.String()
	case http2.FrameGoAway:
		s += fmt.Sprintf(" %v last=%d", f.Code, f.LastStream)
	case http2.FrameWindowUpdate:
		s += fmt.Sprintf(" +%d", f.Increment)
	}
	return s
}

func isType(typ http2.FrameType) func(h2Frame) bool {
	return func(f h2Frame) bool { return f.Type == typ }
}

// onStream are the frames of a stream among fs.
func onStream(fs []h2Frame, id uint32) []h2Frame {
	return slices.DeleteFunc(slices.Clone(fs), func(f h2Frame) bool { return f.Stream != id })
}

// dataBytes is the DATA payload among fs.
func dataBytes(fs []h2Frame) int {
	n := 0
	for _, f := range fs {
		if f.Type == http2.FrameData {
			n += len(f.Data)
		}
	}
	return n
}

// h2Writer encodes client frames into out (a connection's pending bytes, or a fuzz seed).
// Its HPACK encoder keeps the connection's dynamic table, so the server's decoder must too.
type h2Writer struct {
	out bytes.Buffer
	fr  *http2.Framer
	enc *hpack.Encoder
	eb  bytes.Buffer
}

func newH2Writer() *h2Writer {
	w := &h2Writer{}
	w.fr = http2.NewFramer(&w.out, nil)
	w.fr.AllowIllegalWrites = true // even stream IDs, stream 0, ... on purpose
	w.enc = hpack.NewEncoder(&w.eb)
	return w
}

// block is the HPACK encoding of name, value pairs.
func (w *h2Writer) block(kv ...string) []byte {
	w.eb.Reset()
	for i := 0; i < len(kv); i += 2 {
		_ = w.enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	return bytes.Clone(w.eb.Bytes())
}

// headers writes a header block as HEADERS then CONTINUATION frames of at most frag bytes
// (0: one frame).
func (w *h2Writer) headers(id uint32, end bool, block []byte, frag int) {
	if frag <= 0 || frag > len(block) {
		frag = max(len(block), 1)
	}
	first := block[:min(frag, len(block))]
	rest := block[len(first):]
	_ = w.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndStream: end, EndHeaders: len(rest) == 0})
	for len(rest) > 0 {
		n := min(frag, len(rest))
		_ = w.fr.WriteContinuation(id, n == len(rest), rest[:n])
		rest = rest[n:]
	}
}

// data writes body as DATA frames of at most size bytes (0: 16384), END_STREAM on the last
// one if end (an empty body with end is one empty DATA frame).
func (w *h2Writer) data(id uint32, end bool, body []byte, size int) {
	if size <= 0 {
		size = 16384
	}
	for {
		n := min(size, len(body))
		_ = w.fr.WriteData(id, end && n == len(body), body[:n])
		body = body[n:]
		if len(body) == 0 {
			return
		}
	}
}

// literalBlock encodes fields as HPACK literals without indexing or Huffman coding: its
// size is what the test says, and the dynamic table is untouched.
func literalBlock(kv ...string) []byte {
	var b []byte
	str := func(s string) {
		b = hpackTestInt(b, 0, 7, len(s))
		b = append(b, s...)
	}
	for i := 0; i < len(kv); i += 2 {
		b = append(b, 0)
		str(kv[i])
		str(kv[i+1])
	}
	return b
}

// hpackTestInt appends an HPACK integer with an n-bit prefix (RFC 7541 section 5.1) to a
// first byte whose other bits are first.
func hpackTestInt(b []byte, first byte, n uint, v int) []byte {
	limit := 1<<n - 1
	if v < limit {
		return append(b, first|byte(v))
	}
	b = append(b, first|byte(limit))
	for v -= limit; v >= 128; v >>= 7 {
		b = append(b, byte(v&0x7f|0x80))
	}
	return append(b, byte(v))
}

// grpcHeaders are a gRPC request's headers for path, with overrides: a pair replaces the
// field of the same name (an empty value removes it) or is appended.
func grpcHeaders(path string, overrides ...string) []string {
	kv := []string{":method", "POST", ":scheme", "http", ":path", path, ":authority", "keyward",
		"content-type", "application/grpc", "te", "trailers", "user-agent", "h2grpc-test"}
	for i := 0; i < len(overrides); i += 2 {
		j := slices.Index(kv, overrides[i])
		switch {
		case j >= 0 && j%2 == 0 && overrides[i+1] == "":
			kv = slices.Delete(kv, j, j+2)
		case j >= 0 && j%2 == 0:
			kv[j+1] = overrides[i+1]
		default:
			kv = append(kv, overrides[i], overrides[i+1])
		}
	}
	return kv
}

// grpcFrame is a gRPC message with its 5-byte prefix (not compressed).
func grpcFrame(msg []byte) []byte {
	return append(binary.BigEndian.AppendUint32([]byte{0}, uint32(len(msg))), msg...)
}

// h2Client is a hand-driven HTTP/2 client connection. Writes are buffered until the next
// read (or flush); each read waits at most h2TestWait.
type h2Client struct {
	*h2Writer
	t      testing.TB
	nc     net.Conn
	rd     *http2.Framer
	nextID uint32
	pings  uint64
	// stash are frames read while waiting for something else (send), read first.
	stash []h2Frame
	// window is the connection's send window (for send): 65535 and the server's
	// WINDOW_UPDATEs on stream 0 read so far, less what send sent.
	window int64
	// serverSettings is the server's first SETTINGS frame.
	serverSettings []http2.Setting
}

// rawH2 wraps a connection without sending anything.
func rawH2(t testing.TB, nc net.Conn) *h2Client {
	c := &h2Client{h2Writer: newH2Writer(), t: t, nc: nc, nextID: 1, window: 65535}
	c.rd = http2.NewFramer(nil, bufio.NewReader(nc))
	// The client's limits: the server must respect SETTINGS_MAX_FRAME_SIZE's default.
	c.rd.SetMaxReadFrameSize(16384)
	c.rd.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.rd.MaxHeaderListSize = 1 << 20
	t.Cleanup(func() { _ = nc.Close() })
	return c
}

func dialRaw(t testing.TB, addr string) *h2Client {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, h2TestWait)
	if err != nil {
		t.Fatal(err)
	}
	return rawH2(t, nc)
}

// dialH2 connects, sends the preface and a SETTINGS frame with settings, and reads the
// server's SETTINGS.
func dialH2(t testing.TB, addr string, settings ...http2.Setting) *h2Client {
	t.Helper()
	c := dialRaw(t, addr)
	c.handshake(settings...)
	return c
}

func (c *h2Client) handshake(settings ...http2.Setting) {
	c.t.Helper()
	c.out.WriteString(http2.ClientPreface)
	_ = c.fr.WriteSettings(settings...)
	f := c.read()
	if f.Type != http2.FrameSettings || f.Flags.Has(http2.FlagSettingsAck) {
		c.t.Fatalf("the server's first frame is %v, want SETTINGS", f)
	}
	c.serverSettings = f.Settings
	_ = c.fr.WriteSettingsAck()
}

// stream allocates the next client stream ID.
func (c *h2Client) stream() uint32 {
	id := c.nextID
	c.nextID += 2
	return id
}

func (c *h2Client) tryFlush() error {
	if c.out.Len() == 0 {
		return nil
	}
	_ = c.nc.SetWriteDeadline(time.Now().Add(h2TestWait))
	_, err := c.nc.Write(c.out.Bytes())
	c.out.Reset()
	return err
}

func (c *h2Client) flush() {
	c.t.Helper()
	if err := c.tryFlush(); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// tryRead flushes and reads one frame.
func (c *h2Client) tryRead() (h2Frame, error) {
	if len(c.stash) > 0 {
		f := c.stash[0]
		c.stash = c.stash[1:]
		return f, nil
	}
	if err := c.tryFlush(); err != nil {
		return h2Frame{}, err
	}
	_ = c.nc.SetReadDeadline(time.Now().Add(h2TestWait))
	f, err := c.rd.ReadFrame()
	if err != nil {
		return h2Frame{}, err
	}
	out := copyFrame(f)
	if out.Type == http2.FrameWindowUpdate && out.Stream == 0 {
		c.window += int64(out.Increment)
	}
	return out, nil
}

func (c *h2Client) read() h2Frame {
	c.t.Helper()
	f, err := c.tryRead()
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return f
}

// readUntil reads frames until one satisfies match and returns them all, that one last.
func (c *h2Client) readUntil(what string, match func(h2Frame) bool) []h2Frame {
	c.t.Helper()
	var fs []h2Frame
	for {
		f, err := c.tryRead()
		if err != nil {
			c.t.Fatalf("waiting for %s: %v; frames read: %v", what, err, fs)
		}
		fs = append(fs, f)
		if match(f) {
			return fs
		}
	}
}

// sync sends a PING and returns the frames read before its ACK: the server handles frames
// in order, so those are everything it wrote for what was sent before the PING (but the
// connection window it returns once it has read everything, which may follow the ACK).
func (c *h2Client) sync() []h2Frame {
	c.t.Helper()
	c.pings++
	var data [8]byte
	binary.BigEndian.PutUint64(data[:], c.pings|0xa5<<56)
	_ = c.fr.WritePing(false, data)
	fs := c.readUntil("the PING ACK", func(f h2Frame) bool {
		return f.Type == http2.FramePing && f.Flags.Has(http2.FlagPingAck) && bytes.Equal(f.Data, data[:])
	})
	return fs[:len(fs)-1]
}

func isNetTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// expectClosed reads until the server closes the connection and returns the frames read.
func (c *h2Client) expectClosed() []h2Frame {
	c.t.Helper()
	var fs []h2Frame
	for {
		f, err := c.tryRead()
		if err != nil {
			if isNetTimeout(err) {
				c.t.Fatalf("the connection is still open; frames read: %v", fs)
			}
			return fs
		}
		fs = append(fs, f)
	}
}

// expectGoAway reads until the connection ends and returns its GOAWAY, which must be the
// last frame.
func (c *h2Client) expectGoAway(code http2.ErrCode) h2Frame {
	c.t.Helper()
	fs := c.expectClosed()
	if len(fs) == 0 || fs[len(fs)-1].Type != http2.FrameGoAway {
		c.t.Fatalf("the connection closed without a GOAWAY: %v", fs)
	}
	g := fs[len(fs)-1]
	if g.Code != code {
		c.t.Fatalf("GOAWAY %v, want %v", g.Code, code)
	}
	return g
}

// send writes body as DATA frames within the connection window the server has granted,
// reading its WINDOW_UPDATEs when the window is used (the stream windows are the server's
// 1 MiB). END_STREAM on the last frame if end.
func (c *h2Client) send(id uint32, end bool, body []byte) {
	c.t.Helper()
	for {
		for c.window <= 0 {
			// Wait for a WINDOW_UPDATE; keep the other frames for later reads.
			fs := c.readUntil("connection window", func(f h2Frame) bool { return f.Type == http2.FrameWindowUpdate && f.Stream == 0 })
			c.stash = append(c.stash, fs[:len(fs)-1]...)
		}
		n := min(len(body), 16384, int(c.window))
		_ = c.fr.WriteData(id, end && n == len(body), body[:n])
		c.window -= int64(n)
		body = body[n:]
		if len(body) == 0 {
			return
		}
	}
}

// open starts a request on a new stream: its headers (path and overrides as grpcHeaders),
// END_STREAM if end.
func (c *h2Client) open(path string, end bool, overrides ...string) uint32 {
	id := c.stream()
	c.headers(id, end, c.block(grpcHeaders(path, overrides...)...), 0)
	return id
}

// call sends a unary request with body (a whole gRPC body: prefix and message) and reads
// its answer.
func (c *h2Client) call(path string, body []byte, overrides ...string) h2Answer {
	c.t.Helper()
	id := c.open(path, false, overrides...)
	c.data(id, true, body, 0)
	return c.answer(id)
}

// answer reads until stream id ends (END_STREAM or RST_STREAM from the server).
func (c *h2Client) answer(id uint32) h2Answer {
	c.t.Helper()
	fs := c.readUntil(fmt.Sprintf("the end of stream %d", id), func(f h2Frame) bool {
		return f.Stream == id && (f.endStream() || f.Type == http2.FrameRSTStream)
	})
	return answerOf(onStream(fs, id))
}

// answers reads until every stream of ids has ended and returns what each received,
// prior (frames already read) included.
func (c *h2Client) answers(prior []h2Frame, ids ...uint32) map[uint32]h2Answer {
	c.t.Helper()
	fs := slices.Clone(prior)
	open := map[uint32]bool{}
	for _, id := range ids {
		open[id] = true
	}
	settle := func(f h2Frame) {
		if f.endStream() || f.Type == http2.FrameRSTStream {
			delete(open, f.Stream)
		}
	}
	for _, f := range fs {
		settle(f)
	}
	if len(open) > 0 {
		fs = append(fs, c.readUntil(fmt.Sprintf("the end of %d streams", len(open)), func(f h2Frame) bool {
			settle(f)
			return len(open) == 0
		})...)
	}
	out := map[uint32]h2Answer{}
	for _, id := range ids {
		out[id] = answerOf(onStream(fs, id))
	}
	return out
}

// checkOK sends a Check with a valid token and fails unless it is allowed: the connection
// still works.
func (c *h2Client) checkOK(tok string) {
	c.t.Helper()
	a := c.call(grpcPathCheck, grpcFrame(mustWire(c.t, envoyCheckRequest("Bearer "+tok))))
	if why := checkAllowed(a.checkResponse(c.t)); why != "" {
		c.t.Fatalf("a valid Check afterwards: %s", why)
	}
}

// h2Answer is what a stream received.
type h2Answer struct {
	frames   []h2Frame
	headers  []hpack.HeaderField // the first HEADERS
	data     []byte
	trailers []hpack.HeaderField // a second HEADERS; nil for a trailers-only answer
	nheaders int                 // HEADERS frames before the end
	reset    *h2Frame            // a RST_STREAM before the answer's end
	ended    bool                // END_STREAM received
	// after are frames after END_STREAM: only RST_STREAM NO_ERROR, which asks a client
	// still sending its request to stop (RFC 9113 section 8.1), is allowed.
	after []h2Frame
}

func answerOf(fs []h2Frame) h2Answer {
	a := h2Answer{frames: fs}
	for i, f := range fs {
		switch {
		case a.ended || a.reset != nil:
			a.after = append(a.after, f)
		case f.Type == http2.FrameHeaders && a.headers == nil:
			a.headers, a.nheaders = f.Fields, 1
		case f.Type == http2.FrameHeaders:
			a.trailers = f.Fields
			a.nheaders++
		case f.Type == http2.FrameData:
			a.data = append(a.data, f.Data...)
		case f.Type == http2.FrameRSTStream:
			a.reset = &fs[i]
		}
		a.ended = a.ended || f.endStream()
	}
	return a
}

// complete checks that the stream ended with END_STREAM and nothing but RST_STREAM NO_ERROR
// after it.
func (a h2Answer) complete(t testing.TB) {
	t.Helper()
	if a.reset != nil {
		t.Fatalf("the stream was reset (%v): %v", a.reset.Code, a.frames)
	}
	if !a.ended {
		t.Fatalf("the answer has no END_STREAM: %v", a.frames)
	}
	for _, f := range a.after {
		if f.Type != http2.FrameRSTStream || f.Code != http2.ErrCodeNo {
			t.Fatalf("%v after the answer's END_STREAM", f)
		}
	}
}

func fieldValue(fs []hpack.HeaderField, name string) string {
	for _, hf := range fs {
		if hf.Name == name {
			return hf.Value
		}
	}
	return ""
}

// grpcStatus is grpc-status, from the trailers or a trailers-only answer.
func (a h2Answer) grpcStatus() string {
	if a.trailers != nil {
		return fieldValue(a.trailers, "grpc-status")
	}
	return fieldValue(a.headers, "grpc-status")
}

// message checks a successful gRPC answer (:status 200, application/grpc, one
// uncompressed message, trailers with grpc-status 0 and END_STREAM) and returns its message.
func (a h2Answer) message(t testing.TB) []byte {
	t.Helper()
	a.complete(t)
	switch {
	case fieldValue(a.headers, ":status") != "200" || fieldValue(a.headers, "content-type") != "application/grpc":
		t.Fatalf("headers %v, want :status 200 and content-type application/grpc", a.headers)
	case fieldValue(a.headers, "grpc-status") != "":
		t.Fatalf("a trailers-only answer %v, want a message", a.headers)
	case a.nheaders != 2 || fieldValue(a.trailers, "grpc-status") != "0":
		t.Fatalf("want headers, then trailers with grpc-status 0 and END_STREAM: %v", a.frames)
	case len(a.data) < 5 || a.data[0] != 0 || int(binary.BigEndian.Uint32(a.data[1:5])) != len(a.data)-5:
		t.Fatalf("the body is not one uncompressed gRPC message: %x", a.data)
	}
	return a.data[5:]
}

func (a h2Answer) checkResponse(t testing.TB) *authv3.CheckResponse {
	t.Helper()
	var resp authv3.CheckResponse
	if err := proto.Unmarshal(a.message(t), &resp); err != nil {
		t.Fatalf("not a CheckResponse: %v", err)
	}
	return &resp
}

// trailersOnly checks a gRPC error answer: one HEADERS with :status 200, grpc-status and
// END_STREAM, no DATA.
func (a h2Answer) trailersOnly(t testing.TB, code codes.Code) {
	t.Helper()
	a.complete(t)
	if len(a.frames)-len(a.after) != 1 || fieldValue(a.headers, ":status") != "200" || a.grpcStatus() != fmt.Sprint(int(code)) {
		t.Fatalf("got %v, want a trailers-only answer with grpc-status %d (%v)", a.frames, code, code)
	}
}

// httpError checks an HTTP error answer: one HEADERS with the status and END_STREAM.
func (a h2Answer) httpError(t testing.TB, status string) {
	t.Helper()
	a.complete(t)
	if len(a.frames)-len(a.after) != 1 || fieldValue(a.headers, ":status") != status {
		t.Fatalf("got %v, want one HEADERS with :status %s and END_STREAM", a.frames, status)
	}
}

// Protocol tests, with the hand-driven client.

// TestH2ServerPreface: the server's preface is a SETTINGS frame with its limits (which
// clients size their requests by), then the connection window; the client's SETTINGS is
// acknowledged.
func TestH2ServerPreface(t *testing.T) {
	f := newFixture(t)
	addr := startH2Loop(t, f)
	c := dialH2(t, addr)
	want := []http2.Setting{
		{ID: http2.SettingMaxConcurrentStreams, Val: h2MaxStreams},
		{ID: http2.SettingInitialWindowSize, Val: h2StreamWindow},
		{ID: http2.SettingMaxHeaderListSize, Val: h2MaxHeaderList},
	}
	for _, s := range want {
		if !slices.Contains(c.serverSettings, s) {
			t.Errorf("server SETTINGS %v lacks %v", c.serverSettings, s)
		}
	}
	fs := c.sync()
	var window uint32
	var acked bool
	for _, f := range fs {
		switch {
		case f.Type == http2.FrameWindowUpdate && f.Stream == 0:
			window += f.Increment
		case f.Type == http2.FrameSettings && f.Flags.Has(http2.FlagSettingsAck):
			acked = true
		default:
			t.Errorf("unexpected frame %v", f)
		}
	}
	if window != h2ConnWindow-65535 || !acked {
		t.Errorf("connection window +%d (want +%d), SETTINGS acknowledged: %v", window, h2ConnWindow-65535, acked)
	}
}

// TestH2Fragmented: a Check whose header block is split into HEADERS and CONTINUATION
// frames and whose body comes one byte per DATA frame (or padded, or ended by trailers)
// is answered as one request: HEADERS (:status 200, application/grpc), DATA with the
// CheckResponse, trailers with grpc-status 0 and END_STREAM.
func TestH2Fragmented(t *testing.T) {
	f := newFixture(t)
	tok := f.token(nil)
	addr := startH2Loop(t, f)
	c := dialH2(t, addr)
	body := grpcFrame(mustWire(t, envoyCheckRequest("Bearer "+tok)))

	t.Run("CONTINUATION and 1-byte DATA", func(t *testing.T) {
		c.t = t
		id := c.stream()
		c.headers(id, false, c.block(grpcHeaders(grpcPathCheck)...), 7)
		c.data(id, true, body, 1)
		if why := checkAllowed(c.answer(id).checkResponse(t)); why != "" {
			t.Error(why)
		}
	})
	t.Run("padded DATA, HEADERS with priority and padding", func(t *testing.T) {
		c.t = t
		id := c.stream()
		_ = c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.block(grpcHeaders(grpcPathCheck)...), EndHeaders: true,
			PadLength: 9, Priority: http2.PriorityParam{StreamDep: 0, Weight: 200}})
		_ = c.fr.WriteDataPadded(id, false, body[:10], make([]byte, 30))
		_ = c.fr.WriteDataPadded(id, true, body[10:], make([]byte, 255))
		if why := checkAllowed(c.answer(id).checkResponse(t)); why != "" {
			t.Error(why)
		}
	})
	t.Run("the request ended by trailers", func(t *testing.T) {
		c.t = t
		id := c.open(grpcPathCheck, false)
		c.data(id, false, body, 100)
		c.headers(id, true, c.block("x-trailer", "1"), 0)
		if why := checkAllowed(c.answer(id).checkResponse(t)); why != "" {
			t.Error(why)
		}
	})
	t.Run("empty DATA frames, content-type application/grpc+proto", func(t *testing.T) {
		c.t = t
		id := c.open(grpcPathCheck, false, "content-type", "application/grpc+proto")
		c.data(id, false, nil, 0)
		c.data(id, false, body, 0)
		c.data(id, true, nil, 0)
		if why := checkAllowed(c.answer(id).checkResponse(t)); why != "" {
			t.Error(why)
		}
	})
	t.Run("PRIORITY and unknown frame types are ignored", func(t *testing.T) {
		c.t = t
		id := c.open(grpcPathCheck, false)
		_ = c.fr.WritePriority(id, http2.PriorityParam{StreamDep: 0, Weight: 1})
		_ = c.fr.WriteRawFrame(0xbb, 0, id, []byte("extension"))
		_ = c.fr.WriteRawFrame(0xbc, 0, 0, nil)
		c.data(id, true, body, 0)
		if why := checkAllowed(c.answer(id).checkResponse(t)); why != "" {
			t.Error(why)
		}
	})
}

// TestH2GRPCErrors: requests the server does not serve get trailers-only gRPC errors or
// HTTP errors, on the stream alone: the connection goes on.
func TestH2GRPCErrors(t *testing.T) {
	f := newFixture(t)
	tok := f.token(nil)
	addr := startH2Loop(t, f)
	c := dialH2(t, addr)
	body := grpcFrame(mustWire(t, envoyCheckRequest("Bearer "+tok)))
	health := func(service string) []byte {
		return grpcFrame(mustWire(t, &healthpb.HealthCheckRequest{Service: service}))
	}
	cases := []struct {
		name      string
		path      string
		overrides []string
		body      []byte
		grpc      codes.Code // a trailers-only answer with this status, or
		http      string     // an HTTP error status
	}{
		{"an unknown method", "/envoy.service.auth.v3.Authorization/Nope", nil, body, codes.Unimplemented, ""},
		{"another service", "/grpc.health.v1.Health/Watch", nil, health(""), codes.Unimplemented, ""},
		{"no :path", grpcPathCheck, []string{":path", ""}, body, codes.Unimplemented, ""},
		// As grpc-go without that codec registered.
		{"grpc-encoding gzip", grpcPathCheck, []string{"grpc-encoding", "gzip"}, body, codes.Unimplemented, ""},
		{"a health check of another service", grpcPathHealthCheck, nil, health("other"), codes.NotFound, ""},
		{"a health check that cannot be decoded", grpcPathHealthCheck, nil, grpcFrame([]byte{0x0a, 0x05}), codes.Internal, ""},
		{"a health check without a message", grpcPathHealthCheck, nil, nil, codes.Internal, ""},
		{"GET", grpcPathCheck, []string{":method", "GET"}, body, 0, "405"},
		{"no :method", grpcPathCheck, []string{":method", ""}, body, 0, "405"},
		{"content-type text/plain", grpcPathCheck, []string{"content-type", "text/plain"}, body, 0, "415"},
		{"content-type application/grpc-web", grpcPathCheck, []string{"content-type", "application/grpc-web"}, body, 0, "415"},
		{"no content-type", grpcPathCheck, []string{"content-type", ""}, body, 0, "415"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c.t = t
			a := c.call(tc.path, tc.body, tc.overrides...)
			if tc.http != "" {
				a.httpError(t, tc.http)
				if tc.http == "405" && fieldValue(a.headers, "allow") != "POST" {
					t.Errorf("405 without allow: POST: %v", a.headers)
				}
			} else {
				a.trailersOnly(t, tc.grpc)
			}
			c.checkOK(tok)
		})
	}
	t.Run("a health check answered SERVING", func(t *testing.T) {
		c.t = t
		var h healthpb.HealthCheckResponse
		if err := proto.Unmarshal(c.call(grpcPathHealthCheck, health("")).message(t), &h); err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("%v, %v", &h, err)
		}
	})
}

// TestH2CheckDenied: a Check whose body is not exactly one uncompressed message of at
// most 1 MiB is a denied CheckResponse with grpc-status 0, never a gRPC error: Envoy
// with failure_mode_allow lets an error through, but enforces a deny.
func TestH2CheckDenied(t *testing.T) {
	f := newFixture(t)
	tok := f.token(nil)
	addr := startH2Loop(t, f)
	c := dialH2(t, addr)
	msg := []byte(mustWire(t, envoyCheckRequest("Bearer "+tok)))
	compressed := grpcFrame(msg)
	compressed[0] = 1
	oversized := binary.BigEndian.AppendUint32([]byte{0}, h2MaxMessage+1)
	oversized = append(oversized, bytes.Repeat([]byte{0x0a}, 40_000)...)
	cases := []struct {
		name string
		body []byte
		size int // DATA frame size
	}{
		{"the compressed flag without grpc-encoding", compressed, 0},
		{"a length above 1 MiB", oversized, 0},
		{"a length above 1 MiB, the prefix split", oversized, 2},
		{"a length of 4 GiB - 1", append([]byte{0, 0xff, 0xff, 0xff, 0xff}, msg...), 0},
		{"no body", nil, 0},
		{"a partial prefix", []byte{0, 0, 0}, 0},
		{"a truncated message", grpcFrame(msg)[:len(msg)], 0},
		{"two messages", append(grpcFrame(msg), grpcFrame(msg)...), 0},
		{"a message and a stray byte", append(grpcFrame(msg), 0), 0},
		{"an undecodable message", grpcFrame([]byte{0x0a, 0x05, 0x22}), 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c.t = t
			id := c.open(grpcPathCheck, false)
			c.data(id, true, tc.body, tc.size)
			if why := checkDenied(c.answer(id).checkResponse(t), codes.PermissionDenied, typev3.StatusCode_Forbidden); why != "" {
				t.Error(why)
			}
			c.checkOK(tok)
		})
	}
	t.Run("HEADERS with END_STREAM", func(t *testing.T) {
		c.t = t
		id := c.open(grpcPathCheck, true)
		if why := checkDenied(c.answer(id).checkResponse(t), codes.PermissionDenied, typev3.StatusCode_Forbidden); why != "" {
			t.Error(why)
		}
		c.checkOK(tok)
	})
	t.Run("no token", func(t *testing.T) {
		c.t = t
		a := c.call(grpcPathCheck, grpcFrame(mustWire(t, envoyCheckRequest(""))))
		if why := checkDenied(a.checkResponse(t), codes.Unauthenticated, typev3.StatusCode_Unauthorized); why != "" {
			t.Error(why)
		}
	})
}

// TestH2EarlyAnswers: a request the server will not read (an unknown method, an HTTP
// error, a message above 1 MiB) is answered as soon as that is known, before the client
// has sent all of it, and the client is told to stop sending with RST_STREAM NO_ERROR
// (RFC 9113 section 8.1); what it sent meanwhile is ignored and the connection goes on.
// Each stream gets one answer, however its request ends.
func TestH2EarlyAnswers(t *testing.T) {
	f := newFixture(t)
	tok := f.token(nil)
	addr := startH2Loop(t, f)
	body := grpcFrame(mustWire(t, envoyCheckRequest("Bearer "+tok)))
	oversized := binary.BigEndian.AppendUint32([]byte{0}, 2*h2MaxMessage)
	oversized = append(oversized, bytes.Repeat([]byte{0x0a}, 100)...)

	// early reads the stream's answer, sent before the request's end, and the RST_STREAM
	// NO_ERROR after it; then the client sends the rest anyway.
	early := func(t *testing.T, c *h2Client, id uint32) h2Answer {
		t.Helper()
		fs := c.readUntil("the answer and RST_STREAM", func(f h2Frame) bool { return f.Stream == id && f.Type == http2.FrameRSTStream })
		a := answerOf(onStream(fs, id))
		if len(a.after) != 1 || a.after[0].Code != http2.ErrCodeNo {
			t.Errorf("got %v, want an answer then RST_STREAM NO_ERROR", a.frames)
		}
		c.data(id, true, body, 0)
		if fs := onStream(c.sync(), id); len(fs) != 0 {
			t.Errorf("after the rest of the request: %v, want nothing", fs)
		}
		return a
	}
	c := dialH2(t, addr)
	t.Run("an unknown method", func(t *testing.T) {
		c.t = t
		early(t, c, c.open("/envoy.service.auth.v3.Authorization/Nope", false)).trailersOnly(t, codes.Unimplemented)
		c.checkOK(tok)
	})
	t.Run("GET", func(t *testing.T) {
		c.t = t
		early(t, c, c.open(grpcPathCheck, false, ":method", "GET")).httpError(t, "405")
		c.checkOK(tok)
	})
	t.Run("a Check above 1 MiB", func(t *testing.T) {
		c.t = t
		id := c.open(grpcPathCheck, false)
		c.data(id, false, oversized, 0)
		if why := checkDenied(early(t, c, id).checkResponse(t), codes.PermissionDenied, typev3.StatusCode_Forbidden); why != "" {
			t.Error(why)
		}
		c.checkOK(tok)
	})
	// The answer is decided at the prefix but its DATA waits for the client's window while
	// the client goes on sending, then ends the request (with DATA, or with trailers): one
	// answer still.
	for _, end := range []string{"DATA", "trailers"} {
		t.Run("a Check above 1 MiB whose answer waits for window, ended by "+end, func(t *testing.T) {
			c := dialH2(t, addr, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
			id := c.open(grpcPathCheck, false)
			c.data(id, false, oversized, 0)
			all := c.sync()
			c.data(id, false, bytes.Repeat([]byte{0x0a}, 1000), 100)
			all = append(all, c.sync()...)
			if end == "DATA" {
				c.data(id, true, nil, 0)
			} else {
				c.headers(id, true, c.block("x-trailer", "1"), 0)
			}
			all = append(all, c.sync()...)
			_ = c.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 65535})
			a := c.answers(all, id)[id]
			if a.nheaders != 2 {
				t.Fatalf("%d HEADERS frames on the stream, want 2 (response headers, trailers): %v", a.nheaders, a.frames)
			}
			if why := checkDenied(a.checkResponse(t), codes.PermissionDenied, typev3.StatusCode_Forbidden); why != "" {
				t.Error(why)
			}
			c.checkOK(tok)
		})
	}
}

// TestH2SendWindow: the server sends no more DATA than the client's windows allow and
// sends the rest when they open (WINDOW_UPDATE, or SETTINGS raising the initial window),
// while the connection serves other streams: a client that reads slowly gets its answers
// late, never lost or beyond its windows.
func TestH2SendWindow(t *testing.T) {
	f := newFixture(t)
	tok := f.token(nil)
	addr := startH2Loop(t, f)
	body := grpcFrame(mustWire(t, envoyCheckRequest("Bearer "+tok)))

	t.Run("stream window", func(t *testing.T) {
		c := dialH2(t, addr, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
		id := c.open(grpcPathCheck, false)
		c.data(id, true, body, 0)
		all := c.sync()
		if fs := onStream(all, id); len(fs) != 1 || fs[0].Type != http2.FrameHeaders || fs[0].header(":status") != "200" || fs[0].endStream() {
			t.Fatalf("with a window of 0: %v, want the response HEADERS alone", fs)
		}
		_ = c.fr.WriteWindowUpdate(id, 3)
		fs := c.sync()
		all = append(all, fs...)
		if fs := onStream(fs, id); len(fs) != 1 || fs[0].Type != http2.FrameData || len(fs[0].Data) != 3 {
			t.Fatalf("with a window of 3: %v, want 3 bytes of DATA", fs)
		}
		// A second stream, blocked too; both are released by SETTINGS.
		id2 := c.open(grpcPathCheck, false)
		c.data(id2, true, body, 0)
		fs = c.sync()
		all = append(all, fs...)
		if fs := onStream(fs, id2); len(fs) != 1 || fs[0].Type != http2.FrameHeaders {
			t.Fatalf("second stream with a window of 0: %v, want the response HEADERS alone", fs)
		}
		_ = c.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 65535})
		for id, a := range c.answers(all, id, id2) {
			if why := checkAllowed(a.checkResponse(t)); why != "" {
				t.Errorf("stream %d: %s", id, why)
			}
		}
		c.checkOK(tok)
	})

	t.Run("a stream reset while its answer waits", func(t *testing.T) {
		c := dialH2(t, addr, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
		id := c.open(grpcPathCheck, false)
		c.data(id, true, body, 0)
		c.sync()
		_ = c.fr.WriteRSTStream(id, http2.ErrCodeCancel)
		_ = c.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 65535})
		if fs := onStream(c.sync(), id); len(fs) != 0 {
			t.Errorf("after the client's RST_STREAM: %v, want nothing", fs)
		}
		c.checkOK(tok)
	})

	t.Run("DATA after END_STREAM while the answer waits: STREAM_CLOSED", func(t *testing.T) {
		// Half-closed (remote): the stream error STREAM_CLOSED (RFC 9113 section 5.1).
		c := dialH2(t, addr, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
		id := c.open(grpcPathCheck, false)
		c.data(id, true, body, 0)
		c.sync()
		c.data(id, false, []byte{0}, 0)
		if fs := onStream(c.sync(), id); len(fs) != 1 || fs[0].Type != http2.FrameRSTStream || fs[0].Code != http2.ErrCodeStreamClosed {
			t.Errorf("got %v, want RST_STREAM STREAM_CLOSED", fs)
		}
		_ = c.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 65535})
		if fs := onStream(c.sync(), id); len(fs) != 0 {
			t.Errorf("after the reset: %v, want nothing", fs)
		}
		c.checkOK(tok)
	})

	t.Run("connection window", func(t *testing.T) {
		// Stream windows large enough: the connection's 65535 bytes are the limit. Checks
		// are sent until the answers have used it all.
		c := dialH2(t, addr, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20})
		var ids []uint32
		var all []h2Frame
		for dataBytes(all) < 65535 {
			if len(ids) > 2000 {
				t.Fatalf("%d answers carried %d bytes of DATA", len(ids), dataBytes(all))
			}
			for range 20 {
				id := c.open(grpcPathCheck, false)
				c.data(id, true, body, 0)
				ids = append(ids, id)
			}
			all = append(all, c.sync()...)
			if n := dataBytes(all); n > 65535 {
				t.Fatalf("the server sent %d bytes of DATA, beyond the connection window", n)
			}
		}
		id := c.open(grpcPathCheck, false)
		c.data(id, true, body, 0)
		ids = append(ids, id)
		fs := c.sync()
		all = append(all, fs...)
		if got := onStream(fs, id); len(got) != 1 || got[0].Type != http2.FrameHeaders || dataBytes(fs) != 0 {
			t.Fatalf("with the connection window used: %v, want the response HEADERS alone", fs)
		}
		_ = c.fr.WriteWindowUpdate(0, 1<<20)
		for id, a := range c.answers(all, ids...) {
			if why := checkAllowed(a.checkResponse(t)); why != "" {
				t.Fatalf("stream %d: %s", id, why)
			}
		}
	})
}

// TestH2MaxStreams: a client may have SETTINGS_MAX_CONCURRENT_STREAMS requests open; the
// next stream is refused (REFUSED_STREAM, which clients retry) and the open ones are
// still answered when they end.
func TestH2MaxStreams(t *testing.T) {
	f := newFixture(t)
	tok := f.token(nil)
	addr := startH2Loop(t, f)
	body := grpcFrame(mustWire(t, envoyCheckRequest("Bearer "+tok)))
	c := dialH2(t, addr)
	_ = c.fr.WriteWindowUpdate(0, 1<<30) // the answers are more than 64 KiB
	ids := make([]uint32, h2MaxStreams)
	for i := range ids {
		ids[i] = c.open(grpcPathCheck, false)
	}
	extra := c.open(grpcPathCheck, false)
	refused := false
	for _, f := range c.sync() {
		switch {
		case f.Stream == 0:
		case f.Stream == extra && f.Type == http2.FrameRSTStream && f.Code == http2.ErrCodeRefusedStream:
			refused = true
		default:
			t.Fatalf("with %d streams open: %v, want RST_STREAM REFUSED_STREAM on stream %d only", h2MaxStreams, f, extra)
		}
	}
	if !refused {
		t.Fatalf("stream %d, beyond the limit, was not refused", extra)
	}
	for _, id := range ids {
		c.data(id, true, body, 0)
	}
	for id, a := range c.answers(nil, ids...) {
		if why := checkAllowed(a.checkResponse(t)); why != "" {
			t.Fatalf("stream %d: %s", id, why)
		}
	}
	c.checkOK(tok)
}

// TestH2ConnBuffer: a connection holds a bounded amount of unfinished requests
// (h2ConnBuffer). A request beyond it is not kept but still answered, a Check with a deny
// (possibly before the client has sent all of it), so that no request waits for memory;
// the connection goes on, and once the held requests are answered it holds as many again.
func TestH2ConnBuffer(t *testing.T) {
	f := newFixture(t)
	tok := f.token(nil)
	addr := startH2Loop(t, f)
	body := grpcFrame(mustWire(t, largeCheck(t, tok)))
	fit := h2ConnBuffer / len(body) // requests that fit at once
	n := fit + 2
	c := dialH2(t, addr)
	ids := make([]uint32, n)
	for i := range ids {
		ids[i] = c.open(grpcPathCheck, false)
		c.send(ids[i], false, body)
	}
	prior := c.sync()
	for _, id := range ids {
		c.send(id, true, nil)
	}
	got := c.answers(prior, ids...)
	allowed := 0
	for i, id := range ids {
		resp := got[id].checkResponse(t)
		switch {
		case checkAllowed(resp) == "" && allowed == i:
			allowed++
		case checkDenied(resp, codes.PermissionDenied, typev3.StatusCode_Forbidden) == "":
		default:
			t.Errorf("request %d of %d: %v, want an allow (while the buffer has room) or a 403 deny", i, n, resp)
		}
	}
	if allowed < fit-1 || allowed == n {
		t.Errorf("%d of %d requests of %d bytes allowed at once, with a buffer of %d bytes", allowed, n, len(body), h2ConnBuffer)
	}
	// The held requests are answered: the buffer is free again, for requests one at a time
	// (more than it holds in all) and for as many at once as before.
	for i := range n {
		id := c.open(grpcPathCheck, false)
		c.send(id, true, body)
		if why := checkAllowed(c.answer(id).checkResponse(t)); why != "" {
			t.Fatalf("request %d after the buffer was freed: %s", i, why)
		}
	}
	for i := range allowed {
		ids[i] = c.open(grpcPathCheck, false)
		c.send(ids[i], false, body)
	}
	for _, id := range ids[:allowed] {
		c.send(id, true, nil)
	}
	for id, a := range c.answers(nil, ids[:allowed]...) {
		if why := checkAllowed(a.checkResponse(t)); why != "" {
			t.Errorf("stream %d, %d at once again: %s", id, allowed, why)
		}
	}
}

// TestH2StreamErrors: errors confined to one stream reset that stream only, and the
// connection (shared by every check Envoy multiplexes on it) goes on.
func TestH2StreamErrors(t *testing.T) {
	f := newFixture(t)
	tok := f.token(nil)
	addr := startH2Loop(t, f)
	body := grpcFrame(mustWire(t, envoyCheckRequest("Bearer "+tok)))
	c := dialH2(t, addr)

	t.Run("the client resets a half-sent request: no answer", func(t *testing.T) {
		c.t = t
		id := c.open(grpcPathCheck, false)
		c.data(id, false, body[:10], 0)
		_ = c.fr.WriteRSTStream(id, http2.ErrCodeCancel)
		if fs := onStream(c.sync(), id); len(fs) != 0 {
			t.Errorf("after the client's RST_STREAM: %v, want nothing", fs)
		}
		c.checkOK(tok)
	})
	// A stream the server has answered is closed: DATA the client sends on it is ignored
	// (it may have been on its way, RFC 9113 section 5.1) or refused with STREAM_CLOSED,
	// and never answered again.
	closedStream := func(t *testing.T, id uint32) {
		t.Helper()
		for _, f := range onStream(c.sync(), id) {
			if f.Type != http2.FrameRSTStream || (f.Code != http2.ErrCodeStreamClosed && f.Code != http2.ErrCodeNo) {
				t.Errorf("DATA on an answered stream: %v, want nothing or RST_STREAM STREAM_CLOSED", f)
			}
		}
	}
	t.Run("DATA on an answered stream", func(t *testing.T) {
		c.t = t
		id := c.open(grpcPathCheck, false)
		c.data(id, true, body, 0)
		if why := checkAllowed(c.answer(id).checkResponse(t)); why != "" {
			t.Fatal(why)
		}
		c.data(id, false, []byte{0}, 0)
		closedStream(t, id)
		c.checkOK(tok)
	})
	t.Run("DATA on a stream refused for its headers", func(t *testing.T) {
		c.t = t
		id := c.open(grpcPathCheck, true, "content-type", "text/plain")
		c.answer(id).httpError(t, "415")
		c.data(id, true, body, 0)
		closedStream(t, id)
		c.checkOK(tok)
	})
	t.Run("more DATA than the stream window: FLOW_CONTROL_ERROR", func(t *testing.T) {
		c.t = t
		id := c.open(grpcPathCheck, false)
		big := binary.BigEndian.AppendUint32([]byte{0}, h2MaxMessage)
		big = append(big, make([]byte, h2StreamWindow-len(big))...)
		c.data(id, false, big, 0)
		if fs := onStream(c.sync(), id); len(fs) != 0 {
			t.Fatalf("after exactly the stream window: %v, want nothing", fs)
		}
		c.data(id, false, []byte{0}, 0)
		if fs := onStream(c.sync(), id); len(fs) != 1 || fs[0].Type != http2.FrameRSTStream || fs[0].Code != http2.ErrCodeFlowControl {
			t.Errorf("one byte beyond the stream window: %v, want RST_STREAM FLOW_CONTROL_ERROR", fs)
		}
		c.checkOK(tok)
	})
	t.Run("trailers without END_STREAM: PROTOCOL_ERROR", func(t *testing.T) {
		c.t = t
		id := c.open(grpcPathCheck, false)
		c.data(id, false, body, 0)
		c.headers(id, false, c.block("x-trailer", "1"), 0)
		if fs := onStream(c.sync(), id); len(fs) != 1 || fs[0].Type != http2.FrameRSTStream || fs[0].Code != http2.ErrCodeProtocol {
			t.Errorf("got %v, want RST_STREAM PROTOCOL_ERROR", fs)
		}
		c.checkOK(tok)
	})
	t.Run("a header list above 16 KiB in one frame: 431", func(t *testing.T) {
		c.t = t
		// 1000 copies of one field: a few bytes each once indexed, 38 each in the list.
		kv := grpcHeaders(grpcPathCheck)
		for range 1000 {
			kv = append(kv, "x-many", "v")
		}
		id := c.stream()
		block := c.block(kv...)
		if len(block) > 16384 {
			t.Fatalf("the block is %d bytes", len(block))
		}
		c.headers(id, true, block, 0)
		c.answer(id).httpError(t, "431")
		c.checkOK(tok)
	})
	t.Run("a header list above 16 KiB in HEADERS and CONTINUATION: 431", func(t *testing.T) {
		c.t = t
		kv := append(grpcHeaders(grpcPathCheck), "x-large-1", strings.Repeat("a", 9000), "x-large-2", strings.Repeat("b", 9000))
		id := c.stream()
		c.headers(id, false, literalBlock(kv...), 16384)
		c.data(id, true, body, 0)
		c.answer(id).httpError(t, "431")
		c.checkOK(tok)
	})
	t.Run("PING: ACK with the same data", func(t *testing.T) {
		c.t = t
		data := [8]byte{1, 2, 3, 4, 5, 6, 7, 8}
		_ = c.fr.WritePing(false, data)
		fs := c.readUntil("the PING ACK", isType(http2.FramePing))
		if p := fs[len(fs)-1]; !p.Flags.Has(http2.FlagPingAck) || !bytes.Equal(p.Data, data[:]) {
			t.Errorf("got %v %x, want an ACK of %x", p, p.Data, data)
		}
		// A PING ACK is not answered.
		_ = c.fr.WritePing(true, data)
		for _, f := range c.sync() {
			if f.Type == http2.FramePing {
				t.Errorf("a PING ACK was answered: %v", f)
			}
		}
		c.checkOK(tok)
	})
}

// TestH2ConnectionErrors: what breaks the connection's state (stream IDs out of order,
// frames out of place, flow control, HPACK) ends the connection with a GOAWAY carrying
// the error, as RFC 9113 requires, rather than going on out of step with the client.
func TestH2ConnectionErrors(t *testing.T) {
	f := newFixture(t)
	tok := f.token(nil)
	addr := startH2Loop(t, f)
	body := grpcFrame(mustWire(t, envoyCheckRequest("Bearer "+tok)))
	kv := grpcHeaders(grpcPathCheck)
	cases := []struct {
		name string
		send func(c *h2Client)
		code http2.ErrCode
		last uint32 // the GOAWAY's last stream ID
	}{
		{"HEADERS on an even stream", func(c *h2Client) { c.headers(2, true, c.block(kv...), 0) }, http2.ErrCodeProtocol, 0},
		{"HEADERS on a stream lower than the last", func(c *h2Client) {
			c.headers(5, false, c.block(kv...), 0)
			c.data(5, true, body, 0)
			c.answer(5)
			c.headers(3, true, c.block(kv...), 0)
		}, http2.ErrCodeProtocol, 5},
		{"HEADERS on an answered stream", func(c *h2Client) {
			c.checkOK(tok)
			c.headers(1, true, c.block(kv...), 0)
		}, http2.ErrCodeProtocol, 1},
		{"DATA on an idle stream", func(c *h2Client) { c.data(7, true, body, 0) }, http2.ErrCodeProtocol, 0},
		{"RST_STREAM on an idle stream", func(c *h2Client) { _ = c.fr.WriteRSTStream(7, http2.ErrCodeCancel) }, http2.ErrCodeProtocol, 0},
		{"WINDOW_UPDATE on an idle stream", func(c *h2Client) { _ = c.fr.WriteWindowUpdate(7, 1) }, http2.ErrCodeProtocol, 0},
		{"CONTINUATION without HEADERS", func(c *h2Client) { _ = c.fr.WriteContinuation(1, true, c.block(kv...)) }, http2.ErrCodeProtocol, 0},
		{"another frame inside a header block", func(c *h2Client) {
			_ = c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: c.block(kv...)})
			_ = c.fr.WritePing(false, [8]byte{})
		}, http2.ErrCodeProtocol, 0},
		{"PUSH_PROMISE", func(c *h2Client) {
			_ = c.fr.WritePushPromise(http2.PushPromiseParam{StreamID: 1, PromiseID: 2, BlockFragment: c.block(kv...), EndHeaders: true})
		}, http2.ErrCodeProtocol, 0},
		{"a frame above SETTINGS_MAX_FRAME_SIZE", func(c *h2Client) {
			c.headers(1, false, c.block(kv...), 0)
			_ = c.fr.WriteData(1, true, make([]byte, 16385))
		}, http2.ErrCodeFrameSize, 1},
		{"an undecodable header block", func(c *h2Client) { c.headers(1, true, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 0) }, http2.ErrCodeCompression, 0},
		{"a header block far above 16 KiB", func(c *h2Client) {
			c.headers(1, true, literalBlock(append(slices.Clone(kv), "x-1", strings.Repeat("a", 12000), "x-2", strings.Repeat("b", 12000),
				"x-3", strings.Repeat("c", 12000))...), 16384)
		}, http2.ErrCodeProtocol, 0},
		{"SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1", func(c *h2Client) {
			_ = c.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 31})
		}, http2.ErrCodeFlowControl, 0},
		{"SETTINGS_MAX_FRAME_SIZE below 16384", func(c *h2Client) {
			_ = c.fr.WriteSettings(http2.Setting{ID: http2.SettingMaxFrameSize, Val: 100})
		}, http2.ErrCodeProtocol, 0},
		{"the connection's send window above 2^31-1", func(c *h2Client) { _ = c.fr.WriteWindowUpdate(0, 1<<31-1) }, http2.ErrCodeFlowControl, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := dialH2(t, addr)
			tc.send(c)
			// The client may still be writing when the server closes.
			if err := c.tryFlush(); err != nil {
				t.Logf("write: %v", err)
			}
			if g := c.expectGoAway(tc.code); g.LastStream != tc.last {
				t.Errorf("GOAWAY last stream %d, want %d", g.LastStream, tc.last)
			}
		})
	}
}

// TestH2BadPreface: a connection that does not start with the HTTP/2 client preface and
// SETTINGS (an HTTP/1.1 client, a port scanner) is closed and nothing is served on it.
func TestH2BadPreface(t *testing.T) {
	f := newFixture(t)
	addr := startH2Loop(t, f)
	preface := func(frames func(w *h2Writer)) []byte {
		w := newH2Writer()
		w.out.WriteString(http2.ClientPreface)
		frames(w)
		return w.out.Bytes()
	}
	cases := []struct {
		name      string
		send      []byte
		closeSend bool // half-close after sending
	}{
		{"an HTTP/1.1 request line, then EOF", []byte("GET / HTTP/1.1\r\n\r\n"), true},
		{"an HTTP/1.1 request", []byte("GET / HTTP/1.1\r\nHost: keyward\r\nUser-Agent: test\r\n\r\n"), false},
		{"the preface, then PING", preface(func(w *h2Writer) { _ = w.fr.WritePing(false, [8]byte{1}) }), false},
		{"the preface, then a SETTINGS ACK", preface(func(w *h2Writer) { _ = w.fr.WriteSettingsAck() }), false},
		{"the preface, then HEADERS", preface(func(w *h2Writer) { w.headers(1, true, w.block(grpcHeaders(grpcPathCheck)...), 0) }), false},
		{"half a preface, then EOF", []byte(http2.ClientPreface[:10]), true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := dialRaw(t, addr)
			c.out.Write(tc.send)
			c.flush()
			if tc.closeSend {
				_ = c.nc.(*net.TCPConn).CloseWrite()
			}
			// Nothing but the server's own preface (SETTINGS, WINDOW_UPDATE) before it closes.
			for _, f := range c.expectClosed() {
				if f.Stream != 0 || (f.Type != http2.FrameSettings && f.Type != http2.FrameWindowUpdate) {
					t.Errorf("the server answered %v", f)
				}
			}
		})
	}
}

// TestH2AnswersBeforePartialFrame: what the server owes for the frames it has read whole
// (a PING ACK, a health answer, a refusal) is sent before it waits for the rest of a frame
// that has only partly arrived (TCP segments split frames; a slow link delivers the rest
// late).
func TestH2AnswersBeforePartialFrame(t *testing.T) {
	f := newFixture(t)
	tok := f.token(nil)
	addr := startH2Loop(t, f)
	c := dialH2(t, addr)
	c.sync()
	id := c.open(grpcPathHealthCheck, false)
	c.data(id, true, grpcFrame(nil), 0)
	_ = c.fr.WritePing(false, [8]byte{'b', 'e', 'f', 'o', 'r', 'e'})
	// Then the first half of a Check's HEADERS frame.
	w := newH2Writer()
	w.headers(c.stream(), true, c.block(grpcHeaders(grpcPathCheck)...), 0)
	partial := w.out.Bytes()
	c.out.Write(partial[:len(partial)/2])
	fs := c.readUntil("the PING ACK", isType(http2.FramePing))
	if a := answerOf(onStream(fs, id)); !a.ended || a.grpcStatus() != "0" {
		t.Errorf("health: %v, want an answer before the PING ACK", a.frames)
	}
	c.out.Write(partial[len(partial)/2:])
	c.sync()
	c.checkOK(tok)
}

// TestH2Shutdown: a graceful stop (a rollout) answers what was asked: every connection
// gets GOAWAY, requests already open are answered, newer streams are refused (clients
// retry them elsewhere), health checks say NOT_SERVING, and connections close once their
// streams are done, which Shutdown waits for.
func TestH2Shutdown(t *testing.T) {
	t.Run("event loop", func(t *testing.T) { testH2Shutdown(t, true) })
	t.Run("goroutine per connection", func(t *testing.T) { testH2Shutdown(t, false) })
}

func testH2Shutdown(t *testing.T, loop bool) {
	f := newFixture(t)
	tok := f.token(nil)
	var addr string
	var shutdown func(context.Context)
	if loop {
		addr, shutdown = startH2LoopStop(t, f)
	} else {
		var srv *h2Server
		srv, addr = startH2(t, f)
		shutdown = srv.Shutdown
	}
	c := dialH2(t, addr)
	idle := dialH2(t, addr)
	check := c.open(grpcPathCheck, false)
	health := c.open(grpcPathHealthCheck, false)
	c.sync()
	idle.sync()

	done := make(chan struct{})
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*h2TestWait)
		defer cancel()
		shutdown(ctx)
		close(done)
	}()

	g := c.readUntil("GOAWAY", isType(http2.FrameGoAway))
	if g := g[len(g)-1]; g.Code != http2.ErrCodeNo || g.LastStream != health {
		t.Errorf("%v, want GOAWAY NO_ERROR with last stream %d", g, health)
	}
	// The idle connection is closed after its GOAWAY.
	if g := idle.expectGoAway(http2.ErrCodeNo); g.LastStream != 0 {
		t.Errorf("idle connection: %v, want last stream 0", g)
	}

	late := c.open(grpcPathHealthCheck, true)
	if fs := onStream(c.sync(), late); len(fs) != 1 || fs[0].Type != http2.FrameRSTStream || fs[0].Code != http2.ErrCodeRefusedStream {
		t.Errorf("a stream opened after GOAWAY: %v, want RST_STREAM REFUSED_STREAM", fs)
	}

	c.data(health, true, grpcFrame(mustWire(t, &healthpb.HealthCheckRequest{})), 0)
	var h healthpb.HealthCheckResponse
	if err := proto.Unmarshal(c.answer(health).message(t), &h); err != nil || h.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("health during shutdown: %v, %v, want NOT_SERVING", &h, err)
	}
	select {
	case <-done:
		t.Fatal("Shutdown returned with a request open")
	default:
	}

	c.data(check, true, grpcFrame(mustWire(t, envoyCheckRequest("Bearer "+tok))), 0)
	if why := checkAllowed(c.answer(check).checkResponse(t)); why != "" {
		t.Errorf("the open Check: %s", why)
	}
	if fs := c.expectClosed(); len(fs) != 0 {
		t.Errorf("after the last answer: %v, want the connection closed", fs)
	}
	select {
	case <-done:
	case <-time.After(h2TestWait):
		t.Fatal("Shutdown did not return after the connections closed")
	}
}

// TestH2ShutdownBeforePreface: a connection accepted just before Shutdown, whose client has
// not sent its preface yet, must not get a GOAWAY as the server's first frame: RFC 9113
// section 3.4 requires SETTINGS first, and a client treats anything else as a
// PROTOCOL_ERROR instead of a graceful GOAWAY. (Closing it, or SETTINGS then GOAWAY, is
// fine.)
func TestH2ShutdownBeforePreface(t *testing.T) {
	f := newFixture(t)
	srv, addr := startH2(t, f)
	c := dialRaw(t, addr)
	deadline := time.Now().Add(h2TestWait)
	for {
		srv.mu.Lock()
		n := len(srv.conns)
		srv.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the server did not accept the connection")
		}
		time.Sleep(time.Millisecond)
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), h2TestWait)
		defer cancel()
		srv.Shutdown(ctx)
	}()
	f0, err := c.tryRead()
	switch {
	case err != nil && isNetTimeout(err):
		t.Fatal("neither a frame nor the connection closed")
	case err != nil:
		// Closed without a frame: fine.
	case f0.Type != http2.FrameSettings:
		t.Errorf("the server's first frame is %v, want SETTINGS", f0)
	}
}

// A connection run on an in-memory input, and the fuzz target.

// h2FuzzConn is a net.Conn whose reads return in, chunk bytes at a time, then io.EOF, and
// whose writes are kept: the connection's goroutine runs to the end of the input without
// another goroutine or a socket.
type h2FuzzConn struct {
	in    []byte
	chunk int
	mu    sync.Mutex
	out   bytes.Buffer
}

func (c *h2FuzzConn) Read(p []byte) (int, error) {
	if len(c.in) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), c.chunk)], c.in)
	c.in = c.in[n:]
	return n, nil
}

func (c *h2FuzzConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.out.Write(p)
}

func (c *h2FuzzConn) Close() error                     { return nil }
func (c *h2FuzzConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *h2FuzzConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *h2FuzzConn) SetDeadline(time.Time) error      { return nil }
func (c *h2FuzzConn) SetReadDeadline(time.Time) error  { return nil }
func (c *h2FuzzConn) SetWriteDeadline(time.Time) error { return nil }

// runH2Conn runs a server connection on in, read at most chunk bytes at a time (0: as
// much as the server asks), and returns what the server wrote. The connection must end at
// the end of the input.
func runH2Conn(t testing.TB, srv *h2Server, in []byte, chunk int) []byte {
	t.Helper()
	if chunk <= 0 {
		chunk = len(in)
	}
	nc := &h2FuzzConn{in: in, chunk: chunk}
	done := make(chan struct{})
	go func() {
		defer close(done)
		newH2Conn(srv, nc, nc.RemoteAddr()).serve()
	}()
	select {
	case <-done:
	case <-time.After(h2TestWait):
		t.Fatal("the connection did not end at the end of its input")
	}
	nc.mu.Lock()
	defer nc.mu.Unlock()
	return bytes.Clone(nc.out.Bytes())
}

// parseServerFrames reads what a server connection wrote as a client does.
func parseServerFrames(out []byte) ([]h2Frame, error) {
	rd := http2.NewFramer(nil, bytes.NewReader(out))
	rd.SetMaxReadFrameSize(16384)
	rd.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	rd.MaxHeaderListSize = 1 << 20
	var fs []h2Frame
	for {
		f, err := rd.ReadFrame()
		if errors.Is(err, io.EOF) {
			if len(fs) == 0 {
				return nil, errors.New("the server wrote nothing")
			}
			return fs, nil
		}
		if err != nil {
			return fs, fmt.Errorf("frame %d of the server is malformed: %w", len(fs), err)
		}
		fs = append(fs, copyFrame(f))
	}
}

// checkServerFrames checks what a server connection wrote (see FuzzH2Conn): frames a
// client accepts, SETTINGS first, on each client stream at most one answer (HEADERS, then
// DATA, then trailers with END_STREAM, or a lone HEADERS with END_STREAM) and nothing
// after its end but RST_STREAM, and nothing after a GOAWAY with an error.
func checkServerFrames(t *testing.T, out []byte) {
	fs, err := parseServerFrames(out)
	if err != nil {
		t.Fatalf("%v; frames before: %v", err, fs)
	}
	if f := fs[0]; f.Type != http2.FrameSettings || f.Flags.Has(http2.FlagSettingsAck) {
		t.Fatalf("the server's first frame is %v", f)
	}
	const (
		idle = iota
		answering
		ended
	)
	state := map[uint32]int{}
	fatal := false
	for i, f := range fs {
		if fatal {
			t.Fatalf("frame %d, %v, after a GOAWAY with an error", i, f)
		}
		switch f.Type {
		case http2.FrameHeaders, http2.FrameData:
			switch st := state[f.Stream]; {
			case f.Stream%2 == 0:
				t.Fatalf("frame %d, %v, on a server stream", i, f)
			case st == ended:
				t.Fatalf("frame %d, %v, after the stream's end", i, f)
			case f.Type == http2.FrameData && st == idle:
				t.Fatalf("frame %d, %v, before the stream's HEADERS", i, f)
			case f.Type == http2.FrameHeaders && st == answering && !f.endStream():
				t.Fatalf("frame %d, %v: a second HEADERS without END_STREAM", i, f)
			case f.endStream():
				state[f.Stream] = ended
			default:
				state[f.Stream] = answering
			}
		case http2.FrameRSTStream:
			state[f.Stream] = ended
		case http2.FrameGoAway:
			fatal = f.Code != http2.ErrCodeNo
		}
	}
}

// h2FuzzSeeds are client frames (after the preface and SETTINGS) of the protocol tests'
// cases, as fuzz seeds.
func h2FuzzSeeds(body []byte) [][]byte {
	kv := grpcHeaders(grpcPathCheck)
	seed := func(frames func(w *h2Writer)) []byte {
		w := newH2Writer()
		frames(w)
		return bytes.Clone(w.out.Bytes())
	}
	compressed := bytes.Clone(body)
	compressed[0] = 1
	return [][]byte{
		seed(func(w *h2Writer) { w.headers(1, false, w.block(kv...), 7); w.data(1, true, body, 1) }),
		seed(func(w *h2Writer) {
			w.headers(1, false, w.block(kv...), 0)
			w.data(1, true, body, 0)
			w.headers(3, false, w.block(kv...), 0)
			w.data(3, true, body, 0)
		}),
		seed(func(w *h2Writer) { w.headers(1, true, w.block(grpcHeaders("/x/Nope")...), 0) }),
		seed(func(w *h2Writer) { w.headers(1, true, w.block(grpcHeaders(grpcPathCheck, ":method", "GET")...), 0) }),
		seed(func(w *h2Writer) {
			w.headers(1, false, w.block(grpcHeaders(grpcPathCheck, "content-type", "text/plain")...), 0)
			w.data(1, true, body, 0)
		}),
		seed(func(w *h2Writer) { w.headers(1, false, w.block(kv...), 0); w.data(1, true, compressed, 0) }),
		seed(func(w *h2Writer) {
			w.headers(1, false, w.block(kv...), 0)
			w.data(1, true, append(binary.BigEndian.AppendUint32([]byte{0}, h2MaxMessage+1), 1, 2, 3), 0)
		}),
		seed(func(w *h2Writer) { w.headers(1, true, w.block(kv...), 0) }),
		seed(func(w *h2Writer) {
			w.headers(1, false, w.block(kv...), 0)
			w.data(1, true, append(bytes.Clone(body), body...), 0)
		}),
		seed(func(w *h2Writer) {
			w.headers(1, false, w.block(grpcHeaders(grpcPathHealthCheck)...), 0)
			w.data(1, true, grpcFrame(nil), 0)
		}),
		seed(func(w *h2Writer) {
			_ = w.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
			w.headers(1, false, w.block(kv...), 0)
			w.data(1, true, body, 0)
			_ = w.fr.WriteWindowUpdate(1, 10)
			_ = w.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 65535})
		}),
		seed(func(w *h2Writer) {
			w.headers(1, false, w.block(kv...), 0)
			w.data(1, false, body[:3], 0)
			_ = w.fr.WriteRSTStream(1, http2.ErrCodeCancel)
			w.data(1, true, body[3:], 0)
		}),
		seed(func(w *h2Writer) {
			w.headers(1, false, w.block(kv...), 0)
			w.data(1, true, body, 0)
			w.data(1, true, []byte{1}, 0)
		}),
		seed(func(w *h2Writer) { _ = w.fr.WritePing(false, [8]byte{1, 2, 3}); _ = w.fr.WritePing(true, [8]byte{}) }),
		seed(func(w *h2Writer) { w.headers(2, true, w.block(kv...), 0) }),
		seed(func(w *h2Writer) { w.headers(5, true, w.block(kv...), 0); w.headers(3, true, w.block(kv...), 0) }),
		seed(func(w *h2Writer) {
			many := slices.Clone(kv)
			for range 600 {
				many = append(many, "x-many", "v")
			}
			w.headers(1, true, w.block(many...), 0)
		}),
		seed(func(w *h2Writer) {
			w.headers(1, false, w.block(kv...), 0)
			_ = w.fr.WriteDataPadded(1, false, body[:4], make([]byte, 20))
			w.headers(1, true, w.block("x-trailer", "t"), 0)
		}),
		seed(func(w *h2Writer) {
			_ = w.fr.WritePriority(1, http2.PriorityParam{StreamDep: 1, Weight: 3})
			_ = w.fr.WriteRawFrame(0xbb, 0, 1, []byte("x"))
			_ = w.fr.WriteGoAway(0, http2.ErrCodeNo, nil)
			w.headers(1, true, w.block(kv...), 0)
		}),
		seed(func(w *h2Writer) { _ = w.fr.WriteWindowUpdate(0, 1<<31-1); _ = w.fr.WriteWindowUpdate(1, 0) }),
		seed(func(w *h2Writer) {
			_ = w.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: []byte{0x82}})
			_ = w.fr.WritePing(false, [8]byte{})
		}),
	}
}

// FuzzH2Conn feeds a connection the preface, SETTINGS and arbitrary frames, read chunk
// bytes at a time, then EOF. The connection must not panic, must end, and must write
// well-formed HTTP/2: its SETTINGS first, frames the client's Framer accepts, nothing on a
// stream after ending or resetting it, nothing after a GOAWAY with an error.
func FuzzH2Conn(f *testing.F) {
	fx := newFixture(f)
	srv := newH2Server(fx.v.Checker, logr.Discard())
	for _, s := range h2FuzzSeeds(grpcFrame(mustWire(f, envoyCheckRequest("Bearer "+fx.token(nil))))) {
		f.Add(uint16(0), s)
		f.Add(uint16(5), s)
	}
	f.Fuzz(func(t *testing.T, chunk uint16, frames []byte) {
		in := newH2Writer()
		in.out.WriteString(http2.ClientPreface)
		_ = in.fr.WriteSettings()
		in.out.Write(frames)
		checkServerFrames(t, runH2Conn(t, srv, in.out.Bytes(), int(chunk)))
	})
}

// FuzzH2Loop is FuzzH2Conn against the event-loop server over a real connection: the
// frames arrive as the loop reads them, whatever their cut. The output must be well-formed,
// the connection must end at the end of the input, and the server must serve the next
// connection.
func FuzzH2Loop(f *testing.F) {
	fx := newFixture(f)
	for _, s := range h2FuzzSeeds(grpcFrame(mustWire(f, envoyCheckRequest("Bearer "+fx.token(nil))))) {
		f.Add(s)
	}
	addr := startH2Loop(f, fx)
	f.Fuzz(func(t *testing.T, frames []byte) {
		in := newH2Writer()
		in.out.WriteString(http2.ClientPreface)
		_ = in.fr.WriteSettings()
		in.out.Write(frames)
		nc, err := net.DialTimeout("tcp", addr, h2TestWait)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = nc.Close() }()
		_ = nc.SetDeadline(time.Now().Add(h2TestWait))
		go func() {
			_, _ = nc.Write(in.out.Bytes())
			_ = nc.(*net.TCPConn).CloseWrite()
		}()
		out, err := io.ReadAll(nc)
		if err != nil && isNetTimeout(err) {
			t.Fatalf("the connection did not end at the end of its input; read %x", out)
		}
		checkServerFrames(t, out)

		c := dialH2(t, addr)
		c.sync()
		c.answer(c.open(grpcPathHealthCheck, true))
	})
}

// TestH2RefusalsAreCounted: what the transport refuses before any decision is generic to
// the client and specific in keyward_validator_grpc_refusals_total, so that an operator
// sees a misconfigured or hostile client.
func TestH2RefusalsAreCounted(t *testing.T) {
	f := newFixture(t)
	addr := startH2Loop(t, f)
	m := f.v.metrics
	count := func(reason string) float64 {
		var out dto.Metric
		if err := m.refusals.WithLabelValues(reason).Write(&out); err != nil {
			t.Fatal(err)
		}
		return out.GetCounter().GetValue()
	}
	before := map[string]float64{}
	for _, r := range []string{"http_405", "unimplemented", "goaway_PROTOCOL_ERROR"} {
		before[r] = count(r)
	}

	c := dialH2(t, addr)
	c.sync()
	c.answer(c.open(grpcPathCheck, true, ":method", "GET"))
	c.answer(c.open("/envoy.service.auth.v3.Authorization/Nope", true))
	// A HEADERS frame on an even (server) stream ends the connection.
	c.headers(2, true, c.block(grpcHeaders(grpcPathCheck)...), 0)
	c.expectGoAway(http2.ErrCodeProtocol)

	for r, n := range before {
		if got := count(r); got != n+1 {
			t.Errorf("refusals{reason=%q} went from %v to %v, want one more", r, n, got)
		}
	}
}
