"""Recording an attempt's outcome across a database outage, step by step and without processes.

The fault tests with real processes (test_postgres_restart.py) show the whole picture; these
pin the three pieces that make a restart cost no step a second run: the outcome is recorded
once the database answers again, an outcome recorded twice keeps its success, and the recovery
loop leaves lapsed leases alone for a lease after an outage.
"""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DataError

from orchestrator.dispatch import RecordingDispatcher
from orchestrator.engine import Outcome, WorkflowEngine
from orchestrator.executor import Heartbeats, execute, record_outcome
from orchestrator.recovery import OutageGrace
from orchestrator.runtime import Runtime
from tests.fixtures.private import TcpProxy


def attempts_of(runtime, run_id: str, step: str) -> list[tuple[int, str, str | None]]:
    from sqlalchemy import text

    with runtime.db.connect() as conn:
        return [tuple(r) for r in conn.execute(text(
            "SELECT a.number, a.status, a.error FROM attempts a JOIN steps s ON s.id = a.step_id "
            "WHERE s.run_id = :r AND s.name = :s ORDER BY a.number"), {"r": run_id, "s": step})]


@pytest.fixture
def quiet(runtime, settings) -> WorkflowEngine:
    """An engine whose messages go nowhere: the test plays the worker itself."""
    return WorkflowEngine(runtime.sessions, runtime.registry, RecordingDispatcher(), settings)


def test_an_outcome_recorded_twice_keeps_its_attempt_succeeded(runtime, quiet):
    run_id = quiet.start_run("chain", {"id": "twice"})
    claim = quiet.claim(run_id, "first", "tester")
    outcome = Outcome(ok=True, result={"n": 1})
    quiet.finish(claim, outcome)
    quiet.finish(claim, outcome)  # as after a commit whose answer was lost with the connection
    assert attempts_of(runtime, run_id, "first") == [(1, "succeeded", None)]


def test_an_outcome_waits_for_the_database_to_come_back(runtime, settings, quiet):
    run_id = quiet.start_run("chain", {"id": "outage"})
    claim = quiet.claim(run_id, "first", "tester")
    proxy = TcpProxy("127.0.0.1", make_url(settings.database_url).port or 5432).start()
    cut_off = Runtime(settings.with_(database_url=proxy.url(settings.database_url)), pre_ping=False)
    worker = WorkflowEngine(cut_off.sessions, cut_off.registry, RecordingDispatcher(), settings)
    try:
        proxy.cut()  # the database goes away while the step runs
        done = threading.Event()
        recording = threading.Thread(
            target=lambda: (record_outcome(worker, claim, Outcome(ok=True, result={"n": 1})), done.set()),
            daemon=True,
        )
        recording.start()
        time.sleep(1.5)
        assert not done.is_set()
        proxy.restore()
        assert done.wait(15), "the outcome was not recorded after the database came back"
    finally:
        proxy.cut()
        cut_off.close()
    assert attempts_of(runtime, run_id, "first") == [(1, "succeeded", None)]


def test_a_result_the_database_refuses_fails_the_attempt_saying_so(runtime, quiet, monkeypatch):
    run_id = quiet.start_run("chain", {"id": "refused"})
    finish = quiet.finish

    def refuse_results(claim, outcome, inline=None):  # noqa: ANN001 - as PostgreSQL refuses a value it cannot hold
        if outcome.ok:
            raise DataError("INSERT ...", {}, Exception("unsupported Unicode escape sequence"))
        return finish(claim, outcome, inline=inline)

    monkeypatch.setattr(quiet, "finish", refuse_results)
    assert execute(quiet, Heartbeats(quiet), run_id, "first", "tester").startswith("failed: ")
    [(number, status, error)] = attempts_of(runtime, run_id, "first")
    assert (number, status) == (1, "failed")
    assert error.startswith("the outcome of step 'first' could not be stored: DataError: ")
    assert "unsupported Unicode escape sequence" in error


def test_recovery_leaves_lapsed_leases_alone_for_a_lease_after_an_outage(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("orchestrator.recovery.time.monotonic", lambda: clock[0])
    grace = OutageGrace(step_lease=3.0)
    assert grace.expire_leases
    grace.outage()
    assert not grace.expire_leases  # the database is away: nothing to decide
    clock[0] += 60
    grace.reachable()
    clock[0] += 2.9
    assert not grace.expire_leases  # heartbeats have not had a full lease to get through
    grace.reachable()  # later sweeps do not move the deadline
    clock[0] += 0.2
    assert grace.expire_leases
