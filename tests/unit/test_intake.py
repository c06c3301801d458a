"""What becomes of a Kafka message: decoding, trigger matching, input mapping, dedupe keys."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from orchestrator import Workflow, kafka_trigger
from orchestrator.intake import (
    IGNORED,
    MATCHED,
    MAX_NESTING,
    REJECTED,
    Message,
    Rejected,
    TriggerIndex,
    assess,
    decode,
    dedupe_key,
    headers_json,
    headers_of,
    text_of,
)

LIMIT = 1024


def workflow(name: str, *triggers, input_schema=None) -> Workflow:
    flow = Workflow(name, triggers=list(triggers), input_schema=input_schema)

    @flow.step
    def only(ctx):  # noqa: ANN001, ANN202
        return None

    return flow


def message(value, topic: str = "orders", offset: int = 0) -> Message:
    body = value if isinstance(value, bytes) or value is None else json.dumps(value).encode()
    return Message(topic=topic, partition=0, offset=offset, value=body)


# -- decoding -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "message has no value (a tombstone); expected a JSON object"),
        (b"x" * (LIMIT + 1), f"event is {LIMIT + 1} bytes, over the limit of {LIMIT} bytes"),
        (b"\xff\xfe{}", "not JSON: invalid UTF-8 at byte 0"),
        (b"{not json", "not JSON: Expecting property name enclosed in double quotes at line 1 column 2"),
        (b"", "not JSON: Expecting value at line 1 column 1"),
        (b'{"n": NaN}', "not JSON: NaN is not a JSON number"),
        (b'{"n": 1e999}', "not JSON: number 1e999 is out of range"),
        (b'\xef\xbb\xbf{}', "not JSON: Unexpected UTF-8 BOM"),
        (b"[1, 2]", "event is a JSON array, expected a JSON object"),
        (b'"text"', "event is a JSON string, expected a JSON object"),
        (b"42", "event is a JSON number, expected a JSON object"),
        (b"null", "event is a JSON null, expected a JSON object"),
        (b'{"a": "nul \\u0000 inside"}', "event holds a NUL character (\\u0000), which cannot be stored"),
        (b'{"\\u0000": 1}', "event holds a NUL character (\\u0000), which cannot be stored"),
        (b'{"a": "lone \\ud800 surrogate"}', "event holds an unpaired surrogate (\\ud800), which cannot be stored"),
        (b'{"\\uDC00": 1}', "event holds an unpaired surrogate (\\udc00), which cannot be stored"),
    ],
)
def test_undecodable_messages_are_rejected_with_a_reason(value, reason):
    with pytest.raises(Rejected) as caught:
        decode(value, LIMIT)
    assert str(caught.value).startswith(reason)


def test_a_message_exactly_at_the_size_limit_is_accepted():
    body = b'{"pad": "' + b"x" * (LIMIT - 11) + b'"}'
    assert len(body) == LIMIT
    assert decode(body, LIMIT)["pad"].startswith("xxx")


def test_the_size_limit_counts_the_key_and_the_headers_too():
    index = TriggerIndex([workflow("w", kafka_trigger("orders"))])
    value = json.dumps({"a": 1}).encode()  # 8 bytes
    big_key = Message("orders", 0, 0, value, key=b"k" * LIMIT)
    result = assess(big_key, index, LIMIT)
    assert result.outcome == REJECTED
    assert result.reason == (
        f"event is {LIMIT + 8} bytes, over the limit of {LIMIT} bytes (ORCHESTRATOR_MAX_EVENT_BYTES), "
        f"counting the value (8), the key ({LIMIT}) and the headers' names and values (0)"
    )
    big_headers = Message("orders", 0, 1, value, headers=(("trace", b"t" * 510), ("span", b"s" * 510)))
    result = assess(big_headers, index, LIMIT)
    assert result.outcome == REJECTED
    assert f"event is {8 + 1029} bytes, over the limit of {LIMIT} bytes" in result.reason
    assert "the headers' names and values (1029)" in result.reason
    at_limit = Message("orders", 0, 2, value, key=b"k" * (LIMIT - 8 - 3), headers=(("h", b"vv"),))
    assert assess(at_limit, index, LIMIT).outcome == MATCHED


def test_deep_nesting_is_rejected_without_exhausting_the_stack():
    shallow = b'{"a": ' * (MAX_NESTING - 1) + b"1" + b"}" * (MAX_NESTING - 1)
    assert decode(shallow, 10**6)
    deep = b'{"a": ' * (MAX_NESTING + 1) + b"1" + b"}" * (MAX_NESTING + 1)
    with pytest.raises(Rejected, match=f"nested deeper than {MAX_NESTING} levels"):
        decode(deep, 10**6)
    hostile = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(Rejected):
        decode(b'{"a": ' + hostile + b"}", 10**7)


def test_an_escaped_backslash_before_u0000_is_not_a_nul():
    assert decode(b'{"path": "C:\\\\u0000"}', LIMIT) == {"path": "C:\\u0000"}


def test_a_surrogate_pair_is_a_character_not_an_error():
    assert decode(b'{"emoji": "\\ud83d\\ude00"}', LIMIT) == {"emoji": "\U0001F600"}


# -- matching and mapping ---------------------------------------------------------------------


def test_matching_event_starts_a_run_with_the_mapped_input_and_dedupe_key():
    flow = workflow(
        "fulfil",
        kafka_trigger(
            "orders",
            match={"type": "order.created", "order.total": {"gte": 100}},
            input=lambda e: {"order_id": e["order"]["id"]},
            dedupe="order.id",
        ),
    )
    index = TriggerIndex([flow])
    hit = assess(message({"type": "order.created", "order": {"id": 7, "total": 120}}), index, LIMIT)
    assert hit.outcome == MATCHED and hit.reason is None
    [decision] = hit.to_start
    assert (decision.workflow, decision.input, decision.dedupe_key) == ("fulfil", {"order_id": 7}, "7")
    miss = assess(message({"type": "order.created", "order": {"id": 8, "total": 10}}), index, LIMIT)
    assert miss.outcome == IGNORED and miss.to_start == []


def test_default_input_is_the_event_and_topics_are_kept_apart():
    flow = workflow("everything", kafka_trigger("orders"))
    index = TriggerIndex([flow])
    assert index.topics == ["orders"]
    assert assess(message({"a": 1}), index, LIMIT).to_start[0].input == {"a": 1}
    other = assess(message({"a": 1}, topic="payments"), index, LIMIT)
    assert other.outcome == IGNORED and other.decisions == []


def test_one_event_starts_every_workflow_whose_trigger_matches():
    a = workflow("a", kafka_trigger("orders", match={"type": "x"}))
    b = workflow("b", kafka_trigger("orders", match=lambda e: e["n"] > 1))
    c = workflow("c", kafka_trigger("orders", match={"type": "y"}))
    result = assess(message({"type": "x", "n": 2}), TriggerIndex([a, b, c]), LIMIT)
    assert result.outcome == MATCHED
    assert sorted(d.workflow for d in result.to_start) == ["a", "b"]


def test_a_workflow_with_two_matching_triggers_still_starts_one_run_with_the_first():
    flow = workflow(
        "twice",
        kafka_trigger("orders", match={"type": "x"}, input=lambda e: {"by": "first"}),
        kafka_trigger("orders", input=lambda e: {"by": "second"}),
    )
    result = assess(message({"type": "x"}), TriggerIndex([flow]), LIMIT)
    assert [d.input for d in result.to_start] == [{"by": "first"}]


@pytest.mark.parametrize(
    ("trigger", "reason"),
    [
        (kafka_trigger("orders", match=lambda e: e["missing"]),
         "workflow 'w': match function raised KeyError: 'missing'"),
        (kafka_trigger("orders", input=lambda e: 1 / 0),
         "workflow 'w': input function raised ZeroDivisionError: division by zero"),
        (kafka_trigger("orders", input=lambda e: [1, 2]),
         "workflow 'w': input of workflow 'w' must be a JSON object, got list"),
        (kafka_trigger("orders", input=lambda e: {"when": {1, 2}}),
         "workflow 'w': input of workflow 'w' is not JSON-serialisable"),
        (kafka_trigger("orders", input=lambda e: {"s": "a\x00b"}),
         "workflow 'w': input holds a NUL character"),
    ],
)
def test_user_code_that_raises_or_maps_badly_rejects_the_event(trigger, reason):
    result = assess(message({"n": 1}), TriggerIndex([workflow("w", trigger)]), LIMIT)
    assert result.outcome == REJECTED
    assert result.reason.startswith(reason), result.reason
    assert result.to_start == []


def test_input_failing_the_workflow_schema_rejects_the_event_with_where_and_why():
    flow = workflow(
        "typed",
        kafka_trigger("orders"),
        input_schema={"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}},
    )
    index = TriggerIndex([flow])
    bad = assess(message({"n": "seven"}), index, LIMIT)
    assert bad.outcome == REJECTED
    assert bad.reason == "workflow 'typed': input of workflow 'typed' fails its schema at n: 'seven' is not of type 'integer'"
    missing = assess(message({}), index, LIMIT)
    assert "'n' is a required property" in missing.reason
    assert assess(message({"n": 7}), index, LIMIT).outcome == MATCHED


def test_a_rejection_by_one_workflow_does_not_stop_the_others():
    good = workflow("good", kafka_trigger("orders"))
    broken = workflow("broken", kafka_trigger("orders", match=lambda e: e["nope"]))
    result = assess(message({"n": 1}), TriggerIndex([good, broken]), LIMIT)
    assert result.outcome == REJECTED
    assert result.reason == "workflow 'broken': match function raised KeyError: 'nope'"
    assert [d.workflow for d in result.to_start] == ["good"]


def test_user_functions_cannot_change_what_other_workflows_see():
    def grabby(event):  # noqa: ANN001, ANN202
        event["order"]["id"] = "stolen"
        event.clear()
        return True

    first = workflow("first", kafka_trigger("orders", match=grabby))
    second = workflow("second", kafka_trigger("orders"))
    result = assess(message({"order": {"id": 1}}), TriggerIndex([first, second]), LIMIT)
    assert result.payload == {"order": {"id": 1}}
    assert {d.workflow: d.input for d in result.to_start}["second"] == {"order": {"id": 1}}


def test_an_exception_that_cannot_be_printed_still_gives_a_reason():
    class Weird(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    def match(event):  # noqa: ANN001, ANN202
        raise Weird()

    result = assess(message({}), TriggerIndex([workflow("w", kafka_trigger("orders", match=match))]), LIMIT)
    assert result.reason == "workflow 'w': match function raised Weird: (unprintable)"


def test_huge_exception_messages_are_cut_in_the_reason():
    flow = workflow("w", kafka_trigger("orders", match=lambda e: (_ for _ in ()).throw(ValueError("x" * 10_000))))
    result = assess(message({}), TriggerIndex([flow]), LIMIT)
    assert result.outcome == REJECTED and len(result.reason) < 1100


# -- dedupe keys, storage text, messages ---------------------------------------------------------


def test_dedupe_keys_are_kept_short_and_storable():
    assert dedupe_key(None) is None
    assert dedupe_key("order-7") == "order-7"
    long = dedupe_key("x" * 1000)
    assert long.startswith("sha256:") and len(long) == 71
    assert long == dedupe_key("x" * 1000) != dedupe_key("x" * 999)
    assert dedupe_key("a\x00b").startswith("sha256:")


def test_keys_and_headers_are_stored_as_text_without_nul_and_headers_come_back_exactly():
    assert text_of(None) is None
    assert text_of(b"k\x00\xff") == "k\\x00\\xff"
    headers = (("trace", b"abc"), ("bin", b"\x00\x01"), ("latin", b"caf\xe9"), ("empty", b""))
    stored = headers_json(headers)
    assert stored == [
        {"key": "trace", "value": "abc"},
        {"key": "bin", "value": "\\x00\x01", "base64": "AAE="},
        {"key": "latin", "value": "caf\\xe9", "base64": "Y2Fm6Q=="},
        {"key": "empty", "value": ""},
    ]
    assert headers_of(stored) == headers


def test_message_from_a_kafka_python_record():
    record = SimpleNamespace(topic="t", partition=2, offset=9, value=b"{}", key=b"k",
                             headers=[("h", b"v"), ("empty", None)], timestamp=1_700_000_000_000)
    assert Message.from_record(record) == Message(
        "t", 2, 9, b"{}", b"k", (("h", b"v"), ("empty", b"")), 1_700_000_000_000
    )
    no_time = SimpleNamespace(topic="t", partition=0, offset=0, value=None, key=None, headers=None, timestamp=-1)
    assert Message.from_record(no_time).timestamp_ms is None
