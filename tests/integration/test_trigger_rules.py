"""Trigger rules, the failure handler and `fail_on` on real Celery worker processes and
PostgreSQL (workflows in tests/rule_flows.py)."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text

from tests.webtools import make_app

WORKFLOWS = ("tests.rule_flows",)


@pytest.fixture
def settings(settings):
    """Workers load the rule workflows only."""
    return settings.with_(workflows=WORKFLOWS)


def steps_of(run: dict) -> dict[str, dict]:
    return {s["name"]: s for s in run["steps"]}


def reasons(runtime, run_id: str) -> dict[str, str | None]:
    with runtime.db.connect() as conn:
        return dict(conn.execute(text("SELECT name, reason FROM steps WHERE run_id = :r"), {"r": run_id}).all())


def executions(side_channel, run_id: str, step: str) -> int:
    return int(side_channel.get(f"exec:{run_id}:{step}") or 0)


def test_a_diamond_with_a_failed_branch_runs_each_join_by_its_rule_then_the_failure_handler(
    runtime, start_worker, wait_for_run, side_channel
):
    start_worker(concurrency=2)
    failing = runtime.engine.start_run("rules-diamond", {})
    handled = runtime.engine.start_run("rules-handled", {})

    run = wait_for_run(failing)
    assert run["status"] == "failed", run
    assert run["error"] == "step 'boom' failed"
    steps = steps_of(run)
    status = {name: s["status"] for name, s in steps.items()}
    assert status == {"start": "succeeded", "boom": "failed", "fine": "succeeded", "never": "skipped",
                      "cleanup": "succeeded", "alarm": "succeeded", "tidy": "succeeded",
                      "publish": "cancelled", "alert": "succeeded"}
    assert steps["cleanup"]["result"] == {"seen": ["fine"]}  # all_done: ran with a failed parent
    assert reasons(runtime, failing)["publish"] == "step 'boom' failed"
    assert executions(side_channel, failing, "publish") == 0
    # The handler ran once, on a worker, after every other step, and saw the failure.
    handler = steps["alert"]
    assert handler["result"]["failed"] == {"boom": "RuntimeError: boom branch broke"}
    assert handler["result"]["results"] == ["alarm", "cleanup", "fine", "start", "tidy"]
    assert side_channel.get(f"failed:{failing}") == b"boom"
    assert [a["status"] for a in handler["attempts"]] == ["succeeded"]
    assert handler["attempts"][0]["worker"]
    last_step = max(s["finished_at"] for name, s in steps.items() if name != "alert")
    assert last_step <= handler["attempts"][0]["started_at"] <= run["finished_at"]
    for name in ("start", "boom", "fine", "cleanup", "alarm", "tidy", "alert"):
        assert executions(side_channel, failing, name) == 1, name
    # The dashboard shows the handler like any step, and the rules on the workflow page.
    client = make_app(runtime).test_client()
    page = client.get(f"/runs/{failing}").get_data(as_text=True)
    assert 'data-step="alert" data-status="succeeded"' in page
    page = client.get("/workflows/rules-diamond").get_data(as_text=True)
    assert "(all_done)" in page and "runs when the run fails (on_failure)" in page

    # fail_on="unhandled": cleanup and alarm handled boom's failure, so the run succeeds
    # and its failure handler never runs.
    run = wait_for_run(handled)
    assert run["status"] == "succeeded", run
    assert run["error"] is None
    steps = steps_of(run)
    assert steps["boom"]["status"] == "failed"
    assert steps["never_alerted"]["status"] == "skipped"
    assert reasons(runtime, handled)["never_alerted"] == "the run did not fail"
    assert executions(side_channel, handled, "never_alerted") == 0


def test_a_failing_failure_handler_is_recorded_and_the_run_stays_failed_without_a_loop(
    runtime, start_worker, wait_for_run, side_channel
):
    start_worker(concurrency=1)
    run_id = runtime.engine.start_run("rules-broken-handler", {})
    run = wait_for_run(run_id)
    assert run["status"] == "failed", run
    assert run["error"] == "step 'only' failed"  # the run's error is its own, not the handler's
    handler = steps_of(run)["page_someone"]
    assert handler["status"] == "failed"
    assert [a["status"] for a in handler["attempts"]] == ["failed", "failed"]  # retries=1
    assert "ConnectionError: pager unreachable" in handler["error"]
    time.sleep(1.0)  # long enough for a (wrong) third attempt to start
    assert executions(side_channel, run_id, "page_someone") == 2
    assert wait_for_run(run_id)["status"] == "failed"
