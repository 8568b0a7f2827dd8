"""The Helm chart, checked without a cluster: lint, schema validation of every rendered object
for several Kubernetes versions, and the properties that matter (security, GPU scheduling,
least privilege, network isolation, API versions chosen by capability)."""

from __future__ import annotations

import base64
import functools
import json
import subprocess

import kubernetes_validate
import pytest
import yaml

from controller.autoscaling import DEFAULT_POLICIES
from core.vocabulary import BACKENDS, DEFAULT_DETECTOR, DETECTORS, GROUP, KIND, PLURAL, ROUTING_MODES, VERSION
from tests.k8s.tools import CHART

# Objects whose schema comes from a CRD (ours or the Prometheus operator's): not in
# kubernetes-validate's built-in schemas. The SttConfig is checked against our CRD below.
CRD_KINDS = {"SttConfig", "ServiceMonitor", "PrometheusRule"}


@functools.cache
def _render(helm: str, kube_version: str, args: tuple[str, ...], release: str) -> tuple[dict, ...]:
    cmd = [helm, "template", release, str(CHART), "--namespace", "stt", "--kube-version", kube_version, *args]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


def render(helm: str, kube_version: str = "1.33.0", *args: str, release: str = "stt") -> list[dict]:
    return list(_render(helm, kube_version, tuple(args), release))


def find(docs: list[dict], kind: str, name: str) -> dict:
    for d in docs:
        if d["kind"] == kind and d["metadata"]["name"] == name:
            return d
    raise AssertionError(f"{kind}/{name} not rendered; have {[(d['kind'], d['metadata']['name']) for d in docs]}")


def deployments(docs: list[dict]) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}


def env_of(deployment: dict, container: int = 0) -> dict[str, str]:
    c = deployment["spec"]["template"]["spec"]["containers"][container]
    return {e["name"]: e.get("value") for e in c.get("env", [])}


@pytest.mark.parametrize("kube_version", ["1.20.2", "1.33.0"])
def test_helm_lint_strict(helm: str, kube_version: str) -> None:
    args = [helm, "lint", "--strict", str(CHART), "--kube-version", kube_version]
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("kube_version", ["1.25.0", "1.29.0", "1.33.0", "1.37.0"])
def test_every_object_validates_strictly(helm: str, kube_version: str) -> None:
    docs = render(helm, kube_version)
    checked = 0
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} invalid on {kube_version}: {exc.path}: {exc.message}")
        checked += 1
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "CustomResourceDefinition", "NetworkPolicy", "PodDisruptionBudget"} <= kinds
    assert {"Role", "RoleBinding", "ServiceAccount", "Secret"} <= kinds
    assert checked >= 25


