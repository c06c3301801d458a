"""Maps and calls end to end: real PostgreSQL, Redis and worker processes (each running
its recovery process)."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from tests.fixtures.waiting import wait_for

WORKFLOWS = ("tests.compose_it_flows",)


@pytest.fixture
def settings(settings):
    return settings.with_(workflows=WORKFLOWS)


def steps_of(run: dict) -> dict[str, dict]:
    return {s["name"]: s for s in run["steps"]}


def item_attempts(runtime, run_id: str) -> list:
    with runtime.db.connect() as conn:
        return conn.execute(text(
            "SELECT s.map_index, a.number, a.status, a.started_at, a.finished_at FROM attempts a "
            "JOIN steps s ON s.id = a.step_id WHERE s.run_id = :r AND s.map_node IS NOT NULL "
            "ORDER BY a.started_at"), {"r": run_id}).all()


def peak(spans) -> int:
    moments = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda m: (m[0], m[1]))
    level = best = 0
    for _, delta in moments:
        level += delta
        best = max(best, level)
    return best


def test_maps_of_zero_and_one_item_failing_items_and_allowed_failures(runtime, start_worker, wait_for_run):
    start_worker(concurrency=3)
    started = {n: runtime.engine.start_run("it-map", {"n": n}) for n in (0, 1)}
    broken = runtime.engine.start_run("it-map", {"n": 20, "broken": [7]})
    lenient = runtime.engine.start_run("it-lenient", {"values": [1, 0, 4]})
    for n, run_id in started.items():
        run = wait_for_run(run_id)
        assert run["status"] == "succeeded", run
        expected = [{"i": i, "square": i * i} for i in range(n)]
        assert steps_of(run)["work"]["result"] == expected
        assert steps_of(run)["count"]["result"] == {"n": n, "last": expected[-1] if expected else None}

    # An item out of retries fails the map, and so the run; nothing of the map stays open.
    run = wait_for_run(broken, timeout=60)
    assert run["status"] == "failed", run
    work = steps_of(run)["work"]
    assert work["status"] == "failed"
    assert work["error"].startswith("item 7 of map 'work' failed: ValueError: item 7 always fails")
    assert steps_of(run)["count"]["status"] == "cancelled"
    with runtime.db.connect() as conn:
        open_items = conn.execute(text(
            "SELECT count(*) FROM steps WHERE run_id = :r AND map_node IS NOT NULL "
            "AND status IN ('pending', 'queued', 'running', 'retrying')"), {"r": broken}).scalar()
    assert open_items == 0

    # allow_failures: None in the failed item's place, its error in ctx.map_errors.
    run = wait_for_run(lenient)
    assert run["status"] == "succeeded", run
    assert steps_of(run)["report"]["result"] == {"results": [1.0, None, 0.25], "failed": [1]}


def test_a_thousand_items_never_run_more_than_five_at_once(runtime, start_worker, wait_for_run, side_channel):
    start_worker(concurrency=6)  # more processes than the map's limit of 5
    run_id = runtime.engine.start_run("it-map", {"n": 1000, "flaky": [3, 500]})
    run = wait_for_run(run_id, timeout=120)
    assert run["status"] == "succeeded", run
    result = steps_of(run)["work"]["result"]
    assert [r["i"] for r in result] == list(range(1000))
    attempts = item_attempts(runtime, run_id)
    assert len([a for a in attempts if a.status == "succeeded"]) == 1000
    assert sorted((a.map_index, a.number) for a in attempts if a.status == "failed") == [(3, 1), (500, 1)]
    assert peak([(a.started_at, a.finished_at) for a in attempts]) <= 5
    assert all(int(side_channel.get(f"item:{run_id}:{i}")) == 1 for i in range(1000))


def test_calls_get_the_child_output_retry_a_failed_child_and_fail_with_its_error(
    runtime, start_worker, wait_for_run
):
    start_worker(concurrency=3)
    ok = runtime.engine.start_run("it-parent", {"values": [4, 5]})
    retried = runtime.engine.start_run("it-parent", {"fail_first": True})
    failing = runtime.engine.start_run("it-parent", {"fail": True})

    run = wait_for_run(ok)
    assert run["status"] == "succeeded", run
    assert steps_of(run)["publish"]["result"] == {"published": {"total": 9}}
    with runtime.db.connect() as conn:
        child = conn.execute(text("SELECT * FROM runs WHERE parent_run_id = :r"), {"r": ok}).one()
    assert child.workflow == "it-child" and child.status == "succeeded" and child.parent_step == "total"
    assert child.output == {"total": 9} and child.detached is False

    run = wait_for_run(retried, timeout=60)
    assert run["status"] == "succeeded", run
    with runtime.db.connect() as conn:
        children = conn.execute(text("SELECT status FROM runs WHERE parent_run_id = :r ORDER BY created_at"),
                                {"r": retried}).scalars().all()
    assert children == ["failed", "succeeded"]

    run = wait_for_run(failing, timeout=60)
    assert run["status"] == "failed", run
    node = steps_of(run)["total"]
    assert node["status"] == "failed" and "child always fails" in node["error"]


def test_cancelling_the_parent_cancels_its_child(runtime, start_worker, wait_for_run):
    start_worker(concurrency=2)
    run_id = runtime.engine.start_run("it-parent", {"sleep": 3})

    def child():
        with runtime.db.connect() as conn:
            return conn.execute(text("SELECT id, status FROM runs WHERE parent_run_id = :r"), {"r": run_id}).one_or_none()

    wait_for(lambda: child() is not None and child().status == "running", 30, message="the child to start")
    assert runtime.engine.cancel_run(run_id)
    wait_for(lambda: child().status == "cancelled", 15, message="the child to be cancelled")
    run = wait_for_run(run_id)
    assert run["status"] == "cancelled"
