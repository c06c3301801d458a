"""The example workflows of `workflows/`, tested as a user tests theirs: with `orchestrator_test`."""

from __future__ import annotations

import pytest

from orchestrator.errors import InvalidInput

pytestmark = pytest.mark.orchestrator(workflows=["workflows"])

TEA = {"sku": "tea", "qty": 2, "price": 4.5}


def order(order_id: object = 1, **extra: object) -> dict:
    return {"order_id": order_id, "items": [TEA], **extra}


# -- order-fulfilment -------------------------------------------------------------------


def test_express_order_ships_by_courier(orchestrator_test):
    run = orchestrator_test.start("order-fulfilment", {"order_id": 1, "express": True, "items": [{"sku": "tea", "qty": 1}]})
    assert run.status == "succeeded"
    assert run.steps["ship_express"].result == {"carrier": "courier", "eta_days": 1}
    assert run.steps["ship_standard"].status == "skipped"


def test_standard_order_is_charged_its_total_and_ships_by_post(orchestrator_test):
    run = orchestrator_test.start("order-fulfilment", order("A-1", currency="GBP"))
    steps = run.steps
    assert steps["reserve_stock"].result == {"reserved": [{"sku": "tea", "qty": 2}]}
    assert steps["charge"].result == {"charged": 9.0, "currency": "GBP"}
    assert steps["ship_standard"].result == {"carrier": "post", "eta_days": 3}
    assert steps["ship_express"].status == "skipped"
    assert steps["ship_express"].reason == "condition of step 'ship_express' was false"
    assert steps["ship_express"].attempts == ()
    assert steps["reserve_stock"].logs == ["reserving 1 line(s) for order A-1"]
    assert steps["charge"].logs == ["charging 9.00"]


def test_a_declined_card_is_retried_twice_then_fails_the_order(orchestrator_test):
    run = orchestrator_test.start("order-fulfilment", order(), fail={"charge": RuntimeError("card declined")})
    assert run.status == "running" and run.steps["charge"].status == "retrying"
    orchestrator_test.advance("1s")  # charge: retries=2, backoff 1 s then 2 s
    assert len(run.steps["charge"].attempts) == 2
    orchestrator_test.advance("2s")
    assert run.status == "failed"
    assert run.error == "step 'charge' failed"
    charge = run.steps["charge"]
    assert [a.error for a in charge.attempts] == ["RuntimeError: card declined"] * 3
    assert run.steps["reserve_stock"].status == "succeeded"
    for ship in ("ship_express", "ship_standard"):
        assert (run.steps[ship].status, run.steps[ship].reason) == ("cancelled", "step 'charge' failed")


def test_a_slow_warehouse_is_retried_after_its_backoff(orchestrator_test):
    run = orchestrator_test.start("order-fulfilment", order(express=True),
                                  fail={"reserve_stock": [TimeoutError("warehouse slow"), None]})
    assert run.steps["reserve_stock"].status == "retrying"
    assert run.steps["charge"].status == "pending"
    orchestrator_test.advance("2s")  # reserve_stock: backoff=2.0
    assert run.status == "succeeded"
    assert [a.status for a in run.steps["reserve_stock"].attempts] == ["failed", "succeeded"]
    assert run.steps["ship_express"].result == {"carrier": "courier", "eta_days": 1}


def test_an_order_without_items_is_refused(orchestrator_test):
    with pytest.raises(InvalidInput, match="'items' is a required property"):
        orchestrator_test.start("order-fulfilment", {"order_id": 1})


def test_order_events_start_runs(orchestrator_test):
    outcome = orchestrator_test.publish("orders", {"type": "order.created", "order": order(7, express=True)}, key="7")
    assert outcome.runs[0].workflow == "order-fulfilment"
    assert outcome.runs[0].status == "succeeded"
    assert outcome.runs[0].input == order(7, express=True)
    orchestrator_test.advance("25h")
    again = orchestrator_test.publish("orders", {"type": "order.created", "order": order(7)}, key="7")
    assert again.matched and again.runs == []  # dedupe="order.order_id": one run per order


