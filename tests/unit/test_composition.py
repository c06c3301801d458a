"""The pure side of composition: item names, checks of `over`'s result, how a map's
items combine, and the definitions' checks (at decoration, and once the registry is whole)."""

from __future__ import annotations

import pytest

from orchestrator import Workflow
from orchestrator import composition as M
from orchestrator.errors import WorkflowDefinitionError
from orchestrator.registry import Registry


def test_item_names_round_trip_and_never_look_like_a_node():
    assert M.item_name("send_invoice", 17) == "send_invoice[17]"
    assert M.parse_item("send_invoice[17]") == ("send_invoice", 17)
    assert M.parse_item("send_invoice") is None
    assert M.node_of("a.b-c[0]") == "a.b-c" and M.node_of("plain") == "plain"


def test_over_must_give_a_list_within_the_limit():
    assert M.items_of("m", [1, 2], 2) == [1, 2]
    with pytest.raises(M.MapOverError, match="over must return a list, got dict"):
        M.items_of("m", {"a": 1}, 10)
    with pytest.raises(M.MapOverError, match="3 items, more than the 2 allowed"):
        M.items_of("m", [1, 2, 3], 2)


def test_map_outcome_in_item_order_with_and_without_allowed_failures():
    ends = [M.ItemEnd(2, "succeeded", "c"), M.ItemEnd(0, "succeeded", "a"), M.ItemEnd(1, "failed", error="boom")]
    assert M.map_outcome("m", ends, allow_failures=True) == (True, ["a", None, "c"], None)
    ok, result, error = M.map_outcome("m", ends, allow_failures=False)
    assert not ok and result is None and error == "item 1 of map 'm' failed: boom"
    assert M.map_outcome("m", [], allow_failures=False) == (True, [], None)


def test_map_definitions_are_checked_when_decorated():
    flow = Workflow("u-maps")
    with pytest.raises(WorkflowDefinitionError, match="'u-maps': map 'a': a map needs over="):
        flow.map(lambda ctx: None, name="a")
    with pytest.raises(WorkflowDefinitionError, match="concurrency=0"):
        flow.map(lambda ctx: None, name="b", over=lambda ctx: [], concurrency=0)
    with pytest.raises(WorkflowDefinitionError, match="allow_failures='yes'"):
        flow.map(lambda ctx: None, name="c", over=lambda ctx: [], allow_failures="yes")
    step = flow.map(lambda ctx: ctx.item, name="d", over=lambda ctx: [1], concurrency=3)
    assert step.kind == "map" and not step.waits and step.map.concurrency == 3
    assert flow.describe()["steps"][0]["map"] == {"concurrency": 3, "allow_failures": False}


def test_calls_name_a_loaded_workflow_and_never_lead_back_to_themselves():
    child = Workflow("u-child")
    child.step(lambda ctx: 1, name="one")
    parent = Workflow("u-parent")
    parent.step(lambda ctx: 1, name="first")
    parent.call("u-child", after="first")
    assert parent.steps["u-child"].waits and parent.calls == {"u-child": "u-child"}
    Registry([parent, child])  # whole: fine
    with pytest.raises(WorkflowDefinitionError, match="call 'u-child' names unknown workflow 'u-child'"):
        Registry([parent])
    a, b = Workflow("u-a"), Workflow("u-b")
    a.call("u-b")
    b.call("u-a")
    with pytest.raises(WorkflowDefinitionError, match=r"leads? back to itself \(u-a -> u-b -> u-a\)"):
        Registry([a, b])
    with pytest.raises(WorkflowDefinitionError, match="input=42"):
        Workflow("u-c").call("u-child", input=42)


def test_output_must_be_a_function():
    with pytest.raises(WorkflowDefinitionError, match="output="):
        Workflow("u-out", output={"a": 1})
