"""Deploys that change a workflow while its runs are in flight, with real worker processes.

Each run is planned on the version it started with (`runs.version`); a worker runs the
code it has loaded, matched by step name, and hands back a step it lacks for
ORCHESTRATOR_VERSION_GRACE before failing it with a message naming both versions.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from sqlalchemy import text

from orchestrator.celery_app import CeleryDispatcher
from orchestrator.engine import WorkflowEngine
from orchestrator.registry import load_workflows
from tests.fixtures.config import ROOT, settings_env
from tests.fixtures.waiting import wait_for

OLD = ("tests.flows", "tests.deploy_v1")
NEW = ("tests.flows", "tests.deploy_v2")
FINAL = ("succeeded", "failed", "cancelled")


def engine_of(runtime, settings, modules: tuple[str, ...]) -> WorkflowEngine:
    return WorkflowEngine(runtime.sessions, load_workflows(modules), CeleryDispatcher(runtime.celery), settings)


def rows(runtime, statement: str, **params) -> list:
    with runtime.sessions() as session:
        return session.execute(text(statement), params).all()


def runs_of(runtime, workflow: str) -> dict[str, tuple[str, str, str | None]]:
    """run id -> (status, version, error)."""
    return {str(r.id): (r.status, r.version, r.error)
            for r in rows(runtime, "SELECT id, status, version, error FROM runs WHERE workflow = :w", w=workflow)}


def steps_of(runtime, workflow: str) -> dict[str, dict[str, tuple[str, str | None, list[str]]]]:
    """run id -> step name -> (status, error, workers of its attempts)."""
    out: dict[str, dict[str, tuple[str, str | None, list[str]]]] = {}
    for r in rows(runtime, """
        SELECT s.run_id, s.name, s.status, s.error,
               coalesce(array_agg(a.worker ORDER BY a.number) FILTER (WHERE a.id IS NOT NULL), '{}') AS workers
          FROM steps s JOIN runs ON runs.id = s.run_id LEFT JOIN attempts a ON a.step_id = s.id
         WHERE runs.workflow = :w GROUP BY s.run_id, s.name, s.status, s.error""", w=workflow):
        out.setdefault(str(r.run_id), {})[r.name] = (r.status, r.error, list(r.workers))
    return out


def all_final(runtime, workflow: str, expected: int) -> bool:
    runs = runs_of(runtime, workflow)
    return len(runs) == expected and all(status in FINAL for status, _, _ in runs.values())


@pytest.mark.timeout(240)
def test_step_renamed_while_50_runs_wait_on_it(runtime, settings, start_worker, redis_url):
    old_engine, new_engine = engine_of(runtime, settings, OLD), engine_of(runtime, settings, NEW)
    v1, v2 = old_engine.registry.get("renaming").version, new_engine.registry.get("renaming").version
    old = start_worker(concurrency=1, workflows=OLD, version_grace=8)
    run_ids = [old_engine.start_run("renaming", {"sleep_b": 0.25}) for _ in range(50)]
    new = start_worker(concurrency=2, workflows=NEW, version_grace=8)

    def done_by_old() -> int:
        return rows(runtime, "SELECT count(*) FROM steps WHERE name = 'b' AND status = 'succeeded'")[0][0]

    wait_for(lambda: done_by_old() >= 5, 60, 0.1, "the old worker to finish some runs' b")
    old.process.send_signal(signal.SIGTERM)  # the rolling deploy stops the old worker (as Kubernetes does: its main process)
    old.process.wait(timeout=60)
    wait_for(lambda: all_final(runtime, "renaming", 50), 120, 0.5, "every run to end")

    runs, steps = runs_of(runtime, "renaming"), steps_of(runtime, "renaming")
    outcome = Counter(status for status, _, _ in runs.values())
    assert outcome["succeeded"] >= 5 and outcome["failed"] >= 1, outcome
    assert outcome["succeeded"] + outcome["failed"] == 50, outcome
    message = (f"step 'b' of workflow 'renaming' is in the run's version {v1!r} but not in the "
               f"deployed version {v2!r}")
    for run_id in run_ids:
        status, version, error = runs[run_id]
        assert version == v1, "a deploy changed the version of a run in flight"
        assert set(steps[run_id]) == {"a", "b", "c"}
        b_status, b_error, b_workers = steps[run_id]["b"]
        assert all(w == old.name for w in b_workers), "the new worker ran a step it has no code for"
        if status == "succeeded":
            assert b_status == "succeeded" and steps[run_id]["c"][0] == "succeeded"
        else:
            assert b_status == "failed" and b_workers == [], steps[run_id]
            assert b_error.startswith(message) and "ORCHESTRATOR_VERSION_GRACE (8s)" in b_error, b_error
            assert error == f"step 'b' failed: {b_error}"
    assert "Traceback" not in new.output()

    # A failed run retried on today's definition: `a` keeps its result, `b2` and `c` run.
    failed = next(r for r in run_ids if runs[r][0] == "failed")
    out = subprocess.run([sys.executable, "-m", "orchestrator", "retry", failed, "--current-version"],
                         env=settings_env(settings.with_(workflows=NEW), redis_url), cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    wait_for(lambda: runs_of(runtime, "renaming")[failed][0] in FINAL, 60, 0.2, "the retried run to end")
    status, version, _ = runs_of(runtime, "renaming")[failed]
    assert (status, version) == ("succeeded", v2)
    after = steps_of(runtime, "renaming")[failed]
    assert set(after) == {"a", "b2", "c"} and len(after["a"][2]) == 1, after


@pytest.mark.timeout(240)
def test_step_added_mid_flight_old_runs_finish_on_their_version_without_it(runtime, settings, start_worker):
    old_engine, new_engine = engine_of(runtime, settings, OLD), engine_of(runtime, settings, NEW)
    v1, v2 = old_engine.registry.get("growing").version, new_engine.registry.get("growing").version
    old = start_worker(concurrency=1, workflows=OLD)
    old_runs = [old_engine.start_run("growing", {"sleep_a": 0.2}) for _ in range(20)]
    wait_for(lambda: rows(runtime, "SELECT count(*) FROM steps WHERE name = 'a' AND status = 'succeeded'")[0][0] >= 3,
             60, 0.1, "some runs to be mid-flight")
    new = start_worker(concurrency=2, workflows=NEW)
    old.process.send_signal(signal.SIGTERM)
    old.process.wait(timeout=60)
    new_runs = [new_engine.start_run("growing", {}) for _ in range(5)]
    wait_for(lambda: all_final(runtime, "growing", 25), 120, 0.5, "every run to end")
    runs, steps = runs_of(runtime, "growing"), steps_of(runtime, "growing")
    for run_id in old_runs:
        assert runs[run_id][:2] == ("succeeded", v1), runs[run_id]
        assert set(steps[run_id]) == {"a", "c"}, "an old run got the new step"
    for run_id in new_runs:
        assert runs[run_id][:2] == ("succeeded", v2), runs[run_id]
        assert set(steps[run_id]) == {"a", "audit", "c"}
        assert steps[run_id]["audit"][2] == [new.name]
    assert "Traceback" not in new.output()


@pytest.mark.timeout(420)
def test_rolling_deploy_with_an_old_and_a_new_worker_under_500_runs(runtime, settings, start_worker, capsys):
    old_engine, new_engine = engine_of(runtime, settings, OLD), engine_of(runtime, settings, NEW)
    v1, v2 = old_engine.registry.get("growing").version, new_engine.registry.get("growing").version
    old = start_worker(concurrency=2, workflows=OLD)
    new = start_worker(concurrency=2, workflows=NEW)
    started: dict[str, str] = {}
    began = time.monotonic()
    for n in range(500):  # what a consumer with either code would start, interleaved
        engine, version = (old_engine, v1) if n % 2 == 0 else (new_engine, v2)
        started[engine.start_run("growing", {"n": n})] = version
    wait_for(lambda: all_final(runtime, "growing", 500), 360, 1.0, "every run to end")
    took = time.monotonic() - began
    runs, steps = runs_of(runtime, "growing"), steps_of(runtime, "growing")
    shape = {v1: {"a", "c"}, v2: {"a", "audit", "c"}}
    table: dict[str, Counter] = {v1: Counter(), v2: Counter()}
    for run_id, version in started.items():
        status, recorded, error = runs[run_id]
        row = table[version]
        row["runs"] += 1
        row[status] += 1
        row["on its version"] += recorded == version and set(steps[run_id]) == shape[version]
        for _name, (_, _, workers) in steps[run_id].items():
            for worker in workers:
                row[f"attempts on {'old' if worker == old.name else 'new'}"] += 1
        assert status == "succeeded", (run_id, error, steps[run_id])
        assert recorded == version and set(steps[run_id]) == shape[version]
        if version == v2:
            assert steps[run_id]["audit"][2] == [new.name], "the old worker ran a step it has no code for"
    stuck = [r for r in runs if runs[r][0] not in FINAL]
    lost = 500 - len(runs)
    assert stuck == [] and lost == 0
    with capsys.disabled():
        print(f"\nrolling deploy, 500 runs in {took:.1f}s (lost {lost}, stuck {len(stuck)}):")
        columns = ("runs", "succeeded", "failed", "on its version", "attempts on old", "attempts on new")
        print("  version        " + "  ".join(f"{c:>15}" for c in columns))
        for version, row in table.items():
            label = f"{version} ({'old' if version == v1 else 'new'})"
            print(f"  {label:<15}" + "  ".join(f"{row[c]:>15}" for c in columns))
    assert "Traceback" not in old.output() + new.output()
