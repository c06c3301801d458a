"""Hostile Kafka messages: the intake never raises and rejects each bad event with a reason
(property tests, pure), and a real consumer fed a batch of them stays up, records each one
`rejected` with that reason, copies it to the dead-letter topic, and still starts the runs of
the good events around them (real Tansu broker, consumer and worker processes).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from orchestrator.dead_letters import EVENT_ID_HEADER, REASON_HEADER, SOURCE_HEADER
from orchestrator.intake import (
    MATCHED,
    MAX_NESTING,
    OUTCOMES,
    REJECTED,
    Message,
    TriggerIndex,
    assess,
    headers_json,
    text_of,
)
from tests.fixtures.config import TEST_MAX_EVENT_BYTES
from tests.fixtures.waiting import count, wait_for
from tests.kafka_flows import strict
from tests.security.hostile import corpus, hostile_values, json_objects

#: The `strict` test workflow: a match function that can raise, an input function that can
#: raise, and a schema that wants an integer `n`. Anything else on its topic is refused.
INDEX = TriggerIndex([strict])
TOPIC = strict.triggers[0].topic
#: A size limit large enough that deep nesting is refused for its depth, not its size.
LIMIT = 1024 * 1024
FUZZ = settings(max_examples=150, derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def assessed(value: bytes | None, limit: int = LIMIT, key: bytes | None = None,
             headers: tuple[tuple[str, bytes], ...] = ()) -> Any:
    return assess(Message(TOPIC, 0, 0, value=value, key=key, headers=headers), INDEX, limit)


def assert_storable_text(value: str) -> None:
    """What PostgreSQL's text and JSONB accept: valid UTF-8 without NUL."""
    assert "\x00" not in value
    value.encode("utf-8")


def depth_of(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    return 0


def strings_of(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *strings_of(v)]]
    if isinstance(value, list):
        return [s for v in value for s in strings_of(v)]
    return []


# -- pure: the intake ----------------------------------------------------------------------------

KINDS = hostile_values(LIMIT)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_of_hostile_event_is_rejected_with_a_reason(kind):
    @FUZZ
    @given(value=KINDS[kind])
    def check(value: bytes) -> None:
        result = assessed(value)
        assert result.outcome == REJECTED, (value[:200], result)
        assert result.reason and result.reason.strip()
        assert_storable_text(result.reason)
        assert result.to_start == []

    check()


def test_a_huge_string_is_rejected_for_its_size():
    @FUZZ
    @given(value=hostile_values(TEST_MAX_EVENT_BYTES)["huge-string"])
    def check(value: bytes) -> None:
        assert "over the limit" in assessed(value, TEST_MAX_EVENT_BYTES).reason

    check()


def test_duplicate_keys_are_rejected_as_ambiguous():
    assert assessed(b'{"n": 1, "n": "one"}').reason == "ambiguous JSON: an object has the key 'n' twice"
    nested = assessed(b'{"n": 1, "user": {"id": 1, "id": 2}}')
    assert nested.reason == "ambiguous JSON: an object has the key 'id' twice"


def _mutated(value: bytes, spots: list[tuple[int, int]]) -> bytes:
    data = bytearray(value)
    for where, byte in spots:
        if data:
            data[where % len(data)] = byte
    return bytes(data)


#: Any bytes at all, and well-formed events with a few bytes overwritten.
any_bytes = st.binary(max_size=300) | st.builds(
    _mutated,
    json_objects.map(lambda o: json.dumps(o).encode()),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
)


@FUZZ
@given(value=any_bytes | st.none())
def test_any_message_is_assessed_without_raising_and_only_storable_events_are_accepted(value):
    result = assessed(value)
    assert result.outcome in OUTCOMES
    if result.outcome == REJECTED:
        assert result.reason and result.to_start == []
        assert_storable_text(result.reason)
        return
    assert value is not None
    assert result.payload == json.loads(value)
    assert isinstance(result.payload, dict) and depth_of(result.payload) <= MAX_NESTING
    json.dumps(result.payload, allow_nan=False)
    for item in strings_of(result.payload):
        assert_storable_text(item)


@FUZZ
@given(event=json_objects, n=st.integers(-(2**63), 2**63 - 1))
def test_well_formed_events_are_accepted_as_sent(event, n):
    event = {**{k: v for k, v in event.items() if k != "explode"}, "n": n}
    result = assessed(json.dumps(event).encode())
    assert result.outcome == MATCHED, result.reason
    assert result.payload == event
    assert [d.input for d in result.to_start] == [{"n": n}]


@FUZZ
@given(raw=st.binary(max_size=200), key=st.binary(max_size=50))
def test_keys_headers_and_raw_values_are_stored_as_text_postgresql_accepts(raw, key):
    for value in (text_of(raw), text_of(key)):
        assert_storable_text(value)
    for header in headers_json([(key.decode("latin-1"), raw), ("k", key)]):
        assert_storable_text(header["key"])
        assert_storable_text(header["value"])


