package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"net"
	"time"

	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/keyward/keyward/internal/tlsreload"
)

// tlsFlags name a listener's certificate files: --<prefix>-cert and --<prefix>-key.
type tlsFlags struct {
	prefix    string
	cert, key string
}

func (f *tlsFlags) bind(fs *flag.FlagSet, prefix, what string) {
	f.prefix = prefix
	fs.StringVar(&f.cert, prefix+"-cert", "", "PEM certificate chain (tls.crt of a kubernetes.io/tls Secret) for "+what+"; serves TLS 1.2+ when set, plain text otherwise. Reloaded when the file changes.")
	fs.StringVar(&f.key, prefix+"-key", "", "PEM private key (tls.key) for "+what+"; required with --"+prefix+"-cert.")
}

// tlsCheckInterval is the least time between two checks of the certificate files.
const tlsCheckInterval = 10 * time.Second

// config returns the TLS configuration of the listener, nil when no certificate is set.
// clientCA, when it names a file, requires client certificates signed by its CAs.
func (f *tlsFlags) config(clientCA *string, nextProto string) (*tls.Config, error) {
	if f.cert == "" && f.key == "" {
		return nil, nil
	}
	if f.cert == "" || f.key == "" {
		return nil, fmt.Errorf("--%s-cert and --%s-key go together", f.prefix, f.prefix)
	}
	o := tlsreload.Options{
		CertFile: f.cert, KeyFile: f.key, NextProtos: []string{nextProto},
		CheckInterval: tlsCheckInterval, Log: ctrl.Log.WithName("tls").WithValues("listener", f.prefix),
	}
	if clientCA != nil {
		o.ClientCAFile = *clientCA
	}
	src, err := tlsreload.New(o)
	if err != nil {
		return nil, fmt.Errorf("cannot load --%s-cert/--%s-key: %w", f.prefix, f.prefix, err)
	}
	return src.ServerConfig(), nil
}

func tlsListener(ln net.Listener, cfg *tls.Config) net.Listener { return tls.NewListener(ln, cfg) }
