package validator

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"

	"github.com/keyward/keyward/internal/token"
)

// Tests of the HTTP front end's event-loop transport (httploop.go) over loopback: its
// answers compared with fasthttp's server, pipelining, bodies, limits, timeouts, clients
// that do not read, checks that wait, graceful shutdown and load; FuzzHTTPLoop feeds it
// arbitrary bytes.
//
// Waits are bounded (httpTestWait) so that a missing answer fails instead of hanging. Where
// a test must know that the server has read what it was sent before it goes on, it looks at
// the server's connection state (loopConn.partial), not at how long anything took.

const httpTestWait = 10 * time.Second

var httpTransports = []string{HTTPTransportKeyward, HTTPTransportFastHTTP}

func testHTTPHandler(f *fixture) *httpHandler {
	return &httpHandler{checker: f.v.Checker, trusted: DefaultTrustedProxies, log: logr.Discard()}
}

// startHTTPServer serves the fixture's checker with httpServer.Start on the transport. stop
// ends it and returns what Start returned; the test's cleanup stops it too, and fails on an
// error.
func startHTTPServer(t testing.TB, f *fixture, transport string, loops int) (addr string, stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan string, 1)
	s := &httpServer{addr: "127.0.0.1:0", handler: testHTTPHandler(f), log: logr.Discard(),
		ready: func(a net.Addr) { addrc <- a.String() }, transport: transport, eventLoops: loops}
	done := make(chan error, 1)
	go func() { done <- s.Start(ctx) }()
	select {
	case addr = <-addrc:
	case err := <-done:
		cancel()
		t.Fatalf("the %s server did not start: %v", transport, err)
	}
	stop = stopper(cancel, done)
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("%s server: %v", transport, err)
		}
	})
	return addr, stop
}

func stopper(cancel func(), done <-chan error) func() error {
	return sync.OnceValue(func() error {
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(httpShutdownWait + httpTestWait):
			return errors.New("the server did not stop")
		}
	})
}

// loopOptions configures a loopServer under test; zero values keep the server's own.
type loopOptions struct {
	loops                       int
	read, write, idle, shutdown time.Duration
	// sendBuffer, if set, is the SO_SNDBUF of the accepted connections, so that a client
	// that does not read fills the server's outbound buffer soon.
	sendBuffer int
}

// startLoopServer serves h with a loopServer on loopback (serve, as httpServer.Start runs
// it). stop ends it and returns what serve returned.
func startLoopServer(t testing.TB, h *httpHandler, o loopOptions) (s *loopServer, addr string, stop func() error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s = newLoopServer(h, logr.Discard(), o.loops)
	for _, set := range []struct {
		field *time.Duration
		v     time.Duration
	}{{&s.readTimeout, o.read}, {&s.writeTimeout, o.write}, {&s.idleTimeout, o.idle}, {&s.shutdownWait, o.shutdown}} {
		if set.v > 0 {
			*set.field = set.v
		}
	}
	addr = ln.Addr().String()
	served := ln
	if o.sendBuffer > 0 {
		served = sendBufferListener{ln.(*net.TCPListener), o.sendBuffer}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.serve(ctx, served) }()
	stop = stopper(cancel, done)
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("loop server: %v", err)
		}
	})
	return s, addr, stop
}

// sendBufferListener sets the send buffer of the connections it accepts.
type sendBufferListener struct {
	*net.TCPListener
	size int
}

func (l sendBufferListener) Accept() (net.Conn, error) {
	c, err := l.AcceptTCP()
	if err != nil {
		return nil, err
	}
	_ = c.SetWriteBuffer(l.size)
	return c, nil
}

// holdsPartial reports whether a connection of the server holds part of a request: it has
// read bytes it could not answer yet (the partial-request clock runs).
func (s *loopServer) holdsPartial() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, st := range s.conns {
		if st.partial.Load() != 0 {
			return true
		}
	}
	return false
}

func (s *loopServer) connCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// waitUntil polls cond until it holds, for at most httpTestWait.
func waitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(httpTestWait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// httpClient is a raw HTTP/1.1 client connection: it writes bytes as given and reads
// answers with net/http's parser.
type httpClient struct {
	t  testing.TB
	nc *net.TCPConn
	br *bufio.Reader
}

func dialHTTP(t testing.TB, addr string) *httpClient {
	return dialHTTPWith(t, addr, &net.Dialer{Timeout: httpTestWait})
}

func dialHTTPWith(t testing.TB, addr string, d *net.Dialer) *httpClient {
	t.Helper()
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nc.Close() })
	tc := nc.(*net.TCPConn)
	_ = tc.SetNoDelay(true)
	return &httpClient{t: t, nc: tc, br: bufio.NewReader(tc)}
}

func (c *httpClient) send(raw string) {
	c.t.Helper()
	_ = c.nc.SetWriteDeadline(time.Now().Add(httpTestWait))
	if _, err := io.WriteString(c.nc, raw); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// sendAsync writes raw on a goroutine (a server may answer and close before reading all of
// it) and returns the write's outcome.
func (c *httpClient) sendAsync(raw string) <-chan error {
	errc := make(chan error, 1)
	_ = c.nc.SetWriteDeadline(time.Now().Add(httpTestWait))
	go func() {
		_, err := io.WriteString(c.nc, raw)
		errc <- err
	}()
	return errc
}

// answer is a response as read off the wire.
type answer struct {
	status int
	header http.Header
	body   string
	close  bool
	head   bool // the answer to a HEAD
}

func (a answer) String() string {
	return fmt.Sprintf("%d %v %q", a.status, a.header, a.body)
}

// readAnswer reads one HTTP/1.1 response from br: a status, a Content-Length and that many
// bytes of body (every answer of both transports has one).
func readAnswer(br *bufio.Reader, method string) (answer, error) {
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		return answer{}, err
	}
	body, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if err != nil {
		return answer{}, fmt.Errorf("the body of %d: %w", resp.StatusCode, err)
	}
	if resp.ProtoMajor != 1 || resp.ProtoMinor != 1 {
		return answer{}, fmt.Errorf("answer in %s", resp.Proto)
	}
	// fasthttp's server sends no Content-Length to HEAD.
	if len(resp.TransferEncoding) > 0 || resp.Header.Get("Content-Length") == "" && method != http.MethodHead {
		return answer{}, fmt.Errorf("answer %d without Content-Length: %v", resp.StatusCode, resp.Header)
	}
	return answer{status: resp.StatusCode, header: resp.Header, body: string(body), close: resp.Close, head: method == http.MethodHead}, nil
}

