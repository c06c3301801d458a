"""The DSL checks every rule when a workflow is defined, with messages naming the problem."""

from __future__ import annotations

import pytest

from orchestrator import Concurrency, StepContext, Workflow, WorkflowDefinitionError, kafka_trigger
from orchestrator.registry import Registry


def noop(ctx: StepContext) -> None:
    return None


def test_steps_refer_to_upstream_steps_by_object_or_name():
    flow = Workflow("shop")
    first = flow.step(noop, name="first")
    second = flow.step(noop, name="second", after=first)
    flow.step(noop, name="third", after=[second, "first"])
    flow.validate()
    assert flow.steps["third"].after == ("second", "first")
    assert flow.roots() == ["first"]


def test_duplicate_step_names_are_rejected_at_definition():
    flow = Workflow("dup")
    flow.step(noop, name="same")
    with pytest.raises(WorkflowDefinitionError, match="duplicate step name 'same'"):
        flow.step(noop, name="same")


def test_unknown_dependency_is_named_when_the_workflow_is_loaded():
    flow = Workflow("unknown")
    flow.step(noop, name="child", after="ghost")
    with pytest.raises(WorkflowDefinitionError, match="step 'child' depends on unknown step 'ghost'"):
        Registry([flow])


def test_cycles_are_reported_with_their_path():
    flow = Workflow("loop")
    flow.step(noop, name="a", after="c")
    flow.step(noop, name="b", after="a")
    flow.step(noop, name="c", after="b")
    with pytest.raises(WorkflowDefinitionError, match=r"has a cycle: .*a -> .*"):
        flow.validate()


def test_self_dependency_is_a_cycle():
    flow = Workflow("selfish")
    with pytest.raises(WorkflowDefinitionError, match="depends on itself"):
        flow.step(noop, name="me", after="me")


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("retries", -1, "retries=-1"),
        ("retries", 1.5, "retries=1.5"),
        ("backoff", -2, "backoff=-2"),
        ("timeout", 0, "timeout=0"),
        ("when", "yes", "when='yes'"),
        ("queue", "has space", "queue name 'has space' is invalid"),
    ],
)
def test_bad_step_options_fail_when_decorated(option, value, message):
    flow = Workflow("opts")
    with pytest.raises(WorkflowDefinitionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        flow.step(noop, name="s", **{option: value})


#: Out-of-range step options: each is refused when decorated, with the bound in the message.
OUT_OF_RANGE = [
    ("retries", 2**31, "retries=2147483648; use an integer from 0 to 1000"),
    ("retries", 1001, "retries=1001; use an integer from 0 to 1000"),
    ("retries", True, "retries=True; use an integer from 0 to 1000"),
    ("retries", "3", "retries='3'; use an integer from 0 to 1000"),
    ("timeout", float("nan"), "timeout=nan; use a finite number of seconds > 0 and <= 2592000"),
    ("timeout", float("inf"), "timeout=inf; use a finite number of seconds > 0 and <= 2592000"),
    ("timeout", 1e30, "timeout=1e+30; use a finite number of seconds > 0 and <= 2592000"),
    ("timeout", 2592001, "timeout=2592001; use a finite number of seconds > 0 and <= 2592000"),
    ("timeout", -1, "timeout=-1; use a finite number of seconds > 0"),
    ("timeout", True, "timeout=True; use a finite number of seconds > 0"),
    ("backoff", float("inf"), "backoff=inf; use a finite number of seconds >= 0 and <= 2592000"),
    ("backoff", float("nan"), "backoff=nan; use a finite number of seconds >= 0 and <= 2592000"),
    ("backoff", 1e30, "backoff=1e+30; use a finite number of seconds >= 0 and <= 2592000"),
    ("backoff", True, "backoff=True; use a finite number of seconds >= 0"),
    ("max_backoff", float("nan"), "max_backoff=nan; use a finite number of seconds >= 0 and <= 2592000"),
    ("max_backoff", float("inf"), "max_backoff=inf; use a finite number of seconds >= 0 and <= 2592000"),
    ("max_backoff", -1.0, "max_backoff=-1.0; use a finite number of seconds >= 0"),
    ("concurrency", 2**31, "Concurrency limit=2147483648: use an integer from 1 to 1000000"),
]


@pytest.mark.parametrize(("option", "value", "message"), OUT_OF_RANGE)
def test_step_options_the_engine_cannot_use_fail_when_decorated(option, value, message):
    flow = Workflow("opts")
    with pytest.raises(WorkflowDefinitionError) as raised:
        flow.step(noop, name="s", **{option: value})
    assert message in str(raised.value)
    assert "opts" in str(raised.value) or option == "concurrency"


def test_step_options_at_their_bounds_are_accepted():
    flow = Workflow("edges", concurrency=1_000_000)
    step = flow.step(noop, name="s", retries=1000, timeout=2592000, backoff=0, max_backoff=2592000,
                     concurrency=1_000_000)
    assert (step.max_attempts, step.timeout, step.backoff, step.max_backoff) == (1001, 2592000.0, 0.0, 2592000.0)
    assert flow.step(noop, name="t", timeout=0.001, backoff=2592000).timeout == 0.001


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"concurrency": 2**31}, "Concurrency limit=2147483648: use an integer from 1 to 1000000"),
        ({"concurrency": Concurrency(limit=2)} | {"partition_by": "k"}, "partition_by already limits"),
        ({"partition_by": "k", "shards": 2**31}, "shards=2147483648; use an integer from 1 to 1024"),
        ({"partition_by": "k", "shards": True}, "shards=True; use an integer from 1 to 1024"),
    ],
)
def test_workflow_options_the_engine_cannot_use_fail_when_defined(options, message):
    with pytest.raises(WorkflowDefinitionError) as raised:
        Workflow("wide", **options)
    assert message in str(raised.value)


def test_dependency_on_a_step_of_another_workflow_is_rejected():
    one, two = Workflow("one"), Workflow("two")
    step = one.step(noop, name="s")
    with pytest.raises(WorkflowDefinitionError, match="from another workflow"):
        two.step(noop, name="t", after=step)


def test_workflow_names_are_checked_and_unique_in_a_registry():
    with pytest.raises(WorkflowDefinitionError, match="invalid"):
        Workflow("<script>")
    a, b = Workflow("same"), Workflow("same")
    a.step(noop, name="x")
    b.step(noop, name="x")
    with pytest.raises(WorkflowDefinitionError, match="two workflows are named 'same'"):
        Registry([a, b])


def test_an_empty_workflow_is_rejected_on_load():
    with pytest.raises(WorkflowDefinitionError, match="has no steps"):
        Registry([Workflow("empty")])


def test_invalid_input_schema_is_rejected_at_definition():
    with pytest.raises(WorkflowDefinitionError, match="not a valid JSON Schema"):
        Workflow("schema", input_schema={"type": "no-such-type"})


def test_triggers_bind_to_their_workflow_and_describe_themselves():
    flow = Workflow("t", triggers=[kafka_trigger("orders", match={"type": "x"}, dedupe="id")])
    flow.step(noop, name="s", queue="payments")
    described = flow.describe()
    assert described["triggers"] == [
        {"type": "kafka", "topic": "orders", "match": {"type": "x"}, "input": None, "dedupe": "id",
         "format": "json", "window": None}
    ]
    assert described["steps"][0]["queue"] == "payments"
    assert flow.triggers[0].workflow == "t"
    assert flow.queues == {"payments"}
