"""workflows/nightly.py, tested as a user would test it (`orchestrator_test`)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.orchestrator(workflows=["workflows.nightly", "workflows.reports"])


def test_every_customer_is_invoiced_the_report_is_a_child_run_and_the_books_close(orchestrator_test):
    run = orchestrator_test.start("nightly-invoices", {"region": "eu", "customers": ["a", "b", "c"]})
    assert run.status == "succeeded", run
    assert run.steps["send_invoice"].result == [{"customer": c, "ok": True} for c in "abc"]
    report = {"count": 3, "sum": 600.0, "median": 200.0, "max": 300.0}
    assert run.steps["sales-report"].result == report
    assert run.steps["close_books"].result == {"invoices": 3, "report": report}
    assert run.steps["alert"].status == "skipped"
    (child,) = orchestrator_test.runs("sales-report")
    assert child.status == "succeeded"


def test_an_unreachable_customer_fails_the_run_the_books_still_close_and_the_alert_runs(orchestrator_test):
    run = orchestrator_test.start("nightly-invoices", {"customers": ["a", "b"], "unreachable": ["b"]})
    orchestrator_test.advance("1m")  # send_invoice's retries (1 s, 2 s, 4 s backoff)
    assert run.status == "failed", run
    assert "item 1 of map 'send_invoice' failed" in run.steps["send_invoice"].error
    assert run.steps["close_books"].status == "succeeded"
    assert run.steps["close_books"].result == {"invoices": 0, "report": None}
    assert run.steps["alert"].result == {"alerted": ["send_invoice"]}