func (c *httpClient) tryRead(method string) (answer, error) {
	_ = c.nc.SetReadDeadline(time.Now().Add(httpTestWait))
	return readAnswer(c.br, method)
}

func (c *httpClient) read(method string) answer {
	c.t.Helper()
	a, err := c.tryRead(method)
	if err != nil {
		c.t.Fatalf("reading an answer: %v", err)
	}
	return a
}

// expect reads an answer to a GET and fails unless its status is want.
func (c *httpClient) expect(want int) answer {
	c.t.Helper()
	a := c.read(http.MethodGet)
	if a.status != want {
		c.t.Fatalf("answer %v, want status %d", a, want)
	}
	return a
}

// expectClosed reads until the server closes the connection (EOF or a reset), which must
// come with nothing more to read, within httpTestWait.
func (c *httpClient) expectClosed() {
	c.t.Helper()
	_ = c.nc.SetReadDeadline(time.Now().Add(httpTestWait))
	rest, err := io.ReadAll(c.br)
	if isNetTimeout(err) {
		c.t.Fatalf("the connection is still open (%d bytes read)", len(rest))
	}
	if len(rest) > 0 {
		c.t.Fatalf("unexpected bytes before the connection closed: %q", rest)
	}
}

// nothingYet fails if an answer has arrived. It is meaningful once the server is known to
// have read what was sent (it answers in the same event-loop turn, before the client could
// see that it holds part of a request).
func (c *httpClient) nothingYet() {
	c.t.Helper()
	_ = c.nc.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := c.br.Peek(1); err == nil {
		b, _ := c.br.Peek(c.br.Buffered())
		c.t.Fatalf("an answer arrived early: %q", b)
	} else if !isNetTimeout(err) {
		c.t.Fatalf("the connection ended: %v", err)
	}
}

// Requests to the sample policy.
func reqAllow(tok string) string {
	return rawRequest("GET", "/authz/api/items", testHost, [][2]string{{"Authorization", "Bearer " + tok}})
}

var (
	reqDeny     = rawRequest("GET", "/authz/api/items", testHost, nil)
	reqNotFound = rawRequest("GET", "/metrics", testHost, nil)
	// reqPublic is allowed without a token (the policy's anonymous /public/).
	reqPublic = rawRequest("GET", "/authz/public/x", testHost, nil)
)

// bodyRequest is a POST of body with Content-Length (chunked, the body being already framed).
func bodyRequest(target string, headers [][2]string, chunked bool, body string) string {
	if chunked {
		headers = append(headers, [2]string{"Transfer-Encoding", "chunked"})
	} else {
		headers = append(headers, [2]string{"Content-Length", fmt.Sprint(len(body))})
	}
	return rawRequest("POST", target, testHost, headers) + body
}

// normalize is an answer without Date, for comparing the transports; without
// Content-Length too for a HEAD, which fasthttp's server leaves out and keyward's gives as
// for a GET (0), both right (RFC 9110, section 9.3.2).
func (a answer) normalize() string {
	var lines []string
	for k, vs := range a.header {
		if k == "Date" || a.head && k == "Content-Length" {
			continue
		}
		for _, v := range vs {
			lines = append(lines, k+": "+v)
		}
	}
	slices.Sort(lines)
	return fmt.Sprintf("%d\n%s\n\n%s", a.status, strings.Join(lines, "\n"), a.body)
}

