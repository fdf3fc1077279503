package main

import (
	"fmt"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/keyward/keyward/internal/issuer"
	"github.com/keyward/keyward/internal/manager"
	"github.com/keyward/keyward/internal/validator"
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

// run starts one manager with the role's parts: setupControllers, setupIssuer and
// setupValidator, then mgr.Start.
func run(r role, o *options) error {
	ctx := ctrl.SetupSignalHandler()
	cfg, err := restConfig(o)
	if err != nil {
		return fmt.Errorf("cannot load kubeconfig: %w", err)
	}
	mo := manager.Options{MetricsBindAddress: o.metricsAddr, HealthProbeBindAddress: o.probeAddr}
	if r.controllers {
		mo.LeaderElection = o.leaderElect
		mo.LeaderElectionID = "keyward-controller.keyward.dev"
		mo.LeaderElectionNamespace = o.leaderElectionNamespace
	}
	mgr, err := manager.New(cfg, mo)
	if err != nil {
		return err
	}
	if r.controllers {
		if err := manager.SetupControllers(ctx, mgr, manager.ControllerOptions{PublicURL: o.publicURL}); err != nil {
			return err
		}
	}
	if r.issuer {
		if err := issuer.Setup(ctx, mgr, o.issuer.options(o.publicURL)); err != nil {
			return fmt.Errorf("cannot set up issuer: %w", err)
		}
	}
	if r.validator {
		vo, err := o.validator.options(o.publicURL)
		if err != nil {
			return err
		}
		if err := validator.Setup(ctx, mgr, vo); err != nil {
			return fmt.Errorf("cannot set up validator: %w", err)
		}
	}
	ctrl.Log.Info("Starting keyward", "role", r.name, "version", version, "publicURL", o.publicURL)
	return mgr.Start(ctx)
}
