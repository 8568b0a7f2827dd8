#!/usr/bin/env bash
# Build the project's images without Docker and import them into the local cluster's containerd.
#
#   localhost/stt-tiny:dev        base layer + tiny.en model     uvicorn services.tiny.app  :5004
#   localhost/stt-base:dev        base layer + base model        uvicorn services.base.app  :5002
#   localhost/stt-proxy:dev       base layer                     uvicorn services.proxy.app :5001
#   localhost/stt-controller:dev  base layer                     kopf run ... -m controller.operator
#
# The base layer (Debian bookworm minbase + python3 + /opt/stt/venv with the project) is one
# tar shared by all four images, so containerd stores it once. Same user (10001), paths and
# env as the Dockerfiles. Usage: build.sh [--no-import] [IMAGE...]   (IMAGE: tiny base proxy controller)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
# shellcheck source=hack/cluster/lib.sh
. "$HERE/../cluster/lib.sh"
PY="${PY:-$REPO/.venv/bin/python}"
[ -x "$PY" ] || PY=python3
TAG="${STT_IMAGE_TAG:-dev}"
OUT="${STT_IMAGE_OUT:-$STT_K8S_CACHE/images}"
IMPORT=1
IMAGES=()
for a in "$@"; do
  case "$a" in
    --no-import) IMPORT=0 ;;
    tiny|base|proxy|controller) IMAGES+=("$a") ;;
    *) die "unknown argument $a" ;;
  esac
