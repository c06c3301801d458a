"""The DSL checks every rule when a workflow is defined, with messages naming the problem."""

from __future__ import annotations

import pytest

from orchestrator import StepContext, Workflow, WorkflowDefinitionError, kafka_trigger
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
        {"type": "kafka", "topic": "orders", "match": {"type": "x"}, "input": None, "dedupe": "id"}
    ]
    assert described["steps"][0]["queue"] == "payments"
    assert flow.triggers[0].workflow == "t"
    assert flow.queues == {"payments"}
