"""The JSON API against PostgreSQL: every endpoint, its 4xx paths, and its OpenAPI contract.

Runs are executed by real `orchestrator worker` processes where a test needs them to
finish; everything else uses runs whose first messages simply wait in Redis.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import update

from orchestrator.db.models import Run
from tests.fixtures.waiting import wait_for
from tests.webtools import AUTH, TOKEN, WORKFLOWS, add_event, assert_documented, make_app
from web.openapi import document


@pytest.fixture
def settings(settings):
    """The conftest settings plus the dashboard's test workflows."""
    return settings.with_(workflows=WORKFLOWS)


@pytest.fixture
def client(runtime):
    return make_app(runtime).test_client()


def start(client, workflow: str = "diamond", data: dict | None = None) -> dict:
    response = client.post(f"/api/workflows/{workflow}/runs", json={"input": data or {}}, headers=AUTH)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


# -- the contract --------------------------------------------------------------------------------


def test_openapi_documents_every_api_route_and_nothing_more(client):
    doc = client.get("/api/openapi.json")
    assert doc.status_code == 200
    assert doc.get_json()["openapi"].startswith("3.")
    routes = set()
    for rule in client.application.url_map.iter_rules():
        if rule.rule.startswith(("/api/", "/healthz", "/metrics")):
            path = rule.rule.replace("<int:", "<").replace("<", "{").replace(">", "}")
            for method in rule.methods - {"HEAD", "OPTIONS"}:
                routes.add((path, method.lower()))
    documented = {(path, method) for path, ops in document()["paths"].items() for method in ops}
    assert routes == documented


def test_every_mutating_route_is_documented_as_needing_the_token(client):
    for path, ops in document()["paths"].items():
        for method, op in ops.items():
            if method == "post":
                assert op.get("security") == [{"bearer": []}], path
                assert "401" in op["responses"], path


# -- workflows ------------------------------------------------------------------------------------


def test_workflows_list_steps_dependencies_and_triggers(client):
    response = client.get("/api/workflows")
    assert_documented(response, "/api/workflows")
    workflows = {w["name"]: w for w in response.get_json()["workflows"]}
    diamond = {s["name"]: s for s in workflows["diamond"]["steps"]}
    assert diamond["d"]["after"] == ["b", "c"]
    assert workflows["signup"]["triggers"][0]["topic"] == "web-test.signups"
    assert workflows["signup"]["triggers"][0]["dedupe"] == "user.email"


def test_one_workflow_and_an_unknown_one(client):
    ok = client.get("/api/workflows/branches")
    assert_documented(ok, "/api/workflows/{name}")
    assert {s["name"]: s["conditional"] for s in ok.get_json()["steps"]}["right"] is True
    missing = client.get("/api/workflows/nope")
    assert_documented(missing, "/api/workflows/{name}")
    assert missing.status_code == 404
    assert "unknown workflow 'nope'" in missing.get_json()["error"]


# -- starting runs ---------------------------------------------------------------------------------


def test_start_run_answers_201_with_the_run_and_its_location(client):
    response = client.post("/api/workflows/diamond/runs", json={"input": {"n": 4}}, headers=AUTH)
    assert_documented(response, "/api/workflows/{name}/runs", "post")
    assert response.status_code == 201
    run = response.get_json()
    assert run["workflow"] == "diamond" and run["input"] == {"n": 4}
    assert response.headers["Location"].endswith(f"/api/runs/{run['id']}")
    assert {s["name"]: s["status"] for s in run["steps"]}["a"] == "queued"
    assert run["event"] is None


def test_start_run_without_input_uses_an_empty_object(client):
    response = client.post("/api/workflows/diamond/runs", data="", headers=AUTH)
    assert response.status_code == 400  # the body itself is required ...
    response = client.post("/api/workflows/diamond/runs", json={}, headers=AUTH)
    assert response.status_code == 201  # ... but "input" inside it is not
    assert response.get_json()["input"] == {}


