#!/usr/bin/env bash
# Build the project's images without Docker and import them into the local cluster's containerd.
#
#   image                         role (Dockerfile target)  layers                          command
#   localhost/stt-tiny:dev        detector     base + detector venv + tiny.en        uvicorn services.tiny.app  :5004
#   localhost/stt-base:dev        transcriber  base + transcriber venv + base, tiny.en  uvicorn services.base.app :5002
#   localhost/stt-proxy:dev       proxy        base + proxy venv                     uvicorn services.proxy.app :5001
#   localhost/stt-controller:dev  operator     base + operator venv                  kopf run ... -m controller.operator
#
# The base layer (Debian bookworm minbase + python3 + user 10001) is one tar shared by all four
# images, so containerd stores it once; each image then gets its own /opt/stt/venv layer, installed
# from its role's lock (requirements/<role>.lock) only, as the Dockerfile's targets do. Same user
# (10001), paths and env as the Dockerfile. Usage: build.sh [--no-import] [IMAGE...]
# (IMAGE: tiny base proxy controller). --no-import leaves the docker-archive in
# /var/tmp/stt-k8s/images/stt-images.tar (docker load works too).
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

# the Dockerfile target (= pyproject.toml extra = requirements/<role>.lock) each image is built from
role() {
  case "$1" in tiny) echo detector ;; base) echo transcriber ;; proxy) echo proxy ;; controller) echo operator ;; esac
}

# ---- Docker mode: the real Dockerfile, one target per image, then `kind load` (see kind-config.yaml)
if use_kind; then
  BASE_TARGET="${STT_BASE_TARGET:-cpu}"   # gpu: the transcriber-gpu target, CUDA 12 runtime (large)
  case "$BASE_TARGET" in cpu|gpu) ;; *) die "STT_BASE_TARGET must be cpu or gpu, not $BASE_TARGET" ;; esac
  for img in "${IMAGES[@]}"; do
    target=$(role "$img")
    [ "$img" = base ] && [ "$BASE_TARGET" = gpu ] && target=transcriber-gpu
    log "docker build --target $target -f Dockerfile -t localhost/stt-$img:$TAG ."
    (cd "$REPO" && docker build --target "$target" -f Dockerfile -t "localhost/stt-$img:$TAG" .)
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

# ---- 2. wheels for the project (built on the host) and each image's runtime dependencies:
# exactly the pins of its requirements/<role>.lock (`make lock`), each file checked against the
# lock's sha256; wheels only, for the host's CPython 3.11, the same ABI as the image's python3
SRC="$OUT/src"
rm -rf "$SRC"; mkdir -p "$SRC"
(cd "$REPO" && git ls-files -co --exclude-standard -z | grep -zv -E '^(\.venv|bench/results|corpus/.*\.(wav|flac|mp3|ogg))' \
  | xargs -0 -I{} cp --parents -r {} "$SRC/" 2>/dev/null) || true
[ -f "$SRC/pyproject.toml" ] || die "no pyproject.toml in $REPO"
[ -f "$SRC/README.md" ] || echo "# stt-platform" > "$SRC/README.md"
WHEELS="$STT_K8S_CACHE/wheels"
rm -rf "$OUT/proj"; mkdir -p "$OUT/proj" "$WHEELS"
for img in "${IMAGES[@]}"; do
  [ -f "$REPO/requirements/$(role "$img").lock" ] || die "no requirements/$(role "$img").lock: run 'make lock'"
