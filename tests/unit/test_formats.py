"""Event formats (json, text, cloudevents) and the `$key` / `$headers.<name>` paths."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator import kafka_trigger
from orchestrator.errors import ConfigurationError, WorkflowDefinitionError
from orchestrator.formats import Readings, Rejected, binary_headers, decode_cloudevent, decode_text
from orchestrator.intake import IGNORED, MATCHED, REJECTED, Message, TriggerIndex, assess
from tests.unit.test_intake import workflow

LIMIT = 4096
CE = [("ce_specversion", b"1.0"), ("ce_id", b"e-1"), ("ce_source", b"/shop"),
      ("ce_type", b"com.shop.order.created")]
JSON_DATA = [("content-type", b"application/json")]
STRUCTURED = [("content-type", b"application/cloudevents+json")]


def assessed(value, *triggers, key=None, headers=(), topic="t", flows=None):
    index = TriggerIndex(flows or [workflow("w", *triggers)])
    return assess(Message(topic, 0, 0, value, key=key, headers=tuple(headers)), index, LIMIT)


def cloudevent(value, headers):
    return decode_cloudevent(value, headers, LIMIT)


# -- text ------------------------------------------------------------------------------------


def test_text_is_the_value_as_utf8_text():
    assert decode_text("héllo {not json".encode()) == {"text": "héllo {not json"}
    assert decode_text(b"") == {"text": ""}


@pytest.mark.parametrize(("value", "reason"), [
    (b"ok\xffthen", "not UTF-8 text: invalid byte at position 2"),
    (None, "message has no value (a tombstone); expected UTF-8 text"),
    (b"a\x00b", "text holds a NUL character (\\u0000), which cannot be stored"),
])
def test_text_that_cannot_be_read_is_rejected_with_where(value, reason):
    with pytest.raises(Rejected, match=None) as caught:
        decode_text(value)
    assert str(caught.value) == reason


def test_a_text_trigger_starts_a_run_with_the_text_and_stores_no_payload():
    result = assessed(b"deploy done", kafka_trigger("t", format="text", match={"text": "deploy done"}))
    assert result.outcome == MATCHED and result.decisions[0].input == {"text": "deploy done"}
    assert result.payload is None
    as_json = assessed(b'{"a": 1}', kafka_trigger("t", format="text"))
    assert as_json.decisions[0].input == {"text": '{"a": 1}'} and as_json.payload == {"a": 1}


# -- CloudEvents ------------------------------------------------------------------------------


def test_a_binary_mode_cloudevent_is_its_attributes_and_json_data():
    event = cloudevent(b'{"total": 120}', [*CE, ("ce_subject", b"order-7"),
                                           ("ce_time", b"2026-12-04T10:00:00.5Z"),
                                           ("ce_tenant", b"acme"), *JSON_DATA,
                                           ("traceparent", b"\xff binary, not ours")])
    assert event == {
        "id": "e-1", "source": "/shop", "type": "com.shop.order.created", "specversion": "1.0",
        "subject": "order-7", "time": "2026-12-04T10:00:00.5Z", "datacontenttype": "application/json",
        "tenant": "acme", "data": {"total": 120},
    }


def test_a_cloudevent_without_time_has_none_and_the_key_is_no_attribute():
    event = cloudevent(b"[1, 2]", CE)
    assert event["time"] is None and event["subject"] is None and event["data"] == [1, 2]
    assert "partitionkey" not in event
    readings = Readings(b"{}", CE, LIMIT)
    assert readings.event("cloudevents")["data"] == {}


def test_binary_mode_data_that_is_not_json_is_text_or_base64():
    assert cloudevent(b"plain words", [*CE, ("content-type", b"text/plain")])["data"] == "plain words"
    binary = cloudevent(b"\x00\xff", [*CE, ("content-type", b"application/octet-stream")])
    assert binary["data"] is None and binary["data_base64"] == "AP8="
    assert json.dumps(binary)  # storable as JSON
    assert cloudevent(None, CE)["data"] is None  # no data at all is a valid CloudEvent


def test_a_structured_mode_cloudevent_is_read_from_the_value():
    body = {"specversion": "1.0", "id": "s-1", "source": "/shop", "type": "com.shop.order.created",
            "time": "2026-12-04T10:00:00+02:00", "data": {"total": 99}, "region": "eu"}
    event = cloudevent(json.dumps(body).encode(), [("content-type", b"application/cloudevents+json; charset=utf-8")])
    assert event == {"id": "s-1", "source": "/shop", "type": "com.shop.order.created", "specversion": "1.0",
                     "subject": None, "time": "2026-12-04T10:00:00+02:00", "region": "eu",
                     "data": {"total": 99}}
    b64 = {**body, "data": None}
    del b64["data"]
    b64["data_base64"] = "AP8="
    event = cloudevent(json.dumps(b64).encode(), STRUCTURED)
    assert event["data"] is None and event["data_base64"] == "AP8="


@pytest.mark.parametrize(("value", "headers", "reason"), [
    (b"{}", [], "no ce_specversion header (binary mode) and content-type is not application/cloudevents+json"),
    (b"{}", CE[1:], "no ce_specversion header (binary mode needs ce_specversion, ce_id, ce_source, ce_type)"),
    (b"{}", [*CE[:1], *CE[2:]], "no ce_id header"),
    (b"{}", [("ce_specversion", b"0.3"), *CE[1:]], "specversion: Attribute 'specversion' must be '1.0'"),
    (b"{}", [*CE, ("ce_time", b"yesterday")], "ce_time 'yesterday' is not an RFC 3339 timestamp"),
    (b"{}", [*CE, ("ce_time", b"2026-12-04")], "ce_time '2026-12-04' has no time zone"),
    (b"{}", [*CE, ("ce_Bad-Name", b"x")], "should only contain lowercase letters and numbers"),
    (b"{}", [*CE, ("ce_type", b"\xffx")], "header 'ce_type' is not UTF-8 (invalid byte at position 0)"),
    (b"{oops", [*CE, *JSON_DATA], "its data is not JSON (content-type application/json): not JSON: "),
    (b"{oops", CE, "its data is not JSON (content-type absent, so application/json)"),
    (b"[1]", STRUCTURED, "structured mode needs a JSON object, not a JSON array"),
    (b"not json", STRUCTURED, "structured mode needs a JSON object: not JSON"),
    (b'{"specversion": "1.0", "id": "1", "source": "/s"}', STRUCTURED, "no type attribute"),
    (b'{"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "time": "later"}', STRUCTURED,
     "time 'later' is not an RFC 3339 timestamp"),
    (b'{"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "data": 1, "data_base64": "AA=="}',
     STRUCTURED, "it has both data and data_base64"),
    (b'{"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "data_base64": "@@"}',
     STRUCTURED, "data_base64 is not base64"),
    (b"{}", [("content-type", b"application/cloudevents-batch+json")], "only structured mode in"),
])
def test_a_message_that_is_not_a_valid_cloudevent_is_rejected_with_the_reason(value, headers, reason):
    with pytest.raises(Rejected) as caught:
        cloudevent(value, headers)
    assert str(caught.value).startswith("not a CloudEvent: ")
    assert reason in str(caught.value)


def test_match_and_input_apply_to_the_cloudevent():
    trigger = kafka_trigger("t", format="cloudevents",
                            match={"type": "com.shop.order.created", "data.total": {"gte": 100}})
    big = assessed(b'{"total": 120}', trigger, headers=CE)
    assert big.outcome == MATCHED and big.decisions[0].input["data"] == {"total": 120}
    assert big.payload == {"total": 120}  # the value is JSON: stored as the payload
    assert assessed(b'{"total": 20}', trigger, headers=CE).outcome == IGNORED
    invalid = assessed(b'{"total": 120}', trigger)
    assert invalid.outcome == REJECTED and invalid.reason.startswith("not a CloudEvent: no ce_specversion")


def test_publish_headers_make_a_cloudevent_the_intake_reads():
    headers = binary_headers("com.shop.order.created", "/cli", "id-1", datetime(2026, 12, 4, 9, tzinfo=UTC))
    assert dict(headers)["ce_time"] == b"2026-12-04T09:00:00Z"
    event = cloudevent(b'{"n": 1}', headers)
    assert (event["id"], event["time"], event["datacontenttype"], event["data"]) == (
        "id-1", "2026-12-04T09:00:00Z", "application/json", {"n": 1})


# -- formats on one topic -----------------------------------------------------------------------


def test_an_unknown_format_is_a_configuration_error_naming_it():
    with pytest.raises(ConfigurationError, match="format='xml' is not an event format"):
        kafka_trigger("t", format="xml")
    with pytest.raises(WorkflowDefinitionError):  # and a definition error, like the others
        kafka_trigger("t", format="JSON")


def test_a_message_no_format_of_its_topic_reads_is_rejected_with_each_reason():
    flows = [workflow("j", kafka_trigger("t")), workflow("c", kafka_trigger("t", format="cloudevents"))]
    result = assessed(b"\xff", flows=flows)
    assert result.outcome == REJECTED
    assert result.reason == ("no trigger's format reads it: json: not JSON: invalid UTF-8 at byte 0; "
                             "cloudevents: not a CloudEvent: no ce_specversion header (binary mode) and "
                             "content-type is not application/cloudevents+json (structured mode)")


def test_a_trigger_whose_format_cannot_read_a_message_does_not_match_it():
    flows = [workflow("j", kafka_trigger("t")), workflow("c", kafka_trigger("t", format="cloudevents"))]
    plain = assessed(b'{"a": 1}', flows=flows)
    assert sorted((d.workflow, d.outcome) for d in plain.decisions) == [("c", IGNORED), ("j", MATCHED)]
    both = assessed(b'{"a": 1}', headers=CE, flows=flows)
    assert [d.outcome for d in both.decisions] == [MATCHED, MATCHED]


def test_each_format_is_decoded_once_per_message(monkeypatch):
    import orchestrator.formats as formats

    calls = []
    real = formats.decode_cloudevent
    monkeypatch.setattr(formats, "decode_cloudevent", lambda *a: calls.append(1) or real(*a))
    flows = [workflow(f"w{n}", kafka_trigger("t", format="cloudevents"), kafka_trigger("t", format="cloudevents"))
             for n in range(3)]
    assert assessed(b"{}", headers=CE, flows=flows).outcome == MATCHED
    assert len(calls) == 1


# -- $key and $headers ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "text", "cloudevents"])
def test_key_and_header_paths_are_read_in_every_format(fmt):
    value = b'{"n": 1}'
    trigger = kafka_trigger("t", format=fmt, match={"$key": "k-7", "$headers.tenant": "acme"},
                            input={"key": "$key", "tenant": "$headers.tenant", "missing": "$headers.nope"})
    headers = [*CE, ("tenant", b"other"), ("tenant", b"acme")]  # the last of a name counts
    result = assessed(value, trigger, key=b"k-7", headers=headers)
    assert result.outcome == MATCHED
    assert result.decisions[0].input == {"key": "k-7", "tenant": "acme"}
    assert assessed(value, trigger, key=b"k-8", headers=headers).outcome == IGNORED
    assert assessed(value, trigger, headers=headers).outcome == IGNORED  # no key


def test_input_dict_reads_event_paths_too():
    trigger = kafka_trigger("t", input={"order": "order.id", "user": "$key"})
    result = assessed(b'{"order": {"id": 7}}', trigger, key=b"u1")
    assert result.decisions[0].input == {"order": 7, "user": "u1"}
    assert trigger.describe()["input"] == {"order": "order.id", "user": "$key"}


def test_key_or_header_that_is_not_utf8_rejects_the_event_when_a_path_reads_it():
    reads = kafka_trigger("t", match={"$headers.bin": "x"})
    result = assessed(b"{}", reads, headers=[("bin", b"ab\xff")])
    assert result.outcome == REJECTED
    assert result.reason == "workflow 'w': match: header 'bin' is not UTF-8 (invalid byte at position 2)"
    key = assessed(b"{}", kafka_trigger("t", input={"k": "$key"}), key=b"\xfe")
    assert key.reason == "workflow 'w': input: the message key is not UTF-8 (invalid byte at position 0)"
    ignores = assessed(b"{}", kafka_trigger("t"), key=b"\xfe", headers=[("bin", b"\xff")])
    assert ignores.outcome == MATCHED  # nobody reads them: no objection


def test_dedupe_and_window_keys_read_key_and_headers():
    from orchestrator import Debounce

    dedupe = kafka_trigger("t", dedupe="$headers.request-id")
    assert assessed(b"{}", dedupe, headers=[("request-id", b"r-1")]).decisions[0].dedupe_key == "r-1"
    debounce = kafka_trigger("t", debounce=Debounce(key="$key", period="1s"))
    assert assessed(b"{}", debounce, key=b"user-1").decisions[0].window_key == "user-1"
    bad = assessed(b"{}", debounce, key=b"\xff")
    assert bad.reason == "workflow 'w': debounce key: the message key is not UTF-8 (invalid byte at position 0)"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"match": {"$key.x": 1}}, "use '$key' for the message key"),
    ({"match": {"$headers": 1}}, "or '$headers.<name>' for a header"),
    ({"match": {"$headers.": 1}}, "names no header"),
    ({"input": {"a": 1}}, "must map a field name to a path string"),
    ({"input": {}}, "input must be a function of the event or a non-empty dict"),
    ({"input": "order"}, "input must be a function of the event or a non-empty dict"),
    ({"dedupe": "$key.id"}, "dedupe path '$key.id'"),
])
def test_bad_paths_fail_at_definition(kwargs, message):
    with pytest.raises(WorkflowDefinitionError) as caught:
        kafka_trigger("t", **kwargs)
    assert message in str(caught.value)


def test_a_match_function_gets_the_event_not_the_envelope():
    trigger = kafka_trigger("t", format="text", match=lambda e: e["text"].startswith("go"))
    assert assessed(b"go now", trigger).outcome == MATCHED
    assert trigger.describe()["format"] == "text"


_HEADER_NAMES = st.sampled_from(["ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "ce_x",
                                 "ce_data", "content-type", "tenant", "CE_TYPE"])
_HEADER_VALUES = st.one_of(st.sampled_from([b"1.0", b"application/json", b"application/cloudevents+json",
                                            b"2026-12-04T10:00:00Z", b"text/plain"]), st.binary(max_size=12))


@settings(max_examples=300, deadline=None)
@given(value=st.one_of(st.none(), st.binary(max_size=64),
                       st.sampled_from([b'{"specversion": "1.0", "id": "1", "source": "s", "type": "t"}',
                                        b'{"total": 1}', b"[]", b'"x"'])),
       headers=st.lists(st.tuples(_HEADER_NAMES, _HEADER_VALUES), max_size=8),
       key=st.one_of(st.none(), st.binary(max_size=4)))
def test_any_message_is_assessed_in_every_format_without_raising(value, headers, key):
    flows = [workflow("c", kafka_trigger("t", format="cloudevents", input={"k": "$key", "t": "$headers.tenant"})),
             workflow("x", kafka_trigger("t", format="text")), workflow("j", kafka_trigger("t"))]
    result = assessed(value, key=key, headers=headers, flows=flows)
    assert result.outcome in (MATCHED, IGNORED, REJECTED)
    assert result.outcome != REJECTED or result.reason
    for decision in result.decisions:
        if decision.outcome == MATCHED:
            json.dumps(decision.input, allow_nan=False)
