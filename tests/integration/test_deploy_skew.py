"""Deploy skew: runs whose workflow, or some of whose steps, the running code does not define.

A deploy removes a workflow, renames a step or inserts one mid-DAG while runs made by the
old code are still live; during a rolling deploy, workers with different code share a
queue. Nothing may then be stuck, crash the recovery loop or answer with a traceback: a
worker never claims a step it has no code for, and a mismatch is a recorded run failure.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from orchestrator import recovery
from orchestrator.celery_app import CeleryDispatcher
from orchestrator.dispatch import RecordingDispatcher
from orchestrator.engine import Outcome, WorkflowEngine
from orchestrator.errors import DeploySkew, StepNotLoaded
from orchestrator.registry import load_workflows
from orchestrator.retention import prune
from orchestrator.runtime import Runtime
from tests.conftest import ROOT, settings_env, wait_for
from tests.webtools import AUTH, make_app
from web.errors import status_of

#: The test workflows plus one that only some workers load.
WITH_EXTRA = ("tests.flows", "tests.skew_flows")


def engine_of(runtime, settings, *modules: str, send: bool = True) -> WorkflowEngine:
    """An engine on the test database whose code is `modules` (another deploy's view)."""
    dispatcher = CeleryDispatcher(runtime.celery) if send else RecordingDispatcher()
    return WorkflowEngine(runtime.sessions, load_workflows(modules), dispatcher, settings)


def steps_of(run: dict) -> dict[str, dict]:
    return {s["name"]: s for s in run["steps"]}


def sql(runtime, statement: str, **params) -> list:
    with runtime.sessions() as session, session.begin():
        result = session.execute(text(statement), params)
        return result.all() if result.returns_rows else []


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


# -- 1. a workflow that this process does not load -----------------------------------------------


@pytest.mark.timeout(90)
def test_worker_without_the_workflow_never_claims_its_step_and_fails_it_naming_both(
    runtime, settings, start_worker, wait_for_run
):
    worker = start_worker(concurrency=1)  # loads tests.flows only
    run_id = engine_of(runtime, settings, *WITH_EXTRA).start_run("only-here", {})
    run = wait_for_run(run_id, timeout=45)
    assert run["status"] == "failed", run
    begin = steps_of(run)["begin"]
    assert begin["attempts"] == [], "a worker without the code claimed the step"
    assert begin["status"] == "failed"
    assert begin["error"] == (
        f"workflow 'only-here' is not loaded on worker '{worker.name}' (deploy skew?)"
    )
    assert steps_of(run)["middle"]["status"] == "cancelled"
    assert "only-here" in run["error"]
    assert "Traceback" not in worker.output()


def test_run_of_an_unloaded_workflow_can_be_shown_cancelled_refused_a_retry_and_pruned(
    runtime, settings, redis_url
):
    other = engine_of(runtime, settings, *WITH_EXTRA, send=False)
    client = make_app(runtime).test_client()  # loads tests.flows only
    run_id = other.start_run("only-here", {})
    assert client.get(f"/api/runs/{run_id}", headers=AUTH).status_code == 200
    page = client.get(f"/runs/{run_id}")
    assert page.status_code == 200 and "only-here" in page.get_data(as_text=True)
    cancelled = client.post(f"/api/runs/{run_id}/cancel", headers=AUTH)
    assert cancelled.status_code == 200, cancelled.get_json()
    assert cancelled.get_json()["status"] == "cancelled"
    refused = client.post(f"/api/runs/{run_id}/retry", headers=AUTH)
    assert refused.status_code == 409, refused.get_json()
    assert "'only-here' is not loaded" in refused.get_json()["error"]
    bulk = client.post("/api/runs/retry", json={"ids": [run_id]}, headers=AUTH)
    assert bulk.status_code == 200 and run_id in bulk.get_json()["errors"]

    env = settings_env(settings, redis_url)
    second = other.start_run("only-here", {})
    out = cli(env, "cancel", second)
    assert out.returncode == 0, out.stderr
    assert "cancelled run" in out.stdout
    out = cli(env, "retry", second)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        f"Error: run {second} cannot be retried here: its workflow 'only-here' is not loaded "
        "(deploy skew?)"
    ]
    report = prune(runtime.db, datetime.now(UTC) + timedelta(hours=1))
    assert report.runs == 2
    assert sql(runtime, "SELECT count(*) FROM runs")[0][0] == 0


# -- 2. recovery: one poisoned item never stops the sweep ----------------------------------------


