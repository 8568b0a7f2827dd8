"""kubeapi: the one place the proxy and the operator find the API server, trust it and authenticate.

Against a real TLS server (certificates made with ``openssl`` for the test): a kubeconfig with a
token user and one with a client-certificate user, and a pod's ServiceAccount (a fake mount
directory) whose token rotates; each through both clients, ``httpx`` as the proxy uses it and the
official client as the operator uses it, on the SttConfig's path as :mod:`kubeapi` writes it.
"""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client

from controller import kube
from core.vocabulary import GROUP, PLURAL, VERSION
from kubeapi import ApiAccess, load_configuration, pod_namespace, sttconfig_path

NS, NAME = "stt", "stt"


@dataclass
class Pki:
    """A CA, a server certificate for 127.0.0.1 and a client certificate (CN ``stt-operator``)."""

    dir: Path

    def path(self, name: str) -> Path:
        return self.dir / name

    def b64(self, name: str) -> str:
        return base64.b64encode(self.path(name).read_bytes()).decode()


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make the test certificates")
    d = tmp_path_factory.mktemp("pki")
    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=test-ca",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             cwd=d)  # fmt: skip
    for name, cn, ext in (
        ("server", "127.0.0.1", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
        ("client", "stt-operator", "extendedKeyUsage=clientAuth\n"),
    ):
        (d / f"{name}.ext").write_text("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n" + ext)
        _openssl("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=d)  # fmt: skip
    return Pki(d)


@dataclass
class Seen:
    """One request as the API server saw it."""

    path: str
    authorization: str | None
    client_cn: str | None


@dataclass
class FakeApi:
    """An HTTPS server that answers every GET with an SttConfig and remembers what it was sent."""

    url: str
    seen: list[Seen] = field(default_factory=list)


@pytest.fixture
def api(pki: Pki) -> Iterator[FakeApi]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.path("server.crt"), pki.path("server.key"))
    ctx.load_verify_locations(pki.path("ca.crt"))
    ctx.verify_mode = ssl.CERT_OPTIONAL  # token users present none; a client-cert user's must be the CA's
    seen: list[Seen] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            peer: Any = self.connection.getpeercert()  # type: ignore[attr-defined]
            cn = next((v for rdn in (peer or {}).get("subject", ()) for k, v in rdn if k == "commonName"), None)
            seen.append(Seen(self.path.split("?")[0], self.headers.get("Authorization"), cn))
            body = json.dumps({"apiVersion": f"{GROUP}/{VERSION}", "kind": "SttConfig", "metadata": {"name": NAME}})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield FakeApi(f"https://127.0.0.1:{server.server_address[1]}", seen)
    finally:
        server.shutdown()
        server.server_close()


def kubeconfig(tmp_path: Path, server: str, pki: Pki, user: dict[str, str]) -> Path:
    """A kubeconfig with one cluster (the test CA), one user and one context (JSON is YAML)."""
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server, "certificate-authority-data": pki.b64("ca.crt")}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u", "namespace": NS}}],
        "current-context": "ctx",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(cfg))
    return path


def service_account(tmp_path: Path, pki: Pki, token: str, namespace: str | None = NS) -> Path:
    """What Kubernetes mounts at /var/run/secrets/kubernetes.io/serviceaccount."""
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text(token)
    shutil.copy(pki.path("ca.crt"), sa / "ca.crt")
    if namespace is not None:
        (sa / "namespace").write_text(namespace)
    return sa


def proxy_get(access: ApiAccess) -> dict[str, Any]:
    """The proxy's way: httpx on ApiAccess (sync here; the proxy's AsyncClient takes the same arguments)."""
    with httpx.Client(base_url=access.server, verify=access.verify) as http:
        r = http.get(sttconfig_path(NS, NAME), headers=access.headers())
        r.raise_for_status()
        result: dict[str, Any] = r.json()
        return result


def operator_get(cfg: client.Configuration) -> dict[str, Any]:
    """The operator's way: the official client (with the operator's retries) on the Configuration."""
    with kube.make_api_client(cfg) as api:
        obj = client.CustomObjectsApi(api).get_namespaced_custom_object(
            GROUP, VERSION, NS, PLURAL, NAME, _request_timeout=5
        )
    result: dict[str, Any] = obj
    return result


def test_sttconfig_paths_are_the_crds() -> None:
    assert sttconfig_path("ns") == "/apis/stt.platform.io/v1alpha1/namespaces/ns/sttconfigs"
    assert sttconfig_path("ns", "stt") == "/apis/stt.platform.io/v1alpha1/namespaces/ns/sttconfigs/stt"


def test_pod_namespace_is_the_service_accounts_else_default(tmp_path: Path, pki: Pki) -> None:
    assert pod_namespace(service_account(tmp_path, pki, "t", namespace="speech\n")) == "speech"
    assert pod_namespace(tmp_path / "no-such-mount") == "default"


