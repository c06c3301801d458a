"""The `stock-import` example (workflows/imports.py): trigger rules and its failure handler,
tested as a user tests theirs, with `orchestrator_test`."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.orchestrator(workflows=["workflows"])


def test_a_clean_import_publishes_and_never_alerts(orchestrator_test):
    run = orchestrator_test.start("stock-import", {})
    assert run.status == "succeeded"
    assert run.steps["publish_prices"].status == "succeeded"
    assert run.steps["close_batch"].result == {"closed": True, "loaded": ["load_north", "load_south"]}
    assert (run.steps["alert"].status, run.steps["alert"].reason) == ("skipped", "the run did not fail")


def test_a_broken_feed_still_closes_the_batch_then_alerts_and_fails_the_run(orchestrator_test):
    run = orchestrator_test.start("stock-import", {"broken": ["south"]})
    assert run.status == "failed"
    assert run.error == "step 'load_south' failed"
    steps = run.steps
    assert steps["close_batch"].result == {"closed": True, "loaded": ["load_north"]}
    assert steps["refresh_search"].result == {"refreshed": ["load_north"]}
    assert (steps["publish_prices"].status, steps["publish_prices"].reason) == (
        "cancelled", "step 'load_south' failed")
    assert steps["alert"].result == {"paged": ["load_south"]}


def test_with_both_feeds_broken_one_success_is_cancelled_and_all_done_still_runs(orchestrator_test):
    run = orchestrator_test.start("stock-import", {"broken": ["north", "south"]})
    assert run.status == "failed"
    assert run.steps["refresh_search"].status == "cancelled"
    assert run.steps["close_batch"].status == "succeeded"
    assert run.steps["alert"].result == {"paged": ["load_north", "load_south"]}


def test_a_failing_alert_is_retried_and_the_run_stays_failed(orchestrator_test):
    run = orchestrator_test.start("stock-import", {"broken": ["north"]},
                                  fail={"alert": RuntimeError("pager down")})
    assert run.status == "running" and run.steps["alert"].status == "retrying"
    orchestrator_test.advance("1s")
    orchestrator_test.advance("2s")
    assert run.status == "failed"
    assert [a.error for a in run.steps["alert"].attempts] == ["RuntimeError: pager down"] * 3
