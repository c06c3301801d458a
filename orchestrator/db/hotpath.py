"""The statements every step attempt executes, per database.

Claiming a step and recording its success happen for every step of every run, so they are
written for as few round trips as each database allows:

* `GenericHotPath` (SQLite and any other SQLAlchemy database): portable Core statements.
* `PostgresHotPath`: data-modifying CTEs, so a claim is one autocommitted statement and a
  success is three statements inside the run-locking transaction.

Both give the same answers; the engine picks one from the connection's dialect.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, create_engine, insert, select, text, update
from sqlalchemy.orm import Session

from .. import planner as P
from .models import Attempt, Run, StepRun

_runs, _steps, _attempts = Run.__table__, StepRun.__table__, Attempt.__table__


@dataclass
class ClaimedRow:
    step_id: int
    attempts: int
    attempt_id: int
    workflow: str
    input: Any
    #: Results of succeeded steps among the requested parent names.
    results: dict[str, Any]
    #: The run's concurrency key, if its workflow has a limit.
    run_key: str | None = None
    #: The workflow version the run started with (None: recorded before versions).
    version: str | None = None
    #: For an item of a map: its position and value.
    map_index: int | None = None
    item: Any = None
    #: The event that started the run, if one did (its id, for the step's log lines).
    event_id: int | None = None


class GenericHotPath:
    """Portable statements; one transaction per call."""

    def __init__(self, db: Engine) -> None:
        self.db = db

    def dispose(self, close: bool = True) -> None:
        """Release connections this object opened itself (`close=False` after a fork)."""

    def claim(
        self,
        session: Session,
        rid: uuid.UUID,
        step: str,
        workflows: Sequence[str],
        parents: Sequence[str],
        worker: str | None,
        now: datetime,
        lease: datetime,
    ) -> ClaimedRow | None:
        with session.begin():
            return self.claim_in(session, rid, step, workflows, parents, worker, now, lease)

    def claim_in(
        self,
        session: Session,
        rid: uuid.UUID,
        step: str,
        workflows: Sequence[str],
        parents: Sequence[str],
        worker: str | None,
        now: datetime,
        lease: datetime,
    ) -> ClaimedRow | None:
        """`claim` inside the caller's transaction (used when a slot check precedes it).

        Only a step of a run of one of `workflows` (those whose code this process has) is
        claimed.
        """
        claimed = session.connection().execute(
            _CLAIM_STEP,
            {"p_rid": rid, "p_name": step, "p_workflows": list(workflows), "p_now": now, "p_lease": lease},
        ).one_or_none()
        if claimed is None:
            return None
        attempt_id = session.connection().execute(
            _INSERT_ATTEMPT,
            {"p_step_id": claimed.id, "p_number": claimed.attempts, "p_worker": worker, "p_now": now},
        ).scalar_one()
        if claimed.run_status == P.RUN_PENDING:
            session.connection().execute(_START_RUN, {"p_rid": rid, "p_now": now})
        results = succeeded_results(session, rid, parents) if parents else {}
        return ClaimedRow(
            claimed.id, claimed.attempts, attempt_id, claimed.workflow, claimed.input, results,
            claimed.run_key, claimed.version, claimed.map_index, claimed.item, claimed.event_id,
        )

    def continue_step(
        self,
        session: Session,
        rid: uuid.UUID,
        step: str,
        workflows: Sequence[str],
        parents: Sequence[str],
        worker: str | None,
        task_id: str,
        now: datetime,
        lease: datetime,
    ) -> ClaimedRow | None:
        """Claim a step that the caller's open transaction (holding the run's lock) has just
        made ready, for the process that finishes its parent to run next: from `pending`
        straight to `running`, `task_id` being the task of that process. None if the step
        was not pending."""
        conn = session.connection()
        queued = conn.execute(
            _QUEUE_PENDING,
            {"p_rid": rid, "p_name": step, "p_now": now, "p_lease": lease, "p_task": task_id},
        )
        if queued.rowcount != 1:
            return None
        return self.claim_in(session, rid, step, workflows, parents, worker, now, lease)

    def lock_run(self, session: Session, rid: uuid.UUID) -> Any:
        """(status, workflow) of the run, row-locked until the transaction ends; or None."""
        return session.connection().execute(_LOCK_RUN, {"p_rid": rid}).one_or_none()

    def settle_success(
        self,
        session: Session,
        rid: uuid.UUID,
        step_id: int,
        number: int,
        attempt_id: int,
        result: Any,
        logs: list[dict[str, Any]],
        now: datetime,
    ) -> dict[str, str] | None:
        """Mark the attempt and step succeeded; return every step's status, or None if the
        step was no longer this attempt's (its lease lapsed)."""
        if not GenericHotPath.settle_item(self, session, step_id, number, attempt_id, result, logs, now):
            return None
        return dict(session.connection().execute(_STATUSES, {"p_rid": rid}).all())


    def settle_item(
        self,
        session: Session,
        step_id: int,
        number: int,
        attempt_id: int,
        result: Any,
        logs: list[dict[str, Any]],
        now: datetime,
    ) -> bool:
        """Mark an item's attempt and row succeeded, without the run's lock; False if the
        item was no longer this attempt's."""
        conn = session.connection()
        conn.execute(_SUCCEED_ATTEMPT, {"p_id": attempt_id, "p_now": now, "p_logs": logs})
        settled = conn.execute(
            _SUCCEED_STEP, {"p_id": step_id, "p_number": number, "p_result": result, "p_now": now}
        )
        return settled.rowcount == 1

    def settle_item_alone(
        self, step_id: int, number: int, attempt_id: int, result: Any, logs: list[dict[str, Any]],
        now: datetime,
    ) -> bool | None:
        """`settle_item` as one statement committed on its own (no BEGIN and COMMIT round
        trips), for an item whose success writes nothing else; None where the database has
        no such statement (the caller then opens a transaction)."""
        return None

    @contextmanager
    def reader(self) -> Iterator[Connection]:
        """A connection for a read after a commit (the probe of a map's open items)."""
        with self.db.connect() as conn:
            yield conn


