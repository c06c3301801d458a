"""What an operator sees and does with waiting nodes: the JSON API (decisions, wait info,
`status=waiting`, event -> wait links), the `orchestrator approve` command, the dashboard's
forms and pages, and the /metrics gauges of open waits and due timers.

Runs are started with `engine.start_run` on workflows that open with their waiting node
(tests/wait_flows.py), so they are `waiting` without a worker; a real worker process runs
what comes after a decision where a test needs the run to go on.
"""

from __future__ import annotations

import json
import re

import pytest
from sqlalchemy import text

from orchestrator.events import record_batch
from orchestrator.intake import Message, TriggerIndex, assess
from tests.fixtures.config import settings_env
from tests.integration.test_cli import cli
from tests.wait_flows import PAYMENTS
from tests.webtools import AUTH, TOKEN, WORKFLOWS, assert_documented, make_app

APPROVE = "/api/runs/{run_id}/steps/{step}/approve"


@pytest.fixture
def settings(settings):
    return settings.with_(workflows=(*WORKFLOWS, "tests.wait_flows"))


@pytest.fixture
def client(runtime):
    return make_app(runtime).test_client()


def waiting_run(runtime, workflow: str = "sign-off", data: dict | None = None) -> str:
    return runtime.engine.start_run(workflow, data or {})


def decide(client, run_id: str, body: object, step: str = "manager", headers: dict | None = None):
    url = APPROVE.format(run_id=run_id, step=step)
    kwargs = {"data": body} if isinstance(body, bytes) else {"json": body}
    return client.post(url, headers=AUTH if headers is None else headers, **kwargs)


def step_of(client, run_id: str, name: str) -> dict:
    run = client.get(f"/api/runs/{run_id}")
    assert_documented(run, "/api/runs/{run_id}")
    return {s["name"]: s for s in run.get_json()["steps"]}[name]


def record(runtime, offset: int, payload: dict) -> int:
    """Record one event on the wait-only topic as the consumer's intake does; its id."""
    message = Message(PAYMENTS, 0, offset, json.dumps(payload).encode())
    result = record_batch(runtime.engine, [assess(message, TriggerIndex(runtime.registry), 1 << 20)])
    assert result.recorded == 1
    with runtime.db.connect() as conn:
        return conn.execute(text('SELECT id FROM events WHERE "offset" = :o'), {"o": offset}).scalar_one()


# -- the API --------------------------------------------------------------------------------


def test_a_waiting_approval_shows_what_it_waits_for_until_when(client, runtime):
    run_id = waiting_run(runtime)
    manager = step_of(client, run_id, "manager")
    assert manager["status"] == "waiting"
    wait = manager["wait"]
    assert (wait["kind"], wait["status"], wait["decision"], wait["event_id"]) == ("approval", "open", None, None)
    assert wait["timeout"] == 3 * 86400 and wait["on_timeout"] == "fail"
    assert wait["due_at"] > wait["opened_at"]
    assert step_of(client, run_id, "publish")["wait"] is None  # a task has no wait


def test_approve_through_the_api_stores_the_decision_and_the_run_goes_on(client, runtime, start_worker, wait_for_run):
    run_id = waiting_run(runtime)
    response = decide(client, run_id, {"decision": "approve", "comment": "looks right"})
    assert_documented(response, APPROVE.format(run_id="{run_id}", step="{step}"), "post")
    assert response.status_code == 200
    stored = response.get_json()
    assert (stored["run_id"], stored["step"], stored["decision"], stored["comment"], stored["by"]) == (
        run_id, "manager", "approve", "looks right", "api"
    )
    wait = step_of(client, run_id, "manager")["wait"]
    assert (wait["status"], wait["decision"], wait["comment"], wait["decided_by"]) == (
        "approved", "approve", "looks right", "api"
    )
    assert wait["closed_at"] is not None
    start_worker(concurrency=1)
    run = wait_for_run(run_id)
    assert run["status"] == "succeeded"
    assert {s["name"]: s["result"] for s in run["steps"]}["publish"] == {"published_after": "approve"}


