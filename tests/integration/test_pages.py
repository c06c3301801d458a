"""The dashboard's pages through Flask's test client: rendering, login, CSRF, escaping, headers."""

from __future__ import annotations

import re
import uuid

import pytest

from orchestrator.db.migrate import upgrade
from orchestrator.runtime import Runtime
from tests.webtools import AUTH, TOKEN, WORKFLOWS, add_event, make_app

PAGES = ["/", "/workflows", "/workflows/diamond", "/runs", "/events", "/login"]


@pytest.fixture
def settings(settings):
    return settings.with_(workflows=WORKFLOWS)


@pytest.fixture
def client(runtime):
    return make_app(runtime).test_client()


def csrf(client, path: str = "/") -> str:
    html = client.get(path).get_data(as_text=True)
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "no CSRF token in the page"
    return found.group(1)


def login(client) -> str:
    token = csrf(client, "/login")
    response = client.post("/login", data={"token": TOKEN, "csrf_token": token, "next": "/runs"})
    assert response.status_code == 302 and response.headers["Location"] == "/runs"
    return csrf(client, "/runs")


def start(client, workflow: str = "diamond", data: dict | None = None) -> str:
    response = client.post(f"/api/workflows/{workflow}/runs", json={"input": data or {}}, headers=AUTH)
    assert response.status_code == 201
    return response.get_json()["id"]


@pytest.mark.parametrize("path", PAGES)
def test_every_page_renders_with_security_headers(client, path):
    start(client)
    response = client.get(path)
    assert response.status_code == 200
    assert response.content_type.startswith("text/html")
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert "frame-ancestors 'none'" in policy
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    html = response.get_data(as_text=True)
    assert "<script>" not in html and " on" + "click=" not in html  # scripts only from static files
    assert "//cdn" not in html and "https://" not in html  # every asset is local


def test_run_page_shows_dag_timeline_event_and_steps(client, runtime):
    event_id = add_event(runtime, {"type": "user.signed_up", "user": {"email": "x@y.z"}},
                         outcome="rejected")
    replayed = client.post(f"/api/events/{event_id}/replay", headers=AUTH).get_json()["runs"][0]
    html = client.get(f"/runs/{replayed}").get_data(as_text=True)
    assert 'class="dag"' in html and 'data-node="greet"' in html
    assert 'class="timeline"' in html
    assert f'href="/events/{event_id}"' in html and "web-test.signups" in html
    assert 'data-step="greet"' in html
    event_html = client.get(f"/events/{event_id}").get_data(as_text=True)
    assert f'href="/runs/{replayed}"' in event_html  # lineage the other way


def test_static_assets_are_served_locally(client):
    for name in ("app.js", "runs.js", "run.js", "app.css"):
        assert client.get(f"/static/{name}").status_code == 200
    assert "innerHTML" not in client.get("/static/runs.js").get_data(as_text=True)


def test_unknown_run_and_bad_filters_render_an_error_page(client):
    missing = client.get(f"/runs/{uuid.uuid4()}")
    assert missing.status_code == 404 and "no run" in missing.get_data(as_text=True)
    bad = client.get("/runs?status=%3Cscript%3E")
    assert bad.status_code == 400
    assert "&lt;script&gt;" in bad.get_data(as_text=True)


def test_payload_reason_and_description_text_is_escaped(client, runtime):
    add_event(runtime, {"html": "<script>alert(1)</script>"}, reason="<img src=x onerror=alert(2)>",
              raw=b"<script>alert(3)</script>")
    html = client.get("/events").get_data(as_text=True)
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(2)&gt;" in html
    workflow = client.get("/workflows/signup").get_data(as_text=True)
    assert "<b>(not bold)</b>" not in workflow and "&lt;b&gt;(not bold)&lt;/b&gt;" in workflow


def test_login_with_a_wrong_token_is_refused(client):
    token = csrf(client, "/login")
    response = client.post("/login", data={"token": "nope", "csrf_token": token})
    assert response.status_code == 401
    assert "not valid" in response.get_data(as_text=True)
    assert "Log out" not in client.get("/").get_data(as_text=True)


def test_login_never_redirects_off_site(client):
    token = csrf(client, "/login")
    for target in ("//evil.example/", "https://evil.example/", "/\\evil.example", "javascript:alert(1)"):
        response = client.post("/login", data={"token": TOKEN, "csrf_token": token, "next": target})
        assert response.status_code == 302 and response.headers["Location"] == "/", target
        token = csrf(client, "/login")


def test_actions_need_the_csrf_token_then_a_login(client):
    run_id = start(client)
    no_csrf = client.post(f"/runs/{run_id}/cancel")
    assert no_csrf.status_code == 400 and "CSRF" in no_csrf.get_data(as_text=True)
    forged = client.post(f"/runs/{run_id}/cancel", data={"csrf_token": "forged"})
    assert forged.status_code == 400
    anonymous = client.post(f"/runs/{run_id}/cancel", data={"csrf_token": csrf(client, "/login")})
    assert anonymous.status_code == 302 and anonymous.headers["Location"].startswith("/login")
    assert client.get(f"/api/runs/{run_id}").get_json()["status"] == "pending"
    token = login(client)
    done = client.post(f"/runs/{run_id}/cancel", data={"csrf_token": token})
    assert done.status_code == 302 and done.headers["Location"] == f"/runs/{run_id}"
    assert client.get(f"/api/runs/{run_id}").get_json()["status"] == "cancelled"
    page = client.get(f"/runs/{run_id}").get_data(as_text=True)
    assert "Cancelled the run." in page
    again = client.post(f"/runs/{run_id}/cancel", data={"csrf_token": token}, follow_redirects=True)
    assert "already finished" in again.get_data(as_text=True)
    retried = client.post(f"/runs/{run_id}/retry", data={"csrf_token": token}, follow_redirects=True)
    assert "Retrying" in retried.get_data(as_text=True)


