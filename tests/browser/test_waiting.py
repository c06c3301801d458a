"""Waiting nodes in a real browser: drawn in their own colour, found by the runs filter,
approved or rejected from the run page (login + CSRF), the decision shown afterwards."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import shot
from tests.browser.test_dashboard import log_in
from tests.wait_flows import PAYMENTS
from tests.webtools import WORKFLOWS

#: The fill of a waiting node's box (app.css `svg .node.s-waiting rect`), and those it must differ from.
WAITING_FILL = "rgb(236, 223, 251)"
OTHER_FILLS = {"pending": "rgb(236, 238, 241)", "queued": "rgb(214, 232, 250)", "running": "rgb(185, 214, 246)"}


@pytest.fixture
def settings(settings):
    """The dashboard's workflows plus the waiting ones."""
    return settings.with_(workflows=(*WORKFLOWS, "tests.wait_flows"))


def fill_of(page, selector: str) -> str:  # noqa: ANN001
    return page.locator(selector).evaluate("node => getComputedStyle(node).fill")


def test_approve_a_waiting_approval_and_watch_the_run_go_on(page, server, runtime, start_worker, tmp_path):
    run_id = runtime.engine.start_run("sign-off", {})
    log_in(page, server, "/runs")
    page.select_option("#filters select[name=status]", "waiting")
    page.click("#filters button[type=submit]")
    expect(page.locator(f"tr[data-run='{run_id}']")).to_be_visible()
    page.click(f"tr[data-run='{run_id}'] a.mono")

    manager = page.locator("#run-dag g.node[data-node=manager]")
    expect(manager).to_have_class("node s-waiting")
    expect(page.locator("#run-dag g.node[data-node=publish]")).to_have_class("node s-pending")
    waiting_fill = fill_of(page, "#run-dag g.node[data-node=manager] rect")
    assert waiting_fill == WAITING_FILL
    assert waiting_fill not in OTHER_FILLS.values()
    assert fill_of(page, "#run-dag g.node[data-node=publish] rect") == OTHER_FILLS["pending"]
    details = page.locator("#run-steps article[data-step=manager]")
    expect(details.locator(".wait dd").first).to_have_text("a decision: approve or reject")
    expect(details.locator(".wait-due")).to_contain_text("UTC")
    shot(page, tmp_path, "approval-waiting")

    start_worker(concurrency=1)
    approval = page.locator("#run-approvals .approval[data-step=manager]")
    approval.locator("textarea[name=comment]").fill("numbers check out")
    approval.locator("button[value=approve]").click()
    expect(page.locator(".flash")).to_contain_text("Approved manager.")
    expect(page.locator("#run-approvals")).to_be_hidden()
    decision = page.locator("#run-steps article[data-step=manager] .wait-decision")
    expect(decision).to_contain_text("approved by dashboard at")
    expect(decision.locator(".wait-comment")).to_have_text("numbers check out")
    expect(page.locator("#run-status")).to_have_attribute("data-status", "succeeded", timeout=30_000)
    expect(page.locator("#run-dag g.node.s-succeeded")).to_have_count(2)
    expect(page.locator("#run-steps article[data-step=publish] pre.result")).to_contain_text('"published_after": "approve"')
    shot(page, tmp_path, "approval-approved")


def test_an_approval_that_opens_while_the_page_is_open_gets_its_buttons_live(
    page, server, runtime, start_worker, side_channel
):
    run_id = runtime.engine.start_run("review", {})
    log_in(page, server, f"/runs/{run_id}")
    page.evaluate("window.__sameDocument = true")
    expect(page.locator("#run-approvals")).to_be_hidden()
    start_worker(concurrency=2)  # notify holds one slot until the test lets it go
    expect(page.locator("#run-dag g.node[data-node=review]")).to_have_class("node s-waiting", timeout=30_000)
    approval = page.locator("#run-approvals .approval[data-step=review]")
    expect(approval).to_be_visible()
    assert page.evaluate("window.__sameDocument") is True, "the page reloaded"
    approval.locator("textarea[name=comment]").fill("typed while the run moves on")
    side_channel.rpush(f"go:{run_id}", 1)
    expect(page.locator("#run-dag g.node[data-node=notify]")).to_have_class("node s-succeeded", timeout=30_000)
    # The parallel step finishing refreshed the page's live sections but kept this form.
    expect(approval.locator("textarea[name=comment]")).to_have_value("typed while the run moves on")
    approval.locator("button[value=approve]").click()
    expect(page.locator("#run-status")).to_have_attribute("data-status", "succeeded", timeout=30_000)
    expect(page.locator("#run-steps article[data-step=review] .wait-comment")).to_have_text(
        "typed while the run moves on"
    )


def test_reject_a_waiting_approval_with_a_comment(page, server, runtime, tmp_path):
    run_id = runtime.engine.start_run("sign-off", {})
    log_in(page, server, f"/runs/{run_id}")
    approval = page.locator("#run-approvals .approval[data-step=manager]")
    approval.locator("textarea[name=comment]").fill("budget <frozen>")
    approval.locator("button[value=reject]").click()
    expect(page.locator(".flash")).to_contain_text("Rejected manager.")
    expect(page.locator("#run-status")).to_have_attribute("data-status", "failed")
    expect(page.locator("#run-dag g.node[data-node=manager]")).to_have_class("node s-failed")
    step = page.locator("#run-steps article[data-step=manager]")
    expect(step.locator("pre.error-text")).to_have_text("budget <frozen>")
    expect(step.locator(".wait-decision")).to_contain_text("rejected by dashboard at")
    expect(step.locator(".wait-comment")).to_have_text("budget <frozen>")
    expect(step.locator(".wait-end")).to_contain_text("rejected at")
    shot(page, tmp_path, "approval-rejected")


def test_a_waiting_event_node_says_what_it_waits_for(page, server, runtime, tmp_path):
    run_id = runtime.engine.start_run("payment", {"order_id": 7})
    page.goto(f"{server}/runs/{run_id}")
    expect(page.locator("#run-dag g.node[data-node=paid]")).to_have_class("node s-waiting")
    wait = page.locator("#run-steps article[data-step=paid] .wait")
    expect(wait).to_contain_text(f"an event on topic {PAYMENTS}")
    expect(wait.locator(".wait-match")).to_have_text('{"type": "payment.confirmed"}')
    expect(wait.locator(".wait-correlate")).to_have_text("order.id = 7")
    expect(wait.locator(".wait-due")).to_contain_text("(on timeout it fails)")
    expect(page.locator("#run-approvals")).to_be_hidden()
    shot(page, tmp_path, "event-waiting")
