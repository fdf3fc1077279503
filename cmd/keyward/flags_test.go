package main

import (
	"flag"
	"strings"
	"testing"
)

func parse(t *testing.T, role string, args ...string) *options {
	t.Helper()
	fs := flag.NewFlagSet(role, flag.ContinueOnError)
	o := &options{}
	o.bind(fs, roles[role])
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return o
}

func TestWatchNamespaces(t *testing.T) {
	for _, role := range []string{"controller", "issuer", "validator", "all"} {
		o := parse(t, role, "--watch-namespaces", " team-a, ,team-b ")
		if got := strings.Join(o.namespaces(), "|"); got != "team-a|team-b" {
			t.Errorf("%s: namespaces %q", role, got)
		}
		if got := parse(t, role).namespaces(); got != nil {
			t.Errorf("%s: namespaces %q without the flag, want every namespace (nil)", role, got)
		}
	}
}

func TestTLSFlagsAreChecked(t *testing.T) {
	cases := []struct {
		name, role string
		args       []string
		want       string
	}{
		{"a certificate without a key", "validator", []string{"--authz-tls-cert", "x.crt"}, "--authz-tls-cert and --authz-tls-key go together"},
		{"a key without a certificate", "issuer", []string{"--issuer-tls-key", "x.key"}, "--issuer-tls-cert and --issuer-tls-key go together"},
		{"a client CA without a server certificate", "validator", []string{"--authz-grpc-client-ca", "ca.crt"}, "--authz-grpc-client-ca needs --authz-grpc-tls-cert"},
		{"files that do not exist", "validator", []string{"--authz-grpc-tls-cert", "/nonexistent/tls.crt", "--authz-grpc-tls-key", "/nonexistent/tls.key"}, "cannot load --authz-grpc-tls-cert"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o := parse(t, c.role, c.args...)
			var err error
			if c.role == "issuer" {
				_, err = o.issuer.options("http://x", nil)
			} else {
				_, err = o.validator.options("http://x", nil)
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("got %v, want an error containing %q", err, c.want)
			}
		})
	}
	// Without TLS flags the listeners are plain.
	vo, err := parse(t, "validator").validator.options("http://x", nil)
	if err != nil || vo.HTTPTLS != nil || vo.GRPCTLS != nil {
		t.Errorf("plain validator: %v, TLS %v %v", err, vo.HTTPTLS, vo.GRPCTLS)
	}
}
