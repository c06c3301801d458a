"""Workers die under load: SIGKILL mid-step, repeatedly, with new workers started in their place."""

from __future__ import annotations

import signal
import time

import pytest

from tests.faults.harness import (
    LONG,
    Figures,
    audit,
    now,
    publish_figures,
    rows,
    wait_until_settled,
)
from tests.fixtures.waiting import wait_for


def running_on(runtime, worker: str) -> int:
    return len(rows(runtime, "SELECT 1 FROM attempts WHERE status = 'running' AND worker = :w", w=worker))


def kill_workers_mid_step(events: int, kills: int, rate: float, runtime, settings, make_load,
                          start_worker, start_consumer, side_channel, name: str,
                          settle: float = 120) -> Figures:
    clock = time.monotonic()
    load = make_load("load")
    workers = [start_worker(concurrency=3) for _ in range(3)]
    start_consumer()
    began = now()
    # Open-ended: it goes on until every kill is done and at least `events` are published.
    load.start(100 * events, rate, make=lambda n: (load.event(n, sleep=0.05), None))
    killed: list[str] = []
    first_kill = None
    for _ in range(kills):
        time.sleep(1.0)
        victim = wait_for(
            lambda: next((w for w in workers if running_on(runtime, w.name)), None), 30, 0.01,
            "a worker running a step",
        )
        victim.kill(signal.SIGKILL)  # the whole worker: main process and children
        first_kill = first_kill or now()
        killed.append(victim.name)
        workers.remove(victim)
        workers.append(start_worker(concurrency=3))  # capacity stays
    wait_for(lambda: load.count() >= events, 120, 0.1, f"{events} events to be published")
    load.stop()
    events = load.count()
    settled = wait_until_settled(runtime, events, timeout=settle, processes=workers)
    figures = audit(
        runtime, side_channel, Figures(name), load.published,
        workflows_per_event=lambda _id: {"chain"}, fault_at=first_kill, started_at=began,
        group=settings.kafka_group, bootstrap=settings.kafka_bootstrap,
    )
    lost = rows(runtime, "SELECT worker, count(*) FROM attempts WHERE error LIKE 'worker lost%' GROUP BY 1")
    hit = {worker for worker, _ in lost}
    assert hit <= set(killed), f"attempts lost on workers nobody killed: {lost}"
    assert len(hit) >= kills - 1, f"only {len(hit)} of {kills} kills caught a step mid-flight: {lost}"
    figures.seconds = time.monotonic() - clock
    figures.notes.append(f"{kills} workers killed, {len(hit)} mid-step; settled {settled:.0f}s after the load")
    publish_figures(figures)
    return figures


@pytest.mark.timeout(600)
def test_workers_killed_mid_step_five_times_lose_nothing_and_repeat_no_success(
    runtime, settings, make_load, start_worker, start_consumer, side_channel
):
    # 25 events/s: below what three workers sharing this 2-core machine with two other test
    # files can finish, so the backlog left by the kills drains instead of growing.
    # The backlog the kills leave drains slowly while two other test files load the machine
    # (seen: runs still moving, not stuck, 120 s after the load): 300 s to settle.
    kill_workers_mid_step(500, 5, 25, runtime, settings, make_load, start_worker,
                          start_consumer, side_channel, "worker SIGKILL mid-step x5", settle=300)


@pytest.mark.long
@pytest.mark.skipif(not LONG, reason="soak: ./scripts/test --long")
@pytest.mark.timeout(900)
def test_soak_workers_killed_mid_step_twenty_times(
    runtime, settings, make_load, start_worker, start_consumer, side_channel
):
    kill_workers_mid_step(5000, 20, 50, runtime, settings, make_load, start_worker,
                          start_consumer, side_channel, "worker SIGKILL mid-step x20 (soak)")
