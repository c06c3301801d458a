"""Debounce and batch windows under races, in PostgreSQL, without Kafka.

Two consumers record events of overlapping keys (two partitions) while two closers (the
consumer loop's and the recovery process's, here threads) close every window as soon as it
exists. Every event must end in exactly one window and every closed window in exactly one
run, with no deadlock between the consumers' key locks and the closers' row locks.
"""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest
from sqlalchemy import text

from orchestrator import Batch, Debounce, Workflow, clock, kafka_trigger
from orchestrator.db.windows import close_due
from orchestrator.dispatch import RecordingDispatcher
from orchestrator.engine import WorkflowEngine
from orchestrator.events import record_batch
from orchestrator.intake import Message, TriggerIndex, assess
from orchestrator.registry import Registry
from orchestrator.runtime import Runtime
from orchestrator.settings import Settings

EVENTS = 240  # per partition
KEYS = 6


def _workflows() -> list[Workflow]:
    debounced = Workflow("race-debounced", triggers=[
        kafka_trigger("race", debounce=Debounce(key="user", period="10s", max_wait="1m"))])
    batched = Workflow("race-batched", triggers=[
        kafka_trigger("race", batch=Batch(max_size=7, window="10s", key="user"))])
    for flow in (debounced, batched):
        @flow.step
        def work(ctx):  # noqa: ANN001, ANN202
            return None
    return [debounced, batched]


@pytest.fixture
def racing(pg_url: str, clean_state: None):
    settings = Settings(database_url=pg_url, workflows=())
    runtime = Runtime(settings)
    engine = WorkflowEngine(runtime.sessions, Registry(_workflows()), RecordingDispatcher(), settings)
    yield engine, runtime
    runtime.close()


def rows(runtime: Runtime, sql: str) -> list:
    with runtime.db.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql))]


def test_consumers_and_closers_racing_put_every_event_in_exactly_one_run(racing):
    engine, runtime = racing
    index = TriggerIndex(engine.registry)
    later = clock.now() + timedelta(hours=1)  # every open window is due for the closers
    produced = threading.Event()
    errors: list[BaseException] = []

    def consume(partition: int) -> None:
        try:
            for start in range(0, EVENTS, 8):
                batch = [assess(Message("race", partition, offset,
                                        json.dumps({"user": offset % KEYS, "p": partition, "n": offset}).encode()),
                                index, 1 << 20)
                         for offset in range(start, start + 8)]
                record_batch(engine, batch)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def close() -> None:
        try:
            while not produced.is_set():
                close_due(engine, now=later)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    consumers = [threading.Thread(target=consume, args=(p,)) for p in (0, 1)]
    closers = [threading.Thread(target=close) for _ in range(2)]
    for t in consumers + closers:
        t.start()
    for t in consumers:
        t.join(120)
    produced.set()
    for t in closers:
        t.join(60)
    assert errors == []
    while close_due(engine, now=later):
        pass

    total = 2 * EVENTS
    assert rows(runtime, "SELECT count(*) FROM events") == [(total,)]
    for workflow in ("race-debounced", "race-batched"):
        # Each event joined one window of each workflow, and no window is left open.
        assert rows(runtime, f"SELECT count(*), count(DISTINCT event_id) FROM window_events "
                             f"WHERE workflow = '{workflow}'") == [(total, total)]
        assert rows(runtime, f"SELECT count(*) FROM windows WHERE workflow = '{workflow}' "
                             "AND (closed_at IS NULL OR run_id IS NULL)") == [(0,)]
        # One run per window, and the runs' inputs hold each event once.
        windows = rows(runtime, f"SELECT count(*), count(DISTINCT run_id) FROM windows "
                                f"WHERE workflow = '{workflow}'")
        runs = rows(runtime, f"SELECT input FROM runs WHERE workflow = '{workflow}'")
        assert windows == [(len(runs), len(runs))]
        if workflow == "race-debounced":
            absorbed = [e for (data,) in runs for e in data["$events"]]
        else:
            absorbed = [(e["p"], e["n"]) for (data,) in runs for e in data["events"]]
            assert all(len(data["events"]) <= 7 for (data,) in runs)
        assert len(absorbed) == len(set(absorbed)) == total


def test_one_poll_batch_overfilling_a_batch_window_starts_a_run_per_full_window(racing):
    engine, runtime = racing
    index = TriggerIndex(engine.registry)
    batch = [assess(Message("race", 0, n, json.dumps({"user": 1, "p": 0, "n": n}).encode()), index, 1 << 20)
             for n in range(16)]
    record_batch(engine, batch)  # one transaction: two windows fill (7 + 7), a third opens
    sizes = rows(runtime, "SELECT size, closed_at IS NOT NULL, run_id IS NOT NULL FROM windows "
                          "WHERE workflow = 'race-batched' ORDER BY id")
    assert sizes == [(7, True, True), (7, True, True), (2, False, False)]
    assert rows(runtime, "SELECT count(*) FROM events WHERE outcome = 'matched'") == [(16,)]
