"""What an operator sees of maps and calls: a map's progress and its items (keyset paged)
in the JSON API, a call node's child and the parent <-> child links of runs, the same in
`orchestrator run`, and the run page's sections.

The maps and calls of tests/compose_web_flows.py are roots, so a run has its items and
its child as soon as `engine.start_run` returns, without a worker; a real worker process
runs them where a test needs them to end.
"""

from __future__ import annotations

import re
import uuid

import pytest

from tests.fixtures.config import settings_env
from tests.integration.test_cli import cli
from tests.webtools import WORKFLOWS, assert_documented, make_app

RUN = "/api/runs/{run_id}"
ITEMS = "/api/runs/{run_id}/steps/{step}/items"


@pytest.fixture
def settings(settings):
    return settings.with_(workflows=(*WORKFLOWS, "tests.compose_web_flows"))


@pytest.fixture
def client(runtime):
    return make_app(runtime).test_client()


def shown(client, run_id: str) -> dict:
    response = client.get(RUN.format(run_id=run_id))
    assert_documented(response, RUN)
    assert response.status_code == 200
    return response.get_json()


def items(client, run_id: str, step: str = "square", query: str = ""):
    response = client.get(ITEMS.format(run_id=run_id, step=step) + query)
    assert_documented(response, ITEMS)
    return response


def steps_of(run: dict) -> dict[str, dict]:
    return {s["name"]: s for s in run["steps"]}


def test_a_map_shows_its_progress_and_pages_its_items_by_index(client, runtime):
    run_id = runtime.engine.start_run("w-squares", {"items": list(range(250))})
    steps = steps_of(shown(client, run_id))
    assert steps["square"]["map"] == {
        "pending": 245, "queued": 5, "running": 0, "retrying": 0, "succeeded": 0, "failed": 0,
        "cancelled": 0, "total": 250, "done": 0,
    }
    assert steps["total"]["map"] is None and steps["total"]["child_run_id"] is None

    first = items(client, run_id).get_json()
    assert [i["index"] for i in first["items"]] == list(range(100)) and first["next_after"] == 99
    assert first["items"][7] == {
        "index": 7, "name": "square[7]", "status": "pending", "item": 7, "attempts": 0, "result": None,
        "error": None, "started_at": None, "finished_at": None,
    }
    assert first["map"]["total"] == 250 and (first["run_id"], first["step"]) == (run_id, "square")
    second = items(client, run_id, query="?after=99").get_json()
    assert [i["index"] for i in second["items"]] == list(range(100, 200)) and second["next_after"] == 199
    last = items(client, run_id, query="?after=199&limit=1000").get_json()
    assert [i["index"] for i in last["items"]] == list(range(200, 250)) and last["next_after"] is None
    queued = items(client, run_id, query="?status=queued&limit=2").get_json()
    assert [i["index"] for i in queued["items"]] == [0, 1] and queued["next_after"] == 1
    assert [i["index"] for i in items(client, run_id, query="?status=queued&after=1").get_json()["items"]] == [2, 3, 4]
    assert items(client, run_id, query="?status=failed").get_json()["items"] == []


#: Hostile or wrong item parameters, and what the 400 says.
BAD_QUERIES = [
    ("?limit=0", "limit must be an integer from 1 to 1000"),
    ("?limit=1001", "limit must be an integer from 1 to 1000"),
    ("?limit=ten", "limit must be an integer"),
    ("?after=-1", "after must be an item index"),
    ("?after=1.5", "after must be an item index"),
    ("?after=99999999999", "after must be an item index"),
    ("?after=%D9%A3", "after must be an item index"),  # an Arabic-Indic digit
    ("?status=waiting", "status must be one of pending, queued, running"),
    ("?status=%00", "status must be one of"),
]


def test_bad_item_parameters_are_400_with_what_is_accepted(client, runtime):
    run_id = runtime.engine.start_run("w-squares", {"items": [1, 2]})
    for query, message in BAD_QUERIES:
        response = items(client, run_id, query=query)
        assert response.status_code == 400, query
        assert message in response.get_json()["error"], (query, response.get_json())


def test_items_of_an_unknown_run_or_step_are_404_and_of_a_task_400(client, runtime):
    run_id = runtime.engine.start_run("w-squares", {"items": [1, 2]})
    for target, step in [(str(uuid.UUID(int=7)), "square"), ("not-a-uuid", "square"), (run_id, "nope"),
                         (run_id, "square[0]")]:
        response = items(client, target, step)
        assert response.status_code == 404, (target, step)
        assert response.get_json()["error"]
    task = items(client, run_id, "total")
    assert task.status_code == 400
    assert task.get_json()["error"] == f"step 'total' of run {run_id} is not a map: only a map node has items"


def test_a_call_links_parent_and_child_both_ways_before_any_worker(client, runtime):
    parent_id = runtime.engine.start_run("w-caller", {"x": 4})
    parent = shown(client, parent_id)
    call = steps_of(parent)["w-double"]
    assert call["status"] == "waiting" and call["wait"]["kind"] == "call" and call["map"] is None
    child_id = call["child_run_id"]
    assert parent["children"] == [{
        "id": child_id, "workflow": "w-double", "status": "pending", "step": "w-double", "detached": False,
        "created_at": parent["children"][0]["created_at"],
    }]
    assert (parent["parent_run_id"], parent["parent_step"], parent["detached"], parent["output"]) == (
        None, None, False, None)
    child = shown(client, child_id)
    assert (child["parent_run_id"], child["parent_step"], child["detached"], child["children"]) == (
        parent_id, "w-double", False, [])
    listed = client.get("/api/runs?workflow=w-double")
    assert_documented(listed, "/api/runs")
    assert [(r["id"], r["parent_run_id"]) for r in listed.get_json()["runs"]] == [(child_id, parent_id)]


