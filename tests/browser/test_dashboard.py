"""The dashboard in a real browser: log in, start, watch, retry, cancel, and stay safe."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.browser.conftest import shot
from tests.webtools import AUTH, TOKEN, add_event


def log_in(page, server: str, then: str) -> None:  # noqa: ANN001
    page.goto(f"{server}{then}")
    page.click("#login-link")
    page.fill("#token", TOKEN)
    page.click("#login-form button[type=submit]")
    expect(page.locator(".flash")).to_contain_text("Logged in.")
    assert page.url == f"{server}{then}"


def api_start(server_client, workflow: str, data: dict) -> str:  # noqa: ANN001
    response = server_client.post(f"/api/workflows/{workflow}/runs", json={"input": data}, headers=AUTH)
    assert response.status_code == 201, response.get_json()
    return response.get_json()["id"]


def test_start_a_run_from_the_form_and_watch_it_turn_green(page, server, runtime, start_worker, tmp_path):
    start_worker(concurrency=2)
    page.goto(f"{server}/")
    shot(page, tmp_path, "overview-empty")
    page.goto(f"{server}/workflows")
    expect(page.locator("section[data-workflow=diamond] svg.dag g.node")).to_have_count(4)
    shot(page, tmp_path, "workflows")
    log_in(page, server, "/workflows/diamond")
    page.fill("#input", "[1, 2]")
    expect(page.locator("#input-check")).to_have_text("input must be a JSON object")
    page.fill("#input", '{"n": 3}')
    expect(page.locator("#input-check")).to_have_text("valid JSON object")
    shot(page, tmp_path, "workflow")
    page.click("#start-form button[type=submit]")
    expect(page.locator(".flash")).to_contain_text("Started run")
    run_id = page.url.rsplit("/", 1)[-1]
    page.evaluate("window.__sameDocument = true")

    expect(page.locator("#run-status")).to_have_attribute("data-status", "succeeded", timeout=30_000)
    assert page.evaluate("window.__sameDocument") is True, "the page reloaded"
    expect(page.locator("#run-status .status")).to_have_class("status s-succeeded")
    expect(page.locator("#run-dag svg.dag g.node.s-succeeded")).to_have_count(4)
    expect(page.locator("#run-timeline svg.timeline rect.bar")).to_have_count(4)
    expect(page.locator("#run-steps article[data-step=d] pre.result")).to_contain_text('"sum": 15')
    expect(page.locator("#run-steps article[data-step=d] pre.logs")).to_contain_text("joining")
    shot(page, tmp_path, "run-succeeded")

    # The runs list shows it, and a run started elsewhere appears and turns green live.
    page.goto(f"{server}/runs")
    expect(page.locator(f"tr[data-run='{run_id}']")).to_have_attribute("data-status", "succeeded")
    page.evaluate("window.__sameDocument = true")
    other = api_start(runtime_client(runtime), "diamond", {"n": 1})
    row = page.locator(f"tr[data-run='{other}']")
    expect(row).to_have_attribute("data-status", "succeeded", timeout=30_000)
    expect(row.locator(".status")).to_have_class("status s-succeeded")
    assert page.evaluate("window.__sameDocument") is True, "the page reloaded"
    shot(page, tmp_path, "runs")


def runtime_client(runtime):  # noqa: ANN001, ANN201
    from tests.webtools import make_app

    return make_app(runtime).test_client()


def test_retry_a_failed_run_and_cancel_a_running_one(page, server, runtime, start_worker, wait_for_run, tmp_path):
    start_worker(concurrency=2)
    client = runtime_client(runtime)
    failed = api_start(client, "doomed", {})
    assert wait_for_run(failed)["status"] == "failed"
    log_in(page, server, f"/runs/{failed}")
    breaks = page.locator("#run-steps article[data-step=breaks]")
    expect(breaks).to_have_attribute("data-attempts", "2")
    expect(page.locator("#run-dag g.node[data-node=breaks]")).to_have_class("node s-failed")
    shot(page, tmp_path, "run-failed")
    page.click("#run-summary button:has-text('Retry')")
    expect(page.locator(".flash")).to_contain_text("Retrying")
    expect(breaks).to_have_attribute("data-attempts", "4", timeout=30_000)
    expect(page.locator("#run-status")).to_have_attribute("data-status", "failed", timeout=30_000)
    expect(page.locator("#run-steps article[data-step=first]")).to_have_attribute("data-attempts", "1")
    expect(page.locator("#run-steps article[data-step=breaks] details summary", has_text="Traceback")).to_have_count(4)
    shot(page, tmp_path, "run-retried")

    running = api_start(client, "long", {"sleep": 30})
    page.goto(f"{server}/runs/{running}")
    expect(page.locator("#run-status")).to_have_attribute("data-status", "running", timeout=30_000)
    expect(page.locator("#run-dag g.node[data-node=linger]")).to_have_class("node s-running")
    page.click("#run-summary button:has-text('Cancel')")
    expect(page.locator(".flash")).to_contain_text("Cancelled the run.")
    expect(page.locator("#run-status")).to_have_attribute("data-status", "cancelled")
    expect(page.locator("#run-dag g.node[data-node=afterwards]")).to_have_class("node s-cancelled")
    expect(page.locator("#run-summary button:has-text('Retry')")).to_be_visible()
    shot(page, tmp_path, "run-cancelled")


def test_bulk_retry_of_selected_runs(page, server, runtime, tmp_path):
    client = runtime_client(runtime)
    runs = [api_start(client, "diamond", {}) for _ in range(3)]
    for run_id in runs:
        assert client.post(f"/api/runs/{run_id}/cancel", headers=AUTH).status_code == 200
    log_in(page, server, "/runs?status=cancelled")
    for run_id in runs[:2]:
        page.check(f"tr[data-run='{run_id}'] input[name=ids]")
    expect(page.locator("#selected-count")).to_have_text("2")
    page.wait_for_timeout(1000)  # a live refresh keeps the selection
    expect(page.locator("#selected-count")).to_have_text("2")
    expect(page.locator(f"tr[data-run='{runs[0]}'] input[name=ids]")).to_be_checked()
    shot(page, tmp_path, "runs-selected")
    page.click("#bulk-retry")
    expect(page.locator(".flash")).to_contain_text("Retried 2 of 2 matching run(s).")
    statuses = [client.get(f"/api/runs/{r}").get_json()["status"] for r in runs]
    assert statuses == ["running", "running", "cancelled"]
    page.check("#scope-matching")
    page.click("#bulk-cancel")
    expect(page.locator(".flash")).to_contain_text("Cancelled 0 of 0")  # filter is status=cancelled
    shot(page, tmp_path, "runs-bulk")


def test_an_event_payload_holding_a_script_is_shown_as_text(page, server, runtime, tmp_path):
    payload = {"type": "user.signed_up", "user": {"email": "<script>window.__pwned=1</script>"},
               "html": "<img src=x onerror=\"window.__pwned=2\">"}
    event_id = add_event(runtime, payload, reason="<script>window.__pwned=3</script> failed")
    log_in(page, server, "/events")
    expect(page.locator(f"tr[data-event='{event_id}']")).to_be_visible()
    payload_text = page.locator("pre.payload").first.text_content()
    assert "<script>window.__pwned=1</script>" in payload_text
    assert "<img src=x" in payload_text
    expect(page.locator(".reason")).to_contain_text("<script>window.__pwned=3</script> failed")
    assert page.locator("script:not([src])").count() == 0
    assert page.locator("pre.payload img").count() == 0
    assert page.evaluate("window.__pwned") is None
    shot(page, tmp_path, "events")

    page.click(f"tr[data-event='{event_id}'] button:has-text('Replay')")
    expect(page.locator(".flash")).to_contain_text("Replay started 1 run(s).")
    expect(page.locator("#event-payload")).to_contain_text("<script>window.__pwned=1</script>")
    run_link = page.locator("#event-runs a").first
    expect(run_link).to_contain_text("signup")
    shot(page, tmp_path, "event")
    run_link.click()
    expect(page.locator("#run-event a")).to_have_text(f"event {event_id}")  # lineage both ways
    assert page.evaluate("window.__pwned") is None
    page.goto(f"{server}/")
    shot(page, tmp_path, "overview")
