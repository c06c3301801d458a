"""`wait_for_event` end to end: real PostgreSQL, Redis, Tansu, worker and consumer processes.

An event completes a wait in the transaction that records it (a later one, or an earlier
one within the wait's lookback); of two racing events exactly one wins; timeouts fire from
the worker's recovery process (fail, or skip what only the wait leads to); cancel closes
waits; a retry reopens a timed-out wait; events of other orders, not matching, or not JSON
complete nothing and do not stop the consumer.

The wait topics are shared by the session (see tests/wait_it_flows.py); each test keeps to
its own order ids, so the events earlier tests left in a topic (which each new consumer
group reads again) never concern it.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from sqlalchemy import text

from tests import wait_it_flows as F
from tests.fixtures.kafka import Kafka
from tests.fixtures.waiting import count, wait_for

WORKFLOWS = ("tests.wait_it_flows",)


@pytest.fixture
def settings(kafka_settings):
    """Workers and consumers load the wait workflows only (no trigger topics to read)."""
    return kafka_settings.with_(workflows=WORKFLOWS)


@pytest.fixture(scope="module", autouse=True)
def wait_topics(kafka_broker) -> None:
    """Create the topics before any consumer subscribes (the race topic needs two partitions)."""
    client = Kafka(kafka_broker.bootstrap)
    try:
        for name, partitions in {**F.WAIT_TOPICS, F.ANNOUNCED: 1}.items():
            client.create_topic(name, partitions)
    finally:
        client.close()


def new_order() -> str:
    return f"o-{uuid.uuid4().hex[:12]}"


def rows(runtime, sql: str, **params: Any) -> list[Any]:
    with runtime.db.connect() as conn:
        return conn.execute(text(sql), params).all()


def waits_of(runtime, run_id: str) -> list[Any]:
    return rows(runtime, "SELECT * FROM waits WHERE run_id = :r ORDER BY id", r=run_id)


def events_of(runtime, topic: str, order: str) -> list[Any]:
    """The recorded events of `topic` about `order` (by payload, or by key for non-JSON)."""
    return rows(runtime, """
        SELECT * FROM events WHERE topic = :t
        AND (payload -> 'order' ->> 'id' = :o OR key LIKE :o || '%') ORDER BY id""", t=topic, o=order)


def step_status(runtime, run_id: str, step: str) -> str | None:
    found = rows(runtime, "SELECT status FROM steps WHERE run_id = :r AND name = :s", r=run_id, s=step)
    return found[0].status if found else None


def step_of(run: dict, name: str) -> dict:
    return next(s for s in run["steps"] if s["name"] == name)


def executions(side_channel, run_id: str, step: str) -> int:
    return int(side_channel.get(f"exec:{run_id}:{step}") or 0)


def waiting(runtime, run_id: str, step: str) -> None:
    wait_for(lambda: step_status(runtime, run_id, step) == "waiting", 30, 0.1, f"{step} to be waiting")


def recorded(runtime, topic: str, order: str, n: int) -> list[Any]:
    return wait_for(lambda: (found := events_of(runtime, topic, order)) and len(found) >= n and found,
                    30, 0.1, f"{n} event(s) about {order} on {topic} to be recorded")


def start_services(start_worker, start_consumer, **consumer_env: str):
    """A worker and a consumer, started side by side (each takes seconds to be ready)."""
    consumer = start_consumer(wait_assigned=False, **consumer_env)
    start_worker()
    wait_for(lambda: consumer.assignment() or consumer.process.poll() is not None, 60, 0.1,
             "the consumer to be assigned partitions")
    assert consumer.process.poll() is None, f"the consumer exited:\n{consumer.output()[-3000:]}"
    return consumer


def test_a_later_event_completes_the_wait_and_the_successor_reads_it(
    runtime, kafka, start_worker, start_consumer, wait_for_run, side_channel
):
    start_services(start_worker, start_consumer)
    order = new_order()
    run_id = runtime.engine.start_run("wait-it-later", {"order_id": order})
    waiting(runtime, run_id, "payment")
    (opened,) = waits_of(runtime, run_id)
    assert (opened.status, opened.kind, opened.topic, opened.event_id) == ("open", "event", F.PAYMENTS, None)
    assert opened.spec["correlate"] == {"order.id": order}

    payload = {"type": "payment.confirmed", "order": {"id": order}, "amount": 12.5}
    kafka.publish(F.PAYMENTS, payload, key=order)
    kafka.flush()
    run = wait_for_run(run_id)
    assert run["status"] == "succeeded", run

    (event,) = events_of(runtime, F.PAYMENTS, order)
    assert event.outcome == "matched"
    (closed,) = waits_of(runtime, run_id)
    assert (closed.status, closed.event_id) == ("matched", event.id)
    assert step_of(run, "payment")["status"] == "succeeded"
    assert step_of(run, "payment")["result"] == payload
    shipped = step_of(run, "ship")["result"]
    assert shipped["payment"] == payload
    assert shipped["seen"] == ["payment"]  # its parent's; a task grandparent's stays out
    assert shipped["event"] == {
        "event_id": event.id, "topic": F.PAYMENTS, "partition": 0, "offset": event.offset,
        "key": order, "timestamp": event.kafka_timestamp.isoformat(),
    }
    assert executions(side_channel, run_id, "ship") == 1


def test_an_event_recorded_before_the_wait_opened_completes_it_within_the_lookback(
    runtime, kafka, start_worker, start_consumer, wait_for_run, side_channel
):
    start_services(start_worker, start_consumer)
    order = new_order()
    payload = {"type": "reply", "order": {"id": order}, "n": 1}
    kafka.publish(F.LOOKBACK, payload, key=order)
    kafka.flush()
    (early,) = recorded(runtime, F.LOOKBACK, order, 1)
    assert early.outcome == "ignored"  # no wait was open when it came

    run_id = runtime.engine.start_run("wait-it-lookback", {"order_id": order})
    (wait,) = waits_of(runtime, run_id)
    assert (wait.status, wait.event_id) == ("matched", early.id)  # at once, in start_run
    run = wait_for_run(run_id)
    assert run["status"] == "succeeded", run
    assert step_of(run, "after_looked")["result"] == {"seen": payload}
    assert executions(side_channel, run_id, "after_looked") == 1
    # It completed a wait, so it is `matched` now, as if the wait had been open when it came.
    assert rows(runtime, "SELECT outcome FROM events WHERE id = :i", i=early.id)[0].outcome == "matched"


def test_an_earlier_event_outside_the_lookback_or_without_one_leaves_the_wait_to_time_out(
    runtime, kafka, start_worker, start_consumer, wait_for_run, side_channel
):
    start_services(start_worker, start_consumer)
    old, fresh = new_order(), new_order()
    kafka.publish(F.LOOKBACK, {"type": "reply", "order": {"id": old}}, key=old)
    kafka.publish(F.LOOKBACK, {"type": "reply", "order": {"id": fresh}}, key=fresh)
    kafka.flush()
    (stale,) = recorded(runtime, F.LOOKBACK, old, 1)
    (recent,) = recorded(runtime, F.LOOKBACK, fresh, 1)
    with runtime.db.begin() as conn:  # recorded ten minutes ago: before the 5 minute lookback
        conn.execute(text("UPDATE events SET received_at = now() - interval '10 minutes' WHERE id = :i"),
                     {"i": stale.id})

    outside = runtime.engine.start_run("wait-it-lookback", {"order_id": old})
    without = runtime.engine.start_run("wait-it-no-lookback", {"order_id": fresh})
    assert step_status(runtime, outside, "looked") == "waiting"
    assert step_status(runtime, without, "unlooked") == "waiting"

    for run_id, node, event in ((outside, "looked", stale), (without, "unlooked", recent)):
        run = wait_for_run(run_id)
        assert run["status"] == "failed", run
        assert step_of(run, node)["error"] == f"timed out: no matching event on {F.LOOKBACK!r} within 3s"
        (wait,) = waits_of(runtime, run_id)
        assert (wait.status, wait.event_id) == ("timed_out", None)
        assert rows(runtime, "SELECT outcome FROM events WHERE id = :i", i=event.id)[0].outcome == "ignored"
    assert executions(side_channel, outside, "after_looked") == 0
    assert executions(side_channel, without, "after_unlooked") == 0


def test_two_matching_events_on_two_partitions_read_by_two_consumers_complete_the_wait_once(
    runtime, kafka, start_worker, start_consumer, wait_for_run, side_channel
):
    first = start_consumer("first", wait_assigned=False)
    second = start_consumer("second", wait_assigned=False)
    start_worker()

    def held(consumer) -> set[str]:  # noqa: ANN001 - a ConsumerProcess
        return {p for p in consumer.assignment() if p.startswith(F.RACE + "[")}

    def split() -> bool:
        a, b = held(first), held(second)
        return len(a) == 1 and len(b) == 1 and a != b

    wait_for(split, 60, 0.2, "each consumer to hold one partition of the race topic")
    order = new_order()
    run_id = runtime.engine.start_run("wait-it-race", {"order_id": order})
    assert step_status(runtime, run_id, "raced") == "waiting"
    for partition in (0, 1):
        kafka.publish(F.RACE, {"type": "paid", "order": {"id": order}, "via": partition},
                      key=order, partition=partition)
    kafka.flush()
    events = recorded(runtime, F.RACE, order, 2)
    assert sorted(e.partition for e in events) == [0, 1]
    run = wait_for_run(run_id)
    assert run["status"] == "succeeded", run
    assert split(), "the partitions moved while both consumers were alive"

    (wait,) = waits_of(runtime, run_id)
    winner = next(e for e in events if e.id == wait.event_id)
    loser = next(e for e in events if e.id != wait.event_id)
    assert wait.status == "matched"
    assert (winner.outcome, loser.outcome) == ("matched", "ignored")
    assert count(runtime, "SELECT count(*) FROM waits WHERE status = 'matched' AND run_id = :r", r=run_id) == 1
    assert step_of(run, "raced")["result"]["via"] == winner.partition
    assert step_of(run, "after_race")["result"] == {"winner": winner.partition}
    assert executions(side_channel, run_id, "after_race") == 1
    assert first.process.poll() is None and second.process.poll() is None


def test_a_wait_that_times_out_with_fail_fails_the_run(runtime, start_worker, wait_for_run, side_channel):
    start_worker()
    run_id = runtime.engine.start_run("wait-it-timeout-fail", {"order_id": new_order()})
    assert step_status(runtime, run_id, "never-paid") == "waiting"
    run = wait_for_run(run_id)
    assert run["status"] == "failed", run
    assert run["error"] == "step 'never-paid' failed"
    node = step_of(run, "never-paid")
    assert node["status"] == "failed"
    assert node["error"] == f"timed out: no matching event on {F.TIMEOUTS!r} within 2s"
    assert step_of(run, "after_fail")["status"] == "cancelled"
    (wait,) = waits_of(runtime, run_id)
    assert wait.status == "timed_out" and wait.closed_at >= wait.due_at
    assert executions(side_channel, run_id, "after_fail") == 0


def test_a_wait_that_times_out_with_skip_skips_what_only_it_leads_to(
    runtime, start_worker, wait_for_run, side_channel
):
    start_worker()
    run_id = runtime.engine.start_run("wait-it-timeout-skip", {"order_id": new_order()})
    run = wait_for_run(run_id)
    assert run["status"] == "succeeded", run
    assert run["error"] is None
    statuses = {s["name"]: s["status"] for s in run["steps"]}
    assert statuses == {"begin": "succeeded", "maybe-paid": "skipped", "only_if_paid": "skipped",
                        "regardless": "succeeded"}
    (reason,) = rows(runtime, "SELECT reason FROM steps WHERE run_id = :r AND name = 'maybe-paid'", r=run_id)
    assert reason.reason == f"timed out: no matching event on {F.TIMEOUTS!r} within 2s"
    (wait,) = waits_of(runtime, run_id)
    assert wait.status == "timed_out"
    assert executions(side_channel, run_id, "only_if_paid") == 0
    assert executions(side_channel, run_id, "regardless") == 1


def test_cancel_closes_the_wait_and_a_later_matching_event_completes_nothing(
    runtime, kafka, start_worker, start_consumer, wait_for_run, side_channel
):
    start_services(start_worker, start_consumer)
    order = new_order()
    run_id = runtime.engine.start_run("wait-it-later", {"order_id": order})
    waiting(runtime, run_id, "payment")
    assert runtime.engine.cancel_run(run_id)
    run = wait_for_run(run_id, ("cancelled",))
    assert step_of(run, "payment")["status"] == "cancelled"
    (wait,) = waits_of(runtime, run_id)
    assert wait.status == "closed" and wait.closed_at is not None

    kafka.publish(F.PAYMENTS, {"type": "payment.confirmed", "order": {"id": order}}, key=order)
    kafka.flush()
    (event,) = recorded(runtime, F.PAYMENTS, order, 1)
    assert event.outcome == "ignored"
    (wait,) = waits_of(runtime, run_id)
    assert (wait.status, wait.event_id) == ("closed", None)
    assert step_status(runtime, run_id, "payment") == "cancelled"
    assert step_status(runtime, run_id, "ship") == "cancelled"
    assert executions(side_channel, run_id, "ship") == 0


def test_retry_of_a_run_failed_by_a_wait_timeout_reopens_the_wait(
    runtime, kafka, start_worker, start_consumer, wait_for_run, side_channel
):
    """Run `later` gets its event after the retry; run `meanwhile` got it while it was
    failed, and the reopened wait's lookback (from the retry) finds it."""
    start_services(start_worker, start_consumer)
    later_order, meanwhile_order = new_order(), new_order()
    later = runtime.engine.start_run("wait-it-retry", {"order_id": later_order})
    meanwhile = runtime.engine.start_run("wait-it-retry", {"order_id": meanwhile_order})
    for run_id in (later, meanwhile):
        run = wait_for_run(run_id)
        assert run["status"] == "failed" and step_of(run, "reply")["error"].startswith("timed out"), run

    kafka.publish(F.RETRIES, {"type": "reply", "order": {"id": meanwhile_order}, "n": 2}, key=meanwhile_order)
    kafka.flush()
    (early,) = recorded(runtime, F.RETRIES, meanwhile_order, 1)
    assert early.outcome == "ignored"  # the wait had timed out

    assert runtime.engine.retry_run(meanwhile)
    assert runtime.engine.retry_run(later)
    first, again = waits_of(runtime, meanwhile)
    assert (first.status, again.status, again.event_id) == ("timed_out", "matched", early.id)
    assert again.opened_at >= first.closed_at
    assert rows(runtime, "SELECT outcome FROM events WHERE id = :i", i=early.id)[0].outcome == "matched"
    first, again = waits_of(runtime, later)
    assert (first.status, again.status) == ("timed_out", "open")
    assert again.opened_at >= first.closed_at
    assert step_status(runtime, later, "reply") == "waiting"

    kafka.publish(F.RETRIES, {"type": "reply", "order": {"id": later_order}, "n": 1}, key=later_order)
    kafka.flush()
    for run_id, n in ((later, 1), (meanwhile, 2)):
        run = wait_for_run(run_id)
        assert run["status"] == "succeeded", run
        assert step_of(run, "after_reply")["result"] == {"n": n}
        assert executions(side_channel, run_id, "after_reply") == 1
    (event,) = events_of(runtime, F.RETRIES, later_order)
    assert waits_of(runtime, later)[1].event_id == event.id and event.outcome == "matched"


