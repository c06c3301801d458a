"""Leases of running steps, with real worker processes: a live process keeps its lease however
busy it is, a dead one loses it within a lease, and a step's own BaseException is its failure.
"""

from __future__ import annotations

from datetime import datetime

import pytest


@pytest.fixture
def settings(settings):
    return settings.with_(workflows=("tests.flows", "tests.lease_flows"))


def attempts_of(run: dict) -> list[dict]:
    [step] = run["steps"]
    return step["attempts"]


def seconds(attempt: dict) -> float:
    return (datetime.fromisoformat(attempt["finished_at"])
            - datetime.fromisoformat(attempt["started_at"])).total_seconds()


def test_a_step_raising_a_base_exception_fails_at_once_and_its_process_serves_on(
    runtime, settings, start_worker, wait_for_run, side_channel
):
    start_worker(concurrency=1)  # one process: every run below goes through it
    pids = set()
    for raised in ("KeyboardInterrupt", "SystemExit", "AbortStep"):
        run_id = runtime.engine.start_run("raises-base-exception", {"raise": raised})
        run = wait_for_run(run_id, timeout=30)
        assert run["status"] == "failed", run
        [attempt] = attempts_of(run)
        assert attempt["error"] == f"{raised}: raised by the step: {raised}", attempt
        assert "raise RAISED[ctx.input" in (attempt["traceback"] or ""), attempt
        assert seconds(attempt) < settings.step_lease, attempt  # not given up a lease later
        pids.add(side_channel.get(f"pid:{run_id}:raise_it"))
    after = runtime.engine.start_run("well-behaved", {})
    assert wait_for_run(after, timeout=30)["status"] == "succeeded"
    pids.add(side_channel.get(f"pid:{after}:succeed"))
    assert len(pids) == 1, f"the step's process was replaced: {pids}"
