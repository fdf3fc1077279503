package main

import (
	"fmt"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/keyward/keyward/internal/manager"
)

func restConfig(o *options) (*rest.Config, error) {
	if o.kubeconfig != "" {
		return clientcmd.BuildConfigFromFlags("", o.kubeconfig)
	}
	return ctrl.GetConfig()
}

func runController(o *options) error {
	ctx := ctrl.SetupSignalHandler()
	cfg, err := restConfig(o)
	if err != nil {
		return fmt.Errorf("cannot load kubeconfig: %w", err)
	}
	mgr, err := manager.New(cfg, manager.Options{
		MetricsBindAddress:      o.metricsAddr,
		HealthProbeBindAddress:  o.probeAddr,
		LeaderElection:          o.leaderElect,
		LeaderElectionID:        "keyward-controller.keyward.dev",
		LeaderElectionNamespace: o.leaderElectionNamespace,
	})
	if err != nil {
		return err
	}
	if err := manager.SetupControllers(ctx, mgr); err != nil {
		return err
	}
	ctrl.Log.Info("Starting keyward controller", "version", version)
	return mgr.Start(ctx)
}