def test_reject_fails_the_node_with_the_comment_and_a_second_decision_is_409(client, runtime):
    run_id = waiting_run(runtime)
    response = decide(client, run_id, {"decision": "reject", "comment": "wrong amount"})
    assert response.status_code == 200 and response.get_json()["decision"] == "reject"
    manager = step_of(client, run_id, "manager")
    assert manager["status"] == "failed" and "wrong amount" in manager["error"]
    assert manager["wait"]["status"] == "rejected" and manager["wait"]["comment"] == "wrong amount"
    assert client.get(f"/api/runs/{run_id}").get_json()["status"] == "failed"
    again = decide(client, run_id, {"decision": "approve"})
    assert_documented(again, APPROVE.format(run_id="{run_id}", step="{step}"), "post")
    assert again.status_code == 409
    assert again.get_json()["error"] == (
        f"approval 'manager' of run {run_id} was already decided: reject (step is failed)"
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "decision must be one of approve, reject; got None"),
        ({"decision": "maybe"}, "decision must be one of approve, reject; got 'maybe'"),
        ({"decision": "approve", "comment": 5}, "comment must be a string, got int"),
        ({"decision": "reject", "comment": "x" * 2001}, "comment is 2001 characters long; at most 2000"),
        ({"decision": "approve", "by": "me"}, "by"),
        (b"[1]", "must be a JSON object, got list"),
        (b"", "the request body must be a JSON object"),
    ],
    ids=["missing", "other-value", "comment-not-string", "comment-too-long", "unknown-field", "list", "empty"],
)
def test_a_bad_decision_body_is_400_and_changes_nothing(client, runtime, body, message):
    run_id = waiting_run(runtime)
    response = decide(client, run_id, body)
    assert_documented(response, APPROVE.format(run_id="{run_id}", step="{step}"), "post")
    assert response.status_code == 400
    assert message in response.get_json()["error"]
    assert step_of(client, run_id, "manager")["wait"]["status"] == "open"


def test_decisions_on_unknown_runs_or_steps_are_404_and_on_other_nodes_409(client, runtime):
    run_id = waiting_run(runtime)
    for target, step in [("00000000-0000-0000-0000-000000000000", "manager"), ("not-a-uuid", "manager"),
                         (run_id, "nope")]:
        response = decide(client, target, {"decision": "approve"}, step=step)
        assert_documented(response, APPROVE.format(run_id="{run_id}", step="{step}"), "post")
        assert response.status_code == 404, (target, step)
    task = decide(client, run_id, {"decision": "approve"}, step="publish")
    assert task.status_code == 409
    assert task.get_json()["error"] == f"step 'publish' of run {run_id} is not an approval"
    reviewing = waiting_run(runtime, "review")  # its approval opens after a task
    early = decide(client, reviewing, {"decision": "approve"}, step="review")
    assert early.status_code == 409
    assert early.get_json()["error"] == f"approval 'review' of run {reviewing} is not waiting (step is pending)"
    paying = waiting_run(runtime, "payment", {"order_id": 1})
    event_wait = decide(client, paying, {"decision": "approve"}, step="paid")
    assert event_wait.status_code == 409
    assert event_wait.get_json()["error"] == f"step 'paid' of run {paying} is not an approval"


def test_a_decision_without_the_token_is_401_and_changes_nothing(client, runtime):
    run_id = waiting_run(runtime)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        response = decide(client, run_id, {"decision": "approve"}, headers=headers)
        assert_documented(response, APPROVE.format(run_id="{run_id}", step="{step}"), "post")
        assert response.status_code == 401
    assert step_of(client, run_id, "manager")["wait"]["status"] == "open"


def test_runs_with_a_waiting_node_are_listed_by_status_waiting(client, runtime):
    waiting = waiting_run(runtime)
    busy = client.post("/api/workflows/diamond/runs", json={"input": {}}, headers=AUTH).get_json()["id"]
    decided = waiting_run(runtime)
    assert decide(client, decided, {"decision": "reject"}).status_code == 200
    listed = client.get("/api/runs?status=waiting")
    assert_documented(listed, "/api/runs")
    assert [r["id"] for r in listed.get_json()["runs"]] == [waiting]
    every = {r["id"] for r in client.get("/api/runs").get_json()["runs"]}
    assert every == {waiting, busy, decided}
    assert client.get("/api/runs?status=asleep").status_code == 400