def test_a_finished_map_counts_failed_items_and_children_carry_outputs(client, runtime, start_worker, wait_for_run):
    mapped = runtime.engine.start_run("w-squares", {"items": [3, -1, 4, -5, 2]})
    parent_id = runtime.engine.start_run("w-caller", {"x": 4})
    starter = runtime.engine.start_run("w-starter", {})
    start_worker(concurrency=2)
    for run_id in (mapped, parent_id, starter):
        assert wait_for_run(run_id)["status"] == "succeeded"

    square = steps_of(shown(client, mapped))["square"]
    assert square["status"] == "succeeded" and square["result"] == [9, None, 16, None, 4]
    assert {k: square["map"][k] for k in ("succeeded", "failed", "total", "done")} == {
        "succeeded": 3, "failed": 2, "total": 5, "done": 5}
    failed = items(client, mapped, query="?status=failed").get_json()["items"]
    assert [(i["index"], i["error"], i["attempts"]) for i in failed] == [
        (1, "ValueError: negative: -1", 1), (3, "ValueError: negative: -5", 1)]
    done = items(client, mapped, query="?status=succeeded").get_json()["items"]
    assert [(i["index"], i["result"]) for i in done] == [(0, 9), (2, 16), (4, 4)]
    assert all(i["started_at"] <= i["finished_at"] for i in done)

    parent = shown(client, parent_id)
    child_id = steps_of(parent)["w-double"]["child_run_id"]
    assert steps_of(parent)["w-double"]["result"] == {"doubled": 8}
    assert [(c["id"], c["status"]) for c in parent["children"]] == [(child_id, "succeeded")]
    assert shown(client, child_id)["output"] == {"doubled": 8}
    assert parent["output"] is None  # it names no output and no parent waits for it

    kicked = shown(client, starter)["children"]
    assert [(c["workflow"], c["step"], c["detached"]) for c in kicked] == [("w-double", "kick", True)]
    detached = shown(client, kicked[0]["id"])
    assert (detached["parent_run_id"], detached["parent_step"], detached["detached"]) == (starter, "kick", True)


def test_orchestrator_run_shows_map_progress_the_child_and_the_parent(runtime, settings, redis_url):
    env = settings_env(settings, redis_url)
    mapped = runtime.engine.start_run("w-squares", {"items": list(range(12))})
    parent_id = runtime.engine.start_run("w-caller", {})

    out = cli(env, "run", mapped)
    assert out.returncode == 0, out.stderr
    assert "  step square: running  map 0/12 done\n" in out.stdout
    assert "  step total: pending\n" in out.stdout  # a task's line is as before

    out = cli(env, "run", parent_id)
    assert out.returncode == 0, out.stderr
    child_id = re.search(r"child run: (\S+)", out.stdout).group(1)
    assert "  step w-double: waiting\n" in out.stdout
    assert "open: waits for its child run" in out.stdout
    assert re.search(rf"children \(1, newest first\):\n    {child_id}  w-double +pending +step w-double\n",
                     out.stdout), out.stdout

    out = cli(env, "run", child_id)
    assert out.returncode == 0, out.stderr
    assert f"  parent: run {parent_id} (step w-double, call node)\n" in out.stdout


def test_the_run_page_lists_a_maps_items_in_pages_and_links_parent_and_child(client, runtime):
    mapped = runtime.engine.start_run("w-squares", {"items": list(range(150))})
    page = client.get(f"/runs/{mapped}").get_data(as_text=True)
    assert 'data-node="square" data-status="running" data-kind="map"' in page
    assert "map 0/150" in page
    assert page.count('<tr data-index="') == 100
    assert f'href="/runs/{mapped}?items=square&amp;after=99#items-square"' in page
    second = client.get(f"/runs/{mapped}?items=square&after=99").get_data(as_text=True)
    assert re.findall(r'<tr data-index="(\d+)"', second) == [str(i) for i in range(100, 150)]
    queued = client.get(f"/runs/{mapped}?items=square&item_status=queued").get_data(as_text=True)
    assert re.findall(r'<tr data-index="(\d+)"', queued) == ["0", "1", "2", "3", "4"]
    for query in ("items=total", "items=nope", "items=square&after=x", "items=square&item_status=asleep"):
        response = client.get(f"/runs/{mapped}?{query}")
        assert response.status_code == 400, query

    parent_id = runtime.engine.start_run("w-caller", {})
    parent = client.get(f"/runs/{parent_id}").get_data(as_text=True)
    child_id = steps_of(shown(client, parent_id))["w-double"]["child_run_id"]
    assert f'<a class="node-link" href="/runs/{child_id}">' in parent
    assert "call → w-double" in parent
    assert f'<tr data-child="{child_id}" data-status="pending">' in parent
    child = client.get(f"/runs/{child_id}").get_data(as_text=True)
    assert f'<span id="run-parent" data-parent="{parent_id}"><a class="mono" href="/runs/{parent_id}">' in child

    definition = client.get("/workflows/w-composed").get_data(as_text=True)
    assert 'data-kind="map"' in definition and "call → w-double" in definition