// TestHTTPTransportsAnswerAlike: keyward's event-loop transport and fasthttp's server give
// the same answers (status, header fields but Date, body) to the same bytes, and keep or
// close the connection alike; each answer is also checked against what it must be.
func TestHTTPTransportsAnswerAlike(t *testing.T) {
	f := newFixture(t)
	tok := f.token(nil)
	admin := f.token(func(c *token.Claims) { c.Groups = []string{"admin"} })
	auth := [][2]string{{"Authorization", "Bearer " + tok}}
	type hdrs = [][2]string
	cases := []struct {
		name   string
		raw    string
		method string
		want   []int
		closed bool
		check  func(t *testing.T, as []answer)
	}{
		{name: "allow with the identity headers", raw: reqAllow(tok), want: []int{200},
			check: wantHeader(0, HeaderUser, "alice", "X-Groups", "dev,ops", "Cache-Control", "no-store")},
		{name: "no token: 401 invalid_token", raw: reqDeny, want: []int{401},
			check: wantHeader(0, "Www-Authenticate", `Bearer error="invalid_token"`, HeaderUser, absent)},
		{name: "a path the token may not reach: 403 insufficient_scope", raw: rawRequest("GET", "/authz/admin/", testHost, auth), want: []int{403},
			check: wantHeader(0, "Www-Authenticate", `Bearer error="insufficient_scope"`)},
		{name: "another path: 404", raw: reqNotFound, want: []int{404}},
		{name: "a path only starting like /authz: 404", raw: rawRequest("GET", "/authzx/api", testHost, auth), want: []int{404}},
		{name: "HEAD", raw: rawRequest("HEAD", "/authz/api/items", testHost, auth), method: "HEAD", want: []int{200},
			check: wantHeader(0, HeaderUser, "alice")},
		{name: "an extension method", raw: rawRequest("PROPFIND", "/authz/dav/", testHost, auth), want: []int{200}},
		{name: "the absolute form, whose host wins", raw: rawRequest("GET", "http://"+testHost+"/authz/api/items", "other.example.test", auth), want: []int{200},
			check: wantHeader(0, HeaderUser, "alice")},
		{name: "the absolute form of another host", raw: rawRequest("GET", "http://other.example.test/authz/api/items", testHost, auth), want: []int{403}},
		{name: "HTTP/1.0 without keep-alive: answered, then closed",
			raw:  "GET /authz/api/items HTTP/1.0\r\nHost: " + testHost + "\r\nAuthorization: Bearer " + tok + "\r\n\r\n",
			want: []int{200}, closed: true, check: wantHeader(0, HeaderUser, "alice")},
		{name: "HTTP/1.0 with keep-alive: answered, kept open",
			raw:  "GET /authz/api/items HTTP/1.0\r\nHost: " + testHost + "\r\nConnection: keep-alive\r\nAuthorization: Bearer " + tok + "\r\n\r\n",
			want: []int{200}, check: wantHeader(0, HeaderUser, "alice")},
		{name: "Connection: close: answered, then closed", raw: rawRequest("GET", "/authz/api/items", testHost, append(hdrs{{"Connection", "close"}}, auth...)),
			want: []int{200}, closed: true},
		{name: "two Authorization fields: 401", raw: rawRequest("GET", "/authz/api/items", testHost, hdrs{{"Authorization", "Bearer " + tok}, {"Authorization", "Bearer " + tok}}),
			want: []int{401}},
		{name: "a trusted proxy's original request (nginx)",
			raw: rawRequest("GET", "/authz", "127.0.0.1:8081", hdrs{{"X-Original-Uri", "/admin/x"}, {"X-Original-Method", "DELETE"},
				{"X-Forwarded-Host", testHost}, {"Authorization", "Bearer " + admin}}),
			want: []int{200}, check: wantHeader(0, HeaderGroups, "admin")},
		{name: "a trusted proxy's original request (Traefik), refused by the policy",
			raw: rawRequest("GET", "/authz", "keyward:8081", hdrs{{"X-Forwarded-Method", "GET"}, {"X-Forwarded-Host", testHost},
				{"X-Forwarded-Uri", "/admin/x"}, {"Authorization", "Bearer " + tok}}),
			want: []int{403}},
		{name: "disagreeing forwarded headers: 403",
			raw: rawRequest("GET", "/authz", testHost, hdrs{{"X-Original-Uri", "/public/"}, {"X-Forwarded-Uri", "/admin/"}}), want: []int{403}},
		{name: "three pipelined requests", raw: reqAllow(tok) + reqDeny + reqNotFound, want: []int{200, 401, 404}},
		{name: "a Content-Length body", raw: bodyRequest("/authz/api/items", auth, false, "hello body") + reqDeny, want: []int{200, 401}},
		{name: "an empty Content-Length body", raw: bodyRequest("/authz/public/", nil, false, "") + reqDeny, want: []int{200, 401}},
		{name: "a chunked body", raw: bodyRequest("/authz/public/", nil, true, "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n") + reqDeny, want: []int{200, 401}},
		{name: "a chunked body with a trailer", raw: bodyRequest("/authz/public/", nil, true, "5\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n") + reqDeny, want: []int{200, 401}},
		{name: "a multipart body is not parsed",
			raw:  bodyRequest("/authz/api/items", hdrs{{"Content-Type", "multipart/form-data; boundary=xyz"}}, false, "not multipart at all") + reqPublic,
			want: []int{401, 200}},
		{name: "a body of exactly the cap", raw: bodyRequest("/authz/api/items", auth, false, strings.Repeat("b", httpMaxBodyBytes)), want: []int{200}},
		{name: "a malformed request line: 400, closed", raw: "GET\r\n\r\n", want: []int{400}, closed: true},
		{name: "a malformed header field: 400, closed", raw: "GET /authz/api HTTP/1.1\r\nHost: " + testHost + "\r\nNo colon here\r\n\r\n", want: []int{400}, closed: true},
		{name: "HTTP/1.1 without Host: 400, closed", raw: "GET /authz/api/items HTTP/1.1\r\nAuthorization: Bearer " + tok + "\r\n\r\n", want: []int{400}, closed: true},
		{name: "a header over the cap: 431, closed", raw: rawRequest("GET", "/authz/api/items", testHost, hdrs{{"Cookie", strings.Repeat("c", httpMaxHeaderBytes)}}),
			want: []int{431}, closed: true},
		{name: "a Content-Length over the cap: 413, closed", raw: rawRequest("POST", "/authz/api/items", testHost, hdrs{{"Content-Length", fmt.Sprint(httpMaxBodyBytes + 1)}}),
			want: []int{413}, closed: true},
		{name: "a chunked body over the cap: 413, closed",
			raw:  bodyRequest("/authz/public/", nil, true, strings.Repeat(fmt.Sprintf("%x\r\n%s\r\n", 64<<10, strings.Repeat("d", 64<<10)), 17)+"0\r\n\r\n"),
			want: []int{413}, closed: true},
		{name: "a broken chunked body: 400, closed", raw: bodyRequest("/authz/public/", nil, true, "5\r\nhelloXX0\r\n\r\n"), want: []int{400}, closed: true},
	}
	addrs := map[string]string{}
	for _, tr := range httpTransports {
		addrs[tr], _ = startHTTPServer(t, f, tr, 0)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := map[string][]answer{}
			for _, tr := range httpTransports {
				conn := dialHTTP(t, addrs[tr])
				written := conn.sendAsync(c.raw)
				var as []answer
				for i := range c.want {
					a, err := conn.tryRead(cmp.Or(c.method, http.MethodGet))
					if err != nil {
						t.Fatalf("%s: answer %d: %v", tr, i, err)
					}
					if a.status != c.want[i] {
						t.Errorf("%s: answer %d is %v, want status %d", tr, i, a, c.want[i])
					}
					as = append(as, a)
				}
				if c.closed {
					conn.expectClosed()
				} else {
					if err := <-written; err != nil {
						t.Fatalf("%s: %v", tr, err)
					}
					conn.send(reqPublic)
					if a := conn.expect(200); a.close {
						t.Errorf("%s: the connection is closing: %v", tr, a)
					}
				}
				if c.check != nil {
					c.check(t, as)
				}
				got[tr] = as
			}
			k, fh := got[HTTPTransportKeyward], got[HTTPTransportFastHTTP]
			for i := range min(len(k), len(fh)) {
				if k[i].normalize() != fh[i].normalize() {
					t.Errorf("answer %d differs:\nkeyward:\n%s\nfasthttp:\n%s", i, k[i].normalize(), fh[i].normalize())
				}
			}
		})
	}
}