def test_start_run_of_an_unknown_workflow_is_404(client):
    response = client.post("/api/workflows/nope/runs", json={"input": {}}, headers=AUTH)
    assert_documented(response, "/api/workflows/{name}/runs", "post")
    assert response.status_code == 404


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object, got list"),
        (b'{"input": [1]}', "input must be a JSON object, got list"),
        (b'{"input": {}, "extra": 1}', "unknown field(s) 'extra'"),
        (b'{"input": {"email": "x"}}', "fails its schema at email"),
        (b'{"input": {}}', "fails its schema at (root): 'email' is a required property"),
        (b'{"input": {"email": "nul\\u0000here"}}', "NUL character"),
        (b'{"input": {"email": "abc", "n": NaN}}', "not JSON-serialisable"),
        (b'{"input": ' + b"[" * 5000 + b"]" * 5000 + b"}", "not valid JSON"),
    ],
)
def test_start_run_with_a_bad_body_is_400_with_a_message(client, body, message):
    response = client.post(
        "/api/workflows/signup/runs", data=body, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert_documented(response, "/api/workflows/{name}/runs", "post")
    assert response.status_code == 400
    assert message in response.get_json()["error"]


def test_a_body_over_the_size_limit_is_413_json(client):
    big = b'{"input": {"blob": "' + b"x" * (1024 * 1024) + b'"}}'
    response = client.post(
        "/api/workflows/diamond/runs", data=big, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert response.get_json()["error"] == (
        "request body is over the limit of 1048576 bytes (1 MiB); a run's input must fit in it"
    )


# -- authentication ------------------------------------------------------------------------------

MUTATING = [
    "/api/workflows/diamond/runs",
    "/api/runs/00000000-0000-0000-0000-000000000000/cancel",
    "/api/runs/00000000-0000-0000-0000-000000000000/retry",
    "/api/runs/00000000-0000-0000-0000-000000000000/steps/manager/approve",
    "/api/runs/retry",
    "/api/runs/cancel",
    "/api/events/1/replay",
    "/api/reprocess",
]


@pytest.mark.parametrize("path", MUTATING)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": TOKEN},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Bearer {TOKEN}x"},
    ],
    ids=["none", "no-scheme", "basic", "empty", "wrong", "longer"],
)
def test_mutating_calls_without_a_valid_token_are_401(client, runtime, path, headers):
    response = client.post(path, json={"input": {}}, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.get_json()["error"]
    with runtime.sessions() as session:
        assert session.query(Run).count() == 0


def test_a_server_without_a_token_refuses_every_mutating_call(runtime):
    client = make_app(runtime, API_TOKEN=None).test_client()
    response = client.post("/api/workflows/diamond/runs", json={}, headers={"Authorization": "Bearer "})
    assert response.status_code == 401
    assert "no ORCHESTRATOR_API_TOKEN" in response.get_json()["error"]
    response = client.post("/api/workflows/diamond/runs", json={}, headers={"Authorization": "Bearer None"})
    assert response.status_code == 401


def test_reads_need_no_token(client):
    assert client.get("/api/runs").status_code == 200
    assert client.get("/api/events").status_code == 200


# -- listing runs ---------------------------------------------------------------------------------


def test_runs_are_listed_newest_first_in_keyset_pages_without_offset(client, runtime):
    ids = [start(client, "diamond" if i % 2 else "branches")["id"] for i in range(7)]
    statements: list[str] = []

    def capture(_conn, _cursor, statement, *_args):  # noqa: ANN001
        statements.append(statement)

    sa_event.listen(runtime.db, "before_cursor_execute", capture)
    try:
        seen, cursor = [], None
        for _ in range(5):
            response = client.get("/api/runs", query_string={"limit": 3, "cursor": cursor or ""})
            assert_documented(response, "/api/runs")
            page = response.get_json()
            seen.extend(r["id"] for r in page["runs"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
    finally:
        sa_event.remove(runtime.db, "before_cursor_execute", capture)
    assert seen == list(reversed(ids))
    assert statements and not any("OFFSET" in s.upper() for s in statements)


def test_runs_filter_by_workflow_status_and_since(client, runtime):
    old = start(client, "diamond")["id"]
    with runtime.sessions() as session, session.begin():
        session.execute(
            update(Run).where(Run.id == uuid.UUID(old)).values(created_at=datetime.now(UTC) - timedelta(days=2))
        )
    new = start(client, "diamond")["id"]
    other = start(client, "branches")["id"]
    client.post(f"/api/runs/{other}/cancel", headers=AUTH)

    def ids(**query) -> list[str]:
        response = client.get("/api/runs", query_string=query)
        assert response.status_code == 200, response.get_json()
        return [r["id"] for r in response.get_json()["runs"]]

    assert ids(workflow="diamond") == [new, old]
    assert ids(status="cancelled") == [other]
    assert ids(workflow="diamond", status="cancelled") == []
    assert ids(since="1d") == [other, new]
    assert ids(since=(datetime.now(UTC) - timedelta(days=3)).isoformat()) == [other, new, old]
    assert ids(since="2020-01-01T00:00:00") == [other, new, old]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"limit": "0"}, "limit must be an integer from 1 to 500"),
        ({"limit": "501"}, "limit must be an integer from 1 to 500"),
        ({"limit": "ten"}, "limit must be an integer"),
        ({"status": "exploded"}, "status must be one of"),
        ({"workflow": "no spaces"}, "is not a workflow name"),
        ({"workflow": "a\x00b"}, "is not a workflow name"),
        ({"since": "yesterday"}, "since must be an ISO 8601 time"),
        ({"since": "99999999d"}, "since must be an ISO 8601 time"),
        ({"since": "999999d"}, "reaches too far back"),
        ({"cursor": "%%%"}, "cursor is not valid"),
        ({"cursor": "WyJlIiwgMV0"}, "cursor is not valid"),  # an events cursor
    ],
)
def test_runs_list_rejects_bad_parameters_with_400(client, query, message):
    response = client.get("/api/runs", query_string=query)
    assert_documented(response, "/api/runs")
    assert response.status_code == 400
    assert message in response.get_json()["error"]


