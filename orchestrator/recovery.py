"""The recovery loop: settle steps whose worker died and re-send messages that were lost.

Every worker runs it beside itself, in a process of its own (`RecoveryProcess`). On PostgreSQL an advisory lock lets one node sweep
at a time (the others skip that round); every action it takes is itself conditional, so a
second sweeper could do no harm, only waste.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Self

from sqlalchemy import Connection, select, text
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError

from . import planner as P
from . import scheduler
from .db import windows
from .db.models import StepRun
from .engine import WorkflowEngine
from .settings import Settings

log = logging.getLogger("orchestrator.recovery")

#: Advisory lock key held by the node that sweeps (any constant shared by all nodes).
ADVISORY_LOCK_KEY = 0x0_4F52_4348  # "ORCH"
#: Steps handled per sweep and kind, so one sweep never holds locks for long.
BATCH = 500
#: Errors that mean the database is unreachable (an outage), not that an item is bad.
CONNECTION_ERRORS = (OperationalError, InterfaceError, DisconnectionError)


@contextmanager
def sweeper_lock(engine: WorkflowEngine) -> Iterator[Connection | None]:
    """Hold the sweeper's advisory lock for the block: yields a dedicated connection (a
    session-level advisory lock belongs to its connection), or None when another node
    holds the lock and this one is to skip its round. Off PostgreSQL there is no lock."""
    db = engine.sessions.kw["bind"]
    postgres = db.dialect.name == "postgresql"
    with db.connect() as conn:
        if postgres:
            if not conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": ADVISORY_LOCK_KEY}):
                conn.rollback()
                yield None
                return
            conn.commit()
        try:
            yield conn
        finally:
            if postgres:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_LOCK_KEY})
                conn.commit()


def fire_timers(engine: WorkflowEngine) -> int:
    """Fire every due timer (sleeps end, waits and approvals time out), in batches of
    `BATCH`, under the sweeper's advisory lock: many hosts may run this, each timer fires
    once (`WorkflowEngine.fire_due` is conditional besides). Returns how many fired."""
    with sweeper_lock(engine) as conn:
        return 0 if conn is None else _fire_all(engine)


def fire_schedules(engine: WorkflowEngine) -> int:
    """One scheduler pass (`scheduler.fire_due`) under the sweeper's advisory lock: one
    node schedules at a time, another takes over when it dies. Returns the runs started."""
    with sweeper_lock(engine) as conn:
        return 0 if conn is None else len(scheduler.fire_due(engine).started)


def _close_windows(engine: WorkflowEngine) -> None:
    """Close due debounce/batch windows (`db.windows.close_due`, safe beside the consumers'
    closers), a batch at a time until fewer than a full batch were due."""
    while len(windows.close_due(engine)) >= windows.CLOSE_BATCH:
        pass


def _pass(what: str, action: Callable[[WorkflowEngine], object], engine: WorkflowEngine,
          broken: list[str]) -> None:
    """One periodic pass for the loop (`fire_schedules`, `_close_windows`): an error in it (a
    bug, a schema not upgraded) is logged once while it lasts (`broken` holds the last one),
    and never stops the sweeps; a lost connection propagates to the loop's reconnect."""
    try:
        action(engine)
    except CONNECTION_ERRORS:
        raise
    except Exception as exc:  # noqa: BLE001 - the sweep after it must still run
        if [str(exc)] != broken:
            log.exception("recovery loop: %s failed; will keep trying", what)
        broken[:] = [str(exc)]
    else:
        broken.clear()


def _fire_all(engine: WorkflowEngine) -> int:
    fired = 0
    while True:
        done = engine.fire_due(BATCH)
        fired += done
        if done < BATCH:
            return fired


