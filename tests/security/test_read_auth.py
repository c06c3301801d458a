"""Closed reads: with ORCHESTRATOR_WEB_READ_AUTH=1 nothing is readable without the token.

Every GET route of the app (read from its URL map, so a route added later is covered) then
refuses an anonymous request: a page redirects to the login form, the API and /metrics
answer 401 in JSON. The only routes left open are /healthz (probes), the login form and
the static assets it needs (code, no data), and /metrics when ORCHESTRATOR_METRICS_PUBLIC=1.
With the setting off (the default) reads stay open as before.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.webtools import AUTH, TOKEN, add_event, assert_documented, make_app
from web.openapi import document

from .test_access import csrf_of, log_in

#: Endpoints that stay open to anonymous readers whatever the setting.
ALWAYS_OPEN = {"health.healthz", "auth.login", "static"}
#: Answered in JSON, so refused with 401 rather than sent to the login form.
JSON_PREFIXES = ("/api/", "/metrics")


def closed_app(runtime: Any, **changes: Any) -> Any:
    settings = runtime.settings.with_(web_read_auth=True, **changes)
    return make_app(runtime, SETTINGS=settings)


@pytest.fixture
def closed(runtime) -> Any:
    return closed_app(runtime)


def get_routes(app: Any, runtime: Any) -> list[tuple[str, str]]:
    """(endpoint, URL) for every GET route of `app`, naming things that exist."""
    run = app.test_client().post(
        "/api/workflows/diamond/runs", json={"input": {}}, headers=AUTH
    ).get_json()["id"]
    event = add_event(runtime, {"type": "user.signed_up", "user": {"email": "a@b.c"}})
    values = {"run_id": run, "event_id": event, "name": "diamond", "filename": "app.css"}
    # A route of a run's step (a map's items) names a run with a map, and its map.
    mapped = {**values, "run_id": runtime.engine.start_run("w-squares", {"items": [1, 2]}), "step": "square"}
    adapter = app.url_map.bind("localhost")
    routes = [(rule.endpoint, adapter.build(rule.endpoint, {k: (mapped if "step" in rule.arguments else values)[k]
                                                            for k in rule.arguments}))
              for rule in app.url_map.iter_rules() if "GET" in rule.methods]
    assert len(routes) >= 15
    return routes


def assert_refused(response: Any, url: str) -> None:
    if url.startswith(JSON_PREFIXES):
        assert response.status_code == 401, (url, response.status_code)
        assert response.headers["WWW-Authenticate"].startswith("Bearer"), url
        assert set(response.get_json()) == {"error"}, url
        message = response.get_json()["error"]
        assert "ORCHESTRATOR_WEB_READ_AUTH" in message and "Bearer" in message, message
    else:
        assert response.status_code == 302, (url, response.status_code)
        location = urlsplit(response.headers["Location"])
        assert location.path == "/login", url
        assert parse_qs(location.query)["next"] == [url]
    assert "a@b.c" not in response.get_data(as_text=True), url


def test_with_read_auth_every_get_route_refuses_anonymous_readers_except_the_open_ones(closed, runtime):
    anonymous = closed.test_client()
    for endpoint, url in get_routes(closed, runtime):
        if endpoint in ALWAYS_OPEN:
            assert anonymous.get(url).status_code == 200, url
            assert anonymous.head(url).status_code == 200, url
        else:
            assert_refused(anonymous.get(url), url)
            assert anonymous.head(url).status_code in (302, 401), url


def test_the_api_documents_the_refusal_of_every_read(closed, runtime):
    anonymous = closed.test_client()
    for path, ops in document()["paths"].items():
        if "get" in ops and path != "/healthz":
            url = path.format(name="diamond", run_id="00000000-0000-0000-0000-000000000000", event_id=1,
                              step="square")
            assert_documented(anonymous.get(url), path)


def test_with_read_auth_a_wrong_token_or_a_forged_session_is_refused(closed, runtime):
    forger = make_app(runtime, SECRET_KEY="guessed-key").test_client()
    log_in(forger)
    for endpoint, url in get_routes(closed, runtime):
        if endpoint in ALWAYS_OPEN:
            continue
        for headers in ({"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
            assert_refused(closed.test_client().get(url, headers=headers), url)
        forged = closed.test_client()
        forged.set_cookie("orchestrator_session", forger.get_cookie("orchestrator_session").value)
        assert_refused(forged.get(url), url)


def test_with_read_auth_every_get_route_answers_the_token(closed, runtime):
    client = closed.test_client()
    for _, url in get_routes(closed, runtime):
        response = client.get(url, headers=AUTH)
        assert response.status_code == 200, (url, response.status_code)


def test_with_read_auth_every_get_route_answers_after_login(closed, runtime):
    client = closed.test_client()
    log_in(client)
    for _, url in get_routes(closed, runtime):
        response = client.get(url)
        assert response.status_code == 200, (url, response.status_code)


def test_with_read_auth_the_login_form_brings_the_reader_back_to_the_page(closed):
    client = closed.test_client()
    refused = client.get("/runs?status=failed")
    location = refused.headers["Location"]
    assert location.startswith("/login")
    target = parse_qs(urlsplit(location).query)["next"][0]
    assert target == "/runs?status=failed"
    csrf = csrf_of(client, location)
    response = client.post("/login", data={"token": TOKEN, "csrf_token": csrf, "next": target})
    assert response.status_code == 302 and response.headers["Location"] == target
    assert client.get(target).status_code == 200


def test_with_read_auth_metrics_are_public_only_when_orchestrator_metrics_public_is_set(runtime):
    closed = closed_app(runtime).test_client()
    assert closed.get("/metrics").status_code == 401
    assert closed.get("/metrics", headers=AUTH).status_code == 200
    public = closed_app(runtime, metrics_public=True).test_client()
    assert public.get("/metrics").status_code == 200
    assert public.get("/api/runs").status_code == 401


def test_without_read_auth_every_get_route_is_open_as_before(app, runtime):
    client = app.test_client()
    for _, url in get_routes(app, runtime):
        response = client.get(url)
        assert response.status_code == 200, (url, response.status_code)
