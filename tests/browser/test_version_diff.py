"""A run of an old version in a real browser: what the deployed version changes, on its DAG."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from orchestrator.dispatch import RecordingDispatcher
from orchestrator.engine import Outcome, WorkflowEngine
from orchestrator.registry import load_workflows
from tests.browser.conftest import shot
from tests.browser.test_dashboard import log_in
from tests.webtools import WORKFLOWS


@pytest.fixture
def settings(settings):
    """The dashboard serves the new deploy's code: `evolving` has gained step `mid`."""
    return settings.with_(workflows=(*WORKFLOWS, "tests.skew_flows_v2"))


def test_an_old_runs_dag_shows_the_added_step_as_a_ghost_and_the_moved_dependency(
    page, server, runtime, settings, tmp_path
):
    old = WorkflowEngine(runtime.sessions, load_workflows(("tests.flows", "tests.skew_flows")),
                         RecordingDispatcher(), settings)
    run_id = old.start_run("evolving", {})
    old.finish(old.claim(run_id, "first", "old@test"), Outcome(ok=False, error="boom"))
    log_in(page, server, f"/runs/{run_id}")
    expect(page.locator("#run-version")).to_contain_text("not the current version")
    expect(page.locator("#diff-added")).to_have_text("Steps added: mid")
    expect(page.locator("#run-version-diff .diff-deps[data-step=last]")).to_contain_text("first → mid")
    ghost = page.locator("#run-dag g.node[data-node=mid]")
    expect(ghost).to_have_class("node s-absent v-added")
    assert ghost.locator("rect").evaluate("r => getComputedStyle(r).strokeDasharray") not in ("", "none")
    expect(page.locator("#run-dag g.node[data-node=first]")).to_have_class("node s-failed")
    expect(page.locator("#run-dag g.node[data-node=last]")).to_have_class("node s-cancelled v-changed")
    expect(page.locator("#run-dag path.edge.v-added")).to_have_count(2)
    expect(page.locator("#run-dag path.edge.v-dropped")).to_have_count(1)
    expect(page.locator("#version-legend")).to_be_visible()
    expect(page.locator("#retry-current-form button")).to_have_text("Retry on current version")
    expect(page.locator("#retry-form button")).to_have_text("Retry")
    shot(page, tmp_path, "run-old-version")
