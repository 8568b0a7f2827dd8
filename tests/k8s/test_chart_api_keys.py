"""The chart's optional API keys (docs/kubernetes.md, docs/api.md "API keys"), rendered with
``helm template`` and checked without a cluster: off by default; on, a Secret of digests (never
keys) mounted read-only into the proxy, whose env names the file and the rate; the API
description off the public port by default (``proxy.publicDocs``)."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess

import kubernetes_validate
import pytest
import yaml

from services.proxy.api_keys import parse_file
from tests.k8s.tools import CHART

WEB, BATCH = "sk-web-key-0123456789", "sk-batch-key-9876543210"
MOUNT = "/var/run/stt/api-keys"


def render(helm: str, *args: str) -> list[dict]:
    cmd = [helm, "template", "stt", str(CHART), "--namespace", "stt", "--kube-version", "1.33.0", *args]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def proxy_of(docs: list[dict]) -> tuple[dict, dict]:
    deployment = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "stt-proxy")
    pod = deployment["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


def env_of(container: dict) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in container["env"]}


def secrets(docs: list[dict]) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}


def with_keys(helm: str, *extra: str) -> list[dict]:
    hashes = [
        {"name": "web", "sha256": hashlib.sha256(WEB.encode()).hexdigest()},
        {"name": "batch", "sha256": hashlib.sha256(BATCH.encode()).hexdigest().upper()},
    ]
    return render(
        helm,
        "--set",
        "apiKeys.enabled=true",
        "--set-json",
        f"apiKeys.hashes={json.dumps(hashes)}",
        "--set-json",
        "apiKeys.rate=2.5",
        "--set",
        "apiKeys.burst=5",
        *extra,
    )


def test_api_keys_are_off_by_default(helm: str) -> None:
    docs = render(helm)
    pod, container = proxy_of(docs)
    env = env_of(container)
    assert not {"STT_API_KEYS_FILE", "STT_API_KEY_HASHES", "STT_API_KEY_RATE", "STT_API_KEY_BURST"} & set(env)
    assert "stt-api-keys" not in secrets(docs)
    assert not [v for v in pod["volumes"] if v["name"] == "api-keys"]
    assert not [m for m in container["volumeMounts"] if m["mountPath"] == MOUNT]


def test_the_api_description_is_off_the_public_port_by_default(helm: str) -> None:
    _, container = proxy_of(render(helm))
    assert env_of(container)["STT_PUBLIC_DOCS"] == "false"
    _, container = proxy_of(render(helm, "--set", "proxy.publicDocs=true"))
    assert env_of(container)["STT_PUBLIC_DOCS"] == "true"


def test_keys_on_a_secret_of_digests_mounted_read_only(helm: str) -> None:
    docs = with_keys(helm)
    secret = secrets(docs)["stt-api-keys"]
    kubernetes_validate.validate(secret, "1.33.0", strict=True)
    text = base64.b64decode(secret["data"]["keys"]).decode()
    keys = parse_file(text, "the rendered Secret")  # the proxy's own parser reads it
    assert [k.name for k in keys] == ["web", "batch"]
    assert [k.digest.hex() for k in keys] == [hashlib.sha256(k.encode()).hexdigest() for k in (WEB, BATCH)]
    assert WEB not in text and BATCH not in text  # digests only, never the keys

    pod, container = proxy_of(docs)
    env = env_of(container)
    assert env["STT_API_KEYS_FILE"] == f"{MOUNT}/keys"
    assert env["STT_API_KEY_RATE"] == "2.5" and env["STT_API_KEY_BURST"] == "5"
    assert "STT_API_KEY_HASHES" not in env  # nothing about the keys in the pod spec itself
    mount = next(m for m in container["volumeMounts"] if m["name"] == "api-keys")
    assert mount == {"name": "api-keys", "mountPath": MOUNT, "readOnly": True}
    assert "subPath" not in mount  # a subPath mount would never see a rotated Secret
    volume = next(v for v in pod["volumes"] if v["name"] == "api-keys")
    assert volume["secret"] == {
        "secretName": "stt-api-keys",
        "defaultMode": 0o440,
        "items": [{"key": "keys", "path": "keys"}],
    }
    for doc in docs:
        if doc["kind"] == "Deployment":
            kubernetes_validate.validate(doc, "1.33.0", strict=True)


def test_keys_from_an_existing_secret(helm: str) -> None:
    docs = render(helm, "--set", "apiKeys.enabled=true", "--set", "apiKeys.existingSecret=my-keys")
    assert "stt-api-keys" not in secrets(docs)
    pod, container = proxy_of(docs)
    assert next(v for v in pod["volumes"] if v["name"] == "api-keys")["secret"]["secretName"] == "my-keys"
    env = env_of(container)
    assert env["STT_API_KEYS_FILE"] == f"{MOUNT}/keys"
    assert env["STT_API_KEY_RATE"] == "10" and env["STT_API_KEY_BURST"] == "20"  # the documented defaults


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--set", "apiKeys.enabled=true"], "apiKeys.enabled needs apiKeys.hashes"),
        (
            ["--set", "apiKeys.enabled=true", "--set-json", 'apiKeys.hashes=[{"name":"web","sha256":"sk-web"}]'],
            "sha256",
        ),
        (["--set-json", 'apiKeys.hashes=[{"name":"bad name","sha256":"' + "a" * 64 + '"}]'], "name"),
        (["--set-json", "apiKeys.rate=-1"], "rate"),
        (["--set-json", "apiKeys.burst=0"], "burst"),
        (["--set", "apiKeys.keys=sk-plain"], "keys"),
    ],
)
def test_values_that_cannot_work_are_refused(helm: str, args: list[str], says: str) -> None:
    cmd = [helm, "template", "stt", str(CHART), *args]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode != 0 and says in r.stderr, r.stderr


def test_lint_with_keys_on(helm: str) -> None:
    hashes = json.dumps([{"name": "web", "sha256": hashlib.sha256(WEB.encode()).hexdigest()}])
    cmd = [
        helm,
        "lint",
        "--strict",
        str(CHART),
        "--set",
        "apiKeys.enabled=true",
        "--set-json",
        f"apiKeys.hashes={hashes}",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