// absent, as a value for wantHeader, is a header field that must not be there.
const absent = "\x00absent"

// wantHeader checks header fields of answer i, given as name, value pairs.
func wantHeader(i int, kv ...string) func(t *testing.T, as []answer) {
	return func(t *testing.T, as []answer) {
		t.Helper()
		for j := 0; j < len(kv); j += 2 {
			vs := as[i].header.Values(kv[j])
			if kv[j+1] == absent {
				if len(vs) != 0 {
					t.Errorf("answer %d: %s = %q, want none", i, kv[j], vs)
				}
				continue
			}
			if len(vs) != 1 || vs[0] != kv[j+1] {
				t.Errorf("answer %d: %s = %q, want %q", i, kv[j], vs, kv[j+1])
			}
		}
	}
}

// pipelinedStream is n requests, allowed (each with its own user), denied and unknown in
// turn, and the answers they must get.
func pipelinedStream(f *fixture, n int) (stream string, status []int, users []string) {
	var b strings.Builder
	for i := range n {
		switch i % 3 {
		case 0:
			user := fmt.Sprintf("user-%d", i)
			b.WriteString(reqAllow(f.token(func(c *token.Claims) { c.Subject = user })))
			status, users = append(status, 200), append(users, user)
		case 1:
			b.WriteString(reqDeny)
			status, users = append(status, 401), append(users, "")
		default:
			b.WriteString(reqNotFound)
			status, users = append(status, 404), append(users, "")
		}
	}
	return b.String(), status, users
}

// checkAnswers reads the answers of pipelinedStream, in order.
func checkAnswers(br *bufio.Reader, status []int, users []string) string {
	for i := range status {
		a, err := readAnswer(br, http.MethodGet)
		if err != nil {
			return fmt.Sprintf("answer %d: %v", i, err)
		}
		if a.status != status[i] || a.header.Get(HeaderUser) != users[i] {
			return fmt.Sprintf("answer %d is %v, want %d for %q", i, a, status[i], users[i])
		}
	}
	return ""
}

// TestHTTPLoopPipelining: requests written back to back, however the bytes are cut, are
// answered in order.
func TestHTTPLoopPipelining(t *testing.T) {
	f := newFixture(t)
	s, addr, _ := startLoopServer(t, testHTTPHandler(f), loopOptions{loops: 1})

	stream, status, users := pipelinedStream(f, 50)
	t.Run("50 requests in one write", func(t *testing.T) {
		c := dialHTTP(t, addr)
		written := c.sendAsync(stream)
		_ = c.nc.SetReadDeadline(time.Now().Add(httpTestWait))
		if why := checkAnswers(c.br, status, users); why != "" {
			t.Fatal(why)
		}
		if err := <-written; err != nil {
			t.Fatal(err)
		}
	})

	t.Run("the same, one byte per write", func(t *testing.T) {
		if len(stream) > 16<<10 {
			t.Fatalf("the stream is %d bytes: too many writes", len(stream))
		}
		c := dialHTTP(t, addr)
		errc := make(chan error, 1)
		go func() {
			_ = c.nc.SetWriteDeadline(time.Now().Add(httpTestWait))
			for i := range len(stream) {
				if _, err := c.nc.Write([]byte{stream[i]}); err != nil {
					errc <- err
					return
				}
			}
			errc <- nil
		}()
		_ = c.nc.SetReadDeadline(time.Now().Add(httpTestWait))
		if why := checkAnswers(c.br, status, users); why != "" {
			t.Fatal(why)
		}
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	})

	t.Run("two requests cut at every position", func(t *testing.T) {
		// A Content-Length body, then a chunked one with a trailer: every cut falls in a
		// request line, a header, a body or the chunked framing.
		first := bodyRequest("/authz/api/items", nil, false, "hello")
		second := bodyRequest("/authz/public/x", nil, true, "5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n")
		stream := first + second
		for cut := 1; cut < len(stream); cut++ {
			c := dialHTTP(t, addr)
			c.send(stream[:cut])
			answered := 0
			if cut >= len(first) {
				c.expect(401)
				answered = 1
			}
			if cut != len(first) {
				// The server has read the first part (and answered the first request if
				// it was all there) and waits for the rest.
				waitUntil(t, fmt.Sprintf("the server holds the %d bytes before the cut", cut), s.holdsPartial)
			}
			c.send(stream[cut:])
			for _, want := range []int{401, 200}[answered:] {
				if a, err := c.tryRead(http.MethodGet); err != nil || a.status != want {
					t.Fatalf("cut at %d (%q | %q): answer %v, %v; want %d", cut, stream[:cut], stream[cut:], a, err, want)
				}
			}
			_ = c.nc.Close()
		}
	})
}