# -- one run, cancel, retry ------------------------------------------------------------------------


def test_a_run_shows_input_steps_attempts_logs_and_times(client, start_worker, wait_for_run):
    start_worker(concurrency=2)
    run_id = start(client, "diamond", {"n": 5})["id"]
    wait_for_run(run_id)
    response = client.get(f"/api/runs/{run_id}")
    assert_documented(response, "/api/runs/{run_id}")
    run = response.get_json()
    assert run["status"] == "succeeded" and run["input"] == {"n": 5}
    steps = {s["name"]: s for s in run["steps"]}
    assert steps["d"]["result"] == {"sum": 25}
    attempt = steps["d"]["attempts"][0]
    assert attempt["status"] == "succeeded" and attempt["worker"]
    assert attempt["logs"][0]["message"] == "joining {'n': 10} and {'n': 15}"
    assert run["started_at"] <= run["finished_at"]


@pytest.mark.parametrize("run_id", ["not-a-uuid", str(uuid.UUID(int=7))])
def test_an_unknown_run_is_404(client, run_id):
    for path, method in [("/api/runs/{run_id}", "get"), ("/api/runs/{run_id}/cancel", "post"),
                         ("/api/runs/{run_id}/retry", "post")]:
        response = client.open(path.format(run_id=run_id), method=method.upper(), headers=AUTH)
        assert_documented(response, path, method)
        assert response.status_code == 404
        assert "no run" in response.get_json()["error"]


def test_cancel_a_live_run_then_409_when_it_has_finished(client):
    run_id = start(client)["id"]
    response = client.post(f"/api/runs/{run_id}/cancel", headers=AUTH)
    assert_documented(response, "/api/runs/{run_id}/cancel", "post")
    assert response.status_code == 200
    assert response.get_json()["status"] == "cancelled"
    assert {s["status"] for s in response.get_json()["steps"]} == {"cancelled"}
    again = client.post(f"/api/runs/{run_id}/cancel", headers=AUTH)
    assert_documented(again, "/api/runs/{run_id}/cancel", "post")
    assert again.status_code == 409
    assert "already finished" in again.get_json()["error"]


def test_retry_of_a_live_run_is_409(client):
    run_id = start(client)["id"]
    response = client.post(f"/api/runs/{run_id}/retry", headers=AUTH)
    assert_documented(response, "/api/runs/{run_id}/retry", "post")
    assert response.status_code == 409
    assert "still running or has nothing to retry" in response.get_json()["error"]