class PostgresHotPath(GenericHotPath):
    """The same answers in fewer round trips, with PostgreSQL's data-modifying CTEs."""

    def __init__(self, db: Engine) -> None:
        super().__init__(db)
        # Claims commit without waiting for the WAL flush. Losing one in a database crash
        # only puts a not-yet-succeeded step back to `queued` (it runs again, as after a
        # worker crash); a success is recorded by a synchronous commit, which also makes
        # every earlier claim durable, since the WAL is flushed in order.
        self.autocommit = create_engine(
            db.url,
            isolation_level="AUTOCOMMIT",
            pool_size=2,
            max_overflow=4,
            pool_recycle=1800,
            connect_args={"options": "-c synchronous_commit=off"},
        )

    def dispose(self, close: bool = True) -> None:
        self.autocommit.dispose(close=close)

    def claim(
        self,
        session: Session,
        rid: uuid.UUID,
        step: str,
        workflows: Sequence[str],
        parents: Sequence[str],
        worker: str | None,
        now: datetime,
        lease: datetime,
    ) -> ClaimedRow | None:
        # One statement, atomic on its own: no BEGIN/COMMIT round trips.
        with self.autocommit.connect() as conn:
            row = conn.execute(
                _PG_CLAIM,
                {
                    "rid": rid,
                    "name": step,
                    "now": now,
                    "lease": lease,
                    "worker": worker,
                    "workflows": list(workflows),
                    "parents": list(parents),
                },
            ).one_or_none()
        if row is None:
            return None
        return ClaimedRow(
            row.id, row.attempts, row.attempt_id, row.workflow, row.input, row.results or {},
            row.concurrency_key, row.version, row.map_index, row.item, row.event_id,
        )

    def continue_step(
        self,
        session: Session,
        rid: uuid.UUID,
        step: str,
        workflows: Sequence[str],
        parents: Sequence[str],
        worker: str | None,
        task_id: str,
        now: datetime,
        lease: datetime,
    ) -> ClaimedRow | None:
        # One statement in the caller's transaction (the success it follows commits it).
        row = session.connection().execute(
            _PG_CONTINUE,
            {"rid": rid, "name": step, "now": now, "lease": lease, "worker": worker,
             "task_id": task_id, "parents": list(parents)},
        ).one_or_none()
        if row is None:
            return None
        return ClaimedRow(
            row.id, row.attempts, row.attempt_id, row.workflow, row.input, row.results or {},
            row.concurrency_key, row.version, row.map_index, row.item, row.event_id,
        )

    def settle_success(
        self,
        session: Session,
        rid: uuid.UUID,
        step_id: int,
        number: int,
        attempt_id: int,
        result: Any,
        logs: list[dict[str, Any]],
        now: datetime,
    ) -> dict[str, str] | None:
        rows = session.connection().execute(
            _PG_SETTLE,
            {
                "rid": rid,
                "step_id": step_id,
                "number": number,
                "attempt_id": attempt_id,
                "result": json.dumps(result),
                "logs": json.dumps(logs),
                "now": now,
            },
        ).all()
        if not rows or not rows[0].settled:
            return None
        statuses = {row.name: row.status for row in rows}
        # The statement's snapshot predates its own update.
        for row in rows:
            if row.id == step_id:
                statuses[row.name] = P.SUCCEEDED
        return statuses


    def settle_item(
        self,
        session: Session,
        step_id: int,
        number: int,
        attempt_id: int,
        result: Any,
        logs: list[dict[str, Any]],
        now: datetime,
    ) -> bool:
        row = session.connection().execute(
            _PG_SETTLE_ITEM,
            {"step_id": step_id, "number": number, "attempt_id": attempt_id,
             "result": json.dumps(result), "logs": json.dumps(logs), "now": now},
        ).one()
        return bool(row.settled)

    def settle_item_alone(
        self, step_id: int, number: int, attempt_id: int, result: Any, logs: list[dict[str, Any]],
        now: datetime,
    ) -> bool | None:
        # The pool's own connections (synchronous commit: a success is durable), in
        # autocommit for this one statement; the pool gives them back in their own mode.
        with self.db.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            row = conn.execute(
                _PG_SETTLE_ITEM,
                {"step_id": step_id, "number": number, "attempt_id": attempt_id,
                 "result": json.dumps(result), "logs": json.dumps(logs), "now": now},
            ).one()
        return bool(row.settled)

    @contextmanager
    def reader(self) -> Iterator[Connection]:
        # A read needs no transaction: one round trip instead of BEGIN, SELECT, ROLLBACK.
        with self.autocommit.connect() as conn:
            yield conn


