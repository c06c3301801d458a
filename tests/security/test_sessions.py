"""The dashboard's login session: cookie flags, server-side revocation, failed-login limit.

* The cookie is `HttpOnly` and `SameSite=Lax`, and `Secure` when the request came over
  HTTPS or ORCHESTRATOR_WEB_SECURE_COOKIE is set; a client's `X-Forwarded-Proto` is not
  believed (the app trusts no proxy header).
* Logging out ends the session on the server: a copy of the cookie stops working.
* Failed logins are limited per client address, in the database, so every thread and every
  web process counts the same failures.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

import web.sessions
from tests.webtools import AUTH, TOKEN, make_app

from .test_access import csrf_of, log_in

COOKIE = "orchestrator_session"


def session_cookie(response: Any) -> dict[str, str | bool]:
    """The attributes of the session's Set-Cookie header, lower-cased names."""
    header = next(h for h in response.headers.getlist("Set-Cookie") if h.startswith(COOKIE + "="))
    attributes: dict[str, str | bool] = {}
    for part in header.split(";")[1:]:
        name, _, value = part.strip().partition("=")
        attributes[name.lower()] = value or True
    return attributes


def secure_app(runtime: Any) -> Any:
    return make_app(runtime, SETTINGS=runtime.settings.with_(web_secure_cookie=True))


# -- cookie flags ------------------------------------------------------------------------------


def test_the_session_cookie_is_httponly_and_samesite_lax_and_over_plain_http_not_secure(client):
    flags = session_cookie(client.get("/login"))
    assert flags["httponly"] is True
    assert flags["samesite"] == "Lax"
    assert "secure" not in flags


def test_the_session_cookie_is_secure_when_the_request_came_over_https(client):
    flags = session_cookie(client.get("/login", base_url="https://localhost"))
    assert flags["secure"] is True and flags["httponly"] is True and flags["samesite"] == "Lax"


def test_the_session_cookie_is_secure_when_orchestrator_web_secure_cookie_is_set(runtime):
    client = secure_app(runtime).test_client()
    flags = session_cookie(client.get("/login"))
    assert flags["secure"] is True and flags["httponly"] is True and flags["samesite"] == "Lax"


def test_a_forwarded_proto_header_from_the_client_is_not_believed(client):
    flags = session_cookie(client.get("/login", headers={"X-Forwarded-Proto": "https"}))
    assert "secure" not in flags


def test_the_login_cookie_itself_carries_the_flags(runtime):
    client = secure_app(runtime).test_client()
    response = client.post("/login", data={"token": TOKEN, "csrf_token": csrf_of(client)})
    assert response.status_code == 302
    flags = session_cookie(response)
    assert flags["secure"] is True and flags["httponly"] is True and flags["samesite"] == "Lax"


# -- revocation --------------------------------------------------------------------------------


def test_a_copied_session_cookie_stops_working_after_logout(app, client):
    run_id = client.post("/api/workflows/diamond/runs", json={"input": {}}, headers=AUTH).get_json()["id"]
    csrf = log_in(client)
    copy = app.test_client()
    copy.set_cookie(COOKIE, client.get_cookie(COOKIE).value)
    assert "Log out" in copy.get("/").get_data(as_text=True), "the copy works while logged in"

    assert client.post("/logout", data={"csrf_token": csrf}).status_code == 302

    assert "Log out" not in copy.get("/").get_data(as_text=True)
    refused = copy.post(f"/runs/{run_id}/cancel", data={"csrf_token": csrf})
    assert refused.status_code == 302 and refused.headers["Location"].startswith("/login")
    status = client.get(f"/api/runs/{run_id}").get_json()["status"]
    assert status != "cancelled"


def test_a_session_revoked_by_logout_is_refused_by_every_web_process(app, client, runtime):
    csrf = log_in(client)
    cookie = client.get_cookie(COOKIE).value
    other = make_app(runtime, SECRET_KEY=app.config["SECRET_KEY"]).test_client()  # another pod
    other.set_cookie(COOKIE, cookie)
    assert "Log out" in other.get("/").get_data(as_text=True)
    client.post("/logout", data={"csrf_token": csrf})
    assert "Log out" not in other.get("/").get_data(as_text=True)


# -- failed-login limit ------------------------------------------------------------------------


def fail_login(client: Any, token: str = "wrong-token") -> Any:
    return client.post("/login", data={"token": token, "csrf_token": csrf_of(client)})


def test_the_eleventh_failed_login_in_a_minute_is_refused_with_retry_after(app, client):
    for attempt in range(10):
        assert fail_login(client).status_code == 401, attempt
    refused = fail_login(client)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert "Too many failed logins" in refused.get_data(as_text=True)
    # While the limit holds, even the right token is not tried (else guessing goes on).
    assert fail_login(client, TOKEN).status_code == 429
    # Other addresses are not affected.
    elsewhere = app.test_client()
    elsewhere.environ_base["REMOTE_ADDR"] = "192.0.2.7"
    assert fail_login(elsewhere).status_code == 401


def test_a_correct_login_after_the_window_works(client, monkeypatch):
    start = datetime.now(UTC)
    monkeypatch.setattr(web.sessions, "now", lambda: start)
    for _ in range(10):
        fail_login(client)
    assert fail_login(client, TOKEN).status_code == 429
    monkeypatch.setattr(web.sessions, "now", lambda: start + timedelta(seconds=59))
    assert fail_login(client, TOKEN).status_code == 429
    monkeypatch.setattr(web.sessions, "now", lambda: start + timedelta(seconds=61))
    response = fail_login(client, TOKEN)
    assert response.status_code == 302
    assert "Log out" in client.get("/").get_data(as_text=True)


def test_successful_logins_do_not_count_as_failures(app):
    for _ in range(12):
        client = app.test_client()
        log_in(client)


@pytest.mark.parametrize("pods", [1, 2])
def test_failed_logins_are_counted_across_threads_and_web_processes(app, runtime, pods):
    apps = [app] + [make_app(runtime, SECRET_KEY=app.config["SECRET_KEY"]) for _ in range(pods - 1)]
    clients = [apps[i % pods].test_client() for i in range(16)]
    forms = [{"token": "wrong", "csrf_token": csrf_of(c)} for c in clients]
    statuses: list[int] = []
    barrier = threading.Barrier(len(clients))

    def attempt(i: int) -> None:
        barrier.wait()
        statuses.append(clients[i].post("/login", data=forms[i]).status_code)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(len(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(statuses) == [401] * 10 + [429] * 6


def test_a_login_that_cannot_be_checked_never_breaks_the_page(runtime, monkeypatch):
    """The sessions table unreachable: closed reads answer the outage page, open ones render."""
    closed = make_app(runtime, PROPAGATE_EXCEPTIONS=False,
                      SETTINGS=runtime.settings.with_(web_read_auth=True)).test_client()
    opened = make_app(runtime, PROPAGATE_EXCEPTIONS=False).test_client()
    log_in(closed)
    log_in(opened)

    def down(_login: str) -> bool:
        raise OperationalError("SELECT", {}, Exception("connection refused"))

    monkeypatch.setattr(web.sessions, "session_alive", down)
    response = closed.get("/runs")
    assert response.status_code == 503
    assert "cannot reach the database" in response.get_data(as_text=True)
    response = opened.get("/runs")
    assert response.status_code == 200 and "Log out" not in response.get_data(as_text=True)
