"""Trigger matching on dotted paths, input mapping and dedupe keys."""

from __future__ import annotations

import pytest

from orchestrator import WorkflowDefinitionError, kafka_trigger
from orchestrator.triggers import matches

EVENT = {"type": "order.created", "order": {"id": 7, "total": 120.5, "items": [{"sku": "tea"}]}}


@pytest.mark.parametrize(
    ("conditions", "expected"),
    [
        ({"type": "order.created"}, True),
        ({"type": "order.cancelled"}, False),
        ({"order.total": {"gte": 100}}, True),
        ({"order.total": {"lte": 100}}, False),
        ({"order.total": {"gt": 120.5}}, False),
        ({"order.id": {"in": [1, 7]}}, True),
        ({"order.id": {"nin": [7]}}, False),
        ({"order.coupon": {"exists": False}}, True),
        ({"order.coupon": {"exists": True}}, False),
        ({"order.items.0.sku": "tea"}, True),
        ({"order.items.5.sku": "tea"}, False),
        ({"order.total": {"gte": "100"}}, False),  # no ordering across types
        ({"type": "order.created", "order.total": {"gte": 100, "lt": 200}}, True),
        ({"missing.path": None}, False),
    ],
)
def test_match_conditions(conditions, expected):
    assert matches(conditions, EVENT) is expected


def test_predicate_input_mapping_and_dedupe():
    trigger = kafka_trigger(
        "orders",
        match=lambda e: e["order"]["total"] > 100,
        input=lambda e: {"order_id": e["order"]["id"]},
        dedupe="order.id",
    )
    assert trigger.matches(EVENT)
    assert trigger.run_input(EVENT) == {"order_id": 7}
    assert trigger.dedupe_value(EVENT) == "7"
    assert trigger.dedupe_value({"order": {}}) is None


def test_bad_trigger_definitions_fail_at_definition():
    with pytest.raises(WorkflowDefinitionError, match="topic"):
        kafka_trigger("")
    with pytest.raises(WorkflowDefinitionError, match="needs a list"):
        kafka_trigger("t", match={"a": {"in": 5}})
    with pytest.raises(WorkflowDefinitionError, match="unknown operator"):
        kafka_trigger("t", match={"a": {"gte": 1, "bogus": 2}})
    with pytest.raises(WorkflowDefinitionError, match="match must be"):
        kafka_trigger("t", match=["type"])