def hot_path_for(db: Engine) -> GenericHotPath:
    return PostgresHotPath(db) if db.dialect.name == "postgresql" else GenericHotPath(db)


def succeeded_results(session: Session, rid: uuid.UUID, names: Sequence[str] | None = None) -> dict[str, Any]:
    """Results of the run's succeeded steps among `names` (None: all of them)."""
    if names is None:
        found = session.connection().execute(_ALL_RESULTS, {"p_rid": rid})
    else:
        found = session.connection().execute(_RESULTS, {"p_rid": rid, "p_names": list(names)})
    return dict(found.all())


def failed_errors(session: Session, rid: uuid.UUID) -> dict[str, str]:
    """Each failed step of the run -> its error (what the failure handler's `ctx.failed` holds)."""
    found = session.execute(
        select(_steps.c.name, _steps.c.error)
        .where(_steps.c.run_id == rid, _steps.c.status == P.FAILED, _steps.c.map_node.is_(None))
        .order_by(_steps.c.id)
    )
    return {name: error or "failed" for name, error in found.all()}


# -- portable statements (bind names avoid column names, which SQLAlchemy reserves) --------


def _of_run(column: Any) -> Any:
    # By the bound run id, not correlated to `steps.run_id`: SQLite scans `runs` for a
    # correlated subquery in RETURNING, which made every claim slower as runs accumulated.
    return select(column).where(_runs.c.id == bindparam("p_rid")).scalar_subquery()


