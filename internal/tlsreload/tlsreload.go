// Package tlsreload serves TLS from certificate files that change while the process runs: a
// kubernetes.io/tls Secret mounted as a volume (cert-manager renews it, the kubelet swaps the
// files) is picked up at the next handshake, without a restart.
//
// Each handshake compares the files' modification times and sizes with those of the last load
// (at most once per Options.CheckInterval); when they changed, the files are read again. A
// pair that does not load (a half-written update, a key that does not match the certificate)
// is logged and ignored: the last good pair keeps being served, and the next handshake tries
// again.
package tlsreload

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/go-logr/logr"
)

// Options name the files and tune the reloads.
type Options struct {
	// CertFile and KeyFile are the PEM certificate chain and private key (tls.crt, tls.key).
	CertFile, KeyFile string
	// ClientCAFile, when set, is a PEM bundle of the CAs client certificates must chain to:
	// every client must present a valid certificate (mutual TLS).
	ClientCAFile string
	// NextProtos are the ALPN protocols offered: "h2" for gRPC, "http/1.1" for HTTP/1.1.
	NextProtos []string
	// CheckInterval is the least time between two checks of the files; zero checks at every
	// handshake.
	CheckInterval time.Duration
	// Log receives reload messages; discarded when zero.
	Log logr.Logger
}

// Source holds the current certificate (and client CAs) loaded from the files.
type Source struct {
	opts Options

	mu        sync.Mutex
	checked   time.Time
	stamp     string
	cert      *tls.Certificate
	clientCAs *x509.CertPool
}

// New loads the files once; an error means they do not hold a usable certificate.
func New(o Options) (*Source, error) {
	if o.CertFile == "" || o.KeyFile == "" {
		return nil, errors.New("tlsreload: a certificate file and a key file are required")
	}
	if o.Log.GetSink() == nil {
		o.Log = logr.Discard()
	}
	s := &Source{opts: o}
	stamp, err := s.stampFiles()
	if err != nil {
		return nil, err
	}
	if err := s.load(stamp); err != nil {
		return nil, err
	}
	s.checked = time.Now()
	return s, nil
}

// MinVersion is the lowest TLS version served: TLS 1.2.
const MinVersion = tls.VersionTLS12

// ServerConfig is a server configuration that serves the current certificate, TLS 1.2 at
// least, and requires a client certificate signed by the client CAs when Options.ClientCAFile
// is set.
func (s *Source) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion: MinVersion,
		NextProtos: s.opts.NextProtos,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			cert, pool := s.current()
			c := &tls.Config{
				MinVersion:   MinVersion,
				NextProtos:   s.opts.NextProtos,
				Certificates: []tls.Certificate{*cert},
			}
			if pool != nil {
				c.ClientCAs = pool
				c.ClientAuth = tls.RequireAndVerifyClientCert
			}
			return c, nil
		},
	}
}

// Listener wraps ln: every accepted connection is a TLS server connection using
// ServerConfig.
func (s *Source) Listener(ln net.Listener) net.Listener {
	return tls.NewListener(ln, s.ServerConfig())
}

// current returns the certificate and client CAs to serve, reloading the files first when
// they changed.
func (s *Source) current() (*tls.Certificate, *x509.CertPool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	if s.opts.CheckInterval > 0 && now.Sub(s.checked) < s.opts.CheckInterval {
		return s.cert, s.clientCAs
	}
	s.checked = now
	stamp, err := s.stampFiles()
	switch {
	case err != nil:
		s.opts.Log.Error(err, "Cannot check the TLS files; serving the last loaded certificate")
	case stamp != s.stamp:
		if err := s.load(stamp); err != nil {
			s.opts.Log.Error(err, "Cannot reload the TLS files; serving the last loaded certificate")
		} else {
			s.opts.Log.Info("Reloaded the TLS certificate", "certFile", s.opts.CertFile)
		}
	}
	return s.cert, s.clientCAs
}

// stampFiles describes the files' current versions: modification time and size of each.
// A Secret volume replaces its files through a symbolic link; os.Stat follows it.
func (s *Source) stampFiles() (string, error) {
	var stamp string
	for _, f := range []string{s.opts.CertFile, s.opts.KeyFile, s.opts.ClientCAFile} {
		if f == "" {
			continue
		}
		fi, err := os.Stat(f)
		if err != nil {
			return "", fmt.Errorf("tlsreload: %w", err)
		}
		stamp += fmt.Sprintf("%d/%d;", fi.ModTime().UnixNano(), fi.Size())
	}
	return stamp, nil
}

// load reads the files and, when they are usable, makes them current.
func (s *Source) load(stamp string) error {
	cert, err := tls.LoadX509KeyPair(s.opts.CertFile, s.opts.KeyFile)
	if err != nil {
		return fmt.Errorf("tlsreload: cannot load %s and %s: %w", s.opts.CertFile, s.opts.KeyFile, err)
	}
	if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
		return fmt.Errorf("tlsreload: cannot parse %s: %w", s.opts.CertFile, err)
	}
	var pool *x509.CertPool
	if s.opts.ClientCAFile != "" {
		pem, err := os.ReadFile(s.opts.ClientCAFile)
		if err != nil {
			return fmt.Errorf("tlsreload: %w", err)
		}
		pool = x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("tlsreload: no PEM certificate in %s", s.opts.ClientCAFile)
		}
	}
	s.cert, s.clientCAs, s.stamp = &cert, pool, stamp
	return nil
}