def test_a_malformed_order_event_is_rejected_with_its_reason(orchestrator_test):
    outcome = orchestrator_test.publish("orders", {"type": "order.created", "order": {"order_id": 8}}, key="8")
    assert outcome.rejected and outcome.runs == []
    assert outcome.reason == ("workflow 'order-fulfilment': input of workflow 'order-fulfilment' "
                              "fails its schema at (root): 'items' is a required property")
    [letter] = outcome.dead_letters
    assert (letter.topic, letter.key) == ("orders.dlq", b"8")


def test_other_order_events_are_ignored(orchestrator_test):
    outcome = orchestrator_test.publish("orders", {"type": "order.cancelled", "order": order(9)})
    assert outcome.ignored and outcome.runs == [] and orchestrator_test.runs() == []


# -- user-signup ------------------------------------------------------------------------


def test_a_signup_fans_out_and_welcomes_the_user(orchestrator_test):
    run = orchestrator_test.start("user-signup", {"email": "Ada@Example.COM"})
    steps = run.steps
    assert steps["normalise"].result == {"email": "ada@example.com", "domain": "example.com"}
    assert steps["risk_score"].result == {"score": 10, "disposable": False}
    assert steps["subscribe_newsletter"].status == "skipped"
    assert steps["subscribe_newsletter"].reason == "condition of step 'subscribe_newsletter' was false"
    welcome = steps["welcome"].result
    assert welcome["send_welcome"] is True and welcome["newsletter"] is False
    assert welcome["account_id"] == steps["provision_account"].result["account_id"]


def test_a_disposable_address_gets_no_welcome_mail(orchestrator_test):
    run = orchestrator_test.start("user-signup", {"email": "x@mailinator.com", "newsletter": True})
    assert run.steps["subscribe_newsletter"].result == {"list": "weekly", "email": "x@mailinator.com"}
    assert run.steps["welcome"].result["send_welcome"] is False
    assert run.steps["welcome"].result["newsletter"] is True


def test_a_risky_score_from_a_patched_scorer_holds_the_welcome_back(orchestrator_test):
    with orchestrator_test.patch_step("risk_score", lambda ctx: {"score": 99, "disposable": False}):
        run = orchestrator_test.start("user-signup", {"email": "eve@example.com"})
    assert run.steps["welcome"].result["send_welcome"] is False


def test_account_provisioning_is_retried_after_half_a_second(orchestrator_test):
    run = orchestrator_test.start("user-signup", {"email": "bob@example.com"},
                                  fail={"provision_account": [ConnectionError("directory down")]})
    assert run.steps["welcome"].status == "pending"
    orchestrator_test.advance(0.5)
    assert run.status == "succeeded"
    assert [a.status for a in run.steps["provision_account"].attempts] == ["failed", "succeeded"]


def test_signup_events_start_one_run_per_email(orchestrator_test):
    event = {"type": "user.signed_up", "user": {"email": "cy@example.com"}}
    first = orchestrator_test.publish("users", event)
    second = orchestrator_test.publish("users", event)
    assert first.runs[0].steps["welcome"].status == "succeeded"
    assert second.matched and second.runs == []


def test_a_signup_event_without_an_email_is_ignored(orchestrator_test):
    assert orchestrator_test.publish("users", {"type": "user.signed_up", "user": {}}).ignored


# -- sales-report -----------------------------------------------------------------------


def test_a_report_adds_up_its_sales(orchestrator_test):
    run = orchestrator_test.start("sales-report", {"sales": [10, 2.5, 7.5]})
    assert run.steps["publish"].result == {"count": 3, "sum": 20.0, "median": 7.5, "max": 10.0}
    assert run.steps["load"].logs == ["loaded 3 sale(s)"]


def test_an_empty_report_has_no_median(orchestrator_test):
    run = orchestrator_test.start("sales-report", {"sales": []})
    assert run.steps["publish"].result == {"count": 0, "sum": 0, "median": None, "max": None}


def test_a_failing_load_fails_the_report_at_once(orchestrator_test):
    run = orchestrator_test.start("sales-report", {"sales": [1]}, fail={"load": OSError("bucket gone")})
    assert run.status == "failed"  # load has no retries
    assert run.steps["load"].error == "OSError: bucket gone"
    assert {run.steps[s].status for s in ("totals", "distribution", "publish")} == {"cancelled"}