# -- real: a hostile batch through a Tansu broker and a consumer process ----------------------------

#: Examples drawn from each kind for the real batch (fixed: the same bytes on every run).
PER_KIND = 4


class RawHeaderKey(str):
    """A header key whose bytes on the wire are not UTF-8, as a non-Python producer may send.

    kafka-python writes `key.encode("utf-8")`; this key answers with its raw bytes instead.
    """

    raw: bytes

    def __new__(cls, raw: bytes) -> RawHeaderKey:
        key = super().__new__(cls, raw.decode("latin-1"))
        key.raw = raw
        return key

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:  # noqa: ARG002
        return self.raw


@pytest.fixture
def settings(kafka_settings):  # noqa: F811 - pytest's fixture, not hypothesis' settings
    return kafka_settings


def test_a_hostile_batch_is_refused_event_by_event_while_good_events_start_runs(
    runtime, kafka, topic_prefix, start_worker, start_consumer, wait_for_run
):
    bad_topic = f"{topic_prefix}bad"
    kafka.create_topic(bad_topic, partitions=1)
    hostile: list[tuple[str, bytes | None]] = [
        (kind, value)
        for kind, strategy in hostile_values(TEST_MAX_EVENT_BYTES).items()
        for value in corpus(strategy, PER_KIND)
    ]
    hostile.append(("tombstone", None))
    start_worker(concurrency=1)
    consumer = start_consumer()

    # A good event before each hostile one, and one at the end; one message whose header key
    # is not UTF-8 (the Kafka client itself cannot read it) in the middle.
    sent: list[tuple[str, bytes | None, str | None]] = []  # (kind, value, expected reason)
    unreadable_at = len(hostile) // 2
    for i, (kind, value) in enumerate(hostile):
        kafka.publish(bad_topic, {"n": i}, key=f"good-{i}")
        sent.append(("good", None, None))
        if i == unreadable_at:  # in a produce request of its own, acknowledged
            kafka.flush()
            kafka.producer.send(bad_topic, value=b'{"n": -1}', key=b"unreadable",
                                headers=[(RawHeaderKey(b"\xff\xfeheader"), b"value")]).get(30)
            sent.append(("unreadable", None, "the Kafka client could not read this message"))
        kafka.publish(bad_topic, value, key=f"bad-{i}", headers=[("kind", kind.encode())])
        # The size limit counts the key and headers too (see intake.check_size).
        expected = assessed(value, TEST_MAX_EVENT_BYTES, f"bad-{i}".encode(), (("kind", kind.encode()),))
        sent.append((kind, value, expected.reason))
    kafka.publish(bad_topic, {"n": len(hostile)}, key="good-last")
    sent.append(("good", None, None))
    kafka.flush()

    wait_for(lambda: count(runtime, "SELECT count(*) FROM events") >= len(sent), 90, 0.2,
             f"{len(sent)} events to be recorded:\n{consumer.output()[-2000:]}")
    with runtime.db.connect() as conn:
        recorded = conn.execute(text(
            'SELECT id, "offset", outcome, reason FROM events ORDER BY "offset"'
        )).all()
    assert [r.offset for r in recorded] == list(range(len(sent)))
    rejected: dict[int, tuple[str, bytes | None, str]] = {}
    for row, (kind, value, reason) in zip(recorded, sent, strict=True):
        if kind == "good":
            assert row.outcome == MATCHED, row
            continue
        assert row.outcome == REJECTED, (kind, value and value[:100], row)
        assert reason is not None and reason in row.reason, (kind, row.reason, reason)
        rejected[row.id] = (kind, value, row.reason)

    good = sum(1 for kind, _, _ in sent if kind == "good")
    wait_for(lambda: count(runtime, "SELECT count(*) FROM runs") == good, 30, 0.2, "a run per good event")
    with runtime.db.connect() as conn:
        run_ids = [str(r) for (r,) in conn.execute(text("SELECT id FROM runs"))]
    for run_id in run_ids:
        assert wait_for_run(run_id, timeout=60)["status"] == "succeeded"

    letters = wait_for(
        lambda: (found := kafka.read_all(f"{bad_topic}.dlq")) and len(found) >= len(rejected) and found,
        30, 0.5, "every rejected event in the dead-letter topic",
    )
    by_event = {int(dict(letter.headers)[EVENT_ID_HEADER]): letter for letter in letters}
    assert set(by_event) == set(rejected)
    for event_id, (kind, value, reason) in rejected.items():
        letter = by_event[event_id]
        headers = dict(letter.headers)
        assert headers[REASON_HEADER].decode() == reason
        assert json.loads(headers[SOURCE_HEADER])[0] == bad_topic
        if kind == "unreadable":  # its bytes could not be had: an empty copy, and the reason
            assert letter.value == b"" and letter.key is None
        else:
            assert letter.value == value, kind
            assert headers["kind"] == kind.encode()

    assert consumer.process.poll() is None, f"the consumer died:\n{consumer.output()[-3000:]}"
    assert "Traceback" not in consumer.output()
