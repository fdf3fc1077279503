package validator

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/go-logr/logr"
	"github.com/panjf2000/gnet/v2"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/encoding/protowire"
)

// h2grpc.go is the gRPC front end's transport (ADR 0014): an HTTP/2 server that serves
// exactly the unary methods the validator has, Authorization/Check and Health/Check. Frames
// are read and checked by golang.org/x/net/http2's Framer and header blocks decoded by its
// hpack decoder; this file keeps the connection's state (streams, flow control, settings)
// and writes the few frames it answers with. On plain TCP the connections are served by
// event loops (h2loop.go, ADR 0015); with TLS each connection has one goroutine. Either
// reads, decides (a cached check takes a few microseconds) and writes each check's answer
// as soon as it is decided, or, on a loop serving several connections, with the other
// answers of the same read; other frames' answers (SETTINGS and PING acknowledgements,
// WINDOW_UPDATE) leave with them or before the next read. A check that would wait (an
// external issuer's keys being fetched) runs on a goroutine of its own, so a connection
// never stalls behind it.

// Methods served.
const (
	grpcPathCheck       = authv3.Authorization_Check_FullMethodName
	grpcPathHealthCheck = healthpb.Health_Check_FullMethodName
)

// Limits and settings of the transport.
const (
	// h2MaxStreams is SETTINGS_MAX_CONCURRENT_STREAMS: streams a client may have open on one
	// connection (a request being received, decided or answered).
	h2MaxStreams = 1000
	// h2MaxMessage is the largest gRPC message read (as the HTTP front end's body cap); a
	// larger CheckRequest is denied.
	h2MaxMessage = httpMaxBodyBytes
	// h2StreamWindow is SETTINGS_INITIAL_WINDOW_SIZE: a stream may carry the largest message
	// and its 5-byte prefix without a WINDOW_UPDATE, and never more.
	h2StreamWindow = h2MaxMessage + 5
	// h2ConnWindow is the connection's receive window; credit comes back as data is read.
	h2ConnWindow = 4 << 20
	// h2ConnBuffer bounds the messages one connection holds while they arrive: a message
	// that does not fit is discarded as it arrives and its request refused (a Check is
	// denied), so that the connection never stalls waiting for memory.
	h2ConnBuffer = 16 << 20
	// h2MaxHeaderList is SETTINGS_MAX_HEADER_LIST_SIZE (gRPC requests have small headers;
	// the CheckRequest is in the message).
	h2MaxHeaderList = 16 << 10
	// h2PrefaceTimeout bounds the wait for a new connection's preface and first SETTINGS.
	h2PrefaceTimeout = 10 * time.Second
	// h2WriteTimeout bounds a write to the connection (each write has at least half of it): a
	// client that does not read its answers is disconnected.
	h2WriteTimeout = 10 * time.Second
	// h2IdleTimeout closes a connection on which nothing arrived for this long, give or take
	// a minute (Envoy reconnects when it needs to).
	h2IdleTimeout = 10 * time.Minute
	h2ReadBuffer  = 32 << 10
	// h2MaxFrame is the largest frame read (SETTINGS_MAX_FRAME_SIZE, its default).
	h2MaxFrame = 16384
)

// h2Server serves Authorization/Check and Health/Check over HTTP/2 (cleartext h2c, or TLS
// with ALPN h2 when its listener is a TLS listener).
type h2Server struct {
	checker *Checker
	log     logr.Logger
	// notServing is set when the server starts shutting down: health checks answer
	// NOT_SERVING from then on.
	notServing atomic.Bool

	mu       sync.Mutex
	conns    map[*h2Conn]struct{}
	shutdown bool
	wg       sync.WaitGroup
}

func newH2Server(checker *Checker, log logr.Logger) *h2Server {
	return &h2Server{checker: checker, log: log, conns: map[*h2Conn]struct{}{}}
}