// TestHTTPLoopBodies: a request's body is read whole before its answer (and never decided
// on part of it), and the limits on bodies hold.
func TestHTTPLoopBodies(t *testing.T) {
	f := newFixture(t)
	tok := f.token(nil)
	s, addr, _ := startLoopServer(t, testHTTPHandler(f), loopOptions{loops: 1})

	t.Run("a Content-Length body in pieces", func(t *testing.T) {
		c := dialHTTP(t, addr)
		c.send(rawRequest("POST", "/authz/api/items", testHost, [][2]string{{"Authorization", "Bearer " + tok}, {"Content-Length", "10"}}) + "hello")
		waitUntil(t, "the server holds the request", s.holdsPartial)
		c.nothingYet()
		c.send("wor")
		c.nothingYet()
		c.send("ld" + reqDeny)
		if a := c.expect(200); a.header.Get(HeaderUser) != "alice" {
			t.Errorf("answer %v", a)
		}
		c.expect(401)
	})
	t.Run("a chunked body in pieces", func(t *testing.T) {
		c := dialHTTP(t, addr)
		c.send(rawRequest("POST", "/authz/public/x", testHost, [][2]string{{"Transfer-Encoding", "chunked"}}) + "5\r\nhel")
		waitUntil(t, "the server holds the request", s.holdsPartial)
		c.nothingYet()
		for _, piece := range []string{"lo\r\n", "1", "0\r\n0123456789abcdef\r\n", "0\r\n"} {
			c.send(piece)
			c.nothingYet()
		}
		c.send("\r\n" + reqDeny)
		c.expect(200)
		c.expect(401)
	})
	t.Run("a body of the cap is served", func(t *testing.T) {
		c := dialHTTP(t, addr)
		written := c.sendAsync(bodyRequest("/authz/api/items", nil, false, strings.Repeat("b", httpMaxBodyBytes)) + reqPublic)
		c.expect(401)
		c.expect(200)
		if err := <-written; err != nil {
			t.Fatal(err)
		}
	})
	t.Run("a chunked body over the cap: 413, closed", func(t *testing.T) {
		c := dialHTTP(t, addr)
		chunk := fmt.Sprintf("%x\r\n%s\r\n", 64<<10, strings.Repeat("d", 64<<10))
		c.sendAsync(bodyRequest("/authz/public/", nil, true, strings.Repeat(chunk, 2*httpMaxBodyBytes/(64<<10))+"0\r\n\r\n"))
		if a := c.expect(413); !a.close {
			t.Errorf("413 without Connection: close: %v", a)
		}
		c.expectClosed()
	})
	t.Run("a Content-Length over the cap: 413 before the body", func(t *testing.T) {
		c := dialHTTP(t, addr)
		// No body is sent: the answer cannot wait for it.
		c.send(rawRequest("POST", "/authz/api/items", testHost, [][2]string{{"Content-Length", fmt.Sprint(httpMaxBodyBytes + 1)}}))
		if a := c.expect(413); !a.close {
			t.Errorf("413 without Connection: close: %v", a)
		}
		c.expectClosed()
	})
	t.Run("Expect: 100-continue is answered without the body, then closed", func(t *testing.T) {
		c := dialHTTP(t, addr)
		c.send(rawRequest("POST", "/authz/api/items", testHost, [][2]string{{"Authorization", "Bearer " + tok}, {"Content-Length", "100"}, {"Expect", "100-continue"}}))
		a := c.read(http.MethodPost)
		if a.status != 200 || !a.close || a.header.Get(HeaderUser) != "alice" {
			t.Errorf("answer %v, want 200 with Connection: close (no 100 Continue)", a)
		}
		c.expectClosed()
	})
}

// TestHTTPLoopConnections: what keeps or ends a connection.
func TestHTTPLoopConnections(t *testing.T) {
	f := newFixture(t)
	tok := f.token(nil)
	s, addr, _ := startLoopServer(t, testHTTPHandler(f), loopOptions{loops: 1})

	t.Run("Connection: close is answered, then the connection closed", func(t *testing.T) {
		c := dialHTTP(t, addr)
		// The request behind it is not answered.
		c.send(rawRequest("GET", "/authz/api/items", testHost, [][2]string{{"Connection", "close"}, {"Authorization", "Bearer " + tok}}) + reqDeny)
		if a := c.expect(200); !a.close {
			t.Errorf("answer without Connection: close: %v", a)
		}
		c.expectClosed()
	})
	t.Run("a malformed request is answered 400, then the connection closed", func(t *testing.T) {
		for _, raw := range []string{"GET\r\n\r\n", "GET /authz/api HTTP/1.1\r\nHost: " + testHost + "\r\nNo colon\r\n\r\n", "\x00\x01\x02 / HTTP/1.1\r\n\r\n"} {
			c := dialHTTP(t, addr)
			c.send(reqPublic + raw + reqPublic)
			c.expect(200)
			if a := c.expect(400); !a.close {
				t.Errorf("%q: answer without Connection: close: %v", raw, a)
			}
			c.expectClosed()
		}
	})
	t.Run("a header over the cap is answered 431, then the connection closed", func(t *testing.T) {
		c := dialHTTP(t, addr)
		c.sendAsync(rawRequest("GET", "/authz/api/items", testHost, [][2]string{{"Cookie", strings.Repeat("c", httpMaxHeaderBytes)}}))
		c.expect(431)
		c.expectClosed()
	})
	t.Run("a connection holding half a request does not hold the others", func(t *testing.T) {
		raw := reqAllow(tok)
		a := dialHTTP(t, addr)
		a.send(raw[:len(raw)/2])
		waitUntil(t, "the server holds half a request", s.holdsPartial)
		b := dialHTTP(t, addr)
		for range 3 {
			b.send(reqDeny)
			b.expect(401)
		}
		a.nothingYet()
		a.send(raw[len(raw)/2:])
		a.expect(200)
	})
}

