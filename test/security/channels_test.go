package security

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The three channels a token reaches keyward through.

// httpAuthz sends a raw HTTP/1.1 request to the validator's forward-auth front end, from
// 127.0.0.1 (untrusted) or from trustedPeer, and returns the status and header of the answer.
func httpAuthz(ctx context.Context, raw string, trusted bool) (int, http.Header, error) {
	d := net.Dialer{Timeout: 5 * time.Second}
	if trusted {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(trustedPeer)}
	}
	conn, err := d.DialContext(ctx, "tcp", suite.authzAddr)
	if err != nil {
		return 0, nil, err
	}
	defer func() { _ = conn.Close() }()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	// Write while reading: a server that refuses an oversized request answers and closes
	// before it has read all of it.
	werr := make(chan error, 1)
	go func() { _, err := io.WriteString(conn, raw); werr <- err }()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		reset := func(e error) bool { return errors.Is(e, syscall.ECONNRESET) || errors.Is(e, syscall.EPIPE) }
		if reset(err) || reset(<-werr) {
			// The server reset the connection before its answer could be read.
			return codeReset, nil, nil
		}
		return 0, nil, err
	}
	_ = resp.Body.Close()
	return resp.StatusCode, resp.Header, nil
}

// codeReset is httpAuthz's status when the server reset the connection (after refusing a
// request too large to read) before its answer arrived.
const codeReset = -1

// grpcAuthz asks the gRPC front end. It returns the CheckResponse's code, or the RPC's
// error code when the call failed.
func grpcAuthz(ctx context.Context, req *authv3.CheckRequest) (codes.Code, *authv3.CheckResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := suite.grpc.Check(ctx, req)
	if err != nil {
		if s, ok := status.FromError(err); ok && s.Code() != codes.Unknown {
			return s.Code(), nil, nil
		}
		return codes.Unknown, nil, err
	}
	return codes.Code(resp.GetStatus().GetCode()), resp, nil
}

// verifyAt posts {"token": tok} to an issuer's /api/token/verify/ and returns the status and
// the body's "code" member ("token_not_valid" on a refused token). The body is written by
// hand, so that a token with invalid UTF-8 reaches the server as it is.
func verifyAt(ctx context.Context, k *issuerKeys, tok string) (int, string, error) {
	body := `{"token":` + jsonString(tok) + `}`
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, k.verifyURL(), strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := httpClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer func() { _ = resp.Body.Close() }()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, "", err
	}
	var m struct {
		Code string `json:"code"`
	}
	_ = json.Unmarshal(data, &m)
	return resp.StatusCode, m.Code, nil
}

var httpClient = &http.Client{Timeout: 20 * time.Second}

// jsonString quotes s as a JSON string, escaping what JSON requires and leaving every other
// byte, invalid UTF-8 included, as it is.
func jsonString(s string) string {
	var b bytes.Buffer
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c < 0x20:
			fmt.Fprintf(&b, `\u%04x`, c)
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// grpcCodeOf maps an HTTP status of the decision to the gRPC code the front end answers.
func grpcCodeOf(status int) codes.Code {
	switch status {
	case 200:
		return codes.OK
	case 403:
		return codes.PermissionDenied
	default:
		return codes.Unauthenticated
	}
}