// Serve accepts connections on ln until ln is closed.
func (s *h2Server) Serve(ln net.Listener) error {
	return acceptEach(ln, s.log, func(nc net.Conn) {
		c := newH2Conn(s, nc, nc.RemoteAddr())
		s.mu.Lock()
		if s.shutdown {
			s.mu.Unlock()
			_ = nc.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			c.serve()
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
	})
}

// Shutdown stops the server gracefully: health checks answer NOT_SERVING, every
// connection gets a GOAWAY and is closed once its open streams are answered. Connections
// still open when ctx ends are closed. The caller closes the listener.
func (s *h2Server) Shutdown(ctx context.Context) {
	s.notServing.Store(true)
	s.mu.Lock()
	s.shutdown = true
	for c := range s.conns {
		c.goAway()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		s.mu.Lock()
		for c := range s.conns {
			_ = c.nc.Close()
		}
		s.mu.Unlock()
		<-done
	}
}

// h2Stream is a request being received, decided or answered.
type h2Stream struct {
	id uint32
	// Set from the request's headers: the method (a grpcPath* constant, or "" for an
	// unknown one) and, when the request cannot be served, the answer it gets once its body
	// is in (status != 0).
	path       string
	badStatus  codes.Code
	badMessage string
	httpStatus string // non-empty: an HTTP error status answered instead of gRPC
	// The body: the 5-byte prefix and the message (at most h2MaxMessage bytes).
	body      []byte
	received  int  // bytes of DATA received (flow control), padding included
	oversized bool // the message is longer than h2MaxMessage, or does not fit h2ConnBuffer
	ended     bool // END_STREAM received
	answered  bool // finishLocked ran: the answer is written or waits for send window
	// Sending (guarded by h2Conn.mu): the stream's send window, and the part of the answer
	// (DATA payload, then trailers) waiting for window.
	sendWindow int64
	out        []byte
	waiting    bool // in h2Conn.blocked
	closed     bool // answered or reset: nothing more is written for it
}

// h2Conn is one client connection, served by a goroutine of its own (nc set) or by an
// event loop (gc set, h2loop.go).
type h2Conn struct {
	srv    *h2Server
	nc     net.Conn
	gc     gnet.Conn
	remote string // the client's address, for the logs
	br     *bufio.Reader
	// src is what the Framer reads on an event loop: one whole frame at a time.
	src bytes.Reader
	fr  *http2.Framer
	// hdec decodes header blocks into hdr (the block being read); reader goroutine only.
	hdec *hpack.Decoder
	hdr  h2Headers
	// noWait is the context of the checks decided on the reader goroutine (Checker.tryCheck).
	noWait noWaitContext

	mu sync.Mutex // guards everything below
	// Receiving.
	streams     map[uint32]*h2Stream
	maxStreamID uint32 // the highest stream ID the client has opened
	recvWindow  int64  // what the client may still send on the connection
	recvCredit  int    // bytes read and not yet returned to the client in a WINDOW_UPDATE
	buffered    int    // bytes of the open streams' bodies
	// Sending.
	wbuf         []byte
	sendWindow   int64 // the connection's send window
	peerWindow   int64 // the client's SETTINGS_INITIAL_WINDOW_SIZE
	peerMaxFrame int   // the client's SETTINGS_MAX_FRAME_SIZE
	blocked      []*h2Stream
	async        int // checks running on their own goroutines
	// alone: on an event loop, the server's only connection (its answers leave at once).
	alone bool
	// The deadlines last set on the connection (extendReadDeadlineLocked, flushLocked).
	readDeadline, writeDeadline time.Time
	started                     bool // the server's SETTINGS are written
	goingAway                   bool
	closed                      bool
}

// newH2Conn is a connection served by a goroutine, reading nc; with nc nil, one served by
// an event loop, reading src.
func newH2Conn(s *h2Server, nc net.Conn, remote net.Addr) *h2Conn {
	c := &h2Conn{
		srv:          s,
		nc:           nc,
		remote:       remote.String(),
		streams:      map[uint32]*h2Stream{},
		recvWindow:   h2ConnWindow,
		sendWindow:   65535,
		peerWindow:   65535,
		peerMaxFrame: 16384,
	}
	var r io.Reader = &c.src
	if nc != nil {
		c.br = bufio.NewReaderSize(nc, h2ReadBuffer)
		r = c.br
	}
	c.fr = http2.NewFramer(nil, r)
	c.fr.SetMaxReadFrameSize(h2MaxFrame)
	c.fr.SetReuseFrames()
	c.hdec = hpack.NewDecoder(4096, c.headerField)
	c.hdec.SetMaxStringLength(h2MaxHeaderList)
	return c
}

var errH2Preface = errors.New("not an HTTP/2 client preface")

// serve runs the connection until it ends.
func (c *h2Conn) serve() {
	defer c.close()
	if err := c.handshake(); err != nil {
		c.srv.checker.metrics.grpcRefusal("preface")
		c.srv.log.V(1).Info("gRPC connection refused", "remote", c.remote, "error", err.Error())
		return
	}
	for {
		if !c.frameBuffered() {
			// Everything received so far is handled: send the answers before the next read,
			// which may wait.
			c.mu.Lock()
			c.returnCreditLocked()
			c.flushLocked()
			done := c.closed || (c.goingAway && len(c.streams) == 0 && c.async == 0)
			if !done {
				// Under c.mu, so that goAway's wake-up (a deadline of now) is not undone.
				c.extendReadDeadlineLocked()
			}
			c.mu.Unlock()
			if done {
				return
			}
		}
		f, err := c.fr.ReadFrame()
		c.mu.Lock()
		if err != nil {
			c.readErrorLocked(err)
		} else {
			c.frameLocked(f)
		}
		closed := c.closed
		c.mu.Unlock()
		if closed {
			return
		}
	}
}

// extendReadDeadlineLocked keeps the read deadline h2IdleTimeout ahead, moving it at most
// once a minute rather than before every read.
func (c *h2Conn) extendReadDeadlineLocked() {
	if now := time.Now(); c.readDeadline.Sub(now) < h2IdleTimeout-time.Minute {
		c.readDeadline = now.Add(h2IdleTimeout)
		_ = c.nc.SetReadDeadline(c.readDeadline)
	}
}

// frameBuffered reports whether a whole frame is already read into the buffer, so that
// reading it will not wait for the network.
func (c *h2Conn) frameBuffered() bool {
	n := c.br.Buffered()
	if n < 9 {
		return false
	}
	h, err := c.br.Peek(9)
	if err != nil {
		return false
	}
	return n >= 9+(int(h[0])<<16|int(h[1])<<8|int(h[2]))
}

// handshake reads the client preface and sends the server's SETTINGS and the connection's
// window.
func (c *h2Conn) handshake() error {
	_ = c.nc.SetDeadline(time.Now().Add(h2PrefaceTimeout))
	var preface [len(http2.ClientPreface)]byte
	if _, err := io.ReadFull(c.br, preface[:]); err != nil {
		return err
	}
	if string(preface[:]) != http2.ClientPreface {
		return errH2Preface
	}
	c.mu.Lock()
	c.startLocked()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return errors.New("cannot write the server preface")
	}
	// The first frame must be the client's SETTINGS.
	f, err := c.fr.ReadFrame()
	if err != nil {
		return err
	}
	sf, ok := f.(*http2.SettingsFrame)
	if !ok || sf.IsAck() {
		return errors.New("the client preface is not followed by SETTINGS")
	}
	_ = c.nc.SetReadDeadline(time.Time{}) // the write deadline is flushLocked's (c.writeDeadline)
	c.mu.Lock()
	c.frameLocked(sf)
	c.mu.Unlock()
	return nil
}

