#!/usr/bin/env bash
# Installs the Debian packages keyward's tests and local runs use, when missing:
# etcd (the control plane), nginx (end-to-end ingress), redis-server (the Redis session store),
# wrk and nghttp2-client's h2load (load tests), Django + djangorestframework-simplejwt (the compatibility reference),
# python3-cryptography (PyJWT's ES256, which the issuer tests verify tokens with).
set -euo pipefail

packages=(etcd-server nginx redis-server wrk nghttp2-client curl openssl
  python3-django python3-djangorestframework python3-djangorestframework-simplejwt python3-cryptography)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "all Debian packages present"
  exit 0
fi
SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO="sudo"
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" \
  || { $SUDO apt-get update -q && $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"; }
# Packaged services may start on install; the tests start their own on other ports.
for svc in etcd nginx redis-server; do
  $SUDO service "$svc" stop >/dev/null 2>&1 || true
done
