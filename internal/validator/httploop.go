package validator

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/panjf2000/gnet/v2"
	"github.com/valyala/fasthttp"
)

// The HTTP transports (Options.HTTPTransport): keyward's event-loop server (this file, ADR
// 0015), or fasthttp's server, which also serves TLS.
const (
	HTTPTransportKeyward  = "keyward"
	HTTPTransportFastHTTP = "fasthttp"
)

// Limits of the event-loop server past those it shares with fasthttp's (http.go).
const (
	// loopMaxInbound caps what a connection may have received and not yet answered: a
	// header, a body and its chunked framing. Past it the request is answered 413.
	loopMaxInbound = httpMaxHeaderBytes + 2*httpMaxBodyBytes
	// loopMaxOutbound caps the answers a connection has not read (a client pipelining
	// without reading): past it the connection is closed.
	loopMaxOutbound = 1 << 20
)

// loopServer serves a protocol (loopProto) on gnet's event loops (ADR 0015): HTTP forward
// auth (httpProto) or the gRPC Check (h2Proto). Connections are accepted from the listener
// by a goroutine and handed to a few event loops, each a goroutine that waits in
// epoll_wait, reads every ready connection, decides each complete request on the spot
// (Checker.tryCheck) and writes its answer: no goroutine per connection, so no park and
// wake-up per request. The server owns what is common: accepting, the connections' limits
// and timeouts (a reaper goroutine), and the graceful drain. For HTTP, fasthttp parses the
// requests (fasthttp.Request), so both HTTP transports read them alike; a check that would
// wait (an external issuer's keys being fetched) runs on a goroutine of its own, and its
// connection reads no further request until it is answered.
type loopServer struct {
	gnet.BuiltinEventEngine
	proto loopProto
	name  string // in errors: "HTTP forward auth server"
	log   logr.Logger
	loops int

	// Timeouts, httpReadTimeout and so on unless a test sets them.
	readTimeout, writeTimeout, idleTimeout, shutdownWait time.Duration

	draining atomic.Bool
	// now is a coarse clock (Unix nanoseconds) for the connections' timestamps, moved by
	// the reaper.
	now atomic.Int64

	mu    sync.Mutex
	conns map[gnet.Conn]*loopConn
	// open is len(conns), read without the lock.
	open atomic.Int32
}

// loopProto is a protocol served on the event loops: HTTP/1.1 forward auth (httpProto) or
// the gRPC Check over HTTP/2 (h2Proto, h2loop.go).
type loopProto interface {
	// conn is the state of a connection just accepted (on the accepting goroutine).
	conn(nc net.Conn) *loopConn
	// traffic handles what the connection holds, on its event loop, after a read or a
	// wake-up: it answers what it can, and after s.draining is set winds the connection
	// down. It returns gnet.Close to close it.
	traffic(s *loopServer, c gnet.Conn, st *loopConn) gnet.Action
	// busy reports whether the connection waits for work of its own (a check on a
	// goroutine): no read or idle timeout applies to it meanwhile.
	busy(st *loopConn) bool
	// timedOut answers a request not received within the read timeout, if the protocol
	// does, before the connection is closed.
	timedOut(c gnet.Conn)
	// closed learns that the connection is closed.
	closed(st *loopConn)
}

// loopConn is a connection's state. Fields without a comment belong to its event loop.
type loopConn struct {
	// h2 is the HTTP/2 connection (h2Proto); looping is set while h2Proto.traffic holds
	// its lock. The fields from trusted to closing are httpProto's.
	h2      *h2Conn
	looping bool
	trusted bool
	// pending: a check runs on a goroutine; its answer comes through AsyncWrite.
	pending bool
	// need is how many bytes the request being received needs, once its header is read
	// and its Content-Length known: it is not parsed again before they are there.
	need int
	// closing: answer what is decided, then close.
	closing bool
	// active is when the connection last received bytes; partial is since when it has
	// held part of a request (0: none); stuck is since when it has had answers the client
	// has not read (0: none). The reaper reads them, and sets woken before it wakes the
	// connection to have its timeouts looked at.
	active, partial, stuck atomic.Int64
	woken                  atomic.Bool
	// deadline, if not zero, is when the connection is closed unless the protocol clears
	// it first (an HTTP/2 preface not received in time).
	deadline atomic.Int64
}

