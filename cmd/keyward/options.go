package main

import (
	"flag"
	"os"
	"strings"
	"time"
)

// options are the flags of keyward's roles. Each role binds the flags it uses.
type options struct {
	kubeconfig              string
	metricsAddr             string
	probeAddr               string
	leaderElect             bool
	leaderElectionNamespace string
	// publicURL is shared by the issuer and the validator: both must compute the same iss.
	publicURL string
	// watchNamespaces restricts every role's caches to these namespaces (comma-separated).
	watchNamespaces string
	// shutdownDelay is how long a stopping process stays up, unready, before it closes its
	// listeners.
	shutdownDelay time.Duration
	// issuer holds the flags of the issuer role (issuer.go).
	issuer issuerFlags
	// validator holds the flags of the validator role (validator.go).
	validator validatorFlags
	// webhook holds the admission webhook's flags, with the controllers (webhook.go).
	webhook webhookFlags
}

func (o *options) bind(fs *flag.FlagSet, r role) {
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "Path to a kubeconfig; in-cluster configuration when empty (also read from $KUBECONFIG).")
	fs.StringVar(&o.metricsAddr, "metrics-bind-address", ":9090", "Address of the Prometheus metrics endpoint; \"0\" disables it.")
	fs.StringVar(&o.probeAddr, "health-probe-bind-address", ":9091", "Address of the /healthz and /readyz probes.")
	if r.controllers {
		fs.BoolVar(&o.leaderElect, "leader-elect", true, "Elect a leader so that only one controller replica reconciles at a time.")
		ns := os.Getenv("POD_NAMESPACE")
		if ns == "" {
			ns = "default"
		}
		fs.StringVar(&o.leaderElectionNamespace, "leader-election-namespace", ns, "Namespace of the leader-election Lease (default $POD_NAMESPACE or \"default\").")
		o.webhook.bind(fs)
	}
	// Every role derives a TokenIssuer's iss: the issuer signs with it, the validator checks it,
	// the controller reports it in status.
	fs.StringVar(&o.publicURL, "public-url", "http://localhost:8080", "Public base URL of the issuer: a TokenIssuer without spec.issuer has iss {public-url}/{namespace}/{name}.")
	fs.StringVar(&o.watchNamespaces, "watch-namespaces", "", "Comma-separated namespaces to watch (the role's RBAC may then be Roles in those namespaces); every namespace when empty.")
	fs.DurationVar(&o.shutdownDelay, "shutdown-delay", 0, "On SIGTERM, fail readiness and keep serving this long before closing the listeners, so that endpoints and proxies stop sending requests first; in-flight requests are then drained.")
	if r.issuer {
		o.issuer.bind(fs)
	}
	if r.validator {
		o.validator.bind(fs)
	}
}

// namespaces returns the --watch-namespaces list; nil for every namespace.
func (o *options) namespaces() []string {
	var out []string
	for _, ns := range strings.Split(o.watchNamespaces, ",") {
		if ns = strings.TrimSpace(ns); ns != "" {
			out = append(out, ns)
		}
	}
	return out
}
