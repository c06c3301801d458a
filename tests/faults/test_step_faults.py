"""Steps that misbehave in every way user code can, in the middle of a load of good events.

A step that hangs (with and without honouring its timeout), raises an exception that cannot be
printed or pickled, raises a BaseException, returns something that cannot be stored as JSON, or
exits the worker process: each run ends failed with an error that says what happened, and the
workers keep serving the load.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.faults.flows import HOSTILE
from tests.faults.harness import (
    Figures,
    audit,
    live_runs,
    now,
    publish_figures,
    recorded_ids,
    rows,
    wait_until_settled,
)
from tests.fixtures.waiting import wait_for

#: Load events that also start each hostile workflow, twice each, spread over the load.
HOSTILE_AT = {40 + 15 * i + 220 * copy: name for copy in range(2) for i, name in enumerate(HOSTILE)}


@pytest.mark.timeout(240)
def test_misbehaving_steps_fail_with_a_clear_error_and_the_workers_keep_serving(
    runtime, settings, make_load, start_worker, start_consumer, side_channel
):
    clock = time.monotonic()
    load = make_load("load")
    workers = [start_worker(concurrency=3) for _ in range(2)]
    pids = {w.name: w.process.pid for w in workers}
    start_consumer()
    began = now()

    def make(n: int) -> tuple[dict, None]:
        extra = {"hostile": HOSTILE_AT[n]} if n in HOSTILE_AT else {}
        return load.event(n, **extra), None

    events = 500
    load.start(events, rate=60, make=make).join()
    settled = wait_until_settled(runtime, events, timeout=150, processes=workers)

    hostile_ids = {load.event(n)["id"]: name for n, name in HOSTILE_AT.items()}
    figures = audit(
        runtime, side_channel, Figures("misbehaving steps (hang, bad exceptions, non-JSON, os._exit)"),
        load.published,
        workflows_per_event=lambda i: {"chain", hostile_ids[i]} if i in hostile_ids else {"chain"},
        fault_at=None, started_at=began,
        group=settings.kafka_group, bootstrap=settings.kafka_bootstrap,
        must_succeed=lambda workflow: HOSTILE.get(workflow, ("succeeded",))[0] == "succeeded",
    )
    found = rows(runtime, """
        SELECT r.workflow, r.status, r.error, s.status, s.error, s.attempts,
               (SELECT count(*) FROM attempts a WHERE a.step_id = s.id AND a.error IS NOT NULL),
               (SELECT a.logs::text FROM attempts a WHERE a.step_id = s.id ORDER BY a.number DESC LIMIT 1)
          FROM runs r JOIN steps s ON s.run_id = r.id WHERE r.workflow <> 'chain'""")
    assert len(found) == len(HOSTILE_AT)
    wrong = []
    for workflow, status, run_error, step_status, step_error, attempts, explained, logs in found:
        expected_status, expected_text = HOSTILE[workflow]
        if expected_status == "succeeded":
            right = status == step_status == "succeeded" and expected_text in json.loads(logs)[0]["message"]
        else:
            right = (status == step_status == expected_status and expected_text in (step_error or "")
                     and explained == attempts and bool(run_error))
        if not right:
            wrong.append((workflow, status, step_status, step_error, f"{explained} of {attempts} attempts explained"))
    assert not wrong, "\n".join(map(repr, wrong))

    # The same worker processes are still serving: a second wave runs on both of them.
    for worker in workers:
        assert worker.process.poll() is None, worker.output()[-3000:]
    wave_from = now()
    load.start(60, rate=60, first=events).join()
    wait_for(lambda: recorded_ids(runtime) == events + 60 and live_runs(runtime) == 0, 60, 0.25,
             "the second wave to finish")
    served = dict(rows(runtime, "SELECT worker, count(*) FROM attempts WHERE started_at > :t GROUP BY 1",
                       t=wave_from))
    assert set(served) == set(pids), f"attempts of the second wave by worker: {served}"
    assert {w.name: w.process.pid for w in workers} == pids
    assert scalar_failed_chains(runtime) == 0
    figures.seconds = time.monotonic() - clock
    figures.notes.append(f"{len(HOSTILE_AT)} runs of misbehaving steps each ended as expected, with its own error; "
                         f"both workers kept serving; settled {settled:.0f}s after the load")
    publish_figures(figures)


def scalar_failed_chains(runtime) -> int:
    return len(rows(runtime, "SELECT 1 FROM runs WHERE workflow = 'chain' AND status <> 'succeeded'"))