def test_an_event_that_completes_a_wait_links_to_its_run_both_ways(client, runtime):
    run_id = waiting_run(runtime, "payment", {"order_id": 42})
    other = waiting_run(runtime, "payment", {"order_id": 43})
    wait = step_of(client, run_id, "paid")["wait"]
    assert (wait["kind"], wait["topic"], wait["match"], wait["correlate"]) == (
        "event", PAYMENTS, {"type": "payment.confirmed"}, {"order.id": 42}
    )
    ignored = record(runtime, 0, {"type": "payment.failed", "order": {"id": 42}})
    event_id = record(runtime, 1, {"type": "payment.confirmed", "order": {"id": 42}})

    shown = client.get(f"/api/events/{event_id}")
    assert_documented(shown, "/api/events/{event_id}")
    assert shown.get_json()["outcome"] == "matched"
    status = client.get(f"/api/runs/{run_id}").get_json()["status"]
    assert shown.get_json()["waits"] == [
        {"run_id": run_id, "step": "paid", "workflow": "payment", "status": status}
    ]
    assert shown.get_json()["runs"] == []
    listed = client.get("/api/events")
    assert_documented(listed, "/api/events")
    links = {e["id"]: e["waits"] for e in listed.get_json()["events"]}
    assert links[ignored] == [] and [w["run_id"] for w in links[event_id]] == [run_id]

    paid = step_of(client, run_id, "paid")
    assert paid["status"] == "succeeded" and paid["wait"]["event_id"] == event_id
    assert paid["wait"]["status"] == "matched"
    assert step_of(client, other, "paid")["status"] == "waiting"

    # The dashboard says so too: the run page links the event, the event page the run.
    run_page = client.get(f"/runs/{run_id}").get_data(as_text=True)
    assert f'href="/events/{event_id}">event {event_id}</a>' in run_page
    event_page = client.get(f"/events/{event_id}").get_data(as_text=True)
    assert re.search(rf'<a class="event-wait" data-run="{run_id}" data-step="paid" href="/runs/{run_id}">', event_page)
    events_page = client.get("/events").get_data(as_text=True)
    assert f'data-run="{run_id}" href="/runs/{run_id}"' in events_page


# -- the dashboard --------------------------------------------------------------------------


def csrf(client, path: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).get_data(as_text=True))
    assert found, f"no CSRF token in {path}"
    return found.group(1)


def login(client) -> None:
    response = client.post("/login", data={"token": TOKEN, "csrf_token": csrf(client, "/login")})
    assert response.status_code == 302


def test_the_run_page_says_what_each_waiting_node_waits_for(client, runtime):
    paying = waiting_run(runtime, "payment", {"order_id": "A-7"})
    html = client.get(f"/runs/{paying}").get_data(as_text=True)
    assert 'data-node="paid" data-status="waiting"' in html
    assert f"an event on topic <code>{PAYMENTS}</code>" in html
    assert '<code class="wait-match">{&#34;type&#34;: &#34;payment.confirmed&#34;}</code>' in html
    assert "<code>order.id</code> = <code>&#34;A-7&#34;</code>" in html
    assert re.search(r'<dd class="wait-due">\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC', html)
    signing = waiting_run(runtime)
    page = client.get(f"/runs/{signing}").get_data(as_text=True)
    assert 'id="run-approvals" data-live data-steps="manager">' in page
    assert "to approve or reject" in page  # not logged in: no buttons
    assert 'name="decision"' not in page
    assert '<option value="waiting" >waiting</option>' in client.get("/runs").get_data(as_text=True)
    filtered = client.get("/runs?status=waiting").get_data(as_text=True)
    assert f'data-run="{signing}"' in filtered and f'data-run="{paying}"' in filtered


def test_approve_and_reject_on_the_run_page_need_a_login_and_the_csrf_token(client, runtime):
    run_id = waiting_run(runtime)
    url = f"/runs/{run_id}/steps/manager/approve"
    refused = client.post(url, data={"decision": "approve", "csrf_token": csrf(client, "/login")})
    assert refused.status_code == 302 and refused.headers["Location"].startswith("/login")
    login(client)
    token = csrf(client, f"/runs/{run_id}")
    assert client.post(url, data={"decision": "approve"}).status_code == 400  # no CSRF token
    assert step_of(client, run_id, "manager")["wait"]["status"] == "open"
    page = client.get(f"/runs/{run_id}").get_data(as_text=True)
    assert 'value="approve"' in page and 'value="reject"' in page

    done = client.post(url, data={"decision": "reject", "comment": "not <yet>", "csrf_token": token})
    assert done.status_code == 302 and done.headers["Location"] == f"/runs/{run_id}"
    page = client.get(f"/runs/{run_id}").get_data(as_text=True)
    assert "Rejected manager." in page
    assert re.search(r'<dd class="wait-decision" data-decision="reject">rejected by dashboard at '
                     r'[\d :-]+: <q class="wait-comment">not &lt;yet&gt;</q>', page)
    assert 'id="run-approvals" data-live data-steps="" hidden>' in page
    again = client.post(url, data={"decision": "approve", "csrf_token": token})
    assert again.status_code == 302
    assert "was already decided: reject" in client.get(f"/runs/{run_id}").get_data(as_text=True)
    bad = waiting_run(runtime)
    client.post(f"/runs/{bad}/steps/manager/approve", data={"decision": "later", "csrf_token": token})
    assert "decision must be one of approve, reject" in client.get(f"/runs/{bad}").get_data(as_text=True)
    assert step_of(client, bad, "manager")["wait"]["status"] == "open"


