"""Live speech-to-text client: capture → chunk → detect → dispatch → stitch → display/output.

Each stage is one module with one job; :mod:`client.pipeline` wires them together and
:mod:`client.cli` is the ``stt-client`` entry point.
"""
