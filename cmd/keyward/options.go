package main

import (
	"flag"
	"os"
)

// options are the flags shared by keyward's roles.
type options struct {
	kubeconfig              string
	metricsAddr             string
	probeAddr               string
	leaderElect             bool
	leaderElectionNamespace string
}

func (o *options) bind(fs *flag.FlagSet) {
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "Path to a kubeconfig; in-cluster configuration when empty (also read from $KUBECONFIG).")
	fs.StringVar(&o.metricsAddr, "metrics-bind-address", ":9090", "Address of the Prometheus metrics endpoint; \"0\" disables it.")
	fs.StringVar(&o.probeAddr, "health-probe-bind-address", ":9091", "Address of the /healthz and /readyz probes.")
	fs.BoolVar(&o.leaderElect, "leader-elect", true, "Elect a leader so that only one controller replica reconciles at a time.")
	ns := os.Getenv("POD_NAMESPACE")
	if ns == "" {
		ns = "default"
	}
	fs.StringVar(&o.leaderElectionNamespace, "leader-election-namespace", ns, "Namespace of the leader-election Lease (default $POD_NAMESPACE or \"default\").")
}
