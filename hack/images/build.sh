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
# --no-import leaves the docker-archive in /var/tmp/stt-k8s/images/stt-images.tar (docker load works too).
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

# ---- Docker mode: the real Dockerfiles, then `kind load` (see kind-config.yaml)
if use_kind; then
  BASE_TARGET="${STT_BASE_TARGET:-cpu}"   # gpu: CUDA 12 + cuDNN 9 image (large)
  for img in "${IMAGES[@]}"; do
    case "$img" in
      tiny) df=services/tiny/Dockerfile; target=() ;;
      base) df=services/base/Dockerfile; target=(--target "$BASE_TARGET") ;;
      proxy) df=services/proxy/Dockerfile; target=() ;;
      controller) df=controller/Dockerfile; target=() ;;
    esac
    log "docker build -f $df ${target[*]} -t localhost/stt-$img:$TAG ."
    (cd "$REPO" && docker build -f "$df" "${target[@]}" -t "localhost/stt-$img:$TAG" .)
  done
  if [ "$IMPORT" = 1 ]; then
    for img in "${IMAGES[@]}"; do
      kind load docker-image --name "$KIND_CLUSTER" "localhost/stt-$img:$TAG"
    done
  fi
  log "images built in $(( $(date +%s) - T0 ))s; sizes:"
  for img in "${IMAGES[@]}"; do
    printf '  %-34s %5s MB\n' "localhost/stt-$img:$TAG" \
      "$(( $(docker image inspect -f '{{.Size}}' "localhost/stt-$img:$TAG") / 1000000 ))"
  done
  exit 0
fi

if [ "$IMPORT" = 1 ] && ! ctr --address "$CONTAINERD_SOCK" version >/dev/null 2>&1; then
  die "the local cluster is not running: run 'make cluster' first (or build.sh --no-import to only build archives)"
fi
mkdir -p "$OUT"

# ---- 1. Debian base root filesystem (cached tarball)
DEBS="python3,python3-venv"
BASE_TAR="$STT_K8S_CACHE/rootfs-bookworm-minbase.tar"
rootfs_tarball "$BASE_TAR" "$DEBS"

# ---- 2. wheels for the project (built on the host) and its runtime dependencies: exactly the
# pins of requirements.lock (`make lock`), each file checked against the lock's sha256; wheels
# only, for the host's CPython 3.11, the same ABI as the image's python3
SRC="$OUT/src"
rm -rf "$SRC"; mkdir -p "$SRC"
(cd "$REPO" && git ls-files -co --exclude-standard -z | grep -zv -E '^(\.venv|bench/results|corpus/.*\.(wav|flac|mp3|ogg))' \
  | xargs -0 -I{} cp --parents -r {} "$SRC/" 2>/dev/null) || true
