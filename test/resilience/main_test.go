package resilience

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
)

// publicURL is every role's --public-url: a TokenIssuer's iss is {publicURL}/{ns}/{name}.
const publicURL = "http://keyward.test"

// nginxBin is Debian's nginx (hack/install-deps.sh installs it).
const nginxBin = "/usr/sbin/nginx"

var (
	cp         *controlPlane
	k8s        client.Client
	keywardBin string
	// suiteDir holds the control plane's data, the binary and every test's logs.
	suiteDir string
)

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	logOut := io.Discard
	if os.Getenv("KEYWARD_TEST_LOGS") != "" {
		logOut = os.Stderr
	}
	ctrl.SetLogger(zap.New(zap.WriteTo(logOut), zap.UseDevMode(true)))
	binDir := os.Getenv("KUBEBUILDER_ASSETS")
	if binDir == "" {
		fmt.Fprintln(os.Stderr, "KUBEBUILDER_ASSETS is not set: run `make test-resilience`, or export KUBEBUILDER_ASSETS=$(hack/control-plane.sh bin)")
		return 1
	}
	if _, err := exec.LookPath(nginxBin); err != nil {
		fmt.Fprintln(os.Stderr, "nginx is missing: run hack/install-deps.sh:", err)
		return 1
	}
	var err error
	if suiteDir, err = os.MkdirTemp("", "keyward-resilience-"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	keep := os.Getenv("KEYWARD_KEEP_LOGS") != ""
	defer func() {
		if keep {
			fmt.Fprintln(os.Stderr, "logs kept in", suiteDir)
			return
		}
		_ = os.RemoveAll(suiteDir)
	}()
	if keywardBin, err = buildKeyward(suiteDir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if cp, err = startControlPlane(binDir, suiteDir); err != nil {
		fmt.Fprintln(os.Stderr, "cannot start the control plane:", err)
		return 1
	}
	defer cp.down()
	if err := cp.installCRDs(); err != nil {
		fmt.Fprintln(os.Stderr, "cannot install the CRDs:", err)
		return 1
	}
	if k8s, err = cp.client(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	code := m.Run()
	if code != 0 && !keep {
		for _, p := range []*proc{cp.etcd, cp.api} {
			fmt.Fprintf(os.Stderr, "----- %s (tail) -----\n%s\n", p.name, strings.TrimSpace(p.tail(3000)))
		}
	}
	return code
}
