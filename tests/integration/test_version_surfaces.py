"""Workflow versions as users see them: the CLI, the JSON API and the dashboard's pages.

Runs of an old version are made the way a deploy makes them: an engine with the old code
(`tests.skew_flows`) starts them, then the CLI, API and pages run with the new code
(`tests.skew_flows_v2`: `evolving` gains `mid` between `first` and `last`; `shrinking`
renames `last` to `final`; `only-here` is gone).

Tests marked `versioned_retry` retry a run of an old version, with or without
`current_version`: they need the engine's per-version planning and
`WorkflowEngine.retry_run(run_id, current_version=...)`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from sqlalchemy import text

from orchestrator.dispatch import RecordingDispatcher
from orchestrator.engine import Outcome, WorkflowEngine
from orchestrator.registry import load_workflows
from tests.fixtures.config import ROOT, settings_env
from tests.webtools import AUTH, TOKEN, assert_documented, make_app

OLD = ("tests.flows", "tests.skew_flows")
NEW = ("tests.flows", "tests.web_flows", "tests.skew_flows_v2")
versioned_retry = pytest.mark.versioned_retry

OLD_CODE = load_workflows(OLD)
NEW_CODE = load_workflows(NEW)
V1 = OLD_CODE.get("evolving").version
V2 = NEW_CODE.get("evolving").version
EVOLVING_DIFF = {"added": ["mid"], "removed": [], "changed_deps": {"last": {"old": ["first"], "new": ["mid"]}},
                 "changed_options": {}}


@pytest.fixture
def settings(settings):
    """The new deploy's code is what the CLI, the API and the pages load."""
    return settings.with_(workflows=NEW)


@pytest.fixture
def old(runtime, settings) -> WorkflowEngine:
    """An engine with the old code, on the test database (its messages go nowhere)."""
    return WorkflowEngine(runtime.sessions, load_workflows(OLD), RecordingDispatcher(), settings)


@pytest.fixture
def client(runtime):
    return make_app(runtime).test_client()


def fail_first_step(engine: WorkflowEngine, run_id: str) -> None:
    """Fail the run's `first` step (no retries): the run fails, `last` is cancelled."""
    claim = engine.claim(run_id, "first", "old@test")
    assert claim is not None
    engine.finish(claim, Outcome(ok=False, error="boom"))


def cli(settings, redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], env=settings_env(settings, redis_url),
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_the_old_and_new_code_really_are_two_versions():
    assert V1 != V2 and re.fullmatch(r"[0-9a-f]{12}", V1)


# -- the API ------------------------------------------------------------------------------------


def test_a_run_shows_its_version_the_current_one_and_what_changed(client, old):
    run_id = old.start_run("evolving", {})
    response = client.get(f"/api/runs/{run_id}")
    assert_documented(response, "/api/runs/{run_id}")
    run = response.get_json()
    assert (run["version"], run["current_version"]) == (V1, V2)
    assert run["version_diff"] == EVOLVING_DIFF
    listed = client.get("/api/runs")
    assert_documented(listed, "/api/runs")
    assert [r["version"] for r in listed.get_json()["runs"]] == [V1]


def test_a_run_of_the_current_version_or_of_an_unloaded_workflow_has_no_diff(client, old):
    current = client.post("/api/workflows/evolving/runs", json={}, headers=AUTH).get_json()
    assert (current["version"], current["current_version"], current["version_diff"]) == (V2, V2, None)
    gone = client.get(f"/api/runs/{old.start_run('only-here', {})}")
    assert_documented(gone, "/api/runs/{run_id}")
    assert gone.get_json()["version"] == OLD_CODE.get("only-here").version
    assert (gone.get_json()["current_version"], gone.get_json()["version_diff"]) == (None, None)


def test_a_run_from_before_versions_has_none(client, runtime):
    run_id = client.post("/api/workflows/diamond/runs", json={}, headers=AUTH).get_json()["id"]
    with runtime.sessions() as session, session.begin():
        session.execute(text("UPDATE runs SET version = NULL WHERE id = :r"), {"r": run_id})
    run = client.get(f"/api/runs/{run_id}").get_json()
    assert run["version"] is None and run["version_diff"] is None
    assert run["current_version"] == NEW_CODE.get("diamond").version