// loopScratch is what an event loop needs to parse and answer requests, pooled.
type loopScratch struct {
	req  fasthttp.Request
	resp fasthttp.Response
	rd   bytes.Reader
	br   *bufio.Reader
	hdr  []byte
	out  []byte
	nw   noWaitContext
	// http10: the request being answered is HTTP/1.0, whose keep-alive is said.
	http10 bool
}

var loopScratchPool = sync.Pool{New: func() any {
	s := &loopScratch{br: bufio.NewReaderSize(nil, httpMaxHeaderBytes)}
	s.resp.Header.SetNoDefaultContentType(true)
	return s
}}

// DefaultHTTPEventLoops is the number of event loops of the HTTP transport when
// Options.HTTPEventLoops is zero: half the CPUs the process may use, at least one. A loop
// answers some 50,000 cached checks a second on one core; the other half is left to the
// proxy asking, which on the same node costs more per request than the check (ADR 0015).
func DefaultHTTPEventLoops() int { return max(1, runtime.GOMAXPROCS(0)/2) }

// newLoopServer is the HTTP forward-auth server on loops event loops
// (DefaultHTTPEventLoops when zero).
func newLoopServer(h *httpHandler, log logr.Logger, loops int) *loopServer {
	s := newLoops(httpProto{h}, "HTTP forward auth server", log, loops)
	s.readTimeout, s.writeTimeout, s.idleTimeout, s.shutdownWait = httpReadTimeout, httpWriteTimeout, httpIdleTimeout, httpShutdownWait
	return s
}

func newLoops(p loopProto, name string, log logr.Logger, loops int) *loopServer {
	if loops <= 0 {
		loops = DefaultHTTPEventLoops()
	}
	return &loopServer{proto: p, name: name, log: log, loops: loops, conns: map[gnet.Conn]*loopConn{}}
}

// serve serves ln until ctx ends, then shuts down gracefully: it stops accepting, closes
// the idle connections, answers what was received and closes the rest, within
// shutdownWait.
func (s *loopServer) serve(ctx context.Context, ln net.Listener) error {
	s.now.Store(time.Now().UnixNano())
	cli, err := gnet.NewClient(s, gnet.WithNumEventLoop(s.loops), gnet.WithLogger(gnetLogger{s.log.V(1)}),
		gnet.WithReadBufferCap(httpMaxHeaderBytes), gnet.WithTCPNoDelay(gnet.TCPNoDelay))
	if err != nil {
		return fmt.Errorf("cannot start the event loops of the %s: %w", s.name, err)
	}
	if err := cli.Start(); err != nil {
		return fmt.Errorf("cannot start the event loops of the %s: %w", s.name, err)
	}
	reaperDone := make(chan struct{})
	stopReaper := make(chan struct{})
	go func() { defer close(reaperDone); s.reap(stopReaper) }()
	defer func() {
		close(stopReaper)
		<-reaperDone
		_ = cli.Stop()
	}()
	err = serveUntilDone(ctx, s.name, func() error { return s.accept(ln, cli) })
	_ = ln.Close()
	if err != nil {
		return err
	}
	s.drain()
	return nil
}

// accept hands every accepted connection to an event loop.
func (s *loopServer) accept(ln net.Listener, cli *gnet.Client) error {
	return acceptEach(ln, s.log, func(c net.Conn) {
		st := s.proto.conn(c)
		st.active.Store(s.now.Load())
		// EnrollContext closes c once it holds a duplicate of its descriptor.
		if _, err := cli.EnrollContext(c, st); err != nil {
			s.log.V(1).Info("Cannot serve a connection", "error", err.Error())
		}
	})
}

func (s *loopServer) OnOpen(c gnet.Conn) ([]byte, gnet.Action) {
	st, ok := c.Context().(*loopConn)
	if !ok {
		return nil, gnet.Close
	}
	s.mu.Lock()
	s.conns[c] = st
	s.open.Store(int32(len(s.conns))) //nolint:gosec // connections, far below 2^31
	s.mu.Unlock()
	if s.draining.Load() {
		return nil, gnet.Close
	}
	return nil, gnet.None
}

