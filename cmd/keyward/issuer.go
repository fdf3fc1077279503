package main

import (
	"flag"

	"github.com/keyward/keyward/internal/issuer"
)

// issuerFlags are the flags of the issuer role.
type issuerFlags struct {
	addr string
}

func (f *issuerFlags) bind(fs *flag.FlagSet) {
	fs.StringVar(&f.addr, "issuer-addr", ":8080", "Address of the issuer's token HTTP API.")
}

// options returns the issuer.Options the flags describe.
func (f *issuerFlags) options(publicURL string) issuer.Options {
	return issuer.Options{Addr: f.addr, PublicURL: publicURL}
}
