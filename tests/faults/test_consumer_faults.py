"""Consumers die or freeze under load: killed between recording a batch and committing its
offsets, or stopped (SIGSTOP) past the group's session timeout and then resumed.

To hit the narrow window on purpose, a test freezes the consumer with SIGSTOP, looks at the
database and the group's committed offsets, and kills it only when the database is ahead of
Kafka (the batch is recorded, its offsets are not committed); otherwise it lets the consumer
go on (SIGCONT) and looks again a moment later.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections import defaultdict
from datetime import datetime

import pytest

from tests.faults.harness import (
    LONG,
    Figures,
    audit,
    committed_offsets,
    now,
    publish_figures,
    recorded_ids,
    rows,
    scalar,
    wait_until_settled,
)
from tests.fixtures.waiting import wait_for

#: Messages per consumer batch (one database transaction) in these tests.
BATCH = "50"
#: Milliseconds each event's trigger takes to match, so batches take a while to assess.
ASSESS_MS = 2


def recorded_ends(runtime, topic: str) -> dict[tuple[str, int], int]:
    """Per partition, one past the highest offset recorded in the database."""
    return {(topic, p): o + 1 for p, o in rows(
        runtime, 'SELECT "partition", max("offset") FROM events WHERE topic = :t GROUP BY 1', t=topic)}


def ahead_of_kafka(runtime, settings, topic: str, partitions: set[int] | None = None) -> dict:
    """Partitions whose recorded events run past the group's committed offset."""
    committed = committed_offsets(settings.kafka_bootstrap, settings.kafka_group)
    return {
        tp: (committed.get(tp, 0), end)
        for tp, end in recorded_ends(runtime, topic).items()
        if end > committed.get(tp, 0) and (partitions is None or tp[1] in partitions)
    }


def freeze_mid_batch(consumer, runtime, settings, topic: str, partitions: set[int] | None = None,
                     tries: int = 200) -> dict:
    """SIGSTOP the consumer at a moment its recorded batch is not yet committed in Kafka.

    Returns what it had recorded past the committed offsets (empty if no try hit the window).
    """
    for _ in range(tries):
        time.sleep(random.uniform(0.0, 0.05))
        consumer.kill(signal.SIGSTOP)
        time.sleep(0.05)  # let an offset commit already on the wire land
        ahead = ahead_of_kafka(runtime, settings, topic, partitions)
        if ahead:
            return ahead
        consumer.kill(signal.SIGCONT)
    consumer.kill(signal.SIGSTOP)
    return {}


#: Events and consumer kills: CI kills once, ./scripts/test --long five times.
EVENTS, KILLS = (3000, 5) if LONG else (500, 1)


@pytest.mark.timeout(900 if LONG else 240)
def test_a_consumer_killed_between_recording_and_committing_loses_and_repeats_nothing(
    runtime, settings, make_load, start_worker, start_consumer, side_channel
):
    clock = time.monotonic()
    load = make_load("load")
    topic = load.topic
    workers = [start_worker(concurrency=3) for _ in range(2)]
    consumer = start_consumer("c0", ORCHESTRATOR_KAFKA_BATCH_SIZE=BATCH)
    began = now()
    events = EVENTS
    load.start(events, rate=100, make=lambda n: (load.event(n, assess_ms=ASSESS_MS), None))
    kills: list[tuple[datetime, int, int]] = []  # when, recorded by then, recorded but uncommitted
    for kill in range(KILLS):
        target = (kill + 1) * events * 0.8 // (KILLS + 1)
        wait_for(lambda target=target: recorded_ids(runtime) >= target, 120, 0.05, f"{target} events recorded")
        ahead = freeze_mid_batch(consumer, runtime, settings, topic)
        assert ahead, "never caught the consumer between its database commit and its offset commit"
        consumer.kill(signal.SIGKILL)
        consumer.process.wait(10)
        kills.append((now(), recorded_ids(runtime), sum(end - committed for committed, end in ahead.values())))
        consumer = start_consumer(f"c{kill + 1}", ORCHESTRATOR_KAFKA_BATCH_SIZE=BATCH)

    load.join()
    settled = wait_until_settled(runtime, events, timeout=120, processes=workers)
    assert consumer.stop() == 0, consumer.output()[-3000:]
    report = consumer.report()
    figures = audit(
        runtime, side_channel, Figures(f"consumer SIGKILL mid-batch x{KILLS}"), load.published,
        workflows_per_event=lambda _id: {"chain"}, fault_at=kills[0][0], started_at=began,
        group=settings.kafka_group, bootstrap=settings.kafka_bootstrap,
    )
    # The last successor read the recorded-but-uncommitted events again and recognised them.
    killed_at, recorded_at_kill, uncommitted = kills[-1]
    assert report["redelivered"] >= uncommitted, (report, kills)
    assert report["events"] == events - recorded_at_kill, report
    figures.recover_s = max(
        (scalar(runtime, "SELECT min(received_at) FROM events WHERE received_at > :t", t=at) - at).total_seconds()
        for at, _, _ in kills
    )
    figures.seconds = time.monotonic() - clock
    figures.notes.append(
        f"killed with {', '.join(str(u) for _, _, u in kills)} recorded event(s) uncommitted in Kafka, "
        f"redelivered and skipped; time to recover = until the successor recorded events; "
        f"settled {settled:.0f}s after the load"
    )
    publish_figures(figures)