func (s *loopServer) OnClose(c gnet.Conn, _ error) gnet.Action {
	s.mu.Lock()
	delete(s.conns, c)
	s.open.Store(int32(len(s.conns))) //nolint:gosec // connections, far below 2^31
	s.mu.Unlock()
	if st, ok := c.Context().(*loopConn); ok {
		s.proto.closed(st)
	}
	return gnet.None
}

// OnTraffic has the protocol handle what the connection holds, then looks at its limits.
func (s *loopServer) OnTraffic(c gnet.Conn) gnet.Action {
	st, ok := c.Context().(*loopConn)
	if !ok {
		return gnet.Close
	}
	// A wake from the reaper is not activity, but bytes that came with it are: a request
	// arriving as the idle timeout is looked at keeps its connection.
	woken := st.woken.Swap(false)
	if !woken || c.InboundBuffered() > 0 {
		st.active.Store(s.now.Load())
	}
	if s.proto.traffic(s, c, st) == gnet.Close {
		return gnet.Close
	}
	return s.hold(c, st, woken)
}

// httpProto is HTTP/1.1 forward auth on the event loops.
type httpProto struct{ handler *httpHandler }

func (p httpProto) conn(nc net.Conn) *loopConn {
	return &loopConn{trusted: p.handler.isTrusted(peerAddr(nc.RemoteAddr()))}
}

func (httpProto) busy(st *loopConn) bool { return st.pending }
func (httpProto) closed(*loopConn)       {}
func (httpProto) timedOut(c gnet.Conn)   { _, _ = c.Write(requestTimeout) }

// traffic answers every complete request the connection holds, in order.
func (p httpProto) traffic(s *loopServer, c gnet.Conn, st *loopConn) gnet.Action {
	if st.pending {
		return gnet.None
	}
	buf, _ := c.Peek(-1)
	if len(buf) < st.need {
		return gnet.None
	}
	sc := loopScratchPool.Get().(*loopScratch)
	defer loopScratchPool.Put(sc)
	sc.out = sc.out[:0]
	used := 0
	for used < len(buf) && !st.closing && !st.pending {
		n, ok := p.request(s, c, st, sc, buf[used:])
		if !ok {
			break
		}
		used += n
	}
	if used > 0 {
		_, _ = c.Discard(used)
		st.partial.Store(0)
	}
	if len(sc.out) > 0 {
		if _, err := c.Write(sc.out); err != nil {
			return gnet.Close
		}
		if cap(sc.out) > 64<<10 {
			sc.out = nil // a burst of answers: not kept in the pool
		}
	}
	if st.closing && !st.pending || s.draining.Load() && !st.pending && c.InboundBuffered() == 0 {
		return gnet.Close
	}
	return gnet.None
}

// hold notes what the connection holds for the reaper, and closes one past its limits;
// woken by the reaper, one past a timeout.
func (s *loopServer) hold(c gnet.Conn, st *loopConn, woken bool) gnet.Action {
	now := s.now.Load()
	in, out := c.InboundBuffered(), c.OutboundBuffered()
	switch {
	case in == 0:
		st.partial.Store(0)
	case st.partial.Load() == 0:
		st.partial.Store(now)
	}
	switch {
	case out == 0:
		st.stuck.Store(0)
	case out > loopMaxOutbound:
		return gnet.Close
	case st.stuck.Load() == 0:
		st.stuck.Store(now)
	}
	if !woken || s.proto.busy(st) {
		return gnet.None
	}
	switch d := st.deadline.Load(); {
	case d != 0 && now > d:
		return gnet.Close
	case in > 0 && now-st.partial.Load() > int64(s.readTimeout):
		s.proto.timedOut(c)
		return gnet.Close
	case out > 0 && now-st.stuck.Load() > int64(s.writeTimeout),
		in == 0 && out == 0 && now-st.active.Load() > int64(s.idleTimeout):
		return gnet.Close
	}
	return gnet.None
}