[ -f "$SRC/pyproject.toml" ] || die "no pyproject.toml in $REPO"
[ -f "$SRC/README.md" ] || echo "# stt-platform" > "$SRC/README.md"
WHEELS="$STT_K8S_CACHE/wheels"
rm -rf "$OUT/proj"; mkdir -p "$OUT/proj" "$WHEELS"
LOCK="$REPO/requirements.lock"
[ -f "$LOCK" ] || die "no $LOCK: run 'make lock'"
log "building the project wheel and downloading the locked runtime wheels"
PIPLOG="$OUT/pip.log"
"$PY" -m pip wheel -q --no-deps -w "$OUT/proj" "$SRC" >"$PIPLOG" 2>&1 || { cat "$PIPLOG" >&2; die "project wheel failed"; }
PROJ_WHL=$(ls "$OUT/proj"/*.whl)
"$PY" -m pip download -q --require-hashes --only-binary :all: -d "$WHEELS" -r "$LOCK" >>"$PIPLOG" 2>&1 \
  || { grep -v '^WARNING: Location' "$PIPLOG" >&2; die "downloading the locked wheels failed"; }

# ---- 3. the shared base layer: rootfs + user 10001 + /opt/stt/venv
ROOT="$OUT/rootfs"
rm -rf "$ROOT"; mkdir -p "$ROOT"
tar --numeric-owner -C "$ROOT" -xf "$BASE_TAR"
mkdir -p "$ROOT/tmp/wheels"
cp "$WHEELS"/*.whl "$PROJ_WHL" "$ROOT/tmp/wheels/"
cp "$LOCK" "$ROOT/tmp/requirements.lock"
log "installing the locked dependencies, then the project, into /opt/stt/venv"
# a clean environment: none of the host's PIP_* settings leak into the image build
inroot() { env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 chroot "$ROOT" "$@"; }
inroot /usr/bin/python3 -m venv /opt/stt/venv
# the wheel cache may hold other versions too: --require-hashes takes only the locked files
PIPI=(/opt/stt/venv/bin/pip install -q --no-index --no-compile --no-cache-dir --disable-pip-version-check)
inroot "${PIPI[@]}" --find-links /tmp/wheels --require-hashes -r /tmp/requirements.lock
inroot "${PIPI[@]}" --no-deps "/tmp/wheels/$(basename "$PROJ_WHL")"
inroot /opt/stt/venv/bin/pip check >/dev/null || { inroot /opt/stt/venv/bin/pip check >&2; die "pip check failed in the image"; }
inroot /opt/stt/venv/bin/pip uninstall -q -y pip setuptools >/dev/null 2>&1 || true
grep -q '^stt:' "$ROOT/etc/group" || echo 'stt:x:10001:' >> "$ROOT/etc/group"
grep -q '^stt:' "$ROOT/etc/passwd" || echo 'stt:x:10001:10001:stt:/tmp:/usr/sbin/nologin' >> "$ROOT/etc/passwd"
mkdir -p "$ROOT/opt/stt/models"
# slim down: caches, docs, man pages, locales, bytecode, apt lists, device nodes
rm -rf "${ROOT:?}"/tmp/* "${ROOT:?}"/var/cache/apt/* "${ROOT:?}"/var/lib/apt/lists/* "${ROOT:?}"/var/log/* \
  "${ROOT:?}"/usr/share/doc/* "${ROOT:?}"/usr/share/man/* "${ROOT:?}"/usr/share/info/* "${ROOT:?}"/usr/share/locale/* \
  "${ROOT:?}"/root/.cache "${ROOT:?}"/dev/* "${ROOT:?}"/proc/* "${ROOT:?}"/sys/* "${ROOT:?}"/run/*
find "$ROOT" -depth -name __pycache__ -type d -exec rm -rf {} +
find "$ROOT" -name '*.pyc' -delete
chmod 1777 "$ROOT/tmp"
BASE_LAYER="$OUT/layer-base.tar"
tar --numeric-owner --sort=name --mtime=@0 -C "$ROOT" -cf "$BASE_LAYER" .
BASE_MB=$(du -m "$BASE_LAYER" | cut -f1)
log "base layer: $BASE_MB MB"
declare -A SIZES

# ---- 4. model layers, then one docker-archive holding all requested images (the shared base
# layer is written, hashed and imported once)
MODELS="$STT_K8S_CACHE/models"
model_layer() { # model-name -> prints the layer directory holding /opt/stt/models/NAME
  local name=$1 dir="$OUT/layer-model-$1"
  STT_MODEL_CACHE="$MODELS" PYTHONPATH="$SRC" "$PY" -m services.common.models fetch "$name" >/dev/null
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
uvicorn_cmd() { printf '["uvicorn","services.%s.app:app","--host","0.0.0.0","--port","%s","--http","services.common.http_protocol:BoundedHttpToolsProtocol"]' "$1" "$2"; }
SPEC="$OUT/images.json"
ARCHIVE="$OUT/stt-images.tar"
sep="["
: > "$SPEC"
for img in "${IMAGES[@]}"; do
  dirs="" ports="" cmd=""
  case "$img" in
    tiny) d=$(model_layer tiny.en); dirs="\"$d\""; ports='"5004"'; cmd=$(uvicorn_cmd tiny 5004)
          SIZES[$img]=$(( BASE_MB + $(du -sm "$d" | cut -f1) )) ;;
    base) d=$(model_layer base); d2=$(model_layer tiny.en); dirs="\"$d\", \"$d2\""
          ports='"5002"'; cmd=$(uvicorn_cmd base 5002)
          SIZES[$img]=$(( BASE_MB + $(du -sm "$d" | cut -f1) + $(du -sm "$d2" | cut -f1) )) ;;
    proxy) ports='"5001"'; cmd=$(uvicorn_cmd proxy 5001); SIZES[$img]=$BASE_MB ;;
    controller) cmd='["kopf","run","--standalone","--all-namespaces","-m","controller.operator"]'
                SIZES[$img]=$BASE_MB ;;
  esac
  cat >> "$SPEC" <<EOT
$sep{"tag": "localhost/stt-$img:$TAG", "layers": ["$BASE_LAYER"], "layer_dirs": [$dirs],
 "env": ["PATH=/opt/stt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/tmp",
         "STT_MODEL_CACHE=/opt/stt/models", "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1"],
 "user": "10001:10001", "workdir": "/opt/stt", "ports": [$ports], "cmd": $cmd,
 "labels": {"org.opencontainers.image.title": "stt-$img"}}
EOT
  sep=","
done
echo "]" >> "$SPEC"
python3 "$HERE/mkarchive.py" --out "$ARCHIVE" --spec "$SPEC"
log "archive $ARCHIVE ($(du -m "$ARCHIVE" | cut -f1) MB, ${#IMAGES[@]} images)"
rm -rf "$ROOT" "$SRC" "$OUT/proj" "$OUT"/layer-model-* "$BASE_LAYER"

# ---- 5. import into the cluster's containerd
if [ "$IMPORT" = 1 ]; then
  ctr --address "$CONTAINERD_SOCK" -n k8s.io images import "$ARCHIVE" >/dev/null
  rm -f "$ARCHIVE"   # containerd holds the images now
  log "imported into containerd (k8s.io namespace):"
  ctr --address "$CONTAINERD_SOCK" -n k8s.io images ls | awk 'NR==1 || /localhost\/stt-/ {printf "  %-34s %s %s\n", $1, $4, $5}' >&2
fi
log "images built in $(( $(date +%s) - T0 ))s; sizes (uncompressed; the ${BASE_MB} MB base layer is shared):"
for img in "${IMAGES[@]}"; do
  printf '  %-34s %5s MB\n' "localhost/stt-$img:$TAG" "${SIZES[$img]}"
done
