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
from tests.fixtures.config import ROOT, settings_env
from tests.fixtures.waiting import wait_for
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
def test_worker_without_the_workflow_hands_its_step_back_for_the_grace_then_fails_it_naming_it(
    runtime, settings, start_worker, wait_for_run
):
    worker = start_worker(concurrency=1, version_grace=4)  # loads tests.flows only
    extra = engine_of(runtime, settings, *WITH_EXTRA)
    started = time.monotonic()
    run_id = extra.start_run("only-here", {})
    run = wait_for_run(run_id, timeout=45)
    assert time.monotonic() - started >= 4, "failed before ORCHESTRATOR_VERSION_GRACE"
    assert run["status"] == "failed", run
    begin = steps_of(run)["begin"]
    assert begin["attempts"] == [], "a worker without the code claimed the step"
    assert begin["status"] == "failed"
    version = extra.registry.get("only-here").version
    assert begin["error"] == (
        f"step 'begin' of workflow 'only-here' (run version {version!r}) cannot run: workflow "
        f"'only-here' is not in the deployed code (worker '{worker.name}'); no worker with its "
        "code took it within ORCHESTRATOR_VERSION_GRACE (4s)"
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
    assert gone["error"] == "step 'begin' failed"
    skewed = wait_for_run(skewed_run, timeout=10)
    assert skewed["status"] == "failed"  # planned on its own version, which has `last`
    assert skewed["error"] == "step 'last' failed"
    assert steps_of(skewed)["last"]["error"].startswith("worker lost")
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


def test_step_inserted_mid_dag_leaves_an_old_run_on_its_version_without_it(runtime, settings):
    v1 = engine_of(runtime, settings, "tests.skew_flows", send=False)
    run_id = v1.start_run("evolving", {})
    run = run_first_step_with(runtime, settings, run_id, "tests.skew_flows_v2")
    assert run["status"] == "running" and run["version"] == v1.registry.get("evolving").version
    steps = steps_of(run)
    assert set(steps) == {"first", "last"}, "a deploy changed the shape of a run in flight"
    assert steps["first"]["result"] == "first" and steps["last"]["status"] == "queued"
    v2 = engine_of(runtime, settings, "tests.skew_flows_v2", send=False)
    claim = v2.claim(run_id, "last", "new@test")
    assert claim is not None and claim.results == {"first": "first"}  # its version's parents
    v2.finish(claim, Outcome(ok=True, result="last"))
    [(status,)] = sql(runtime, "SELECT status FROM runs WHERE id = :r", r=run_id)
    assert status == "succeeded"


def test_step_renamed_is_never_claimed_by_the_new_code_and_names_both_versions(runtime, settings):
    v1 = engine_of(runtime, settings, "tests.skew_flows", send=False)
    run_id = v1.start_run("shrinking", {})
    run = run_first_step_with(runtime, settings, run_id, "tests.skew_flows_v2")
    assert steps_of(run)["last"]["status"] == "queued"  # the run's version still has `last`
    v2 = engine_of(runtime, settings, "tests.skew_flows_v2", send=False)
    with pytest.raises(StepNotLoaded) as missing:
        v2.claim(run_id, "last", "new@test")
    old, new = v1.registry.get("shrinking").version, v2.registry.get("shrinking").version
    assert str(missing.value) == (
        f"step 'last' of workflow 'shrinking' is in the run's version {old!r} but not in the "
        f"deployed version {new!r} (worker 'new@test')"
    )
    assert sql(runtime, "SELECT count(*) FROM attempts a JOIN steps s ON s.id = a.step_id "
               "WHERE s.run_id = :r AND s.name = 'last'", r=run_id)[0][0] == 0
    # The grace is counted from the first hand-back, by any worker, on the step row.
    assert v2.defer_not_loaded(run_id, "last") == 0.0
    time.sleep(0.05)
    assert v2.defer_not_loaded(run_id, "last") > 0.0
    assert v2.fail_not_loaded(run_id, "last", str(missing.value)) is True
    [(status, error)] = sql(runtime, "SELECT status, error FROM runs WHERE id = :r", r=run_id)
    assert status == "failed" and error == f"step 'last' failed: {missing.value}"
    assert v2.defer_not_loaded(run_id, "last") is None  # no longer waiting


def failed_v1_run(runtime, settings, workflow: str) -> str:
    """A run of `workflow` started by the first version whose `first` step failed."""
    v1 = engine_of(runtime, settings, "tests.skew_flows", send=False)
    run_id = v1.start_run(workflow, {})
    v1.finish(v1.claim(run_id, "first", "old@test"), Outcome(ok=False, error="boom"))
    return run_id


def test_retry_of_an_old_run_whose_steps_the_code_lacks_asks_for_the_current_version(
    runtime, settings, redis_url
):
    run_id = failed_v1_run(runtime, settings, "shrinking")
    v2 = engine_of(runtime, settings, "tests.skew_flows_v2", send=False)
    with pytest.raises(DeploySkew) as refused:
        v2.retry_run(run_id)
    assert status_of(refused.value) == 409
    old, new = (engine_of(runtime, settings, m, send=False).registry.get("shrinking").version
                for m in ("tests.skew_flows", "tests.skew_flows_v2"))
    assert str(refused.value) == (
        f"run {run_id} cannot be retried on its version {old!r}: step 'last' of workflow "
        f"'shrinking' is in the run's version {old!r} but not in the deployed version {new!r}; "
        "retry it on the current version instead (--current-version)"
    )
    web_runtime = Runtime(settings.with_(workflows=("tests.skew_flows_v2",)))
    try:
        client = make_app(web_runtime).test_client()
        assert client.get(f"/runs/{run_id}").status_code == 200
        answer = client.post(f"/api/runs/{run_id}/retry", headers=AUTH)
        assert answer.status_code == 409 and answer.get_json()["error"] == str(refused.value)
    finally:
        web_runtime.close()
    env = settings_env(settings.with_(workflows=("tests.skew_flows_v2",)), redis_url)
    out = cli(env, "retry", run_id)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [f"Error: {refused.value}"]
    out = cli(env, "retry", run_id, "--current-version")
    assert out.returncode == 0, out.stderr
    with runtime.sessions() as session:
        from orchestrator.db.queries import get_run, run_dict

        run = run_dict(get_run(session, run_id))
    assert run["version"] == new and run["status"] == "running"
    assert {s["name"]: s["status"] for s in run["steps"]} == {"first": "queued", "final": "pending"}


def test_retry_on_the_current_version_keeps_succeeded_steps_and_runs_the_new_ones(runtime, settings):
    v1 = engine_of(runtime, settings, "tests.skew_flows", send=False)
    run_id = v1.start_run("evolving", {})
    v1.finish(v1.claim(run_id, "first", "old@test"), Outcome(ok=True, result="kept"))
    v1.finish(v1.claim(run_id, "last", "old@test"), Outcome(ok=False, error="boom"))
    v2 = engine_of(runtime, settings, "tests.skew_flows_v2", send=False)
    assert v2.retry_run(run_id, current_version=True) is True
    for name in ("mid", "last"):
        claim = v2.claim(run_id, name, "new@test")
        assert claim is not None, name
        assert claim.results == ({"first": "kept"} if name == "mid" else {"mid": "mid"})
        v2.finish(claim, Outcome(ok=True, result=name))
    [(status, version)] = sql(runtime, "SELECT status, version FROM runs WHERE id = :r", r=run_id)
    assert status == "succeeded" and version == v2.registry.get("evolving").version
    first = sql(runtime, "SELECT result, attempts FROM steps WHERE run_id = :r AND name = 'first'", r=run_id)
    assert first == [("kept", 1)]


def test_runs_of_a_workflow_no_worker_reports_fail_after_the_grace(runtime, settings):
    extra = engine_of(runtime, settings, *WITH_EXTRA, send=False)
    run_id = extra.start_run("only-here", {})
    sql(runtime, "UPDATE workflow_versions SET last_seen_at = now() - interval '1 hour'")
    new = WorkflowEngine(runtime.sessions, load_workflows(["tests.flows"]), RecordingDispatcher(),
                         settings.with_(version_grace=1.0))
    assert new.fail_abandoned() == 0, "failed runs before this process was up for the grace"
    time.sleep(1.1)
    recovery.sweep(new)  # reports its own workflows as deployed, then fails the others' runs
    [(status, error)] = sql(runtime, "SELECT status, error FROM runs WHERE id = :r", r=run_id)
    assert status == "failed"
    assert error == ("workflow 'only-here' is not in the deployed code: no worker has reported it "
                     "for ORCHESTRATOR_VERSION_GRACE (1s); a deploy removed it?")
    assert {s for (s,) in sql(runtime, "SELECT status FROM steps WHERE run_id = :r", r=run_id)} == {"cancelled"}
    mine = new.start_run("diamond", {})
    recovery.sweep(new)
    assert sql(runtime, "SELECT status FROM runs WHERE id = :r", r=mine)[0][0] != "failed"


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
