package main

import (
	"fmt"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/keyward/keyward/internal/issuer"
	"github.com/keyward/keyward/internal/manager"
	"github.com/keyward/keyward/internal/scheme"
	"github.com/keyward/keyward/internal/validator"
	"github.com/keyward/keyward/internal/webhookcert"
)

// role says which parts of keyward a process runs.
type role struct {
	name string
	// controllers run the reconcilers, leader-elected.
	controllers bool
	// issuer and validator serve on every replica, with or without leadership.
	issuer, validator bool
}

var roles = map[string]role{
	"controller": {name: "controller", controllers: true},
	"issuer":     {name: "issuer", issuer: true},
	"validator":  {name: "validator", validator: true},
	"all":        {name: "all", controllers: true, issuer: true, validator: true},
}

// restConfig loads the kubeconfig named by --kubeconfig, or else as controller-runtime does
// (in-cluster, $KUBECONFIG, ~/.kube/config). Either way client-side rate limiting is off, as
// controller-runtime's loader turns it off (the API server's priority and fairness applies):
// client-go's default of 5 requests/s would cap an issuer at 5 logins and refreshes a second,
// each of which writes a Session.
func restConfig(o *options) (*rest.Config, error) {
	if o.kubeconfig == "" {
		return ctrl.GetConfig()
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", o.kubeconfig)
	if err != nil {
		return nil, err
	}
	if cfg.QPS == 0 {
		cfg.QPS = -1
	}
	return cfg, nil
}

// run starts one manager with the role's parts: the controllers and the admission webhook,
// the issuer and the validator, then mgr.Start.
func run(r role, o *options) error {
	// On SIGTERM the process turns unready at once and stops --shutdown-delay later; the
	// servers then drain the requests in flight.
	ctx, drainCheck := manager.GracefulStop(ctrl.SetupSignalHandler(), o.shutdownDelay)
	cfg, err := restConfig(o)
	if err != nil {
		return fmt.Errorf("cannot load kubeconfig: %w", err)
	}
	namespaces := o.namespaces()
	mo := manager.Options{MetricsBindAddress: o.metricsAddr, HealthProbeBindAddress: o.probeAddr, Namespaces: namespaces}
	var rot *webhookcert.Rotator
	if r.controllers {
		mo.LeaderElection = o.leaderElect
		mo.LeaderElectionID = "keyward-controller.keyward.dev"
		mo.LeaderElectionNamespace = o.leaderElectionNamespace
		if mo.WebhookServer, rot, err = o.webhook.server(cfg, scheme.New()); err != nil {
			return err
		}
	}
	mgr, err := manager.New(cfg, mo)
	if err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("shutdown", drainCheck); err != nil {
		return fmt.Errorf("cannot add shutdown readiness check: %w", err)
	}
	if r.controllers {
		if err := manager.SetupControllers(ctx, mgr, manager.ControllerOptions{PublicURL: o.publicURL, Namespaces: namespaces}); err != nil {
			return err
		}
		if mo.WebhookServer != nil {
			if err := setupWebhook(mgr, rot, o.publicURL); err != nil {
				return fmt.Errorf("cannot set up the admission webhook: %w", err)
			}
		}
	}
	if r.issuer {
		io, err := o.issuer.options(o.publicURL, namespaces)
		if err != nil {
			return err
		}
		if err := issuer.Setup(ctx, mgr, io); err != nil {
			return fmt.Errorf("cannot set up issuer: %w", err)
		}
	}
	if r.validator {
		vo, err := o.validator.options(o.publicURL, namespaces)
		if err != nil {
			return err
		}
		if err := validator.Setup(ctx, mgr, vo); err != nil {
			return fmt.Errorf("cannot set up validator: %w", err)
		}
	}
	ctrl.Log.Info("Starting keyward", "role", r.name, "version", version, "publicURL", o.publicURL, "namespaces", namespaces)
	return mgr.Start(ctx)
}
