"""Recording events and starting their runs in PostgreSQL (and SQLite), and replaying them.

These drive `record_batch` and `replay_event` in-process, without Kafka: redeliveries,
dedupe values across batches, concurrent consumers racing on one dedupe value, and a
rejected event replayed after its workflow was fixed.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from sqlalchemy import text

from orchestrator import Concurrency, Workflow, kafka_trigger
from orchestrator.db.migrate import upgrade
from orchestrator.dispatch import RecordingDispatcher
from orchestrator.engine import WorkflowEngine
from orchestrator.errors import EventNotFound
from orchestrator.events import EventNotReplayable, record_batch, recorded_events, replay_event
from orchestrator.intake import Message, TriggerIndex, assess
from orchestrator.registry import Registry
from orchestrator.runtime import Runtime
from orchestrator.settings import Settings

LIMIT = 4096

#: Flip to True to "fix" the workflow whose input function is broken.
FIXED = {"value": False}


def _fragile_input(event: dict) -> dict:
    if not FIXED["value"]:
        raise RuntimeError("bug in the input mapping")
    return {"sku": event["sku"]}


def _workflows() -> list[Workflow]:
    orders = Workflow("orders", triggers=[kafka_trigger("orders", match={"type": "order"}, dedupe="id")])

    @orders.step
    def ship(ctx):  # noqa: ANN001, ANN202
        return None

    audit = Workflow("audit", triggers=[kafka_trigger("orders")])

    @audit.step
    def log(ctx):  # noqa: ANN001, ANN202
        return None

    stock = Workflow("stock", triggers=[kafka_trigger("stock", input=_fragile_input)])

    @stock.step
    def count(ctx):  # noqa: ANN001, ANN202
        return None

    @stock.step(after=count, when=lambda ctx: False)
    def never(ctx):  # noqa: ANN001, ANN202
        return None

    def customer_of(data: dict) -> str:
        return data["customer"]["id"]  # raises when the event has no customer

    serial = Workflow("serial", triggers=[kafka_trigger("serial")],
                      concurrency=Concurrency(key=customer_of, limit=1))

    @serial.step
    def handle(ctx):  # noqa: ANN001, ANN202
        return None

    return [orders, audit, stock, serial]


def _engine(database_url: str) -> tuple[WorkflowEngine, Runtime, RecordingDispatcher]:
    settings = Settings(database_url=database_url, workflows=(), max_event_bytes=LIMIT)
    runtime = Runtime(settings)
    dispatcher = RecordingDispatcher()
    engine = WorkflowEngine(runtime.sessions, Registry(_workflows()), dispatcher, settings)
    return engine, runtime, dispatcher


@pytest.fixture(params=["postgresql", "sqlite"])
def recording(request, pg_url: str, clean_state: None, tmp_path: Path):
    FIXED["value"] = False
    if request.param == "postgresql":
        url = pg_url
    else:
        url = f"sqlite:///{tmp_path / 'events.db'}"
        upgrade(url)
    engine, runtime, dispatcher = _engine(url)
    yield engine, runtime, dispatcher
    runtime.close()


def batch(engine: WorkflowEngine, *items: tuple[str, int, object]) -> list:
    index = TriggerIndex(engine.registry)
    return [
        assess(Message(topic, 0, offset, body if isinstance(body, bytes) else json.dumps(body).encode()),
               index, LIMIT)
        for topic, offset, body in items
    ]


def rows(runtime: Runtime, sql: str) -> list:
    with runtime.db.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql))]


def test_a_redelivered_batch_records_nothing_and_starts_nothing(recording):
    engine, runtime, dispatcher = recording
    events = batch(engine, ("orders", 0, {"type": "order", "id": 1}), ("orders", 1, {"type": "note"}),
                   ("orders", 2, b"oops"))
    first = record_batch(engine, events)
    assert (first.recorded, first.duplicates, len(first.run_ids)) == (3, 0, 3)
    assert [d.reason for d in first.dead_letters] == ["not JSON: Expecting value at line 1 column 1"]
    sent = len(dispatcher.sent)
    assert sent == 3

    again = record_batch(engine, events)
    assert (again.recorded, again.duplicates, again.run_ids) == (0, 3, [])
    # The earlier delivery may have died before copying it: it is dead-lettered again.
    assert [(d.event_id, d.reason) for d in again.dead_letters] == [
        (first.dead_letters[0].event_id, "not JSON: Expecting value at line 1 column 1")
    ]
    assert len(dispatcher.sent) == sent
    assert rows(runtime, "SELECT \"offset\", outcome FROM events ORDER BY \"offset\"") == [
        (0, "matched"), (1, "matched"), (2, "rejected")
    ]
    assert rows(runtime, "SELECT count(*), count(DISTINCT event_id) FROM runs") == [(3, 2)]
    raw = rows(runtime, "SELECT raw, payload FROM events WHERE outcome = 'rejected'")
    assert bytes(raw[0][0]) == b"oops" and raw[0][1] is None


def test_recorded_messages_are_recognised_in_one_query_and_not_evaluated_again(recording):
    engine, runtime, dispatcher = recording
    events = batch(engine, ("orders", 0, {"type": "order", "id": 1}), ("orders", 2, b"oops"))
    first = record_batch(engine, events)
    messages = [e.message for e in events] + [Message("orders", 0, 1, b"{}"), Message("orders", 0, 3, b"{}")]
    recorded = recorded_events(engine, messages)
    assert sorted((k, a.outcome, a.event_id is not None) for k, a in recorded.items()) == [
        (("orders", 0, 0), "matched", True), (("orders", 0, 2), "rejected", True)
    ]
    again = record_batch(engine, list(recorded.values()))
    assert (again.recorded, again.duplicates, again.run_ids) == (0, 2, [])
    assert [(d.event_id, d.reason) for d in again.dead_letters] == [
        (first.dead_letters[0].event_id, "not JSON: Expecting value at line 1 column 1")
    ]
    assert rows(runtime, "SELECT count(*) FROM events") == [(2,)]
    assert rows(runtime, "SELECT count(*) FROM runs") == [(2,)]


def test_a_dedupe_value_starts_one_run_across_events_and_batches(recording):
    engine, runtime, _ = recording
    record_batch(engine, batch(engine, ("orders", 0, {"type": "order", "id": 7}),
                               ("orders", 1, {"type": "order", "id": 7})))
    record_batch(engine, batch(engine, ("orders", 2, {"type": "order", "id": 7}),
                               ("orders", 3, {"type": "order", "id": 8})))
    assert rows(runtime, "SELECT dedupe_key, count(*) FROM runs WHERE workflow = 'orders' "
                         "GROUP BY dedupe_key ORDER BY dedupe_key") == [("7", 1), ("8", 1)]
    # Without a dedupe value every event starts its own run.
    assert rows(runtime, "SELECT count(*) FROM runs WHERE workflow = 'audit'") == [(4,)]


def test_runs_from_events_have_their_steps_planned_like_manual_runs(recording):
    engine, runtime, dispatcher = recording
    FIXED["value"] = True
    result = record_batch(engine, batch(engine, ("stock", 0, {"sku": "tea"})))
    [run_id] = result.run_ids
    assert rows(runtime, "SELECT input, status FROM runs")[0][1] == "pending"
    assert sorted(rows(runtime, "SELECT name, status FROM steps")) == [("count", "queued"), ("never", "pending")]
    assert [(d.run_id, d.step) for d in dispatcher.sent] == [(run_id, "count")]


def test_concurrent_consumers_racing_on_one_dedupe_value_start_one_run(recording, request):
    engine, runtime, _ = recording
    if engine.settings.is_sqlite:
        pytest.skip("SQLite serialises writers; the race needs PostgreSQL")
    # Two consumers, two partitions, one order id: a producer's retry landed elsewhere.
    a = [assess(Message("orders", 0, i, json.dumps({"type": "order", "id": i}).encode()),
                TriggerIndex(engine.registry), LIMIT) for i in range(200)]
    b = [assess(Message("orders", 1, i, json.dumps({"type": "order", "id": i}).encode()),
                TriggerIndex(engine.registry), LIMIT) for i in range(200)]
    errors: list[BaseException] = []

    def consume(assessments: list) -> None:
        try:
            for start in range(0, len(assessments), 20):
                record_batch(engine, assessments[start:start + 20])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=consume, args=(x,)) for x in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert rows(runtime, "SELECT count(*) FROM events") == [(400,)]
    assert rows(runtime, "SELECT count(*), count(DISTINCT dedupe_key) FROM runs WHERE workflow = 'orders'") == [(200, 200)]


def test_replaying_a_rejected_event_after_the_fix_starts_its_run_once(recording):
    engine, runtime, dispatcher = recording
    first = record_batch(engine, batch(engine, ("stock", 0, {"sku": "tea"})))
    [letter] = first.dead_letters
    assert letter.reason == "workflow 'stock': input function raised RuntimeError: bug in the input mapping"
    assert first.run_ids == []

    assert replay_event(engine, letter.event_id) == []  # still broken
    FIXED["value"] = True
    [run_id] = replay_event(engine, letter.event_id)
    assert rows(runtime, "SELECT workflow, event_id, input FROM runs") == [
        ("stock", letter.event_id, {"sku": "tea"} if not engine.settings.is_sqlite else '{"sku": "tea"}')
    ]
    assert dispatcher.sent[-1].run_id == run_id
    outcome, reason = rows(runtime, "SELECT outcome, reason FROM events")[0]
    assert outcome == "matched"
    assert reason.startswith("replayed ") and "was rejected: workflow 'stock'" in reason
    assert replay_event(engine, letter.event_id) == []  # at most one run per (event, workflow)


def test_replaying_an_event_that_was_not_json_evaluates_its_raw_bytes(recording):
    engine, runtime, _ = recording
    result = record_batch(engine, batch(engine, ("orders", 0, b"{broken")))
    [letter] = result.dead_letters
    assert replay_event(engine, letter.event_id) == []
    assert rows(runtime, "SELECT outcome FROM events") == [("rejected",)]
    with pytest.raises(EventNotFound):
        replay_event(engine, letter.event_id + 1000)


def test_replaying_a_matched_event_starts_nothing_more(recording):
    engine, runtime, _ = recording
    result = record_batch(engine, batch(engine, ("orders", 0, {"type": "order", "id": 1})))
    assert len(result.run_ids) == 2
    event_id = rows(runtime, "SELECT id FROM events")[0][0]
    assert replay_event(engine, event_id) == []
    assert rows(runtime, "SELECT count(*) FROM runs") == [(2,)]


def test_an_event_without_a_body_cannot_be_replayed(recording):
    engine, runtime, _ = recording
    with runtime.db.begin() as conn:
        conn.execute(text(
            "INSERT INTO events (topic, partition, \"offset\", headers, received_at, outcome, reason) "
            "VALUES ('orders', 0, 0, '[]', CURRENT_TIMESTAMP, 'rejected', 'lost')"
        ))
    event_id = rows(runtime, "SELECT id FROM events")[0][0]
    with pytest.raises(EventNotReplayable, match="re-publish it from orders.dlq"):
        replay_event(engine, event_id)


def test_runs_of_a_limited_workflow_started_by_events_are_admitted_within_the_limit(recording):
    engine, runtime, dispatcher = recording
    result = record_batch(engine, batch(
        engine,
        ("serial", 0, {"customer": {"id": "c1"}, "n": 1}),
        ("serial", 1, {"customer": {"id": "c1"}, "n": 2}),
        ("serial", 2, {"customer": {"id": "c2"}, "n": 3}),
    ))
    assert len(result.run_ids) == 3
    statuses = rows(runtime, "SELECT r.concurrency_key, s.status FROM runs r JOIN steps s ON s.run_id = r.id "
                             "ORDER BY r.created_at, r.concurrency_key")
    by_key: dict[str, list[str]] = {}
    for key, status in statuses:
        by_key.setdefault(key, []).append(status)
    assert sorted(by_key["c1"]) == ["pending", "queued"]  # one at a time per customer
    assert by_key["c2"] == ["queued"]
    assert len(dispatcher.sent) == 2


def test_a_concurrency_key_that_cannot_be_computed_rejects_the_event_not_the_batch(recording):
    engine, runtime, _ = recording
    result = record_batch(engine, batch(
        engine,
        ("serial", 0, {"n": 1}),
        ("serial", 1, {"customer": {"id": "c1"}}),
    ))
    assert len(result.run_ids) == 1
    [letter] = result.dead_letters
    assert letter.message.offset == 0
    assert "cannot compute the concurrency key: KeyError: 'customer'" in letter.reason
    assert rows(runtime, 'SELECT "offset", outcome FROM events ORDER BY "offset"') == [
        (0, "rejected"), (1, "matched")
    ]


def test_a_replay_reads_the_message_as_it_arrived_in_every_format(recording):
    """Key, headers (a non-UTF-8 one too) and value come back exactly: a CloudEvent trigger
    added after the events were recorded reads them, and $key/$headers see the bytes sent."""
    engine, runtime, dispatcher = recording
    ce = [("ce_specversion", b"1.0"), ("ce_id", b"e-1"), ("ce_source", b"/shop"),
          ("ce_type", b"order.created"), ("content-type", b"application/json"), ("bin", b"\xff\x00")]
    index = TriggerIndex(engine.registry)  # no trigger on "cloud" yet: both are ignored
    good = Message("cloud", 0, 0, b'{"total": 120}', key=b"k-1", headers=tuple(ce))
    bad_key = Message("cloud", 0, 1, b"{\"total\": 1}", key=b"\xfe\x00", headers=tuple(ce[:4]))
    recorded = record_batch(engine, [assess(good, index, LIMIT), assess(bad_key, index, LIMIT)])
    assert recorded.outcomes["ignored"] == 2
    ids = [i for (i,) in rows(runtime, 'SELECT id FROM events ORDER BY "offset"')]

    cloud = Workflow("cloud", triggers=[kafka_trigger(
        "cloud", format="cloudevents", match={"type": "order.created"},
        input={"id": "id", "total": "data.total", "key": "$key"})])

    @cloud.step
    def bill(ctx):  # noqa: ANN001, ANN202
        return None

    binary = Workflow("binary", triggers=[kafka_trigger("cloud", format="text", match={"$headers.bin": "x"})])

    @binary.step
    def read(ctx):  # noqa: ANN001, ANN202
        return None

    today = WorkflowEngine(runtime.sessions, Registry([cloud, binary]), dispatcher, engine.settings)
    assert len(replay_event(today, ids[0])) == 1
    [(data,)] = rows(runtime, "SELECT input FROM runs WHERE workflow = 'cloud'")
    assert (json.loads(data) if isinstance(data, str) else data) == {"id": "e-1", "total": 120, "key": "k-1"}
    [(reason,)] = rows(runtime, f"SELECT reason FROM events WHERE id = {ids[0]}")
    assert reason == ("workflow 'binary': match: header 'bin' is not UTF-8 "
                      "(invalid byte at position 0)")
    assert replay_event(today, ids[1]) == []
    [(outcome, reason)] = rows(runtime, f"SELECT outcome, reason FROM events WHERE id = {ids[1]}")
    assert outcome == "rejected"
    assert reason == "workflow 'cloud': input: the message key is not UTF-8 (invalid byte at position 0)"