def test_kubeconfig_token_user(tmp_path: Path, pki: Pki, api: FakeApi) -> None:
    path = kubeconfig(tmp_path, api.url, pki, {"token": "tok-1"})
    cfg = load_configuration("", "", sa_dir=tmp_path / "none", kubeconfig=str(path))
    access = ApiAccess.from_configuration(cfg)
    assert access.server == api.url and access.cert is None
    assert access.headers() == {"Authorization": "Bearer tok-1"}
    assert isinstance(access.verify, ssl.SSLContext)  # the kubeconfig's CA, not the system's

    assert proxy_get(access)["kind"] == "SttConfig"
    assert operator_get(cfg)["kind"] == "SttConfig"
    # both clients reach the same object, trusting the kubeconfig's CA, with the user's token
    assert [(s.path, s.authorization, s.client_cn) for s in api.seen] == [
        (sttconfig_path(NS, NAME), "Bearer tok-1", None)
    ] * 2


def test_kubeconfig_client_certificate_user(tmp_path: Path, pki: Pki, api: FakeApi) -> None:
    user = {"client-certificate-data": pki.b64("client.crt"), "client-key-data": pki.b64("client.key")}
    path = kubeconfig(tmp_path, api.url, pki, user)
    cfg = load_configuration("", "", sa_dir=tmp_path / "none", kubeconfig=str(path))
    access = ApiAccess.from_configuration(cfg)
    assert access.cert is not None and Path(access.cert[0]).read_bytes() == pki.path("client.crt").read_bytes()
    assert access.headers() == {}  # the certificate is the credential

    proxy_get(access)
    operator_get(cfg)
    assert [(s.client_cn, s.authorization) for s in api.seen] == [("stt-operator", None)] * 2


def test_a_server_the_ca_did_not_sign_is_refused(tmp_path: Path, pki: Pki, api: FakeApi) -> None:
    other = Pki(tmp_path / "other")
    other.dir.mkdir()
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
             "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=other-ca", cwd=other.dir)  # fmt: skip
    path = kubeconfig(tmp_path, api.url, other, {"token": "tok-1"})
    access = ApiAccess.from_configuration(load_configuration("", "", sa_dir=tmp_path / "none", kubeconfig=str(path)))
    with pytest.raises(httpx.ConnectError):
        proxy_get(access)
    assert api.seen == []  # the token never left


def test_in_cluster_service_account_token_is_reread_when_it_rotates(
    tmp_path: Path, pki: Pki, api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "unused"))  # in a pod the ServiceAccount wins
    sa = service_account(tmp_path, pki, "tok-a\n")
    port = api.url.rsplit(":", 1)[1]
    cfg = load_configuration("127.0.0.1", port, sa_dir=sa)
    access = ApiAccess.from_configuration(cfg)
    assert access.server == api.url and access.cert is None
    assert access.headers() == {"Authorization": "Bearer tok-a"}
    proxy_get(access)
    operator_get(cfg)

    (sa / "token").write_text("tok-b")  # the kubelet rotated the bound token
    assert access.headers() == {"Authorization": "Bearer tok-b"}  # at once, not after a minute
    proxy_get(access)
    operator_get(cfg)
    assert [s.authorization for s in api.seen] == ["Bearer tok-a"] * 2 + ["Bearer tok-b"] * 2


def test_in_cluster_brackets_an_ipv6_api_server(tmp_path: Path, pki: Pki) -> None:
    cfg = load_configuration("fd00:10:96::1", "443", sa_dir=service_account(tmp_path, pki, "t"))
    assert ApiAccess.from_configuration(cfg).server == "https://[fd00:10:96::1]:443"


def test_outside_a_pod_the_kubeconfig_is_used(tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    # a token mounted but no API server named (not a pod), or a server named but no token mounted
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path, "https://kubeconfig.example:6443", pki, {"token": "k"})))
    sa = service_account(tmp_path, pki, "sa-token")
    assert load_configuration("", "", sa_dir=sa).host == "https://kubeconfig.example:6443"
    assert load_configuration("10.96.0.1", "443", sa_dir=tmp_path / "none").host == "https://kubeconfig.example:6443"


def test_insecure_skip_tls_verify_and_a_fixed_token(tmp_path: Path) -> None:
    cfg = {
        "apiVersion": "v1",
        "clusters": [{"name": "c", "cluster": {"server": "https://h:6443/", "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "x"}}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "ctx",
    }
    (tmp_path / "kc").write_text(json.dumps(cfg))
    access = ApiAccess.discover("", "", sa_dir=tmp_path / "none", kubeconfig=str(tmp_path / "kc"))
    assert (access.server, access.verify) == ("https://h:6443", False)
    assert ApiAccess("http://127.0.0.1:1", False, token="t").headers() == {"Authorization": "Bearer t"}


def test_the_operator_loads_its_default_configuration_through_kubeapi(
    tmp_path: Path, pki: Pki, api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path, api.url, pki, {"token": "op"})))
    before = client.Configuration.get_default_copy()
    try:
        kube.load_config()
        cluster = kube.Cluster(timeout_s=5.0)  # what Runtime.create builds
        assert cluster.api.configuration.host == api.url
        assert cluster.api.configuration.retries == kube.RETRIES
        assert cluster.read_config(NS, NAME) == {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "SttConfig",
            "metadata": {"name": NAME},
        }
        assert [s.authorization for s in api.seen] == ["Bearer op"]
    finally:
        client.Configuration.set_default(before)