def test_runs_filter_by_version(client, old):
    olds = {old.start_run("evolving", {}) for _ in range(2)}
    new = client.post("/api/workflows/evolving/runs", json={}, headers=AUTH).get_json()["id"]
    response = client.get(f"/api/runs?version={V1}")
    assert_documented(response, "/api/runs")
    assert {r["id"] for r in response.get_json()["runs"]} == olds
    assert [r["id"] for r in client.get(f"/api/runs?workflow=evolving&version={V2}").get_json()["runs"]] == [new]
    assert client.get("/api/runs?version=").status_code == 200  # empty: not given
    bad = client.get("/api/runs?version=%3Cx%3E")
    assert_documented(bad, "/api/runs")
    assert bad.status_code == 400 and "is not a workflow version" in bad.get_json()["error"]


def test_workflows_list_their_versions_with_active_runs_and_the_unloaded_ones(client, old):
    for _ in range(2):
        old.start_run("evolving", {})
    old.start_run("only-here", {})
    response = client.get("/api/workflows")
    assert_documented(response, "/api/workflows")
    body = response.get_json()
    evolving = next(w for w in body["workflows"] if w["name"] == "evolving")
    assert evolving["version"] == V2
    versions = {v["version"]: v for v in evolving["versions"]}
    assert versions[V1]["active_runs"] == 2 and versions[V1]["created_at"].endswith("+00:00")
    assert "only-here" not in {w["name"] for w in body["workflows"]}
    [gone] = body["not_loaded"]
    assert (gone["name"], gone["active_runs"]) == ("only-here", 1)
    assert [v["active_runs"] for v in gone["versions"]] == [1]
    assert gone["warning"] == ("workflow only-here is not in the deployed code; its 1 active run will fail "
                               "after ORCHESTRATOR_VERSION_GRACE (10 min)")
    one = client.get("/api/workflows/evolving")
    assert_documented(one, "/api/workflows/{name}")
    assert {v["version"]: v["active_runs"] for v in one.get_json()["versions"]}[V1] == 2


@versioned_retry
@pytest.mark.parametrize("how", ["body", "query"])
def test_retry_on_the_current_version_replans_the_run_on_todays_definition(client, old, how):
    run_id = old.start_run("evolving", {})
    fail_first_step(old, run_id)
    if how == "body":
        response = client.post(f"/api/runs/{run_id}/retry", json={"current_version": True}, headers=AUTH)
    else:
        response = client.post(f"/api/runs/{run_id}/retry?current_version=1", headers=AUTH)
    assert_documented(response, "/api/runs/{run_id}/retry", "post")
    assert response.status_code == 200, response.get_json()
    run = response.get_json()
    assert (run["version"], run["current_version"], run["version_diff"]) == (V2, V2, None)
    assert {s["name"] for s in run["steps"]} == {"first", "mid", "last"}
    assert run["status"] in ("pending", "running")


@versioned_retry
def test_retry_without_the_flag_keeps_the_runs_version(client, old):
    run_id = old.start_run("evolving", {})
    fail_first_step(old, run_id)
    response = client.post(f"/api/runs/{run_id}/retry", headers=AUTH)
    assert_documented(response, "/api/runs/{run_id}/retry", "post")
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["version"] == V1
    assert {s["name"] for s in response.get_json()["steps"]} == {"first", "last"}


@versioned_retry
def test_retry_on_the_current_version_of_a_live_or_unloaded_run_is_a_clean_409(client, old):
    live = old.start_run("evolving", {})
    answer = client.post(f"/api/runs/{live}/retry", json={"current_version": True}, headers=AUTH)
    assert_documented(answer, "/api/runs/{run_id}/retry", "post")
    assert answer.status_code == 409 and "still running or has nothing to retry" in answer.get_json()["error"]
    gone = old.start_run("only-here", {})
    assert client.post(f"/api/runs/{gone}/cancel", headers=AUTH).status_code == 200
    refused = client.post(f"/api/runs/{gone}/retry", json={"current_version": True}, headers=AUTH)
    assert_documented(refused, "/api/runs/{run_id}/retry", "post")
    assert refused.status_code == 409 and "only-here" in refused.get_json()["error"]


