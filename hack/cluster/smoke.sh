#!/usr/bin/env bash
# Smoke test of the running cluster and the imported images: one throwaway pod per image
# (imagePullPolicy: Never, non-root, read-only root filesystem, /tmp an emptyDir) importing the
# runtime stack and, for tiny/base, verifying the baked-in model without writing; and one pod
# that calls the API server through the in-cluster `kubernetes` Service with its
# service-account token; and one that finds a Service through SMOKE_WEB_SERVICE_HOST/_PORT
# (there is no cluster DNS). Prints each pod's output; exits non-zero on any failure.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=hack/cluster/lib.sh
. "$HERE/lib.sh"
TAG="${STT_IMAGE_TAG:-dev}"
NS="${STT_SMOKE_NS:-stt-smoke}"
export KUBECONFIG="$KUBECONFIG_PATH"
kubectl get ns "$NS" >/dev/null 2>&1 || kubectl create ns "$NS" >/dev/null

pod() { # name image python-code
  cat <<EOT
apiVersion: v1
kind: Pod
metadata: {name: $1, namespace: $NS, labels: {app.kubernetes.io/part-of: stt-smoke}}
spec:
  restartPolicy: Never
  securityContext: {runAsNonRoot: true, runAsUser: 10001, runAsGroup: 10001}
  containers:
  - name: main
    image: $2
    imagePullPolicy: Never
    command: ["python", "-c", $(printf '%s' "$3" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))')]
    securityContext: {readOnlyRootFilesystem: true, allowPrivilegeEscalation: false}
    resources: {requests: {cpu: 50m, memory: 64Mi}}
    volumeMounts: [{name: tmp, mountPath: /tmp}]
  volumes: [{name: tmp, emptyDir: {}}]
---
EOT
}
IMPORTS='import os, faster_whisper, ctranslate2, fastapi, uvicorn, httpx, numpy, kopf, kubernetes, prometheus_client, multipart
import services.common.models as m
print("uid", os.getuid(), "HOME", os.environ["HOME"], "ctranslate2", ctranslate2.__version__, "cuda devices", ctranslate2.get_cuda_device_count())'
MODEL='
for name in os.environ["CHECK_MODELS"].split():
    m.verify(name, m.cache_dir() / name)
    print("model", name, "verified in", m.cache_dir() / name)'
API='
import json, os, ssl, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
ctx = ssl.create_default_context(cafile=sa + "/ca.crt")
req = urllib.request.Request(f"https://{host}:{port}/version", headers={"Authorization": "Bearer " + open(sa + "/token").read()})
v = json.load(urllib.request.urlopen(req, context=ctx, timeout=10))
print("GET", f"https://{host}:{port}/version", "->", v["gitVersion"])
from kubernetes import client, config
config.load_incluster_config()
print("kubernetes client in-cluster ->", client.VersionApi().get_code().git_version)'

{
  pod smoke-tiny "localhost/stt-tiny:$TAG" "$IMPORTS$MODEL" | sed 's/^    resources:/    env: [{name: CHECK_MODELS, value: tiny.en}]\n    resources:/'
  pod smoke-base "localhost/stt-base:$TAG" "$IMPORTS$MODEL" | sed 's/^    resources:/    env: [{name: CHECK_MODELS, value: base}]\n    resources:/'
  pod smoke-proxy "localhost/stt-proxy:$TAG" "$IMPORTS"
  pod smoke-controller "localhost/stt-controller:$TAG" "$IMPORTS"
  pod smoke-api "localhost/stt-controller:$TAG" "$API"
} > "$STT_CLUSTER_DIR/smoke.yaml"
# Service discovery without DNS: a server pod behind Service "smoke-web", and a client pod
# (created after the Service) that finds it through SMOKE_WEB_SERVICE_HOST/_PORT.
cat > "$STT_CLUSTER_DIR/smoke-web.yaml" <<EOT
apiVersion: v1
kind: Service
metadata: {name: smoke-web, namespace: $NS, labels: {app.kubernetes.io/part-of: stt-smoke}}
spec:
  selector: {app: smoke-web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: smoke-web, namespace: $NS, labels: {app: smoke-web, app.kubernetes.io/part-of: stt-smoke}}
spec:
  securityContext: {runAsNonRoot: true}
  containers:
  - name: main
    image: localhost/stt-proxy:$TAG
    imagePullPolicy: Never
    command: ["python", "-m", "http.server", "8080", "--directory", "/opt/stt"]
    readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
    securityContext: {readOnlyRootFilesystem: true}
EOT
WEB='
import os, urllib.request
host, port = os.environ["SMOKE_WEB_SERVICE_HOST"], os.environ["SMOKE_WEB_SERVICE_PORT"]
url = f"http://{host}:{port}/"
print("GET", url, "->", urllib.request.urlopen(url, timeout=10).status, "(Service found via env vars)")'
pod smoke-discovery "localhost/stt-proxy:$TAG" "$WEB" >> "$STT_CLUSTER_DIR/smoke.yaml"

kubectl -n "$NS" delete pod,svc -l app.kubernetes.io/part-of=stt-smoke --wait=true >/dev/null 2>&1 || true
t0=$(date +%s)
kubectl apply -f "$STT_CLUSTER_DIR/smoke-web.yaml" >/dev/null
kubectl -n "$NS" wait --for=condition=Ready pod/smoke-web --timeout=120s >/dev/null
kubectl apply -f "$STT_CLUSTER_DIR/smoke.yaml" >/dev/null
fail=0
for p in smoke-tiny smoke-base smoke-proxy smoke-controller smoke-api smoke-discovery; do
  phase=""
  for _ in $(seq 1 240); do
    phase=$(kubectl -n "$NS" get pod "$p" -o jsonpath='{.status.phase}' 2>/dev/null || true)
    case "$phase" in Succeeded|Failed) break ;; esac
    sleep 0.5
  done
  echo "== $p: ${phase:-unknown}"
  kubectl -n "$NS" logs "$p" 2>&1 | sed 's/^/   /' || true
  [ "$phase" = Succeeded ] || { fail=1; kubectl -n "$NS" describe pod "$p" | tail -15; }
done
log "smoke pods finished in $(( $(date +%s) - t0 ))s"
if [ "$fail" = 0 ]; then
  kubectl delete ns "$NS" --wait=false >/dev/null
  log "smoke test passed"
else
  die "smoke test failed (pods left in namespace $NS)"
fi