def test_retry_reruns_failed_steps_and_keeps_succeeded_results(client, start_worker, wait_for_run):
    start_worker(concurrency=2)
    run_id = start(client, "doomed")["id"]
    assert wait_for_run(run_id)["status"] == "failed"
    response = client.post(f"/api/runs/{run_id}/retry", headers=AUTH)
    assert_documented(response, "/api/runs/{run_id}/retry", "post")
    assert response.status_code == 200
    assert response.get_json()["status"] == "running"
    run = wait_for_run(run_id)
    steps = {s["name"]: s for s in run["steps"]}
    assert run["status"] == "failed"
    assert len(steps["breaks"]["attempts"]) == 4  # two more attempts after the retry
    assert len(steps["first"]["attempts"]) == 1 and steps["first"]["result"] == "ok"
    assert len(steps["sibling"]["attempts"]) == 1


# -- bulk actions ------------------------------------------------------------------------------------


def test_bulk_cancel_by_ids_reports_what_it_touched(client):
    live = [start(client)["id"] for _ in range(3)]
    client.post(f"/api/runs/{live[0]}/cancel", headers=AUTH)
    unknown = str(uuid.uuid4())
    response = client.post("/api/runs/cancel", json={"ids": [*live, unknown]}, headers=AUTH)
    assert_documented(response, "/api/runs/cancel", "post")
    result = response.get_json()
    assert (result["matched"], result["touched"]) == (3, 2)
    assert sorted(result["runs"]) == sorted(live[1:])
    assert result["not_found"] == [unknown]


def test_bulk_retry_and_cancel_by_filter(client):
    diamonds = [start(client, "diamond")["id"] for _ in range(3)]
    branch = start(client, "branches")["id"]
    cancelled = client.post("/api/runs/cancel", json={"workflow": "diamond"}, headers=AUTH)
    assert_documented(cancelled, "/api/runs/cancel", "post")
    assert cancelled.get_json()["touched"] == 3
    assert sorted(cancelled.get_json()["runs"]) == sorted(diamonds)
    assert client.get(f"/api/runs/{branch}").get_json()["status"] == "pending"
    retried = client.post("/api/runs/retry", json={"status": "cancelled", "limit": 2}, headers=AUTH)
    assert_documented(retried, "/api/runs/retry", "post")
    result = retried.get_json()
    assert (result["matched"], result["touched"], result["remaining"]) == (2, 2, True)
    rest = client.post("/api/runs/retry", json={"status": "cancelled", "since": "1h"}, headers=AUTH)
    assert (rest.get_json()["touched"], rest.get_json()["remaining"]) == (1, False)
    statuses = {client.get(f"/api/runs/{i}").get_json()["status"] for i in diamonds}
    assert statuses == {"running"}
    nothing = client.post("/api/runs/retry", json={"status": "succeeded"}, headers=AUTH)
    assert (nothing.get_json()["matched"], nothing.get_json()["touched"]) == (0, 0)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "give ids, or at least one filter field"),
        ({"limit": 5}, "give ids, or at least one filter field"),
        ({"ids": []}, "ids is empty"),
        ({"ids": "abc"}, "ids must be a list"),
        ({"ids": [1, 2]}, "ids must be a list of run id strings"),
        ({"ids": ["not-a-uuid"]}, "is not a run id"),
        ({"ids": [str(uuid.uuid4())], "workflow": "diamond"}, "not both"),
        ({"status": "bogus"}, "status must be one of"),
        ({"workflow": 5}, "workflow must be a string"),
        ({"since": "soon"}, "since must be an ISO 8601 time"),
        ({"workflow": "diamond", "limit": 0}, "limit must be an integer from 1 to 10000"),
        ({"workflow": "diamond", "limit": True}, "limit must be an integer"),
        ({"wokflow": "diamond"}, "unknown field(s) 'wokflow'"),
    ],
)
@pytest.mark.parametrize("action", ["retry", "cancel"])
def test_bulk_with_a_bad_body_is_400(client, action, body, message):
    response = client.post(f"/api/runs/{action}", json=body, headers=AUTH)
    assert_documented(response, f"/api/runs/{action}", "post")
    assert response.status_code == 400
    assert message in response.get_json()["error"]


# -- events, lineage, replay -----------------------------------------------------------------------------


