"""Debounce and batch triggers through a real Tansu broker, real `orchestrator consume`
processes and real Celery workers; windows live in PostgreSQL."""

from __future__ import annotations

import signal
import time

import pytest
from sqlalchemy import text

from tests.fixtures.waiting import count, wait_for
from tests.webtools import AUTH, make_app


@pytest.fixture
def settings(kafka_settings):
    return kafka_settings


def runs_of(runtime, workflow: str) -> list[tuple[str, dict]]:
    with runtime.db.connect() as conn:
        return [(str(i), data) for i, data in conn.execute(text(
            "SELECT id, input FROM runs WHERE workflow = :w ORDER BY created_at"), {"w": workflow})]


def event_ids(runtime, topic: str) -> list[int]:
    with runtime.db.connect() as conn:
        return [i for (i,) in conn.execute(text(
            'SELECT id FROM events WHERE topic = :t ORDER BY "partition", "offset"'), {"t": topic})]


def test_a_burst_of_one_key_starts_one_run_with_every_event_and_two_keys_start_two(
    runtime, kafka, topic_prefix, start_worker, start_consumer, wait_for_run
):
    clicks = f"{topic_prefix}clicks"
    kafka.create_topic(clicks, partitions=1)
    start_worker(concurrency=1)
    start_consumer()
    for n in range(3):
        kafka.publish(clicks, {"user": {"id": 1}, "n": n})
    kafka.publish(clicks, {"user": {"id": 2}, "n": 10})
    kafka.publish(clicks, {"user": {}, "n": 11})  # no key: rejected with the reason
    kafka.flush()
    wait_for(lambda: len(runs_of(runtime, "debounced")) == 2, 30, 0.2, "a run per user")
    ids = event_ids(runtime, clicks)
    runs = sorted(runs_of(runtime, "debounced"), key=lambda r: r[1]["user"])
    assert [data for _, data in runs] == [
        {"user": 1, "n": 2, "$events": ids[:3]},
        {"user": 2, "n": 10, "$events": [ids[3]]},
    ]
    assert wait_for_run(runs[0][0])["status"] == "succeeded"
    with runtime.db.connect() as conn:
        reason = conn.execute(text("SELECT reason FROM events WHERE id = :i"), {"i": ids[4]}).scalar_one()
    assert "the debounce key 'user.id' is missing from the event" in reason
    assert count(runtime, "SELECT count(*) FROM windows WHERE closed_at IS NULL") == 0


def test_a_key_that_never_goes_quiet_starts_its_run_at_max_wait(
    runtime, kafka, topic_prefix, start_consumer
):
    clicks = f"{topic_prefix}clicks"
    kafka.create_topic(clicks, partitions=1)
    start_consumer()
    n = 0
    # An event every 0.5 s (period 1.5 s, max_wait 4 s): the window closes at max_wait.
    while not runs_of(runtime, "debounced") and n < 40:
        kafka.publish(clicks, {"user": {"id": 5}, "n": n})
        kafka.flush()
        n += 1
        time.sleep(0.5)
    (_, first), *_ = runs_of(runtime, "debounced")
    assert 3 <= len(first["$events"]) < n, (first, n)


def test_a_full_batch_starts_at_once_and_the_rest_when_the_window_ends(
    runtime, kafka, topic_prefix, start_worker, start_consumer, wait_for_run
):
    rows = f"{topic_prefix}rows"
    kafka.create_topic(rows, partitions=1)
    start_worker(concurrency=1)
    start_consumer()
    for n in range(7):
        kafka.publish(rows, {"n": n})
    kafka.flush()
    wait_for(lambda: len(runs_of(runtime, "batched")) == 2, 30, 0.2, "a full batch and a partial one")
    (full_id, full), (_, rest) = runs_of(runtime, "batched")
    assert full == {"events": [{"n": n} for n in range(5)]}
    assert rest == {"events": [{"n": 5}, {"n": 6}]}
    assert wait_for_run(full_id)["status"] == "succeeded"
    with runtime.db.connect() as conn:
        absorbed = conn.execute(text(
            "SELECT count(*), count(DISTINCT w.run_id) FROM window_events e JOIN windows w ON w.id = e.window_id"
        )).one()
    assert tuple(absorbed) == (7, 2)
    # The event page and API link an absorbed event to its run.
    client = make_app(runtime).test_client()
    first = event_ids(runtime, rows)[0]
    (joined,) = client.get(f"/api/events/{first}", headers=AUTH).get_json()["windows"]
    assert (joined["workflow"], joined["kind"], joined["open"], joined["run_id"]) == ("batched", "batch", False, full_id)
    absorbed_ids = client.get(f"/api/runs/{full_id}", headers=AUTH).get_json()["absorbed_events"]
    assert absorbed_ids == event_ids(runtime, rows)[:5]
    page = client.get(f"/events/{first}", headers=AUTH).get_data(as_text=True)
    assert "absorbed by run" in page and f"/runs/{full_id}" in page


def test_a_keyed_batch_collects_each_key_apart(runtime, kafka, topic_prefix, start_consumer):
    tenants = f"{topic_prefix}tenants"
    kafka.create_topic(tenants, partitions=2)
    start_consumer()
    for n in range(6):
        kafka.publish(tenants, {"tenant": "ab"[n % 2], "n": n}, key="ab"[n % 2])
    kafka.flush()
    wait_for(lambda: len(runs_of(runtime, "per-tenant")) == 2, 30, 0.2, "a run per tenant")
    batches = sorted((data["events"] for _, data in runs_of(runtime, "per-tenant")), key=lambda b: b[0]["tenant"])
    assert batches == [[{"tenant": "a", "n": n} for n in (0, 2, 4)], [{"tenant": "b", "n": n} for n in (1, 3, 5)]]


def test_a_consumer_killed_mid_window_loses_no_event_and_repeats_none(
    runtime, kafka, topic_prefix, start_consumer
):
    rows = f"{topic_prefix}rows"
    kafka.create_topic(rows, partitions=1)
    consumer = start_consumer("c1")
    for n in range(3):
        kafka.publish(rows, {"n": n})
    kafka.flush()
    wait_for(lambda: count(runtime, "SELECT count(*) FROM window_events") == 3, 30, 0.1, "3 events in a window")
    consumer.kill(signal.SIGKILL)  # the window is open; offsets may or may not be committed
    consumer.process.wait(10)
    for n in range(3, 8):
        kafka.publish(rows, {"n": n})
    kafka.flush()
    successor = start_consumer("c2")
    wait_for(lambda: count(runtime, "SELECT count(*) FROM windows WHERE closed_at IS NULL") == 0
             and count(runtime, "SELECT count(*) FROM events") == 8, 60, 0.2, "every window closed")
    inputs = [data for _, data in runs_of(runtime, "batched")]
    seen = sorted(e["n"] for data in inputs for e in data["events"])
    assert seen == list(range(8)), inputs
    assert count(runtime, "SELECT count(*) FROM window_events") == 8
    assert successor.stop() == 0