def test_only_the_retried_successors_emits_reach_kafka_and_the_wait_is_not_reopened(
    runtime, kafka, start_worker, start_consumer, wait_for_run
):
    """tests/integration/test_emit_relay.py covers a step's own retries; this is a run's
    retry (`retry_run`) after the step behind a completed wait failed: the wait keeps its
    event, and only the retried attempt's emit is published."""
    start_services(start_worker, start_consumer, ORCHESTRATOR_RELAY_INTERVAL="0.1")
    order = new_order()
    run_id = runtime.engine.start_run("wait-it-later", {"order_id": order, "fail_ship": True})
    waiting(runtime, run_id, "payment")
    payload = {"type": "payment.confirmed", "order": {"id": order}}
    kafka.publish(F.PAYMENTS, payload, key=order)
    kafka.flush()
    run = wait_for_run(run_id)
    assert run["status"] == "failed" and step_of(run, "ship")["status"] == "failed", run
    assert count(runtime, "SELECT count(*) FROM outbox WHERE run_id = :r", r=run_id) == 0

    assert runtime.engine.retry_run(run_id)
    run = wait_for_run(run_id)
    assert run["status"] == "succeeded", run
    assert step_of(run, "ship")["result"]["payment"] == payload
    assert [w.status for w in waits_of(runtime, run_id)] == ["matched"]
    (row,) = rows(runtime, "SELECT * FROM outbox WHERE run_id = :r", r=run_id)
    assert (row.step, row.attempt, row.value) == ("ship", 2, {"order_id": order, "attempt": 2})
    wait_for(lambda: rows(runtime, "SELECT sent_at FROM outbox WHERE id = :i", i=row.id)[0].sent_at,
             30, 0.1, "the relay to send the emit")
    mine = [r for r in kafka.read_all(F.ANNOUNCED) if r.key == order.encode()]
    assert [json.loads(r.value) for r in mine] == [{"order_id": order, "attempt": 2}]
    headers = dict(mine[0].headers)
    assert headers["orchestrator-run-id"] == run_id.encode()
    assert headers["orchestrator-step"] == b"ship"
    assert headers["orchestrator-event-id"] == str(row.event_id).encode()