def sweep(engine: WorkflowEngine, expire_leases: bool = True) -> dict[str, int]:
    """One pass: expire lapsed leases, re-send stale queued steps, fire due timers.
    Returns counts.

    `expire_leases=False` leaves running steps alone (see `OutageGrace`). Each step is
    its own failure domain: one that cannot be settled is logged with its run and failed
    with that error (`_give_up`), and the sweep goes on. Only a connection error
    (`CONNECTION_ERRORS`) ends the sweep.
    """
    now = datetime.now(UTC)
    counts = {"expired": 0, "redelivered": 0, "admitted": 0, "abandoned": 0, "timers": 0,
              "composed": 0}
    _report_versions(engine)
    with sweeper_lock(engine) as conn:
        if conn is None:
            return counts
        expired = conn.scalars(
            select(StepRun.id)
            .where(StepRun.status == P.RUNNING, StepRun.lease_expires_at < now)
            .limit(BATCH)
        ).all() if expire_leases else []
        stale = conn.scalars(
            select(StepRun.id)
            .where(
                StepRun.status.in_((P.QUEUED, P.RETRYING)), StepRun.lease_expires_at < now
            )
            .limit(BATCH)
        ).all()
        conn.rollback()
        for step_id in expired:
            try:
                if engine.expire_lease(step_id):
                    counts["expired"] += 1
            except CONNECTION_ERRORS:
                raise
            except Exception as exc:  # noqa: BLE001 - one bad step must not stop the sweep
                _give_up(engine, step_id, "settle the lapsed lease of", exc)
        if stale:
            counts["redelivered"] = _redeliver(engine, stale)
        counts["admitted"] = engine.admit_waiting()
        counts["abandoned"] = engine.fail_abandoned()
        counts["timers"] = _fire_all(engine)
        counts["composed"] = engine.settle_composed()
    if any(counts.values()):
        log.info(
            "recovery: %(expired)d lapsed lease(s), %(redelivered)d message(s) re-sent, "
            "%(admitted)d waiting run(s) admitted, %(abandoned)d run(s) of removed workflows failed, "
            "%(timers)d timer(s) fired, %(composed)d map(s), call(s) or child run(s) settled",
            counts,
        )
    return counts


#: Longest interval, in seconds, between two reports of a worker's workflow versions.
REPORT_INTERVAL = 30.0


def _report_versions(engine: WorkflowEngine) -> None:
    """Note that this worker, with its workflows' code, is up (`workflow_versions.last_seen_at`).

    Every node does it, lock or not, at most every `REPORT_INTERVAL` seconds (and four
    times per ORCHESTRATOR_VERSION_GRACE): a version nobody reports for the grace period is
    no longer deployed, and runs of a workflow with no deployed version fail.
    """
    interval = min(REPORT_INTERVAL, engine.settings.version_grace / 4)
    last = engine.versions_reported_at
    if last is not None and time.monotonic() - last < interval:
        return
    try:
        engine.record_versions(seen=True)
    except CONNECTION_ERRORS:
        raise
    except Exception:  # noqa: BLE001 - reporting must never stop recovery itself
        log.exception("recovery: could not report this worker's workflow versions")
        return
    engine.versions_reported_at = time.monotonic()


def _redeliver(engine: WorkflowEngine, stale: list[int]) -> int:
    """`engine.redeliver` for the whole batch; should it fail, one step at a time."""
    try:
        return engine.redeliver(stale)
    except CONNECTION_ERRORS:
        raise
    except Exception:  # noqa: BLE001 - find the bad step: the others go on
        log.warning("recovery: re-sending %d step(s) at once failed; trying one by one", len(stale))
    sent = 0
    for step_id in stale:
        try:
            sent += engine.redeliver([step_id])
        except CONNECTION_ERRORS:
            raise
        except Exception as exc:  # noqa: BLE001
            _give_up(engine, step_id, "re-send", exc)
    return sent


def _give_up(engine: WorkflowEngine, step_id: int, action: str, exc: Exception) -> None:
    """Fail a step recovery cannot handle, with the error, so it is not tried every sweep."""
    name = _step_name(engine, step_id)
    error = f"recovery could not {action} step {name!r}: {type(exc).__name__}: {exc}"
    try:
        run_id = engine.give_up(step_id, error[:4000])
    except CONNECTION_ERRORS:
        raise
    except Exception:  # noqa: BLE001 - logged; the next sweep tries again
        log.exception("recovery: step %d: %s; could not record that either", step_id, error)
        return
    log.error("recovery: run %s: %s; the step and its run are failed", run_id, error, exc_info=exc)


def _step_name(engine: WorkflowEngine, step_id: int) -> str:
    with engine.sessions() as session:
        return session.scalar(select(StepRun.name).where(StepRun.id == step_id)) or f"#{step_id}"