// startLocked sends the server's SETTINGS and the connection's window, once the client
// preface is received.
func (c *h2Conn) startLocked() {
	c.wbuf = appendSettings(c.wbuf,
		http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: h2MaxStreams},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: h2StreamWindow},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: h2MaxHeaderList},
	)
	c.wbuf = appendWindowUpdate(c.wbuf, 0, h2ConnWindow-65535)
	c.started = true
	c.flushLocked()
}

// close ends the connection: every stream is dropped (a check still running finds its
// stream closed and writes nothing).
func (c *h2Conn) close() {
	c.mu.Lock()
	c.closeLocked()
	c.mu.Unlock()
	if c.nc != nil {
		_ = c.nc.Close()
	}
}

func (c *h2Conn) closeLocked() {
	c.closed = true
	for _, st := range c.streams {
		st.closed = true
	}
	clear(c.streams)
	c.blocked = nil
}

// goAway tells the client to open no more streams; the connection closes once the open
// ones are answered.
func (c *h2Conn) goAway() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.goAwayLocked() && c.nc != nil {
		// Wake the reader, which may be waiting for a frame that never comes.
		_ = c.nc.SetReadDeadline(time.Now())
	}
}

// goAwayLocked sends the GOAWAY, once; done is true when nothing is left to answer.
func (c *h2Conn) goAwayLocked() (done bool) {
	if c.goingAway || c.closed {
		return false
	}
	c.goingAway = true
	if !c.started {
		// No preface yet: nothing to wind down.
		c.closed = true
		if c.nc != nil {
			_ = c.nc.Close()
		}
		return false
	}
	c.wbuf = appendGoAway(c.wbuf, c.maxStreamID, http2.ErrCodeNo)
	c.flushLocked()
	return c.doneLocked()
}

// doneLocked reports whether a connection going away has nothing left to answer.
func (c *h2Conn) doneLocked() bool {
	return c.goingAway && len(c.streams) == 0 && c.async == 0
}

