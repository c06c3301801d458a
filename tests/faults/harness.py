"""The load and the ledger of the fault-injection suite.

`Load` publishes uniquely identified events to Kafka at a steady rate from a thread and
remembers where each one landed. `audit` then waits until the system has settled and checks
the promises every fault test makes, whatever the fault:

- every published event is recorded exactly once, and nothing else is;
- every event that matched has exactly one run per matching workflow, and every run is final;
- no attempt of a step ran twice, and nothing ran after a step's success was recorded
  (from the side channel of `tests.faults.flows`, compared with the attempts in the database);
- no offset committed in Kafka is ahead of the events recorded in the database;
- waits agree with their steps and runs: a step is `waiting` exactly when it has one open
  wait, no final run has an open wait or a waiting step, every ended wait says how it
  ended, and no timer is overdue (`audit_waits`);
- no emitted event is left unsent in the outbox for long (`audit_outbox`);
- the API (`/api/runs`, `/api/events`, `/metrics`) reports what the database holds.

It returns the figures of the test (`Figures`), which the suite prints and collects.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic
from sqlalchemy import text

from tests.faults.flows import EXECUTIONS, RETURNED
from tests.fixtures.waiting import wait_for

FINAL = ("succeeded", "failed", "cancelled")
#: Whether the long soak variants run (./scripts/test --long).
LONG = os.environ.get("ORCHESTRATOR_TEST_LONG") == "1"

#: Timer ticks (ORCHESTRATOR_TIMER_INTERVAL) an open timer may be past due on a quiet system:
#: a few, as a busy 2-core machine delays the recovery process's ticks.
TIMER_SLACK_TICKS = 20
#: Seconds an emitted event may stay unsent while Kafka is reachable and a relay runs.
OUTBOX_SLACK = 30.0


def now() -> datetime:
    return datetime.now(UTC)


# -- the load -------------------------------------------------------------------------------------


class Load:
    """Publishes events `{"type": "load", "id": ..., **fields}` from a background thread.

    Each event has a unique id; `placed` remembers the partition and offset Kafka gave it,
    so a test can put the same log back on a broker that lost it.
    """

    def __init__(self, bootstrap: str, topic: str, label: str = "") -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.label = label or uuid.uuid4().hex[:6]
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all",
                                      retries=5)
        self.published: list[str] = []
        #: Acknowledged events: id -> (partition, offset, key, value bytes).
        self.placed: dict[str, tuple[int, int, bytes | None, bytes]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._running = threading.Event()
        self._running.set()
        self._paused = threading.Event()
        self.errors: list[BaseException] = []

    def create_topic(self, partitions: int) -> None:
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        try:
            admin.create_topics([NewTopic(self.topic, partitions, 1)])
        finally:
            admin.close()

    def event(self, number: int, **fields: Any) -> dict[str, Any]:
        return {"type": "load", "id": f"{self.label}-{number}", **fields}

    def send(self, event: dict[str, Any], key: str | None = None, partition: int | None = None) -> None:
        value = json.dumps(event).encode()
        raw_key = (key if key is not None else event["id"]).encode()
        future = self.producer.send(self.topic, value=value, key=raw_key, partition=partition)
        with self._lock:
            self.published.append(event["id"])

        def placed(metadata: Any, event_id: str = event["id"]) -> None:
            with self._lock:
                self.placed[event_id] = (metadata.partition, metadata.offset, raw_key, value)

        future.add_callback(placed)
        future.add_errback(lambda exc: self.errors.append(exc))

    def flush(self) -> None:
        self.producer.flush(timeout=30)

    def start(self, count: int, rate: float, make: Callable[[int], tuple[dict, str | None]] | None = None,
              first: int = 0) -> Load:
        """Publish `count` events at `rate` per second in a thread (`pause`/`resume`/`join`)."""
        make = make or (lambda n: (self.event(n), None))

        def publish() -> None:
            started = time.monotonic()
            for i in range(count):
                if self._stop.is_set():
                    break
                if not self._running.is_set():
                    self.flush()
                    self._paused.set()
                    self._running.wait()
                    self._paused.clear()
                    started = time.monotonic() - i / rate
                event, key = make(first + i)
                self.send(event, key)
                ahead = started + (i + 1) / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            self.flush()

        self._thread = threading.Thread(target=publish, name="load", daemon=True)
        self._thread.start()
        return self

    def pause(self) -> None:
        """Stop publishing and wait until every sent event is acknowledged."""
        self._running.clear()
        if self._thread is not None and self._thread.is_alive():
            self._paused.wait(10)
        self.flush()

    def resume(self) -> None:
        self._running.set()

    def join(self, timeout: float = 120) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
            assert not self._thread.is_alive(), "the load did not finish publishing"
        self.flush()
        assert not self.errors, f"the broker refused events: {self.errors[:3]}"

    def stop(self) -> None:
        """End an open-ended load now (`start` with a large count) and wait for the acks."""
        self._stop.set()
        self._running.set()
        self.join()

    def count(self) -> int:
        with self._lock:
            return len(self.published)

    def close(self) -> None:
        self._stop.set()
        self._running.set()
        if self._thread is not None:
            self._thread.join(30)
        try:
            self.producer.close(timeout=5)
        except Exception:  # noqa: BLE001 - a producer of a broker that is gone
            pass


# -- reading the state ----------------------------------------------------------------------------


def scalar(runtime: Any, sql: str, **params: Any) -> Any:
    with runtime.db.connect() as conn:
        return conn.execute(text(sql), params).scalar_one()


def rows(runtime: Any, sql: str, **params: Any) -> list[Any]:
    with runtime.db.connect() as conn:
        return list(conn.execute(text(sql), params))


def recorded_ids(runtime: Any) -> int:
    return int(scalar(runtime, "SELECT count(DISTINCT payload ->> 'id') FROM events"))


def live_runs(runtime: Any) -> int:
    return int(scalar(runtime, "SELECT count(*) FROM runs WHERE status NOT IN ('succeeded', 'failed', 'cancelled')"))


def wait_until_settled(runtime: Any, expected_events: int, timeout: float,
                       processes: Iterable[Any] = ()) -> float:
    """Wait until `expected_events` distinct events are recorded and every run is final.

    On a timeout the message shows the live steps and the Python stacks of `processes`
    (worker or consumer handles), so a hang can be told from slowness.
    """
    began = time.monotonic()
    try:
        wait_for(lambda: recorded_ids(runtime) >= expected_events, timeout, 0.25,
                 f"{expected_events} events to be recorded")
        remaining = max(10.0, timeout - (time.monotonic() - began))
        wait_for(lambda: live_runs(runtime) == 0, remaining, 0.25, "every run to reach a final state")
    except AssertionError as exc:
        stuck = rows(runtime, "SELECT r.workflow, r.status, s.name, s.status, s.attempts, "
                              "s.lease_expires_at, (SELECT a.worker FROM attempts a WHERE a.step_id = s.id "
                              "ORDER BY a.number DESC LIMIT 1) FROM runs r JOIN steps s ON s.run_id = r.id "
                              "WHERE r.status NOT IN ('succeeded', 'failed', 'cancelled') LIMIT 10")
        raise AssertionError(f"{exc}; live steps, e.g. {stuck}\n{stacks(processes)}") from None
    return time.monotonic() - began


def stacks(processes: Iterable[Any]) -> str:
    """The Python stacks (py-spy) of each process and its children, for a failure message."""
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        return "(py-spy is not installed: no stacks)"
    dumps = []
    for handle in processes:
        pid = handle.process.pid
        children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        for each in [str(pid), *children]:
            done = subprocess.run([py_spy, "dump", "--pid", each], capture_output=True, text=True, timeout=30)
            dumps.append(f"--- {getattr(handle, 'name', '?')} pid {each}\n{done.stdout or done.stderr}")
    return "\n".join(dumps)


# -- the figures -----------------------------------------------------------------------------------


@dataclass
class Figures:
    """What one fault test measured; one row of the suite's table."""

    test: str
    events_in: int = 0
    events_recorded: int = 0
    runs_finished: int = 0
    duplicates: int = 0
    lost: int = 0
    #: Attempts given up because their worker died, and run again (at-least-once, by design).
    reruns: int = 0
    #: Seconds from the fault until every run created before it had finished.
    recover_s: float = 0.0
    #: Longest time with no run finishing while the test ran.
    stall_s: float = 0.0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"FIGURES {self.test}: events in {self.events_in}, recorded {self.events_recorded}, "
            f"runs finished {self.runs_finished}, duplicates {self.duplicates}, lost {self.lost}, "
            f"attempts re-run {self.reruns}, time to recover {self.recover_s:.1f}s, "
            f"longest stall {self.stall_s:.1f}s, test {self.seconds:.0f}s"
            + (f" ({'; '.join(self.notes)})" if self.notes else "")
        )