def test_events_list_with_outcome_reason_payload_and_lineage_both_ways(client, runtime):
    rejected = add_event(runtime, {"type": "user.signed_up"}, reason="input fails schema: 'user'")
    matched = add_event(runtime, {"type": "user.signed_up", "user": {"email": "a@b.c"}},
                        outcome="matched", reason=None)
    ignored = add_event(runtime, {"type": "other"}, topic="web-test.other", outcome="ignored")
    run_id = start(client, "signup", {"email": "a@b.c"})["id"]
    with runtime.sessions() as session, session.begin():
        session.execute(update(Run).where(Run.id == uuid.UUID(run_id)).values(event_id=matched))

    response = client.get("/api/events")
    assert_documented(response, "/api/events")
    events = response.get_json()["events"]
    assert [e["id"] for e in events] == [ignored, matched, rejected]
    by_id = {e["id"]: e for e in events}
    assert by_id[rejected]["reason"] == "input fails schema: 'user'"
    assert by_id[rejected]["payload"] == {"type": "user.signed_up"}
    assert by_id[rejected]["raw"] == '{"type": "user.signed_up"}'
    assert [r["id"] for r in by_id[matched]["runs"]] == [run_id]
    assert by_id[rejected]["runs"] == []
    run = client.get(f"/api/runs/{run_id}").get_json()
    assert run["event_id"] == matched
    assert run["event"] == {"id": matched, "topic": "web-test.signups", "partition": 0,
                            "offset": 1, "key": "k"}

    def ids(**query) -> list[int]:
        return [e["id"] for e in client.get("/api/events", query_string=query).get_json()["events"]]

    assert ids(outcome="rejected") == [rejected]
    assert ids(topic="web-test.other") == [ignored]
    assert ids(topic="web-test.signups", outcome="matched") == [matched]
    first = client.get("/api/events", query_string={"limit": 2}).get_json()
    assert [e["id"] for e in first["events"]] == [ignored, matched]
    second = client.get("/api/events", query_string={"limit": 2, "cursor": first["next_cursor"]})
    assert_documented(second, "/api/events")
    assert [e["id"] for e in second.get_json()["events"]] == [rejected]
    assert second.get_json()["next_cursor"] is None


def test_one_event_and_unknown_events(client, runtime):
    event_id = add_event(runtime, {"x": 1}, raw=b"\xff\xfenot utf-8")
    response = client.get(f"/api/events/{event_id}")
    assert_documented(response, "/api/events/{event_id}")
    assert response.get_json()["raw"] == "\ufffd\ufffdnot utf-8"
    for missing in (event_id + 1, 2**63, 10**30):
        response = client.get(f"/api/events/{missing}")
        assert response.status_code == 404
        assert "error" in response.get_json()
    assert client.get("/api/events/-1").status_code == 404
    assert client.get("/api/events/abc").status_code == 404


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"outcome": "exploded"}, "outcome must be one of"),
        ({"topic": "bad topic!"}, "is not a Kafka topic name"),
        ({"cursor": "garbage"}, "cursor is not valid"),
        ({"limit": "-3"}, "limit must be an integer"),
    ],
)
def test_events_list_rejects_bad_parameters_with_400(client, query, message):
    response = client.get("/api/events", query_string=query)
    assert_documented(response, "/api/events")
    assert response.status_code == 400
    assert message in response.get_json()["error"]


def test_replay_starts_the_run_a_fixed_trigger_now_matches_and_only_once(client, runtime):
    event_id = add_event(
        runtime, {"type": "user.signed_up", "user": {"email": "late@example.com"}},
        reason="workflow signup was not deployed yet",
    )
    response = client.post(f"/api/events/{event_id}/replay", headers=AUTH)
    assert_documented(response, "/api/events/{event_id}/replay", "post")
    assert response.status_code == 200
    body = response.get_json()
    assert body["event_id"] == event_id and body["started"] == 1
    run = client.get(f"/api/runs/{body['runs'][0]}").get_json()
    assert run["workflow"] == "signup" and run["input"] == {"email": "late@example.com"}
    assert run["event"]["id"] == event_id
    event = client.get(f"/api/events/{event_id}").get_json()
    assert [r["id"] for r in event["runs"]] == body["runs"]
    again = client.post(f"/api/events/{event_id}/replay", headers=AUTH).get_json()
    assert again["started"] == 0 and again["runs"] == []


