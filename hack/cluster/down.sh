#!/usr/bin/env bash
# Stop what hack/cluster/up.sh started (by PID) and clean up after it: containerd tasks and
# containers, mounts, CNI network namespaces, the cni0 bridge, KUBE-*/CNI iptables chains,
# the stt0 link, and the cluster state (etcd, certs). Images and binaries stay cached.
# Safe to run twice.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=hack/cluster/lib.sh
. "$HERE/lib.sh"
if use_kind; then exec "$HERE/kind.sh" down; fi
D="$STT_CLUSTER_DIR"
PIDS="$D/pids"

stop() { # name...: SIGTERM all, wait (10 s at most), SIGKILL leftovers; only PIDs we recorded
  local n pid i left pids=()
  for n in "$@"; do
    [ -f "$PIDS/$n" ] || continue
    pid=$(cat "$PIDS/$n")
    if ours "$PIDS/$n" "$n"; then
      log "stopping $n (pid $pid)"
      kill "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
    rm -f "$PIDS/$n"
  done
  for ((i = 0; i < 40; i++)); do
    left=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && left=1; done
    [ "$left" = 0 ] && break
    sleep 0.25
  done
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
}

stop kubelet kube-proxy
if ours "$PIDS/containerd" containerd; then
  CTR=(ctr --address "$CONTAINERD_SOCK" -n k8s.io)
  for t in $("${CTR[@]}" tasks ls -q 2>/dev/null); do
    "${CTR[@]}" tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true
  done
  sleep 1
  for t in $("${CTR[@]}" tasks ls -q 2>/dev/null); do
    "${CTR[@]}" tasks delete -f "$t" >/dev/null 2>&1 || true
  done
  for c in $("${CTR[@]}" containers ls -q 2>/dev/null); do
    "${CTR[@]}" containers delete "$c" >/dev/null 2>&1 || true
  done
fi
stop containerd
# shims that outlived containerd (each is started by it and carries our socket path)
for p in $(pgrep -f "containerd-shim-runc-v2 .*-address $CONTAINERD_SOCK" 2>/dev/null || true); do
  kill -9 "$p" 2>/dev/null || true
done
stop kube-scheduler kube-controller-manager kube-apiserver
stop etcd

# mounts under our directories (deepest first)
for dir in "$D" "$STT_K8S_CACHE/containerd"; do
  awk -v d="$dir" '$2 ~ "^"d {print $2}' /proc/self/mounts | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
done
# CNI network namespaces created while the cluster ran
if [ -f "$D/netns-before" ]; then
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep '^cni-' || true); do
    grep -qx "$ns" "$D/netns-before" || ip netns delete "$ns" 2>/dev/null || true
  done
fi
if ip link show cni0 >/dev/null 2>&1; then ip link delete cni0 2>/dev/null || true; fi
# iptables: KUBE-* chains (kube-proxy, kubelet), CNI-* chains (portmap), our STT-INPUT guard
for table in filter nat mangle; do
  iptables -t "$table" -S 2>/dev/null | awk '/^-A/ && / -j (KUBE-|CNI-|STT-)/' | sed 's/^-A/-D/' |
    while read -r rule; do eval "iptables -t $table $rule" 2>/dev/null || true; done
  chains=$(iptables -t "$table" -S 2>/dev/null | awk '/^-N (KUBE-|CNI-|STT-)/ {print $2}')
  for c in $chains; do iptables -t "$table" -F "$c" 2>/dev/null || true; done
  for c in $chains; do iptables -t "$table" -X "$c" 2>/dev/null || true; done
done
if command -v ip6tables >/dev/null; then
  for port in "$API_PORT" 10250; do
    while ip6tables -D INPUT -p tcp --dport "$port" ! -i lo -j DROP 2>/dev/null; do :; done
  done
fi
if [ -f "$D/link-created" ] || ip -br addr show dev "$NODE_LINK" 2>/dev/null | grep -q "$NODE_IP"; then
  ip link delete "$NODE_LINK" 2>/dev/null || true
fi
if [ -f "$D/sysctl-before" ]; then
  while read -r k v; do echo "$v" > "/proc/sys/$k" 2>/dev/null || true; done < "$D/sysctl-before"
fi
rm -rf "$D"
log "cluster down (binaries and imported images stay cached in $STT_K8S_CACHE)"
