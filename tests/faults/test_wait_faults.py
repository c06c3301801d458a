"""Durable timers under faults: sleeps and timeouts live in PostgreSQL, so a kill of every
process, a downtime past their due time, or two recovery processes sweeping at once leave
each of them firing exactly once, and the node after it running once.

The workflows are `napper` (task, sleep, task), `impatient` (task, a wait for an event that
never comes, skipped after 5 s, task) and `unsigned` (task, an approval nobody gives, failing
after 5 s, task) in `tests.faults.flows`; load events on `<prefix>waits` start them.
"""

from __future__ import annotations

import signal
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.faults.harness import (
    Figures,
    audit,
    audit_waits,
    now,
    publish_figures,
    rows,
    scalar,
    wait_until_settled,
)
from tests.fixtures.waiting import wait_for

#: The nodes that wait in each workflow, with how their wait must end and the task after it.
NODES = {"napper": ("nap", "fired", "after"), "impatient": ("reply", "timed_out", "answered"),
         "unsigned": ("sign-off", "timed_out", "after")}


@pytest.fixture
def load(make_load):
    """The load on the topic that starts the waiting workflows (and the topic `impatient` waits on)."""
    starts = make_load("waits", 2)
    make_load("replies", 1)
    return starts


def waiting_steps(runtime) -> int:
    return int(scalar(runtime, "SELECT count(*) FROM steps WHERE status = 'waiting'"))


def ended_waits(runtime) -> int:
    return int(scalar(runtime, "SELECT count(*) FROM waits WHERE status <> 'open'"))