def test_replay_of_an_event_without_its_body_is_409(client, runtime):
    event_id = add_event(runtime, None, keep_raw=False)
    response = client.post(f"/api/events/{event_id}/replay", headers=AUTH)
    assert_documented(response, "/api/events/{event_id}/replay", "post")
    assert response.status_code == 409
    assert "neither a payload nor its raw bytes" in response.get_json()["error"]


def test_replay_of_an_unknown_event_is_404(client):
    response = client.post("/api/events/424242/replay", headers=AUTH)
    assert_documented(response, "/api/events/{event_id}/replay", "post")
    assert response.status_code == 404


# -- errors are JSON, never a 500 ---------------------------------------------------------------------


def test_unknown_paths_and_wrong_methods_answer_json(client):
    missing = client.get("/api/nothing-here")
    assert missing.status_code == 404 and missing.is_json and "error" in missing.get_json()
    wrong = client.get("/api/runs/cancel")
    assert wrong.status_code in (404, 405) and wrong.is_json
    wrong = client.delete("/api/runs")
    assert wrong.status_code == 405 and "error" in wrong.get_json()


@pytest.mark.parametrize(
    "path",
    [
        "/api/runs?workflow=%00", "/api/runs?since=%00", "/api/runs?cursor=%00",
        "/api/runs?limit=99999999999999999999999", "/api/runs?status=%F0%9F%92%A5",
        "/api/runs/%00", "/api/runs/" + "9" * 5000, "/api/workflows/%00", "/api/workflows/" + "x" * 5000,
        "/api/events?topic=%00", "/api/events?cursor=WyJlIiwgMWUzMDBd", "/api/events?cursor=WyJlIiwgdHJ1ZV0",
        "/api/events/99999999999999999999999999", "/api/runs?since=0001-01-01",
        "/api/runs?since=9999-12-31T23:59:59%2B14:00", "/api/runs?cursor=WyJyIiwgIngiLCAieSJd",
    ],
)
def test_odd_inputs_never_produce_a_500(client, path):
    response = client.get(path)
    assert response.status_code < 500, response.get_data(as_text=True)
    assert response.is_json


def test_odd_bodies_never_produce_a_500(client):
    for path in ["/api/workflows/diamond/runs", "/api/runs/retry", "/api/runs/cancel"]:
        for body in [b"\x00", b"\xff\xfe", b"null", b"1e999999", b'"\\ud800"', b'{"input": {"\\u0000": 1}}',
                     b'{"ids": ["' + b"0" * 100000 + b'"]}', b'{"since": "9999-99-99"}']:
            response = client.post(path, data=body, headers={**AUTH, "Content-Type": "application/json"})
            assert 400 <= response.status_code < 500, (path, body[:40], response.get_data(as_text=True))
            assert response.is_json


# -- health and metrics ---------------------------------------------------------------------------------


def test_healthz_reports_database_and_broker(client):
    response = client.get("/healthz")
    assert_documented(response, "/healthz")
    body = response.get_json()
    assert response.status_code == 200 and body["status"] == "ok"
    assert body["checks"]["database"]["ok"] and body["checks"]["broker"]["ok"]
    assert body["checks"]["kafka"]["ok"] is None


def test_healthz_is_503_when_a_dependency_is_down(runtime, settings):
    from orchestrator.runtime import Runtime

    broken = Runtime(settings.with_(broker_url="redis://127.0.0.1:1/0",
                                    database_url="postgresql+psycopg://postgres@127.0.0.1:1/none"))
    client = make_app(broken, KAFKA_BOOTSTRAP="127.0.0.1:1").test_client()
    response = client.get("/healthz")
    assert_documented(response, "/healthz")
    assert response.status_code == 503
    checks = response.get_json()["checks"]
    assert checks["database"]["ok"] is False and "connect" in checks["database"]["detail"].lower()
    assert checks["broker"]["ok"] is False
    assert checks["kafka"]["ok"] is False
    # The API says the database is unreachable instead of failing with a 500.
    down = client.get("/api/runs")
    assert down.status_code == 503 and "cannot reach the database" in down.get_json()["error"]
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'orchestrator_metrics_source_up{source="database"} 0.0' in metrics
    broken.close()


