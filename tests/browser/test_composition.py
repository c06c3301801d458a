"""Maps and calls in a real browser: a map is one node of the DAG with its progress and
its items listed (filtered by status) under the steps; a call node's box links to its
child run, whose page links back to the parent."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import shot
from tests.webtools import WORKFLOWS


@pytest.fixture
def settings(settings):
    """The dashboard's workflows plus the composed ones."""
    return settings.with_(workflows=(*WORKFLOWS, "tests.compose_web_flows"))


def test_a_maps_progress_and_items_and_a_call_that_links_to_its_child_and_back(
    page, server, runtime, start_worker, tmp_path
):
    values = list(range(30))
    values[7] = -7  # fails (the map allows failures)
    run_id = runtime.engine.start_run("w-composed", {"items": values})
    page.goto(f"{server}/runs/{run_id}")
    node = page.locator("#run-dag g.node[data-node=each]")
    expect(node).to_have_attribute("data-kind", "map")
    expect(node.locator("text.note")).to_have_text("map 0/30")
    expect(page.locator("#run-dag g.node[data-node=child] text.note")).to_have_text("call → w-double")
    expect(page.locator("#items-each tr[data-index]")).to_have_count(30)

    start_worker(concurrency=2)
    expect(page.locator("#run-status")).to_have_attribute("data-status", "succeeded", timeout=30_000)
    expect(node.locator("text.note")).to_have_text("map 30/30 · 1 failed")
    assert float(node.locator("rect.progress-done").get_attribute("width")) > 100
    assert float(node.locator("rect.progress-failed").get_attribute("width")) > 0
    expect(page.locator("#run-steps article[data-step=each] .map-progress")).to_have_text("30/30 done, 1 failed")
    failed = page.locator("#items-each tr[data-index='7']")
    expect(failed).to_have_attribute("data-status", "failed")
    expect(failed.locator(".outcome")).to_contain_text("ValueError: negative: -7")
    expect(page.locator("#items-each tr[data-index='3'] .outcome")).to_have_text("4")
    shot(page, tmp_path, "map-done")

    page.select_option("#items-each select[name=item_status]", "failed")
    page.click("#items-each button[type=submit]")
    expect(page.locator("#items-each tr[data-index]")).to_have_count(1)
    expect(page.locator("#items-each tr[data-index]")).to_have_attribute("data-index", "7")
    expect(page.locator("#items-each a.first-page")).to_be_visible()

    page.click("#run-dag a.node-link")  # the call node's box
    expect(page.locator("#run-parent")).to_have_attribute("data-parent", run_id)
    expect(page.locator("#run-parent")).to_contain_text("(step child, a call node that waits for this run)")
    expect(page.locator("#run-status")).to_have_attribute("data-status", "succeeded")
    expect(page.locator("#run-output")).to_have_text('{"doubled": 4}')
    child_url = page.url
    shot(page, tmp_path, "child-run")

    page.click("#run-parent a.mono")
    expect(page).to_have_url(f"{server}/runs/{run_id}")
    child_id = child_url.rsplit("/", 1)[1]
    expect(page.locator(f"#run-children tr[data-child='{child_id}']")).to_have_attribute("data-status", "succeeded")
    expect(page.locator("#run-steps article[data-step=child] .child-link a")).to_have_text(child_id)
    expect(page.locator("#run-steps article[data-step=finish] pre.result")).to_contain_text('"items": 30')
