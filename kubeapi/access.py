"""Where the Kubernetes API server is, how to trust it and authenticate to it, and the SttConfig's paths.

One loader for both roles (:func:`load_configuration`): in a pod, the ServiceAccount that
Kubernetes mounts (``/var/run/secrets/kubernetes.io/serviceaccount``: ``token``, ``ca.crt``,
``namespace``) and the API server named by ``KUBERNETES_SERVICE_HOST``/``_PORT``; anywhere else
(``kopf run`` or the proxy on a workstation, the tests), the kubeconfig (``KUBECONFIG``, else
``~/.kube/config``), read by the ``kubernetes`` package's own loader so every kind of user it
supports works (tokens, client certificates, exec plugins). The result is a
``kubernetes.client.Configuration``: the operator hands it to the official client as it is, the
proxy turns it into an :class:`ApiAccess` for ``httpx``.

The ServiceAccount token is re-read from its file on every request (through the
Configuration's ``refresh_api_key_hook``, which the official client also calls before each
request): Kubernetes rotates bound tokens in place, and a process that kept the first one would
lose access when it expires. (The ``kubernetes`` package's in-cluster loader re-reads at most once
a minute; reading a small file per request costs nothing next to the request and means a rotated
token is used at once.)

Why not one HTTP client for both roles: see :mod:`kubeapi`.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core.vocabulary import GROUP, PLURAL, VERSION

if TYPE_CHECKING:  # imported where used: a fixed token (the tests) needs no kubernetes package
    from kubernetes.client import Configuration

# What Kubernetes mounts into every pod whose ServiceAccount token is automounted.
SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def load_configuration(
    host: str | None = None,
    port: str | None = None,
    *,
    sa_dir: Path = SA_DIR,
    kubeconfig: str | None = None,
) -> Configuration:
    """A ``kubernetes.client.Configuration`` for this process: in-cluster or from the kubeconfig.

    In-cluster when the API server's ``host`` and ``port`` are known (default: the
    ``KUBERNETES_SERVICE_HOST``/``_PORT`` Kubernetes sets in every pod) and ``sa_dir`` holds a
    ServiceAccount token and CA; the host of an IPv6 cluster is bracketed in the URL. Otherwise
    the kubeconfig (``kubeconfig``, default ``KUBECONFIG`` or ``~/.kube/config``); a missing or
    unusable one raises ``kubernetes.config.ConfigException``.
    """
    from kubernetes import client
    from kubernetes.config import ConfigException, incluster_config, kube_config

    environ = {
        incluster_config.SERVICE_HOST_ENV_NAME: os.environ.get("KUBERNETES_SERVICE_HOST", "") if host is None else host,
        incluster_config.SERVICE_PORT_ENV_NAME: os.environ.get("KUBERNETES_SERVICE_PORT", "") if port is None else port,
    }
    cfg = client.Configuration()
    token_file = sa_dir / "token"
    loader = incluster_config.InClusterConfigLoader(
        token_filename=str(token_file), cert_filename=str(sa_dir / "ca.crt"), environ=environ
    )
    try:
        loader.load_and_set(cfg)
    except ConfigException:  # not in a pod (or no token mounted): the kubeconfig
        # KUBECONFIG read now, not when the kubernetes package was imported (its own default)
        kube_config.load_kube_config(config_file=kubeconfig or os.environ.get("KUBECONFIG"), client_configuration=cfg)
        return cfg

    def reread_token(c: Configuration) -> None:
        c.api_key["BearerToken"] = f"Bearer {token_file.read_text().strip()}"

    reread_token(cfg)
    # replaces the loader's once-a-minute re-read (the client's stubs type this hook as always None)
    cfg.refresh_api_key_hook = reread_token  # type: ignore[assignment]
    return cfg


@dataclass(frozen=True)
class ApiAccess:
    """The API server as ``httpx`` takes it: ``base_url=server``, ``verify=verify``, ``headers()``
    on every request.

    ``verify``: an ``ssl.SSLContext`` that trusts the cluster's CA and, for a client-certificate
    user, presents that certificate (httpx takes both in one context), or a bool (``False``: no
    TLS check, for tests against a plain-HTTP emulator). ``cert``: that certificate and key (paths),
    for reference; ``verify`` already carries them. The bearer token is either fixed (``token``)
    or read from ``configuration`` on every call of :meth:`headers` (its refresh hook runs: a
    rotated ServiceAccount token, an exec plugin's renewed token).
    """

    server: str
    verify: ssl.SSLContext | bool = True
    token: str | None = None
    cert: tuple[str, str] | None = None
    configuration: Configuration | None = None

    def headers(self) -> dict[str, str]:
        """The ``Authorization`` header with the current credentials (none for a client-cert user)."""
        if self.configuration is not None:
            key = self.configuration.get_api_key_with_prefix("BearerToken", alias="authorization")
        else:
            key = self.token
        if not key:
            return {}
        scheme, _, credentials = key.partition(" ")
        if not credentials:  # a bare token
            return {"Authorization": f"Bearer {key}"}
        if scheme.lower() == "bearer":
            return {"Authorization": f"Bearer {credentials}"}
        return {"Authorization": key}  # another scheme the kubeconfig asked for, as it is

    @classmethod
    def from_configuration(cls, cfg: Configuration) -> ApiAccess:
        """From a ``kubernetes.client.Configuration`` (:func:`load_configuration`'s)."""
        cert = (cfg.cert_file, cfg.key_file) if cfg.cert_file and cfg.key_file else None
        verify: ssl.SSLContext | bool
        if cfg.verify_ssl:
            verify = ssl.create_default_context(cafile=cfg.ssl_ca_cert or None)
        elif cert:
            verify = ssl.create_default_context()
            verify.check_hostname = False
            verify.verify_mode = ssl.CERT_NONE
        else:
            verify = False  # insecure-skip-tls-verify
        if cert and isinstance(verify, ssl.SSLContext):
            verify.load_cert_chain(*cert)
        return cls(str(cfg.host).rstrip("/"), verify, cert=cert, configuration=cfg)

    @classmethod
    def discover(
        cls, host: str | None = None, port: str | None = None, *, sa_dir: Path = SA_DIR, kubeconfig: str | None = None
    ) -> ApiAccess:
        """In a pod: the API server with the ServiceAccount; else the kubeconfig (:func:`load_configuration`)."""
        return cls.from_configuration(load_configuration(host, port, sa_dir=sa_dir, kubeconfig=kubeconfig))


def pod_namespace(sa_dir: Path = SA_DIR) -> str:
    """The pod's own namespace (its ServiceAccount's), ``default`` outside a pod."""
    try:
        return (sa_dir / "namespace").read_text().strip() or "default"
    except OSError:
        return "default"


def sttconfig_path(namespace: str, name: str | None = None) -> str:
    """The API path of the SttConfigs in ``namespace`` (the collection), or of the one named ``name``."""
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
    return f"{path}/{name}" if name else path