class OutageGrace:
    """After the database was unreachable, leases lapse for no fault of their workers: no
    heartbeat could be written. So lapsed leases are left alone for one `step_lease` after
    the database answers again, time for the heartbeats (and the outcomes waiting to be
    recorded, see `executor.record_outcome`) to get through. A worker that really died is
    then given up one lease later than usual.
    """

    def __init__(self, step_lease: float) -> None:
        self.step_lease = step_lease
        self.until = 0.0

    def outage(self) -> None:
        self.until = float("inf")

    def reachable(self) -> None:
        if self.until == float("inf"):
            self.until = time.monotonic() + self.step_lease

    @property
    def expire_leases(self) -> bool:
        return time.monotonic() >= self.until


class SpawnedProcess:
    """A loop in a process of its own, beside a Celery worker (the recovery loop, the lease
    keeper).

    A Celery worker forks its pool children from its main process at any time (at start,
    and whenever a child dies). A thread running in that process at the moment of a fork can
    leave a lock held forever in the child (seen: SQLAlchemy's mapper-configuration lock),
    hanging the child mid-step. So the worker's main process runs no thread of ours: each loop
    runs in a *spawned* process (a fresh interpreter, nothing inherited). It is stopped with
    SIGTERM (it finishes the round in progress first).
    """

    def __init__(self, target: Callable[..., None], args: tuple[Any, ...], name: str) -> None:
        import multiprocessing

        self.process = multiprocessing.get_context("spawn").Process(
            target=target, args=args, name=name, daemon=True
        )
        #: `stopped.set()` asks the loop to stop; safe to call from a signal handler.
        self.stopped = _Stop(self)

    def start(self) -> Self:
        self.process.start()
        return self

    def stop(self, wait: float | None = None) -> None:
        """Ask the loop to stop; with `wait`, wait that long for a round in progress, then kill it."""
        self.stopped.set()
        deadline = time.monotonic() + (wait or 0)
        while self.process.is_alive() and time.monotonic() < deadline:
            self.process.join(0.1)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)


class RecoveryProcess(SpawnedProcess):
    """The recovery loop in a spawned process beside a Celery worker (see `SpawnedProcess`).

    It stops by itself when it finds the worker that started it gone.
    """

    def __init__(self, settings: Settings) -> None:
        super().__init__(_recovery_main, (settings, os.getpid()), "orchestrator-recovery")


class _Stop:
    def __init__(self, owner: SpawnedProcess) -> None:
        self.owner = owner

    def set(self) -> None:
        pid = self.owner.process.pid
        if pid is not None and self.owner.process.exitcode is None:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


def _recovery_main(settings: Settings, parent: int) -> None:
    """Entry point of the spawned recovery process."""
    from .runtime import Runtime

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group; the worker decides
    from . import logs

    logs.configure(logging.INFO)  # ORCHESTRATOR_LOG_FORMAT, checked by the parent already
    from . import tracing

    tracing.configure("orchestrator-recovery")
    rt = Runtime(settings, pre_ping=True)
    failing = False
    broken: str | None = None  # the last unexpected error, logged once
    grace = OutageGrace(settings.step_lease)
    tick = min(settings.recovery_interval, settings.timer_interval)
    last_sweep = time.monotonic()
    last_schedule = -float("inf")
    schedule_broken: list[str] = []
    windows_broken: list[str] = []
    try:
        while not stop.wait(tick):
            if os.getppid() != parent:
                log.warning("recovery loop: the worker that started it is gone; stopping")
                return
            try:
                if time.monotonic() - last_schedule >= scheduler.INTERVAL:
                    last_schedule = time.monotonic()
                    _pass("the scheduler pass", fire_schedules, rt.engine, schedule_broken)
                    _pass("closing debounce/batch windows", _close_windows, rt.engine, windows_broken)
                if time.monotonic() - last_sweep < settings.recovery_interval:
                    if fire_timers(rt.engine):  # between sweeps: only timers, so they are on time
                        log.debug("recovery loop: timers fired")
                    continue
                last_sweep = time.monotonic()
                sweep(rt.engine, expire_leases=grace.expire_leases)
                grace.reachable()
                if failing:
                    log.warning("recovery loop: database reachable again")
                failing = False
                broken = None
            except CONNECTION_ERRORS as exc:  # keep sweeping; log an outage once
                grace.outage()
                if not failing:
                    log.warning("recovery loop: the database is unreachable (%s); will keep trying",
                                str(exc).splitlines()[0])
                failing = True
            except Exception as exc:  # noqa: BLE001 - a bug, not an outage: leases still expire
                if str(exc) != broken:
                    log.exception("recovery loop: sweep failed; will keep trying")
                broken = str(exc)
    finally:
        rt.close()