// readErrorLocked handles a frame the Framer refused, or a failed read: the connection
// ends. (The Framer's stream errors, e.g. a HEADERS frame depending on itself, end it too:
// such a frame's header block was not decoded, and the HPACK state would be out of step.)
func (c *h2Conn) readErrorLocked(err error) {
	var se http2.StreamError
	if errors.As(err, &se) {
		c.connErrorLocked(se.Code, se)
		return
	}
	var ce http2.ConnectionError
	if errors.As(err, &ce) {
		c.connErrorLocked(http2.ErrCode(ce), c.fr.ErrorDetail())
		return
	}
	if errors.Is(err, http2.ErrFrameTooLarge) {
		c.connErrorLocked(http2.ErrCodeFrameSize, err)
		return
	}
	if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !isTimeout(err) {
		c.srv.log.V(1).Info("gRPC connection read failed", "remote", c.remote, "error", err.Error())
	}
	c.closed = true
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// connErrorLocked ends the connection with a GOAWAY carrying code.
func (c *h2Conn) connErrorLocked(code http2.ErrCode, detail error) {
	msg := ""
	if detail != nil {
		msg = detail.Error()
	}
	c.srv.checker.metrics.grpcRefusal("goaway_" + code.String())
	c.srv.log.V(1).Info("gRPC connection error", "remote", c.remote, "code", code.String(), "detail", msg)
	c.wbuf = appendGoAway(c.wbuf, c.maxStreamID, code)
	c.flushLocked()
	c.closed = true
}

// resetLocked sends RST_STREAM and forgets the stream.
func (c *h2Conn) resetLocked(id uint32, code http2.ErrCode) {
	c.srv.checker.metrics.grpcRefusal("rst_" + code.String())
	c.wbuf = appendRSTStream(c.wbuf, id, code)
	if st := c.streams[id]; st != nil {
		c.dropLocked(st)
	}
}

// dropLocked forgets a stream and releases the connection window its data held.
func (c *h2Conn) dropLocked(st *h2Stream) {
	st.closed = true
	c.buffered -= len(st.body)
	st.body = nil
	st.out = nil
	delete(c.streams, st.id)
}

// returnCreditLocked gives connection window back to the client once a quarter of the
// window has been read.
func (c *h2Conn) returnCreditLocked() {
	if c.recvCredit < h2ConnWindow/4 {
		return
	}
	c.wbuf = appendWindowUpdate(c.wbuf, 0, uint32(c.recvCredit)) //nolint:gosec // at most h2ConnWindow
	c.recvWindow += int64(c.recvCredit)
	c.recvCredit = 0
}

// frameLocked handles one frame.
func (c *h2Conn) frameLocked(f http2.Frame) {
	switch f := f.(type) {
	case *http2.HeadersFrame:
		c.hdr = h2Headers{id: f.StreamID, endStream: f.StreamEnded()}
		c.headerBlockLocked(f.HeaderBlockFragment(), f.HeadersEnded())
	case *http2.ContinuationFrame:
		c.headerBlockLocked(f.HeaderBlockFragment(), f.HeadersEnded())
	case *http2.DataFrame:
		c.dataLocked(f)
	case *http2.SettingsFrame:
		if f.IsAck() {
			return
		}
		if err := f.ForeachSetting(c.settingLocked); err != nil {
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				c.connErrorLocked(http2.ErrCode(ce), err)
			} else {
				c.connErrorLocked(http2.ErrCodeProtocol, err)
			}
			return
		}
		c.wbuf = appendFrameHeader(c.wbuf, 0, http2.FrameSettings, http2.FlagSettingsAck, 0)
		c.sendBlockedLocked()
	case *http2.WindowUpdateFrame:
		c.windowUpdateLocked(f)
	case *http2.PingFrame:
		if !f.IsAck() {
			c.wbuf = appendFrameHeader(c.wbuf, 8, http2.FramePing, http2.FlagPingAck, 0)
			c.wbuf = append(c.wbuf, f.Data[:]...)
		}
	case *http2.RSTStreamFrame:
		if f.StreamID > c.maxStreamID {
			c.connErrorLocked(http2.ErrCodeProtocol, errors.New("RST_STREAM on an idle stream"))
			return
		}
		if st := c.streams[f.StreamID]; st != nil {
			c.dropLocked(st)
		}
	case *http2.PushPromiseFrame:
		c.connErrorLocked(http2.ErrCodeProtocol, errors.New("PUSH_PROMISE from a client"))
	case *http2.GoAwayFrame:
		// The client opens no more streams; the open ones are still answered.
	default:
		// PRIORITY and unknown frame types are ignored; CONTINUATION comes with its HEADERS.
	}
}

func (c *h2Conn) settingLocked(s http2.Setting) error {
	if err := s.Valid(); err != nil {
		return err
	}
	switch s.ID {
	case http2.SettingInitialWindowSize:
		delta := int64(s.Val) - c.peerWindow
		c.peerWindow = int64(s.Val)
		for _, st := range c.streams {
			st.sendWindow += delta
			if st.sendWindow > math.MaxInt32 {
				return http2.ConnectionError(http2.ErrCodeFlowControl)
			}
		}
	case http2.SettingMaxFrameSize:
		c.peerMaxFrame = int(s.Val)
	}
	return nil
}

func (c *h2Conn) windowUpdateLocked(f *http2.WindowUpdateFrame) {
	inc := int64(f.Increment)
	if f.StreamID == 0 {
		c.sendWindow += inc
		if c.sendWindow > math.MaxInt32 {
			c.connErrorLocked(http2.ErrCodeFlowControl, errors.New("connection send window above 2^31-1"))
			return
		}
	} else if st := c.streams[f.StreamID]; st != nil {
		st.sendWindow += inc
		if st.sendWindow > math.MaxInt32 {
			c.resetLocked(st.id, http2.ErrCodeFlowControl)
			return
		}
	} else if f.StreamID > c.maxStreamID {
		c.connErrorLocked(http2.ErrCodeProtocol, errors.New("WINDOW_UPDATE on an idle stream"))
		return
	}
	c.sendBlockedLocked()
}

