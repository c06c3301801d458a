"""Leases of running steps, with real worker processes: a live process keeps its lease however
busy it is, a dead one loses it within a lease, and a step's own BaseException is its failure.
"""

from __future__ import annotations

import os
import signal
from datetime import datetime

import pytest

from tests.fixtures.waiting import wait_for


@pytest.fixture
def settings(settings):
    return settings.with_(workflows=("tests.flows", "tests.lease_flows"))


def attempts_of(run: dict) -> list[dict]:
    [step] = run["steps"]
    return step["attempts"]


def seconds(attempt: dict) -> float:
    return (datetime.fromisoformat(attempt["finished_at"])
            - datetime.fromisoformat(attempt["started_at"])).total_seconds()


def test_a_step_holding_the_gil_for_three_leases_runs_once_and_succeeds(
    runtime, settings, start_worker, wait_for_run, side_channel
):
    # Two processes, so a second attempt would have somewhere to run.
    start_worker(concurrency=2)
    hold = int(3 * settings.step_lease)
    run_id = runtime.engine.start_run("holds-the-gil", {"seconds": hold})
    run = wait_for_run(run_id, timeout=hold + 30)
    assert run["status"] == "succeeded", run
    assert [a["status"] for a in attempts_of(run)] == ["succeeded"]
    assert int(side_channel.get(f"exec:{run_id}:sleep_in_c")) == 1


def test_a_step_holding_the_gil_whose_process_is_killed_is_recovered_within_a_lease(
    runtime, settings, start_worker, wait_for_run, side_channel
):
    start_worker(concurrency=1)
    run_id = runtime.engine.start_run("holds-the-gil", {"seconds": 30, "first_only": True})
    pid = int(wait_for(lambda: side_channel.get(f"pid:{run_id}:sleep_in_c"), 20, message="the step to start"))
    os.kill(pid, signal.SIGKILL)  # the prefork child alone
    killed_at = datetime.now().astimezone()
    wait_for(lambda: int(side_channel.get(f"exec:{run_id}:sleep_in_c")) == 2,
             settings.step_lease + settings.recovery_interval + 15, 0.05, "the second attempt")
    run = wait_for_run(run_id, timeout=30)
    assert run["status"] == "succeeded", run
    first = attempts_of(run)[0]
    assert first["status"] == "failed" and first["error"].startswith("worker lost"), first
    given_up = (datetime.fromisoformat(first["finished_at"]) - killed_at).total_seconds()
    # As fast as for any killed process: within a lease and a recovery interval.
    assert given_up <= settings.step_lease + settings.recovery_interval + 1.5, given_up


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