def poison(runtime, settings, workflow: str = "only-here", step: str = "begin") -> tuple[str, int]:
    """A running step of `workflow` whose lease lapsed long ago; returns (run id, step id)."""
    run_id = engine_of(runtime, settings, *WITH_EXTRA, send=False).start_run(workflow, {})
    sql(runtime, "UPDATE runs SET status = 'running' WHERE id = :r", r=run_id)
    [(step_id,)] = sql(
        runtime,
        "UPDATE steps SET status = 'running', attempts = 1, lease_expires_at = now() - interval '1 hour' "
        "WHERE run_id = :r AND name = :s RETURNING id", r=run_id, s=step,
    )
    sql(runtime, "INSERT INTO attempts (step_id, number, status, worker, started_at, logs) "
        "VALUES (:s, 1, 'running', 'gone@old', now(), '[]')", s=step_id)
    return run_id, step_id


@pytest.mark.timeout(90)
def test_a_poisoned_step_beside_a_killed_workers_step_does_not_stop_its_recovery(
    runtime, settings, start_worker, wait_for_run, side_channel
):
    # Older rows first: a sweep that gives up at the first bad row never reaches the good one.
    gone_run, _ = poison(runtime, settings, "only-here")
    skewed_run, _ = poison(runtime, settings, "shrinking", "last")
    sql(runtime, "UPDATE steps SET status = 'succeeded' WHERE run_id = :r AND name = 'first'", r=skewed_run)
    new_code = ("tests.flows", "tests.skew_flows_v2")  # `shrinking` without `last`
    first = start_worker(concurrency=1, workflows=new_code)
    run_id = runtime.engine.start_run("long", {"sleep": 15})
    wait_for(lambda: side_channel.get(f"exec:{run_id}:linger"), 20, message="linger to start")
    second = start_worker(concurrency=1, workflows=new_code)
    first.kill(signal.SIGKILL)
    first.process.wait()
    killed = time.monotonic()

    def lost() -> bool:
        return bool(sql(runtime, "SELECT 1 FROM attempts a JOIN steps s ON s.id = a.step_id "
                        "WHERE s.run_id = :r AND a.error LIKE 'worker lost%'", r=run_id))

    wait_for(lost, 60, 0.1, "the killed worker's attempt to be given up")
    took = time.monotonic() - killed
    assert took < settings.step_lease + settings.recovery_interval + 3, f"recovered after {took:.1f}s"
    gone = wait_for_run(gone_run, timeout=10)
    assert gone["status"] == "failed"
    assert steps_of(gone)["begin"]["error"].startswith("worker lost")
    assert "'only-here' is not loaded" in gone["error"]
    skewed = wait_for_run(skewed_run, timeout=10)
    assert skewed["status"] == "failed"
    assert skewed["error"] == "deploy skew: run has step 'last' that workflow 'shrinking' no longer defines"
    assert "sweep failed" not in second.output()
    assert "unreachable" not in second.output()


def test_sweep_isolates_an_item_that_raises_and_ends_it_with_a_recorded_error(
    runtime, settings, monkeypatch, caplog
):
    bad_run, bad_step = poison(runtime, settings, "diamond", "a")
    good_run, good_step = poison(runtime, settings, "diamond", "a")
    engine = runtime.engine
    real = engine.expire_lease

    def expire(step_id: int) -> bool:
        if step_id == bad_step:
            raise ValueError("cannot settle this one")
        return real(step_id)

    monkeypatch.setattr(engine, "expire_lease", expire)
    counts = recovery.sweep(engine)
    assert counts["expired"] == 1
    errors = dict(sql(runtime, "SELECT step_id, error FROM attempts WHERE step_id IN (:a, :b)",
                      a=bad_step, b=good_step))
    assert errors[good_step].startswith("worker lost")
    assert errors[bad_step].startswith("recovery could not settle the lapsed lease of step 'a'")
    [(status, error)] = sql(runtime, "SELECT status, error FROM runs WHERE id = :r", r=bad_run)
    assert status == "failed"
    assert "recovery could not settle the lapsed lease of step 'a'" in error and "cannot settle this one" in error
    assert bad_run in caplog.text
    assert recovery.sweep(engine)["expired"] == 0  # settled: not picked up again


# -- 3. steps removed, renamed or inserted by a deploy ------------------------------------------


def run_first_step_with(runtime, settings, run_id: str, *modules: str) -> dict:
    """Claim and succeed the run's `first` step with the code in `modules`."""
    engine = engine_of(runtime, settings, *modules, send=False)
    claim = engine.claim(run_id, "first", "new@test")
    assert claim is not None
    engine.finish(claim, Outcome(ok=True, result="first"))
    with runtime.sessions() as session:
        from orchestrator.db.queries import get_run, run_dict

        return run_dict(get_run(session, run_id))


