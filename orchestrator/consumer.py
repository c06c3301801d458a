"""`orchestrator consume`: Kafka events in, recorded events and started runs out.

The loop, for each poll batch of at most `ORCHESTRATOR_KAFKA_BATCH_SIZE` messages:

1. recognise the messages already recorded (one query), then assess the others (pure:
   decode, match, map, validate; see `intake`) until half the poll interval is spent; the
   rest is fetched again by the next poll, so slow trigger functions slow the consumer down
   but never make it outlast `ORCHESTRATOR_KAFKA_MAX_POLL_INTERVAL`;
2. record the batch and start its runs in one database transaction (see `events`);
   first-step messages go to Celery after the commit;
3. copy the batch's rejected events to their dead-letter topics and wait for the acks;
4. commit the batch's offsets to Kafka.

An offset is committed only after its event is in the database (and, if rejected, in the
dead-letter topic), so a crash at any point loses nothing; what was done but not committed
is delivered again and recognised as already recorded, so nothing happens twice. When a
step fails (database or broker away) the batch's partitions are rewound to the batch's
first offsets and the batch is retried after a pause, so no memory is held across failures.

Several consumers in one group share the partitions of the trigger topics; Kafka moves the
partitions of a consumer that dies to the others. A broker or database outage is logged
once when it starts and once when it ends, and retried with a growing pause, never in a
tight loop. SIGTERM finishes the batch in hand, commits it and leaves the group.

`replay_event(engine, event_id)` (from `events`) re-evaluates a recorded event against
today's triggers and starts its runs as a new event would; it is re-exported here.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable
from itertools import zip_longest
from typing import Any

from kafka import ConsumerRebalanceListener
from kafka.errors import CommitFailedError, CorruptRecordError, KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError

from . import tracing
from .db import windows
from .dead_letters import ensure_dead_letter_topics, send_dead_letters
from .engine import WorkflowEngine
from .errors import ConfigurationError
from .events import BatchResult, first_line, record_batch_setting_aside, recorded_events
from .events import replay_event as replay_event  # the dashboard's replay calls it here
from .intake import MATCHED, REJECTED, Assessment, Message, Timings, TriggerIndex, assess
from .kafka import (
    bootstrap_servers,
    check_connection,
    create_consumer,
    create_producer,
    quiet_client_logs,
    reachable,
)
from .settings import Settings

log = logging.getLogger("orchestrator.consumer")

#: Milliseconds one poll waits for messages; also how soon a stop request is noticed.
POLL_TIMEOUT_MS = 500
#: Seconds without messages after which the loop checks that the broker still answers.
PROBE_INTERVAL = 2.0
#: Pauses, in seconds, between retries while Kafka or the database is away: first, longest.
RETRY_DELAY = (0.2, 5.0)
#: Milliseconds an offset commit, or leaving the group on close, may take before it is
#: given up (and retried later): a broker that went away must not freeze the loop.
KAFKA_CALL_TIMEOUT_MS = 5000
#: What Kafka accepts as a topic name.
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
#: Seconds between two progress lines in the log.
REPORT_INTERVAL = 30.0
#: Seconds between two passes of the consumer's closer of due debounce/batch windows.
WINDOW_INTERVAL = 1.0
#: Fraction of `ORCHESTRATOR_KAFKA_MAX_POLL_INTERVAL` one batch may spend evaluating
#: triggers; the rest is left for recording it, its dead letters and its offset commit.
ASSESS_BUDGET = 0.5


class Outage:
    """One dependency's availability: logged once when lost, once when back."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.since: float | None = None
        self.failures = 0

    @property
    def is_down(self) -> bool:
        return self.since is not None

    def down(self, reason: object) -> None:
        self.failures += 1
        if self.since is None:
            self.since = time.monotonic()
            log.warning("%s is unavailable (%s); waiting for it (logged once)", self.what, reason)

    def up(self) -> None:
        if self.since is not None:
            log.warning("%s is back after %.1fs", self.what, time.monotonic() - self.since)
        self.since = None
        self.failures = 0

    def pause(self) -> float:
        """Seconds to wait before the next attempt: doubling, capped."""
        first, longest = RETRY_DELAY
        return min(longest, first * 2 ** max(0, self.failures - 1))


