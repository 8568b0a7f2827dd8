#!/usr/bin/env bash
# Start a real single-node Kubernetes v1.20 on this machine (no Docker): etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, containerd, kubelet, kube-proxy. Idempotent: exits
# early when the cluster is already up. Ends when node "localhost" is Ready.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=hack/cluster/lib.sh
. "$HERE/lib.sh"
if use_kind; then exec "$HERE/kind.sh" up; fi
T0=$(date +%s)
D="$STT_CLUSTER_DIR"
PIDS="$D/pids"

alive() { ours "$PIDS/$1" "$1"; }
kc() { "$STT_BIN/kubectl" --kubeconfig "$KUBECONFIG_PATH" "$@"; }

if alive kube-apiserver && alive kubelet && kc get node localhost >/dev/null 2>&1; then
  log "cluster already running (kubeconfig: $KUBECONFIG_PATH)"
  exit 0
fi
if [ -d "$PIDS" ] && ls "$PIDS"/* >/dev/null 2>&1; then
  log "a partial cluster is around: tearing it down first"
  "$HERE/down.sh"
fi

"$HERE/build-binaries.sh"
apt_install etcd-server containerd runc containernetworking-plugins iptables iproute2 openssl ca-certificates curl procps
# Debian's packages may have started their own daemons through init scripts: we use our own.
for f in /usr/lib/cni/bridge /usr/lib/cni/host-local /usr/lib/cni/portmap /usr/lib/cni/loopback; do
  [ -x "$f" ] || die "missing CNI plugin $f"
done

mkdir -p "$D"/{pids,logs,pki,etcd,cni/net.d,kubelet,containerd} "$STT_K8S_CACHE/containerd"
chmod 700 "$D/pki"
ip netns list 2>/dev/null | awk '{print $1}' | sort > "$D/netns-before"
# sysctls we (or the CNI bridge plugin) change; cluster-down restores them
if [ ! -f "$D/sysctl-before" ]; then
  for k in net/ipv4/ip_forward net/bridge/bridge-nf-call-iptables; do
    [ -r "/proc/sys/$k" ] && echo "$k $(cat "/proc/sys/$k")"
  done > "$D/sysctl-before"
fi

# --- a non-loopback host address for the apiserver (pods reach it via the kubernetes Service)
if ! ip -br addr show dev "$NODE_LINK" 2>/dev/null | grep -q "$NODE_IP"; then
  ip link del "$NODE_LINK" 2>/dev/null || true
  if ! ip link add "$NODE_LINK" type dummy 2>/dev/null; then
    # no dummy driver in this kernel: a port-less bridge holds a local address just as well
    ip link add "$NODE_LINK" type bridge
  fi
  ip addr add "$NODE_IP/32" dev "$NODE_LINK"
  ip link set "$NODE_LINK" up
  touch "$D/link-created"
fi

# --- certificates and tokens
P="$D/pki"
if [ ! -f "$P/ca.crt" ]; then
  log "generating CA, serving certificates, service-account keys, tokens"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$P/ca.key" -out "$P/ca.crt" -days 3650 \
    -subj "/CN=stt-local-ca" 2>/dev/null
  cat > "$P/apiserver.ext" <<EOT
basicConstraints=CA:FALSE
keyUsage=digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:$NODE_IP,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
EOT
  openssl req -newkey rsa:2048 -nodes -keyout "$P/apiserver.key" -out "$P/apiserver.csr" \
    -subj "/CN=kube-apiserver" 2>/dev/null
  openssl x509 -req -in "$P/apiserver.csr" -CA "$P/ca.crt" -CAkey "$P/ca.key" -CAcreateserial \
    -out "$P/apiserver.crt" -days 3650 -extfile "$P/apiserver.ext" 2>/dev/null
  # the apiserver's client certificate towards the kubelet (logs, exec, port-forward)
  printf 'extendedKeyUsage=clientAuth\n' > "$P/client.ext"
  openssl req -newkey rsa:2048 -nodes -keyout "$P/apiserver-kubelet-client.key" \
    -out "$P/apiserver-kubelet-client.csr" -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" 2>/dev/null
  openssl x509 -req -in "$P/apiserver-kubelet-client.csr" -CA "$P/ca.crt" -CAkey "$P/ca.key" \
    -CAcreateserial -out "$P/apiserver-kubelet-client.crt" -days 3650 -extfile "$P/client.ext" 2>/dev/null
  openssl genrsa -out "$P/sa.key" 2048 2>/dev/null
  openssl rsa -in "$P/sa.key" -pubout -out "$P/sa.pub" 2>/dev/null
  : > "$P/tokens.csv"
  for who in admin kubelet controller-manager scheduler proxy; do
    openssl rand -hex 24 > "$P/$who.token"
  done
  {
    echo "$(cat "$P/admin.token"),admin,admin,system:masters"
    echo "$(cat "$P/kubelet.token"),system:node:localhost,kubelet,system:nodes"
    echo "$(cat "$P/controller-manager.token"),system:kube-controller-manager,kcm"
    echo "$(cat "$P/scheduler.token"),system:kube-scheduler,sched"
    echo "$(cat "$P/proxy.token"),system:kube-proxy,kube-proxy,system:node-proxier"
  } > "$P/tokens.csv"
fi
mkkubeconfig() { # name user token
  cat > "$D/$1.kubeconfig" <<EOT
apiVersion: v1
kind: Config
clusters:
- name: stt-local
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $(base64 -w0 "$P/ca.crt")
users:
- name: $2
  user:
    token: $3
contexts:
- name: stt-local
  context: {cluster: stt-local, user: $2}
current-context: stt-local
EOT
  chmod 600 "$D/$1.kubeconfig"
}
mkkubeconfig admin admin "$(cat "$P/admin.token")"
cp "$D/admin.kubeconfig" "$KUBECONFIG_PATH"
mkkubeconfig kubelet kubelet "$(cat "$P/kubelet.token")"
mkkubeconfig controller-manager kcm "$(cat "$P/controller-manager.token")"
mkkubeconfig scheduler sched "$(cat "$P/scheduler.token")"
mkkubeconfig proxy kube-proxy "$(cat "$P/proxy.token")"

start() { # name cmd...   (start a daemon in the background, remember its PID)
  local name=$1; shift
  if alive "$name"; then return 0; fi
  log "starting $name"
  setsid "$@" >"$D/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$PIDS/$name"
}
wait_for() { # what timeout cmd...
  local what=$1 t=$2; shift 2
  local i
  for ((i = 0; i < t * 2; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  die "$what did not come up in ${t}s (logs: $D/logs)"
}

# --- etcd
start etcd /usr/bin/etcd --name stt --data-dir "$D/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "stt=http://127.0.0.1:$ETCD_PEER_PORT" --listen-metrics-urls "http://127.0.0.1:2481"

# --- containerd (own root/state/socket), with the local pause image as the sandbox image
CD="$D/containerd"
cat > "$CD/config.toml" <<EOT
version = 2
root = "$STT_K8S_CACHE/containerd"
state = "$CD/state"
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$CONTAINERD_SOCK.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$D/cni/net.d"
EOT
cat > "$D/cni/net.d/10-stt.conflist" <<'EOT'
{
  "cniVersion": "0.4.0",
  "name": "stt",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "10.244.0.0/24"}]],
        "routes": [{"dst": "10.96.0.0/16"}, {"dst": "10.250.0.1/32"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOT
start containerd /usr/bin/containerd --config "$CD/config.toml"
wait_for containerd 30 ctr --address "$CONTAINERD_SOCK" version

# --- the pause image
if ! ctr --address "$CONTAINERD_SOCK" -n k8s.io images ls -q | grep -qx "$PAUSE_IMAGE"; then
  log "importing $PAUSE_IMAGE"
  tmp=$(mktemp -d)
  mkdir -p "$tmp/root"
  cp "$STT_BIN/pause" "$tmp/root/pause"
  python3 "$HERE/../images/mkarchive.py" --out "$tmp/pause.tar" --tag "$PAUSE_IMAGE" \
    --entrypoint /pause --layer-dir "$tmp/root"
  ctr --address "$CONTAINERD_SOCK" -n k8s.io images import --no-unpack "$tmp/pause.tar" >/dev/null
  rm -rf "$tmp"
fi

# --- kube-apiserver: bound to all addresses (pods come in via $NODE_IP), guarded by iptables
wait_for etcd 30 curl -fsS "http://127.0.0.1:$ETCD_PORT/health"
start kube-apiserver "$STT_BIN/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
  --bind-address 0.0.0.0 --secure-port "$API_PORT" --advertise-address "$NODE_IP" \
  --insecure-port 0 \
  --tls-cert-file "$P/apiserver.crt" --tls-private-key-file "$P/apiserver.key" \
  --client-ca-file "$P/ca.crt" --token-auth-file "$P/tokens.csv" \
  --kubelet-client-certificate "$P/apiserver-kubelet-client.crt" \
  --kubelet-client-key "$P/apiserver-kubelet-client.key" \
  --kubelet-preferred-address-types Hostname,InternalIP \
  --authorization-mode Node,RBAC \
  --enable-admission-plugins NodeRestriction \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$P/sa.pub" --service-account-signing-key-file "$P/sa.key" \
  --api-audiences https://kubernetes.default.svc.cluster.local \
  --service-cluster-ip-range 10.96.0.0/16 --allow-privileged=true \
  --endpoint-reconciler-type lease
# only loopback and the pod network may talk to the apiserver port
iptables -N STT-INPUT 2>/dev/null || iptables -F STT-INPUT
iptables -A STT-INPUT -i lo -j RETURN
iptables -A STT-INPUT -s 10.244.0.0/16 -j RETURN
iptables -A STT-INPUT -j DROP
for port in "$API_PORT" 10250; do
  iptables -C INPUT -p tcp --dport "$port" -j STT-INPUT 2>/dev/null || iptables -I INPUT -p tcp --dport "$port" -j STT-INPUT
  # the apiserver's wildcard socket is dual-stack: IPv6 only from loopback
  if command -v ip6tables >/dev/null && ip6tables -S INPUT >/dev/null 2>&1; then
    ip6tables -C INPUT -p tcp --dport "$port" ! -i lo -j DROP 2>/dev/null || ip6tables -I INPUT -p tcp --dport "$port" ! -i lo -j DROP
  fi
done
# pods talk to each other, to Services and to this host only: nothing from the pod network is
# forwarded to another interface (even where ip_forward is on)
# (the bridge plugin turns ip_forward on; the mangle table runs before kube-proxy's filter rules)
iptables -t mangle -N STT-FORWARD 2>/dev/null || iptables -t mangle -F STT-FORWARD
iptables -t mangle -A STT-FORWARD -s 10.244.0.0/16 ! -d 10.244.0.0/16 -j DROP
iptables -t mangle -C FORWARD -j STT-FORWARD 2>/dev/null || iptables -t mangle -I FORWARD -j STT-FORWARD
wait_for kube-apiserver 90 curl -fsS --cacert "$P/ca.crt" "https://127.0.0.1:$API_PORT/readyz"

start kube-controller-manager "$STT_BIN/kube-controller-manager" \
  --kubeconfig "$D/controller-manager.kubeconfig" --bind-address 127.0.0.1 --port 0 \
  --authentication-kubeconfig "$D/controller-manager.kubeconfig" \
  --authorization-kubeconfig "$D/controller-manager.kubeconfig" \
  --controllers '*,-nodeipam' --use-service-account-credentials \
  --service-account-private-key-file "$P/sa.key" --root-ca-file "$P/ca.crt" \
  --cluster-signing-cert-file "$P/ca.crt" --cluster-signing-key-file "$P/ca.key" \
  --leader-elect=false
start kube-scheduler "$STT_BIN/kube-scheduler" \
  --kubeconfig "$D/scheduler.kubeconfig" --bind-address 127.0.0.1 --port 0 \
  --authentication-kubeconfig "$D/scheduler.kubeconfig" \
  --authorization-kubeconfig "$D/scheduler.kubeconfig" --leader-elect=false

# --- kubelet
cat > "$D/kubelet/config.yaml" <<EOT
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$P/ca.crt"}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
resolvConf: ""
evictionHard: {memory.available: "1Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
clusterDomain: cluster.local
EOT
sysctl -qw net.bridge.bridge-nf-call-iptables=1 || echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables
start kubelet "$STT_BIN/kubelet" \
  --config "$D/kubelet/config.yaml" --kubeconfig "$D/kubelet.kubeconfig" \
  --root-dir "$D/kubelet/root" --cert-dir "$D/kubelet/pki" \
  --hostname-override localhost --node-ip "$NODE_IP" \
  --container-runtime remote --container-runtime-endpoint "unix://$CONTAINERD_SOCK" \
  --image-service-endpoint "unix://$CONTAINERD_SOCK" --runtime-request-timeout 10m \
  --pod-infra-container-image "$PAUSE_IMAGE"
start kube-proxy "$STT_BIN/kube-proxy" \
  --kubeconfig "$D/proxy.kubeconfig" --hostname-override localhost --proxy-mode iptables \
  --cluster-cidr 10.244.0.0/16 --bind-address 127.0.0.1 \
  --healthz-bind-address 127.0.0.1:10256 --metrics-bind-address 127.0.0.1:10249 \
  --conntrack-max-per-core 0 --conntrack-tcp-timeout-established 0 --conntrack-tcp-timeout-close-wait 0

wait_for "node localhost" 120 kc get node localhost
log "advertising fake nvidia.com/gpu=$FAKE_GPUS on node localhost"
kc patch node localhost --subresource=status --type=json \
  -p "[{\"op\":\"add\",\"path\":\"/status/capacity/nvidia.com~1gpu\",\"value\":\"$FAKE_GPUS\"}]" >/dev/null
kc wait --for=condition=Ready node/localhost --timeout=180s >/dev/null
wait_for "default service account" 60 kc -n default get serviceaccount default
log "node localhost Ready after $(( $(date +%s) - T0 ))s (kubeconfig: $KUBECONFIG_PATH)"
