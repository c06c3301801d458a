"""Concurrency limits on distributed locks, across several real worker processes."""

from __future__ import annotations

import signal
import threading
import time
from collections import defaultdict
from datetime import datetime

from sqlalchemy import select

from orchestrator.ring import queue_for
from tests.fixtures.waiting import wait_for

FINAL = ("succeeded", "failed", "cancelled")


def when(value: str) -> datetime:
    return datetime.fromisoformat(value)


def runs_by_key(runtime, wait_for_run, run_ids: dict[str, str], timeout: float = 90) -> dict[str, list[dict]]:
    by_key: dict[str, list[dict]] = defaultdict(list)
    for run_id, key in run_ids.items():
        by_key[key].append(wait_for_run(run_id, timeout=timeout))
    return by_key


def assert_serial_in_creation_order(runs: list[dict]) -> None:
    runs = sorted(runs, key=lambda r: when(r["created_at"]))
    for earlier, later in zip(runs, runs[1:], strict=False):
        assert when(later["started_at"]) >= when(earlier["finished_at"]), (earlier, later)
    starts = [when(r["started_at"]) for r in runs]
    assert starts == sorted(starts), "runs of a key must start in the order they were created"


def test_fifty_runs_on_five_keys_with_limit_one_never_overlap(runtime, start_worker, wait_for_run):
    start_worker(concurrency=3)
    start_worker(concurrency=3)
    run_ids = {}
    for i in range(50):
        key = f"customer-{i % 5}"
        run_ids[runtime.engine.start_run("per-customer", {"customer": key, "sleep": 0.05})] = key
    by_key = runs_by_key(runtime, wait_for_run, run_ids)
    for runs in by_key.values():
        assert [r["status"] for r in runs] == ["succeeded"] * 10
        assert_serial_in_creation_order(runs)
        for run in runs:  # each step attempt lies inside its run's slot
            attempt = run["steps"][0]["attempts"][-1]
            assert when(run["started_at"]) <= when(attempt["started_at"])
            assert when(attempt["finished_at"]) <= when(run["finished_at"])


def test_workflow_wide_limit_caps_running_runs(runtime, start_worker, wait_for_run):
    start_worker(concurrency=4)
    ids = [runtime.engine.start_run("two-at-a-time", {"sleep": 0.3}) for _ in range(8)]
    runs = [wait_for_run(i, timeout=60) for i in ids]
    assert all(r["status"] == "succeeded" for r in runs)
    events = sorted(
        [(when(r["started_at"]), 1) for r in runs] + [(when(r["finished_at"]), -1) for r in runs],
        key=lambda e: (e[0], e[1]),
    )
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert peak == 2


def test_cancel_newest_cancels_the_run_over_the_limit(runtime, start_worker, wait_for_run):
    start_worker(concurrency=2)
    first = runtime.engine.start_run("newest-loses", {"customer": "k", "sleep": 1.5})
    second = runtime.engine.start_run("newest-loses", {"customer": "k"})
    other = runtime.engine.start_run("newest-loses", {"customer": "another"})
    late = wait_for_run(second, timeout=10)
    assert late["status"] == "cancelled"
    assert "cancel_newest" in late["error"] and "'k'" in late["error"]
    assert wait_for_run(first)["status"] == "succeeded"
    assert wait_for_run(other)["status"] == "succeeded"


def test_cancel_in_progress_lets_the_latest_run_win(runtime, start_worker, wait_for_run, side_channel):
    start_worker(concurrency=2)
    old = runtime.engine.start_run("latest-wins", {"customer": "k", "sleep": 30})
    wait_for(lambda: side_channel.get(f"exec:{old}:hold"), 20, message="the old run to start")
    new = runtime.engine.start_run("latest-wins", {"customer": "k", "sleep": 0.1})
    assert wait_for_run(old, timeout=10)["status"] == "cancelled"
    assert "took its place" in wait_for_run(old)["error"]
    assert wait_for_run(new, timeout=30)["status"] == "succeeded"


