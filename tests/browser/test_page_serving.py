"""services/proxy/page.py on its own (fast: no stack, no browser): what is served, and how."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.common.errors import install_error_handlers
from services.proxy.page import STATIC_DIR, content_security_policy
from services.proxy.page import router as page_router


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(page_router)
    return TestClient(app, base_url="http://127.0.0.1:5001")


def test_every_file_of_the_page_is_served_with_its_type(client: TestClient) -> None:
    names = sorted(p.name for p in STATIC_DIR.iterdir())
    assert {"index.html", "app.js", "pcm-worklet.js", "style.css"} <= set(names)
    for name in names:
        r = client.get(f"/static/{name}")
        assert r.status_code == 200, name
        assert r.headers["x-content-type-options"] == "nosniff"
    assert client.get("/").text == (STATIC_DIR / "index.html").read_text()
    assert client.get("/static/pcm-worklet.js").headers["content-type"] == "text/javascript; charset=utf-8"


def test_the_page_references_only_files_that_exist(client: TestClient) -> None:
    import re

    page = client.get("/").text
    for path in re.findall(r'(?:src|href)="(/static/[^"]+)"', page):
        assert client.get(path).status_code == 200, path
    app = client.get("/static/app.js").text
    assert (
        'addModule("/static/pcm-worklet.js")' in app
        and 'registerProcessor("pcm16k"' in client.get("/static/pcm-worklet.js").text
    )


@pytest.mark.parametrize(
    "path", ["/static/nope.js", "/static/..%2Fpage.py", "/static/%2E%2E", "/static/page.py", "/static/.hidden.js"]
)
def test_nothing_else_is_served(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 404


def test_etag_revalidation_and_head(client: TestClient) -> None:
    first = client.get("/static/app.js")
    again = client.get("/static/app.js", headers={"if-none-match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == first.headers["etag"]
    assert client.get("/static/app.js", headers={"if-none-match": '"other"'}).status_code == 200
    head = client.head("/")
    assert head.status_code == 200 and head.headers["content-type"] == "text/html; charset=utf-8"


@pytest.mark.parametrize(
    ("host", "connect"),
    [
        ("127.0.0.1:5001", "'self' ws://127.0.0.1:5001 wss://127.0.0.1:5001"),
        ("localhost:5001", "'self' ws://localhost:5001 wss://localhost:5001"),
        ("stt.example.com", "'self' ws://stt.example.com wss://stt.example.com"),
        ("[::1]:5001", "'self' ws://[::1]:5001 wss://[::1]:5001"),
        ("evil;script-src *", "'self'"),
        ("a b", "'self'"),
        ("host:5001/path", "'self'"),
        ("", "'self'"),
        (None, "'self'"),
    ],
)
def test_connect_src_names_only_a_plain_host(host: str | None, connect: str) -> None:
    policy = dict(d.strip().split(" ", 1) for d in content_security_policy(host).split(";"))
    assert policy["connect-src"] == connect
    assert policy["script-src"] == "'self'" and policy["style-src"] == "'self'" and policy["default-src"] == "'self'"


def test_security_headers_on_the_page(client: TestClient) -> None:
    headers = client.get("/").headers
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["permissions-policy"].startswith("microphone=(self)")
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert "ws://127.0.0.1:5001" in headers["content-security-policy"]