def group_alive(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group: a worker's pool and recovery process too."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


def kill_all(*handles: Any) -> None:
    """SIGKILL each worker (main, pool, recovery process) and consumer; wait until all are gone."""
    for handle in handles:
        handle.kill(signal.SIGKILL)
    for handle in handles:
        handle.process.wait(10)
        wait_for(lambda h=handle: not group_alive(h.process.pid), 10, 0.05,
                 f"every process of {handle.name} to die")


def assert_each_wait_ended_once(runtime, flows: dict[str, int], after: Any) -> dict[str, Any]:
    """Each run of `flows` (workflow -> runs) has exactly one wait on its waiting node, ended
    as `NODES` says, after `after`, and the task after it ran once (never before the sleep
    was due) or not at all (its wait timed out). Returns the latest end, per workflow."""
    latest = {}
    for workflow, expected in flows.items():
        node, ended, successor = NODES[workflow]
        found = rows(runtime, """
            SELECT r.id, r.status, array_agg(w.status ORDER BY w.id), min(w.due_at), max(w.closed_at),
                   (SELECT s.status FROM steps s WHERE s.run_id = r.id AND s.name = :successor),
                   (SELECT s.attempts FROM steps s WHERE s.run_id = r.id AND s.name = :successor),
                   (SELECT min(a.started_at) FROM attempts a JOIN steps s ON s.id = a.step_id
                     WHERE s.run_id = r.id AND s.name = :successor)
              FROM runs r JOIN waits w ON w.run_id = r.id AND w.step = :node
             WHERE r.workflow = :workflow GROUP BY r.id""",
            workflow=workflow, node=node, successor=successor)
        assert len(found) == expected, f"{workflow}: {len(found)} runs with a {node!r} wait, not {expected}"
        for run_id, status, waits, due_at, closed_at, next_status, next_attempts, next_started in found:
            assert waits == [ended], f"{workflow} run {run_id}: waits of {node!r} {waits}, not [{ended!r}]"
            assert closed_at > after, f"{workflow} run {run_id}: {node!r} ended at {closed_at}, before {after}"
            if workflow == "napper":
                assert (status, next_status, next_attempts) == ("succeeded", "succeeded", 1), (
                    f"run {run_id}: {status}, {successor!r} {next_status} in {next_attempts} attempt(s)")
                assert next_started >= due_at, f"run {run_id}: {successor!r} started {next_started}, before {due_at}"
            elif workflow == "impatient":
                assert (status, next_status, next_attempts) == ("succeeded", "skipped", 0), (
                    f"run {run_id}: {status}, {successor!r} {next_status} in {next_attempts} attempt(s)")
            else:
                assert status == "failed" and next_attempts == 0, (
                    f"run {run_id}: {status}, {successor!r} {next_status} in {next_attempts} attempt(s)")
        latest[workflow] = max((f[4] - f[3]).total_seconds() for f in found)
    if "unsigned" in flows:
        errors = {e for (e,) in rows(runtime, "SELECT s.error FROM steps s JOIN runs r ON r.id = s.run_id "
                                              "WHERE r.workflow = 'unsigned' AND s.name = 'sign-off'")}
        assert errors == {"timed out: no decision on approval 'sign-off' within 5s"}, errors
    return latest


RUNS = 20
#: Long enough for the restart to be over, usually, before the sleeps are due.
NAP = 8.0


@pytest.mark.timeout(180)
def test_a_sleep_survives_a_kill_of_every_process(
    runtime, settings, load, start_worker, start_consumer, side_channel
):
    clock = time.monotonic()
    worker = start_worker(concurrency=2)
    consumer = start_consumer()
    began = now()
    load.start(RUNS, rate=100, make=lambda n: (load.event(n, flow="napper", nap=NAP), None)).join()
    wait_for(lambda: waiting_steps(runtime) == RUNS, 60, 0.1, f"{RUNS} runs asleep")
    assert not ended_waits(runtime)

    killed_at = now()
    kill_all(worker, consumer)  # the worker's recovery process, which fires timers, with it
    audit_waits(runtime, overdue_after=None)  # asleep and consistent, with nobody to wake them
    start_consumer(wait_assigned=False)
    worker = start_worker(concurrency=2)
    restarted_at = now()  # the recovery process, which fires timers, starts with the worker
    due = scalar(runtime, "SELECT max(due_at) FROM waits")

    settled = wait_until_settled(runtime, RUNS, timeout=60, processes=[worker])
    figures = audit(runtime, side_channel, Figures(f"worker + recovery + consumer SIGKILL during a {NAP:g} s sleep"),
                    load.published, workflows_per_event=lambda _id: {"napper"}, fault_at=killed_at,
                    started_at=began, group=settings.kafka_group, bootstrap=settings.kafka_bootstrap)
    late = assert_each_wait_ended_once(runtime, {"napper": RUNS}, after=killed_at)
    assert figures.reruns == 0, figures.line()
    figures.seconds = time.monotonic() - clock
    figures.notes.append(
        f"{RUNS} runs asleep when every process was killed; restarted "
        f"{(restarted_at - killed_at).total_seconds():.1f}s later, "
        f"{'before' if due > restarted_at else 'after'} the last sleep was due; each sleep fired once, "
        f"{late['napper']:.1f}s after due at most, its successor ran once; settled {settled:.0f}s after the restart"
    )
    publish_figures(figures)


EACH = 8


@pytest.mark.timeout(180)
def test_timers_due_while_everything_is_down_fire_once_at_the_next_start(
    runtime, settings, load, start_worker, start_consumer, side_channel
):
    clock = time.monotonic()
    worker = start_worker(concurrency=2)
    consumer = start_consumer()
    began = now()
    flows = ["napper", "impatient", "unsigned"]
    load.start(EACH * len(flows), rate=100,
               make=lambda n: (load.event(n, flow=flows[n % len(flows)], nap=5), None)).join()
    wait_for(lambda: scalar(runtime, "SELECT count(*) FROM waits") == EACH * len(flows), 60, 0.05,
             "every run's wait to open")

    kill_all(worker, consumer)
    killed_at = now()
    assert waiting_steps(runtime) == EACH * len(flows), "a timer fired before every wait was open"
    # Down until every timer is a second past due.
    due = scalar(runtime, "SELECT max(due_at) FROM waits")
    time.sleep(max(0.0, (due - now()).total_seconds() + 1.0))
    overdue = scalar(runtime, "SELECT count(*) FROM waits WHERE status = 'open' AND due_at < now()")
    assert overdue == EACH * len(flows), f"{overdue} of {EACH * len(flows)} timers open and due while down"
    downtime = (now() - killed_at).total_seconds()

    restarted_at = now()
    worker = start_worker(concurrency=2)
    start_consumer()
    settled = wait_until_settled(runtime, EACH * len(flows), timeout=60, processes=[worker])
    figures = audit(runtime, side_channel, Figures("every process down while timers fall due"), load.published,
                    workflows_per_event=lambda i: {flows[int(i.rsplit("-", 1)[1]) % len(flows)]},
                    fault_at=killed_at, started_at=began, group=settings.kafka_group,
                    bootstrap=settings.kafka_bootstrap, must_succeed=lambda w: w != "unsigned")
    late = assert_each_wait_ended_once(runtime, dict.fromkeys(flows, EACH), after=restarted_at)
    figures.seconds = time.monotonic() - clock
    figures.notes.append(
        f"{EACH} sleeps, {EACH} event-wait timeouts (skip) and {EACH} approval timeouts (fail) fell due "
        f"during {downtime:.1f}s down; each fired once at the next start "
        f"({max(late.values()):.1f}s after due at most); settled {settled:.0f}s after the restart"
    )
    publish_figures(figures)


TIMERS = 150


@pytest.mark.timeout(180)
def test_two_recovery_processes_fire_each_timer_due_at_one_moment_once(
    runtime, settings, load, start_worker, start_consumer, side_channel
):
    clock = time.monotonic()
    workers = [start_worker(concurrency=2) for _ in range(2)]
    start_consumer()
    began = now()
    wake_at = (now() + timedelta(seconds=10)).isoformat()
    load.start(TIMERS, rate=200, make=lambda n: (load.event(n, flow="napper", wake_at=wake_at), None)).join()
    wait_for(lambda: waiting_steps(runtime) == TIMERS or ended_waits(runtime), 60, 0.1,
             f"{TIMERS} runs asleep until {wake_at}")
    assert not ended_waits(runtime), f"a timer fired before all {TIMERS} were open: the test needs a later wake_at"

    settled = wait_until_settled(runtime, TIMERS, timeout=90, processes=workers)
    figures = audit(runtime, side_channel, Figures(f"{TIMERS} timers due at one moment, two recovery processes"),
                    load.published, workflows_per_event=lambda _id: {"napper"}, fault_at=None,
                    started_at=began, group=settings.kafka_group, bootstrap=settings.kafka_bootstrap)
    late = assert_each_wait_ended_once(runtime, {"napper": TIMERS}, after=began)
    for worker in workers:
        assert worker.process.poll() is None, worker.output()[-3000:]
        assert len(group_alive(worker.process.pid)) >= 3, (
            f"{worker.name} lost its pool or recovery process: {group_alive(worker.process.pid)}")
    figures.seconds = time.monotonic() - clock
    figures.notes.append(f"{TIMERS} sleeps until the same instant, two workers each with its recovery process: "
                         f"each fired once, the last {late['napper']:.2f}s after due; successors ran once; "
                         f"settled {settled:.0f}s after the load")
    publish_figures(figures)
