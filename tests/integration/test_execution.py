"""Step execution on real Celery worker processes, PostgreSQL state and a Redis broker."""

from __future__ import annotations

import os
import signal
import time

from orchestrator.celery_app import RUN_STEP_TASK
from orchestrator.dispatch import RecordingDispatcher
from orchestrator.engine import WorkflowEngine
from tests.fixtures.waiting import wait_for


def steps_of(run: dict) -> dict[str, dict]:
    return {s["name"]: s for s in run["steps"]}


def test_diamond_runs_every_step_once_and_passes_results(runtime, start_worker, wait_for_run, side_channel):
    start_worker(concurrency=2)
    run_id = runtime.engine.start_run("diamond", {"n": 5})
    run = wait_for_run(run_id)
    assert run["status"] == "succeeded", run
    steps = steps_of(run)
    assert steps["d"]["result"] == {"sum": 25}
    assert [line["message"] for line in steps["d"]["attempts"][0]["logs"]] == [
        "joining {'n': 10} and {'n': 15}"
    ]
    for name in "abcd":
        assert int(side_channel.get(f"exec:{run_id}:{name}")) == 1
        assert len(steps[name]["attempts"]) == 1
    assert run["started_at"] and run["finished_at"] and run["finished_at"].endswith("+00:00")


def test_fan_out_runs_in_parallel_and_fans_in(runtime, start_worker, wait_for_run):
    start_worker(concurrency=4)
    run_id = runtime.engine.start_run("fanout", {"sleep": 1.0})
    run = wait_for_run(run_id)
    assert run["status"] == "succeeded", run
    steps = steps_of(run)
    assert steps["join"]["result"] == {"parts": [0, 1, 2, 3]}
    spans = [(steps[f"part{i}"]["result"]["began"], steps[f"part{i}"]["result"]["ended"]) for i in range(4)]
    overlapping = sum(1 for s in spans if s[0] < min(e for _, e in spans))
    assert overlapping >= 2, f"parts ran one after another: {spans}"


def test_false_condition_skips_step_and_its_only_dependants(runtime, start_worker, wait_for_run):
    start_worker(concurrency=2)
    run = wait_for_run(runtime.engine.start_run("branches", {}))
    assert run["status"] == "succeeded", run
    steps = steps_of(run)
    assert steps["left"]["status"] == "succeeded"
    assert steps["right"]["status"] == "skipped"
    assert steps["after_right"]["status"] == "skipped"
    assert steps["right"]["attempts"] == []
    assert steps["merge"]["status"] == "succeeded"
    assert steps["merge"]["result"] == ["left"]


def test_retries_with_backoff_then_success(runtime, start_worker, wait_for_run):
    start_worker(concurrency=1)
    run = wait_for_run(runtime.engine.start_run("flaky", {}))
    assert run["status"] == "succeeded", run
    step = steps_of(run)["wobbly"]
    assert step["result"] == {"succeeded_on": 3}
    assert [a["status"] for a in step["attempts"]] == ["failed", "failed", "succeeded"]
    assert "ConnectionError: downstream unavailable (attempt 1)" in step["attempts"][0]["error"]
    assert "Traceback" in step["attempts"][0]["traceback"]


def test_retries_exhausted_fail_the_run_and_nothing_after_starts(runtime, start_worker, wait_for_run, side_channel):
    start_worker(concurrency=2)
    run_id = runtime.engine.start_run("doomed", {})
    run = wait_for_run(run_id)
    assert run["status"] == "failed", run
    steps = steps_of(run)
    assert steps["breaks"]["status"] == "failed"
    assert len(steps["breaks"]["attempts"]) == 2
    assert "ValueError: this step always fails" in steps["breaks"]["error"]
    assert steps["never"]["status"] == "cancelled"
    assert steps["never"]["attempts"] == []
    assert side_channel.get(f"exec:{run_id}:never") is None
    assert "breaks" in run["error"]


def test_step_over_its_timeout_fails(runtime, start_worker, wait_for_run):
    start_worker(concurrency=1)
    began = time.monotonic()
    run = wait_for_run(runtime.engine.start_run("slow", {}))
    assert time.monotonic() - began < 20
    assert run["status"] == "failed"
    assert steps_of(run)["too_slow"]["attempts"][0]["error"] == "step timed out after 1s"


def test_non_json_result_fails_the_attempt_with_that_message(runtime, start_worker, wait_for_run):
    start_worker(concurrency=1)
    run = wait_for_run(runtime.engine.start_run("badresult", {}))
    assert run["status"] == "failed"
    error = steps_of(run)["returns_a_set"]["error"]
    assert "result of step 'returns_a_set' is not JSON-serialisable" in error


