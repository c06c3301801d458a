"""The Celery broker (Redis) restarts under load and loses every message it held: the
recovery loop sends again what was lost, and nothing runs twice.

The test runs its own Redis server without persistence (`private_redis`) as the broker; the
side channel that counts executions stays on the machine's Redis.
"""

from __future__ import annotations

import time
from datetime import datetime

import pytest
import redis

from tests.faults.harness import (
    LONG,
    Figures,
    audit,
    now,
    publish_figures,
    recorded_ids,
    rows,
    scalar,
    wait_until_settled,
)
from tests.fixtures.waiting import wait_for

#: Seconds the broker stays down.
OUTAGE = 2.0


@pytest.fixture
def broker_url(private_redis) -> str:
    return private_redis.url


@pytest.fixture
def settings(settings):
    """Lost messages are sent again after 3 s in a queue."""
    return settings.with_(redeliver_after=3.0)


#: Events and restarts: CI runs two restarts, ./scripts/test --long a soak of five.
EVENTS, RESTARTS = (3000, 5) if LONG else (500, 2)


@pytest.mark.timeout(900 if LONG else 240)
def test_redis_restarted_under_load_loses_its_messages_and_recovery_sends_them_again(
    runtime, settings, private_redis, make_load, start_worker, start_consumer, side_channel
):
    clock = time.monotonic()
    load = make_load("load")
    workers = [start_worker(concurrency=3) for _ in range(2)]
    consumer = start_consumer(ORCHESTRATOR_KAFKA_BATCH_SIZE="50")
    began = now()
    events = EVENTS
    load.start(events, rate=60, make=lambda n: (load.event(n, sleep=0.02), None))
    outages: list[tuple[datetime, datetime, int]] = []
    for restart in range(RESTARTS):
        target = (restart + 1) * EVENTS * 0.8 // (RESTARTS + 1)
        wait_for(lambda target=target: recorded_ids(runtime) >= target, 120, 0.1, f"{target} events recorded")
        killed_at = now()
        private_redis.kill()  # no persistence: every queued and unacknowledged message is gone
        queued = len(rows(runtime, "SELECT 1 FROM steps WHERE status IN ('queued', 'retrying')"))
        time.sleep(OUTAGE)
        private_redis.start()
        outages.append((killed_at, now(), queued))
        time.sleep(1.0)
        for worker in workers:  # Celery's worker used to stop here (see orchestrator.redis_broker)
            assert worker.process.poll() is None, f"{worker.name} exited:\n{worker.output()[-3000:]}"
    killed_at, back_at = outages[0][0], outages[-1][1]

    load.join()
    settled = wait_until_settled(runtime, events, timeout=120, processes=workers)
    figures = audit(
        runtime, side_channel, Figures(f"Redis (Celery broker) restart x{RESTARTS}, messages lost"), load.published,
        workflows_per_event=lambda _id: {"chain"}, fault_at=killed_at, started_at=began,
        group=settings.kafka_group, bootstrap=settings.kafka_bootstrap,
    )
    resent = sum(
        int(line.split("recovery: ", 1)[1].split("lapsed lease(s), ", 1)[1].split(" message(s)", 1)[0])
        for worker in workers
        for line in worker.output().splitlines()
        if "recovery: " in line and "message(s) re-sent" in line
    )
    assert resent > 0, "the recovery loop re-sent nothing, yet the broker lost its messages"
    assert consumer.process.poll() is None, consumer.output()[-3000:]
    after = dict(rows(runtime, "SELECT worker, count(*) FROM attempts WHERE started_at > :t GROUP BY 1", t=back_at))
    for worker in workers:
        assert worker.process.poll() is None, worker.output()[-3000:]
        assert after.get(worker.name), f"{worker.name} ran nothing after the restart: {after}"
    resumed = max(
        (scalar(runtime, "SELECT min(finished_at) FROM runs WHERE finished_at > :t", t=back) - back).total_seconds()
        for _, back, _ in outages
    )
    figures.seconds = time.monotonic() - clock
    figures.notes.append(
        f"down {OUTAGE:g}s {RESTARTS} time(s) with {max(q for _, _, q in outages)} step(s) queued at most; "
        f"{resent} message(s) re-sent by recovery; runs finishing again {resumed:.1f}s after a restart "
        f"at most; settled {settled:.0f}s after the load"
    )
    publish_figures(figures)



def test_a_broker_connection_detached_by_a_connection_loss_fails_as_a_connection_error(
    settings, private_redis
):
    """What Celery does on a lost connection: collect it (detaching the transport), then close
    it, restoring the unacknowledged messages. kombu's own channel raised AttributeError
    there, which stopped the worker; a connection error is handled (ignored on close)."""
    from orchestrator.celery_app import create_celery_app

    app = create_celery_app(settings)
    connection = app.connection_for_read()
    channel = connection.default_channel
    assert channel.client.ping()
    channel.qos._delivered["held"] = object()  # a message the worker has not acknowledged
    channel._disconnect_pools()
    connection.transport.client = None  # what Connection.collect() leaves behind
    with pytest.raises(redis.exceptions.ConnectionError):
        channel._connparams()
    connection.maybe_close_channel(channel)  # restoring "held" raised AttributeError before
    assert channel.closed