class StorageFailed(Exception):
    """The database could not take a batch; the batch will be retried."""


class EventConsumer:
    """The consumer service; `run()` blocks until `stop()` (or SIGTERM via the CLI)."""

    def __init__(self, engine: WorkflowEngine, settings: Settings | None = None) -> None:
        self.engine = engine
        self.settings = settings or engine.settings
        self.index = TriggerIndex(engine.registry)
        self.stopping = threading.Event()
        self.kafka = Outage(f"Kafka at {self.settings.kafka_bootstrap}")
        self.database = Outage("the database")
        self.counts: Counter[str] = Counter()
        self._consumer: Any = None
        self._producer: Any = None
        #: Offsets of recorded work not yet committed to Kafka (a commit failed), by partition.
        self._uncommitted: dict[TopicPartition, int] = {}
        self._last_message = time.monotonic()
        self._last_report = time.monotonic()
        #: Workflows whose slow triggers were already reported (see `_too_slow`).
        self._slow_warned: set[str] = set()
        #: Whether a loaded trigger has a debounce or batch window (then the loop closes them).
        self._windowed = any(getattr(t, "window", None) for w in engine.registry for t in w.triggers)
        self._last_window_pass = -float("inf")

    # -- lifecycle ------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish its batch, commit and leave the group."""
        self.stopping.set()

    def run(self) -> None:
        if not self.index:
            raise ConfigurationError(
                "no loaded workflow has a Kafka trigger or a wait_for_event node, so there is "
                "nothing to consume; "
                "add kafka_trigger(...) to a workflow or check ORCHESTRATOR_WORKFLOWS"
            )
        bootstrap_servers(self.settings)  # a clear error now rather than in the loop
        illegal = [t for t in self.index.topics if not _TOPIC.match(t)]
        if illegal:
            raise ConfigurationError(
                f"Kafka topic name(s) {', '.join(map(repr, illegal))} in kafka_trigger(...) are not "
                "legal: use 1-249 letters, digits, '.', '_' or '-'"
            )
        quiet_client_logs()
        if not check_connection(self.settings):  # a refused TLS handshake or login: one line, exit
            log.warning("no Kafka broker answers at %s yet; waiting for one", self.settings.kafka_bootstrap)
        log.info(
            "consuming %s as group %r from %s",
            ", ".join(self.index.topics), self.settings.kafka_group, self.settings.kafka_bootstrap,
        )
        while not self.stopping.is_set():
            if not self._connect():
                self.stopping.wait(self.kafka.pause())
                continue
            try:
                self._consume()
            finally:
                self._close()
        self._report(force=True)

    def _connect(self) -> bool:
        try:
            self._consumer = create_consumer(self.settings)
            self._consumer.subscribe(self.index.topics, listener=_Rebalance(self))
            self._producer = create_producer(self.settings)
        except KafkaError as exc:
            self._close()
            self.kafka.down(exc)
            return False
        ensure_dead_letter_topics(self.settings, self.index.topics)
        return True

    def _close(self) -> None:
        if self._consumer is not None:
            if self._uncommitted:
                try:  # recorded work whose commit failed earlier: one last try before leaving
                    self._commit({})
                except Exception:  # noqa: BLE001 - the next owner skips what is recorded
                    log.debug("could not commit leftover offsets", exc_info=True)
            try:
                self._consumer.close(autocommit=False, timeout_ms=KAFKA_CALL_TIMEOUT_MS)
            except Exception:  # noqa: BLE001 - closing a client of a broker that is gone
                log.debug("error closing the consumer", exc_info=True)
            else:
                if self.stopping.is_set():
                    log.info("left consumer group %r", self.settings.kafka_group)
            self._consumer = None
        if self._producer is not None:
            try:
                self._producer.close(timeout=5)
            except Exception:  # noqa: BLE001
                log.debug("error closing the producer", exc_info=True)
            self._producer = None

    # -- the loop ---------------------------------------------------------------------------

    def _consume(self) -> None:
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                batch = self._consumer.poll(
                    timeout_ms=POLL_TIMEOUT_MS, max_records=self.settings.kafka_batch_size
                )
            except CorruptRecordError as exc:
                if not self._skip_unreadable(exc):
                    self.kafka.down(exc)
                    return  # reconnect: a new client reads the partitions afresh
                continue
            except KafkaError as exc:
                self.kafka.down(exc)
                self.stopping.wait(self.kafka.pause())
                continue
            self._close_windows()
            if not batch:
                self._idle(started)
                continue
            self.kafka.up()
            self._last_message = time.monotonic()
            messages = [Message.from_record(r) for records in batch.values() for r in records]
            self.handle(messages)
            self._report()

    def _idle(self, started: float) -> None:
        """Nothing arrived: commit leftovers, and notice (once) a broker that went away."""
        if self._uncommitted and not self.kafka.is_down:
            self._commit({})
        now = time.monotonic()
        if now - self._last_message >= PROBE_INTERVAL:
            self._last_message = now
            if reachable(self.settings):
                self.kafka.up()
            else:
                self.kafka.down("no broker answers")
        if self.kafka.is_down and now - started < POLL_TIMEOUT_MS / 1000:
            self.stopping.wait(self.kafka.pause())  # the client returned at once: do not spin

    def _close_windows(self) -> None:
        """Close due debounce/batch windows about every `WINDOW_INTERVAL`, so a deployment
        without the recovery process still closes them (`FOR UPDATE SKIP LOCKED`: the two
        never close one window twice). A failure is logged and retried next pass."""
        if not self._windowed or time.monotonic() - self._last_window_pass < WINDOW_INTERVAL:
            return
        self._last_window_pass = time.monotonic()
        try:
            started = windows.close_due(self.engine)
        except (OperationalError, InterfaceError, DisconnectionError) as exc:
            self.database.down(first_line(exc))
            return
        except Exception:  # noqa: BLE001 - the events must keep flowing
            log.exception("closing due debounce/batch windows failed; will try again")
            return
        self.counts["runs"] += len(started)

    def handle(self, messages: list[Message]) -> BatchResult | None:
        """Assess, record, dead-letter and commit one batch; rewinds it if a step fails.

        Messages already recorded (a redelivery) are recognised first, in one query, and
        their triggers are not evaluated again. Assessing stops once `ASSESS_BUDGET` of the
        poll interval is spent; what is assessed is recorded and committed, and the rest is
        fetched again by the next poll, so no batch outlasts the interval however slow the
        trigger functions are.
        """
        try:
            recorded = recorded_events(self.engine, messages)
        except (OperationalError, InterfaceError, DisconnectionError) as exc:
            self.database.down(first_line(exc))
            self._rewind(messages)
            self.stopping.wait(self.database.pause())
            return None
        assessments, deferred = self._assess(messages, recorded)
        self._rewind(deferred)  # first: a failed batch below rewinds further back
        return self.handle_assessed(assessments)

    def _assess(
        self, messages: list[Message], recorded: dict[tuple[str, int, int], Assessment]
    ) -> tuple[list[Assessment], list[Message]]:
        """Assess messages, partitions taken in turn, until the time budget is spent.

        Returns the assessments and the messages left for the next poll (in each partition,
        those after the last one assessed). At least one message is always assessed.
        """
        budget = self.settings.kafka_max_poll_interval * ASSESS_BUDGET
        started = time.monotonic()
        timings: Timings = {}
        ordered = _interleaved(messages)
        assessments: list[Assessment] = []
        for n, message in enumerate(ordered):
            known = recorded.get((message.topic, message.partition, message.offset))
            if known is not None:
                assessments.append(known)
                continue
            if n and time.monotonic() - started > budget:
                self._too_slow(timings, len(assessments), len(ordered), budget)
                return assessments, ordered[n:]
            assessments.append(assess(message, self.index, self.settings.max_event_bytes, timings))
        return assessments, []

    def _too_slow(self, timings: Timings, done: int, total: int, budget: float) -> None:
        """Say once per workflow that its triggers are too slow for the poll interval."""
        slowest = max(timings.items(), key=lambda item: item[1][0] / max(1, item[1][1]), default=None)
        if slowest is None or slowest[0] in self._slow_warned:
            return
        name, (seconds, events) = slowest
        self._slow_warned.add(name)
        log.warning(
            "assessing events is slow: workflow %r takes %.2fs per event in its trigger "
            "(match/input functions run on the consumer's loop); to stay within "
            "ORCHESTRATOR_KAFKA_MAX_POLL_INTERVAL (%gs) each poll assesses for at most %gs, "
            "this one %d of %d messages, the rest follow; make trigger functions fast "
            "(logged once per workflow)",
            name, seconds / max(1, events), self.settings.kafka_max_poll_interval, budget,
            done, total,
        )

    def handle_assessed(self, assessments: list[Assessment]) -> BatchResult | None:
        """Record, dead-letter and commit assessed messages; rewinds them if a step fails.

        With tracing on, each message gets an `event.intake` span (child of its
        `traceparent` header), parent of the runs it starts, ended once the batch is done.
        """
        if not tracing.enabled:
            return self._handle_assessed(assessments)
        for a in assessments:
            m = a.message
            a.trace = tracing.start_intake(m.topic, m.partition, m.offset, m.headers)
            if a.event_id is not None:
                a.trace.set_attribute("orchestrator.event.redelivered", True)
        try:
            return self._handle_assessed(assessments)
        finally:
            for a in assessments:
                a.trace.set_attribute("orchestrator.event.outcome", a.outcome)
                a.trace.end()

    def _handle_assessed(self, assessments: list[Assessment]) -> BatchResult | None:
        messages = [a.message for a in assessments]
        try:
            result = self._record(assessments)
        except StorageFailed as exc:
            self.database.down(exc)
            self._rewind(messages)
            self.stopping.wait(self.database.pause())
            return None
        self.database.up()
        try:
            send_dead_letters(self._producer, result.dead_letters, self.settings)
        except KafkaError as exc:
            self.kafka.down(f"dead-letter copy failed: {exc}")
            self._rewind(messages)
            self.stopping.wait(self.kafka.pause())
            return None
        self._commit(_next_offsets(messages))
        self.counts["events"] += result.recorded
        self.counts["redelivered"] += result.duplicates
        self.counts["runs"] += len(result.run_ids)
        self.counts["dead_letters"] += len(result.dead_letters)
        self.counts.update(result.outcomes)
        return result

    def _skip_unreadable(self, exc: CorruptRecordError) -> bool:
        """Record a message the Kafka client cannot parse as rejected, then move past it.

        kafka-python raises for a record it cannot decode (a header key that is not UTF-8, a
        failed CRC) and, polled again at the same position, loops forever: one such message
        would stop its partition for good. The culprit is in the partition the client was
        reading, at the consumer's position there (nothing of it was returned). Its bytes
        cannot be had, so it is recorded and dead-lettered without them. False when the
        partition cannot be told.
        """
        fetcher = getattr(self._consumer, "_fetcher", None)
        tp = getattr(getattr(fetcher, "_next_partition_records", None), "topic_partition", None)
        if tp is None or tp not in self._consumer.assignment():
            return False
        offset = self._consumer.position(tp)
        reason = f"the Kafka client could not read this message: {exc}"
        log.warning("event %s/%s/%s: %s", tp.topic, tp.partition, offset, reason)
        unreadable = Assessment(Message(tp.topic, tp.partition, offset, value=None), REJECTED, reason)
        while self.handle_assessed([unreadable]) is None:  # the database or Kafka is away
            if self.stopping.is_set():
                return True  # not committed: read (and refused) again after a restart
        self._consumer.seek(tp, offset + 1)
        return True

    def _record(self, assessments: list[Assessment]) -> BatchResult:
        """Record the batch; if the database refuses its data, find and set aside the culprit."""
        try:
            return record_batch_setting_aside(self.engine, assessments)
        except (OperationalError, InterfaceError, DisconnectionError) as exc:
            raise StorageFailed(first_line(exc)) from exc

    def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit recorded offsets (plus any left over); keep them for later if Kafka says no."""
        for tp, offset in offsets.items():
            self._uncommitted[tp] = max(offset, self._uncommitted.get(tp, 0))
        assigned = self._consumer.assignment()
        pending = {tp: o for tp, o in self._uncommitted.items() if tp in assigned}
        for tp in set(self._uncommitted) - set(pending):
            del self._uncommitted[tp]  # no longer ours: the new owner re-reads and skips it
        if not pending:
            return
        try:
            self._consumer.commit(
                {tp: OffsetAndMetadata(o, "", -1) for tp, o in pending.items()},
                timeout_ms=KAFKA_CALL_TIMEOUT_MS,
            )
        except CommitFailedError:
            log.info("offsets not committed: the group rebalanced; the new owner of these "
                     "partitions will skip the events already recorded")
            self._uncommitted.clear()
            return
        except KafkaError as exc:
            self.kafka.down(f"offset commit failed: {exc}")
            return
        for tp, offset in pending.items():
            if self._uncommitted.get(tp) == offset:
                del self._uncommitted[tp]

    def _rewind(self, messages: Iterable[Message]) -> None:
        """Fetch these messages again on the next poll (partitions still ours only)."""
        first: dict[TopicPartition, int] = {}
        for m in messages:
            tp = TopicPartition(m.topic, m.partition)
            first[tp] = min(m.offset, first.get(tp, m.offset))
        assigned = self._consumer.assignment()
        for tp, offset in first.items():
            if tp in assigned:
                try:
                    self._consumer.seek(tp, offset)
                except (ValueError, AssertionError):
                    pass  # revoked in the meantime

    def _report(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_report < REPORT_INTERVAL:
            return
        self._last_report = now
        c = self.counts
        log.info(
            "recorded %d event(s) (%d matched, %d ignored, %d rejected), started %d run(s), "
            "%d dead letter(s), %d redelivered",
            c["events"], c[MATCHED], c["ignored"], c[REJECTED], c["runs"],
            c["dead_letters"], c["redelivered"],
        )

    # -- rebalances ---------------------------------------------------------------------------

    def partitions_revoked(self, revoked: Iterable[Any]) -> None:
        """Commit what is recorded for the partitions we give up (never more)."""
        revoked = set(revoked)
        leftover = {tp: o for tp, o in self._uncommitted.items() if tp in revoked}
        for tp in leftover:
            del self._uncommitted[tp]
        if leftover and self._consumer is not None:
            try:
                self._consumer.commit_async({tp: OffsetAndMetadata(o, "", -1) for tp, o in leftover.items()})
            except Exception:  # noqa: BLE001 - best effort: the new owner skips recorded events
                log.debug("could not commit offsets of revoked partitions", exc_info=True)
        if revoked:
            log.info("partitions revoked: %s", _names(revoked))

    def partitions_assigned(self, assigned: Iterable[Any]) -> None:
        log.info("partitions assigned: %s", _names(assigned))

    def partitions_lost(self, lost: Iterable[Any]) -> None:
        """Evicted from the group: the offsets can no longer be committed by us."""
        lost = set(lost)
        for tp in [tp for tp in self._uncommitted if tp in lost]:
            del self._uncommitted[tp]
        log.info("partitions lost: %s", _names(lost))


class _Rebalance(ConsumerRebalanceListener):
    """Forwards kafka-python's rebalance callbacks to the consumer service."""

    def __init__(self, service: EventConsumer) -> None:
        self.service = service

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.service.partitions_revoked(revoked)

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.service.partitions_assigned(assigned)

    def on_partitions_lost(self, lost: Any) -> None:
        self.service.partitions_lost(lost)


def _interleaved(messages: list[Message]) -> list[Message]:
    """The messages with their partitions taken in turn, each partition's kept in order, so
    a batch cut short by the time budget still moves every partition forward."""
    by_partition: dict[tuple[str, int], list[Message]] = {}
    for m in messages:
        by_partition.setdefault((m.topic, m.partition), []).append(m)
    rows = zip_longest(*by_partition.values())
    return [m for row in rows for m in row if m is not None]


def _next_offsets(messages: Iterable[Message]) -> dict[TopicPartition, int]:
    """Per partition, the offset to commit: one past the last message handled."""
    offsets: dict[TopicPartition, int] = {}
    for m in messages:
        tp = TopicPartition(m.topic, m.partition)
        offsets[tp] = max(m.offset + 1, offsets.get(tp, 0))
    return offsets


def _names(partitions: Iterable[Any]) -> str:
    items = sorted(f"{tp.topic}[{tp.partition}]" for tp in partitions)
    return ", ".join(items) or "none"