def test_report_requests_start_reports_and_bad_ones_are_rejected(orchestrator_test):
    good = orchestrator_test.publish("reports", {"type": "report.requested", "sales": [1, 2]})
    assert good.runs[0].steps["publish"].result["sum"] == 3.0
    bad = orchestrator_test.publish("reports", {"type": "report.requested", "sales": ["a lot"]})
    assert bad.rejected and "'a lot' is not of type 'number'" in bad.reason


# -- checkout (every node that waits, and emits) ------------------------------------------


def checkout(order_id: str = "C-1") -> dict:
    return {"type": "checkout.started", "checkout": {"order_id": order_id, "items": [TEA]}}


def test_checkout_waits_for_payment_approval_and_cool_off_then_ships(orchestrator_test):
    run = orchestrator_test.publish("checkouts", checkout()).runs[0]
    assert run.steps["reserve"].status == "succeeded"
    assert run.steps["payment"].status == "waiting"
    assert [e.value["type"] for e in orchestrator_test.emitted] == ["stock.reserved"]

    other = orchestrator_test.publish("payments", {"type": "payment.confirmed", "order_id": "C-2"})
    assert other.ignored and run.steps["payment"].status == "waiting"
    paid = orchestrator_test.publish("payments", {"type": "payment.confirmed", "order_id": "C-1",
                                                  "amount": 9.0})
    assert paid.matched
    assert run.steps["payment"].result["amount"] == 9.0
    assert run.steps["manager-approval"].status == "waiting"

    orchestrator_test.approve(run, "manager-approval", comment="fine", by="ann")
    assert run.steps["cool-off"].status == "waiting"
    orchestrator_test.advance("59s")
    assert run.steps["cool-off"].status == "waiting"
    orchestrator_test.advance("1s")
    assert run.status == "succeeded"
    assert run.steps["ship"].result == {"shipped": True, "paid": 9.0, "approved_by": "ann",
                                        "payment_offset": paid.offset}
    assert [e.value["type"] for e in orchestrator_test.emitted] == ["stock.reserved", "shipment.created"]


def test_checkout_payment_that_came_first_counts_within_the_lookback(orchestrator_test):
    orchestrator_test.publish("payments", {"type": "payment.confirmed", "order_id": "C-9", "amount": 1})
    orchestrator_test.advance("10m")
    run = orchestrator_test.publish("checkouts", checkout("C-9")).runs[0]
    assert run.steps["payment"].status == "succeeded"
    assert run.steps["manager-approval"].status == "waiting"


def test_checkout_rejected_by_the_manager_fails_with_the_comment(orchestrator_test):
    run = orchestrator_test.publish("checkouts", checkout()).runs[0]
    orchestrator_test.publish("payments", {"type": "payment.confirmed", "order_id": "C-1"})
    orchestrator_test.approve(run, "manager-approval", reject=True, comment="fraud risk", by="bob")
    assert run.status == "failed"
    assert run.steps["manager-approval"].error == "fraud risk"
    assert run.steps["cool-off"].status == "cancelled"


def test_checkout_without_payment_fails_after_a_day(orchestrator_test):
    run = orchestrator_test.publish("checkouts", checkout()).runs[0]
    orchestrator_test.advance("24h")
    assert run.status == "failed"
    assert run.steps["payment"].error == "timed out: no matching event on 'payments' within 1d"


# -- temp-cleanup (a cron schedule) ---------------------------------------------------------


def test_a_cleanup_tick_removes_the_files_older_than_an_hour_before_it(orchestrator_test):
    from datetime import UTC, datetime

    from workflows.cleanup import flow

    (every_5_minutes,) = flow.triggers
    data = every_5_minutes.run_input(datetime(2026, 12, 3, 18, 5, tzinfo=UTC))
    assert data["older_than"] == "2026-12-03T17:05:00+00:00"
    files = [{"name": "old.tmp", "modified": "2026-12-03T16:00:00+00:00"},
             {"name": "new.tmp", "modified": "2026-12-03T18:00:00+00:00"}]
    run = orchestrator_test.start("temp-cleanup", {**data, "files": files})
    assert run.status == "succeeded"
    assert run.steps["find_stale"].result == {"stale": ["old.tmp"]}
    assert run.steps["remove"].result == {"removed": 1}
