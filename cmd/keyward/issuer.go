package main

import (
	"flag"
	"fmt"
	"net"

	"github.com/keyward/keyward/internal/issuer"
)

// issuerFlags are the flags of the issuer role.
type issuerFlags struct {
	addr string
	tls  tlsFlags
}

func (f *issuerFlags) bind(fs *flag.FlagSet) {
	fs.StringVar(&f.addr, "issuer-addr", ":8080", "Address of the issuer's token HTTP API.")
	f.tls.bind(fs, "issuer-tls", "the issuer's listener")
}

// options returns the issuer.Options the flags describe. With TLS it listens at once and
// passes the TLS listener.
func (f *issuerFlags) options(publicURL string, namespaces []string) (issuer.Options, error) {
	o := issuer.Options{Addr: f.addr, PublicURL: publicURL, Namespaces: namespaces}
	cfg, err := f.tls.config(nil, "http/1.1")
	if err != nil || cfg == nil {
		return o, err
	}
	ln, err := net.Listen("tcp", f.addr)
	if err != nil {
		return o, fmt.Errorf("cannot listen on %s: %w", f.addr, err)
	}
	o.Listener = tlsListener(ln, cfg)
	return o, nil
}
