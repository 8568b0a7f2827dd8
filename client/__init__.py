"""Live speech-to-text client: capture → chunk → detect → dispatch → stitch → display/output.

Each stage is one module with one job; :mod:`client.pipeline` wires them together for
``--transport http``, :mod:`client.ws_transport` streams to the proxy's ``/v1/stream`` for
``--transport ws`` (the proxy detects and commits), and :mod:`client.cli` is the ``stt-client``
entry point.
"""
