"""Who may run under a concurrency limit: pure choices, and the DSL's checks."""

from __future__ import annotations

import pytest

from orchestrator import Concurrency, StepContext, Workflow, WorkflowDefinitionError
from orchestrator.concurrency import choose
from orchestrator.ring import queue_for


def noop(ctx: StepContext) -> None:
    return None


RUNNING = ["r1"]
PENDING = ["p1", "p2", "p3"]


def test_queue_admits_oldest_pending_into_free_slots():
    assert choose("queue", 1, RUNNING, PENDING) == ([], [], [])
    assert choose("queue", 3, RUNNING, PENDING) == (["p1", "p2"], [], [])


def test_cancel_newest_cancels_what_does_not_fit():
    assert choose("cancel_newest", 1, RUNNING, PENDING) == ([], PENDING, [])
    assert choose("cancel_newest", 2, RUNNING, PENDING) == (["p1"], ["p2", "p3"], [])


def test_cancel_in_progress_lets_the_newest_win():
    assert choose("cancel_in_progress", 1, RUNNING, PENDING) == (["p3"], ["p1", "p2"], ["r1"])
    assert choose("cancel_in_progress", 2, RUNNING, ["p1"]) == (["p1"], [], [])
    assert choose("cancel_in_progress", 1, RUNNING, []) == ([], [], [])


def test_concurrency_keys_come_from_the_input():
    limit = Concurrency(key="order.customer_id")
    assert limit.key_for({"order": {"customer_id": 42}}) == "42"
    assert limit.key_for({}) == "null"
    assert Concurrency().key_for({"anything": 1}) == ""
    assert Concurrency(key=lambda data: data["c"].upper()).key_for({"c": "ab"}) == "AB"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"limit": 0}, "limit=0"),
        ({"strategy": "drop"}, "strategy='drop'"),
        ({"key": ""}, "key=''"),
    ],
)
def test_bad_concurrency_options_fail_at_definition(kwargs, message):
    with pytest.raises(WorkflowDefinitionError, match=message):
        Concurrency(**kwargs)


def test_partition_by_orders_runs_per_key_on_ring_shards():
    flow = Workflow("ordered", partition_by="customer", shards=4)
    step = flow.step(noop, name="s")
    assert flow.concurrency == Concurrency(key="customer", limit=1)
    assert flow.shard_queues == tuple(f"ordered.shard-{i}" for i in range(4))
    assert flow.queue_of(step, "c-7") == queue_for("ordered", "c-7", 4)
    with pytest.raises(WorkflowDefinitionError, match="needs partition_by"):
        Workflow("bad", shards=2)
    with pytest.raises(WorkflowDefinitionError, match="already limits runs"):
        Workflow("bad", partition_by="a", concurrency=3)


def test_step_concurrency_only_queues():
    flow = Workflow("steps")
    step = flow.step(noop, name="s", concurrency=2)
    assert step.concurrency == Concurrency(limit=2)
    with pytest.raises(WorkflowDefinitionError, match="must be 'queue'"):
        flow.step(noop, name="t", concurrency=Concurrency(strategy="cancel_newest"))
