"""Hostile text cannot inject HTML, script, template code or SQL.

Strings such as `<script>`, `'; DROP TABLE runs; --` and `{{7*7}}` travel through every way
text gets in: a run's input (API and the dashboard's start form), a Kafka event's payload,
key and headers, a step's result, log lines and error, URL paths and query parameters. Each
is stored verbatim (the API gives it back unchanged), shown escaped on every page, and the
database keeps all its tables and rows. Real worker and consumer processes, real Tansu broker.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as fuzzing
from hypothesis import strategies as st
from markupsafe import escape
from sqlalchemy import text

from orchestrator import Workflow
from orchestrator.errors import WorkflowDefinitionError
from tests.fixtures.config import KAFKA_TEST_WORKFLOWS
from tests.fixtures.waiting import count, wait_for
from tests.security.conftest import SECURITY_WORKFLOWS
from tests.security.hostile import HOSTILE_STRINGS, RAW_HTML_FRAGMENTS
from tests.webtools import AUTH, TOKEN

TABLES = ("runs", "steps", "attempts", "events", "alembic_version")


@pytest.fixture
def settings(kafka_settings):
    return kafka_settings.with_(workflows=tuple(dict.fromkeys((*KAFKA_TEST_WORKFLOWS, *SECURITY_WORKFLOWS))))


def assert_escaped(html: str, where: str) -> None:
    """No hostile string reached the page as markup."""
    for fragment in RAW_HTML_FRAGMENTS:
        assert fragment not in html, f"{fragment!r} unescaped in {where}"


def assert_database_intact(runtime: Any, runs: int) -> None:
    with runtime.db.connect() as conn:
        for table in TABLES:
            assert conn.execute(text("SELECT to_regclass(:t)"), {"t": table}).scalar() is not None, table
    assert count(runtime, "SELECT count(*) FROM runs") == runs
    assert count(runtime, "SELECT count(*) FROM steps") > 0


def login(client: Any) -> str:
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    assert client.post("/login", data={"token": TOKEN, "csrf_token": token}).status_code == 302
    return re.search(r'name="csrf_token" value="([^"]+)"', client.get("/runs").get_data(as_text=True)).group(1)


def test_workflow_step_and_queue_names_cannot_carry_markup_or_sql():
    for hostile in HOSTILE_STRINGS:
        with pytest.raises(WorkflowDefinitionError, match="is invalid"):
            Workflow(hostile)
        flow = Workflow("fine")
        with pytest.raises(WorkflowDefinitionError, match="is invalid"):
            flow.step(name=hostile)(lambda ctx: None)
        with pytest.raises(WorkflowDefinitionError, match="is invalid"):
            flow.step(name="ok", queue=hostile)(lambda ctx: None)


def test_hostile_text_everywhere_is_stored_verbatim_shown_escaped_and_leaves_the_database_intact(
    runtime, app, client, kafka, topic_prefix, start_worker, start_consumer, wait_for_run
):
    hostile_topic = f"{topic_prefix}hostile"
    kafka.create_topic(hostile_topic, partitions=1)
    start_worker(concurrency=2)
    consumer = start_consumer()

    # 1. A run's input, through the API; hostile keys and values.
    data = {s: s for s in HOSTILE_STRINGS} | {"text": " ".join(HOSTILE_STRINGS)}
    by_api = client.post("/api/workflows/hostile-text/runs", json={"input": data}, headers=AUTH)
    assert by_api.status_code == 201
    api_run = by_api.get_json()["id"]

    # 2. The dashboard's start form: a good input, and a bad one that is shown back.
    csrf = login(client)
    form_input = '{"form": "' + HOSTILE_STRINGS[0].replace('"', '\\"') + '", "sql": "' + HOSTILE_STRINGS[2] + '"}'
    started = client.post("/workflows/hostile-text/start", data={"csrf_token": csrf, "input": form_input})
    assert started.status_code == 302
    form_run = started.headers["Location"].rsplit("/", 1)[-1]
    refused = client.post("/workflows/hostile-text/start",
                          data={"csrf_token": csrf, "input": "</textarea><script>alert(1)</script>"})
    assert refused.status_code == 400
    refused_html = refused.get_data(as_text=True)
    assert_escaped(refused_html, "the start form shown back")
    assert "&lt;/textarea&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in refused_html

    # 3. Kafka events: a matching hostile payload with hostile key and headers, and raw bytes.
    event = {"kind": HOSTILE_STRINGS[0], "id": HOSTILE_STRINGS[2], "all": list(HOSTILE_STRINGS)}
    kafka.publish(hostile_topic, event, key=HOSTILE_STRINGS[1],
                  headers=[(HOSTILE_STRINGS[8], HOSTILE_STRINGS[3].encode())])
    kafka.publish(hostile_topic, HOSTILE_STRINGS[0].encode(), key=HOSTILE_STRINGS[4])
    kafka.flush()
    wait_for(lambda: count(runtime, "SELECT count(*) FROM events") == 2, 60, 0.2, "two events recorded")
    wait_for(lambda: count(runtime, "SELECT count(*) FROM runs") == 3, 30, 0.2, "the event's run")
    with runtime.db.connect() as conn:
        event_run = str(conn.execute(text("SELECT id FROM runs WHERE event_id IS NOT NULL")).scalar_one())
        matched_id, rejected_id = [r for (r,) in conn.execute(text('SELECT id FROM events ORDER BY "offset"'))]

    runs = {api_run: data, form_run: {"form": HOSTILE_STRINGS[0], "sql": HOSTILE_STRINGS[2]}, event_run: event}
    for run_id, sent in runs.items():
        run = wait_for_run(run_id, timeout=60)
        assert run["status"] == "failed", run
        # Stored verbatim: input, result, log lines and error come back unchanged.
        stored = client.get(f"/api/runs/{run_id}").get_json()
        assert stored["input"] == sent
        steps = {s["name"]: s for s in stored["steps"]}
        assert steps["echo"]["result"] == {"echo": sent, "strings": list(HOSTILE_STRINGS)}
        messages = [line["message"] for line in steps["echo"]["attempts"][0]["logs"]]
        assert messages == [f"log line: {s}" for s in HOSTILE_STRINGS]
        assert steps["explode"]["error"] == "ValueError: refused: " + " | ".join(HOSTILE_STRINGS)
        # Shown escaped: the error and the log lines appear as text, never as markup.
        page = client.get(f"/runs/{run_id}").get_data(as_text=True)
        assert_escaped(page, f"/runs/{run_id}")
        for hostile in HOSTILE_STRINGS:
            assert f"log line: {escape(hostile)}" in page
        assert str(escape(steps["explode"]["error"])) in page

    matched = client.get(f"/api/events/{matched_id}").get_json()
    assert matched["payload"] == event and matched["key"] == HOSTILE_STRINGS[1]
    assert matched["headers"] == [{"key": HOSTILE_STRINGS[8], "value": HOSTILE_STRINGS[3]}]
    rejected = client.get(f"/api/events/{rejected_id}").get_json()
    assert rejected["outcome"] == "rejected" and rejected["raw"] == HOSTILE_STRINGS[0]
    assert rejected["key"] == HOSTILE_STRINGS[4]
    event_page = client.get(f"/events/{rejected_id}").get_data(as_text=True)
    assert str(escape(HOSTILE_STRINGS[0])) in event_page and str(escape(HOSTILE_STRINGS[4])) in event_page

    pages = ["/", "/workflows", "/workflows/hostile-text", "/runs", "/runs?workflow=hostile-text",
             "/events", f"/events/{matched_id}", f"/events/{rejected_id}"]
    for path in pages:
        response = client.get(path)
        assert response.status_code == 200, path
        assert_escaped(response.get_data(as_text=True), path)
    workflow_page = client.get("/workflows/hostile-text").get_data(as_text=True)
    for hostile in HOSTILE_STRINGS:  # the description and the trigger's match values
        assert str(escape(hostile)) in workflow_page

    assert_database_intact(runtime, runs=3)
    assert consumer.process.poll() is None


@pytest.mark.parametrize("hostile", HOSTILE_STRINGS)
def test_hostile_paths_and_query_parameters_are_refused_as_text(client, runtime, hostile):
    client.post("/api/workflows/diamond/runs", json={"input": {}}, headers=AUTH)
    for path in (f"/api/runs?workflow={hostile}", f"/api/runs?status={hostile}", f"/api/runs?since={hostile}",
                 f"/api/runs?cursor={hostile}", f"/api/events?topic={hostile}", f"/api/events?outcome={hostile}"):
        response = client.get(path.replace("#", "%23").replace("&", "%26").replace("+", "%2B"))
        assert response.status_code == 400, path
        assert response.get_json()["error"]
    for path in (f"/runs?workflow={hostile}", f"/events?topic={hostile}", f"/workflows/{hostile}",
                 f"/runs/{hostile}", f"/api/workflows/{hostile}"):
        response = client.get(path.replace("#", "%23").replace("&", "%26").replace("?", "%3F").replace("+", "%2B"))
        assert response.status_code in (400, 404), path
        if path.startswith("/api/"):  # JSON, never sniffed as HTML: the text may stay as it is
            assert response.content_type == "application/json"
            assert response.headers["X-Content-Type-Options"] == "nosniff"
        else:
            assert response.content_type.startswith("text/html")
            assert_escaped(response.get_data(as_text=True), path)
    bulk = client.post("/api/runs/cancel", json={"workflow": hostile}, headers=AUTH)
    assert bulk.status_code == 400
    assert_database_intact(runtime, runs=1)
    assert client.get("/api/runs").get_json()["runs"][0]["status"] == "pending"



# -- the dashboard under fuzzed requests ---------------------------------------------------------

_text = st.text(max_size=40) | st.sampled_from(HOSTILE_STRINGS)
_PAGES = ["/", "/runs", "/events", "/workflows", "/workflows/{text}", "/runs/{text}", "/events/{number}",
          "/login"]
_QUERY = ["workflow", "status", "since", "limit", "cursor", "topic", "outcome", "next"]
_ACTIONS = ["/workflows/{text}/start", "/runs/bulk", "/runs/{text}/retry", "/runs/{text}/cancel",
            "/events/{number}/replay", "/login"]  # not /logout: the session must last
_FIELDS = ["input", "action", "scope", "ids", "workflow", "status", "since", "token", "next"]


def _url(template: str, text_value: str, number: int) -> str:
    return template.format(text=quote(text_value, safe=""), number=number)


def test_fuzzed_pages_and_forms_never_fail_and_show_text_escaped(client, runtime):
    csrf = login(client)
    run_id = client.post("/api/workflows/diamond/runs", json={"input": {}}, headers=AUTH).get_json()["id"]
    names = st.sampled_from([run_id, "diamond", "signup", "hostile-text"]) | _text

    @fuzzing(max_examples=150, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(page=st.sampled_from(_PAGES), text_value=names, number=st.integers(-5, 2**64),
           query=st.dictionaries(st.sampled_from(_QUERY), _text, max_size=4))
    def read(page: str, text_value: str, number: int, query: dict[str, str]) -> None:
        response = client.get(_url(page, text_value, number), query_string=query)
        assert response.status_code < 500, (page, text_value, query)
        assert_escaped(response.get_data(as_text=True), page)

    @fuzzing(max_examples=150, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(action=st.sampled_from(_ACTIONS), text_value=names, number=st.integers(-5, 2**64),
           fields=st.dictionaries(st.sampled_from(_FIELDS), names | st.lists(names, max_size=3), max_size=4))
    def act(action: str, text_value: str, number: int, fields: dict[str, Any]) -> None:
        if action == "/login":
            fields.pop("token", None)  # stay logged in as is
        response = client.post(_url(action, text_value, number), data={**fields, "csrf_token": csrf})
        assert response.status_code < 500, (action, text_value, fields)
        assert_escaped(response.get_data(as_text=True), action)

    read()
    act()
    assert_database_intact(runtime, runs=count(runtime, "SELECT count(*) FROM runs"))


def test_text_postgresql_cannot_store_is_stored_escaped_and_the_run_still_finishes(
    client, start_worker, wait_for_run
):
    start_worker(concurrency=1)
    logged = client.post("/api/workflows/unstorable-text/runs", json={"input": {}}, headers=AUTH)
    returned = client.post("/api/workflows/unstorable-result/runs", json={"input": {}}, headers=AUTH)
    run = wait_for_run(logged.get_json()["id"], timeout=30)
    assert run["status"] == "failed"
    [attempt] = run["steps"][0]["attempts"]
    assert attempt["error"] == "ValueError: a lone surrogate \\udcff and a NUL \\x00 in an error"
    assert [line["message"] for line in attempt["logs"]] == [
        "a lone surrogate \\ud800 and a NUL \\x00 in a log line"
    ]
    result = wait_for_run(returned.get_json()["id"], timeout=30)
    assert result["status"] == "failed"
    assert "surrogate" in result["steps"][0]["error"]
    page = client.get(f"/runs/{run['id']}").get_data(as_text=True)
    assert "a lone surrogate \\udcff and a NUL \\x00 in an error" in page
