"""Who may change things: every mutating API operation and every dashboard action refuses a
missing or wrong token, tokens are compared in constant time, and every form needs the CSRF
token of its own session.

The routes are read from the app and its OpenAPI document, so a mutating route added later
is covered (or this module fails until it is).
"""

from __future__ import annotations

import ast
import hmac
import inspect
import re
from typing import Any

import pytest
from sqlalchemy import text

import web.auth
from tests.webtools import AUTH, TOKEN, add_event, make_app
from web.openapi import document

#: Authorization headers that must all be refused.
BAD_AUTH = {
    "missing": {},
    "empty-bearer": {"Authorization": "Bearer "},
    "no-scheme": {"Authorization": TOKEN},
    "basic": {"Authorization": f"Basic {TOKEN}"},
    "wrong": {"Authorization": "Bearer wrong-token"},
    "prefix": {"Authorization": f"Bearer {TOKEN[:-1]}"},
    "longer": {"Authorization": f"Bearer {TOKEN}0"},
    "case": {"Authorization": f"Bearer {TOKEN.upper()}"},
    "non-ascii": {"Authorization": "Bearer t\u00f6k\u00e9n"},
    "huge": {"Authorization": "Bearer " + "x" * 60_000},
    "two-tokens": {"Authorization": f"Bearer wrong {TOKEN}"},
}
#: Dashboard actions (endpoint) and the form fields that make each do something.
ACTIONS: dict[str, dict[str, Any]] = {
    "pages.start": {"input": "{}"},
    "pages.bulk": {"action": "cancel", "scope": "selected"},
    "pages.retry": {},
    "pages.cancel": {},
    "pages.replay": {},
    "pages.approve": {"decision": "approve", "comment": "ok"},
    "pages.schedules": {},
}


@pytest.fixture
def world(client, runtime) -> dict[str, Any]:
    """A pending run, a finished one, a replayable event and a waiting approval: things an
    action would change."""
    runs = []
    for _ in range(2):
        response = client.post("/api/workflows/diamond/runs", json={"input": {}}, headers=AUTH)
        runs.append(response.get_json()["id"])
    client.post(f"/api/runs/{runs[1]}/cancel", headers=AUTH)
    event = add_event(runtime, {"type": "user.signed_up", "user": {"email": "a@b.c"}})
    waiting = runtime.engine.start_run("sign-off", {})
    return {"run_id": runs[0], "finished": runs[1], "event_id": event, "name": "diamond",
            "waiting": waiting, "step": "manager", "workflow": "scheduled-text", "action": "pause"}


def snapshot(runtime: Any) -> list[Any]:
    """Everything an action could change."""
    with runtime.db.connect() as conn:
        return [
            conn.execute(text("SELECT id, status FROM runs ORDER BY id")).all(),
            conn.execute(text("SELECT id, status, attempts, task_id FROM steps ORDER BY id")).all(),
            conn.execute(text("SELECT id, outcome, reason FROM events ORDER BY id")).all(),
            conn.execute(text("SELECT id, status, decision FROM waits ORDER BY id")).all(),
            conn.execute(text("SELECT workflow, schedule_id, paused FROM schedules ORDER BY 1, 2")).all(),
        ]


def csrf_of(client: Any, path: str = "/login") -> str:
    html = client.get(path).get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def log_in(client: Any) -> str:
    response = client.post("/login", data={"token": TOKEN, "csrf_token": csrf_of(client)})
    assert response.status_code == 302
    return csrf_of(client, "/runs")


def build(app: Any, endpoint: str, world: dict[str, Any]) -> str:
    rule = next(r for r in app.url_map.iter_rules() if r.endpoint == endpoint)
    values = {name: world[name] for name in rule.arguments}
    return app.url_map.bind("localhost").build(endpoint, values)


# -- the API ---------------------------------------------------------------------------------

MUTATING_OPERATIONS = [path for path, ops in document()["paths"].items() if "post" in ops]


@pytest.mark.parametrize("path", MUTATING_OPERATIONS)
def test_every_mutating_operation_refuses_a_missing_or_wrong_token(client, runtime, world, path):
    url = path.format(**world)
    before = snapshot(runtime)
    bodies = {"/api/runs/retry": {"status": "cancelled"}, "/api/runs/cancel": {"status": "pending"}}
    for name, headers in BAD_AUTH.items():
        response = client.post(url, json=bodies.get(path, {"input": {}}), headers=headers)
        assert response.status_code == 401, (name, response.get_json())
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert response.get_json()["error"]
    assert snapshot(runtime) == before
    allowed = client.post(url, json=bodies.get(path, {"input": {}}),
                          headers={"Authorization": f"bearer {TOKEN}"})  # the scheme is case-blind
    assert allowed.status_code != 401


def test_the_app_has_no_mutating_api_route_the_document_does_not_list(app):
    posted = {r.rule.replace("<int:", "<").replace("<", "{").replace(">", "}")
              for r in app.url_map.iter_rules() if r.rule.startswith("/api/") and r.methods & {"POST", "PUT", "PATCH", "DELETE"}}
    assert posted == set(MUTATING_OPERATIONS)


