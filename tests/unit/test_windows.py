"""Debounce and batch windows: definitions are checked when declared; the window arithmetic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from orchestrator import Batch, Debounce, Workflow, WorkflowDefinitionError, kafka_trigger
from orchestrator.intake import MATCHED, REJECTED, TriggerIndex, decide
from orchestrator.windows import extended, first_closes_at, run_input

T0 = datetime(2026, 12, 1, tzinfo=UTC)


def test_durations_are_parsed_as_elsewhere_in_the_dsl():
    d = Debounce(key="user.id", period="30s", max_wait="5m")
    assert (d.period, d.max_wait) == (30.0, 300.0)
    assert Batch(max_size=500, window="10s").window == 10.0
    assert Batch(max_size=2, window=1.5, key="tenant").key == "tenant"


@pytest.mark.parametrize("make, message", [
    (lambda: Debounce(key="", period="1s"), "key=''"),
    (lambda: Debounce(key="a", period="soon"), "period='soon'"),
    (lambda: Debounce(key="a", period="10s", max_wait="5s"), "shorter than period"),
    (lambda: Batch(max_size=0, window="1s"), "max_size=0"),
    (lambda: Batch(max_size=True, window="1s"), "max_size=True"),
    (lambda: Batch(max_size=10, window="0s"), "window='0s'"),
    (lambda: kafka_trigger("t", debounce=Debounce("a", "1s"), batch=Batch(2, "1s")), "not both"),
    (lambda: kafka_trigger("t", batch=Batch(2, "1s"), dedupe="id"), "dedupe= cannot be used"),
    (lambda: kafka_trigger("t", batch={"max_size": 2}), "batch must be Batch"),
])
def test_bad_window_definitions_fail_when_declared(make, message):
    with pytest.raises(WorkflowDefinitionError, match=message):
        make()


def test_a_debounce_window_closes_a_period_after_the_last_event_but_never_past_max_wait():
    spec = Debounce(key="k", period="2s", max_wait="5s")
    assert first_closes_at(spec, T0) == T0 + timedelta(seconds=2)
    assert extended(spec, T0, T0 + timedelta(seconds=1)) == T0 + timedelta(seconds=3)
    assert extended(spec, T0, T0 + timedelta(seconds=4)) == T0 + timedelta(seconds=5)
    assert extended(Debounce(key="k", period="2s"), T0, T0 + timedelta(hours=1)) == T0 + timedelta(hours=1, seconds=2)


def test_a_batch_window_closes_its_window_after_its_first_event():
    assert first_closes_at(Batch(max_size=3, window="10s"), T0) == T0 + timedelta(seconds=10)


def test_run_inputs_keep_event_order():
    inputs = [(7, {"n": 2}), (3, {"n": 1}), (9, {"n": 3})]
    assert run_input(Batch(max_size=3, window="1s"), inputs) == {"events": [{"n": 1}, {"n": 2}, {"n": 3}]}
    assert run_input(Debounce(key="k", period="1s"), inputs) == {"n": 3, "$events": [3, 7, 9]}


def test_a_matched_event_joins_the_window_of_its_key_and_a_keyless_event_is_rejected():
    flow = Workflow("w", triggers=[kafka_trigger("t", debounce=Debounce(key="user.id", period="1s"))],
                    input_schema={"type": "object", "required": ["user"]})
    (workflow, triggers), = TriggerIndex([flow]).for_topic("t")
    joined = decide(workflow, triggers, {"user": {"id": 42}})
    assert (joined.outcome, joined.window_key, joined.input) == (MATCHED, "42", {"user": {"id": 42}})
    missing = decide(workflow, triggers, {"user": {}})
    assert missing.outcome == REJECTED
    assert missing.reason == "the debounce key 'user.id' is missing from the event (or null)"
    # The schema still checks each event's input.
    assert decide(workflow, triggers, {"id": 1}).outcome == REJECTED


def test_a_keyless_batch_puts_every_event_in_one_window():
    flow = Workflow("b", triggers=[kafka_trigger("t", batch=Batch(max_size=2, window="1s"))])
    (workflow, triggers), = TriggerIndex([flow]).for_topic("t")
    assert decide(workflow, triggers, {"x": 1}).window_key == ""
