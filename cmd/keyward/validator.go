package main

import (
	"flag"
	"fmt"
	"net/netip"
	"strings"

	"github.com/keyward/keyward/internal/validator"
)

// validatorFlags are the flags of the validator role. --public-url is shared with the issuer
// role (issuerFlags): both must compute the same iss.
type validatorFlags struct {
	authzAddr      string
	grpcAddr       string
	trustedProxies string
	allowUnmatched bool
	allowHSKeys    bool
	tls            tlsFlags
	grpcTLS        tlsFlags
	grpcClientCA   string
	grpcTransport  string
	httpTransport  string
	eventLoops     int
}

func (f *validatorFlags) bind(fs *flag.FlagSet) {
	fs.StringVar(&f.authzAddr, "authz-addr", validator.DefaultAuthzAddr, "Address of the HTTP forward-auth endpoint, path /authz; empty disables it.")
	fs.StringVar(&f.grpcAddr, "authz-grpc-addr", validator.DefaultGRPCAddr, "Address of the Envoy ext_authz v3 gRPC service and gRPC health; empty disables it.")
	fs.StringVar(&f.grpcTransport, "authz-grpc-transport", validator.GRPCTransportKeyward, "gRPC server of the ext_authz service: keyward (its own unary HTTP/2 server, the faster) or grpc-go (also serves Health/Watch).")
	fs.StringVar(&f.httpTransport, "authz-http-transport", validator.HTTPTransportKeyward, "HTTP server of the forward-auth endpoint: keyward (event loops, the faster) or fasthttp; with --authz-tls-cert it is always fasthttp.")
	fs.IntVar(&f.eventLoops, "authz-event-loops", 0, "Event loops of each keyward transport (HTTP, and gRPC without TLS); 0 is half the usable CPUs, at least 1.")
	fs.StringVar(&f.trustedProxies, "trusted-proxies", "127.0.0.0/8,::1/128", "Comma-separated CIDRs of the proxies whose X-Forwarded-* and X-Original-* headers are trusted; empty trusts none.")
	fs.BoolVar(&f.allowUnmatched, "allow-unmatched", false, "Allow requests to hosts no AccessPolicy names; denied by default.")
	fs.BoolVar(&f.allowHSKeys, "allow-hs-keys", false, "Read SigningKey key-set Secrets to validate HS256/384/512 tokens; needs Secret read permission.")
	f.tls.bind(fs, "authz-tls", "the HTTP forward-auth listener")
	f.grpcTLS.bind(fs, "authz-grpc-tls", "the gRPC listener")
	fs.StringVar(&f.grpcClientCA, "authz-grpc-client-ca", "", "PEM file of the CAs whose client certificates the gRPC listener requires (mutual TLS, e.g. from Envoy); needs --authz-grpc-tls-cert. Reloaded when it changes.")
}

// options returns the validator.Options the flags describe.
func (f *validatorFlags) options(publicURL string, namespaces []string) (validator.Options, error) {
	o := validator.Options{
		AuthzAddr:      f.authzAddr,
		GRPCAddr:       f.grpcAddr,
		GRPCTransport:  f.grpcTransport,
		HTTPTransport:  f.httpTransport,
		EventLoops:     f.eventLoops,
		PublicURL:      publicURL,
		AllowUnmatched: f.allowUnmatched,
		AllowHSKeys:    f.allowHSKeys,
		TrustedProxies: []netip.Prefix{},
		Namespaces:     namespaces,
	}
	for _, s := range strings.Split(f.trustedProxies, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return o, fmt.Errorf("invalid --trusted-proxies entry %q: %w", s, err)
		}
		o.TrustedProxies = append(o.TrustedProxies, p.Masked())
	}
	var err error
	if o.HTTPTLS, err = f.tls.config(nil, "http/1.1"); err != nil {
		return o, err
	}
	if f.httpTransport != validator.HTTPTransportKeyward && f.httpTransport != validator.HTTPTransportFastHTTP {
		return o, fmt.Errorf("invalid --authz-http-transport %q: keyward or fasthttp", f.httpTransport)
	}
	if f.eventLoops < 0 || f.eventLoops > 1024 {
		return o, fmt.Errorf("invalid --authz-event-loops %d: 0 to 1024", f.eventLoops)
	}
	if f.grpcTransport != validator.GRPCTransportKeyward && f.grpcTransport != validator.GRPCTransportGRPCGo {
		return o, fmt.Errorf("invalid --authz-grpc-transport %q: keyward or grpc-go", f.grpcTransport)
	}
	if f.grpcClientCA != "" && f.grpcTLS.cert == "" {
		return o, fmt.Errorf("--authz-grpc-client-ca needs --authz-grpc-tls-cert and --authz-grpc-tls-key")
	}
	if o.GRPCTLS, err = f.grpcTLS.config(&f.grpcClientCA, "h2"); err != nil {
		return o, err
	}
	return o, nil
}