// request reads the request at the start of buf and answers it into sc.out, or runs its
// check on a goroutine. ok is false when buf holds only part of it; n is its length.
func (p httpProto) request(s *loopServer, c gnet.Conn, st *loopConn, sc *loopScratch, buf []byte) (n int, ok bool) {
	defer func() {
		if p := recover(); p != nil {
			s.log.Error(nil, "Panic in the HTTP front end", "panic", p)
			sc.reset()
			writeDecision(&sc.resp, &Decision{Status: http.StatusUnauthorized})
			st.closing = true
			sc.answer(true)
			n, ok = len(buf), true
		}
	}()
	sc.rd.Reset(buf)
	sc.br.Reset(&sc.rd)
	consumed := func() int { return len(buf) - sc.rd.Len() - sc.br.Buffered() }
	req := &sc.req
	req.Reset()
	err := req.Header.Read(sc.br)
	if err == nil {
		headerLen := consumed()
		switch cl := req.Header.ContentLength(); {
		case cl > httpMaxBodyBytes:
			err = fasthttp.ErrBodyTooLarge
		case req.MayContinue():
			// A client waiting for 100 Continue: answered without its body, which the
			// validator never reads, and the connection closed.
			st.closing = true
		default:
			// The body is never looked at: no multipart parsing (DisablePreParseMultipartForm
			// of fasthttp's server), which would take a multipart/form-data body that does
			// not parse for one not received yet, and wait for the rest until the read
			// timeout.
			if err = req.ContinueReadBody(sc.br, httpMaxBodyBytes, false); err != nil && cl >= 0 && incomplete(err) {
				st.need = headerLen + cl
			}
		}
	}
	if err != nil {
		if incomplete(err) && len(buf) <= loopMaxInbound {
			return 0, false
		}
		st.need, st.closing = 0, true
		sc.readError(err, len(buf) > loopMaxInbound)
		return len(buf), true
	}
	st.need = 0
	n = consumed()
	if req.Header.ConnectionClose() || s.draining.Load() {
		st.closing = true
	}
	sc.http10 = !req.Header.IsHTTP11()
	r, found := requestFromHTTP(&req.Header, st.trusted)
	if !found {
		sc.status(http.StatusNotFound, st.closing)
		return n, true
	}
	d, decided := p.handler.checker.tryCheck(&sc.nw, r)
	if !decided {
		st.pending = true
		go p.checkAsync(s, c, st, r, st.closing, sc.http10)
		return n, true
	}
	sc.decision(&d, st.closing)
	return n, true
}

// checkAsync decides a check that may wait, on its own goroutine, and answers it through
// the connection's event loop, which then reads the connection's next request.
func (p httpProto) checkAsync(s *loopServer, c gnet.Conn, st *loopConn, r Request, closing, http10 bool) {
	d := p.handler.checker.Check(context.Background(), r)
	sc := loopScratchPool.Get().(*loopScratch)
	sc.out, sc.http10 = sc.out[:0], http10
	sc.decision(&d, closing || s.draining.Load())
	out := bytes.Clone(sc.out)
	sc.out = sc.out[:0]
	loopScratchPool.Put(sc)
	err := c.AsyncWrite(out, func(c gnet.Conn, _ error) error {
		st.pending = false
		if st.closing || s.draining.Load() {
			return c.Close()
		}
		return c.Wake(nil) // the requests received meanwhile
	})
	if err != nil {
		_ = c.Close()
	}
}

// reset empties the answer being built: no default Content-Type, as fasthttp's server is
// configured (NoDefaultContentType).
func (sc *loopScratch) reset() {
	sc.resp.Reset()
	sc.resp.Header.SetNoDefaultContentType(true)
}

// decision appends the answer of a decision.
func (sc *loopScratch) decision(d *Decision, closing bool) {
	sc.reset()
	writeDecision(&sc.resp, d)
	sc.answer(closing)
}

// status appends an answer with a status and no body.
func (sc *loopScratch) status(code int, closing bool) {
	sc.reset()
	sc.resp.SetStatusCode(code)
	sc.answer(closing)
}

