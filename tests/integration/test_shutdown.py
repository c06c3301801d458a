"""Graceful shutdown: SIGTERM on a worker, a consumer or the web process finishes or hands
back the work in hand, exits with status 0, loses nothing and does nothing twice.

Real processes throughout (Celery workers on Redis, `orchestrator consume` on Tansu,
`orchestrator web` on waitress, PostgreSQL). SIGTERM goes to the main process only, as
Kubernetes and Docker send it. Timeouts here are hang guards, not measurements.
"""

from __future__ import annotations

import signal
import subprocess

import pytest
import redis
from sqlalchemy import text

from tests.conftest import wait_for
from tests.kafka_fixtures import KAFKA_TEST_WORKFLOWS, count

#: Seconds a SIGTERMed process may take to exit before the test calls it hung.
EXIT_GUARD = 60
WORKFLOWS = KAFKA_TEST_WORKFLOWS + ("tests.lifecycle_flows",)


@pytest.fixture
def settings(kafka_settings):
    # Recovery must not re-send queued messages during a test: what comes back to the
    # broker has to come back by the shutdown itself.
    return kafka_settings.with_(workflows=WORKFLOWS, redeliver_after=120.0)


def rows(runtime, sql: str, **params) -> list[tuple]:
    with runtime.db.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql), params)]


def sigterm(process: subprocess.Popen) -> int:
    """SIGTERM the main process alone; its exit status once it has stopped."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(EXIT_GUARD)
    except subprocess.TimeoutExpired:
        pytest.fail(f"process {process.pid} still running {EXIT_GUARD}s after SIGTERM")


def broker_messages(redis_url: str) -> tuple[int, int]:
    """(messages waiting in the step queues, messages delivered but not acknowledged)."""
    r = redis.Redis.from_url(redis_url)
    waiting = sum(r.llen(k) for k in r.scan_iter("orchestrator*") if r.type(k) == b"list")
    return waiting, r.hlen("unacked")


# -- worker ---------------------------------------------------------------------------------


def test_sigterm_on_a_worker_finishes_running_steps_and_returns_reserved_messages(
    runtime, settings, redis_url, start_worker, side_channel, wait_for_run
):
    engine = runtime.engine
    worker = start_worker(concurrency=2)
    # A retry with an 8 s backoff: its message waits inside the worker, reserved, not started.
    patient = engine.start_run("patient", {})
    wait_for(lambda: rows(runtime, "SELECT status FROM steps WHERE run_id = :r", r=patient) == [("retrying",)],
             30, message="the first attempt to fail")
    longs = [engine.start_run("long", {"sleep": 3}) for _ in range(3)]
    wait_for(lambda: count(runtime, "SELECT count(*) FROM steps WHERE name = 'linger' AND status = 'running'") == 2,
             30, message="two steps to be running")
    running = {r for (r,) in rows(runtime, "SELECT run_id FROM steps WHERE name = 'linger' AND status = 'running'")}
    # In the worker: two running steps and the retry, none acknowledged; one message waits.
    assert broker_messages(redis_url) == (1, 3)

    assert sigterm(worker.process) == 0
    log = worker.output()
    assert "recovery loop stopped" in log and "worker stopped" in log
    # The running steps finished during the shutdown, once each.
    for run_id in running:
        assert rows(runtime, "SELECT status, attempts FROM steps WHERE run_id = :r AND name = 'linger'",
                    r=run_id) == [("succeeded", 1)]
    # Nothing stayed with the stopped worker: the waiting linger, the two successors and
    # the reserved retry are all back in the broker.
    assert broker_messages(redis_url) == (4, 0)

    start_worker(concurrency=2)
    for run_id in [patient, *longs]:
        assert wait_for_run(run_id, timeout=60)["status"] == "succeeded"
    for run_id in longs:
        assert int(side_channel.get(f"exec:{run_id}:linger")) == 1
        assert int(side_channel.get(f"exec:{run_id}:afterwards")) == 1
    assert int(side_channel.get(f"exec:{patient}:fails_first")) == 2  # one failure, one success


def test_a_step_outlasting_the_shutdown_timeout_is_handed_back_without_using_a_retry(
    runtime, settings, start_worker, side_channel, wait_for_run, monkeypatch
):
    monkeypatch.setenv("ORCHESTRATOR_WORKER_SHUTDOWN_TIMEOUT", "2")
    worker = start_worker(concurrency=1)
    run_id = runtime.engine.start_run("stubborn", {"sleep": 120})  # no retries
    wait_for(lambda: rows(runtime, "SELECT status FROM steps WHERE run_id = :r", r=run_id) == [("running",)],
             30, message="the step to be running")

    assert sigterm(worker.process) == 0
    assert "1 step(s) still running after 2s handed back" in worker.output()
    (status, attempts, max_attempts), = rows(
        runtime, "SELECT status, attempts, max_attempts FROM steps WHERE run_id = :r", r=run_id)
    assert (status, attempts, max_attempts) in {("retrying", 1, 2), ("queued", 1, 2)}
    assert rows(runtime, "SELECT a.status, a.error FROM attempts a JOIN steps s ON s.id = a.step_id "
                         "WHERE s.run_id = :r", r=run_id) == [
        ("failed", "interrupted: the worker shut down before the attempt finished; handed back")
    ]

    start_worker(concurrency=1)
    run = wait_for_run(run_id, timeout=60)
    assert run["status"] == "succeeded"
    assert run["steps"][0]["result"] == {"attempt": 2}
    assert int(side_channel.get(f"exec:{run_id}:outlasts_shutdown")) == 2  # interrupted, then done