done
log "building the project wheel and downloading the locked runtime wheels"
PIPLOG="$OUT/pip.log"
"$PY" -m pip wheel -q --no-deps -w "$OUT/proj" "$SRC" >"$PIPLOG" 2>&1 || { cat "$PIPLOG" >&2; die "project wheel failed"; }
PROJ_WHL=$(ls "$OUT/proj"/*.whl)
for img in "${IMAGES[@]}"; do
  LOCK="$REPO/requirements/$(role "$img").lock"
  "$PY" -m pip download -q --require-hashes --only-binary :all: -d "$WHEELS" -r "$LOCK" >>"$PIPLOG" 2>&1 \
    || { grep -v '^WARNING: Location' "$PIPLOG" >&2; die "downloading the wheels of $LOCK failed"; }
done

# ---- 3. the shared base layer: rootfs + user 10001 + an empty /opt/stt/models
ROOT="$OUT/rootfs"
rm -rf "$ROOT"; mkdir -p "$ROOT"
tar --numeric-owner -C "$ROOT" -xf "$BASE_TAR"
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

# ---- 4. one venv layer per role, installed in the base root (chroot, clean environment) and
# packed alone: only /opt/stt/venv goes into it, whatever else the install touches stays behind
inroot() { env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 chroot "$ROOT" "$@"; }
# the wheel cache may hold other versions too: --require-hashes takes only the locked files
PIPI=(/opt/stt/venv/bin/pip install -q --no-index --no-compile --no-cache-dir --disable-pip-version-check)
mkdir -p "$ROOT/tmp/wheels"
cp "$WHEELS"/*.whl "$PROJ_WHL" "$ROOT/tmp/wheels/"
# two roles with the same lock (detector and transcriber: both Whisper) share one venv layer
declare -A VENV_LAYER VENV_MB SIZES LOCK_LAYER
for img in "${IMAGES[@]}"; do
  r=$(role "$img")
  [ -z "${VENV_LAYER[$r]:-}" ] || continue
  sum=$(sha256sum "$REPO/requirements/$r.lock" | cut -d' ' -f1)
  if [ -n "${LOCK_LAYER[$sum]:-}" ]; then
    VENV_LAYER[$r]=${LOCK_LAYER[$sum]}
    VENV_MB[$r]=$(du -m "${VENV_LAYER[$r]}" | cut -f1)
    log "$r: the same lock as an image built above, so the same venv layer"
    continue
  fi
  log "$r: installing requirements/$r.lock, then the project, into /opt/stt/venv"
  rm -rf "$ROOT/opt/stt/venv"
  cp "$REPO/requirements/$r.lock" "$ROOT/tmp/requirements.lock"
  inroot /usr/bin/python3 -m venv /opt/stt/venv
  inroot "${PIPI[@]}" --find-links /tmp/wheels --require-hashes -r /tmp/requirements.lock
  inroot "${PIPI[@]}" --no-deps "/tmp/wheels/$(basename "$PROJ_WHL")"
  inroot /opt/stt/venv/bin/pip check >/dev/null || { inroot /opt/stt/venv/bin/pip check >&2; die "pip check failed ($r)"; }
  inroot /opt/stt/venv/bin/pip uninstall -q -y pip setuptools >/dev/null 2>&1 || true
  find "$ROOT/opt/stt/venv" -depth -name __pycache__ -type d -exec rm -rf {} +
  VENV_LAYER[$r]="$OUT/layer-venv-$r.tar"
  tar --numeric-owner --sort=name --mtime=@0 -C "$ROOT" -cf "${VENV_LAYER[$r]}" ./opt/stt/venv
  LOCK_LAYER[$sum]=${VENV_LAYER[$r]}
  VENV_MB[$r]=$(du -m "${VENV_LAYER[$r]}" | cut -f1)
  log "$r venv layer: ${VENV_MB[$r]} MB"
done

# ---- 5. model layers, then one docker-archive holding all requested images (the shared base
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
  r=$(role "$img")
  dirs="" ports="" cmd="" models_mb=0
  case "$img" in
    tiny) d=$(model_layer tiny.en); dirs="\"$d\""; ports='"5004"'; cmd=$(uvicorn_cmd tiny 5004)
          models_mb=$(du -sm "$d" | cut -f1) ;;
    base) d=$(model_layer base); d2=$(model_layer tiny.en); dirs="\"$d\", \"$d2\""
          ports='"5002"'; cmd=$(uvicorn_cmd base 5002)
          models_mb=$(( $(du -sm "$d" | cut -f1) + $(du -sm "$d2" | cut -f1) )) ;;
    proxy) ports='"5001"'; cmd=$(uvicorn_cmd proxy 5001) ;;
    controller) cmd='["kopf","run","--standalone","--all-namespaces","-m","controller.operator"]' ;;
  esac
  SIZES[$img]=$(( BASE_MB + VENV_MB[$r] + models_mb ))
  cat >> "$SPEC" <<EOT
$sep{"tag": "localhost/stt-$img:$TAG", "layers": ["$BASE_LAYER", "${VENV_LAYER[$r]}"], "layer_dirs": [$dirs],
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
rm -rf "$ROOT" "$SRC" "$OUT/proj" "$OUT"/layer-model-* "$OUT"/layer-venv-*.tar "$BASE_LAYER"

# ---- 6. import into the cluster's containerd
if [ "$IMPORT" = 1 ]; then
  ctr --address "$CONTAINERD_SOCK" -n k8s.io images import "$ARCHIVE" >/dev/null
  rm -f "$ARCHIVE"   # containerd holds the images now
  log "imported into containerd (k8s.io namespace):"
  ctr --address "$CONTAINERD_SOCK" -n k8s.io images ls | awk 'NR==1 || /localhost\/stt-/ {printf "  %-34s %s %s\n", $1, $4, $5}' >&2
fi
log "images built in $(( $(date +%s) - T0 ))s; sizes (uncompressed; the ${BASE_MB} MB base layer is shared):"
for img in "${IMAGES[@]}"; do
  r=$(role "$img")
  printf '  %-34s %5s MB  (%s venv %s MB)\n' "localhost/stt-$img:$TAG" "${SIZES[$img]}" "$r" "${VENV_MB[$r]}"
done