// readError appends the answer to a request that could not be read, as readError
// (http.go) answers it with fasthttp; the connection is closed after it.
func (sc *loopScratch) readError(err error, tooMuch bool) {
	sc.resp.Reset()
	code := http.StatusBadRequest
	var small *fasthttp.ErrSmallBuffer
	switch {
	case tooMuch || errors.Is(err, fasthttp.ErrBodyTooLarge):
		code = http.StatusRequestEntityTooLarge
	case errors.As(err, &small):
		code = http.StatusRequestHeaderFieldsTooLarge
	}
	sc.resp.SetStatusCode(code)
	sc.resp.Header.SetContentType("text/plain; charset=utf-8")
	sc.resp.SetBodyString(http.StatusText(code))
	sc.answer(true)
}

func (sc *loopScratch) answer(closing bool) {
	if closing {
		sc.resp.Header.SetConnectionClose()
	} else if sc.http10 {
		sc.resp.Header.Set("Connection", "keep-alive")
	}
	body := sc.resp.Body()
	sc.resp.Header.SetContentLength(len(body))
	sc.hdr = sc.resp.Header.AppendBytes(sc.hdr[:0])
	sc.out = append(append(sc.out, sc.hdr...), body...)
}

// incomplete reports whether fasthttp stopped at the end of what was received. In a chunked
// body it says so with an ErrBrokenChunk, which does not unwrap to the io.EOF it holds: its
// message ends with it ("...: EOF", "unexpected EOF"), unlike those of a broken chunk.
func incomplete(err error) bool {
	var broken fasthttp.ErrBrokenChunk
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.As(err, &broken) && strings.HasSuffix(broken.Error(), io.EOF.Error())
}

// reap moves the coarse clock and wakes the connections that may be past a timeout (hold
// decides): a request received in part for readTimeout (answered 408), answers unread for
// writeTimeout, or nothing received for idleTimeout. It stops when stop is closed.
func (s *loopServer) reap(stop <-chan struct{}) {
	tick := time.NewTicker(min(s.readTimeout, s.writeTimeout, s.idleTimeout, time.Second) / 4)
	defer tick.Stop()
	var due []gnet.Conn
	for {
		select {
		case <-stop:
			return
		case t := <-tick.C:
			now := t.UnixNano()
			s.now.Store(now)
			due = due[:0]
			s.mu.Lock()
			for c, st := range s.conns {
				partial, stuck, deadline := st.partial.Load(), st.stuck.Load(), st.deadline.Load()
				if partial != 0 && now-partial > int64(s.readTimeout) || stuck != 0 && now-stuck > int64(s.writeTimeout) ||
					now-st.active.Load() > int64(s.idleTimeout) || deadline != 0 && now > deadline {
					st.woken.Store(true)
					due = append(due, c)
				}
			}
			s.mu.Unlock()
			for _, c := range due {
				_ = c.Wake(nil)
			}
		}
	}
}

// requestTimeout is the answer to a request not received within the read timeout.
var requestTimeout = []byte("HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 15\r\n\r\nRequest Timeout")

// drain closes the idle connections, lets the others finish, and returns once none is
// left or shutdownWait has passed.
func (s *loopServer) drain() {
	s.draining.Store(true)
	deadline := time.Now().Add(s.shutdownWait)
	for {
		s.mu.Lock()
		left := make([]gnet.Conn, 0, len(s.conns))
		for c := range s.conns {
			left = append(left, c)
		}
		s.mu.Unlock()
		if len(left) == 0 || time.Now().After(deadline) {
			return
		}
		for _, c := range left {
			_ = c.Wake(nil) // closes it unless it holds a request
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// gnetLogger sends gnet's messages to the debug log.
type gnetLogger struct{ log logr.Logger }

func (l gnetLogger) Debugf(string, ...any) {}
func (l gnetLogger) Infof(format string, args ...any) {
	if l.log.Enabled() {
		l.log.Info(fmt.Sprintf(format, args...), "component", "gnet")
	}
}
func (l gnetLogger) Warnf(format string, args ...any)  { l.Infof(format, args...) }
func (l gnetLogger) Errorf(format string, args ...any) { l.Infof(format, args...) }
func (l gnetLogger) Fatalf(format string, args ...any) { l.Infof(format, args...) }
