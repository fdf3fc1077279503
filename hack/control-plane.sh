#!/usr/bin/env bash
# Provides kube-apiserver, kubectl and etcd without any download site.
#
#   hack/control-plane.sh bin     build (once) and print the directory holding the binaries
#   hack/control-plane.sh up      start etcd + kube-apiserver on 127.0.0.1 and write a kubeconfig
#   hack/control-plane.sh down    stop what `up` started
#
# kube-apiserver and kubectl are built from the Go module proxy: a throwaway module requires
# k8s.io/kubernetes and replaces each of its ./staging modules with the published k8s.io/<name>
# release. The binaries are cached outside the checkout, keyed by version, in
# ${KEYWARD_CACHE:-$HOME/.cache/keyward}/k8s/<version>/bin. etcd comes from Debian's etcd-server.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.37.2}"
STAGING_VERSION="v0.${K8S_VERSION#v1.}"
CACHE="${KEYWARD_CACHE:-$HOME/.cache/keyward}"
BIN_DIR="$CACHE/k8s/$K8S_VERSION/bin"
RUN_DIR="${KEYWARD_RUN_DIR:-$CACHE/run}"
APISERVER_PORT="${APISERVER_PORT:-6443}"
ETCD_PORT="${ETCD_PORT:-2379}"

log() { printf '[control-plane] %s\n' "$*" >&2; }

ensure_etcd() {
  if [[ -x /usr/bin/etcd ]]; then
    ln -sf /usr/bin/etcd "$BIN_DIR/etcd"
    return
  fi
  log "installing etcd from Debian's etcd-server package"
  if [[ $(id -u) -eq 0 ]]; then SUDO=""; else SUDO="sudo"; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q etcd-server >/dev/null \
    || { $SUDO apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q etcd-server >/dev/null; }
  # The package starts a system etcd on :2379; tests run their own, so stop it.
  if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now etcd >/dev/null 2>&1 || true; fi
  pkill -x etcd >/dev/null 2>&1 || true
  ln -sf /usr/bin/etcd "$BIN_DIR/etcd"
}

