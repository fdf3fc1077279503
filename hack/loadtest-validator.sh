#!/usr/bin/env bash
# Load test of the validator on 127.0.0.1, in one run: nginx -> static upstream (baseline),
# nginx -> keyward validator, nginx -> oauth2-proxy v7.15.6, each with Debian's wrk and the same
# repeated ES256 access token; then the validator's HTTP and gRPC front ends head to head.
# Bounded: each path gets --duration (default 10s) of load, split into --rounds (default 3)
# interleaved rounds; the whole run stops within 15 minutes.
# Not part of `make test`. Needs nginx and wrk (hack/install-deps.sh).
#
#   hack/loadtest-validator.sh [--duration 10s] [--rounds 3] [--connections 8] [--threads 2] [--nginx-workers 1]
#       [--workers 8,32,64] [--grpc-connections 1] [--oauth2-proxy-logging on|off|both]
#       [--compare-keyward path/to/another/keyward] [--validator-gomaxprocs N]
# (go run ./hack/loadtest -h lists every flag.)
set -euo pipefail
cd "$(dirname "$0")/.."

KEYWARD_CACHE="${KEYWARD_CACHE:-$HOME/.cache/keyward}"
OAUTH2_PROXY_VERSION=v7.15.6
OAUTH2_PROXY_DIR="$KEYWARD_CACHE/tools/oauth2-proxy-$OAUTH2_PROXY_VERSION"
if [[ ! -x "$OAUTH2_PROXY_DIR/oauth2-proxy" ]]; then
  echo "==> installing oauth2-proxy $OAUTH2_PROXY_VERSION into $OAUTH2_PROXY_DIR" >&2
  GOBIN="$OAUTH2_PROXY_DIR" go install "github.com/oauth2-proxy/oauth2-proxy/v7@$OAUTH2_PROXY_VERSION"
fi
for bin in /usr/sbin/nginx /usr/bin/wrk; do
  [[ -x "$bin" ]] || { echo "$bin is missing: run hack/install-deps.sh" >&2; exit 1; }
done

make build >&2
KUBEBUILDER_ASSETS="$(hack/control-plane.sh bin)"
export KUBEBUILDER_ASSETS
exec go run ./hack/loadtest -keyward bin/keyward -oauth2-proxy "$OAUTH2_PROXY_DIR/oauth2-proxy" "$@"