# Built once: statements are compiled and cached by SQLAlchemy, not rebuilt per call.
# Nodes only (`map_node IS NULL`): a map's items are rows of their own, settled apart.
_ALL_RESULTS = select(_steps.c.name, _steps.c.result).where(
    _steps.c.run_id == bindparam("p_rid"), _steps.c.status == P.SUCCEEDED, _steps.c.map_node.is_(None)
)
_STATUSES = select(_steps.c.name, _steps.c.status).where(
    _steps.c.run_id == bindparam("p_rid"), _steps.c.map_node.is_(None)
)
_RESULTS = _ALL_RESULTS.where(_steps.c.name.in_(bindparam("p_names", expanding=True)))
_CLAIM_STEP = (
    update(_steps)
    .where(
        _steps.c.run_id == bindparam("p_rid"),
        _steps.c.name == bindparam("p_name"),
        _steps.c.status.in_((P.QUEUED, P.RETRYING)),
        select(_runs.c.id)
        .where(
            _runs.c.id == bindparam("p_rid"),
            _runs.c.status.in_((P.RUN_PENDING, P.RUN_RUNNING)),
            _runs.c.workflow.in_(bindparam("p_workflows", expanding=True)),
        )
        .exists(),
    )
    .values(
        status=P.RUNNING,
        attempts=_steps.c.attempts + 1,
        started_at=bindparam("p_now"),
        finished_at=None,
        lease_expires_at=bindparam("p_lease"),
        handed_back_at=None,
    )
    .returning(
        _steps.c.id,
        _steps.c.attempts,
        _steps.c.map_index,
        _steps.c.item,
        _of_run(_runs.c.status).label("run_status"),
        _of_run(_runs.c.workflow).label("workflow"),
        _of_run(_runs.c.input).label("input"),
        _of_run(_runs.c.concurrency_key).label("run_key"),
        _of_run(_runs.c.version).label("version"),
        _of_run(_runs.c.event_id).label("event_id"),
    )
)
# A pending step made ready, queued for the process that continues its run (`continue_step`).
_QUEUE_PENDING = (
    update(_steps)
    .where(_steps.c.run_id == bindparam("p_rid"), _steps.c.name == bindparam("p_name"),
           _steps.c.status == P.PENDING)
    .values(status=P.QUEUED, queued_at=bindparam("p_now"), lease_expires_at=bindparam("p_lease"),
            task_id=bindparam("p_task"))
)
_INSERT_ATTEMPT = (
    insert(_attempts)
    .values(
        step_id=bindparam("p_step_id"),
        number=bindparam("p_number"),
        status=P.RUNNING,
        worker=bindparam("p_worker"),
        started_at=bindparam("p_now"),
        logs=[],
    )
    .returning(_attempts.c.id)
)
_START_RUN = (
    update(_runs)
    .where(_runs.c.id == bindparam("p_rid"), _runs.c.status == P.RUN_PENDING)
    .values(status=P.RUN_RUNNING, started_at=bindparam("p_now"))
)
# Its own statement: rows read after it see every transaction that held the lock before.
_LOCK_RUN = (
    select(_runs.c.status, _runs.c.workflow, _runs.c.parent_run_id, _runs.c.detached)
    .where(_runs.c.id == bindparam("p_rid"))
    .with_for_update()
)
_SUCCEED_ATTEMPT = (
    update(_attempts)
    .where(_attempts.c.id == bindparam("p_id"), _attempts.c.status == P.RUNNING)
    .values(
        status=P.SUCCEEDED,
        finished_at=bindparam("p_now"),
        logs=bindparam("p_logs", type_=_attempts.c.logs.type),
    )
)
_SUCCEED_STEP = (
    update(_steps)
    .where(
        _steps.c.id == bindparam("p_id"),
        _steps.c.status == P.RUNNING,
        _steps.c.attempts == bindparam("p_number"),
    )
    .values(
        status=P.SUCCEEDED,
        result=bindparam("p_result", type_=_steps.c.result.type),
        error=None,
        finished_at=bindparam("p_now"),
        lease_expires_at=None,
    )
)

# -- PostgreSQL statements -------------------------------------------------------------------

