"""High availability on one machine: two consumers (one group) and three workers run a load of
orders; one consumer and one worker are killed with SIGKILL halfway. Every event is recorded
once, every run finishes, and neither the per-key ordering nor the concurrency limit breaks.

Each order starts two workflows (tests/faults/flows.py):

- `ha-ordered` (`partition_by="customer"`, 3 shards): a customer's runs start in the order of
  their events (Kafka offsets: one customer, one partition) and never overlap;
- `ha-limited` (`Concurrency(key="region", limit=2)`): at most two runs of a region at once,
  admitted oldest first.

Checked from the times the database recorded, for runs and for every attempt.
"""

from __future__ import annotations

import signal
import time
from collections import defaultdict
from datetime import datetime

import pytest

from tests.faults.harness import (
    LONG,
    Figures,
    Load,
    audit,
    now,
    publish_figures,
    recorded_ids,
    rows,
    wait_until_settled,
)
from tests.fixtures.waiting import wait_for

CUSTOMERS = 20
REGIONS = 4


def order(load: Load, n: int) -> tuple[dict, str]:
    customer = f"c{n % CUSTOMERS}"
    event = {"type": "order", "id": f"{load.label}-{n}", "seq": n, "customer": customer,
             "region": f"r{n % CUSTOMERS % REGIONS}", "sleep": 0.01}
    return event, customer


def peak(intervals: list[tuple[datetime, datetime]]) -> int:
    """Most intervals open at once (an end and a start at the same instant do not overlap)."""
    marks = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals],
                   key=lambda m: (m[0], m[1]))
    running = highest = 0
    for _, delta in marks:
        running += delta
        highest = max(highest, running)
    return highest


def check_ordering(runtime) -> dict[str, int]:
    """Per customer: runs start in offset order, one after another; attempts stay inside them."""
    runs = rows(runtime, """
        SELECT r.concurrency_key, e."partition", e."offset", r.id, r.created_at, r.started_at, r.finished_at
          FROM runs r JOIN events e ON e.id = r.event_id
         WHERE r.workflow = 'ha-ordered' ORDER BY r.concurrency_key, e."offset" """)
    attempts: dict[str, list[tuple[datetime, datetime]]] = defaultdict(list)
    for run_id, started, finished in rows(runtime, """
            SELECT s.run_id, a.started_at, a.finished_at FROM attempts a JOIN steps s ON s.id = a.step_id
              JOIN runs r ON r.id = s.run_id WHERE r.workflow = 'ha-ordered'"""):
        attempts[str(run_id)].append((started, finished))
    by_key: dict[str, list] = defaultdict(list)
    for row in runs:
        by_key[row[0]].append(row)
    for key, key_runs in by_key.items():
        assert len({r[1] for r in key_runs}) == 1, f"customer {key} spread over partitions"
        for earlier, later in zip(key_runs, key_runs[1:], strict=False):
            assert later[4] > earlier[4], f"{key}: run of offset {later[2]} created before offset {earlier[2]}"
            assert later[5] >= earlier[6], (
                f"{key}: run of offset {later[2]} started at {later[5]}, before the run of offset "
                f"{earlier[2]} finished at {earlier[6]}"
            )
        for run in key_runs:
            for started, finished in attempts[str(run[3])]:
                assert run[5] <= started and finished <= run[6], f"{key}: an attempt outside its run {run}"
    return {"keys": len(by_key), "runs": len(runs)}


def check_limit(runtime, limit: int = 2) -> dict[str, int]:
    """Per region: at most `limit` runs (and step attempts) at once, admitted oldest first.

    A region's events come from every partition, so two consumers create its runs at once,
    and a run can commit (and become visible to admission) after a newer one did. "Oldest
    first" is therefore checked among the runs of one partition, which one consumer at a
    time creates in offset order.
    """
    runs = rows(runtime, """
        SELECT r.concurrency_key, e."partition", r.started_at, r.finished_at FROM runs r
          JOIN events e ON e.id = r.event_id
         WHERE r.workflow = 'ha-limited' ORDER BY r.concurrency_key, e."partition", e."offset" """)
    attempts: dict[str, list[tuple[datetime, datetime]]] = defaultdict(list)
    for key, started, finished in rows(runtime, """
            SELECT r.concurrency_key, a.started_at, a.finished_at FROM attempts a
              JOIN steps s ON s.id = a.step_id JOIN runs r ON r.id = s.run_id
             WHERE r.workflow = 'ha-limited'"""):
        attempts[key].append((started, finished))
    by_key: dict[str, list] = defaultdict(list)
    for key, partition, started, finished in runs:
        by_key[key].append((partition, started, finished))
    highest = 0
    for key, key_runs in by_key.items():
        observed = peak([(s, f) for _, s, f in key_runs])
        assert observed <= limit, f"region {key}: {observed} runs at once, over the limit of {limit}"
        assert peak(attempts[key]) <= limit, f"region {key}: attempts over the limit"
        for partition in {p for p, _, _ in key_runs}:
            starts = [s for p, s, _ in key_runs if p == partition]
            assert starts == sorted(starts), f"region {key}: runs of partition {partition} not admitted oldest first"
        highest = max(highest, observed)
    return {"regions": len(by_key), "runs": len(runs), "peak": highest}


