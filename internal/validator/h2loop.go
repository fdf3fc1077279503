package validator

import (
	"errors"
	"net"
	"time"

	"github.com/go-logr/logr"
	"github.com/panjf2000/gnet/v2"
	"golang.org/x/net/http2"
)

// h2Proto serves the gRPC Check over HTTP/2 on the event loops (ADR 0015): the h2Conn
// state and rules of ADR 0014, fed one whole frame at a time from what the loop read,
// instead of a goroutine per connection reading from the socket.
type h2Proto struct{ srv *h2Server }

// newH2LoopServer is the gRPC server on loops event loops (DefaultHTTPEventLoops when zero).
func newH2LoopServer(srv *h2Server, log logr.Logger, loops int) *loopServer {
	s := newLoops(h2Proto{srv}, "gRPC authorization server", log, loops)
	// A frame received in part for the preface timeout ends the connection; nothing received
	// for the idle timeout too.
	s.readTimeout, s.writeTimeout, s.idleTimeout, s.shutdownWait = h2PrefaceTimeout, h2WriteTimeout, h2IdleTimeout, grpcShutdownWait
	return s
}

func (p h2Proto) conn(nc net.Conn) *loopConn {
	st := &loopConn{h2: newH2Conn(p.srv, nil, nc.RemoteAddr())}
	st.deadline.Store(time.Now().Add(h2PrefaceTimeout).UnixNano())
	return st
}

func (h2Proto) busy(st *loopConn) bool {
	c := st.h2
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.async > 0
}

func (h2Proto) timedOut(gnet.Conn) {}

// closed drops the streams: a check still running writes nothing. gnet closes a connection
// whose write fails at once, within traffic, which holds the lock.
func (h2Proto) closed(st *loopConn) {
	if st.looping {
		st.h2.closeLocked()
		return
	}
	st.h2.close()
}

// traffic reads every whole frame the connection holds, then sends what they produced.
func (p h2Proto) traffic(s *loopServer, gc gnet.Conn, st *loopConn) gnet.Action {
	c := st.h2
	buf, _ := gc.Peek(-1)
	c.mu.Lock()
	st.looping = true
	defer func() {
		st.looping = false
		c.mu.Unlock()
	}()
	c.gc = gc
	c.alone = s.open.Load() <= 1
	if s.draining.Load() {
		p.srv.notServing.Store(true)
		c.goAwayLocked()
	}
	used := 0
	if !c.started && !c.closed {
		n := min(len(buf), len(http2.ClientPreface))
		switch {
		case string(buf[:n]) != http2.ClientPreface[:n]:
			p.refuse(c, errH2Preface)
		case n < len(http2.ClientPreface):
			return gnet.None
		default:
			used = n
			c.startLocked()
		}
	}
	for !c.closed {
		rest := buf[used:]
		if len(rest) < 9 {
			break
		}
		size := 9
		// A frame over the maximum is refused by the Framer from its header.
		if n := int(rest[0])<<16 | int(rest[1])<<8 | int(rest[2]); n <= h2MaxFrame {
			if size += n; len(rest) < size {
				break
			}
		}
		c.src.Reset(rest[:size])
		f, err := c.fr.ReadFrame()
		used += size
		if st.deadline.Load() != 0 {
			// The client preface ends with a SETTINGS frame.
			if sf, ok := f.(*http2.SettingsFrame); err != nil || !ok || sf.IsAck() {
				p.refuse(c, errors.New("the client preface is not followed by SETTINGS"))
				break
			}
			st.deadline.Store(0)
		}
		if err != nil {
			c.readErrorLocked(err)
		} else {
			c.frameLocked(f)
		}
	}
	if used > 0 {
		_, _ = gc.Discard(used)
	}
	c.returnCreditLocked()
	c.flushLocked()
	if c.closed || c.doneLocked() {
		return gnet.Close
	}
	return gnet.None
}

func (p h2Proto) refuse(c *h2Conn, err error) {
	p.srv.checker.metrics.grpcRefusal("preface")
	p.srv.log.V(1).Info("gRPC connection refused", "remote", c.remote, "error", err.Error())
	c.closed = true
}
