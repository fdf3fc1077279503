#!/usr/bin/env bash
# Runs keyward's main job locally: a local control plane (etcd + kube-apiserver), keyward's
# CRDs, the keyward controller, and the samples in config/samples (a SigningKey, a users Secret
# and a TokenIssuer). Leaves everything running; `make down` stops it.
set -euo pipefail
cd "$(dirname "$0")/.."

export KEYWARD_CACHE="${KEYWARD_CACHE:-$HOME/.cache/keyward}"
RUN_DIR="${KEYWARD_RUN_DIR:-$KEYWARD_CACHE/run}"
log() { printf '[demo] %s\n' "$*" >&2; }

hack/install-deps.sh >/dev/null
[[ -x bin/keyward ]] || make build
BIN="$(hack/control-plane.sh bin)"
export PATH="$BIN:$PATH"
export KUBECONFIG="$(hack/control-plane.sh up)"

log "installing CRDs"
kubectl apply --server-side -f config/crd >/dev/null
kubectl wait --for condition=established --timeout=60s crd --all >/dev/null

log "starting keyward controller (log: $RUN_DIR/keyward.log)"
pkill -f "bin/keyward controller" >/dev/null 2>&1 || true
./bin/keyward controller --kubeconfig "$KUBECONFIG" --leader-elect=false \
  --metrics-bind-address 127.0.0.1:9090 --health-probe-bind-address 127.0.0.1:9091 \
  >"$RUN_DIR/keyward.log" 2>&1 &
echo $! >"$RUN_DIR/keyward.pid"

log "applying config/samples"
kubectl apply -k config/samples >/dev/null
kubectl -n demo wait --for condition=Ready --timeout=60s signingkey/main tokenissuer/main >/dev/null
kubectl -n demo get signingkeys,tokenissuers
log "published JWKS (ConfigMap demo/main-jwks):"
kubectl -n demo get configmap main-jwks -o jsonpath='{.data.jwks\.json}'
echo
log "running; export KUBECONFIG=$KUBECONFIG and PATH=$BIN:\$PATH to use kubectl; 'make down' stops it"
