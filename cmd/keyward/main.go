// Command keyward runs keyward's roles: the controller (reconcilers), and later the issuer and
// the validator.
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
  keyward version              print the version

Run "keyward <role> -h" for the flags of a role.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	role, args := os.Args[1], os.Args[2:]
	var run func(*options) error
	switch role {
	case "controller":
		run = runController
	case "version", "--version":
		fmt.Println(version)
		return
	case "help", "-h", "--help":
		fmt.Print(usage)
		return
	default:
		fmt.Fprintf(os.Stderr, "keyward: unknown role %q\n\n%s", role, usage)
		os.Exit(2)
	}

	fs := flag.NewFlagSet("keyward "+role, flag.ExitOnError)
	opts := &options{}
	opts.bind(fs)
	zapOpts := zap.Options{}
	zapOpts.BindFlags(fs)
	_ = fs.Parse(args) // ExitOnError
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zapOpts)))

	if err := run(opts); err != nil {
		ctrl.Log.Error(err, "keyward stopped", "role", role)
		os.Exit(1)
	}
}