def _metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def test_metrics_count_runs_steps_events_and_time_three_ways(runtime, start_worker, wait_for_run):
    client = make_app(runtime, METRICS_SETTLE_SECONDS=0).test_client()
    start_worker(concurrency=2)
    now = datetime.now(UTC)
    event_id = add_event(runtime, {"type": "x"}, outcome="matched", reason=None,
                         kafka_timestamp=now - timedelta(seconds=0.2))
    add_event(runtime, {"type": "y"}, outcome="rejected")
    add_event(runtime, {"type": "z"}, outcome="rejected")
    run_id = start(client, "diamond")["id"]
    with runtime.sessions() as session, session.begin():
        session.execute(update(Run).where(Run.id == uuid.UUID(run_id)).values(event_id=event_id))
    wait_for_run(run_id)
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    text = response.get_data(as_text=True)
    assert _metric(text, 'orchestrator_runs{status="succeeded",workflow="diamond"}') == 1
    assert _metric(text, 'orchestrator_steps{status="succeeded",workflow="diamond"}') == 4
    assert _metric(text, 'orchestrator_events_total{outcome="rejected"}') == 2
    assert _metric(text, 'orchestrator_events_total{outcome="matched"}') == 1
    assert _metric(text, "orchestrator_event_to_run_seconds_count") == 1
    assert _metric(text, 'orchestrator_event_to_run_seconds_bucket{le="0.1"}') == 0
    assert _metric(text, 'orchestrator_event_to_run_seconds_bucket{le="5"}') == 1
    assert _metric(text, "orchestrator_step_queue_wait_seconds_count") == 4
    assert _metric(text, "orchestrator_step_execution_seconds_count") == 4
    assert _metric(text, 'orchestrator_step_execution_seconds_bucket{le="+Inf"}') == 4
    assert "orchestrator_consumer_lag" not in text  # no Kafka configured
    # A later scrape adds only what finished since: nothing is counted twice.
    wait_for_run(start(client, "diamond")["id"])
    text = client.get("/metrics").get_data(as_text=True)
    assert _metric(text, "orchestrator_step_execution_seconds_count") == 8
    assert _metric(text, "orchestrator_step_queue_wait_seconds_count") == 8
    assert _metric(text, "orchestrator_event_to_run_seconds_count") == 1
    assert _metric(text, 'orchestrator_runs{status="succeeded",workflow="diamond"}') == 2


def test_metrics_leave_the_newest_observations_for_a_later_scrape(client, start_worker, wait_for_run):
    start_worker(concurrency=2)
    wait_for_run(start(client, "diamond")["id"])
    text = client.get("/metrics").get_data(as_text=True)  # the default settle time: 30 s
    assert _metric(text, "orchestrator_step_execution_seconds_count") == 0
    assert _metric(text, 'orchestrator_runs{status="succeeded",workflow="diamond"}') == 1


def test_metrics_report_consumer_lag_from_kafka_offsets(runtime, tmp_path):
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    from orchestrator.tansu import TansuBroker
    from tests.web_flows import SIGNUPS

    with TansuBroker(log_path=tmp_path / "tansu.log") as broker:
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
        for i in range(5):
            producer.send(SIGNUPS, f"m{i}".encode(), partition=0).get(timeout=10)
        producer.close()
        consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id="web-test-group",
                                 enable_auto_commit=False)
        partition = TopicPartition(SIGNUPS, 0)
        consumer.assign([partition])
        consumer.seek(partition, 2)
        consumer.commit()
        consumer.close()
        client = make_app(runtime, KAFKA_BOOTSTRAP=broker.bootstrap, KAFKA_GROUP="web-test-group")
        client = client.test_client()
        text = wait_for(
            lambda: (t := client.get("/metrics").get_data(as_text=True))
            and f'orchestrator_consumer_lag{{partition="0",topic="{SIGNUPS}"}} 3.0' in t and t,
            timeout=15, message="lag of 3 on partition 0",
        )
        assert 'orchestrator_metrics_source_up{source="kafka"} 1.0' in text
        health = client.get("/healthz").get_json()
        assert health["checks"]["kafka"]["ok"] is True
