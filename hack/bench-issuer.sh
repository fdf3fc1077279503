#!/usr/bin/env bash
# Measures keyward's issuer on this machine: logins/s (bcrypt cost 10), refreshes/s (Sessions
# through a local kube-apiserver) and client_credentials grants/s, with p50/p99, by a load
# generator (hack/loadgen) against `keyward issuer` on 127.0.0.1. Everything it starts is
# stopped at the end. Results are printed; docs/benchmarks.md records them.
#
#   hack/bench-issuer.sh            # default durations
#   BENCH_SECONDS=30 hack/bench-issuer.sh
set -euo pipefail
cd "$(dirname "$0")/.."

export KEYWARD_RUN_DIR="${KEYWARD_RUN_DIR:-/tmp/keyward-bench}"
export APISERVER_PORT="${APISERVER_PORT:-16443}" ETCD_PORT="${ETCD_PORT:-12379}"
ISSUER_ADDR="${ISSUER_ADDR:-127.0.0.1:18080}"
SECONDS_EACH="${BENCH_SECONDS:-20}"
BIN_DIR="$(hack/control-plane.sh bin)"
KUBECTL="$BIN_DIR/kubectl"

log() { printf '[bench] %s\n' "$*" >&2; }

go build -o bin/keyward ./cmd/keyward
go build -o bin/loadgen ./hack/loadgen
KUBECONFIG="$(hack/control-plane.sh up | tail -1)"
export KUBECONFIG
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  local cp_pids
  cp_pids="$(cat "$KEYWARD_RUN_DIR"/kube-apiserver.pid "$KEYWARD_RUN_DIR"/etcd.pid 2>/dev/null || true)"
  hack/control-plane.sh down >/dev/null 2>&1 || true
  # kube-apiserver may hang in its graceful shutdown once etcd is gone: make sure both end.
  for _ in $(seq 10); do
    alive=""
    for p in $cp_pids; do kill -0 "$p" 2>/dev/null && alive=1; done
    [[ -z "$alive" ]] && return
    sleep 1
  done
  for p in $cp_pids; do kill -9 "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

"$KUBECTL" apply -k "${BENCH_CRDS:-config/crd/}" >/dev/null
bin/keyward controller --leader-elect=false --metrics-bind-address 0 --health-probe-bind-address 0 >"$KEYWARD_RUN_DIR/controller.log" 2>&1 &
pids+=($!)
bin/keyward issuer --issuer-addr "$ISSUER_ADDR" --metrics-bind-address 127.0.0.1:19090 --health-probe-bind-address 0 >"$KEYWARD_RUN_DIR/issuer.log" 2>&1 &
pids+=($!)

CLIENT_SECRET="$(openssl rand -base64 32 | tr '+/' '-_' | tr -d '=\n')"
CLIENT_SHA256="$(printf %s "$CLIENT_SECRET" | sha256sum | cut -d' ' -f1)"
"$KUBECTL" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Namespace
metadata: {name: bench}
---
apiVersion: keyward.dev/v1alpha1
kind: SigningKey
metadata: {name: main, namespace: bench}
spec: {algorithm: ES256}
---
apiVersion: v1
kind: Secret
metadata: {name: users, namespace: bench}
stringData:
  # bench / bench-password, bcrypt cost 10
  htpasswd: |
    bench:\$2a\$10\$SgYZdn/vMyrrxJSmKmBZ6.CStOtYV.bGHhq9BQAdCPKPnhnQRWh5W
---
apiVersion: v1
kind: Secret
metadata: {name: clients, namespace: bench}
stringData:
  clients.yaml: |
    bench:
      secretSHA256: $CLIENT_SHA256
      scopes: [read]
---
apiVersion: keyward.dev/v1alpha1
kind: TokenIssuer
metadata: {name: main, namespace: bench}
spec:
  signingKeyRef: {name: main}
  users: {secretRef: {name: users}}
  clients: {secretRef: {name: clients}}
  loginThrottling:
    perUsername: {burst: 10000, perMinute: 60000}
    perClientAddress: {burst: 10000, perMinute: 60000}
YAML

BASE="http://$ISSUER_ADDR/bench/main/"
for _ in $(seq 60); do
  code="$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' -d '{}' "${BASE}api/token/" || true)"
  [[ "$code" == 400 ]] && break
  sleep 1
done
[[ "$code" == 400 ]] || { log "issuer not ready"; tail -20 "$KEYWARD_RUN_DIR/issuer.log" >&2; exit 1; }
log "issuer ready at $BASE; $(nproc) cores"
if [[ -n "${BENCH_STOP_CONTROLLER:-}" ]]; then
  # Experiment: measure without the controller's Session watch.
  kill "${pids[0]}"; log "controller stopped"
fi

# cpu PID: CPU time (user + system, in clock ticks) a process has used.
cpu() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
APISERVER_PID="$(cat "$KEYWARD_RUN_DIR/kube-apiserver.pid")"
ETCD_PID="$(cat "$KEYWARD_RUN_DIR/etcd.pid")"
TICKS="$(getconf CLK_TCK)"
# run: one load generator run, then the CPU each process spent per successful request.
run() {
  log "loadgen $*"
  local names=(kube-apiserver etcd controller issuer) procs=("$APISERVER_PID" "$ETCD_PID" "${pids[0]}" "${pids[1]}") before=() out ok
  for p in "${procs[@]}"; do before+=("$(cpu "$p")"); done
  out="$(bin/loadgen -base "$BASE" -d "${SECONDS_EACH}s" -client-secret "$CLIENT_SECRET" "$@")"
  echo "$out"
  ok="$(sed -n 's/.* ok=\([0-9]*\) .*/\1/p' <<<"$out")"
  [[ "${ok:-0}" -gt 0 ]] || return 0
  local line="  CPU per request:"
  for i in "${!procs[@]}"; do
    line+=" ${names[$i]}=$(awk -v a="${before[$i]}" -v b="$(cpu "${procs[$i]}")" -v n="$ok" -v t="$TICKS" 'BEGIN{printf "%.2fms", (b-a)/t*1000/n}')"
  done
  echo "$line"
}
for spec in ${BENCH_RUNS:-client_credentials:16 login:4 refresh:32 refresh:64}; do
  run -mode "${spec%%:*}" -c "${spec##*:}"
done