def test_a_server_without_a_token_refuses_every_mutating_call_and_every_login(runtime, world):
    client = make_app(runtime, API_TOKEN=None).test_client()
    for path in MUTATING_OPERATIONS:
        url = path.format(**world)
        for headers in ({"Authorization": "Bearer None"}, {"Authorization": "Bearer "}, AUTH):
            assert client.post(url, json={}, headers=headers).status_code == 401
    refused = client.post("/login", data={"token": "None", "csrf_token": csrf_of(client)})
    assert refused.status_code == 401


# -- the dashboard ------------------------------------------------------------------------------


def test_every_dashboard_action_is_covered_here(app):
    posted = {r.endpoint for r in app.url_map.iter_rules()
              if "POST" in r.methods and not r.rule.startswith("/api/")}
    assert posted == set(ACTIONS) | {"auth.login", "auth.logout"}


@pytest.mark.parametrize("endpoint", sorted(ACTIONS))
def test_every_dashboard_action_needs_its_sessions_csrf_token_and_a_login(app, runtime, world, endpoint):
    url = build(app, endpoint, world)
    if endpoint == "pages.retry":
        url = build(app, endpoint, {**world, "run_id": world["finished"]})
    if endpoint == "pages.approve":
        url = build(app, endpoint, {**world, "run_id": world["waiting"]})
    if endpoint == "pages.schedules":
        url = build(app, endpoint, {**world, "name": world["workflow"]})
    fields = dict(ACTIONS[endpoint])
    if endpoint == "pages.bulk":
        fields["ids"] = [world["run_id"]]
    before = snapshot(runtime)

    anonymous = app.test_client()
    for csrf in (None, "", "forged", csrf_of(app.test_client())):  # none, empty, made up, another session's
        data = fields if csrf is None else {**fields, "csrf_token": csrf}
        response = anonymous.post(url, data=data)
        assert response.status_code == 400 and "CSRF" in response.get_data(as_text=True), (csrf, response.status)
    response = anonymous.post(url, data={**fields, "csrf_token": csrf_of(anonymous)})
    assert response.status_code == 302 and response.headers["Location"].startswith("/login"), "not logged in"

    member = app.test_client()
    own = log_in(member)
    for csrf in (None, "forged", csrf_of(app.test_client())):
        data = fields if csrf is None else {**fields, "csrf_token": csrf}
        assert member.post(url, data=data).status_code == 400, f"logged in, CSRF {csrf!r}"
    # The same signed session under a server whose token has changed is no longer a login.
    rotated = make_app(runtime, API_TOKEN="a-new-token", SECRET_KEY=app.config["SECRET_KEY"]).test_client()
    rotated.set_cookie("orchestrator_session", member.get_cookie("orchestrator_session").value)
    response = rotated.post(url, data={**fields, "csrf_token": own})
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
    # A session cookie signed with another key is ignored.
    forger = make_app(runtime, SECRET_KEY="guessed-key").test_client()
    log_in(forger)
    anonymous.set_cookie("orchestrator_session", forger.get_cookie("orchestrator_session").value)
    response = anonymous.post(url, data={**fields, "csrf_token": csrf_of(forger)})
    assert response.status_code == 400

    assert snapshot(runtime) == before
    done = member.post(url, data={**fields, "csrf_token": own})
    assert done.status_code == 302 and not done.headers["Location"].startswith("/login")
    assert snapshot(runtime) != before or endpoint == "pages.replay"


def test_login_and_logout_need_the_csrf_token(client):
    assert client.post("/login", data={"token": TOKEN}).status_code == 400
    assert client.post("/login", data={"token": TOKEN, "csrf_token": "forged"}).status_code == 400
    assert "Log out" not in client.get("/").get_data(as_text=True)
    wrong = client.post("/login", data={"token": TOKEN + "x", "csrf_token": csrf_of(client)})
    assert wrong.status_code == 401 and "Log out" not in client.get("/").get_data(as_text=True)
    log_in(client)
    assert client.post("/logout").status_code == 400
    assert client.post("/logout", data={"csrf_token": "forged"}).status_code == 400
    assert "Log out" in client.get("/").get_data(as_text=True)


# -- constant-time comparison ------------------------------------------------------------------------


def _secret_names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | {
        n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}


def test_tokens_are_never_compared_with_equality_operators():
    tree = ast.parse(inspect.getsource(web.auth))
    secret = re.compile(r"token|csrf|mark|fingerprint|expected|presented|secret", re.I)
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops):
            names = _secret_names(node)
            assert not any(secret.search(n) for n in names), ast.unparse(node)
    callers = {f.name for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)
               and "compare_digest" in _secret_names(f)}
    assert {"token_ok", "logged_in", "check_csrf"} <= callers


def test_every_check_of_a_secret_goes_through_compare_digest(monkeypatch, app, world):
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    client = app.test_client()
    assert client.post(f"/api/runs/{world['run_id']}/cancel", headers={"Authorization": "Bearer guess"}).status_code == 401
    assert (b"guess", TOKEN.encode()) in calls
    calls.clear()
    client.post("/login", data={"token": "guess-2", "csrf_token": csrf_of(client)})
    assert (b"guess-2", TOKEN.encode()) in calls
    calls.clear()
    client.post(f"/runs/{world['run_id']}/cancel", data={"csrf_token": "guess-3"})
    assert any(a == b"guess-3" for a, _ in calls)
    calls.clear()
    log_in(client)
    client.get("/")
    assert calls, "the login session's fingerprint was not checked with compare_digest"