def run_high_availability(events: int, rate: float, runtime, settings, make_load, start_worker,
                          start_consumer, side_channel, name: str) -> Figures:
    clock = time.monotonic()
    load = make_load("orders")
    workers = [start_worker(concurrency=3) for _ in range(3)]
    consumers = [start_consumer(f"c{i}", ORCHESTRATOR_KAFKA_BATCH_SIZE="50") for i in range(2)]
    topic = load.topic

    def held(consumer) -> set[str]:  # noqa: ANN001
        return {p for p in consumer.assignment() if p.startswith(topic + "[")}

    wait_for(lambda: all(held(c) for c in consumers), 60, 0.2, "both consumers to hold partitions")
    began = now()
    load.start(events, rate, make=lambda n: order(load, n))

    # Halfway: one consumer and one worker die, each while it has work in hand.
    wait_for(lambda: recorded_ids(runtime) >= events // 3, 120, 0.05, "a third of the events")
    victim = consumers.pop(0)
    victim.kill(signal.SIGKILL)
    consumer_killed = now()
    wait_for(lambda: recorded_ids(runtime) >= events // 2, 120, 0.05, "half of the events")
    busy = wait_for(
        lambda: next((w for w in workers if rows(runtime, "SELECT 1 FROM attempts WHERE status = 'running' "
                                                          "AND worker = :w", w=w.name)), None),
        30, 0.01, "a worker running a step",
    )
    busy.kill(signal.SIGKILL)
    worker_killed = now()
    workers.remove(busy)
    survivor = consumers[0]
    wait_for(lambda: len(held(survivor)) == 4, 60, 0.2, "the surviving consumer to take every partition")

    load.join()
    settled = wait_until_settled(runtime, events, timeout=240, processes=workers)
    figures = audit(
        runtime, side_channel, Figures(name), load.published,
        workflows_per_event=lambda _id: {"ha-ordered", "ha-limited"}, fault_at=consumer_killed,
        started_at=began, group=settings.kafka_group, bootstrap=settings.kafka_bootstrap,
    )
    ordering = check_ordering(runtime)
    limit = check_limit(runtime)
    lost = rows(runtime, "SELECT count(*) FROM attempts WHERE error LIKE 'worker lost%'")[0][0]
    assert lost >= 1, "the killed worker was running no step"
    assert ordering["runs"] == limit["runs"] == events
    survivor.kill(signal.SIGTERM)
    survivor.process.wait(30)
    report = survivor.report()
    figures.seconds = time.monotonic() - clock
    figures.notes.append(
        f"{ordering['runs']} ha-ordered runs on {ordering['keys']} keys in offset order, never overlapping; "
        f"{limit['runs']} ha-limited runs on {limit['regions']} regions, peak {limit['peak']} at once (limit 2); "
        f"{lost} attempt(s) lost with the worker; the surviving consumer read {report['redelivered']} event(s) "
        f"again and skipped them; worker killed {(worker_killed - began).total_seconds():.0f}s into the load; "
        f"settled {settled:.0f}s after the load"
    )
    publish_figures(figures)
    return figures


@pytest.mark.timeout(420)
def test_one_consumer_and_one_worker_killed_lose_nothing_and_break_no_ordering_or_limit(
    runtime, settings, make_load, start_worker, start_consumer, side_channel
):
    run_high_availability(1000, 50, runtime, settings, make_load, start_worker, start_consumer,
                          side_channel, "HA: 1 of 2 consumers + 1 of 3 workers SIGKILLed")


@pytest.mark.long
@pytest.mark.skipif(not LONG, reason="soak: ./scripts/test --long")
@pytest.mark.timeout(1200)
def test_soak_high_availability_with_five_thousand_orders(
    runtime, settings, make_load, start_worker, start_consumer, side_channel
):
    run_high_availability(5000, 60, runtime, settings, make_load, start_worker, start_consumer,
                          side_channel, "HA soak: 5,000 orders")