@pytest.mark.parametrize(
    ("query", "body", "message"),
    [
        ("", b'{"current_version": "please"}', "current_version must be true or false"),
        ("", b'{"current_version": "yes"}', "(a JSON boolean)"),
        ("", b'{"current_version": 1}', "(a JSON boolean)"),
        ("?current_version=maybe", b"", "current_version must be true or false"),
        ("", b'{"version": "x"}', "unknown field(s) 'version'"),
        ("", b"[true]", "must be a JSON object"),
    ],
)
def test_a_bad_retry_request_is_400_before_anything_is_retried(client, old, query, body, message):
    run_id = old.start_run("evolving", {})
    response = client.post(f"/api/runs/{run_id}/retry{query}", data=body, headers={
        **AUTH, "Content-Type": "application/json"})
    assert_documented(response, "/api/runs/{run_id}/retry", "post")
    assert response.status_code == 400 and message in response.get_json()["error"]


def test_bulk_cancel_selects_by_version_and_refuses_current_version(client, old):
    olds = {old.start_run("evolving", {}) for _ in range(2)}
    new = client.post("/api/workflows/evolving/runs", json={}, headers=AUTH).get_json()["id"]
    refused = client.post("/api/runs/cancel", json={"version": V1, "current_version": True}, headers=AUTH)
    assert_documented(refused, "/api/runs/cancel", "post")
    assert refused.status_code == 400 and "current_version applies to retry only" in refused.get_json()["error"]
    response = client.post("/api/runs/cancel", json={"version": V1}, headers=AUTH)
    assert_documented(response, "/api/runs/cancel", "post")
    assert set(response.get_json()["runs"]) == olds
    assert client.get(f"/api/runs/{new}").get_json()["status"] != "cancelled"


@versioned_retry
def test_bulk_retry_on_the_current_version_by_filter_and_by_ids(client, old):
    first, second = (old.start_run("evolving", {}) for _ in range(2))
    for run_id in (first, second):
        fail_first_step(old, run_id)
    by_filter = client.post("/api/runs/retry", json={"version": V1, "status": "failed", "limit": 1,
                                                     "current_version": True}, headers=AUTH)
    assert_documented(by_filter, "/api/runs/retry", "post")
    assert by_filter.get_json()["touched"] == 1 and by_filter.get_json()["remaining"] is True
    rest = [r for r in (first, second) if r not in by_filter.get_json()["runs"]]
    by_ids = client.post("/api/runs/retry", json={"ids": rest, "current_version": True}, headers=AUTH)
    assert_documented(by_ids, "/api/runs/retry", "post")
    assert by_ids.get_json()["runs"] == rest
    assert {client.get(f"/api/runs/{r}").get_json()["version"] for r in (first, second)} == {V2}


# -- the CLI ------------------------------------------------------------------------------------


def test_cli_workflows_shows_versions_with_active_runs_and_warns_of_unloaded_ones(
    settings, redis_url, old
):
    for _ in range(2):
        old.start_run("evolving", {})
    old.start_run("only-here", {})
    out = cli(settings, redis_url, "workflows")
    assert out.returncode == 0, out.stderr
    assert f"evolving  version {V2}\n  version {V1}: 2 active runs\n  step first" in out.stdout
    assert "diamond" in out.stdout and "step d after b, c" in out.stdout and "queues to serve:" in out.stdout
    assert "only-here  not loaded: 1 active run\n" in out.stdout
    assert out.stderr.strip().splitlines() == [
        "warning: workflow only-here is not in the deployed code; its 1 active run will fail after "
        "ORCHESTRATOR_VERSION_GRACE (10 min)"
    ]
    items = {w["name"]: w for w in json.loads(cli(settings, redis_url, "workflows", "--json").stdout)}
    assert items["evolving"]["loaded"] is True and items["evolving"]["version"] == V2
    assert {v["version"]: v["active_runs"] for v in items["evolving"]["versions"]}[V1] == 2
    assert items["diamond"]["steps"]  # the definition is still all there
    gone = items["only-here"]
    assert (gone["loaded"], gone["version"], gone["active_runs"]) == (False, None, 1)
    assert gone["warning"].startswith("workflow only-here is not in the deployed code")


