"""Access to the Kubernetes API, written once for the two roles that talk to it.

The proxy watches and patches its ``SttConfig`` (:mod:`services.proxy.routing_k8s`) and the
operator reconciles Deployments to it (:mod:`controller.kube`). They reach the API with two
different HTTP clients on purpose: the proxy with ``httpx`` (async), because its watch runs on the
proxy's own asyncio event loop next to the requests it serves; the operator with the official
(synchronous) ``kubernetes`` client, because kopf runs its handlers in threads. What they share
is everything else, and it lives here: where the API server is and how to trust and authenticate
to it (the pod's ServiceAccount, else the kubeconfig), the pod's namespace, and the
``SttConfig``'s API paths.

This package imports only :mod:`core` and the ``kubernetes`` package's configuration loaders (both
extras that use it install it); never ``httpx``, so the operator image does not need it, and no
role (``make lint`` checks it with import-linter).

Module: ``access`` (:func:`~kubeapi.access.load_configuration`, :class:`~kubeapi.access.ApiAccess`,
:func:`~kubeapi.access.pod_namespace`, :func:`~kubeapi.access.sttconfig_path`).
"""

from kubeapi.access import SA_DIR, ApiAccess, load_configuration, pod_namespace, sttconfig_path

__all__ = ["SA_DIR", "ApiAccess", "load_configuration", "pod_namespace", "sttconfig_path"]