def test_pdb_and_seccomp_api_chosen_by_version(helm: str) -> None:
    old = render(helm, "1.20.2")
    new = render(helm, "1.33.0")
    assert {d["apiVersion"] for d in old if d["kind"] == "PodDisruptionBudget"} == {"policy/v1beta1"}
    assert {d["apiVersion"] for d in new if d["kind"] == "PodDisruptionBudget"} == {"policy/v1"}
    # seccomp: a field from 1.19 (so on the local 1.20 cluster too), the alpha annotation before.
    for docs in (old, new):
        for d in deployments(docs).values():
            assert d["spec"]["template"]["spec"]["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    ancient = deployments(render(helm, "1.18.0"))
    for d in ancient.values():
        pod = d["spec"]["template"]
        assert "seccompProfile" not in pod["spec"]["securityContext"]
        assert pod["metadata"]["annotations"]["seccomp.security.alpha.kubernetes.io/pod"] == "runtime/default"


def test_pods_are_locked_down(helm: str) -> None:
    deps = deployments(render(helm))
    assert set(deps) == {"stt-tiny", "stt-base-cpu", "stt-base-gpu", "stt-proxy", "stt-controller"}
    for name, d in deps.items():
        pod = d["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == 10001, name
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["privileged"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert "add" not in sc["capabilities"], name
            assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"], name
            assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"]), f"{name}: read-only root needs /tmp"
        # only the proxy and the operator talk to the API server
        assert pod["automountServiceAccountToken"] is (name in ("stt-proxy", "stt-controller")), name


def test_probes_use_the_services_endpoints(helm: str) -> None:
    deps = deployments(render(helm))
    for name in ("stt-tiny", "stt-base-cpu", "stt-base-gpu", "stt-proxy"):
        c = deps[name]["spec"]["template"]["spec"]["containers"][0]
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", name
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", name
        # model loading must not trip the liveness probe: a start-up probe covers it
        assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] >= 120, name
    ctrl = deps["stt-controller"]["spec"]["template"]["spec"]["containers"][0]
    assert ctrl["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "--liveness=http://0.0.0.0:8081/healthz" in ctrl["command"]


def test_gpu_deployment_requests_a_gpu_and_is_placeable(helm: str) -> None:
    gpu = deployments(render(helm))["stt-base-gpu"]
    pod = gpu["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert env_of(gpu)["STT_DEVICE"] == "cuda"
    assert env_of(gpu)["STT_BATCH_MAX"] == "16"  # the measured best batch on a GPU
    assert "STT_BATCH_MAX" not in env_of(deployments(render(helm))["stt-base-cpu"])
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert "runtimeClassName" not in pod and "nodeSelector" not in pod
    # a GPU rollout must not need a second GPU
    assert gpu["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    # routing cpu by default: no GPU pod until someone asks for one
    assert gpu["spec"]["replicas"] == 0

    custom = deployments(
        render(
            helm,
            "1.33.0",
            "--set",
            "baseGpu.runtimeClassName=nvidia",
            "--set",
            "baseGpu.nodeSelector.gpu-type=a100",
            "--set",
            "baseGpu.gpusPerPod=2",
            "--set",
            "sttConfig.routing=gpu",
            "--set",
            "sttConfig.gpuReplicas=3",
        )
    )["stt-base-gpu"]
    pod = custom["spec"]["template"]["spec"]
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["nodeSelector"] == {"gpu-type": "a100"}
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert custom["spec"]["replicas"] == 3
    cpu = deployments(render(helm))["stt-base-cpu"]
    assert "nvidia.com/gpu" not in cpu["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]


def test_proxy_follows_the_sttconfig_and_finds_backends(helm: str) -> None:
    proxy = deployments(render(helm))["stt-proxy"]
    env = env_of(proxy)
    assert env["STT_ROUTING_SOURCE"] == "kubernetes"
    assert env["STT_STTCONFIG_NAME"] == "stt"
    assert env["STT_CPU_BACKEND_URL"] == "http://$(STT_BASE_CPU_SERVICE_HOST):$(STT_BASE_CPU_SERVICE_PORT)"
    assert env["STT_GPU_BACKEND_URL"] == "http://$(STT_BASE_GPU_SERVICE_HOST):$(STT_BASE_GPU_SERVICE_PORT)"
    assert env["STT_DETECTOR_URL"] == "http://$(STT_TINY_SERVICE_HOST):$(STT_TINY_SERVICE_PORT)"
    assert env["STT_ADMIN_TOKEN_FILE"] == "/var/run/stt/admin/token"
    assert "STT_ADMIN_TOKEN" not in env  # the token is a mounted file, not in the pod spec
    pod_env = proxy["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}} in pod_env

    dns = env_of(deployments(render(helm, "1.33.0", "--set", "serviceDiscovery=dns"))["stt-proxy"])
    assert dns["STT_CPU_BACKEND_URL"] == "http://stt-base-cpu.stt.svc.cluster.local:5002"
    # Names derive from the release: a different release gets its own Services and variables.
    other = env_of(deployments(render(helm, "1.33.0", release="demo"))["demo-stt-proxy"])
    assert other["STT_CPU_BACKEND_URL"] == "http://$(DEMO_STT_BASE_CPU_SERVICE_HOST):$(DEMO_STT_BASE_CPU_SERVICE_PORT)"


def test_rbac_is_least_privilege(helm: str) -> None:
    docs = render(helm)
    proxy = find(docs, "Role", "stt-proxy")
    assert proxy["rules"] == [
        {
            "apiGroups": ["stt.platform.io"],
            "resources": ["sttconfigs"],
            "resourceNames": ["stt"],
            "verbs": ["get", "list", "watch", "patch"],
        }
    ]
    ctrl = find(docs, "Role", "stt-controller")
    verbs = {
        (g, r, v) for rule in ctrl["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]
    }
    assert not {v for _, _, v in verbs} & {"create", "delete", "deletecollection", "update", "*"} - {"create"}
    assert not any(r in ("secrets", "pods", "*") for _, r, _ in verbs)
    assert ("", "events", "create") in verbs  # kopf posts events; the only thing it creates
    assert {v for g, r, v in verbs if r == "deployments"} == {"get", "list", "watch", "patch"}
    patch_rule = next(r for r in ctrl["rules"] if r["resources"] == ["deployments"] and r["verbs"] == ["patch"])
    assert sorted(patch_rule["resourceNames"]) == ["stt-base-cpu", "stt-base-gpu", "stt-tiny"]
    # nothing cluster-scoped: the release can be installed by a namespace admin's grants
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    deps = deployments(docs)
    assert deps["stt-proxy"]["spec"]["template"]["spec"]["serviceAccountName"] == "stt-proxy"
    assert deps["stt-controller"]["spec"]["template"]["spec"]["serviceAccountName"] == "stt-controller"
    assert deps["stt-base-gpu"]["spec"]["template"]["spec"]["serviceAccountName"] == "stt-backend"
    assert find(docs, "ServiceAccount", "stt-backend")["automountServiceAccountToken"] is False


def test_network_policy_lets_only_the_proxy_reach_backends(helm: str) -> None:
    docs = render(helm)
    for component in ("tiny", "base-cpu", "base-gpu"):
        np = find(docs, "NetworkPolicy", f"stt-{component}")
        assert np["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == component
        # They run FFmpeg on untrusted bytes: no egress at all (an empty list denies all).
        assert np["spec"]["policyTypes"] == ["Ingress", "Egress"] and np["spec"]["egress"] == []
        peers = [p for rule in np["spec"]["ingress"] for p in rule["from"]]
        assert len(peers) == 2
        proxy_peer, prom_peer = peers
        assert proxy_peer == {
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/name": "stt",
                    "app.kubernetes.io/instance": "stt",
                    "app.kubernetes.io/component": "proxy",
                }
            }
        }
        assert prom_peer["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}
    assert "from" not in find(docs, "NetworkPolicy", "stt-proxy")["spec"]["ingress"][0]
    assert not [
        d for d in render(helm, "1.33.0", "--set", "networkPolicy.enabled=false") if d["kind"] == "NetworkPolicy"
    ]


def test_pods_drain_before_they_stop(helm: str) -> None:
    """A deleted pod keeps serving while endpoints forget it, then finishes its requests: the
    kubelet's grace period must outlast both, or a rollout kills answers half-way."""
    for args, (pre, drain) in (
        ((), (5, 300)),
        (("--set", "shutdown.preStopSeconds=2", "--set", "shutdown.drainSeconds=40"), (2, 40)),
    ):
        deps = deployments(render(helm, "1.33.0", *args))
        for name in ("stt-tiny", "stt-base-cpu", "stt-base-gpu", "stt-proxy"):
            spec = deps[name]["spec"]["template"]["spec"]
            c = spec["containers"][0]
            assert c["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(pre)], name
            assert env_of(deps[name])["UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN"] == str(drain), name
            assert spec["terminationGracePeriodSeconds"] > pre + drain, name
    from services.proxy.settings import UPSTREAM_TIMEOUT_S

    proxy = deployments(render(helm))["stt-proxy"]
    longest = float(env_of(proxy).get("STT_UPSTREAM_TIMEOUT_S") or UPSTREAM_TIMEOUT_S)
    assert longest <= 300, "the default drain must outlast the longest request the proxy waits for"


def test_admin_token_secret(helm: str) -> None:
    secret = find(render(helm), "Secret", "stt-admin")
    token = base64.b64decode(secret["data"]["token"]).decode()
    assert len(token) == 40 and token.isalnum()
    given = find(render(helm, "1.33.0", "--set", "admin.token=a-long-enough-token-1234"), "Secret", "stt-admin")
    assert base64.b64decode(given["data"]["token"]).decode() == "a-long-enough-token-1234"
    existing = render(helm, "1.33.0", "--set", "admin.existingSecret=my-token")
    assert not [d for d in existing if d["kind"] == "Secret"]
    vols = deployments(existing)["stt-proxy"]["spec"]["template"]["spec"]["volumes"]
    assert {
        "name": "admin-token",
        "secret": {"secretName": "my-token", "defaultMode": 0o440, "items": [{"key": "token", "path": "token"}]},
    } in vols


def test_values_schema_rejects_nonsense(helm: str) -> None:
    for bad in (
        "sttConfig.routing=fast",
        "sttConfig.gpuReplicas=-1",
        "image.pullPolicy=Sometimes",
        "admin.token=short",
    ):
        r = subprocess.run([helm, "template", "stt", str(CHART), "--set", bad], capture_output=True, text=True)
        assert r.returncode != 0 and "values don't meet the specifications" in r.stderr, bad


def test_crd_shape(helm: str) -> None:
    crd = find(render(helm), "CustomResourceDefinition", "sttconfigs.stt.platform.io")
    assert crd["spec"]["names"]["shortNames"] == ["stc"]
    (version,) = crd["spec"]["versions"]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert "additionalProperties" not in spec  # forbidden beside properties; unknown fields are pruned
    assert spec["properties"]["routing"]["enum"] == ["cpu", "gpu", "auto"]
    assert spec["properties"]["routing"]["default"] == "cpu"
    assert spec["properties"]["detector"]["enum"] == ["silero", "whisper-tiny"]
    assert spec["properties"]["gpuReplicas"]["minimum"] == 0
    cond = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"]["items"]
    assert set(cond["properties"]) == {
        "type",
        "status",
        "reason",
        "message",
        "lastTransitionTime",
        "observedGeneration",
    }
    columns = {c["name"] for c in version["additionalPrinterColumns"]}
    assert {"Routing", "Active", "GPU", "CPU", "Ready", "Age"} <= columns


def test_default_sttconfig_is_a_post_install_hook_matching_the_crd(helm: str) -> None:
    docs = render(helm, "1.33.0", "--set", "sttConfig.detector=whisper-tiny")
    cfg = find(docs, "SttConfig", "stt")
    assert cfg["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    assert cfg["spec"] == {
        "routing": "cpu",
        "gpuReplicas": 1,
        "gpuIdleReplicas": 0,
        "cpuReplicas": 1,
        "detector": "whisper-tiny",
        "models": {"cpu": "base", "gpu": "base"},
        "autoscaling": {
            backend: {
                "enabled": False,
                "minReplicas": policy.min_replicas,
                "maxReplicas": policy.max_replicas,
                "targetStreamsPerReplica": policy.target_streams_per_replica,
                "scaleUpStabilizationSeconds": policy.scale_up_stabilization_s,
                "scaleDownStabilizationSeconds": policy.scale_down_stabilization_s,
            }
            for backend, policy in DEFAULT_POLICIES.items()
        },
    }
    # every spec field is one the CRD knows (it refuses unknown fields)
    crd = find(docs, "CustomResourceDefinition", "sttconfigs.stt.platform.io")
    known = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert set(cfg["spec"]) <= set(known)


def test_monitoring_objects(helm: str) -> None:
    files = CHART / "files"
    docs = render(helm)
    if (files / "grafana-dashboard.json").is_file():
        cm = find(docs, "ConfigMap", "stt-grafana-dashboard")
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["data"]["stt-dashboard.json"] == (files / "grafana-dashboard.json").read_text()
    if (files / "prometheus-rules.yml").is_file():
        # no Prometheus operator: the rules as a ConfigMap
        assert find(docs, "ConfigMap", "stt-prometheus-rules")["data"]["stt-rules.yml"]
        assert not [d for d in docs if d["kind"] in ("PrometheusRule", "ServiceMonitor")]
        with_operator = render(
            helm,
            "1.33.0",
            "--api-versions",
            "monitoring.coreos.com/v1/PrometheusRule",
            "--api-versions",
            "monitoring.coreos.com/v1/ServiceMonitor",
        )
        rule = find(with_operator, "PrometheusRule", "stt")
        source = yaml.safe_load((files / "prometheus-rules.yml").read_text())
        assert rule["spec"]["groups"] == source["groups"]
        sm = find(with_operator, "ServiceMonitor", "stt")
        assert {e["port"] for e in sm["spec"]["endpoints"]} == {"http", "metrics"}
        assert not [
            d for d in with_operator if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "stt-prometheus-rules"
        ]
    for d in deployments(docs).values():
        ann = d["spec"]["template"]["metadata"]["annotations"]
        assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/path"] == "/metrics"
    assert (
        deployments(docs)["stt-controller"]["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"]
        == "8080"
    )


def _ops_objects(docs: list[dict], release: str = "stt") -> tuple[dict, dict, dict]:
    """The proxy's container, its pod annotations and its NetworkPolicy."""
    template = deployments(docs)[f"{release}-proxy"]["spec"]["template"]
    netpol = find(docs, "NetworkPolicy", f"{release}-proxy")
    return template["spec"]["containers"][0], template["metadata"]["annotations"], netpol


def test_proxy_metrics_and_status_detail_are_on_an_ops_port_only_prometheus_reaches(helm: str) -> None:
    docs = render(helm)
    container, ann, netpol = _ops_objects(docs)
    assert env_of(deployments(docs)["stt-proxy"])["STT_OPS_PORT"] == "9090"
    assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in container["ports"]
    assert ann["prometheus.io/port"] == "9090" and ann["prometheus.io/path"] == "/metrics"
    # the public Service (it may be a LoadBalancer) never carries the ops port; a ClusterIP one does
    assert [p["name"] for p in find(docs, "Service", "stt-proxy")["spec"]["ports"]] == ["http"]
    ops_svc = find(docs, "Service", "stt-proxy-metrics")
    assert ops_svc["spec"]["type"] == "ClusterIP"
    assert ops_svc["spec"]["ports"] == [{"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}]
    assert ops_svc["spec"]["selector"]["app.kubernetes.io/component"] == "proxy"
    # public port: open as before; ops port: the Prometheus selectors and the operator (its
    # autoscaler reads the live streams there) only, and no rule opens it to all
    public_rule, ops_rule = netpol["spec"]["ingress"]
    assert public_rule["ports"] == [{"port": "http", "protocol": "TCP"}] and "from" not in public_rule
    assert ops_rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert ops_rule["from"] == [
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}},
        {
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/instance": "stt",
                    "app.kubernetes.io/name": "stt",
                    "app.kubernetes.io/component": "controller",
                }
            }
        },
    ]
    ctrl_env = env_of(deployments(docs)["stt-controller"])
    assert (ctrl_env["STT_PROXY_METRICS_SERVICE"], ctrl_env["STT_PROXY_METRICS_PORT"]) == ("stt-proxy-metrics", "9090")
    # the operator may read exactly that Service's Endpoints, nothing else of the core API but Events
    role = find(docs, "Role", "stt-controller")
    core = [r for r in role["rules"] if r["apiGroups"] == [""]]
    assert {
        "resources": ["endpoints"],
        "resourceNames": ["stt-proxy-metrics"],
        "verbs": ["get"],
        "apiGroups": [""],
    } in core
    assert {tuple(r["resources"]) for r in core} == {("events",), ("endpoints",)}
    custom = render(
        helm,
        "1.33.0",
        "--set",
        "networkPolicy.prometheus.podSelector.matchLabels.app=prom",
        "--set",
        "proxy.opsPort=9100",
    )
    container, ann, netpol = _ops_objects(custom)
    assert ann["prometheus.io/port"] == "9100" and container["ports"][1]["containerPort"] == 9100
    assert netpol["spec"]["ingress"][1]["from"][0]["podSelector"]["matchLabels"]["app"] == "prom"


def test_the_service_monitor_scrapes_the_proxy_on_its_ops_port(helm: str) -> None:
    operator = ("--api-versions", "monitoring.coreos.com/v1/ServiceMonitor")
    for release, fullname in (("stt", "stt"), ("demo", "demo-stt")):
        docs = render(helm, "1.33.0", *operator, release=release)
        sm = find(docs, "ServiceMonitor", fullname)
        endpoints = {e["port"]: e for e in sm["spec"]["endpoints"]}
        assert set(endpoints) == {"http", "metrics"}  # "metrics" matches <fullname>-proxy-metrics
        assert find(docs, "Service", f"{fullname}-proxy-metrics")["spec"]["ports"][0]["name"] == "metrics"
        # the public proxy Service's http port serves no /metrics: dropped, or its target is down
        public = find(docs, "Service", f"{fullname}-proxy")["metadata"]["name"]
        assert endpoints["http"]["relabelings"] == [
            {"sourceLabels": ["__meta_kubernetes_service_name"], "regex": public, "action": "drop"}
        ]
        assert "relabelings" not in endpoints["metrics"]


def test_without_an_ops_port_the_proxy_keeps_one_port(helm: str) -> None:
    docs = render(
        helm, "1.33.0", "--set", "proxy.opsPort=0", "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor"
    )
    container, ann, netpol = _ops_objects(docs)
    assert "STT_OPS_PORT" not in env_of(deployments(docs)["stt-proxy"])
    assert [p["name"] for p in container["ports"]] == ["http"] and ann["prometheus.io/port"] == "5001"
    assert not [d for d in docs if d["metadata"]["name"] == "stt-proxy-metrics"]
    assert len(netpol["spec"]["ingress"]) == 1
    sm = find(docs, "ServiceMonitor", "stt")
    assert all("relabelings" not in e for e in sm["spec"]["endpoints"])
    clash = [helm, "template", "stt", str(CHART), "--set", "proxy.opsPort=5001"]
    r = subprocess.run(clash, capture_output=True, text=True)
    assert r.returncode != 0 and "proxy.opsPort must differ from the proxy's public port 5001" in r.stderr


def test_controller_api_timeout_and_liveness_match_the_resync_bound(helm: str) -> None:
    import inspect

    from controller.operator import wait_for_crd
    from controller.state import resync_stale_after_s

    ctrl = deployments(render(helm))["stt-controller"]
    env = env_of(ctrl)
    c = ctrl["spec"]["template"]["spec"]["containers"][0]
    assert env["STT_K8S_TIMEOUT_S"] == "5"
    bound = resync_stale_after_s(float(env["STT_STATUS_RESYNC_S"]), float(env["STT_K8S_TIMEOUT_S"]))
    assert bound == 255
    live, start = c["livenessProbe"], c["startupProbe"]
    assert live["httpGet"] == start["httpGet"] == {"path": "/healthz", "port": "health"}
    # /healthz decides (after `bound`); the kubelet only needs a few failures in a row, well within it
    assert live["periodSeconds"] * live["failureThreshold"] < bound / 2
    assert live["timeoutSeconds"] >= 1 and "initialDelaySeconds" not in live
    # kopf serves /healthz only after start-up, which waits for the CRD: the start-up probe covers that
    crd_wait = inspect.signature(wait_for_crd).parameters["timeout_s"].default
    assert start["periodSeconds"] * start["failureThreshold"] > crd_wait
    args = ("--set", "controller.apiTimeoutSeconds=2", "--set", "controller.livenessProbe.periodSeconds=10")
    custom = deployments(render(helm, "1.33.0", *args))["stt-controller"]
    assert env_of(custom)["STT_K8S_TIMEOUT_S"] == "2"
    assert custom["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["periodSeconds"] == 10
    for bad in ("controller.apiTimeoutSeconds=0", "controller.livenessProbe.failureThreshold=0"):
        r = subprocess.run([helm, "template", "stt", str(CHART), "--set", bad], capture_output=True, text=True)
        assert r.returncode != 0 and "values don't meet the specifications" in r.stderr, bad


AUTOSCALED_GPU = ("--set", "sttConfig.autoscaling.gpu.enabled=true", "--set", "sttConfig.autoscaling.gpu.maxReplicas=4")


def test_the_operator_autoscales_by_default_and_no_hpa_or_keda_is_rendered(helm: str) -> None:
    docs = render(helm, "1.33.0", *AUTOSCALED_GPU)
    assert not [d for d in docs if d["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")]
    assert find(docs, "SttConfig", "stt")["spec"]["autoscaling"]["gpu"]["enabled"] is True
    assert env_of(deployments(docs)["stt-controller"])["STT_EXTERNALLY_SCALED"] == ""


def test_keda_engine_renders_a_scaled_object_and_hands_the_backend_off(helm: str) -> None:
    keda = ("--set", "autoscaling.engine=keda", "--set", "autoscaling.keda.prometheusAddress=http://prom:9090")
    docs = render(
        helm, "1.33.0", *keda, *AUTOSCALED_GPU, "--set", "sttConfig.autoscaling.gpu.targetStreamsPerReplica=100"
    )
    so = find(docs, "ScaledObject", "stt-base-gpu")
    assert so["apiVersion"] == "keda.sh/v1alpha1" and so["spec"]["scaleTargetRef"] == {"name": "stt-base-gpu"}
    assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]) == (0, 4)  # KEDA may go to zero
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metadata"]["threshold"] == "100"
    assert trigger["metadata"]["query"] == 'sum(stt_proxy_sessions_active{namespace="stt"})'
    behavior = so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 900 == so["spec"]["cooldownPeriod"]
    assert not [d for d in docs if d["kind"] == "ScaledObject" and "cpu" in d["metadata"]["name"]]
    # the operator must not fight it: autoscaling off in the SttConfig, the backend handed off
    assert find(docs, "SttConfig", "stt")["spec"]["autoscaling"]["gpu"]["enabled"] is False
    assert env_of(deployments(docs)["stt-controller"])["STT_EXTERNALLY_SCALED"] == "gpu"
    r = subprocess.run(
        [helm, "template", "stt", str(CHART), *AUTOSCALED_GPU, "--set", "autoscaling.engine=keda"],
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0 and "autoscaling.keda.prometheusAddress is required" in r.stderr


# kubernetes-validate has no 1.20 schemas: v2beta2 is checked against 1.25's, its last release.
@pytest.mark.parametrize(
    ("kube_version", "api", "schema"),
    [("1.20.2", "autoscaling/v2beta2", "1.25.0"), ("1.33.0", "autoscaling/v2", "1.33.0")],
)
def test_hpa_engine_renders_a_valid_hpa_per_enabled_backend(
    helm: str, kube_version: str, api: str, schema: str
) -> None:
    both = ("--set", "sttConfig.autoscaling.cpu.enabled=true", "--set", "sttConfig.autoscaling.gpu.minReplicas=1")
    docs = render(helm, kube_version, "--set", "autoscaling.engine=hpa", *AUTOSCALED_GPU, *both)
    hpas = {d["metadata"]["name"]: d for d in docs if d["kind"] == "HorizontalPodAutoscaler"}
    assert set(hpas) == {"stt-base-gpu", "stt-base-cpu"}
    for name, hpa in hpas.items():
        assert hpa["apiVersion"] == api and hpa["spec"]["scaleTargetRef"]["name"] == name
        kubernetes_validate.validate(hpa, schema, strict=True)
        (metric,) = hpa["spec"]["metrics"]
        assert metric["external"]["metric"]["name"] == "stt_proxy_sessions_active"
    assert hpas["stt-base-cpu"]["spec"]["metrics"][0]["external"]["target"]["averageValue"] == "3"
    assert env_of(deployments(docs)["stt-controller"])["STT_EXTERNALLY_SCALED"] == "gpu,cpu"
    # the HPA cannot scale to zero: refused with the way out named
    r = subprocess.run(
        [helm, "template", "stt", str(CHART), "--set", "autoscaling.engine=hpa", *AUTOSCALED_GPU],
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0 and "minReplicas=0 needs autoscaling.engine operator or keda" in r.stderr


def test_one_rule_for_model_names_in_the_crd_the_chart_and_the_operator(helm: str) -> None:
    """The CRD's pattern, the chart's values schema and the operator's check are the same rule."""
    import json

    from controller.state import MODEL_CHARS

    crd = find(render(helm), "CustomResourceDefinition", "sttconfigs.stt.platform.io")
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    values = json.loads((CHART / "values.schema.json").read_text())["properties"]
    patterns = {spec["models"]["properties"][b]["pattern"] for b in ("cpu", "gpu")}
    patterns |= {values[k]["properties"]["model"]["pattern"] for k in ("baseCpu", "baseGpu")}
    assert patterns == {f"^{MODEL_CHARS.pattern}$"}
    r = subprocess.run(
        [helm, "template", "stt", str(CHART), "--set", "baseGpu.model=small; rm"], capture_output=True, text=True
    )
    assert r.returncode != 0 and "values don't meet the specifications" in r.stderr


SHA = {"model.bin": "1" * 64, "config.json": "2" * 64, "tokenizer.json": "3" * 64}


def test_the_model_store_is_filled_by_a_hook_job_and_mounted_read_only_in_the_transcribers(helm: str) -> None:
    import json

    store = ("--set", "modelStore.volume.persistentVolumeClaim.claimName=whisper-models")
    fetch = [{"name": "small", "source": "hf://Systran/faster-whisper-small@536b066", "sha256": SHA}]
    docs = render(
        helm,
        "1.33.0",
        *store,
        "--set-json",
        f"modelStore.fetch={json.dumps(fetch)}",
        "--set",
        "baseGpu.model=/models/small",
    )
    for name in ("stt-base-gpu", "stt-base-cpu"):
        pod = deployments(docs)[name]["spec"]["template"]["spec"]
        assert {"name": "models", "mountPath": "/models", "readOnly": True} in pod["containers"][0]["volumeMounts"]
        assert {"name": "models", "persistentVolumeClaim": {"claimName": "whisper-models"}} in pod["volumes"]
    for name in ("stt-tiny", "stt-proxy"):
        assert "models" not in [v["name"] for v in deployments(docs)[name]["spec"]["template"]["spec"]["volumes"]]
    assert find(docs, "SttConfig", "stt")["spec"]["models"]["gpu"] == "/models/small"
    job = find(docs, "Job", "stt-model-store")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:6] == ["python", "-m", "services.common.models", "store", "--into", "/models"]
    assert json.loads(container["command"][-1]) == fetch  # exactly the pinned entries
    assert {"name": "models", "mountPath": "/models"} in container["volumeMounts"]  # writable here only
    assert container["securityContext"]["runAsNonRoot"] is True
    kubernetes_validate.validate(job, "1.33.0", strict=True)
    # nothing to fetch, or no volume: no Job
    assert not [d for d in render(helm, "1.33.0", *store) if d["kind"] == "Job"]
    bad = [{"name": "small", "source": "https://example.com/small", "sha256": SHA}]
    r = subprocess.run(
        [helm, "template", "stt", str(CHART), *store, "--set-json", f"modelStore.fetch={json.dumps(bad)}"],
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0 and "values don't meet the specifications" in r.stderr


def test_the_crd_and_the_values_schema_speak_core_vocabulary(helm: str) -> None:
    """The names the operator, the proxy and the detector use (core.vocabulary) are the ones the
    API server and `helm install` accept: a mode or detector added on one side only fails here."""
    crd = find(render(helm), "CustomResourceDefinition", f"{PLURAL}.{GROUP}")
    assert (crd["spec"]["group"], crd["spec"]["names"]["kind"], crd["spec"]["names"]["plural"]) == (GROUP, KIND, PLURAL)
    assert [v["name"] for v in crd["spec"]["versions"]] == [VERSION]
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    spec, status = schema["spec"]["properties"], schema["status"]["properties"]
    assert spec["routing"]["enum"] == list(ROUTING_MODES)
    assert spec["detector"]["enum"] == list(DETECTORS) and spec["detector"]["default"] == DEFAULT_DETECTOR
    assert set(spec["models"]["properties"]) == set(spec["autoscaling"]["properties"]) == set(BACKENDS)
    assert set(status["activeBackend"]["enum"]) == {*BACKENDS, "none"}

    values = json.loads((CHART / "values.schema.json").read_text())["properties"]["sttConfig"]["properties"]
    assert values["routing"]["enum"] == list(ROUTING_MODES)
    assert values["detector"]["enum"] == list(DETECTORS)
