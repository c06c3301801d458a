"""Security headers on every answer: each page, API response, probe, static asset and error.

The Content-Security-Policy allows scripts only from the dashboard's own files (no inline
script, no `unsafe-inline`, no `unsafe-eval`), forbids framing, and every answer tells the
browser not to sniff its type.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.webtools import AUTH, add_event, make_app


def directives(policy: str) -> dict[str, list[str]]:
    parsed: dict[str, list[str]] = {}
    for part in policy.split(";"):
        words = part.split()
        if words:
            parsed[words[0]] = words[1:]
    return parsed


def assert_secure_headers(response: Any, where: str) -> None:
    policy = directives(response.headers.get("Content-Security-Policy", ""))
    scripts = policy.get("script-src", policy.get("default-src"))
    assert scripts == ["'self'"], f"{where}: script-src {scripts}"
    for values in policy.values():
        assert "'unsafe-inline'" not in values and "'unsafe-eval'" not in values, where
    assert policy.get("frame-ancestors") == ["'none'"], where
    assert policy.get("object-src") == ["'none'"], where
    assert policy.get("base-uri") == ["'none'"], where
    assert response.headers.get("X-Content-Type-Options") == "nosniff", where
    assert response.headers.get("X-Frame-Options") == "DENY", where


@pytest.fixture
def urls(app, client, runtime) -> list[str]:
    """A URL for every GET route of the app, naming things that exist."""
    run = client.post("/api/workflows/diamond/runs", json={"input": {}}, headers=AUTH).get_json()["id"]
    event = add_event(runtime, {"type": "user.signed_up", "user": {"email": "a@b.c"}})
    values = {"run_id": run, "event_id": event, "name": "diamond", "filename": "app.js"}
    # A route of a run's step (a map's items) names a run with a map, and its map.
    mapped = {"run_id": runtime.engine.start_run("w-squares", {"items": [1, 2]}), "step": "square"}
    adapter = app.url_map.bind("localhost")
    found = []
    for rule in app.url_map.iter_rules():
        if "GET" in rule.methods:
            given = {**values, **mapped} if "step" in rule.arguments else values
            found.append(adapter.build(rule.endpoint, {k: given[k] for k in rule.arguments}))
    return found


def test_every_get_route_answers_with_the_security_headers(client, urls):
    assert len(urls) >= 15
    for url in urls:
        response = client.get(url)
        assert response.status_code == 200, url
        assert_secure_headers(response, url)


def test_every_error_answers_with_the_security_headers(runtime):
    app = make_app(runtime, PROPAGATE_EXCEPTIONS=False)

    @app.get("/api/boom")
    def boom() -> None:
        raise RuntimeError("unexpected")

    @app.get("/boom")
    def page_boom() -> None:
        raise RuntimeError("unexpected")

    client = app.test_client()
    answers = {
        "page 404": client.get("/no-such-page"),
        "api 404": client.get("/api/runs/00000000-0000-0000-0000-000000000000"),
        "api 400": client.get("/api/runs?limit=0"),
        "page 400": client.get("/runs?status=nope"),
        "api 401": client.post("/api/runs/cancel", json={"status": "pending"}),
        "api 405": client.delete("/api/runs"),
        "api 413": client.post("/api/runs/cancel", data=b"x" * (2 * 1024 * 1024), headers=AUTH),
        "form 400": client.post("/logout"),
        "api 500": client.get("/api/boom"),
        "page 500": client.get("/boom"),
    }
    for where, response in answers.items():
        assert response.status_code == int(where.split()[1]), (where, response.status_code)
        assert_secure_headers(response, where)
        assert "Traceback" not in response.get_data(as_text=True)
