"""``make bench``: one command that measures the whole platform on this machine.

It prepares its corpus, starts the real services (uvicorn processes over HTTP) in the
configurations it compares, streams real speech through the real client library, and writes
``bench/results/latest.{json,md}`` plus PNG plots. Each module does one measurement;
:mod:`bench.__main__` runs them in order and checks the goals.
"""