done
[ ${#IMAGES[@]} -gt 0 ] || IMAGES=(tiny base proxy controller)
T0=$(date +%s)
mkdir -p "$OUT"

# ---- 1. Debian base root filesystem (cached tarball)
DEBS="python3,python3-venv,libgomp1"
BASE_TAR="$STT_K8S_CACHE/rootfs-bookworm-minbase.tar"
if [ ! -f "$BASE_TAR" ] || [ "$(cat "$BASE_TAR.pkgs" 2>/dev/null)" != "$DEBS" ]; then
  apt_install debootstrap
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  mirror="${mirror:-http://deb.debian.org/debian}"
  tmp="$STT_K8S_CACHE/debootstrap.tmp"
  rm -rf "$tmp"
  log "debootstrap --variant=minbase bookworm ($DEBS) from $mirror"
  t=$(date +%s)
  debootstrap --variant=minbase --include="$DEBS" bookworm "$tmp" "$mirror" >"$STT_K8S_CACHE/debootstrap.log" 2>&1 \
    || { tail -20 "$STT_K8S_CACHE/debootstrap.log" >&2; die "debootstrap failed"; }
  tar --numeric-owner -C "$tmp" -cf "$BASE_TAR.new" .
  mv "$BASE_TAR.new" "$BASE_TAR"
  echo "$DEBS" > "$BASE_TAR.pkgs"
  rm -rf "$tmp"
  log "base rootfs cached in $BASE_TAR ($(( $(date +%s) - t ))s)"
fi

# ---- 2. wheels for the project and its runtime dependencies (built on the host, same CPython 3.11 ABI)
SRC="$OUT/src"
rm -rf "$SRC"; mkdir -p "$SRC"
(cd "$REPO" && git ls-files -co --exclude-standard -z | grep -zv -E '^(\.venv|bench/results|corpus/.*\.(wav|flac|mp3|ogg))' \
  | xargs -0 -I{} cp --parents -r {} "$SRC/" 2>/dev/null) || true
[ -f "$SRC/pyproject.toml" ] || die "no pyproject.toml in $REPO"
[ -f "$SRC/README.md" ] || echo "# stt-platform" > "$SRC/README.md"
WHEELS="$STT_K8S_CACHE/wheels"
rm -rf "$OUT/proj"; mkdir -p "$OUT/proj" "$WHEELS"
log "building the project wheel and collecting runtime wheels"
PIPLOG="$OUT/pip.log"
"$PY" -m pip wheel -q --no-deps -w "$OUT/proj" "$SRC" >"$PIPLOG" 2>&1 || { cat "$PIPLOG" >&2; die "project wheel failed"; }
PROJ_WHL=$(ls "$OUT/proj"/*.whl)
"$PY" -m pip wheel -q -w "$WHEELS" --find-links "$OUT/proj" "$PROJ_WHL" >>"$PIPLOG" 2>&1 \
  || { grep -v '^WARNING: Location' "$PIPLOG" >&2; die "collecting wheels failed"; }
rm -f "$WHEELS/$(basename "$PROJ_WHL")"

# ---- 3. the shared base layer: rootfs + user 10001 + /opt/stt/venv
ROOT="$OUT/rootfs"
rm -rf "$ROOT"; mkdir -p "$ROOT"
tar --numeric-owner -C "$ROOT" -xf "$BASE_TAR"
mkdir -p "$ROOT/tmp/wheels"
cp "$WHEELS"/*.whl "$PROJ_WHL" "$ROOT/tmp/wheels/"
log "installing the project into /opt/stt/venv"
chroot "$ROOT" /usr/bin/python3 -m venv /opt/stt/venv
chroot "$ROOT" /opt/stt/venv/bin/pip install -q --no-index --no-compile --no-cache-dir \
  --find-links /tmp/wheels "/tmp/wheels/$(basename "$PROJ_WHL")"
chroot "$ROOT" /opt/stt/venv/bin/pip uninstall -q -y pip setuptools >/dev/null 2>&1 || true
grep -q '^stt:' "$ROOT/etc/group" || echo 'stt:x:10001:' >> "$ROOT/etc/group"
grep -q '^stt:' "$ROOT/etc/passwd" || echo 'stt:x:10001:10001:stt:/tmp:/usr/sbin/nologin' >> "$ROOT/etc/passwd"
mkdir -p "$ROOT/opt/stt/models"
# slim down: caches, docs, man pages, locales, bytecode, apt lists, device nodes
rm -rf "$ROOT"/tmp/* "$ROOT"/var/cache/apt/* "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/log/* \
  "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/* "$ROOT"/usr/share/locale/* \
  "$ROOT"/root/.cache "$ROOT"/dev/* "$ROOT"/proc/* "$ROOT"/sys/* "$ROOT"/run/*
find "$ROOT" -depth -name __pycache__ -type d -exec rm -rf {} +
find "$ROOT" -name '*.pyc' -delete
chmod 1777 "$ROOT/tmp"
BASE_LAYER="$OUT/layer-base.tar"
tar --numeric-owner --sort=name --mtime=@0 -C "$ROOT" -cf "$BASE_LAYER" .
log "base layer: $(du -m "$BASE_LAYER" | cut -f1) MB"

# ---- 4. per-image layers and archives
MODELS="$STT_K8S_CACHE/models"
COMMON_ENV=(--env HOME=/tmp --env PATH=/opt/stt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  --env STT_MODEL_CACHE=/opt/stt/models --env PYTHONDONTWRITEBYTECODE=1 --env PYTHONUNBUFFERED=1
  --user 10001:10001 --workdir /opt/stt --label org.opencontainers.image.source=stt-platform)
model_layer() { # model-name -> prints the layer directory holding /opt/stt/models/NAME
  local name=$1 dir="$OUT/layer-model-$1"
  STT_MODEL_CACHE="$MODELS" PYTHONPATH="$SRC" "$PY" -m services.common.models fetch "$name" >&2
  rm -rf "$dir"; mkdir -p "$dir/opt/stt/models"
  cp -r "$MODELS/$name" "$dir/opt/stt/models/$name"
  rm -f "$dir/opt/stt/models/$name/.verified"
  # layers are packed with mtime 0: stamp the verification marker for exactly that mtime so
  # the services find the model verified and never need to write on a read-only root fs
  find "$dir" -exec touch -h -d @0 {} +
  STT_MODEL_CACHE="$dir/opt/stt/models" PYTHONPATH="$SRC" "$PY" -m services.common.models fetch "$name" >/dev/null
  chmod -R a+rX "$dir"
  echo "$dir"
}
for img in "${IMAGES[@]}"; do
  extra=()
  case "$img" in
    tiny) extra=(--layer-dir "$(model_layer tiny.en)" --port 5004
            --cmd '["uvicorn","services.tiny.app:app","--host","0.0.0.0","--port","5004"]') ;;
    base) extra=(--layer-dir "$(model_layer base)" --port 5002
            --cmd '["uvicorn","services.base.app:app","--host","0.0.0.0","--port","5002"]') ;;
    proxy) extra=(--port 5001 --cmd '["uvicorn","services.proxy.app:app","--host","0.0.0.0","--port","5001"]') ;;
    controller) extra=(--cmd '["kopf","run","--standalone","--all-namespaces","-m","controller.operator"]') ;;
  esac
  python3 "$HERE/mkarchive.py" --out "$OUT/stt-$img.tar" --tag "localhost/stt-$img:$TAG" \
    --layer "$BASE_LAYER" "${COMMON_ENV[@]}" "${extra[@]}"
  log "archive $OUT/stt-$img.tar ($(du -m "$OUT/stt-$img.tar" | cut -f1) MB)"
done
rm -rf "$ROOT" "$SRC" "$OUT/proj" "$OUT"/layer-model-*

# ---- 5. import into the cluster's containerd
if [ "$IMPORT" = 1 ]; then
  [ -S "$CONTAINERD_SOCK" ] || die "the local cluster is not running (make cluster); archives are in $OUT"
  for img in "${IMAGES[@]}"; do
    ctr --address "$CONTAINERD_SOCK" -n k8s.io images import "$OUT/stt-$img.tar" >/dev/null
  done
  log "imported into containerd (k8s.io namespace):"
  ctr --address "$CONTAINERD_SOCK" -n k8s.io images ls | awk 'NR==1 || /localhost\/stt-/ {print $1, $4, $5}' | column -t >&2
fi
log "images built in $(( $(date +%s) - T0 ))s; sizes (uncompressed):"
for img in "${IMAGES[@]}"; do
  printf '  %-34s %5s MB\n' "localhost/stt-$img:$TAG" "$(du -m "$OUT/stt-$img.tar" | cut -f1)"
done