def test_cli_workflows_lists_the_code_even_without_a_database(settings, redis_url):
    out = cli(settings.with_(database_url="postgresql+psycopg://postgres@127.0.0.1:1/none"), redis_url, "workflows")
    assert out.returncode == 0, out.stderr
    assert f"evolving  version {V2}" in out.stdout
    assert out.stderr.startswith("warning: versions and active runs are unknown: cannot reach the database")


def test_cli_runs_filter_by_version_and_show_it(settings, redis_url, old, runtime):
    olds = {old.start_run("evolving", {}) for _ in range(2)}
    new = runtime.engine.start_run("evolving", {})
    listed = json.loads(cli(settings, redis_url, "runs", "--version", V1, "--json").stdout)
    assert {r["id"] for r in listed} == olds and {r["version"] for r in listed} == {V1}
    shown = cli(settings, redis_url, "runs", "--workflow", "evolving", "--version", V2)
    assert shown.returncode == 0, shown.stderr
    [line] = shown.stdout.strip().splitlines()
    assert line.split()[0] == new and line.endswith(f"  {V2}")
    assert f"  version: {V1}" in cli(settings, redis_url, "run", next(iter(olds))).stdout


@versioned_retry
def test_cli_retry_on_the_current_version(settings, redis_url, old, runtime):
    run_id = old.start_run("evolving", {})
    fail_first_step(old, run_id)
    out = cli(settings, redis_url, "retry", run_id, "--current-version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"retrying run {run_id} on the current version {V2}"
    again = cli(settings, redis_url, "retry", run_id, "--current-version")
    assert again.returncode == 1 and "Traceback" not in again.stderr
    assert again.stderr.strip().splitlines() == [
        f"Error: run {run_id} is still running or has nothing to retry"
    ]


# -- the dashboard ----------------------------------------------------------------------------


def login(client) -> str:
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    assert client.post("/login", data={"token": TOKEN, "csrf_token": token, "next": "/"}).status_code == 302
    return re.search(r'name="csrf_token" value="([^"]+)"', client.get("/runs").get_data(as_text=True)).group(1)


def node(html: str, name: str) -> str:
    """The opening tag of the DAG node of step `name`."""
    found = re.search(rf'<g class="[^"]*" data-node="{name}"[^>]*>', html)
    assert found, f"no node {name} in the DAG"
    return found.group(0)


def test_run_page_of_an_old_version_shows_and_draws_what_the_current_one_changes(client, old):
    run_id = old.start_run("evolving", {})
    html = client.get(f"/runs/{run_id}").get_data(as_text=True)
    assert f'data-version="{V1}" data-current="{V2}"' in html and "not the current version" in html
    assert 'id="run-version-diff"' in html
    assert re.search(r'id="diff-added">Steps added: <code>mid</code>', html)
    assert "Dependencies of <code>last</code>: first → mid" in html
    assert 'data-version="added"' in node(html, "mid") and 'data-status="absent"' in node(html, "mid")
    assert 'data-version="changed"' in node(html, "last")
    assert "data-version" not in node(html, "first")
    assert html.count('class="edge v-added"') == 2 and html.count('class="edge v-dropped"') == 1
    assert 'id="version-legend"' in html


def test_run_page_strikes_a_step_the_current_version_no_longer_has(client, old):
    html = client.get(f"/runs/{old.start_run('shrinking', {})}").get_data(as_text=True)
    assert 'data-version="removed"' in node(html, "last") and 'class="strike"' in html
    assert 'data-version="added"' in node(html, "final")
    assert 'id="diff-removed">Steps removed: <code>last</code>' in html


def test_run_page_of_the_current_version_shows_no_diff(client):
    run_id = client.post("/api/workflows/evolving/runs", json={}, headers=AUTH).get_json()["id"]
    html = client.get(f"/runs/{run_id}").get_data(as_text=True)
    assert f"<code>{V2}</code>" in html and "(current)" in html
    assert "run-version-diff" not in html and "version-legend" not in html and "v-added" not in html
    assert 'data-node="mid"' in html


def test_run_page_of_an_unloaded_workflow_draws_its_recorded_version(client, old):
    html = client.get(f"/runs/{old.start_run('only-here', {})}").get_data(as_text=True)
    assert "workflow only-here is not in the deployed code" in html
    assert all(f'data-node="{n}"' in html for n in ("begin", "middle", "end"))
    assert "run-version-diff" not in html


def test_a_failed_old_run_offers_retry_on_the_current_version_beside_retry(client, old):
    run_id = old.start_run("evolving", {})
    fail_first_step(old, run_id)
    assert "retry-current-form" not in client.get(f"/runs/{run_id}").get_data(as_text=True)  # logged out
    login(client)
    html = client.get(f"/runs/{run_id}").get_data(as_text=True)
    assert 'id="retry-form"' in html and 'id="retry-current-form"' in html
    assert 'name="current_version" value="1"' in html and "Retry on current version" in html
    current = client.post("/api/workflows/evolving/runs", json={}, headers=AUTH).get_json()["id"]
    assert "retry-current-form" not in client.get(f"/runs/{current}").get_data(as_text=True)


@versioned_retry
def test_the_retry_on_current_version_button_replans_the_run(client, old):
    run_id = old.start_run("evolving", {})
    fail_first_step(old, run_id)
    token = login(client)
    response = client.post(f"/runs/{run_id}/retry", data={"csrf_token": token, "current_version": "1"})
    assert response.status_code == 302 and response.headers["Location"] == f"/runs/{run_id}"
    html = client.get(f"/runs/{run_id}").get_data(as_text=True)
    assert "Retrying the run on the current version." in html
    assert f'data-version="{V2}" data-current="{V2}"' in html


def test_runs_page_filters_by_version_and_shows_each_runs_version(client, old):
    old_run = old.start_run("evolving", {})
    new_run = client.post("/api/workflows/evolving/runs", json={}, headers=AUTH).get_json()["id"]
    html = client.get(f"/runs?version={V1}").get_data(as_text=True)
    assert f'data-run="{old_run}"' in html and f'data-run="{new_run}"' not in html
    assert f'name="version" value="{V1}"' in html  # the filter box, and the bulk form's hidden field
    assert f'<td class="mono version-cell">{V1}</td>' in html
    assert f"version={V1}" in re.search(r'data-poll-url="([^"]+)"', html).group(1)
    login(client)
    assert 'id="bulk-retry-current"' in client.get("/runs").get_data(as_text=True)


@versioned_retry
def test_bulk_form_retries_matching_runs_on_the_current_version(client, old):
    run_id = old.start_run("evolving", {})
    fail_first_step(old, run_id)
    token = login(client)
    response = client.post("/runs/bulk", data={"csrf_token": token, "action": "retry_current",
                                               "scope": "matching", "version": V1})
    assert response.status_code == 302 and response.headers["Location"] == f"/runs?version={V1}"
    assert "Retried on the current version 1 of 1 matching run(s)." in client.get("/runs").get_data(as_text=True)
    assert client.get(f"/api/runs/{run_id}").get_json()["version"] == V2


def test_workflow_page_shows_its_version_and_the_other_versions_still_running(client, old):
    assert "No active run is on another version." in client.get("/workflows/evolving").get_data(as_text=True)
    old.start_run("evolving", {})
    html = client.get("/workflows/evolving").get_data(as_text=True)
    assert f"<h2>Version <code>{V2}</code></h2>" in html
    assert f'<tr data-version="{V1}"><td><a class="mono" href="/runs?workflow=evolving&amp;version={V1}">' in html


def test_overview_warns_of_workflows_not_in_the_deployed_code(client, old):
    assert 'id="not-loaded"' not in client.get("/").get_data(as_text=True)
    for _ in range(2):
        old.start_run("only-here", {})
    html = client.get("/").get_data(as_text=True)
    assert 'id="not-loaded"' in html and 'data-workflow="only-here" data-active="2"' in html
    assert ("workflow only-here is not in the deployed code; its 2 active runs will fail after "
            "ORCHESTRATOR_VERSION_GRACE (10 min)") in html
    assert 'href="/runs?workflow=only-here&amp;status=running"' in html
    runs = client.get("/runs?workflow=only-here").get_data(as_text=True)
    assert '<option value="only-here" selected>' in runs  # still selectable in the filter