COLLECTED: list[Figures] = []


def table(figures: Iterable[Figures]) -> str:
    lines = [
        "| fault | events in | recorded | runs finished | duplicates | lost | attempts re-run "
        "| time to recover | longest stall | test time | notes |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for f in figures:
        lines.append(
            f"| {f.test} | {f.events_in} | {f.events_recorded} | {f.runs_finished} | {f.duplicates} "
            f"| {f.lost} | {f.reruns} | {f.recover_s:.1f} s | {f.stall_s:.1f} s | {f.seconds:.0f} s "
            f"| {'; '.join(f.notes)} |"
        )
    return "\n".join(lines)


def publish_figures(figures: Figures) -> None:
    """Print the test's figures line; the session ends with the table of all of them (and
    writes it to the file ORCHESTRATOR_FAULT_FIGURES names, if set)."""
    print(figures.line())
    COLLECTED.append(figures)


# -- the audit ------------------------------------------------------------------------------------


def audit(
    runtime: Any,
    side: redis.Redis,
    figures: Figures,
    published: Iterable[str],
    *,
    workflows_per_event: Callable[[str], set[str]],
    fault_at: datetime | None,
    started_at: datetime,
    group: str | None = None,
    bootstrap: str | None = None,
    must_succeed: Callable[[str], bool] = lambda workflow: True,
    unsent_within: float = OUTBOX_SLACK,
) -> Figures:
    """Check every promise (module docstring) and fill in `figures`; raises on a broken one.

    `unsent_within`: seconds an emitted event may stay unsent (Kafka reachable, a relay running).
    """
    published = list(published)
    assert len(set(published)) == len(published), "the load published an id twice"
    figures.events_in = len(published)

    # Every event recorded exactly once.
    per_id = dict(rows(runtime, "SELECT payload ->> 'id', count(*) FROM events GROUP BY 1"))
    duplicated_events = {i: n for i, n in per_id.items() if n > 1}
    missing = set(published) - set(per_id)
    unexpected = set(per_id) - set(published)
    figures.events_recorded = sum(per_id.values())
    figures.lost = len(missing)
    figures.duplicates = sum(n - 1 for n in duplicated_events.values())
    assert not missing, f"{len(missing)} events lost, e.g. {sorted(missing)[:5]}"
    assert not duplicated_events, f"events recorded twice: {list(duplicated_events.items())[:5]}"
    assert not unexpected, f"events nobody published: {sorted(unexpected)[:5]}"
    outcomes = Counter(o for (o,) in rows(runtime, "SELECT outcome FROM events"))
    assert outcomes["rejected"] == 0, rows(runtime, "SELECT reason FROM events WHERE outcome = 'rejected' LIMIT 3")

    # One run per (event, matching workflow); every run final.
    runs = rows(runtime, """
        SELECT r.id, r.workflow, r.status, r.error, r.created_at, r.finished_at, e.payload ->> 'id'
          FROM runs r JOIN events e ON e.id = r.event_id""")
    assert int(scalar(runtime, "SELECT count(*) FROM runs WHERE event_id IS NULL")) == 0
    by_event: dict[str, Counter[str]] = defaultdict(Counter)
    for run in runs:
        by_event[run[6]][run[1]] += 1
    extra_runs = 0
    for event_id in published:
        started = by_event.get(event_id, Counter())
        extra_runs += sum(n - 1 for n in started.values() if n > 1)
        assert set(started) == workflows_per_event(event_id), (event_id, dict(started))
    figures.duplicates += extra_runs
    assert extra_runs == 0, "an event started a workflow twice"
    live = [r for r in runs if r[2] not in FINAL]
    assert not live, f"runs not final: {live[:5]}"
    wrong = [r for r in runs if must_succeed(r[1]) and r[2] != "succeeded"]
    assert not wrong, f"runs that should have succeeded: {wrong[:5]}"
    figures.runs_finished = len(runs)

    # Steps: no attempt ran twice; nothing ran after a success was recorded.
    steps = rows(runtime, """
        SELECT s.run_id, s.name, s.status, s.attempts,
               coalesce(array_agg(a.number ORDER BY a.number) FILTER (WHERE a.id IS NOT NULL), '{}'),
               coalesce(array_agg(a.status ORDER BY a.number) FILTER (WHERE a.id IS NOT NULL), '{}'),
               coalesce(array_agg(a.error ORDER BY a.number) FILTER (WHERE a.id IS NOT NULL), '{}'),
               (SELECT w.status FROM waits w WHERE w.run_id = s.run_id AND w.step = s.name
                 ORDER BY w.id DESC LIMIT 1)
          FROM steps s LEFT JOIN attempts a ON a.step_id = s.id
         GROUP BY s.id""")
    executions: dict[tuple[str, str], dict[int, int]] = defaultdict(dict)
    for raw_key, raw_count in side.hgetall(EXECUTIONS).items():
        run_id, step, attempt = raw_key.decode().rsplit("|", 2)
        executions[(run_id, step)][int(attempt)] = int(raw_count)
    finished_runs: dict[tuple[str, str], int] = defaultdict(int)
    for raw_key, raw_count in side.hgetall(RETURNED).items():
        run_id, step, _attempt = raw_key.decode().rsplit("|", 2)
        finished_runs[(run_id, step)] += int(raw_count)
    reruns = returned_again = 0
    for run_id, name, status, attempts, numbers, statuses, errors, wait in steps:
        key = (str(run_id), name)
        ran = executions.get(key, {})
        if wait is not None:  # a node that waits: no attempts; its wait ended it (`audit_waits`)
            assert attempts == 0 and not numbers and not ran, f"waiting node {key} ran attempts {numbers} {ran}"
            assert status != "succeeded" or wait in ("matched", "approved", "fired"), (
                f"waiting node {key} succeeded but its last wait is {wait}")
            continue
        assert list(numbers) == list(range(1, attempts + 1)), (key, numbers, attempts)
        twice = {n: c for n, c in ran.items() if c > 1}
        assert not twice, f"step {key} ran attempt(s) {twice} more than once"
        assert set(ran) <= set(numbers), f"step {key} ran attempts {sorted(ran)} but recorded {numbers}"
        succeeded = [n for n, s in zip(numbers, statuses, strict=True) if s == "succeeded"]
        assert len(succeeded) <= 1, f"step {key} succeeded twice: {numbers} {statuses}"
        if status == "succeeded":
            assert succeeded == [attempts], f"step {key} succeeded by attempt {succeeded} of {attempts}"
            assert max(ran, default=0) <= succeeded[0], f"step {key} ran again after it succeeded"
        else:
            assert not succeeded, f"step {key} is {status} with a succeeded attempt"
        lost = [e for s, e in zip(statuses, errors, strict=True) if s == "failed" and (e or "").startswith("worker lost")]
        if lost and status == "succeeded":
            reruns += len(lost)
        if finished_runs.get(key, 0) > 1:
            returned_again += 1
    figures.reruns = reruns
    if returned_again:
        figures.notes.append(f"{returned_again} step(s) ran to the end twice: the first outcome was never recorded")

    # Waits agree with steps and runs; timers fired; emits relayed.
    ended = audit_waits(runtime, overdue_after=TIMER_SLACK_TICKS * runtime.settings.timer_interval)
    if ended:
        figures.notes.append("waits " + ", ".join(f"{s} {n}" for s, n in sorted(ended.items())))
    audit_outbox(runtime, unsent_within)

    # Kafka never holds a committed offset whose event is not in the database.
    if group and bootstrap:
        assert_committed_offsets_recorded(runtime, bootstrap, group)

    # The API and /metrics report what the database holds.
    assert_api_matches_database(runtime)

    # Recovery figures, from the recorded times.
    finishes = sorted(r[5] for r in runs if r[5] is not None)
    points = [started_at, *finishes]
    figures.stall_s = max((b - a).total_seconds() for a, b in zip(points, points[1:], strict=False)) if finishes else 0.0
    if fault_at is not None:
        before = [r[5] for r in runs if r[4] <= fault_at and r[5] is not None]
        figures.recover_s = max(0.0, max(((f - fault_at).total_seconds() for f in before), default=0.0))
    return figures


def audit_waits(runtime: Any, overdue_after: float | None) -> Counter[str]:
    """Check the waits against their steps and runs; returns the ended waits per status.

    `overdue_after`: seconds an open timer may be past due (None: not checked, for a moment
    when no recovery process runs).
    """
    orphans = rows(runtime, """
        SELECT w.run_id, w.step, w.kind, s.status FROM waits w
          LEFT JOIN steps s ON s.run_id = w.run_id AND s.name = w.step
         WHERE w.status = 'open' AND s.status IS DISTINCT FROM 'waiting' LIMIT 5""")
    assert not orphans, f"open waits whose step is not waiting (run, step, kind, step status): {orphans}"
    unmatched = rows(runtime, """
        SELECT s.run_id, s.name, count(w.id) FROM steps s
          LEFT JOIN waits w ON w.run_id = s.run_id AND w.step = s.name AND w.status = 'open'
         WHERE s.status = 'waiting' GROUP BY 1, 2 HAVING count(w.id) <> 1 LIMIT 5""")
    assert not unmatched, f"waiting steps without exactly one open wait (run, step, open waits): {unmatched}"
    final = rows(runtime, """
        SELECT r.id, r.status, s.name, s.status,
               (SELECT count(*) FROM waits w WHERE w.run_id = r.id AND w.step = s.name AND w.status = 'open')
          FROM runs r JOIN steps s ON s.run_id = r.id
         WHERE r.status IN ('succeeded', 'failed', 'cancelled')
           AND (s.status = 'waiting' OR EXISTS (SELECT 1 FROM waits w WHERE w.run_id = r.id
                                                 AND w.step = s.name AND w.status = 'open'))
         LIMIT 5""")
    assert not final, f"final runs with a waiting step or an open wait (run, status, step, step status, open): {final}"
    # How each ended wait ended is on its row: a time, and the event or decision that ended it.
    muddled = rows(runtime, """
        SELECT id, run_id, step, kind, status, closed_at, event_id, decision FROM waits
         WHERE (status = 'open') = (closed_at IS NOT NULL)
            OR (status = 'matched') <> (event_id IS NOT NULL)
            OR (status IN ('approved', 'rejected')) <> (decision IS NOT NULL)
            OR (status = 'fired' AND kind <> 'sleep')
            OR (status IN ('matched', 'timed_out') AND kind = 'sleep')
            OR (status = 'timed_out' AND (due_at IS NULL OR closed_at < due_at))
            OR (status = 'fired' AND closed_at < due_at)
         LIMIT 5""")
    assert not muddled, f"ended waits whose row contradicts how they ended: {muddled}"
    if overdue_after is not None:
        overdue = rows(runtime, """
            SELECT run_id, step, kind, due_at, now() - due_at FROM waits
             WHERE status = 'open' AND due_at < now() - make_interval(secs => :slack)
             ORDER BY due_at LIMIT 5""", slack=overdue_after)
        assert not overdue, f"open timers more than {overdue_after:g}s past due (run, step, kind, due, late): {overdue}"
    return Counter(dict(rows(runtime, "SELECT status, count(*) FROM waits WHERE status <> 'open' GROUP BY 1")))


def audit_outbox(runtime: Any, unsent_within: float) -> int:
    """No emitted event unsent for longer than `unsent_within` seconds; returns how many are unsent."""
    stale = rows(runtime, """
        SELECT id, run_id, step, topic, created_at FROM outbox
         WHERE sent_at IS NULL AND created_at < now() - make_interval(secs => :slack)
         ORDER BY id LIMIT 5""", slack=unsent_within)
    assert not stale, f"emitted events unsent for more than {unsent_within:g}s (id, run, step, topic, created): {stale}"
    return int(scalar(runtime, "SELECT count(*) FROM outbox WHERE sent_at IS NULL"))


def committed_offsets(bootstrap: str, group: str) -> dict[tuple[str, int], int]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    try:
        found = admin.list_group_offsets({group: None}).get(group, {})
    finally:
        admin.close()
    return {(tp.topic, tp.partition): meta.offset for tp, meta in found.items() if meta.offset >= 0}


def assert_committed_offsets_recorded(runtime: Any, bootstrap: str, group: str,
                                      committed: dict[tuple[str, int], int] | None = None) -> None:
    """Every offset below the group's committed one has its event row."""
    committed = committed_offsets(bootstrap, group) if committed is None else committed
    assert committed, f"group {group} has committed nothing"
    for (topic, partition), offset in committed.items():
        if topic.endswith(".dlq"):
            continue
        present = int(scalar(runtime, 'SELECT count(*) FROM events WHERE topic = :t AND "partition" = :p '
                                      'AND "offset" < :o', t=topic, p=partition, o=offset))
        assert present == offset, (
            f"{topic}[{partition}] committed at {offset} in Kafka but only {present} of those events "
            "are in the database"
        )


def assert_api_matches_database(runtime: Any) -> None:
    from web import create_app

    app = create_app({"RUNTIME": runtime, "TESTING": True, "METRICS_SETTLE_SECONDS": 0})
    client = app.test_client()

    listed: dict[str, str] = {}
    cursor = None
    while True:
        page = client.get("/api/runs", query_string={"limit": 500, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200, page.get_data(as_text=True)
        body = page.get_json()
        for run in body["runs"]:
            assert run["id"] not in listed, f"/api/runs listed {run['id']} twice"
            listed[run["id"]] = run["status"]
        cursor = body["next_cursor"]
        if not cursor:
            break
    stored = {str(i): s for i, s in rows(runtime, "SELECT id, status FROM runs")}
    assert listed == stored, "/api/runs differs from the runs table"

    events: dict[int, tuple[str, list[str]]] = {}
    cursor = None
    while True:
        page = client.get("/api/events", query_string={"limit": 500, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200, page.get_data(as_text=True)
        body = page.get_json()
        for event in body["events"]:
            assert event["id"] not in events, f"/api/events listed {event['id']} twice"
            events[event["id"]] = (event["outcome"], sorted(r["id"] for r in event["runs"]))
        cursor = body["next_cursor"]
        if not cursor:
            break
    lineage: dict[int, list[str]] = defaultdict(list)
    for event_id, run_id in rows(runtime, "SELECT event_id, id FROM runs WHERE event_id IS NOT NULL"):
        lineage[event_id].append(str(run_id))
    stored_events = {i: (o, sorted(lineage.get(i, []))) for i, o in rows(runtime, "SELECT id, outcome FROM events")}
    assert events == stored_events, "/api/events differs from the events table"

    metrics = client.get("/metrics").get_data(as_text=True)
    runs_metric = Counter()
    events_metric = Counter()
    for line in metrics.splitlines():
        if line.startswith("orchestrator_runs{"):
            labels, value = line[len("orchestrator_runs{"):].split("} ")
            parts = dict(p.split("=", 1) for p in labels.split(","))
            runs_metric[(parts["workflow"].strip('"'), parts["status"].strip('"'))] = int(float(value))
        elif line.startswith("orchestrator_events_total{"):
            labels, value = line[len("orchestrator_events_total{"):].split("} ")
            events_metric[labels.split("=", 1)[1].strip('"')] = int(float(value))
    stored_runs = Counter({(w, s): n for w, s, n in rows(runtime, "SELECT workflow, status, count(*) FROM runs GROUP BY 1, 2")})
    assert +runs_metric == +stored_runs, f"/metrics orchestrator_runs {dict(runs_metric)} != {dict(stored_runs)}"
    stored_outcomes = Counter(dict(rows(runtime, "SELECT outcome, count(*) FROM events GROUP BY 1")))
    assert +events_metric == +stored_outcomes, f"/metrics events {dict(events_metric)} != {dict(stored_outcomes)}"
    backlog = next(float(line.split()[-1]) for line in metrics.splitlines()
                   if line.startswith("orchestrator_outbox_backlog "))
    unsent = int(scalar(runtime, "SELECT count(*) FROM outbox WHERE sent_at IS NULL"))
    assert int(backlog) == unsent, f"/metrics orchestrator_outbox_backlog {backlog:g} != {unsent} unsent outbox rows"
