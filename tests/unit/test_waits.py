"""Definitions of nodes that wait are checked at load, with an error naming the node; the
pure parts of matching (correlation values, their hash) agree on both sides."""

from __future__ import annotations

import pytest

from orchestrator import Workflow
from orchestrator import waits as W
from orchestrator.errors import StepNotLoaded, WorkflowDefinitionError
from orchestrator.versions import planning_view, structure, structure_hash


def flow() -> Workflow:
    return Workflow("w")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"topic": "bad topic!"}, "wait 'x': topic='bad topic!' is not a Kafka topic name"),
        ({"topic": ""}, "is not a Kafka topic name"),
        ({"topic": 7}, "is not a Kafka topic name"),
        ({"topic": "t", "timeout": 0}, "wait 'x': timeout=0; use seconds or a span"),
        ({"topic": "t", "timeout": -5}, "timeout=-5"),
        ({"topic": "t", "timeout": "-1h"}, "timeout='-1h'"),
        ({"topic": "t", "timeout": "10 parsecs"}, "timeout='10 parsecs'"),
        ({"topic": "t", "timeout": float("inf")}, "timeout=inf"),
        ({"topic": "t", "timeout": True}, "timeout=True"),
        ({"topic": "t", "timeout": "400d"}, "at most 366 days"),
        ({"topic": "t", "lookback": "0s"}, "lookback='0s'"),
        ({"topic": "t", "correlate": ["order.id"]}, "wait 'x': correlate=['order.id']; use a mapping"),
        ({"topic": "t", "correlate": {"": 1}}, "correlate key '' must be a dotted path"),
        ({"topic": "t", "correlate": {"a": object()}}, "is a object, not a JSON value"),
        ({"topic": "t", "on_timeout": "retry"}, "wait 'x': on_timeout='retry'; use 'fail'"),
        ({"topic": "t", "match": lambda e: True}, "wait 'x': match must be a dict"),
        ({"topic": "t", "match": {"a": {"gt": 1, "bogus": 2}}}, "unknown operator(s) ['bogus']"),
        ({"topic": "t", "match": {"a": {"in": 3}}}, "a.in needs a list"),
    ],
)
def test_bad_wait_for_event_options_name_the_node(kwargs, message):
    with pytest.raises(WorkflowDefinitionError, match="workflow 'w'") as caught:
        flow().wait_for_event("x", **kwargs)
    assert message in str(caught.value)


def test_bad_sleep_and_approval_options_name_the_node():
    with pytest.raises(WorkflowDefinitionError, match="sleep 'nap': give exactly one of duration= or until="):
        flow().sleep("nap")
    with pytest.raises(WorkflowDefinitionError, match="sleep 'nap': give exactly one"):
        flow().sleep("nap", duration=1, until=lambda ctx: None)
    with pytest.raises(WorkflowDefinitionError, match="sleep 'nap': duration=0"):
        flow().sleep("nap", duration=0)
    with pytest.raises(WorkflowDefinitionError, match="sleep 'nap': until='tomorrow'; pass a function"):
        flow().sleep("nap", until="tomorrow")
    with pytest.raises(WorkflowDefinitionError, match="approval 'ok': timeout='soon'"):
        flow().approval("ok", timeout="soon")
    with pytest.raises(WorkflowDefinitionError, match="approval 'ok': on_timeout='approve'"):
        flow().approval("ok", on_timeout="approve")


def test_node_names_are_checked_like_step_names():
    f = flow()
    f.approval("ok")
    with pytest.raises(WorkflowDefinitionError, match="duplicate step name 'ok'"):
        f.sleep("ok", duration=1)
    with pytest.raises(WorkflowDefinitionError, match="needs the node's name first"):
        f.wait_for_event(None, topic="t")  # type: ignore[arg-type]
    with pytest.raises(WorkflowDefinitionError, match="step name 'a b' is invalid"):
        f.approval("a b")


def test_spans_and_seconds():
    assert W.seconds_of("n", "t", "30s") == 30
    assert W.seconds_of("n", "t", "15m") == 900
    assert W.seconds_of("n", "t", "24h") == 86400
    assert W.seconds_of("n", "t", "3d") == 3 * 86400
    assert W.seconds_of("n", "t", 2.5) == 2.5
    assert W.seconds_of("n", "t", "90") == 90


def test_event_and_opener_compute_the_same_correlation():
    paths = W.paths_key({"order.id": None, "shop": None})
    expected = W.correlation_hash([W.canonical("n", "order.id", 42.0), W.canonical("n", "shop", "fr")])
    assert W.event_correlation({"order": {"id": 42}, "shop": "fr"}, paths) == expected
    assert W.event_correlation({"order": {"id": "42"}, "shop": "fr"}, paths) != expected
    assert W.event_correlation({"order": {"id": 42}}, paths) is None
    assert W.event_correlation({"order": {"id": None}, "shop": "fr"}, paths) is None
    assert W.event_correlation({"anything": 1}, "") == W.correlation_hash([])
    with pytest.raises(ValueError, match="the correlation value for 'order.id' is None"):
        W.canonical("n", "order.id", None)


def test_waiting_nodes_are_part_of_the_version_and_survive_a_planning_view():
    f = flow()
    f.wait_for_event("paid", topic="payments", correlate={"order.id": lambda ctx: 1}, timeout="1h")
    f.sleep("nap", after="paid", duration="2h")
    shape = structure(f)
    assert shape["steps"][0]["kind"] == "event"
    assert shape["steps"][0]["wait"]["correlate"] == ["order.id"]
    other = flow()
    other.wait_for_event("paid", topic="payments", correlate={"order.id": lambda ctx: 1}, timeout="2h")
    other.sleep("nap", after="paid", duration="2h")
    assert structure_hash(structure(other)) != structure_hash(shape)
    view = planning_view("w", "old", shape, None)
    assert view.steps["paid"].kind == "event" and view.steps["nap"].wait.duration == 7200
    task_only = flow()
    task_only.step(lambda ctx: 1, name="a")
    assert "kind" not in structure(task_only)["steps"][0]  # old versions keep their hash


def test_waiting_nodes_use_no_queue_and_their_topics_are_known():
    f = flow()
    f.wait_for_event("paid", topic="payments")
    assert f.queues == set()
    assert f.wait_topics == {"payments"}
    assert f.describe()["steps"][0]["wait"]["topic"] == "payments"


def test_a_run_of_an_older_version_reopens_its_wait_with_the_loaded_correlate_function():
    old = flow()
    old.wait_for_event("paid", topic="payments", correlate={"order.id": lambda ctx: 1}, timeout="1h")
    shape = structure(old)
    new = flow()
    new.wait_for_event("paid", topic="payments", correlate={"order.id": lambda ctx: 7}, timeout="2h")
    view = planning_view("w", "old", shape, new)
    wait = view.steps["paid"].wait
    assert wait.timeout == 3600  # the version's option
    assert wait.correlate["order.id"](None) == 7  # the loaded code's function
    gone = planning_view("w", "old", shape, None).steps["paid"].wait
    with pytest.raises(StepNotLoaded, match="the event node 'paid'"):
        gone.correlate["order.id"](None)