class OffsetWatch:
    """Samples the group's committed offsets until stopped; `rewinds` lists any that went back."""

    def __init__(self, bootstrap: str, group: str) -> None:
        self.bootstrap, self.group = bootstrap, group
        self.history: dict[tuple[str, int], list[tuple[float, int]]] = defaultdict(list)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> OffsetWatch:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                found = committed_offsets(self.bootstrap, self.group)
            except Exception:  # noqa: BLE001 - keep sampling
                continue
            for tp, offset in found.items():
                seen = self.history[tp]
                if not seen or seen[-1][1] != offset:
                    seen.append((time.monotonic(), offset))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def rewinds(self) -> list[tuple[tuple[str, int], int, int]]:
        return [
            (tp, before, after)
            for tp, seen in self.history.items()
            for (_, before), (_, after) in zip(seen, seen[1:], strict=False)
            if after < before
        ]


@pytest.mark.timeout(240)
def test_a_consumer_frozen_past_its_session_timeout_commits_no_stale_offsets_when_resumed(
    runtime, settings, make_load, start_worker, start_consumer, side_channel
):
    clock = time.monotonic()
    load = make_load("load")
    topic = load.topic
    workers = [start_worker(concurrency=3) for _ in range(2)]
    frozen = start_consumer("frozen", ORCHESTRATOR_KAFKA_BATCH_SIZE=BATCH)
    other = start_consumer("other", ORCHESTRATOR_KAFKA_BATCH_SIZE=BATCH)

    def held(consumer) -> set[int]:  # noqa: ANN001
        return {int(p.rsplit("[", 1)[1].rstrip("]")) for p in consumer.assignment() if p.startswith(topic + "[")}

    wait_for(lambda: held(frozen) and held(other) and not held(frozen) & held(other)
             and held(frozen) | held(other) == {0, 1, 2, 3}, 60, 0.2, "the consumers to split the partitions")
    watch = OffsetWatch(settings.kafka_bootstrap, settings.kafka_group).start()
    began = now()
    events = 500
    load.start(events, rate=80, make=lambda n: (load.event(n, assess_ms=ASSESS_MS), None))
    wait_for(lambda: recorded_ids(runtime) >= 120, 60, 0.05, "120 events to be recorded")

    mine = held(frozen)
    ahead = freeze_mid_batch(frozen, runtime, settings, topic, mine)
    frozen_at, frozen_clock = now(), time.monotonic()
    # The group gives the frozen consumer's partitions to the other one.
    wait_for(lambda: held(other) == {0, 1, 2, 3}, settings.kafka_session_timeout * 3 + 10, 0.2,
             "the other consumer to take over every partition")
    taken_over = time.monotonic() - frozen_clock
    # Quiet, so that a stale commit by the resumed consumer would stay visible.
    load.pause()
    wait_for(lambda: recorded_ids(runtime) == load.count() and not ahead_of_kafka(runtime, settings, topic),
             60, 0.2, "the other consumer to record and commit everything published so far")
    committed_before = committed_offsets(settings.kafka_bootstrap, settings.kafka_group)
    frozen.kill(signal.SIGCONT)
    time.sleep(3.0)  # the resumed consumer finishes its stale batch and tries to commit it
    committed_after = committed_offsets(settings.kafka_bootstrap, settings.kafka_group)
    load.resume()

    load.join()
    settled = wait_until_settled(runtime, events, timeout=120, processes=workers)
    watch.stop()
    figures = audit(
        runtime, side_channel, Figures("consumer SIGSTOP past session timeout, then SIGCONT"),
        load.published, workflows_per_event=lambda _id: {"chain"}, fault_at=frozen_at, started_at=began,
        group=settings.kafka_group, bootstrap=settings.kafka_bootstrap,
    )
    stale = {tp: (committed_before[tp], o) for tp, o in committed_after.items()
             if tp in committed_before and o < committed_before[tp]}
    assert not stale, f"the resumed consumer moved committed offsets back: {stale}"
    assert not watch.rewinds(), f"committed offsets went back: {watch.rewinds()}"
    assert frozen.process.poll() is None, frozen.output()[-3000:]
    assert other.process.poll() is None, other.output()[-3000:]
    # It came back as a member: the group splits the partitions again.
    wait_for(lambda: held(frozen) and held(other) and held(frozen) | held(other) == {0, 1, 2, 3},
             60, 0.2, "the resumed consumer to rejoin the group")
    figures.recover_s = taken_over
    figures.seconds = time.monotonic() - clock
    figures.notes.append(
        f"frozen {'with ' + str(sum(e - c for c, e in ahead.values())) + ' recorded events uncommitted' if ahead else 'mid-batch'}; "
        f"time to recover = until the other consumer held its partitions; settled {settled:.0f}s after the load"
    )
    publish_figures(figures)
