"""`ctx.emit` checks its arguments at the call, so a bad emit fails the step, not the relay."""

from __future__ import annotations

import uuid

import pytest

from orchestrator import InvalidEmit, InvalidInput, StepContext
from orchestrator.emits import MAX_EMITS_PER_ATTEMPT, headers_json, headers_of_json, make_emit


def ctx(attempt: int = 1) -> StepContext:
    return StepContext("00000000-0000-0000-0000-000000000001", "wf", "step", {}, {}, attempt=attempt)


def test_an_emit_is_collected_with_a_fresh_event_id():
    c = ctx()
    first = c.emit("orders.shipped", {"id": 1}, key="c-1", headers={"trace": "abc", "bin": b"\x00\xff"})
    second = c.emit("orders.shipped", [1, 2])
    assert [e.value for e in c.emits] == [{"id": 1}, [1, 2]]
    assert first != second and uuid.UUID(first) and c.emits[0].event_id == first
    assert c.emits[0].key == "c-1" and c.emits[1].key is None
    assert c.emits[0].headers == (("trace", b"abc"), ("bin", b"\x00\xff"))


@pytest.mark.parametrize("topic", ["", ".", "..", "has space", "a" * 250, "semi;colon", 7, None])
def test_a_topic_that_kafka_refuses_is_refused(topic):
    with pytest.raises(InvalidEmit, match="is not a Kafka topic name"):
        ctx().emit(topic, {})


@pytest.mark.parametrize("value, why", [
    ({1, 2}, "not JSON-serialisable"),
    (float("nan"), "not JSON-serialisable"),
    ({"s": "\x00"}, "NUL"),
    ("\ud800", "unpaired surrogate"),
])
def test_a_value_that_is_not_json_is_refused(value, why):
    with pytest.raises(InvalidInput, match=why):
        ctx().emit("t", value)


def test_the_key_must_be_a_string_or_none():
    with pytest.raises(InvalidEmit, match="key must be a string or None, got bytes"):
        ctx().emit("t", 1, key=b"k")
    with pytest.raises(InvalidEmit, match="key must be a string or None, got int"):
        ctx().emit("t", 1, key=3)


@pytest.mark.parametrize("headers, why", [
    ([("a", "b")], "headers must be a mapping"),
    ({"a": 1}, "must be str or bytes, got int"),
    ({1: "x"}, "non-empty string"),
    ({"": "x"}, "non-empty string"),
    ({"Orchestrator-Event-Id": "forged"}, "is reserved"),
])
def test_headers_must_map_names_to_str_or_bytes(headers, why):
    with pytest.raises(InvalidEmit, match=why):
        ctx().emit("t", 1, headers=headers)


def test_a_condition_cannot_emit():
    with pytest.raises(InvalidEmit, match="`when` condition"):
        ctx(attempt=0).emit("t", 1)


def test_one_attempt_emits_at_most_the_limit():
    c = ctx()
    c.emits.extend([make_emit("t", 1)] * MAX_EMITS_PER_ATTEMPT)
    with pytest.raises(InvalidEmit, match=f"at most {MAX_EMITS_PER_ATTEMPT}"):
        c.emit("t", 1)


def test_headers_survive_json_storage_text_and_bytes_alike():
    headers = (("text", "héllo".encode()), ("nul", b"a\x00b"), ("bin", b"\xff\xfe"))
    stored = headers_json(headers)
    assert stored[0] == {"key": "text", "value": "héllo"}
    assert "base64" in stored[1] and "base64" in stored[2]
    assert headers_of_json(stored) == list(headers)
