// Command keyward runs keyward's roles: the controller (reconcilers), the issuer (token
// endpoints), the validator (ingress external authorization), or all three in one process.
package main

import (
	"flag"
	"fmt"
	"os"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `keyward: a Kubernetes-native JWT issuer and validator

Usage:
  keyward controller [flags]   run the controller manager (SigningKey, TokenIssuer reconcilers)
  keyward issuer [flags]       run the token service (simplejwt-compatible and OAuth2/OIDC endpoints)
  keyward validator [flags]    run the external authorization service (HTTP forward auth, Envoy gRPC)
  keyward all [flags]          run the three roles in one process (local runs, small installs)
  keyward version              print the version

Run "keyward <role> -h" for the flags of a role.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	name, args := os.Args[1], os.Args[2:]
	switch name {
	case "version", "--version":
		fmt.Println(version)
		return
	case "help", "-h", "--help":
		fmt.Print(usage)
		return
	}
	r, ok := roles[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "keyward: unknown role %q\n\n%s", name, usage)
		os.Exit(2)
	}

	fs := flag.NewFlagSet("keyward "+name, flag.ExitOnError)
	opts := &options{}
	opts.bind(fs, r)
	zapOpts := zap.Options{}
	zapOpts.BindFlags(fs)
	_ = fs.Parse(args) // ExitOnError
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zapOpts)))

	if err := run(r, opts); err != nil {
		ctrl.Log.Error(err, "keyward stopped", "role", name)
		os.Exit(1)
	}
}
