package validator

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/go-logr/logr"
	"github.com/valyala/fasthttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
)

// startFrontEnds serves the fixture's checker on loopback through both front ends.
func startFrontEnds(b *testing.B, f *fixture) (httpAddr, grpcAddr string) {
	return startFrontEndsT(b, f)
}

func startFrontEndsT(b testing.TB, f *fixture) (httpAddr, grpcAddr string) {
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	addrs := make(chan string, 2)
	hs := &httpServer{addr: "127.0.0.1:0", handler: &httpHandler{checker: f.v.Checker, trusted: DefaultTrustedProxies}, log: logr.Discard(),
		ready: func(a net.Addr) { addrs <- "http " + a.String() }}
	gs := &grpcServer{addr: "127.0.0.1:0", checker: f.v.Checker, log: logr.Discard(), ready: func(a net.Addr) { addrs <- "grpc " + a.String() }}
	go func() { _ = hs.Start(ctx) }()
	go func() { _ = gs.Start(ctx) }()
	for range 2 {
		a := <-addrs
		if a[:4] == "http" {
			httpAddr = a[5:]
		} else {
			grpcAddr = a[5:]
		}
	}
	return httpAddr, grpcAddr
}

// BenchmarkFrontEnds sends cached-token checks over loopback through each front end, the
// load generator in the same process (so it measures client and server together).
func BenchmarkFrontEnds(b *testing.B) {
	f := newFixture(b)
	tok := f.token(nil)
	httpAddr, grpcAddr := startFrontEnds(b, f)
	b.Run("http", func(b *testing.B) {
		tr := &http.Transport{MaxIdleConnsPerHost: 64}
		cl := &http.Client{Transport: tr, Timeout: 5 * time.Second}
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				req, _ := http.NewRequest(http.MethodGet, "http://"+httpAddr+"/authz/api/items", nil)
				req.Host = testHost
				req.Header.Set("Authorization", "Bearer "+tok)
				resp, err := cl.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
				if resp.StatusCode != 200 {
					b.Fatal(resp.StatusCode)
				}
			}
		})
	})
	b.Run("grpc", func(b *testing.B) {
		req := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{
			Http: &authv3.AttributeContext_HttpRequest{Method: "GET", Host: testHost, Path: "/api/items",
				Headers: map[string]string{"authorization": "Bearer " + tok, ":authority": testHost, ":path": "/api/items", ":method": "GET"}},
		}}}
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				b.Fatal(err)
			}
			defer func() { _ = conn.Close() }()
			c := authv3.NewAuthorizationClient(conn)
			for pb.Next() {
				resp, err := c.Check(context.Background(), req)
				if err != nil || resp.GetStatus().GetCode() != 0 {
					b.Fatal(err, resp.GetStatus())
				}
			}
		})
	})
}

// BenchmarkHandlers runs one cached-token check through each front end's translation, the
// decision core and the answer, in process (no network): what each front end adds to Check.
func BenchmarkHandlers(b *testing.B) {
	f := newFixture(b)
	tok := f.token(nil)
	b.Run("http/nginx", func(b *testing.B) {
		benchHTTPHandler(b, f, rawRequest("GET", "/authz", "keyward", [][2]string{{"X-Original-URI", "/api/items"}, {"X-Original-Method", "GET"},
			{"X-Forwarded-Host", testHost}, {"Authorization", "Bearer " + tok}, {"User-Agent", "curl/8"}, {"Accept", "*/*"}}))
	})
	b.Run("http/envoy", func(b *testing.B) {
		benchHTTPHandler(b, f, rawRequest("GET", "/authz/api/items", testHost, [][2]string{{"Authorization", "Bearer " + tok}}))
	})
	small := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{
		Http: &authv3.AttributeContext_HttpRequest{Method: "GET", Host: testHost, Path: "/api/items",
			Headers: map[string]string{"authorization": "Bearer " + tok, ":authority": testHost, ":path": "/api/items", ":method": "GET"}},
	}}}
	b.Run("grpc/small", func(b *testing.B) { benchGRPCHandler(b, f, small) })
	b.Run("grpc/envoy", func(b *testing.B) { benchGRPCHandler(b, f, envoyCheckRequest("Bearer "+tok)) })
	// The generated message's decoding, for comparison with checkRequest's.
	b.Run("proto-unmarshal/envoy", func(b *testing.B) {
		data := mustWire(b, envoyCheckRequest("Bearer "+tok))
		b.ReportAllocs()
		for b.Loop() {
			var in authv3.CheckRequest
			if err := proto.Unmarshal(data, &in); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// benchGRPCHandler decodes the request's wire form, checks and encodes the answer, as the
// gRPC server's codec and handler do.
func benchGRPCHandler(b *testing.B, f *fixture, in *authv3.CheckRequest) {
	g := &grpcAuthz{checker: f.v.Checker}
	data := mem.BufferSlice{mem.SliceBuffer(mustWire(b, in))}
	ctx := b.Context()
	b.ReportAllocs()
	for b.Loop() {
		var r checkRequest
		if err := testCodec.Unmarshal(data, &r); err != nil || r.err != nil {
			b.Fatal(err, r.err)
		}
		resp := g.check(ctx, &r)
		if len(resp) == len(denyUnauthorized) || len(resp) == len(denyForbidden) {
			b.Fatal("denied")
		}
		out, err := testCodec.Marshal(resp)
		if err != nil {
			b.Fatal(err)
		}
		out.Free()
	}
}

func benchHTTPHandler(b *testing.B, f *fixture, raw string) {
	h := &httpHandler{checker: f.v.Checker, trusted: DefaultTrustedProxies, log: logr.Discard()}
	var req fasthttp.Request
	if err := req.Read(bufio.NewReader(strings.NewReader(raw))); err != nil {
		b.Fatal(err)
	}
	var ctx fasthttp.RequestCtx
	ctx.Init(&req, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}, nil)
	b.ReportAllocs()
	for b.Loop() {
		ctx.Response.Reset()
		h.serve(&ctx)
		if ctx.Response.StatusCode() != 200 {
			b.Fatal(ctx.Response.StatusCode())
		}
	}
}