def test_cancel_stops_remaining_steps(runtime, start_worker, wait_for_run, side_channel):
    start_worker(concurrency=1)
    run_id = runtime.engine.start_run("long", {"sleep": 2})
    wait_for(lambda: side_channel.get(f"exec:{run_id}:linger"), 20, message="linger to start")
    assert runtime.engine.cancel_run(run_id) is True
    assert runtime.engine.cancel_run(run_id) is False
    run = wait_for_run(run_id)
    assert run["status"] == "cancelled"
    time.sleep(3)  # the running attempt ends; nothing may follow it
    run = wait_for_run(run_id)
    steps = steps_of(run)
    assert steps["afterwards"]["status"] == "cancelled"
    assert side_channel.get(f"exec:{run_id}:afterwards") is None


def test_cancel_revokes_queued_steps(runtime, start_worker, wait_for_run, side_channel):
    # No worker yet: the first step sits queued in the broker.
    run_id = runtime.engine.start_run("diamond", {})
    assert runtime.engine.cancel_run(run_id)
    start_worker(concurrency=1)
    time.sleep(2)
    run = wait_for_run(run_id)
    assert run["status"] == "cancelled"
    assert steps_of(run)["a"]["status"] == "cancelled"
    assert side_channel.get(f"exec:{run_id}:a") is None


def test_duplicated_message_never_reruns_a_succeeded_step(runtime, start_worker, wait_for_run, side_channel):
    start_worker(concurrency=2)
    run_id = runtime.engine.start_run("diamond", {})
    wait_for_run(run_id)
    for _ in range(3):
        runtime.celery.send_task(RUN_STEP_TASK, args=(run_id, "a"), queue="orchestrator")
    time.sleep(2)
    run = wait_for_run(run_id)
    assert len(steps_of(run)["a"]["attempts"]) == 1
    assert int(side_channel.get(f"exec:{run_id}:a")) == 1


def test_concurrent_duplicates_of_a_queued_step_run_it_once(runtime, settings, start_worker, wait_for_run, side_channel):
    # Create the run without sending its messages, then send five copies of the first one.
    quiet = WorkflowEngine(runtime.sessions, runtime.registry, RecordingDispatcher(), settings)
    run_id = quiet.start_run("diamond", {})
    for _ in range(5):
        runtime.celery.send_task(RUN_STEP_TASK, args=(run_id, "a"), queue="orchestrator")
    start_worker(concurrency=4)
    run = wait_for_run(run_id)
    assert run["status"] == "succeeded"
    assert len(steps_of(run)["a"]["attempts"]) == 1
    assert int(side_channel.get(f"exec:{run_id}:a")) == 1


def test_lost_message_is_resent_by_the_recovery_loop(runtime, settings, start_worker, wait_for_run):
    # The transaction commits but the message never reaches the broker (crash in between).
    quiet = WorkflowEngine(runtime.sessions, runtime.registry, RecordingDispatcher(), settings)
    run_id = quiet.start_run("diamond", {})
    start_worker(concurrency=1)
    run = wait_for_run(run_id, timeout=settings.redeliver_after + 20)
    assert run["status"] == "succeeded"


def test_worker_killed_mid_step_is_completed_by_another_worker(runtime, settings, start_worker, wait_for_run, side_channel):
    # Both workers are up before the step starts (a worker starting under load can take
    # longer than the step): the one that took it is killed mid-step.
    workers = {w.name: w for w in (start_worker(concurrency=1), start_worker(concurrency=1))}
    run_id = runtime.engine.start_run("long", {"sleep": 3})
    wait_for(lambda: side_channel.get(f"exec:{run_id}:linger"), 20, message="linger to start")
    holder = steps_of(wait_for_run(run_id, ("running",)))["linger"]["attempts"][0]["worker"]
    first = workers.pop(holder)
    (second,) = workers.values()
    first.kill(signal.SIGKILL)
    first.process.wait()
    run = wait_for_run(run_id, timeout=settings.step_lease + 30)
    assert run["status"] == "succeeded", run
    attempts = steps_of(run)["linger"]["attempts"]
    assert [a["status"] for a in attempts] == ["failed", "succeeded"]
    assert attempts[0]["error"].startswith("worker lost")
    assert attempts[0]["worker"] == first.name
    assert attempts[1]["worker"] == second.name
    assert int(side_channel.get(f"exec:{run_id}:afterwards")) == 1


def test_killed_worker_child_is_replaced_and_the_step_completes(runtime, settings, start_worker, wait_for_run, side_channel):
    start_worker(concurrency=1)
    run_id = runtime.engine.start_run("long", {"sleep": 3})
    pid = int(wait_for(lambda: side_channel.get(f"pid:{run_id}:linger"), 20, message="linger pid"))
    os.kill(pid, signal.SIGKILL)  # only the prefork child; the worker lives on
    run = wait_for_run(run_id, timeout=settings.step_lease + 30)
    assert run["status"] == "succeeded", run
    assert [a["status"] for a in steps_of(run)["linger"]["attempts"]] == ["failed", "succeeded"]