def test_step_inserted_mid_dag_fails_an_old_run_cleanly_and_keeps_its_succeeded_step(runtime, settings):
    run_id = engine_of(runtime, settings, "tests.skew_flows", send=False).start_run("evolving", {})
    run = run_first_step_with(runtime, settings, run_id, "tests.skew_flows_v2")
    assert run["status"] == "failed"
    assert run["error"] == "deploy skew: workflow 'evolving' now defines step 'mid' that this run does not have"
    steps = steps_of(run)
    assert steps["first"]["status"] == "succeeded" and steps["first"]["result"] == "first"
    assert steps["last"]["status"] == "cancelled"


def test_step_renamed_fails_an_old_run_naming_the_step(runtime, settings):
    run_id = engine_of(runtime, settings, "tests.skew_flows", send=False).start_run("shrinking", {})
    run = run_first_step_with(runtime, settings, run_id, "tests.skew_flows_v2")
    assert run["status"] == "failed"
    assert run["error"] == "deploy skew: run has step 'last' that workflow 'shrinking' no longer defines"
    assert steps_of(run)["last"]["status"] == "cancelled"


def test_retry_of_a_skewed_run_is_refused_with_a_clear_conflict(runtime, settings, redis_url):
    run_id = engine_of(runtime, settings, "tests.skew_flows", send=False).start_run("evolving", {})
    run_first_step_with(runtime, settings, run_id, "tests.skew_flows_v2")
    v2 = engine_of(runtime, settings, "tests.skew_flows_v2", send=False)
    with pytest.raises(DeploySkew) as refused:
        v2.retry_run(run_id)
    assert status_of(refused.value) == 409
    assert str(refused.value) == (
        f"run {run_id} cannot be retried: deploy skew: workflow 'evolving' now defines step 'mid' "
        "that this run does not have"
    )
    web_runtime = Runtime(settings.with_(workflows=("tests.skew_flows_v2",)))
    try:
        client = make_app(web_runtime).test_client()
        assert client.get(f"/runs/{run_id}").status_code == 200
        answer = client.post(f"/api/runs/{run_id}/retry", headers=AUTH)
        assert answer.status_code == 409 and answer.get_json()["error"] == str(refused.value)
        bulk = client.post("/api/runs/retry", json={"workflow": "evolving"}, headers=AUTH)
        assert bulk.status_code == 200 and bulk.get_json()["errors"] == {run_id: str(refused.value)}
    finally:
        web_runtime.close()
    env = settings_env(settings.with_(workflows=("tests.skew_flows_v2",)), redis_url)
    out = cli(env, "retry", run_id)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [f"Error: {refused.value}"]


def test_a_step_the_workflow_no_longer_defines_is_never_claimed_and_fails_its_run(runtime, settings):
    v1 = engine_of(runtime, settings, "tests.skew_flows", send=False)
    run_id = v1.start_run("shrinking", {})
    v1.finish(v1.claim(run_id, "first", "old@test"), Outcome(ok=True, result="first"))  # queues `last`
    v2 = engine_of(runtime, settings, "tests.skew_flows_v2", send=False)
    with pytest.raises(StepNotLoaded) as missing:
        v2.claim(run_id, "last", "new@test")
    assert str(missing.value) == (
        "deploy skew: run has step 'last' that workflow 'shrinking' no longer defines (worker 'new@test')"
    )
    assert sql(runtime, "SELECT count(*) FROM attempts a JOIN steps s ON s.id = a.step_id "
               "WHERE s.run_id = :r AND s.name = 'last'", r=run_id)[0][0] == 0
    assert v2.fail_not_loaded(run_id, "last", str(missing.value)) is True
    [(status, error)] = sql(runtime, "SELECT status, error FROM runs WHERE id = :r", r=run_id)
    assert status == "failed" and error == f"step 'last' failed: {missing.value}"


# -- 7. workers with different code on one queue --------------------------------------------------


@pytest.mark.timeout(120)
def test_workers_with_different_code_on_one_queue_run_every_run_on_the_one_with_the_code(
    runtime, settings, start_worker, wait_for_run, side_channel
):
    having = start_worker(concurrency=2, workflows=WITH_EXTRA)
    lacking = start_worker(concurrency=2)
    engine = engine_of(runtime, settings, *WITH_EXTRA)
    run_ids = [engine.start_run("only-here", {"n": n, "sleep": 0.2}) for n in range(8)]
    for n, run_id in enumerate(run_ids):
        run = wait_for_run(run_id, timeout=60)
        assert run["status"] == "succeeded", run
        steps = steps_of(run)
        assert steps["end"]["result"] == {"n": n + 2}
        for name in ("begin", "middle", "end"):
            assert [a["worker"] for a in steps[name]["attempts"]] == [having.name], steps[name]
            assert int(side_channel.get(f"exec:{run_id}:{name}")) == 1
    assert "Traceback" not in lacking.output()