// TestHTTPLoopTimeouts: a request received in part is answered 408 after the read timeout;
// an idle connection is closed after the idle timeout; a client making progress is not.
// Only upper bounds (httpTestWait) and loose lower bounds (half the timeout: the server's
// clock is coarse) are asserted.
func TestHTTPLoopTimeouts(t *testing.T) {
	f := newFixture(t)
	const read, idle = 500 * time.Millisecond, time.Second
	s, addr, _ := startLoopServer(t, testHTTPHandler(f), loopOptions{loops: 1, read: read, idle: idle, write: time.Second})

	t.Run("half a request: 408, then closed", func(t *testing.T) {
		c := dialHTTP(t, addr)
		c.send(reqPublic) // a connection that has been served
		c.expect(200)
		start := time.Now()
		c.send(reqPublic[:10])
		a := c.expect(408)
		if !a.close {
			t.Errorf("408 without Connection: close: %v", a)
		}
		c.expectClosed()
		if d := time.Since(start); d < read/2 {
			t.Errorf("closed after %v, before the read timeout %v", d, read)
		}
	})
	t.Run("a request trickling in byte by byte: 408", func(t *testing.T) {
		c := dialHTTP(t, addr)
		start := time.Now()
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			raw := reqPublic[:len(reqPublic)-1] // never complete
			for i := range len(raw) {
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
				if _, err := c.nc.Write([]byte{raw[i]}); err != nil {
					return
				}
			}
		}()
		c.expect(408)
		c.expectClosed()
		if d := time.Since(start); d < read/2 {
			t.Errorf("closed after %v, before the read timeout %v", d, read)
		}
	})
	t.Run("an idle connection is closed", func(t *testing.T) {
		c := dialHTTP(t, addr)
		c.send(reqPublic)
		c.expect(200)
		start := time.Now()
		c.expectClosed()
		if d := time.Since(start); d < idle/2 {
			t.Errorf("closed after %v, before the idle timeout %v", d, idle)
		}
		// One that never sent anything too.
		dialHTTP(t, addr).expectClosed()
	})
	t.Run("requests completed within the read timeout keep the connection", func(t *testing.T) {
		// Regression: the partial-request clock must restart with each answered request,
		// even when the read that completes one brings the start of the next, so that a
		// connection always holding part of a request is not timed out as long as each
		// request arrives within the read timeout. The test also outlasts the idle timeout.
		c := dialHTTP(t, addr)
		half := len(reqPublic) / 2
		c.send(reqPublic[:half])
		start := time.Now()
		for n := 0; time.Since(start) < 3*read+idle; n++ {
			time.Sleep(read / 10) // pacing only
			c.send(reqPublic[half:] + reqPublic[:half])
			if a := c.expect(200); a.close {
				t.Fatalf("request %d: the connection is closing: %v", n, a)
			}
			waitUntil(t, "the server holds the next request's first half", s.holdsPartial)
		}
		c.send(reqPublic[half:])
		c.expect(200)
	})
}

// TestHTTPLoopClientNotReading: a client that sends requests and does not read the answers
// has its connection closed, and the others are served meanwhile.
func TestHTTPLoopClientNotReading(t *testing.T) {
	f := newFixture(t)
	// Small socket buffers on both sides, so that unread answers pile up in the server's
	// outbound buffer rather than in the kernel's.
	smallRecv := &net.Dialer{Timeout: httpTestWait, Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) }); err != nil {
			return err
		}
		return serr
	}}
	served := func(t *testing.T, addr string) {
		t.Helper()
		b := dialHTTP(t, addr)
		b.send(reqDeny + reqPublic)
		b.expect(401)
		b.expect(200)
		_ = b.nc.Close()
	}
	// unanswered reads what the connection still delivers and checks that it ends before
	// all the requests are answered.
	unanswered := func(t *testing.T, c *httpClient, sent int) {
		t.Helper()
		_ = c.nc.SetReadDeadline(time.Now().Add(httpTestWait))
		n := 0
		for ; ; n++ {
			if _, err := readAnswer(c.br, http.MethodGet); err != nil {
				if isNetTimeout(err) {
					t.Fatalf("the connection is still open after %d answers", n)
				}
				break
			}
		}
		if n >= sent {
			t.Errorf("all %d requests were answered", sent)
		}
	}

	t.Run("answers past loopMaxOutbound", func(t *testing.T) {
		// The write timeout is far: only the outbound limit can close the connection.
		s, addr, _ := startLoopServer(t, testHTTPHandler(f), loopOptions{loops: 1, write: time.Hour, sendBuffer: 8 << 10})
		c := dialHTTPWith(t, addr, smallRecv)
		batch := strings.Repeat(reqDeny, 1000)
		_ = c.nc.SetWriteDeadline(time.Now().Add(httpTestWait))
		sent, checkedOthers := 0, false
		var err error
		for err == nil && sent < 1_000_000 {
			if _, err = io.WriteString(c.nc, batch); err == nil {
				sent += 1000
			}
			if !checkedOthers && sent >= 5000 {
				served(t, addr) // while the answers pile up
				checkedOthers = true
			}
		}
		if err == nil || isNetTimeout(err) {
			t.Fatalf("the connection was not closed after %d requests (%v)", sent, err)
		}
		// The answers of what was written were some 150 bytes each: the server has read
		// far more than loopMaxOutbound worth of requests, but closed the connection.
		waitUntil(t, "the server drops the connection", func() bool { return s.connCount() == 0 })
		unanswered(t, c, sent)
		served(t, addr)
	})
	t.Run("answers unread for the write timeout", func(t *testing.T) {
		const write = 500 * time.Millisecond
		s, addr, _ := startLoopServer(t, testHTTPHandler(f), loopOptions{loops: 1, write: write, read: time.Hour, sendBuffer: 8 << 10})
		c := dialHTTPWith(t, addr, smallRecv)
		// Some 300 KB of answers: more than the socket buffers hold, less than
		// loopMaxOutbound.
		const sent = 2000
		start := time.Now()
		c.send(strings.Repeat(reqDeny, sent))
		served(t, addr)
		waitUntil(t, "the server drops the connection", func() bool { return s.connCount() == 0 })
		if d := time.Since(start); d < write/2 {
			t.Errorf("closed after %v, before the write timeout %v", d, write)
		}
		unanswered(t, c, sent)
		served(t, addr)
	})
}