# -- metrics --------------------------------------------------------------------------------


def _metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def test_metrics_count_open_waits_by_kind_and_the_timers_due(client, runtime):
    text = client.get("/metrics").get_data(as_text=True)
    assert _metric(text, 'orchestrator_waits_open{kind="approval"}') == 0
    assert _metric(text, "orchestrator_timers_due") == 0
    for _ in range(2):
        waiting_run(runtime)
    waiting_run(runtime, "payment", {"order_id": 1})
    napping = waiting_run(runtime, "nap")  # its timer is due at once; no recovery runs here
    text = client.get("/metrics").get_data(as_text=True)
    assert _metric(text, 'orchestrator_waits_open{kind="approval"}') == 2
    assert _metric(text, 'orchestrator_waits_open{kind="event"}') == 1
    assert _metric(text, 'orchestrator_waits_open{kind="sleep"}') == 1
    assert _metric(text, "orchestrator_timers_due") == 1  # the others are due in days
    assert runtime.engine.fire_due() == 1
    assert step_of(client, napping, "doze")["status"] == "succeeded"
    text = client.get("/metrics").get_data(as_text=True)
    assert _metric(text, 'orchestrator_waits_open{kind="sleep"}') == 0
    assert _metric(text, "orchestrator_timers_due") == 0


# -- the command line -----------------------------------------------------------------------


@pytest.fixture
def env(runtime, settings, redis_url):
    return settings_env(settings, redis_url)


def test_approve_and_reject_from_the_command_line(env, runtime, client):
    approved, rejected = waiting_run(runtime), waiting_run(runtime)
    listed = cli(env, "runs", "--status", "waiting")
    assert listed.returncode == 0, listed.stderr
    assert approved in listed.stdout and rejected in listed.stdout
    as_json = json.loads(cli(env, "runs", "--status", "waiting", "--json").stdout)
    assert {r["id"]: r["steps"][0]["wait"]["status"] for r in as_json} == {approved: "open", rejected: "open"}
    shown = cli(env, "run", approved)
    assert "step manager: waiting" in shown.stdout and "open: waits for a decision until" in shown.stdout

    out = cli(env, "approve", approved, "manager", "--comment", "fine by me")
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"approved manager of run {approved}: fine by me\n"
    out = cli(env, "approve", rejected, "manager", "--reject")
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"rejected manager of run {rejected}\n"
    assert step_of(client, approved, "manager")["wait"]["decided_by"] == "cli"
    assert step_of(client, rejected, "manager")["status"] == "failed"
    assert re.search(r"    approved: waits for a decision until \S+; decided by cli at \S+: fine by me\n",
                     cli(env, "run", approved).stdout)
    assert cli(env, "runs", "--status", "waiting").stdout == "no runs\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("00000000-0000-0000-0000-000000000000", "manager"), "no run 00000000-0000-0000-0000-000000000000"),
        (("not-a-uuid", "manager"), "no run 'not-a-uuid': run ids are UUIDs"),
        (("{run}", "publish"), "step 'publish' of run {run} is not an approval"),
        (("{run}", "nope"), "run {run} has no step 'nope'"),
        (("{review}", "review"), "approval 'review' of run {review} is not waiting (step is pending)"),
    ],
    ids=["unknown-run", "bad-id", "a-task", "unknown-step", "not-waiting-yet"],
)
def test_approve_errors_are_one_line_and_exit_non_zero(env, runtime, args, message):
    ids = {"run": waiting_run(runtime), "review": waiting_run(runtime, "review")}
    out = cli(env, "approve", *(a.format(**ids) for a in args))
    assert out.returncode == 1
    assert out.stderr == f"Error: {message.format(**ids)}\n"
    assert "Traceback" not in out.stderr and out.stdout == ""
