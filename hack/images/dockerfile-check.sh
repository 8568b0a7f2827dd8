#!/usr/bin/env bash
# Build the real Dockerfile without Docker: podman (runc) against a local stand-in for
# python:3.11-slim-bookworm (the cached debootstrap rootfs + a `python` link; no registry here).
# Proves every CPU target builds, then runs each image once: its role's module imports and what
# its role must not carry is absent (no Whisper in the proxy or operator, no kopf in the services,
# no web framework in the operator). The results are tagged :podman (and imported into the local
# cluster with --import). The CUDA `transcriber-gpu` target cannot be built here (no nvidia/cuda image).
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
# this machine's container may not raise rlimits: keep podman's within what it has
LIMITS=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
# image  target  module it runs  modules it must not have
CHECKS=(
  "tiny detector services.tiny.app kopf kubernetes"
  "base transcriber services.base.app kopf kubernetes"
  "proxy proxy services.proxy.app faster_whisper ctranslate2 kopf"
  "controller operator controller.operator faster_whisper ctranslate2 fastapi uvicorn"
)
for spec in "${CHECKS[@]}"; do
  read -r img target _ <<<"$spec"
  log "podman build --target $target"
  (cd "$REPO" && "${P[@]}" build -q --network host "${LIMITS[@]}" \
     --build-arg PYTHON_IMAGE="$STANDIN" --target "$target" -f Dockerfile -t "localhost/stt-$img:podman" . >/dev/null)
done
log "all Dockerfile targets built in $(( $(date +%s) - T0 ))s"
# as the cluster runs them: uid 10001 from the image, read-only root fs, /tmp writable
PROBE='import importlib, sys
importlib.import_module(sys.argv[1])
for name in sys.argv[2:]:
    try:
        importlib.import_module(name)
    except ImportError:
        continue
    sys.exit(f"{name} is installed, but this role must not carry it")
print(sys.argv[1], "imports; absent:", *sys.argv[2:])'
for spec in "${CHECKS[@]}"; do
  read -r img _ module forbidden <<<"$spec"
  # shellcheck disable=SC2086
  "${P[@]}" run --rm --network none --read-only --tmpfs /tmp "${LIMITS[@]}" "localhost/stt-$img:podman" \
    python -c "$PROBE" "$module" $forbidden >&2 || die "stt-$img: role check failed"
done
"${P[@]}" images --filter reference='localhost/stt-*:podman'
if [ "${1:-}" = "--import" ]; then
  for img in tiny base proxy controller; do
    "${P[@]}" save --format docker-archive -o "$tmp/$img.tar" "localhost/stt-$img:podman" 2>/dev/null
    ctr --address "$CONTAINERD_SOCK" -n k8s.io images import "$tmp/$img.tar" >/dev/null
    rm -f "$tmp/$img.tar"
  done
  log "imported localhost/stt-{tiny,base,proxy,controller}:podman (run them with imagePullPolicy: Never)"
fi