// h2Headers is what the transport reads of a request's header block, decoded field by
// field as it arrives (h2Conn.headerField): nothing else of the block is kept.
type h2Headers struct {
	id        uint32
	endStream bool
	encoded   int // bytes of the block so far
	size      int // RFC 9113 header list size so far
	truncated bool
	post      bool   // :method POST
	path      string // grpcPathCheck, grpcPathHealthCheck, or "" for another
	grpcCT    bool   // content-type application/grpc[+...|;...]
	encoding  bool   // grpc-encoding other than identity
}

// headerField is the HPACK decoder's emit function.
func (c *h2Conn) headerField(hf hpack.HeaderField) {
	h := &c.hdr
	h.size += int(hf.Size())
	if h.size > h2MaxHeaderList {
		h.truncated = true
		return
	}
	switch hf.Name {
	case ":method":
		h.post = hf.Value == "POST"
	case ":path":
		switch hf.Value {
		case grpcPathCheck:
			h.path = grpcPathCheck
		case grpcPathHealthCheck:
			h.path = grpcPathHealthCheck
		default:
			h.path = ""
		}
	case "content-type":
		rest, ok := strings.CutPrefix(hf.Value, "application/grpc")
		h.grpcCT = ok && (rest == "" || rest[0] == '+' || rest[0] == ';')
	case "grpc-encoding":
		h.encoding = hf.Value != "identity"
	}
}

// headerBlockLocked decodes a fragment of a header block (HEADERS, then CONTINUATION: the
// Framer keeps them together) and, at its end, handles the request's headers.
func (c *h2Conn) headerBlockLocked(frag []byte, end bool) {
	c.hdr.encoded += len(frag)
	if c.hdr.encoded > 2*h2MaxHeaderList {
		// Far beyond the limit: not worth decoding (what x/net/http2's server does too).
		c.connErrorLocked(http2.ErrCodeProtocol, errors.New("header block too large"))
		return
	}
	if _, err := c.hdec.Write(frag); err != nil {
		c.connErrorLocked(http2.ErrCodeCompression, err)
		return
	}
	if !end {
		return
	}
	if err := c.hdec.Close(); err != nil {
		c.connErrorLocked(http2.ErrCodeCompression, err)
		return
	}
	c.headersLocked(&c.hdr)
}

// headersLocked opens a stream (or ends one with trailers, which gRPC clients do not send).
// Header fields other than those h2Headers keeps are not validated: they are not used.
func (c *h2Conn) headersLocked(h *h2Headers) {
	id := h.id
	if st := c.streams[id]; st != nil {
		switch {
		case st.ended:
			c.resetLocked(id, http2.ErrCodeStreamClosed)
		case !h.endStream:
			c.resetLocked(id, http2.ErrCodeProtocol)
		case st.answered:
			// Answered before its end, the answer waiting for send window.
			st.ended = true
		default:
			st.ended = true
			c.finishLocked(st)
		}
		return
	}
	if id%2 == 0 || id <= c.maxStreamID {
		c.connErrorLocked(http2.ErrCodeProtocol, errors.New("HEADERS on a closed or server stream"))
		return
	}
	c.maxStreamID = id
	if c.goingAway || len(c.streams) >= h2MaxStreams {
		c.resetLocked(id, http2.ErrCodeRefusedStream)
		return
	}
	st := &h2Stream{id: id, sendWindow: c.peerWindow}
	c.streams[id] = st
	switch {
	case h.truncated:
		st.httpStatus = "431"
	case !h.post:
		st.httpStatus = "405"
	case !h.grpcCT:
		st.httpStatus = "415"
	case h.path == "":
		st.badStatus, st.badMessage = codes.Unimplemented, "unknown method"
	case h.encoding:
		st.badStatus, st.badMessage = codes.Unimplemented, "compression not supported"
	default:
		st.path = h.path
	}
	st.ended = h.endStream
	if st.ended || st.path == "" {
		// A request that cannot be served is answered at once, its body unread.
		c.finishLocked(st)
	}
}

