"""The SttConfig operator (kopf).

``SttConfig`` (``stt.platform.io/v1alpha1``) is the one place where an operator of the platform
says how it should run: routing mode, GPU/CPU replicas (fixed, or autoscaled on live streams),
detector. This package reconciles the Deployments to it and reports what is really running in
its ``status``; the proxies read the routing mode from the same resource themselves
(:mod:`services.proxy.routing_k8s`).

Modules: ``operator`` (kopf handlers), ``kube`` (its API calls), ``state`` (spec and status
rules, pure), ``autoscaling`` (the scaling rule, pure), ``load`` (live streams read from the
proxies), ``autoscaler`` (the rule's memory, Events and metrics), ``metrics``.

The resource's names and the routing rule it shares with the proxy are :mod:`core.vocabulary`;
finding and authenticating to the API server is :mod:`kubeapi`, the proxy's too.

Entry point: ``kopf run --standalone -m controller.operator`` (``--namespace`` or ``--all-namespaces``).
"""
