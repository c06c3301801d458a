"""The planner decides, without I/O, what a run does next."""

from __future__ import annotations

import pytest

from orchestrator import planner as P
from orchestrator.dag import validate_dag

DIAMOND = {"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c")}


def test_new_run_queues_only_roots():
    decision = P.plan(DIAMOND, dict.fromkeys(DIAMOND, P.PENDING))
    assert decision.queue == ["a"]
    assert decision.run_status is None


def test_fan_out_queues_all_children_at_once():
    statuses = {"a": P.SUCCEEDED, "b": P.PENDING, "c": P.PENDING, "d": P.PENDING}
    assert P.plan(DIAMOND, statuses).queue == ["b", "c"]


def test_fan_in_waits_for_every_parent():
    statuses = {"a": P.SUCCEEDED, "b": P.SUCCEEDED, "c": P.RUNNING, "d": P.PENDING}
    assert P.plan(DIAMOND, statuses).queue == []
    statuses["c"] = P.SUCCEEDED
    assert P.plan(DIAMOND, statuses).queue == ["d"]


def test_child_of_only_skipped_parents_is_skipped_in_cascade():
    deps = {"a": (), "b": ("a",), "c": ("b",), "d": ("c",)}
    statuses = {"a": P.SKIPPED, "b": P.PENDING, "c": P.PENDING, "d": P.PENDING}
    decision = P.plan(deps, statuses)
    assert decision.skip == ["b", "c", "d"]
    assert decision.run_status == P.RUN_SUCCEEDED


def test_child_of_one_skipped_and_one_succeeded_parent_runs():
    statuses = {"a": P.SUCCEEDED, "b": P.SKIPPED, "c": P.SUCCEEDED, "d": P.PENDING}
    assert P.plan(DIAMOND, statuses).queue == ["d"]


def test_a_failed_step_cancels_pending_steps_and_waits_for_active_ones():
    statuses = {"a": P.SUCCEEDED, "b": P.FAILED, "c": P.RUNNING, "d": P.PENDING}
    decision = P.plan(DIAMOND, statuses)
    assert decision.cancel == ["d"]
    assert decision.queue == []
    assert decision.run_status is None
    statuses["c"] = P.SUCCEEDED
    assert P.plan(DIAMOND, statuses).run_status == P.RUN_FAILED


def test_run_succeeds_when_every_step_succeeded_or_was_skipped():
    assert P.run_outcome([P.SUCCEEDED, P.SKIPPED]) == P.RUN_SUCCEEDED
    assert P.run_outcome([P.SUCCEEDED, P.RETRYING]) is None
    assert P.run_outcome([P.SUCCEEDED, P.CANCELLED]) == P.RUN_CANCELLED


def test_retry_reruns_failed_cancelled_and_downstream_but_not_succeeded():
    statuses = {"a": P.SUCCEEDED, "b": P.FAILED, "c": P.SUCCEEDED, "d": P.CANCELLED}
    assert P.affected_by_retry(DIAMOND, statuses) == ["b", "d"]


def test_backoff_is_exponential_and_capped():
    assert [P.backoff_delay(n, 2.0, 300) for n in (1, 2, 3, 4)] == [2.0, 4.0, 8.0, 16.0]
    assert P.backoff_delay(20, 2.0, 300) == 300
    assert 2.0 <= P.backoff_delay(1, 2.0, 300, jitter=0.5) <= 3.0
    with pytest.raises(ValueError):
        P.backoff_delay(0, 1, 1)


def test_topological_order_respects_dependencies():
    order = validate_dag("w", DIAMOND)
    assert order.index("a") < order.index("b") < order.index("d")
    assert order.index("c") < order.index("d")
