#!/usr/bin/env bash
# The Docker mode of `make cluster` / `make cluster-down`: a kind cluster from kind-config.yaml.
#   kind.sh up     create (or reuse) the cluster, write the kubeconfig, fake nvidia.com/gpu, wait Ready
#   kind.sh down   delete the cluster
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
# shellcheck source=hack/cluster/lib.sh
. "$HERE/lib.sh"
command -v kind >/dev/null || die "kind not found"
case "${1:-}" in
  up)
    T0=$(date +%s)
    "$HERE/build-binaries.sh" --tools-only
    mkdir -p "$STT_CLUSTER_DIR"
    if ! kind get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER"; then
      log "kind create cluster --name $KIND_CLUSTER --config kind-config.yaml"
      kind create cluster --name "$KIND_CLUSTER" --config "$REPO/kind-config.yaml" \
        --kubeconfig "$KUBECONFIG_PATH" --wait 180s
    fi
    kind export kubeconfig --name "$KIND_CLUSTER" --kubeconfig "$KUBECONFIG_PATH" >/dev/null
    export KUBECONFIG="$KUBECONFIG_PATH"
    for node in $(kubectl get nodes -o name); do
      log "advertising fake nvidia.com/gpu=$FAKE_GPUS on $node"
      kubectl patch "$node" --subresource=status --type=json \
        -p "[{\"op\":\"add\",\"path\":\"/status/capacity/nvidia.com~1gpu\",\"value\":\"$FAKE_GPUS\"}]" >/dev/null
    done
    kubectl wait --for=condition=Ready nodes --all --timeout=180s >/dev/null
    log "kind cluster $KIND_CLUSTER Ready after $(( $(date +%s) - T0 ))s (kubeconfig: $KUBECONFIG_PATH)"
    ;;
  down)
    if kind get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER"; then
      kind delete cluster --name "$KIND_CLUSTER"
    fi
    rm -f "$KUBECONFIG_PATH"
    log "kind cluster $KIND_CLUSTER deleted"
    ;;
  *) die "usage: $0 up|down" ;;
esac