_PG_CLAIM = text(
    """
WITH claimed AS (
    UPDATE steps
       SET status = 'running', attempts = attempts + 1, started_at = :now,
           finished_at = NULL, lease_expires_at = :lease, handed_back_at = NULL
     WHERE run_id = :rid AND name = :name AND status IN ('queued', 'retrying')
       AND EXISTS (SELECT 1 FROM runs WHERE id = :rid AND status IN ('pending', 'running')
                   AND workflow = ANY(CAST(:workflows AS varchar[])))
 RETURNING id, attempts, map_index, item
), attempt AS (
    INSERT INTO attempts (step_id, number, status, worker, started_at, logs)
    SELECT id, attempts, 'running', :worker, :now, '[]'::jsonb FROM claimed
 RETURNING id, step_id
), started AS (
    UPDATE runs SET status = 'running', started_at = :now
     WHERE id = :rid AND status = 'pending' AND EXISTS (SELECT 1 FROM claimed)
)
SELECT claimed.id, claimed.attempts, claimed.map_index, claimed.item,
       attempt.id AS attempt_id, runs.workflow, runs.input,
       runs.concurrency_key, runs.version, runs.event_id,
       (SELECT jsonb_object_agg(p.name, p.result) FROM steps p
         WHERE p.run_id = :rid AND p.name = ANY(CAST(:parents AS varchar[]))
           AND p.status = 'succeeded') AS results
  FROM claimed
  JOIN attempt ON attempt.step_id = claimed.id
  JOIN runs ON runs.id = :rid
"""
)

# `continue_step`: a pending step of a locked run straight to running, its attempt, its
# parents' results (the success before it in this transaction included).
_PG_CONTINUE = text(
    """
WITH claimed AS (
    UPDATE steps
       SET status = 'running', attempts = attempts + 1, queued_at = :now, started_at = :now,
           finished_at = NULL, lease_expires_at = :lease, handed_back_at = NULL, task_id = :task_id
     WHERE run_id = :rid AND name = :name AND status = 'pending'
 RETURNING id, attempts, map_index, item
), attempt AS (
    INSERT INTO attempts (step_id, number, status, worker, started_at, logs)
    SELECT id, attempts, 'running', :worker, :now, '[]'::jsonb FROM claimed
 RETURNING id, step_id
)
SELECT claimed.id, claimed.attempts, claimed.map_index, claimed.item,
       attempt.id AS attempt_id, runs.workflow, runs.input,
       runs.concurrency_key, runs.version, runs.event_id,
       (SELECT jsonb_object_agg(p.name, p.result) FROM steps p
         WHERE p.run_id = :rid AND p.name = ANY(CAST(:parents AS varchar[]))
           AND p.status = 'succeeded') AS results
  FROM claimed
  JOIN attempt ON attempt.step_id = claimed.id
  JOIN runs ON runs.id = :rid
"""
)

# A step's attempt and row succeed, if the step is still this attempt's.
_PG_SUCCEED = """
WITH settled AS (
    UPDATE steps
       SET status = 'succeeded', result = CAST(:result AS jsonb), error = NULL,
           finished_at = :now, lease_expires_at = NULL
     WHERE id = :step_id AND status = 'running' AND attempts = :number
 RETURNING id
), attempt AS (
    UPDATE attempts SET status = 'succeeded', finished_at = :now, logs = CAST(:logs AS jsonb)
     WHERE id = :attempt_id AND status = 'running' AND EXISTS (SELECT 1 FROM settled)
)
"""
# Runs after the run lock is held, so its snapshot includes every earlier lock holder's work.
_PG_SETTLE = text(_PG_SUCCEED + """
SELECT s.id, s.name, s.status, EXISTS (SELECT 1 FROM settled) AS settled
  FROM steps s
 WHERE s.run_id = :rid AND s.map_node IS NULL
""")

# An item of a map: its row and attempt, nothing of the run (no run lock: see `composing`).
_PG_SETTLE_ITEM = text(_PG_SUCCEED + "SELECT EXISTS (SELECT 1 FROM settled) AS settled")
