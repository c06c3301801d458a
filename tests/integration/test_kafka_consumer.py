"""Kafka events start workflows: real Tansu broker, real `orchestrator consume` processes,
real Celery workers, PostgreSQL state.

Each test has topics and a consumer group of its own (see tests/fixtures/).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import pytest
from sqlalchemy.engine import make_url

from orchestrator.dead_letters import EVENT_ID_HEADER, REASON_HEADER, SOURCE_HEADER
from orchestrator.tansu import TansuBroker
from tests.fixtures.config import ROOT, TEST_MAX_EVENT_BYTES, kafka_env
from tests.fixtures.kafka import Kafka
from tests.fixtures.private import TcpProxy
from tests.fixtures.waiting import count, wait_for


@pytest.fixture
def settings(kafka_settings):
    """Everything in these tests (workers included) loads the workflows with triggers."""
    return kafka_settings


def topic(prefix: str, name: str) -> str:
    return f"{prefix}{name}"


def events_recorded(runtime, n: int, timeout: float = 60) -> None:
    wait_for(lambda: count(runtime, "SELECT count(*) FROM events") >= n, timeout, 0.2,
             f"{n} events to be recorded")


def test_an_event_starts_each_workflow_whose_trigger_matches(
    runtime, settings, kafka, topic_prefix, redis_url, start_worker, start_consumer, wait_for_run, side_channel
):
    orders = topic(topic_prefix, "orders")
    kafka.create_topic(orders, partitions=2)
    start_worker(concurrency=2)
    start_consumer()
    # The CLI a user tries first: it prints where the event landed.
    published = subprocess.run(
        [sys.executable, "-m", "orchestrator", "publish", orders,
         json.dumps({"type": "order.created", "order": {"id": 41, "total": 150}}), "--key", "41"],
        env=kafka_env(settings, topic_prefix, redis_url), cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert published.returncode == 0, published.stderr
    assert published.stdout.startswith(f"published to {orders} partition ")
    assert " offset 0" in published.stdout
    kafka.publish(orders, {"type": "order.created", "order": {"id": 42, "total": 50}}, key="42")
    kafka.publish(orders, {"type": "order.shipped", "order": {"id": 41}}, key="41")
    kafka.flush()
    events_recorded(runtime, 3)
    wait_for(lambda: count(runtime, "SELECT count(*) FROM runs") == 3, 30, 0.2, "three runs")

    with runtime.db.connect() as conn:
        from sqlalchemy import text

        runs = conn.execute(text(
            "SELECT r.id, r.workflow, r.input, e.payload -> 'order' ->> 'id', e.outcome "
            "FROM runs r JOIN events e ON e.id = r.event_id ORDER BY r.workflow, e.offset"
        )).all()
        outcomes = sorted(o for (o,) in conn.execute(text("SELECT outcome FROM events")))
    assert outcomes == ["ignored", "matched", "matched"]
    assert [(w, order) for _, w, _, order, _ in runs] == [
        ("order-audit", "41"), ("order-audit", "42"), ("order-fulfilment", "41")
    ]
    fulfilment = runs[2]
    assert fulfilment[2] == {"order_id": 41, "total": 150}
    for run_id, *_ in runs:
        assert wait_for_run(str(run_id))["status"] == "succeeded"
    assert int(side_channel.get(f"exec:{fulfilment[0]}:reserve")) == 1

    listed = subprocess.run(
        [sys.executable, "-m", "orchestrator", "events", "--json", "--topic", orders],
        env=kafka_env(settings, topic_prefix, redis_url), cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    items = json.loads(listed.stdout)
    assert sorted(len(i["runs"]) for i in items) == [0, 1, 2]


def test_the_same_event_published_twice_with_one_dedupe_value_starts_one_run(
    runtime, kafka, topic_prefix, start_worker, start_consumer, wait_for_run, side_channel
):
    orders = topic(topic_prefix, "orders")
    kafka.create_topic(orders, partitions=2)
    start_worker(concurrency=1)
    start_consumer()
    event = {"type": "order.created", "order": {"id": 7, "total": 300}}
    kafka.publish(orders, event, key="7")
    kafka.flush()
    kafka.publish(orders, event, key="7")  # a producer's retry: same event, new offset
    kafka.flush()
    events_recorded(runtime, 2)
    wait_for(lambda: count(runtime, "SELECT count(*) FROM runs WHERE workflow = 'order-audit'") == 2,
             30, 0.2, "an audit run per event")
    assert count(runtime, "SELECT count(*) FROM events WHERE outcome = 'matched'") == 2
    assert count(runtime, "SELECT count(*) FROM runs WHERE workflow = 'order-fulfilment'") == 1
    from sqlalchemy import text

    with runtime.db.connect() as conn:
        (run_id,) = conn.execute(text("SELECT id FROM runs WHERE workflow = 'order-fulfilment'")).one()
    assert wait_for_run(str(run_id))["status"] == "succeeded"
    time.sleep(0.5)
    assert int(side_channel.get(f"exec:{run_id}:reserve")) == 1


BAD_EVENTS = [
    (b"this is not json", "not JSON: Expecting value at line 1 column 1"),
    (b"[1, 2, 3]", "event is a JSON array, expected a JSON object"),
    (json.dumps({"explode": "match", "n": 1}).encode(),
     "workflow 'strict': match function raised ValueError: match function exploded on purpose"),
    (json.dumps({"explode": "input", "n": 1}).encode(),
     "workflow 'strict': input function raised KeyError: 'input function exploded on purpose'"),
    (json.dumps({"n": 1, "pad": "x" * TEST_MAX_EVENT_BYTES}).encode(),
     f"bytes, over the limit of {TEST_MAX_EVENT_BYTES} bytes (ORCHESTRATOR_MAX_EVENT_BYTES)"),
    (json.dumps({"n": "seven"}).encode(),
     "workflow 'strict': input of workflow 'strict' fails its schema at n: 'seven' is not of type 'integer'"),
]


def test_each_kind_of_bad_event_lands_in_the_dead_letter_topic_while_good_ones_start_runs(
    runtime, kafka, topic_prefix, start_worker, start_consumer, wait_for_run
):
    bad = topic(topic_prefix, "bad")
    kafka.create_topic(bad, partitions=1)
    start_worker(concurrency=2)
    consumer = start_consumer()
    n = 0
    for value, _reason in BAD_EVENTS:
        n += 1
        kafka.publish(bad, {"n": n}, key=f"good-{n}")  # a good event before each bad one
        kafka.publish(bad, value, key=f"bad-{n}", headers=[("trace", f"t{n}".encode())])
    kafka.publish(bad, {"n": 99}, key="good-last")
    kafka.flush()
    total = 2 * len(BAD_EVENTS) + 1
    events_recorded(runtime, total)

    from sqlalchemy import text

    with runtime.db.connect() as conn:
        recorded = conn.execute(text(
            'SELECT id, "offset", outcome, reason FROM events ORDER BY "offset"'
        )).all()
    rejected = [r for r in recorded if r.outcome == "rejected"]
    assert [r.offset for r in rejected] == [1, 3, 5, 7, 9, 11]
    for row, (_value, reason) in zip(rejected, BAD_EVENTS, strict=True):
        assert reason in row.reason, (row.reason, reason)
    assert {r.outcome for r in recorded if r.outcome != "rejected"} == {"matched"}

    good_runs = wait_for(lambda: count(runtime, "SELECT count(*) FROM runs") == len(BAD_EVENTS) + 1 or None,
                         30, 0.2, "a run per good event")
    assert good_runs
    with runtime.db.connect() as conn:
        run_ids = [str(r) for (r,) in conn.execute(text("SELECT id FROM runs"))]
    for run_id in run_ids:
        assert wait_for_run(run_id)["status"] == "succeeded"

    letters = wait_for(lambda: len(kafka.read_all(bad + ".dlq")) == len(BAD_EVENTS) and kafka.read_all(bad + ".dlq"),
                       30, 0.5, "every bad event in the dead-letter topic")
    # The dead-letter topic has partitions of its own: match copies to events by event id.
    expected = {row.id: (row.offset, value, reason)
                for row, (value, reason) in zip(rejected, BAD_EVENTS, strict=True)}
    seen = set()
    for letter in letters:
        headers = {k: v.decode() for k, v in letter.headers}
        event_id = int(headers[EVENT_ID_HEADER])
        offset, value, reason = expected[event_id]
        seen.add(event_id)
        assert reason in headers[REASON_HEADER]
        assert json.loads(headers[SOURCE_HEADER]) == [bad, 0, offset]
        assert headers["trace"] == f"t{(offset + 1) // 2}"
        assert letter.value == value
        assert letter.key == f"bad-{(offset + 1) // 2}".encode()
    assert seen == set(expected)
    assert consumer.process.poll() is None, "a bad event stopped the consumer"


def test_an_oversized_key_or_headers_reject_the_event_like_an_oversized_value(
    runtime, kafka, topic_prefix, start_consumer
):
    bad = topic(topic_prefix, "bad")
    kafka.create_topic(bad, partitions=1)
    consumer = start_consumer()
    big_key = "k" * TEST_MAX_EVENT_BYTES
    big_headers = [("trace", b"t" * (TEST_MAX_EVENT_BYTES // 2)), ("span", b"s" * (TEST_MAX_EVENT_BYTES // 2))]
    kafka.publish(bad, {"n": 1}, key="small")
    kafka.publish(bad, {"n": 2}, key=big_key)
    kafka.publish(bad, {"n": 3}, key="small", headers=big_headers)
    kafka.publish(bad, {"n": 4}, key="small")
    kafka.flush()
    events_recorded(runtime, 4)

    from sqlalchemy import text

    with runtime.db.connect() as conn:
        events = conn.execute(text('SELECT "offset", outcome, reason FROM events ORDER BY "offset"')).all()
    assert [e.outcome for e in events] == ["matched", "rejected", "rejected", "matched"]
    limit = f"over the limit of {TEST_MAX_EVENT_BYTES} bytes (ORCHESTRATOR_MAX_EVENT_BYTES)"
    assert limit in events[1].reason and f"the key ({TEST_MAX_EVENT_BYTES})" in events[1].reason
    assert limit in events[2].reason
    assert f"the headers' names and values ({TEST_MAX_EVENT_BYTES + 9})" in events[2].reason
    letters = wait_for(lambda: len(kafka.read_all(bad + ".dlq")) == 2 and kafka.read_all(bad + ".dlq"),
                       30, 0.5, "both oversized events in the dead-letter topic")
    assert sorted(letter.key == big_key.encode() for letter in letters) == [False, True]
    assert wait_for(lambda: count(runtime, "SELECT count(*) FROM runs") == 2 or None, 30, 0.2, "two runs")
    assert consumer.process.poll() is None


def test_a_workflow_whose_planning_fails_does_not_stop_the_others_the_event_matched(
    runtime, kafka, topic_prefix, start_consumer
):
    split = topic(topic_prefix, "split")
    kafka.create_topic(split, partitions=1)
    consumer = start_consumer()
    kafka.publish(split, {"type": "split", "n": 1})  # split-key cannot compute its key
    kafka.publish(split, {"type": "split", "n": 2, "customer": {"id": "c2"}})
    kafka.flush()
    events_recorded(runtime, 2)

    from sqlalchemy import text

    with runtime.db.connect() as conn:
        events = conn.execute(text('SELECT "offset", outcome, reason FROM events ORDER BY "offset"')).all()
        runs = conn.execute(text(
            'SELECT e."offset", r.workflow, r.status FROM runs r JOIN events e ON e.id = r.event_id '
            'ORDER BY e."offset", r.workflow'
        )).all()
    assert [(o, w) for o, w, _ in runs] == [(0, "split-ok"), (1, "split-key"), (1, "split-ok")]
    assert all(status in ("running", "pending") for *_, status in runs), runs
    assert [outcome for _, outcome, _ in events] == ["rejected", "rejected"]
    unexpected = "workflow 'split-bug': could not plan a run: RuntimeError: routing table unavailable"
    assert unexpected in events[0].reason and unexpected in events[1].reason
    assert "workflow 'split-key': cannot compute the concurrency key: KeyError: 'customer'" in events[0].reason
    assert "split-key" not in events[1].reason
    letters = wait_for(lambda: len(kafka.read_all(split + ".dlq")) == 2 or None, 30, 0.5,
                       "both events in the dead-letter topic")
    assert letters
    assert consumer.process.poll() is None


def test_a_slow_match_function_slows_the_consumer_down_but_never_stalls_it(
    runtime, settings, kafka, topic_prefix, start_consumer, side_channel
):
    # Each event takes SLOW_MATCH_SECONDS to assess and a batch holds all of them: assessed
    # in one go it would outlast the poll interval, lose the partitions, and start over.
    from tests.faults.harness import committed_offsets
    from tests.kafka_flows import SLOW_MATCH_SECONDS

    slow = topic(topic_prefix, "slow")
    kafka.create_topic(slow, partitions=2)
    total, poll_interval = 20, 12
    assert total * SLOW_MATCH_SECONDS > poll_interval
    consumer = start_consumer(ORCHESTRATOR_KAFKA_MAX_POLL_INTERVAL=str(poll_interval))
    started = time.monotonic()
    for i in range(total):
        kafka.publish(slow, {"i": i}, partition=i % 2)
    kafka.flush()

    def committed() -> int:
        return sum(o for (t, _), o in committed_offsets(settings.kafka_bootstrap, settings.kafka_group).items()
                   if t == slow)

    wait_for(lambda: committed() == total or None, 30 + 2 * total * SLOW_MATCH_SECONDS, 0.5,
             f"the group to commit all {total} offsets of {slow}")
    elapsed = time.monotonic() - started
    time.sleep(1.0)  # anything still in flight would show up as an extra row or call now
    assert count(runtime, "SELECT count(*) FROM events") == total
    assert count(runtime, 'SELECT count(DISTINCT ("partition", "offset")) FROM events') == total
    assert count(runtime, "SELECT count(*) FROM runs") == total
    assert count(runtime, "SELECT count(DISTINCT event_id) FROM runs") == total
    calls = {i: int(side_channel.get(f"match:{i}") or 0) for i in range(total)}
    assert calls == dict.fromkeys(range(total), 1), "a trigger was evaluated again for a recorded event"
    assert consumer.process.poll() is None
    output = consumer.output()
    slow_lines = [line for line in output.splitlines() if "assessing events is slow" in line]
    assert len(slow_lines) == 1, output[-3000:]
    assert "workflow 'slow-match'" in slow_lines[0] and "s per event" in slow_lines[0]
    print(f"{total} slow events committed in {elapsed:.1f}s")


def test_a_thousand_events_survive_a_consumer_killed_mid_stream(
    runtime, kafka, topic_prefix, start_consumer
):
    load = topic(topic_prefix, "load")
    kafka.create_topic(load, partitions=4)
    first = start_consumer("first", ORCHESTRATOR_KAFKA_BATCH_SIZE="25")
    total = 1000

    def produce() -> None:
        for i in range(total):
            kafka.publish(load, {"type": "load", "i": i}, key=str(i))
            if i % 50 == 49:
                kafka.flush()
                time.sleep(0.05)
        kafka.flush()

    producer = threading.Thread(target=produce)
    producer.start()
    events_recorded(runtime, 300)
    first.kill(signal.SIGKILL)  # wherever it is: mid-batch, between commit and offset commit...
    first.process.wait(10)
    at_kill = count(runtime, "SELECT count(*) FROM events")
    second = start_consumer("second", ORCHESTRATOR_KAFKA_BATCH_SIZE="25")
    producer.join(60)
    events_recorded(runtime, total, timeout=90)
    wait_for(lambda: count(runtime, "SELECT count(*) FROM runs") >= total, 30, 0.2, "a run per event")
    time.sleep(1.0)  # anything still in flight would show up as an extra row now

    assert at_kill < total
    assert count(runtime, "SELECT count(*) FROM events") == total
    assert count(runtime, "SELECT count(DISTINCT (payload ->> 'i')::int) FROM events") == total
    assert count(runtime, "SELECT count(*) FROM runs") == total
    assert count(runtime, "SELECT count(DISTINCT event_id) FROM runs") == total
    assert second.stop() == 0
    report = second.report()
    assert report["events"] == total - at_kill


def test_two_consumers_split_the_partitions_and_the_survivor_takes_over(
    runtime, kafka, topic_prefix, start_consumer
):
    load = topic(topic_prefix, "load")
    kafka.create_topic(load, partitions=4)
    first = start_consumer("first")
    second = start_consumer("second")
    everything = {f"{load}[{p}]" for p in range(4)}

    def held(consumer) -> set[str]:  # noqa: ANN001 - the other trigger topics are split too
        return {p for p in consumer.assignment() if p.startswith(load + "[")}

    def split() -> bool:
        a, b = held(first), held(second)
        return bool(a) and bool(b) and not (a & b) and (a | b) == everything

    wait_for(split, 60, 0.2, "the two consumers to split the four partitions")
    for i in range(400):
        kafka.publish(load, {"type": "load", "i": i}, partition=i % 4)
    kafka.flush()
    events_recorded(runtime, 400)
    assert split(), "the partitions moved while both consumers were alive"

    second.kill(signal.SIGKILL)
    wait_for(lambda: held(first) == everything, 60, 0.2, "the survivor to take every partition")
    for i in range(400, 800):
        kafka.publish(load, {"type": "load", "i": i}, partition=i % 4)
    kafka.flush()
    events_recorded(runtime, 800)
    wait_for(lambda: count(runtime, "SELECT count(*) FROM runs") >= 800, 30, 0.2, "a run per event")
    time.sleep(0.5)
    assert count(runtime, "SELECT count(*) FROM events") == 800
    assert count(runtime, "SELECT count(DISTINCT event_id) FROM runs") == 800
    assert count(runtime, "SELECT count(*) FROM runs") == 800
    assert first.stop() == 0, first.output()[-2000:]
    assert "consumer stopped" in first.output()


def test_the_consumer_waits_for_a_broker_that_went_away_and_carries_on(
    runtime, topic_prefix, start_consumer, tmp_path, request
):
    broker = TansuBroker(log_path=tmp_path / "own-tansu.log").start()
    request.addfinalizer(broker.stop)
    kafka = Kafka(broker.bootstrap)
    request.addfinalizer(kafka.close)
    load = topic(topic_prefix, "load")
    kafka.create_topic(load, partitions=1)
    for i in range(20):
        kafka.publish(load, {"type": "load", "i": i})
    kafka.flush()
    # This test's consumer uses a broker of its own, which the test is free to stop.
    consumer = start_consumer("steady", ORCHESTRATOR_KAFKA_BOOTSTRAP=broker.bootstrap)
    events_recorded(runtime, 20)

    broker.kill()
    kafka.close()
    time.sleep(6)  # several reconnect attempts' worth
    assert consumer.process.poll() is None, consumer.output()[-3000:]
    assert consumer.output().count("is unavailable") == 1, consumer.output()[-3000:]

    broker.start()  # same port, empty: topics must be created again
    kafka = Kafka(broker.bootstrap)
    request.addfinalizer(kafka.close)
    kafka.create_topic(load, partitions=1)
    # The producer sends its events again, then new ones; offsets restart at 0 on the new broker.
    for i in range(40):
        kafka.publish(load, {"type": "load", "i": i})
    kafka.flush()
    events_recorded(runtime, 40, timeout=90)
    wait_for(lambda: count(runtime, "SELECT count(*) FROM runs") >= 40, 30, 0.2, "a run per event")
    assert count(runtime, "SELECT count(*) FROM events") == 40
    assert count(runtime, "SELECT count(DISTINCT (payload ->> 'i')::int) FROM events") == 40
    assert count(runtime, "SELECT count(*) FROM runs") == 40
    output = consumer.output()
    assert output.count("is unavailable") == 1 and output.count("is back after") == 1, output[-3000:]
    assert consumer.stop() == 0, consumer.output()[-3000:]


def test_the_consumer_waits_for_a_database_that_went_away_and_loses_nothing(
    runtime, settings, kafka, topic_prefix, start_consumer
):
    proxy = TcpProxy("127.0.0.1", make_url(settings.database_url).port or 5432).start()
    load = topic(topic_prefix, "load")
    kafka.create_topic(load, partitions=1)
    consumer = start_consumer("patient", ORCHESTRATOR_DATABASE_URL=proxy.url(settings.database_url))
    for i in range(10):
        kafka.publish(load, {"type": "load", "i": i})
    kafka.flush()
    events_recorded(runtime, 10)

    proxy.cut()  # the database goes away: open connections drop, new ones are refused
    for i in range(10, 30):
        kafka.publish(load, {"type": "load", "i": i})
    kafka.flush()
    time.sleep(4)
    assert count(runtime, "SELECT count(*) FROM events") == 10
    assert consumer.process.poll() is None, consumer.output()[-3000:]
    assert consumer.output().count("the database is unavailable") == 1, consumer.output()[-3000:]

    proxy.restore()
    events_recorded(runtime, 30)
    wait_for(lambda: count(runtime, "SELECT count(*) FROM runs") >= 30, 30, 0.2, "a run per event")
    time.sleep(0.5)
    assert count(runtime, "SELECT count(*) FROM events") == 30
    assert count(runtime, "SELECT count(DISTINCT (payload ->> 'i')::int) FROM events") == 30
    assert count(runtime, "SELECT count(*) FROM runs") == 30
    assert consumer.output().count("the database is back after") == 1, consumer.output()[-3000:]
    assert consumer.stop() == 0