// dataLocked collects a stream's message.
func (c *h2Conn) dataLocked(f *http2.DataFrame) {
	n := int(f.Length) // padding included: it counts for flow control
	c.recvWindow -= int64(n)
	if c.recvWindow < 0 {
		c.connErrorLocked(http2.ErrCodeFlowControl, errors.New("DATA beyond the connection window"))
		return
	}
	c.recvCredit += n
	st := c.streams[f.StreamID]
	switch {
	case st == nil && f.StreamID > c.maxStreamID:
		c.connErrorLocked(http2.ErrCodeProtocol, errors.New("DATA on an idle stream"))
		return
	case st == nil:
		// A stream answered (or reset) before the client finished sending: what was already
		// on its way is ignored (RFC 9113, section 5.1).
		return
	case st.ended:
		c.resetLocked(st.id, http2.ErrCodeStreamClosed)
		return
	case st.answered:
		// Answered before its end (finishLocked), the answer waiting for send window: the
		// rest of the request is ignored.
		return
	}
	st.received += n
	if st.received > h2StreamWindow {
		c.resetLocked(st.id, http2.ErrCodeFlowControl)
		return
	}
	data := f.Data()
	if have := len(st.body); have < 5 && have+len(data) >= 5 {
		// The prefix is complete: a message longer than h2MaxMessage is refused unread.
		var prefix [5]byte
		copy(prefix[copy(prefix[:], st.body):], data)
		st.oversized = binary.BigEndian.Uint32(prefix[1:]) > h2MaxMessage
	}
	if !st.oversized && c.buffered+len(data) > h2ConnBuffer {
		// The connection holds too many unfinished messages: this one is refused, rather
		// than every stream on the connection stalling.
		st.oversized = true
	}
	st.ended = f.StreamEnded()
	if st.oversized {
		// Answered now, without the rest of the message (the client is told to stop).
		c.finishLocked(st)
		return
	}
	st.body = append(st.body, data...)
	c.buffered += len(data)
	if st.ended {
		c.finishLocked(st)
	}
}

// finishLocked answers a stream: at the end of its request, or before it when the request
// cannot be served (its answer does not depend on the rest).
func (c *h2Conn) finishLocked(st *h2Stream) {
	st.answered = true
	switch {
	case st.httpStatus != "":
		c.srv.checker.metrics.grpcRefusal("http_" + st.httpStatus)
		c.writeHeadersLocked(st, httpErrorBlock(st.httpStatus), true)
		c.answeredLocked(st)
		return
	case st.badStatus != codes.OK:
		c.srv.checker.metrics.grpcRefusal("unimplemented")
		c.trailersOnlyLocked(st, st.badStatus, st.badMessage)
		return
	}
	msg, err := grpcMessage(st.body, st.oversized)
	switch st.path {
	case grpcPathHealthCheck:
		if err != nil {
			c.trailersOnlyLocked(st, codes.Internal, err.Error())
			return
		}
		c.healthLocked(st, msg)
	case grpcPathCheck:
		// The body is this stream's own and is never modified: the request's strings can
		// point into it.
		in := &checkRequest{alias: true}
		if err != nil {
			in.err = err
		} else {
			in.err = in.unmarshal(msg)
		}
		req := Request{Protocol: ProtocolGRPC, Invalid: ReasonMalformedRequest}
		if in.err == nil {
			req = in.request()
		}
		d, ok := c.srv.checker.tryCheck(&c.noWait, req)
		if ok {
			c.respondLocked(st, checkResponse(&d))
			if c.gc == nil || c.alone {
				// Sent at once: with one connection, batching the answers of a read made
				// client and server take turns (29k against 39k checks/s under h2load).
				// Among several connections on an event loop, the answers of a read leave
				// together: the loop serves the others meanwhile (60k against 45k on two).
				c.flushLocked()
			}
			return
		}
		// The decision waits (for an external issuer's keys): decide on a goroutine.
		c.async++
		go func() {
			d := c.srv.checker.Check(context.Background(), req)
			c.mu.Lock()
			defer c.mu.Unlock()
			c.async--
			if !st.closed && !c.closed {
				c.respondLocked(st, checkResponse(&d))
			}
			c.kickLocked()
		}()
	}
}

var (
	errGRPCNoMessage  = errors.New("no request message")
	errGRPCTrailing   = errors.New("more than one request message")
	errGRPCCompressed = errors.New("compressed message without grpc-encoding")
	errGRPCTooLarge   = errors.New("request message too large")
)

// grpcMessage is the one message of a unary request's body (5-byte prefix, message).
func grpcMessage(body []byte, oversized bool) ([]byte, error) {
	switch {
	case oversized:
		return nil, errGRPCTooLarge
	case len(body) < 5:
		return nil, errGRPCNoMessage
	case body[0] != 0:
		return nil, errGRPCCompressed
	}
	n, have := int64(binary.BigEndian.Uint32(body[1:5])), int64(len(body)-5)
	switch {
	case have < n:
		return nil, errGRPCNoMessage
	case have > n:
		return nil, errGRPCTrailing
	}
	return body[5:], nil
}

// healthLocked answers grpc.health.v1.Health/Check for the server ("") and the
// Authorization service: SERVING until the server shuts down.
func (c *h2Conn) healthLocked(st *h2Stream, msg []byte) {
	service, err := healthService(msg)
	switch {
	case err != nil:
		c.trailersOnlyLocked(st, codes.Internal, "cannot decode the request message")
	case service != "" && service != authv3.Authorization_ServiceDesc.ServiceName:
		c.trailersOnlyLocked(st, codes.NotFound, "unknown service")
	case c.srv.notServing.Load():
		c.respondLocked(st, healthNotServing)
	default:
		c.respondLocked(st, healthServing)
	}
}