// heldExternalCheck sets the fixture up so that a request to ext.example.test with the
// returned Authorization waits for the external issuer's keys until srv.unhold (the kid is
// unknown and the issuer is being asked for its keys).
func heldExternalCheck(t *testing.T, f *fixture) (srv *heldOIDCServer, raw string) {
	srv = newHeldOIDCServer(t)
	k1, _ := externalKey(t)
	srv.jwks = (&keysSet{k1}).jwks(t)
	f.v.store.setPolicy(externalPolicy(srv.URL))
	waitFetched(t, f)
	k2, s2 := externalKey(t)
	srv.mu.Lock()
	srv.held, srv.jwks = true, (&keysSet{k1, k2}).jwks(t)
	srv.mu.Unlock()
	f.clock.SetTime(f.clock.Now().Add(time.Minute))
	tok := f.tokenWith(s2, token.TypeAccess, func(c *token.Claims) { c.Issuer = srv.URL; c.Subject = "external-user" })
	return srv, rawRequest("GET", "/authz/api", "ext.example.test", [][2]string{{"Authorization", "Bearer " + tok}})
}

func waitEntered(t *testing.T, srv *heldOIDCServer) {
	t.Helper()
	select {
	case <-srv.entered:
	case <-time.After(httpTestWait):
		t.Fatal("the unknown kid did not trigger a JWKS fetch")
	}
}

// TestHTTPLoopWaitingCheck: a check that waits for an external issuer's keys runs off the
// event loop: another connection of the same loop is served meanwhile, and the request
// pipelined behind it on its own connection is answered after it, in order.
func TestHTTPLoopWaitingCheck(t *testing.T) {
	f := newFixture(t)
	srv, raw := heldExternalCheck(t, f)
	_, addr, _ := startLoopServer(t, testHTTPHandler(f), loopOptions{loops: 1})
	tok := f.token(nil)

	a := dialHTTP(t, addr)
	a.send(raw + reqDeny)
	waitEntered(t, srv)

	b := dialHTTP(t, addr)
	for range 3 {
		b.send(reqAllow(tok) + reqNotFound)
		b.expect(200)
		b.expect(404)
	}
	a.nothingYet()
	a.send(reqPublic) // received while the check waits

	srv.unhold()
	if got := a.expect(200); got.header.Get(HeaderUser) != "external-user" {
		t.Errorf("the waiting check's answer: %v", got)
	}
	a.expect(401)
	a.expect(200)
	a.send(reqPublic) // the connection reads again
	a.expect(200)
}

// TestHTTPLoopGracefulShutdown: at shutdown the server stops accepting, closes idle
// connections, answers what it has received with Connection: close, and Start returns nil.
func TestHTTPLoopGracefulShutdown(t *testing.T) {
	t.Run("Start", func(t *testing.T) {
		f := newFixture(t)
		srv, raw := heldExternalCheck(t, f)
		addr, stop := startHTTPServer(t, f, HTTPTransportKeyward, 1)

		idle := dialHTTP(t, addr)
		idle.send(reqPublic)
		idle.expect(200)
		inFlight := dialHTTP(t, addr)
		inFlight.send(raw)
		waitEntered(t, srv)

		stopped := make(chan error, 1)
		go func() { stopped <- stop() }()
		idle.expectClosed()
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			_ = c.Close()
			t.Error("the server still accepts connections")
		}
		select {
		case err := <-stopped:
			t.Fatalf("Start returned (%v) with a check in flight", err)
		default:
		}
		srv.unhold()
		if a := inFlight.expect(200); !a.close || a.header.Get(HeaderUser) != "external-user" {
			t.Errorf("the check in flight: %v, want 200 with Connection: close", a)
		}
		inFlight.expectClosed()
		if err := <-stopped; err != nil {
			t.Errorf("Start returned %v", err)
		}
	})
	t.Run("a request received in part", func(t *testing.T) {
		f := newFixture(t)
		s, addr, stop := startLoopServer(t, testHTTPHandler(f), loopOptions{loops: 1})
		c := dialHTTP(t, addr)
		// The first request is answered as usual; the second is held in part.
		c.send(reqPublic + reqDeny[:20])
		c.expect(200)
		waitUntil(t, "the server holds the request", s.holdsPartial)
		stopped := make(chan error, 1)
		go func() { stopped <- stop() }()
		waitUntil(t, "the server drains", s.draining.Load)
		c.send(reqDeny[20:] + reqPublic)
		if a := c.expect(401); !a.close {
			t.Errorf("answer during the shutdown without Connection: close: %v", a)
		}
		c.expectClosed()
		if err := <-stopped; err != nil {
			t.Errorf("serve returned %v", err)
		}
	})
	t.Run("a request never completed is given up after shutdownWait", func(t *testing.T) {
		f := newFixture(t)
		s, addr, stop := startLoopServer(t, testHTTPHandler(f), loopOptions{loops: 1, shutdown: 300 * time.Millisecond})
		c := dialHTTP(t, addr)
		c.send(reqDeny[:20])
		waitUntil(t, "the server holds the request", s.holdsPartial)
		if err := stop(); err != nil {
			t.Errorf("serve returned %v", err)
		}
		c.expectClosed()
	})
}