def test_step_concurrency_runs_one_fragile_call_at_a_time(runtime, start_worker, wait_for_run):
    start_worker(concurrency=4)
    ids = [runtime.engine.start_run("fragile-calls", {"sleep": 0.2}) for _ in range(6)]
    runs = [wait_for_run(i, timeout=60) for i in ids]
    assert all(r["status"] == "succeeded" for r in runs), runs
    spans = sorted(
        (when(a["started_at"]), when(a["finished_at"]))
        for r in runs
        for s in r["steps"]
        if s["name"] == "call_fragile_service"
        for a in s["attempts"]
        if a["status"] == "succeeded"
    )
    assert len(spans) == 6
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end, spans


def test_killed_worker_does_not_block_its_key_past_the_lease(runtime, settings, start_worker, wait_for_run, side_channel):
    # Both workers are up before the holder starts (a worker starting under load can take
    # longer than the step): the one that took it is killed mid-step.
    workers = {w.name: w for w in (start_worker(concurrency=1), start_worker(concurrency=1))}
    holder = runtime.engine.start_run("per-customer", {"customer": "k", "sleep": 4})
    wait_for(lambda: side_channel.get(f"exec:{holder}:hold"), 20, message="the holder to start")
    waiting = runtime.engine.start_run("per-customer", {"customer": "k", "sleep": 0.1})
    taken_by = wait_for_run(holder, ("running",))["steps"][0]["attempts"][0]["worker"]
    doomed = workers[taken_by]
    doomed.kill(signal.SIGKILL)
    killed_at = time.monotonic()
    first = wait_for_run(holder, timeout=settings.step_lease + 30)
    second = wait_for_run(waiting, timeout=settings.step_lease + 30)
    assert first["status"] == "succeeded" and second["status"] == "succeeded"
    assert first["steps"][0]["attempts"][0]["error"].startswith("worker lost")
    assert when(second["started_at"]) >= when(first["finished_at"])
    assert time.monotonic() - killed_at < settings.step_lease + 25


def test_sharded_runs_use_their_key_shard_queue_in_key_order(runtime, start_worker, wait_for_run):
    start_worker(concurrency=3, queues="orchestrator", name="shards@test")  # no shard queue: idle
    start_worker(concurrency=3, queues=None)  # default: every queue, shard queues included
    run_ids = {}
    for round_ in range(3):
        for k in range(20):
            key = f"c{k}"
            run_ids[runtime.engine.start_run("sharded", {"customer": key, "sleep": 0.01, "n": round_})] = key
    by_key = runs_by_key(runtime, wait_for_run, run_ids, timeout=120)
    for key, runs in by_key.items():
        assert all(r["status"] == "succeeded" for r in runs)
        assert_serial_in_creation_order(runs)
        assert {s["queue"] for r in runs for s in r["steps"]} == {queue_for("sharded", key, 3)}


def test_a_limited_step_attempt_starts_only_once_its_slot_is_held(runtime):
    """The recorded start of an attempt is never earlier than the moment it got its slot.

    A claim that waits for the step's key lock (a finishing sibling holds it) must not
    record the time it began waiting: that start would precede the sibling's recorded end,
    and the attempts would seem to overlap although the limit held.
    """
    from orchestrator import concurrency as C
    from orchestrator.db.models import Attempt, StepRun
    from orchestrator.engine import Outcome, utcnow

    engine = runtime.engine
    run_id = engine.start_run("fragile-calls", {"sleep": 0})
    prepared = engine.claim(run_id, "prepare", worker="test")
    engine.finish(prepared, Outcome(ok=True, result={}))
    with runtime.sessions() as session:
        key = session.scalar(
            select(StepRun.concurrency_key).where(StepRun.name == "call_fragile_service")
        )
    claimed = {}
    with runtime.sessions() as holder, holder.begin():  # a sibling settling, holding the key
        C.lock_key(holder, C.step_scope("fragile-calls", "call_fragile_service"), key)
        claimer = threading.Thread(
            target=lambda: claimed.update(claim=engine.claim(run_id, "call_fragile_service", worker="test"))
        )
        claimer.start()
        time.sleep(0.3)
        assert claimer.is_alive(), "the claim must wait for the step's key lock"
        released = utcnow()
    claimer.join(10)
    assert claimed["claim"] is not None
    with runtime.sessions() as session:
        started = session.scalar(select(Attempt.started_at).where(Attempt.id == claimed["claim"].attempt_id))
        step_started = session.scalar(select(StepRun.started_at).where(StepRun.id == claimed["claim"].step_id))
    assert started >= released, (started, released)
    assert step_started >= released, (step_started, released)