// healthService reads HealthCheckRequest.service (field 1).
func healthService(msg []byte) (string, error) {
	var service string
	err := walkMessage(msg, func(num protowire.Number, typ protowire.Type, v []byte) error {
		if num == 1 && typ == protowire.BytesType {
			if !utf8.Valid(v) {
				return errInvalidUTF8
			}
			service = string(v)
		}
		return nil
	})
	return service, err
}

var (
	healthServing    = encodeHealth(healthpb.HealthCheckResponse_SERVING)
	healthNotServing = encodeHealth(healthpb.HealthCheckResponse_NOT_SERVING)
)

func encodeHealth(s healthpb.HealthCheckResponse_ServingStatus) []byte {
	return protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), uint64(s)) //nolint:gosec // a small enum value
}

// respondLocked answers a stream with one message and grpc-status 0.
func (c *h2Conn) respondLocked(st *h2Stream, msg []byte) {
	c.writeHeadersLocked(st, h2ResponseHeaders, false)
	n := 5 + len(msg)
	if int64(n) <= c.sendWindow && int64(n) <= st.sendWindow && n <= c.peerMaxFrame {
		// The usual case: the message in one DATA frame, straight into the buffer.
		c.wbuf = appendFrameHeader(c.wbuf, n, http2.FrameData, 0, st.id)
		c.wbuf = binary.BigEndian.AppendUint32(append(c.wbuf, 0), uint32(len(msg))) //nolint:gosec // a few kilobytes
		c.wbuf = append(c.wbuf, msg...)
		c.sendWindow -= int64(n)
		st.sendWindow -= int64(n)
		c.endStreamLocked(st)
		return
	}
	st.out = binary.BigEndian.AppendUint32(make([]byte, 1, n), uint32(len(msg))) //nolint:gosec // a few kilobytes
	st.out = append(st.out, msg...)
	c.sendLocked(st)
}

// trailersOnlyLocked answers a stream with a gRPC error and no message.
func (c *h2Conn) trailersOnlyLocked(st *h2Stream, code codes.Code, msg string) {
	c.writeHeadersLocked(st, grpcErrorBlock(code, msg), true)
	c.answeredLocked(st)
}

// answeredLocked forgets a stream whose answer is complete. A client still sending its
// request is asked to stop with RST_STREAM NO_ERROR (RFC 9113, section 8.1).
func (c *h2Conn) answeredLocked(st *h2Stream) {
	if !st.ended {
		c.wbuf = appendRSTStream(c.wbuf, st.id, http2.ErrCodeNo)
	}
	c.dropLocked(st)
}

// writeHeadersLocked writes a header block (which always fits one frame) on the stream.
func (c *h2Conn) writeHeadersLocked(st *h2Stream, block []byte, end bool) {
	flags := http2.FlagHeadersEndHeaders
	if end {
		flags |= http2.FlagHeadersEndStream
	}
	c.wbuf = appendFrameHeader(c.wbuf, len(block), http2.FrameHeaders, flags, st.id)
	c.wbuf = append(c.wbuf, block...)
}

// sendLocked writes what the send windows allow of the stream's pending DATA (st.out),
// then the trailers; a stream that has to wait for window goes to c.blocked.
func (c *h2Conn) sendLocked(st *h2Stream) {
	for len(st.out) > 0 {
		n := int(min(int64(len(st.out)), int64(c.peerMaxFrame), c.sendWindow, st.sendWindow))
		if n <= 0 {
			if !st.waiting {
				st.waiting = true
				c.blocked = append(c.blocked, st)
			}
			return
		}
		c.wbuf = appendFrameHeader(c.wbuf, n, http2.FrameData, 0, st.id)
		c.wbuf = append(c.wbuf, st.out[:n]...)
		st.out = st.out[n:]
		c.sendWindow -= int64(n)
		st.sendWindow -= int64(n)
	}
	c.endStreamLocked(st)
}

// endStreamLocked sends the trailers of a successful call.
func (c *h2Conn) endStreamLocked(st *h2Stream) {
	c.wbuf = appendFrameHeader(c.wbuf, len(h2TrailersOK), http2.FrameHeaders, http2.FlagHeadersEndHeaders|http2.FlagHeadersEndStream, st.id)
	c.wbuf = append(c.wbuf, h2TrailersOK...)
	c.answeredLocked(st)
}

// sendBlockedLocked retries the streams waiting for send window, in order.
func (c *h2Conn) sendBlockedLocked() {
	if len(c.blocked) == 0 || c.sendWindow <= 0 {
		return
	}
	blocked := c.blocked
	c.blocked = nil
	for i, st := range blocked {
		st.waiting = false
		if st.closed {
			continue
		}
		c.sendLocked(st)
		if c.sendWindow <= 0 {
			c.blocked = append(c.blocked, blocked[i+1:]...)
			return
		}
	}
}

