#!/usr/bin/env bash
# Runs keyward's main job locally: a local control plane (etcd + kube-apiserver), keyward's
# CRDs, `keyward all` (controller + issuer + validator in one process) and the samples in
# config/samples; then obtains a token for alice from the issuer and has the validator decide
# on requests with and without it. Leaves everything running; `make down` stops it.
set -euo pipefail
cd "$(dirname "$0")/.."

export KEYWARD_CACHE="${KEYWARD_CACHE:-$HOME/.cache/keyward}"
RUN_DIR="${KEYWARD_RUN_DIR:-$KEYWARD_CACHE/run}"
ISSUER="http://127.0.0.1:8080"
VALIDATOR="http://127.0.0.1:8081"
log() { printf '\n[demo] %s\n' "$*" >&2; }

hack/install-deps.sh >/dev/null
make build >/dev/null
BIN="$(hack/control-plane.sh bin)"
export PATH="$BIN:$PATH"
KUBECONFIG="$(hack/control-plane.sh up)"
export KUBECONFIG

log "installing CRDs"
kubectl apply --server-side -k config/crd >/dev/null
kubectl wait --for condition=established --timeout=60s crd --all >/dev/null

log "starting keyward all (log: $RUN_DIR/keyward.log)"
./bin/keyward all --kubeconfig "$KUBECONFIG" --leader-election-namespace default \
  --public-url "$ISSUER" --issuer-addr 127.0.0.1:8080 \
  --authz-addr 127.0.0.1:8081 --authz-grpc-addr 127.0.0.1:9001 \
  --metrics-bind-address 127.0.0.1:9090 --health-probe-bind-address 127.0.0.1:9091 \
  >"$RUN_DIR/keyward.log" 2>&1 &
echo $! >"$RUN_DIR/keyward.pid"
for _ in $(seq 60); do curl -fs http://127.0.0.1:9091/readyz >/dev/null 2>&1 && break; sleep 1; done

log "applying config/samples (SigningKey, users and clients Secrets, TokenIssuer, AccessPolicy)"
kubectl apply -k config/samples >/dev/null
kubectl -n demo wait --for condition=Ready --timeout=60s signingkey/main tokenissuer/main accesspolicy/app >/dev/null
kubectl -n demo get signingkeys,tokenissuers,accesspolicies

log "alice logs in: POST $ISSUER/demo/main/api/token/"
resp=""
for _ in $(seq 30); do
  resp="$(curl -s -X POST "$ISSUER/demo/main/api/token/" -H 'Content-Type: application/json' \
    -d '{"username":"alice","password":"wonderland"}')" && [[ "$resp" == *'"access"'* ]] && break
  sleep 1
done
access="$(printf '%s' "$resp" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access"])')"
printf '%s\n' "$resp" | python3 -c 'import json,sys; d=json.load(sys.stdin); print({k: v[:24] + "..." for k, v in d.items()})'

log "the issuer verifies it: POST $ISSUER/demo/main/api/token/verify/"
curl -s -X POST "$ISSUER/demo/main/api/token/verify/" -H 'Content-Type: application/json' \
  -d "{\"token\":\"$access\"}" -w ' -> %{http_code}\n'

log "the validator decides (as nginx auth_request would ask it): GET $VALIDATOR/authz with X-Original-URI"
printf 'no token, /orders:     '
curl -s -o /dev/null -w '%{http_code}\n' "$VALIDATOR/authz" -H 'Host: app.example.test' -H 'X-Original-URI: /orders'
printf 'no token, /public/x:   '
curl -s -o /dev/null -w '%{http_code}\n' "$VALIDATOR/authz" -H 'Host: app.example.test' -H 'X-Original-URI: /public/x'
printf "alice's token, /orders: "
curl -s -D - -o /dev/null "$VALIDATOR/authz" -H 'Host: app.example.test' -H 'X-Original-URI: /orders' \
  -H "Authorization: Bearer $access" | tr -d '\r' | grep -E '^(HTTP|X-Auth-Request-User|X-Auth-Request-Groups|X-User|X-Groups)'

log "running; export KUBECONFIG=$KUBECONFIG PATH=$BIN:\$PATH to use kubectl; 'make down' stops everything"
