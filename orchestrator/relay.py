"""The relay: publishes the outbox (events steps emitted with `ctx.emit`) to Kafka.

Guarantees:

* **At least once.** A row is marked sent (`sent_at`) only after Kafka acknowledged it with
  `acks="all"` (every in-sync replica). A relay that dies between the ack and the mark, or
  a mark that is lost with the database, sends the row again: the copy carries the same
  `orchestrator-event-id` header, so readers de-duplicate (this project's consumer does, on
  `events.source_event_id`). Each message also carries `orchestrator-run-id` and
  `orchestrator-step`.
* **Per-key order.** Rows are published oldest first by id within a batch and batch after
  batch, with one produce request in flight per broker connection, so for one key Kafka
  receives them in the order they were written. An emit written after another committed
  (a later step of the same run, or of any run that started after it) always has a higher
  id; two rows written by transactions open at the same time go in id order.
* **One relay publishes at a time** (PostgreSQL). Each batch is claimed in a transaction
  that first takes the advisory lock `RELAY_LOCK` (`pg_try_advisory_xact_lock`: a relay
  that finds it taken waits for its next turn rather than queueing behind it) and then
  locks its rows with `SELECT ... FOR UPDATE SKIP LOCKED`. Taking the oldest rows under one
  lock was chosen over "the oldest unsent row of each key" because it keeps order for every
  key while sending whole batches of a hot key; extra relays are hot standbys that take over
  within `ORCHESTRATOR_RELAY_INTERVAL` when the active one dies (its transaction, and so its
  locks, end with its connection). On SQLite run one relay: a second one only causes
  duplicates, which readers drop.
* **Publishes at once.** A success with emits notifies `OUTBOX_CHANNEL` at its commit
  (PostgreSQL `NOTIFY`); an idle relay listens on it (`OutboxListener`) and so starts its
  next batch as soon as the rows are visible. It also looks every
  `ORCHESTRATOR_RELAY_INTERVAL` seconds, which is all it does on SQLite or while its
  listening connection is away.
* **Never stops its host.** Inside `orchestrator consume` it is a thread of its own
  (`RelayThread`): Kafka or the database being away, or anything else going wrong, is
  logged once and retried with a growing pause; meanwhile steps keep writing, so the outbox
  grows, and it drains when Kafka returns.

A row Kafka refuses for good (say, larger than the broker accepts) is logged and retried;
it holds back nothing but itself. The backlog shows on /metrics.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kafka.errors import KafkaError
from sqlalchemy import Engine, func, select, update
from sqlalchemy.exc import DBAPIError

from . import clock
from .db.models import OutboxRow
from .emits import EVENT_ID_HEADER, OUTBOX_CHANNEL, RUN_ID_HEADER, STEP_HEADER, headers_of_json
from .kafka import create_producer, quiet_client_logs
from .settings import Settings

log = logging.getLogger("orchestrator.relay")

#: PostgreSQL advisory lock key held by the relay publishing a batch ("outbox" in ASCII).
RELAY_LOCK = 0x6F7574626F78
#: Seconds one batch's messages may take to be acknowledged by every in-sync replica.
SEND_TIMEOUT = 10.0
#: Milliseconds a send may block for topic metadata (Kafka away): short, so the batch is
#: given up and retried after a pause instead of holding its transaction.
MAX_BLOCK_MS = 5000
#: Pauses, in seconds, between retries while Kafka or the database is away: first, longest.
RETRY_DELAY = (0.2, 5.0)
#: Seconds between two progress lines in the log.
REPORT_INTERVAL = 30.0

_outbox = OutboxRow.__table__


@dataclass
class BatchOutcome:
    """What one `relay_batch` did."""

    claimed: int = 0
    sent: int = 0
    #: Another relay holds `RELAY_LOCK`: nothing was read.
    busy: bool = False
    #: The first send error, if any row was not acknowledged.
    error: BaseException | None = None


def create_relay_producer(settings: Settings) -> Any:
    """The Kafka producer of the relay: `acks="all"`, one request in flight per connection
    (a retried request cannot overtake a later one: per-key order), short metadata waits."""
    return create_producer(settings, max_in_flight_requests_per_connection=1, max_block_ms=MAX_BLOCK_MS)


def message_headers(row: Any) -> list[tuple[str, bytes]]:
    """The step's own headers, then the relay's three (see the module docstring)."""
    return [
        *headers_of_json(row.headers),
        (EVENT_ID_HEADER, str(row.event_id).encode()),
        (RUN_ID_HEADER, str(row.run_id).encode()),
        (STEP_HEADER, row.step.encode("utf-8")),
    ]


def relay_batch(db: Engine, producer: Any, limit: int) -> BatchOutcome:
    """Claim up to `limit` of the oldest unsent rows, publish them, mark those acknowledged.

    One transaction: the rows stay locked (and, on PostgreSQL, `RELAY_LOCK` held) until
    their marks commit, so no other relay publishes them meanwhile.
    """
    outcome = BatchOutcome()
    with db.begin() as conn:
        if conn.dialect.name == "postgresql" and not conn.scalar(
            select(func.pg_try_advisory_xact_lock(RELAY_LOCK))
        ):
            outcome.busy = True
            return outcome
        rows = conn.execute(
            select(_outbox.c.id, _outbox.c.run_id, _outbox.c.step, _outbox.c.topic, _outbox.c.key,
                   _outbox.c.value, _outbox.c.headers, _outbox.c.event_id)
            .where(_outbox.c.sent_at.is_(None))
            .order_by(_outbox.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        outcome.claimed = len(rows)
        if not rows:
            return outcome
        futures: list[tuple[int, Any]] = []
        for row in rows:
            try:
                future = producer.send(
                    row.topic,
                    value=json.dumps(row.value, ensure_ascii=False).encode("utf-8"),
                    key=None if row.key is None else row.key.encode("utf-8"),
                    headers=message_headers(row),
                )
            except KafkaError as exc:  # no metadata (Kafka away), or refused before sending
                outcome.error = outcome.error or exc
                break  # later rows wait: sending them now could overtake this one
            futures.append((row.id, future))
        try:
            producer.flush(timeout=SEND_TIMEOUT)
        except KafkaError as exc:
            outcome.error = outcome.error or exc
        acknowledged: list[int] = []
        for row_id, future in futures:
            if not future.is_done:  # the flush gave up: not acknowledged, and not waited for
                continue
            try:
                future.get(timeout=0)
            except KafkaError as exc:
                outcome.error = outcome.error or exc
                continue
            acknowledged.append(row_id)
        if acknowledged:
            conn.execute(
                update(_outbox).where(_outbox.c.id.in_(acknowledged)).values(sent_at=clock.now())
            )
        outcome.sent = len(acknowledged)
    return outcome


class OutboxListener:
    """A connection of its own listening on `OUTBOX_CHANNEL`: `wait(seconds)` returns when
    a success with emits commits, or after `seconds`. Off PostgreSQL (psycopg), or while it
    cannot connect, it only sleeps, and the relay polls."""

    def __init__(self, db: Engine, stopping: threading.Event) -> None:
        self.enabled = db.dialect.name == "postgresql" and db.dialect.driver == "psycopg"
        self.conninfo = db.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self.stopping = stopping
        self._conn: Any = None

    def wait(self, seconds: float) -> None:
        conn = self._connect()
        if conn is None:
            self.stopping.wait(seconds)
            return
        try:
            for _ in conn.notifies(timeout=seconds, stop_after=1):
                pass
        except Exception:  # noqa: BLE001 - the database went away: poll until it is back
            log.debug("relay: lost the connection listening for new emits", exc_info=True)
            self.close()
            self.stopping.wait(seconds)

    def _connect(self) -> Any:
        if self._conn is None and self.enabled:
            import psycopg

            try:
                self._conn = psycopg.connect(self.conninfo, autocommit=True, connect_timeout=5)
                self._conn.execute(f"LISTEN {OUTBOX_CHANNEL}")
            except Exception:  # noqa: BLE001 - polled meanwhile; tried again next time
                log.debug("relay: cannot listen for new emits", exc_info=True)
                self.close()
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 - closing a connection that is gone
                log.debug("error closing the relay's listening connection", exc_info=True)
            self._conn = None


class Relay:
    """The relay service: `run()` publishes the outbox until `stop()`; it never raises."""

    def __init__(
        self,
        db: Engine,
        settings: Settings,
        producer_factory: Callable[[Settings], Any] = create_relay_producer,
    ) -> None:
        self.db = db
        self.settings = settings
        self.producer_factory = producer_factory
        self.stopping = threading.Event()
        self.listener = OutboxListener(db, self.stopping)
        self.sent = 0
        self._producer: Any = None
        self._failures = 0
        self._down_since: float | None = None
        self._last_report = time.monotonic()
        self._reported = 0

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        log.info("relaying the outbox to %s", self.settings.kafka_bootstrap)
        try:
            while not self.stopping.is_set():
                pause = self.tick()
                if pause and self._down_since is None:
                    self.listener.wait(pause)  # idle: the next commit with emits wakes it
                elif pause:
                    self.stopping.wait(pause)  # failing: back off, whatever commits
        finally:
            self.listener.close()
            self._close()
            log.info("relay stopped; %d event(s) relayed", self.sent)

    def tick(self) -> float:
        """One batch; returns the seconds to wait before the next (0: more is waiting)."""
        try:
            if self._producer is None:
                self._producer = self.producer_factory(self.settings)
            outcome = relay_batch(self.db, self._producer, self.settings.relay_batch_size)
        except KafkaError as exc:
            self._close(timeout=0)
            return self._failed(exc)
        except DBAPIError as exc:
            return self._failed(exc)
        except Exception as exc:  # noqa: BLE001 - a relay bug must not stop the consumer it runs in
            log.exception("relay: unexpected error")
            self._close(timeout=0)
            return self._failed(exc)
        self.sent += outcome.sent
        self._report()
        if outcome.error is not None:
            # A fresh producer next time: this one may still hold the unacknowledged
            # messages, which it would send later, after the rows' next sends.
            self._close(timeout=0)
            return self._failed(outcome.error)
        self._recovered()
        if outcome.busy or outcome.claimed < self.settings.relay_batch_size:
            return self.settings.relay_interval
        return 0.0

    def _failed(self, exc: BaseException) -> float:
        self._failures += 1
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("relay: cannot publish the outbox (%s); unsent events wait in the "
                        "outbox, retrying (logged once)", str(exc).splitlines()[0] if str(exc) else exc)
        first, longest = RETRY_DELAY
        return min(longest, first * 2 ** (self._failures - 1))

    def _recovered(self) -> None:
        if self._down_since is not None:
            log.warning("relay: publishing again after %.1fs", time.monotonic() - self._down_since)
        self._down_since = None
        self._failures = 0

    def _report(self) -> None:
        now = time.monotonic()
        if now - self._last_report >= REPORT_INTERVAL:
            self._last_report = now
            if self.sent != self._reported:  # nothing new: no line (an idle relay stays quiet)
                self._reported = self.sent
                log.info("relayed %d event(s)", self.sent)

    def _close(self, timeout: float = 5) -> None:
        if self._producer is not None:
            try:
                self._producer.close(timeout=timeout)
            except Exception:  # noqa: BLE001 - closing a client of a broker that is gone
                log.debug("error closing the relay's producer", exc_info=True)
            self._producer = None


class RelayThread:
    """A `Relay` on a daemon thread of its own, for `orchestrator consume`: whatever the
    relay meets, the consume loop goes on."""

    def __init__(self, db: Engine, settings: Settings) -> None:
        self.relay = Relay(db, settings)
        self.thread = threading.Thread(target=self._run, name="outbox-relay", daemon=True)

    def start(self) -> RelayThread:
        quiet_client_logs()
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            self.relay.run()
        except BaseException:  # noqa: BLE001 - reported; the consumer keeps consuming
            log.exception("relay thread ended")

    def stop(self, timeout: float = SEND_TIMEOUT + 5) -> None:
        self.relay.stop()
        self.thread.join(timeout)