// kickLocked sends what a goroutine other than the connection's reader appended (an answer
// decided on its own goroutine): on an event loop, by waking the loop, which alone writes.
func (c *h2Conn) kickLocked() {
	if c.closed {
		return
	}
	if c.gc != nil {
		_ = c.gc.Wake(nil)
		return
	}
	c.returnCreditLocked()
	c.flushLocked()
	if c.doneLocked() && !c.closed {
		_ = c.nc.SetReadDeadline(time.Now())
	}
}

// flushLocked writes the buffered frames to the connection. On an event loop it is called
// on the loop only.
func (c *h2Conn) flushLocked() {
	if len(c.wbuf) == 0 || c.closed {
		c.wbuf = c.wbuf[:0]
		return
	}
	if c.gc != nil {
		// gnet keeps what the socket does not take; the loop server bounds it.
		if _, err := c.gc.Write(c.wbuf); err != nil {
			c.closed = true
		}
		c.wbuf = c.wbuf[:0]
		return
	}
	if now := time.Now(); c.writeDeadline.Sub(now) < h2WriteTimeout/2 {
		// Moved only when less than half of it is left: not a timer change per write.
		c.writeDeadline = now.Add(h2WriteTimeout)
		_ = c.nc.SetWriteDeadline(c.writeDeadline)
	}
	if _, err := c.nc.Write(c.wbuf); err != nil {
		c.closed = true
		_ = c.nc.Close()
	}
	if cap(c.wbuf) > 64<<10 {
		c.wbuf = nil
	} else {
		c.wbuf = c.wbuf[:0]
	}
}

// Frame encoding (RFC 9113 section 4.1).

func appendFrameHeader(b []byte, length int, typ http2.FrameType, flags http2.Flags, id uint32) []byte {
	//nolint:gosec // length < 2^24 (the largest frame is 16,384 bytes), id < 2^31
	b = append(b, byte(length>>16), byte(length>>8), byte(length), byte(typ), byte(flags))
	return binary.BigEndian.AppendUint32(b, id)
}

func appendSettings(b []byte, settings ...http2.Setting) []byte {
	b = appendFrameHeader(b, 6*len(settings), http2.FrameSettings, 0, 0)
	for _, s := range settings {
		b = binary.BigEndian.AppendUint16(b, uint16(s.ID))
		b = binary.BigEndian.AppendUint32(b, s.Val)
	}
	return b
}

func appendWindowUpdate(b []byte, id, inc uint32) []byte {
	return binary.BigEndian.AppendUint32(appendFrameHeader(b, 4, http2.FrameWindowUpdate, 0, id), inc)
}

func appendRSTStream(b []byte, id uint32, code http2.ErrCode) []byte {
	return binary.BigEndian.AppendUint32(appendFrameHeader(b, 4, http2.FrameRSTStream, 0, id), uint32(code))
}

func appendGoAway(b []byte, lastID uint32, code http2.ErrCode) []byte {
	b = appendFrameHeader(b, 8, http2.FrameGoAway, 0, 0)
	b = binary.BigEndian.AppendUint32(b, lastID)
	return binary.BigEndian.AppendUint32(b, uint32(code))
}

// Header blocks. Every field is either in the static table (":status: 200", index 8) or a
// literal without indexing, so no block depends on the connection's HPACK state and each is
// encoded once.
var (
	h2ResponseHeaders = hpackBlock(":status", "200", "content-type", "application/grpc")
	h2TrailersOK      = hpackBlock("grpc-status", "0")
	h2HTTPErrors      = map[string][]byte{
		"405": hpackBlock(":status", "405", "allow", "POST"),
		"415": hpackBlock(":status", "415"),
		"431": hpackBlock(":status", "431"),
	}
)

func httpErrorBlock(status string) []byte { return h2HTTPErrors[status] }

// grpcErrorBlock is the trailers-only answer of a gRPC error (msg is ASCII without '%').
func grpcErrorBlock(code codes.Code, msg string) []byte {
	return hpackBlock(":status", "200", "content-type", "application/grpc",
		"grpc-status", strconv.Itoa(int(code)), "grpc-message", msg)
}

// hpackBlock encodes name, value pairs.
func hpackBlock(kv ...string) []byte {
	var b []byte
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i] == ":status" && kv[i+1] == "200" {
			b = append(b, 0x80|8) // indexed: static table entry 8
			continue
		}
		b = append(b, 0x00) // literal without indexing, new name
		b = hpackString(b, kv[i])
		b = hpackString(b, kv[i+1])
	}
	return b
}

// hpackString encodes a string literal without Huffman coding (RFC 7541 section 5.2).
func hpackString(b []byte, s string) []byte {
	n := len(s)
	if n < 127 {
		b = append(b, byte(n))
	} else {
		b = append(b, 127)
		n -= 127
		for n >= 128 {
			b = append(b, byte(n&0x7f|0x80)) //nolint:gosec // 7 bits
			n >>= 7
		}
		b = append(b, byte(n))
	}
	return append(b, s...)
}