def test_logout_forgets_the_session(client):
    token = login(client)
    assert client.post("/logout", data={"csrf_token": token}).status_code == 302
    run_id = start(client)
    response = client.post(f"/runs/{run_id}/cancel", data={"csrf_token": csrf(client, "/login")})
    assert response.headers["Location"].startswith("/login")


def test_changing_the_token_logs_every_browser_out(runtime):
    first = make_app(runtime, SECRET_KEY="fixed").test_client()
    login(first)
    assert "Log out" in first.get("/").get_data(as_text=True)
    second = make_app(runtime, SECRET_KEY="fixed", API_TOKEN="another-token").test_client()
    second.set_cookie("orchestrator_session", first.get_cookie("orchestrator_session").value)
    assert "Log out" not in second.get("/").get_data(as_text=True)


def test_start_form_starts_a_run_or_explains_the_refusal(client):
    token = login(client)
    bad = client.post("/workflows/signup/start", data={"csrf_token": token, "input": '{"email": 1'})
    assert bad.status_code == 400
    html = bad.get_data(as_text=True)
    assert "not valid JSON" in html and "{&#34;email&#34;: 1" in html  # the input is kept
    listed = client.post("/workflows/signup/start", data={"csrf_token": token, "input": "[1]"})
    assert listed.status_code == 400 and "the input must be a JSON object" in listed.get_data(as_text=True)
    invalid = client.post("/workflows/signup/start", data={"csrf_token": token, "input": "{}"})
    assert invalid.status_code == 400 and "required property" in invalid.get_data(as_text=True)
    ok = client.post("/workflows/signup/start",
                     data={"csrf_token": token, "input": '{"email": "a@b.c"}'})
    assert ok.status_code == 302
    run_id = ok.headers["Location"].rsplit("/", 1)[-1]
    assert client.get(f"/api/runs/{run_id}").get_json()["input"] == {"email": "a@b.c"}


def test_bulk_form_acts_on_selected_runs_or_every_matching_run(client):
    token = login(client)
    runs = [start(client) for _ in range(3)]
    other = start(client, "branches")
    selected = client.post("/runs/bulk", data={"csrf_token": token, "action": "cancel", "scope": "selected",
                                               "ids": runs[:2]}, follow_redirects=True)
    assert "Cancelled 2 of 2 matching run(s)." in selected.get_data(as_text=True)
    matching = client.post("/runs/bulk", data={"csrf_token": token, "action": "cancel", "scope": "matching",
                                               "workflow": "diamond"})
    assert matching.status_code == 302 and matching.headers["Location"] == "/runs?workflow=diamond"
    assert "Cancelled 1 of 1 matching run(s)." in client.get("/runs").get_data(as_text=True)
    assert client.get(f"/api/runs/{other}").get_json()["status"] == "pending"
    nothing = client.post("/runs/bulk", data={"csrf_token": token, "action": "retry", "scope": "selected"})
    assert nothing.status_code == 400 and "ids is empty" in nothing.get_data(as_text=True)
    wrong = client.post("/runs/bulk", data={"csrf_token": token, "action": "explode", "ids": runs})
    assert wrong.status_code == 400


def test_replay_button_starts_the_run(client, runtime):
    token = login(client)
    event_id = add_event(runtime, {"type": "user.signed_up", "user": {"email": "q@r.s"}})
    response = client.post(f"/events/{event_id}/replay", data={"csrf_token": token}, follow_redirects=True)
    assert "Replay started 1 run(s)." in response.get_data(as_text=True)


def test_runs_page_pages_with_a_cursor_and_filters(client):
    ids = [start(client) for _ in range(4)]
    first = client.get("/runs?limit=3").get_data(as_text=True)
    assert all(f'data-run="{i}"' in first for i in ids[1:]) and f'data-run="{ids[0]}"' not in first
    older = re.search(r'href="([^"]+)" id="next-page"', first).group(1).replace("&amp;", "&")
    second = client.get(older).get_data(as_text=True)
    assert f'data-run="{ids[0]}"' in second and 'data-live="no"' in second


def test_pages_work_on_sqlite_state(tmp_path, settings):
    url = f"sqlite:///{tmp_path / 'state.db'}"
    upgrade(url)
    runtime = Runtime(settings.with_(database_url=url, broker_url=f"sqla+sqlite:///{tmp_path / 'b.db'}"))
    client = make_app(runtime).test_client()
    run_id = client.post("/api/workflows/diamond/runs", json={"input": {}}, headers=AUTH).get_json()["id"]
    for path in [*PAGES, f"/runs/{run_id}", "/api/runs?since=1h", "/metrics"]:
        assert client.get(path).status_code == 200, path
    assert "orchestrator_runs{" in client.get("/metrics").get_data(as_text=True)
    runtime.close()
