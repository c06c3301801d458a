"""A worker SIGKILLed in the middle of a map: every item still succeeds exactly once."""

from __future__ import annotations

import signal

import pytest

from tests.faults.harness import rows
from tests.fixtures.waiting import wait_for

WORKFLOWS = ("tests.compose_it_flows",)


@pytest.fixture
def settings(settings):
    return settings.with_(workflows=WORKFLOWS)


def running_items(runtime, worker: str) -> int:
    return len(rows(runtime, "SELECT 1 FROM attempts a JOIN steps s ON s.id = a.step_id "
                    "WHERE a.status = 'running' AND a.worker = :w AND s.map_node IS NOT NULL", w=worker))


@pytest.mark.timeout(300)
def test_a_worker_killed_mid_map_loses_no_item_and_repeats_no_success(runtime, start_worker, wait_for_run):
    workers = [start_worker(concurrency=2), start_worker(concurrency=2)]
    run_id = runtime.engine.start_run("it-map", {"n": 120, "sleep": 0.05})
    victim = wait_for(lambda: next((w for w in workers if running_items(runtime, w.name)), None),
                      60, 0.01, "a worker running an item")
    victim.kill(signal.SIGKILL)  # the whole worker: main process and its children
    killed = [victim.name]
    start_worker(concurrency=2)
    run = wait_for_run(run_id, timeout=180)
    assert run["status"] == "succeeded", run
    work = next(s for s in run["steps"] if s["name"] == "work")
    assert [r["i"] for r in work["result"]] == list(range(120))
    per_item = rows(runtime, "SELECT s.map_index, count(*) FILTER (WHERE a.status = 'succeeded') AS ok "
                    "FROM steps s JOIN attempts a ON a.step_id = s.id WHERE s.run_id = :r "
                    "AND s.map_node = 'work' GROUP BY 1", r=run_id)
    assert len(per_item) == 120 and all(row.ok == 1 for row in per_item), per_item
    lost = rows(runtime, "SELECT a.worker FROM attempts a JOIN steps s ON s.id = a.step_id "
                "WHERE s.run_id = :r AND a.error LIKE 'worker lost%'", r=run_id)
    assert lost and {row.worker for row in lost} <= set(killed)
