"""Maps and calls through the harness (the real engine on SQLite, in-process workers)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.orchestrator(workflows=["tests.harness.compose_flows"])


def test_map_results_in_item_order_reach_the_successor(orchestrator_test):
    run = orchestrator_test.start("c-fanout", {"n": 5})
    assert run.status == "succeeded", run
    assert run.steps["square"].result == [0, 1, 4, 9, 16]
    assert run.steps["total"].result == {"sum": 30, "count": 5}


def test_empty_map_succeeds_at_once(orchestrator_test):
    run = orchestrator_test.start("c-fanout", {"n": 0})
    assert run.status == "succeeded", run
    assert run.steps["square"].result == []


def test_an_item_retries_then_succeeds(orchestrator_test):
    run = orchestrator_test.start("c-fanout", {"n": 3, "fail": 1})
    orchestrator_test.advance("2s")  # the retry's backoff
    assert run.status == "succeeded", run
    assert run.steps["square"].result == [0, 1, 4]


def test_an_item_out_of_retries_fails_the_map(orchestrator_test):
    run = orchestrator_test.start("c-fanout", {"n": 3, "fail": 2, "fail_times": 5})
    orchestrator_test.advance("2s")
    assert run.status == "failed", run
    assert "item 2 of map 'square' failed" in run.steps["square"].error
    assert run.steps["total"].status == "cancelled"


def test_allow_failures_keeps_none_and_the_errors(orchestrator_test):
    run = orchestrator_test.start("c-lenient", {"items": [1, -2, 3]})
    assert run.status == "succeeded", run
    assert run.steps["summary"].result == {"results": [1, None, 3], "errors": {"1": "ValueError: negative: -2"}}


def test_over_that_is_not_a_list_fails_the_node(orchestrator_test):
    run = orchestrator_test.start("c-bad-over", {"items": {"a": 1}})
    assert run.status == "failed"
    assert run.steps["each"].error == "map 'each': over must return a list, got dict"


def test_call_waits_for_the_child_and_gets_its_output(orchestrator_test):
    run = orchestrator_test.start("c-parent", {"x": 4})
    assert run.status == "succeeded", run
    assert run.steps["c-child"].result == {"doubled": 8}
    assert run.steps["use"].result == {"got": {"doubled": 8}}


def test_child_failure_retries_then_fails_the_node(orchestrator_test):
    run = orchestrator_test.start("c-parent", {"fail": True})
    orchestrator_test.advance("2s")
    assert run.status == "failed", run
    assert "child run" in run.steps["c-child"].error and "child broke" in run.steps["c-child"].error
    children = orchestrator_test.runs("c-child")
    assert len(children) == 2 and all(c.status == "failed" for c in children)


def test_start_run_starts_a_detached_run(orchestrator_test):
    run = orchestrator_test.start("c-starter")
    assert run.status == "succeeded"
    children = orchestrator_test.runs("c-child")
    assert len(children) == 1 and children[0].status == "succeeded"


def test_a_failure_elsewhere_cancels_the_child_the_run_no_longer_waits_for(orchestrator_test):
    run = orchestrator_test.start("c-sibling")
    assert run.status == "failed", run
    assert run.steps["slow"].status == "cancelled"
    (child,) = orchestrator_test.runs("c-slow-child")
    assert child.status == "cancelled"


def test_a_limited_workflow_expands_its_map_once_admitted_and_when_can_skip_it(orchestrator_test):
    run = orchestrator_test.start("c-limited", {"items": ["a", "b"]})
    assert run.status == "succeeded" and run.steps["each_limited"].result == ["A", "B"]
    skipped = orchestrator_test.start("c-limited", {"items": ["a"], "skip": True})
    assert skipped.status == "succeeded" and skipped.steps["each_limited"].status == "skipped"


def test_retrying_a_failed_map_expands_it_again(orchestrator_test):
    run = orchestrator_test.start("c-limited", {"items": ["a", "bad"]})
    assert run.status == "failed"
    assert orchestrator_test.retry(run)
    # Still bad: the items were expanded anew (not left cancelled), and failed again.
    assert run.status == "failed" and "item 1 of map 'each_limited' failed" in run.steps["each_limited"].error


def test_a_child_can_map(orchestrator_test):
    run = orchestrator_test.start("c-nested")
    assert run.status == "succeeded", run
    assert run.steps["inner"].result == {"total": 14}


def test_a_skipped_parent_skips_the_map_and_the_call_after_it(orchestrator_test):
    run = orchestrator_test.start("c-skips", {"go": False})
    assert run.status == "succeeded", run
    assert [run.steps[n].status for n in ("gate", "after_gate", "child_after_gate", "last")] == ["skipped"] * 4
    assert orchestrator_test.runs("c-child") == []
    ran = orchestrator_test.start("c-skips", {"go": True})
    assert ran.status == "succeeded", ran
    assert ran.steps["last"].result == {"doubled": 4}