def test_events_of_other_orders_not_matching_or_not_json_never_complete_the_wait(
    runtime, kafka, start_worker, start_consumer, wait_for_run
):
    consumer = start_services(start_worker, start_consumer)
    order = new_order()
    run_id = runtime.engine.start_run("wait-it-later", {"order_id": order})
    waiting(runtime, run_id, "payment")
    noise: list[Any] = [
        {"type": "payment.confirmed", "order": {"id": new_order()}},   # another order
        {"type": "payment.failed", "order": {"id": order}},            # not the `match`
        {"type": "payment.confirmed", "order": {"number": order}},     # no correlation value
        {"type": "payment.confirmed", "order": {"id": [order]}},       # a value of another type
        b"{not json",
    ]
    for n, value in enumerate(noise):
        kafka.publish(F.PAYMENTS, value, key=f"{order}-noise-{n}")
    kafka.flush()
    seen = recorded(runtime, F.PAYMENTS, order, len(noise))
    assert [e.outcome for e in seen] == ["ignored"] * 4 + ["rejected"]
    assert "not JSON" in seen[-1].reason
    assert step_status(runtime, run_id, "payment") == "waiting"
    (wait,) = waits_of(runtime, run_id)
    assert (wait.status, wait.event_id) == ("open", None)
    letters = wait_for(
        lambda: [r for r in kafka.read_all(F.PAYMENTS + ".dlq") if r.key == f"{order}-noise-4".encode()],
        30, 0.5, "the non-JSON message in the dead-letter topic")
    assert letters[0].value == b"{not json"

    kafka.publish(F.PAYMENTS, {"type": "payment.confirmed", "order": {"id": order}}, key=order)
    kafka.flush()
    run = wait_for_run(run_id)
    assert run["status"] == "succeeded", run
    (right,) = [e for e in events_of(runtime, F.PAYMENTS, order) if e.key == order]
    assert waits_of(runtime, run_id)[0].event_id == right.id
    assert consumer.process.poll() is None, "a bad event stopped the consumer"
