#!/usr/bin/env bash
# Build the real Dockerfiles without Docker: podman (runc) against a local stand-in for
# python:3.11-slim-bookworm (the cached debootstrap rootfs + a `python` link; no registry here).
# Proves the Dockerfiles build; the results are tagged :podman (and imported into the local
# cluster with --import). The CUDA `gpu` target cannot be built here (no nvidia/cuda image).
# Usage: dockerfile-check.sh [--import]       (~5 minutes on 2 cores)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
# shellcheck source=hack/cluster/lib.sh
. "$HERE/../cluster/lib.sh"
BASE_TAR="$STT_K8S_CACHE/rootfs-bookworm-minbase.tar"
STANDIN="localhost/stt-python-standin:3.11-slim-bookworm"
[ -f "$BASE_TAR" ] || die "no cached rootfs: run 'make images' once first"
apt_install podman runc
P=(podman --runtime runc)
tmp=$(mktemp -d /var/tmp/stt-dfcheck.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/root"
tar --numeric-owner -C "$tmp/root" -xf "$BASE_TAR"
rm -rf "${tmp:?}/root/dev/"*
ln -sf /usr/bin/python3 "$tmp/root/usr/local/bin/python"
change=(--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin')
if [ -n "${PIP_CERT:-}" ] && [ -f "$PIP_CERT" ]; then   # this machine's TLS trust for PyPI
  mkdir -p "$tmp/root/etc/ssl/certs"
  cp "$PIP_CERT" "$tmp/root/etc/ssl/certs/stt-pip-ca.crt"
  change+=(--change 'ENV PIP_CERT=/etc/ssl/certs/stt-pip-ca.crt')
fi
tar --numeric-owner -C "$tmp/root" -cf "$tmp/standin.tar" .
"${P[@]}" import -q "${change[@]}" "$tmp/standin.tar" "$STANDIN" >/dev/null
T0=$(date +%s)
for spec in "tiny services/tiny/Dockerfile" "base services/base/Dockerfile --target cpu" \
            "proxy services/proxy/Dockerfile" "controller controller/Dockerfile"; do
  read -r img df extra <<<"$spec"
  log "podman build -f $df ${extra:-}"
  # shellcheck disable=SC2086
  (cd "$REPO" && "${P[@]}" build -q --network host --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
     --build-arg PYTHON_IMAGE="$STANDIN" -f "$df" ${extra:-} -t "localhost/stt-$img:podman" . >/dev/null)
done
log "all Dockerfiles built in $(( $(date +%s) - T0 ))s"
"${P[@]}" images --filter reference='localhost/stt-*:podman'
if [ "${1:-}" = "--import" ]; then
  for img in tiny base proxy controller; do
    "${P[@]}" save --format docker-archive -o "$tmp/$img.tar" "localhost/stt-$img:podman" 2>/dev/null
    ctr --address "$CONTAINERD_SOCK" -n k8s.io images import "$tmp/$img.tar" >/dev/null
    rm -f "$tmp/$img.tar"
  done
  log "imported localhost/stt-{tiny,base,proxy,controller}:podman (run them with imagePullPolicy: Never)"
fi
