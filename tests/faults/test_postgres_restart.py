"""PostgreSQL restarts under load: every service reconnects, and Kafka never holds a committed
offset whose event is not in the database.

The test runs its own PostgreSQL server (`private_postgres`), never the machine's shared one.
"""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from tests.faults.harness import (
    LONG,
    Figures,
    assert_committed_offsets_recorded,
    audit,
    committed_offsets,
    now,
    publish_figures,
    recorded_ids,
    rows,
    scalar,
    wait_until_settled,
)
from tests.fixtures.waiting import wait_for

#: Seconds the database stays down.
OUTAGE = 4.0


@pytest.fixture
def database_url(private_postgres) -> str:
    return private_postgres.url


#: Events and restarts: CI runs one restart, ./scripts/test --long a soak of five.
EVENTS, RESTARTS = (3000, 5) if LONG else (500, 1)


@pytest.mark.timeout(900 if LONG else 240)
def test_postgres_restarted_under_load_loses_nothing_and_every_service_reconnects(
    runtime, settings, private_postgres, make_load, start_worker, start_consumer, side_channel
):
    clock = time.monotonic()
    load = make_load("load")
    workers = [start_worker(concurrency=3) for _ in range(2)]
    consumer = start_consumer(ORCHESTRATOR_KAFKA_BATCH_SIZE="50")
    began = now()
    load.start(EVENTS, rate=60, make=lambda n: (load.event(n, sleep=0.02), None))
    outages: list[tuple[datetime, datetime]] = []
    for restart in range(RESTARTS):
        target = (restart + 1) * EVENTS * 0.8 // (RESTARTS + 1)
        wait_for(lambda target=target: recorded_ids(runtime) >= target, 120, 0.1, f"{target} events recorded")
        stopped_at = now()
        private_postgres.stop("fast")  # every connection of every service is cut
        time.sleep(OUTAGE / 2)
        during = committed_offsets(settings.kafka_bootstrap, settings.kafka_group)
        time.sleep(OUTAGE / 2)
        assert committed_offsets(settings.kafka_bootstrap, settings.kafka_group) == during, (
            "the consumer committed offsets while the database was down"
        )
        private_postgres.start()
        outages.append((stopped_at, now()))
        # What Kafka held as committed while the database was down is all in the database.
        assert_committed_offsets_recorded(runtime, settings.kafka_bootstrap, settings.kafka_group, during)

    load.join()
    settled = wait_until_settled(runtime, EVENTS, timeout=120, processes=workers)
    figures = audit(
        runtime, side_channel,
        Figures(f"PostgreSQL restart x{RESTARTS} (fast shutdown, {OUTAGE:g} s down)"), load.published,
        workflows_per_event=lambda _id: {"chain"}, fault_at=outages[0][0], started_at=began,
        group=settings.kafka_group, bootstrap=settings.kafka_bootstrap,
    )
    # The steps in flight waited for the database to record their outcome: none ran again.
    assert figures.reruns == 0 and not figures.notes, figures.line()
    # Every service reconnected: the consumer records and each worker runs steps again.
    back_at = outages[-1][1]
    assert consumer.process.poll() is None, consumer.output()[-3000:]
    assert consumer.output().count("the database is back") == RESTARTS, consumer.output()[-3000:]
    after = dict(rows(runtime, "SELECT worker, count(*) FROM attempts WHERE started_at > :t GROUP BY 1", t=back_at))
    for worker in workers:
        assert worker.process.poll() is None, worker.output()[-3000:]
        assert after.get(worker.name), f"{worker.name} ran nothing after the restart: {after}"
    resumed = max(
        (max(scalar(runtime, "SELECT min(received_at) FROM events WHERE received_at > :t", t=back),
             scalar(runtime, "SELECT min(finished_at) FROM runs WHERE finished_at > :t", t=back)) - back).total_seconds()
        for _, back in outages
    )
    figures.seconds = time.monotonic() - clock
    figures.notes.append(
        f"down {max((b - a).total_seconds() for a, b in outages):.1f}s at most; events recorded and runs "
        f"finishing again {resumed:.1f}s after a restart at most; settled {settled:.0f}s after the load"
    )
    publish_figures(figures)