// TestHTTPLoopConcurrent: many connections at once, some pipelining, all answered right.
func TestHTTPLoopConcurrent(t *testing.T) {
	f := newFixture(t)
	toks := make([]string, 5)
	for i := range toks {
		user := fmt.Sprintf("user-%d", i)
		toks[i] = f.token(func(c *token.Claims) { c.Subject = user })
	}
	_, addr, _ := startLoopServer(t, testHTTPHandler(f), loopOptions{loops: 4})
	const conns, perConn = 50, 200
	concurrently(t, conns, func(i int) string {
		nc, err := net.DialTimeout("tcp", addr, httpTestWait)
		if err != nil {
			return err.Error()
		}
		defer func() { _ = nc.Close() }()
		_ = nc.SetDeadline(time.Now().Add(3 * httpTestWait))
		br := bufio.NewReader(nc)
		batch := 1 // odd connections: one request at a time
		if i%2 == 0 {
			batch = 10
		}
		for n := 0; n < perConn; n += batch {
			var b strings.Builder
			status, users := make([]int, batch), make([]string, batch)
			for k := range batch {
				switch j := n + k + i; j % 3 {
				case 0:
					b.WriteString(reqAllow(toks[j%len(toks)]))
					status[k], users[k] = 200, fmt.Sprintf("user-%d", j%len(toks))
				case 1:
					b.WriteString(reqDeny)
					status[k] = 401
				default:
					b.WriteString(reqNotFound)
					status[k] = 404
				}
			}
			if _, err := io.WriteString(nc, b.String()); err != nil {
				return fmt.Sprintf("connection %d, request %d: %v", i, n, err)
			}
			if why := checkAnswers(br, status, users); why != "" {
				return fmt.Sprintf("connection %d, requests from %d: %s", i, n, why)
			}
		}
		return ""
	})
}

// httpFuzzSeeds are byte streams a client may send, valid and not.
func httpFuzzSeeds(tok string) []string {
	auth := [][2]string{{"Authorization", "Bearer " + tok}}
	return []string{
		reqAllow(tok),
		reqDeny,
		reqNotFound,
		reqPublic,
		reqAllow(tok) + reqDeny + reqNotFound + reqPublic,
		rawRequest("HEAD", "/authz/api/items", testHost, auth),
		rawRequest("GET", "http://"+testHost+"/authz/api/items", "other.example.test", auth),
		"GET /authz/api/items HTTP/1.0\r\nHost: " + testHost + "\r\n\r\n" + reqPublic,
		"GET /authz/api/items HTTP/1.0\r\nHost: " + testHost + "\r\nConnection: keep-alive\r\n\r\n" + reqPublic,
		rawRequest("GET", "/authz", "127.0.0.1", [][2]string{{"X-Original-Uri", "/admin/"}, {"X-Forwarded-Uri", "/public/"}, {"X-Forwarded-Host", testHost}}),
		rawRequest("GET", "/authz/api", testHost, [][2]string{{"Connection", "close"}}) + reqPublic,
		bodyRequest("/authz/api/items", nil, false, "hello") + reqPublic,
		bodyRequest("/authz/public/", nil, true, "5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n") + reqDeny,
		bodyRequest("/authz/public/", nil, true, "5\r\nhelloXX"),
		rawRequest("POST", "/authz/api", testHost, [][2]string{{"Content-Length", "10"}, {"Expect", "100-continue"}}) + reqPublic,
		rawRequest("POST", "/authz/api", testHost, [][2]string{{"Content-Length", fmt.Sprint(httpMaxBodyBytes + 1)}}),
		rawRequest("POST", "/authz/api", testHost, [][2]string{{"Content-Length", "5"}, {"Content-Length", "6"}}) + "hello!",
		rawRequest("POST", "/authz/api", testHost, [][2]string{{"Content-Length", "5"}, {"Transfer-Encoding", "chunked"}}) + "0\r\n\r\n",
		"GET\r\n\r\n",
		"\r\n\r\n" + reqPublic,
		reqPublic[:20],
		"GET /authz/api/items HTTP/1.1\r\n\r\n",
	}
}

// FuzzHTTPLoop writes arbitrary bytes to a connection of the loop server, then ends the
// connection's write side. The server must answer with well-formed HTTP/1.1 responses only
// (nothing after one that says Connection: close), close the connection, and keep serving
// others.
func FuzzHTTPLoop(f *testing.F) {
	fx := newFixture(f)
	tok := fx.token(nil)
	for _, s := range httpFuzzSeeds(tok) {
		f.Add([]byte(s))
	}
	_, addr, _ := startLoopServer(f, testHTTPHandler(fx), loopOptions{loops: 1})
	f.Fuzz(func(t *testing.T, in []byte) {
		nc, err := net.DialTimeout("tcp", addr, httpTestWait)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = nc.Close() }()
		_ = nc.SetDeadline(time.Now().Add(httpTestWait))
		go func() {
			// The server may close before reading everything: the write's error is not
			// the test's business.
			_, _ = nc.Write(in)
			_ = nc.(*net.TCPConn).CloseWrite()
		}()
		out, err := io.ReadAll(nc)
		if isNetTimeout(err) {
			t.Fatalf("the server did not close the connection; read %q", out)
		}
		rd := bytes.NewReader(out)
		br := bufio.NewReader(rd)
		for n := 0; ; n++ {
			if _, err := br.Peek(1); err == io.EOF {
				break
			}
			a, err := readAnswer(br, http.MethodGet)
			if err != nil {
				t.Fatalf("answer %d: %v; read %q", n, err, out)
			}
			switch a.status {
			case 200, 401, 403, 404, 400, 408, 413, 431:
			default:
				t.Fatalf("answer %d: status %d; read %q", n, a.status, out)
			}
			if a.close && br.Buffered()+rd.Len() > 0 {
				t.Fatalf("answer %d says Connection: close, yet more follows; read %q", n, out)
			}
		}

		c, err := net.DialTimeout("tcp", addr, httpTestWait)
		if err != nil {
			t.Fatalf("the server no longer accepts: %v", err)
		}
		defer func() { _ = c.Close() }()
		_ = c.SetDeadline(time.Now().Add(httpTestWait))
		if _, err := io.WriteString(c, reqPublic); err != nil {
			t.Fatal(err)
		}
		if a, err := readAnswer(bufio.NewReader(c), http.MethodGet); err != nil || a.status != 200 {
			t.Fatalf("a valid request after the input: %v, %v", a, err)
		}
	})
}