build_k8s() {
  if [[ -x "$BIN_DIR/kube-apiserver" && -x "$BIN_DIR/kubectl" ]]; then
    return
  fi
  local work
  work="$(mktemp -d)"
  # shellcheck disable=SC2064 # expand now: $work is local and gone when the trap runs
  trap "rm -rf '$work'" RETURN
  log "building kube-apiserver and kubectl $K8S_VERSION from the Go module proxy into $BIN_DIR"
  log "this happens once per version and takes about 15 minutes on 2 cores; later runs reuse the cache"
  (
    cd "$work"
    go mod init keyward.dev/k8s-binaries >/dev/null 2>&1
    go mod edit -require="k8s.io/kubernetes@$K8S_VERSION"
    go mod download -json "k8s.io/kubernetes@$K8S_VERSION" >/dev/null
    local modfile
    modfile="$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$K8S_VERSION.mod"
    local staging
    staging="$(awk '/=> \.\/staging\// {print $1}' "$modfile" | sort -u)"
    local n=0
    for m in $staging; do
      go mod edit -replace="$m=$m@$STAGING_VERSION"
      n=$((n + 1))
    done
    log "replaced $n staging modules with their $STAGING_VERSION releases; resolving dependencies"
    printf 'package tools\n\nimport (\n\t_ "k8s.io/kubernetes/cmd/kube-apiserver"\n\t_ "k8s.io/kubernetes/cmd/kubectl"\n)\n' > tools.go
    # tools.go is not buildable as a program; it only lets `go mod tidy` see the imports.
    sed -i 's/^package tools/\/\/go:build tools\n\npackage tools/' tools.go
    go mod tidy >/dev/null 2>&1 || go mod tidy
    mkdir -p "$BIN_DIR"
    log "compiling kube-apiserver (the long part)"
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${K8S_VERSION#v1.}" \
      -o "$BIN_DIR/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver
    log "compiling kubectl"
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION" \
      -o "$BIN_DIR/kubectl.tmp" k8s.io/kubernetes/cmd/kubectl
    mv "$BIN_DIR/kube-apiserver.tmp" "$BIN_DIR/kube-apiserver"
    mv "$BIN_DIR/kubectl.tmp" "$BIN_DIR/kubectl"
  )
  log "built $("$BIN_DIR/kube-apiserver" --version 2>/dev/null || echo kube-apiserver)"
}

cmd_bin() {
  mkdir -p "$BIN_DIR"
  # Serialise concurrent callers (make test and make run at once) on one build.
  exec 9>"$CACHE/k8s/.lock"
  flock 9
  build_k8s
  ensure_etcd
  flock -u 9
  echo "$BIN_DIR"
}

wait_for() {
  local what="$1" url="$2" tries="${3:-60}"
  for _ in $(seq "$tries"); do
    if curl -fsk "$url" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  log "$what did not become ready at $url"
  return 1
}

cmd_up() {
  local bin
  bin="$(cmd_bin)"
  mkdir -p "$RUN_DIR"
  cmd_down >/dev/null 2>&1 || true
  rm -rf "$RUN_DIR/etcd-data"
  log "starting etcd on 127.0.0.1:$ETCD_PORT"
  "$bin/etcd" --data-dir "$RUN_DIR/etcd-data" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" --unsafe-no-fsync \
    >"$RUN_DIR/etcd.log" 2>&1 &
  echo $! >"$RUN_DIR/etcd.pid"
  wait_for etcd "http://127.0.0.1:$ETCD_PORT/health"

  # Static token authentication for the admin user, and a service-account key pair.
  local token
  token="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  echo "$token,admin,admin,system:masters" >"$RUN_DIR/tokens.csv"
  [[ -f "$RUN_DIR/sa.key" ]] || openssl genrsa -out "$RUN_DIR/sa.key" 2048 >/dev/null 2>&1
  log "starting kube-apiserver on https://127.0.0.1:$APISERVER_PORT"
  "$bin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --cert-dir "$RUN_DIR/certs" \
    --secure-port "$APISERVER_PORT" --bind-address 127.0.0.1 --advertise-address 127.0.0.1 \
    --token-auth-file "$RUN_DIR/tokens.csv" \
    --authorization-mode RBAC \
    --service-account-issuer https://kubernetes.default.svc \
    --service-account-key-file "$RUN_DIR/sa.key" --service-account-signing-key-file "$RUN_DIR/sa.key" \
    --service-cluster-ip-range 10.0.0.0/24 \
    --disable-admission-plugins ServiceAccount \
    --endpoint-reconciler-type none \
    >"$RUN_DIR/kube-apiserver.log" 2>&1 &
  echo $! >"$RUN_DIR/kube-apiserver.pid"
  cat >"$RUN_DIR/kubeconfig" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: $token
contexts:
- name: local
  context: {cluster: local, user: admin, namespace: default}
current-context: local
KCFG
  for _ in $(seq 90); do
    if ! kill -0 "$(cat "$RUN_DIR/kube-apiserver.pid")" 2>/dev/null; then break; fi
    if "$bin/kubectl" --kubeconfig "$RUN_DIR/kubeconfig" get --raw /readyz >/dev/null 2>&1; then
      log "ready; export KUBECONFIG=$RUN_DIR/kubeconfig (kubectl is $bin/kubectl)"
      echo "$RUN_DIR/kubeconfig"
      return 0
    fi
    sleep 1
  done
  log "kube-apiserver did not become ready; see $RUN_DIR/kube-apiserver.log"
  tail -20 "$RUN_DIR/kube-apiserver.log" >&2
  return 1
}

cmd_down() {
  for p in keyward kube-apiserver etcd; do
    if [[ -f "$RUN_DIR/$p.pid" ]]; then
      kill "$(cat "$RUN_DIR/$p.pid")" >/dev/null 2>&1 || true
      rm -f "$RUN_DIR/$p.pid"
    fi
  done
}

case "${1:-bin}" in
  bin) cmd_bin ;;
  up) cmd_up ;;
  down) cmd_down ;;
  *) echo "usage: $0 bin|up|down" >&2; exit 2 ;;
esac
