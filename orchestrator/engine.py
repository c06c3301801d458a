"""The engine: every state change of runs and steps, one transaction per call.

Messages to Celery are collected while a transaction is open and sent only after it
commits (transactional outbox: the step rows themselves are the outbox, and the recovery
loop re-sends any message lost between commit and send). Every transition is a
conditional UPDATE (`... WHERE status IN (...)`) or happens under the run's row lock, so a
duplicated or redelivered message can never run a step that already succeeded, and two
workers can never both hold the same step.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonschema
from sqlalchemy import and_, bindparam, insert, or_, select, update
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, object_session, sessionmaker

from . import clock, tracing
from . import composing as CM
from . import composition as M
from . import concurrency as C
from . import planner as P
from . import skew as S
from . import waiting as WT
from . import waits as W
from .db import versions as V
from .db.hotpath import failed_errors, hot_path_for, succeeded_results
from .db.models import Attempt, OutboxRow, Run, StepRun, WorkflowVersion
from .dispatch import Dispatch, Dispatcher
from .dsl import Concurrency, StepContext, Workflow
from .emits import OUTBOX_CHANNEL, Emit, headers_json
from .errors import (
    DeploySkew,
    InvalidInput,
    NotWaiting,
    RunNotFound,
    StepNotLoaded,
    WorkflowNotFound,
)
from .jsonvalues import check_json as check_json  # executor and callers import it from here
from .registry import Registry
from .settings import Settings
from .versions import missing_code, planning_view

log = logging.getLogger("orchestrator.engine")


def utcnow() -> datetime:
    """UTC now, strictly increasing within a process, from `orchestrator.clock` (which a
    test harness may swap for a fake clock it moves by hand)."""
    return clock.now()


class Outbox(list[Dispatch]):
    """Messages to send, and queued tasks to revoke, once the transaction has committed."""

    def __init__(self) -> None:
        super().__init__()
        self.revoke: list[str] = []
        #: Tasks whose running process is to be stopped (`cancel_in_progress`).
        self.terminate: list[str] = []
        #: Maps one of whose items ended: settled after commit if it was the last.
        self.maps: set[tuple[uuid.UUID, str]] = set()
        #: Runs that ended and that a parent's call node waits for: it is settled after commit.
        self.ended: list[uuid.UUID] = []
        #: Runs (and their call nodes, or None for all) whose children are to be cancelled.
        self.orphans: list[tuple[uuid.UUID, tuple[str, ...] | None]] = []


def parse_run_id(run_id: str | uuid.UUID) -> uuid.UUID:
    if isinstance(run_id, uuid.UUID):
        return run_id
    try:
        return uuid.UUID(str(run_id))
    except ValueError:
        raise RunNotFound(f"no run {run_id!r}: run ids are UUIDs") from None


def validate_input(workflow: Workflow, data: Any) -> dict[str, Any]:
    """A run's input must be a JSON object and satisfy the workflow's `input_schema`."""
    if not isinstance(data, dict):
        raise InvalidInput(
            f"input of workflow {workflow.name!r} must be a JSON object, got {type(data).__name__}"
        )
    check_json(data, f"input of workflow {workflow.name!r}")
    if workflow.input_schema is not None:
        validator = jsonschema.validators.validator_for(workflow.input_schema)(workflow.input_schema)
        error = jsonschema.exceptions.best_match(validator.iter_errors(data))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(root)"
            raise InvalidInput(
                f"input of workflow {workflow.name!r} fails its schema at {where}: {error.message}"
            )
    return data


@dataclass
class Claim:
    """A step this worker now holds: everything needed to run it."""

    step_id: int
    run_id: str
    workflow: str
    step: str
    attempt: int
    attempt_id: int
    input: dict[str, Any]
    results: dict[str, Any]
    #: The run's key under its workflow's concurrency limit, if the workflow has one.
    run_key: str | None = None
    #: The workflow version the run started with, which its planning follows.
    version: str | None = None
    #: Where the events that completed upstream `wait_for_event` nodes came from.
    events: dict[str, Any] = field(default_factory=dict)
    #: For an item of a map: the map node, the item's position and value.
    node: str | None = None
    index: int | None = None
    item: Any = None
    #: Failed items of upstream maps that allow failures (`ctx.map_errors`).
    map_errors: dict[str, dict[int, str]] = field(default_factory=dict)
    #: The event that started the run, if one did.
    event_id: int | None = None

    @property
    def node_name(self) -> str:
        """The workflow node this claim runs (a map's, for an item)."""
        return self.node or self.step
    #: For the failure handler: each failed step of the run -> its error (`ctx.failed`).
    failed: dict[str, str] = field(default_factory=dict)


@dataclass
class Decision:
    """The planner's answer, as column changes per step plus messages to send."""

    changes: dict[str, dict[str, Any]]
    run_status: str | None = None
    run_error: str | None = None
    dispatches: list[Dispatch] = field(default_factory=list)
    #: `waits` rows of the nodes this decision opens (see `orchestrator.waiting`).
    opens: list[dict[str, Any]] = field(default_factory=list)
    #: Nodes that were waiting and no longer are: their open waits are closed.
    closes: list[str] = field(default_factory=list)
    #: Step rows of the items of maps this decision expands (see `orchestrator.composing`).
    items: list[dict[str, Any]] = field(default_factory=list)
    #: Runs this decision's call nodes start, to insert with it.
    children: list[PlannedRun] = field(default_factory=list)


@dataclass
class PlannedRun:
    """Rows for a new run (`runs` and `steps` columns) and the messages of its first steps."""

    run: dict[str, Any]
    steps: list[dict[str, Any]]
    dispatches: list[Dispatch]
    #: `waits` rows of the nodes it opens at once (callers pass them to `open_waits`).
    waits: list[dict[str, Any]] = field(default_factory=list)
    #: Runs its first call nodes start (callers pass them to `insert_children`).
    children: list[PlannedRun] = field(default_factory=list)


@dataclass
class Outcome:
    """How one attempt ended."""

    ok: bool
    result: Any = None
    error: str | None = None
    traceback: str | None = None
    logs: list[dict[str, Any]] | None = None
    #: Events the attempt emitted; written to the outbox only with a success.
    emits: list[Emit] = field(default_factory=list)
    #: Runs the attempt starts (`ctx.start_run`): created only with a success.
    starts: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


@dataclass(frozen=True)
class Inline:
    """Where a finishing attempt runs, so that its success may continue its run there.

    `finish` given one claims, in the transaction that records the success, the next step
    this success makes ready if that step can run in the same process right away (same
    `queue`, this worker's code; see `WorkflowEngine._inline_candidate`), and returns its
    claim instead of sending its message. `task_id` is the Celery task the process runs,
    written on the claimed row so that revoking with terminate (and a shutdown's hand-back)
    reaches the process running it.
    """

    queue: str
    worker: str | None
    task_id: str


class WorkflowEngine:
    """Owns the unit of work for every run/step transition; see the module docstring."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        registry: Registry,
        dispatcher: Dispatcher,
        settings: Settings,
    ) -> None:
        self.sessions = sessions
        self.registry = registry
        self.dispatcher = dispatcher
        self.settings = settings
        self.hot_path = hot_path_for(sessions.kw["bind"])
        #: Whether this process stored its workflows' versions (`record_versions`).
        self._versions_recorded = False
        #: Planning views of stored versions other than the loaded one, by (workflow, version).
        self._views: dict[tuple[str, str], Workflow] = {}
        self._started = time.monotonic()
        self._abandoned_checked = -math.inf
        #: When the recovery loop last reported this process's versions as deployed.
        self.versions_reported_at: float | None = None

    # -- versions -------------------------------------------------------------------

    def record_versions(self, *, seen: bool = False) -> None:
        """Store the structure of every loaded workflow's version (once per process), so
        its runs can be planned on it after a deploy changes the code. With `seen`, note
        that this process, which has that code, is up (workers do it every sweep)."""
        if self._versions_recorded and not seen:
            return
        with self.sessions() as session, session.begin():
            V.record(session, list(self.registry), utcnow(), seen=seen)
        self._versions_recorded = True

    def fail_abandoned(self, limit: int = 500) -> int:
        """Fail live runs of workflows that no worker has reported for the version grace.

        A deploy that removed a workflow leaves its runs with nobody to run or admit them;
        they fail with a message saying so, never silently stuck. Only after this process has
        itself been up for the grace period (every worker had time to report its code).
        Returns how many runs were failed.
        """
        grace = self.settings.version_grace
        moment = time.monotonic()
        if moment - self._started < grace or moment - self._abandoned_checked < min(30.0, grace / 4):
            return 0  # the query reads every live run: at most every 30 s
        self._abandoned_checked = moment
        now = utcnow()
        runs, versions = Run.__table__, WorkflowVersion.__table__
        seen = (
            select(versions.c.workflow)
            .where(versions.c.workflow == runs.c.workflow,
                   versions.c.last_seen_at >= now - timedelta(seconds=grace))
            .exists()
        )
        with self.sessions() as session:
            found = session.execute(
                select(runs.c.id, runs.c.workflow)
                .where(runs.c.status.in_((P.RUN_PENDING, P.RUN_RUNNING)), ~seen)
                .limit(limit)
            ).all()
        failed = 0
        for run_id, name in found:
            error = (f"workflow {name!r} is not in the deployed code: no worker has reported it "
                     f"for ORCHESTRATOR_VERSION_GRACE ({grace:g}s); a deploy removed it?")
            try:
                with self.transaction() as (session, outbox):
                    run = self._lock_run(session, run_id)
                    if run.status in P.RUN_FINAL:
                        continue
                    self._fail_run(run, {s.name: s for s in run.steps}, error, outbox, now)
                    failed += 1
            except (OperationalError, InterfaceError, DisconnectionError):
                raise
            except Exception:  # noqa: BLE001 - one bad run must not stop the others
                log.exception("could not fail run %s of the removed workflow %r", run_id, name)
        if failed:
            log.warning("failed %d run(s) of workflows no deployed worker has", failed)
        return failed

    def definition(self, name: str, version: str | None, session: Session | None = None) -> Workflow | None:
        """The definition to plan a run of `name` started on `version` with.

        The loaded workflow when it is that version (or the run predates versions);
        otherwise a planning view (`versions.planning_view`): that version's stored
        structure with the loaded step code, by step name. None when neither the code
        nor a stored structure exists (the run cannot go on anywhere).
        """
        loaded = self.registry.find(name)
        if loaded is not None and (version is None or version == loaded.version):
            return loaded
        if version is None:
            return None
        view = self._views.get((name, version))
        if view is None:
            if session is None:
                with self.sessions() as own:
                    shape = V.structure_of(own, name, version)
            else:
                shape = V.structure_of(session, name, version)
            if shape is None:
                return loaded  # not recorded: the loaded code, checked by `skew.mismatch`
            view = self._views[(name, version)] = planning_view(name, version, shape, loaded)
        return view

    def _definition_of(self, run: Run, session: Session | None = None) -> Workflow | None:
        return self.definition(run.workflow, run.version, session)

    def claimed_definition(self, claim: Claim) -> Workflow:
        """The definition of a claimed step's run. Never None: only a step of a workflow
        loaded here is claimed."""
        return self.definition(claim.workflow, claim.version) or self.registry.get(claim.workflow)
    # -- transactions -------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[tuple[Session, Outbox]]:
        """A session in a transaction plus an outbox; the outbox is sent after commit."""
        outbox = Outbox()
        with self.sessions() as session, session.begin():
            yield session, outbox
        if outbox.revoke:
            self.dispatcher.revoke(outbox.revoke)
        if outbox.terminate:
            self.dispatcher.revoke(outbox.terminate, terminate=True)
        if outbox:
            try:
                self.dispatcher.send(self._traced(outbox) if tracing.enabled else outbox)
            except Exception as exc:  # noqa: BLE001 - committed state is the source of truth
                log.warning(
                    "could not send %d step message(s) (%s); the recovery loop will re-send them",
                    len(outbox),
                    exc,
                )
        if outbox.maps or outbox.ended or outbox.orphans:
            self._after_commit(outbox)

    def _traced(self, dispatches: list[Dispatch]) -> list[Dispatch]:
        """Step messages with their run's `traceparent` (one query), so the attempt's span
        continues the run's trace wherever and however often the message is sent."""
        ids = {parse_run_id(d.run_id) for d in dispatches if d.traceparent is None}
        if not ids:
            return dispatches
        with self.sessions() as session:
            found = dict(session.execute(
                select(Run.id, Run.traceparent).where(Run.id.in_(ids), Run.traceparent.is_not(None))
            ).all())
        return [d if d.traceparent is not None or uuid.UUID(d.run_id) not in found
                else dataclasses.replace(d, traceparent=found[uuid.UUID(d.run_id)]) for d in dispatches]

    def _after_commit(self, outbox: Outbox) -> None:
        """What a committed transaction leaves to others: a map whose last item may have
        ended, a parent whose child ended, children whose parent stopped waiting. Each in
        its own transaction; the recovery loop does the same should this process die
        first (`settle_composed`)."""
        todo: list[tuple[str, tuple[Any, ...], Callable[..., Any]]] = []
        todo += [("map", (rid, node), self._map_item_ended) for rid, node in sorted(outbox.maps)]
        todo += [("child", (rid,), self._child_ended) for rid in outbox.ended]
        whole = tuple(rid for rid, nodes in outbox.orphans if nodes is None)
        if whole:  # every child of these runs, in one query
            todo.append(("orphans", (whole, None), self._cancel_children))
        todo += [("orphans", (rid, nodes), self._cancel_children)
                 for rid, nodes in outbox.orphans if nodes is not None]
        for what, args, action in todo:
            try:
                action(*args)
            except Exception:  # noqa: BLE001 - committed; the recovery loop tries again
                log.warning("could not settle %s %s now; the recovery loop will", what, args, exc_info=True)

    def _lock_run(self, session: Session, run_id: uuid.UUID) -> Run:
        """Row-lock a run (after its concurrency key's lock, the global lock order)."""
        head = session.execute(
            select(Run.workflow, Run.concurrency_key).where(Run.id == run_id)
        ).one_or_none()
        if head is not None and head.concurrency_key is not None:
            C.lock_key(session, C.run_scope(head.workflow), head.concurrency_key)
        run = session.scalars(
            select(Run).where(Run.id == run_id).with_for_update()
        ).one_or_none()
        if run is None:
            raise RunNotFound(f"no run {run_id}")
        return run

    # -- starting runs ------------------------------------------------------------

    def start_run(self, workflow_name: str, input: Any = None) -> str:
        """Create a run and queue its first steps; returns the run id."""
        workflow = self.registry.get(workflow_name)
        data = validate_input(workflow, {} if input is None else input)
        planned = self.plan_run(workflow, data)
        self.record_versions()
        with self.transaction() as (session, outbox):
            self.insert_planned(session, outbox, [planned])
        return str(planned.run["id"])

    def insert_planned(self, session: Session, outbox: Outbox, planned: Sequence[PlannedRun]) -> None:
        """Insert planned runs (and the children their first call nodes start) in the
        caller's transaction; their messages go to `outbox`."""
        if not planned:
            return
        session.execute(insert(Run.__table__), [p.run for p in planned])
        session.execute(insert(StepRun.__table__), [row for p in planned for row in p.steps])
        for p in planned:
            outbox.extend(p.dispatches)
        self.open_waits(session, outbox, [row for p in planned for row in p.waits])
        self.admit_planned(session, outbox, planned)
        self.insert_planned(session, outbox, [c for p in planned for c in p.children])

    def plan_run(
        self,
        workflow: Workflow,
        data: dict[str, Any],
        *,
        event_id: int | None = None,
        dedupe_key: str | None = None,
        run_id: uuid.UUID | None = None,
        parent: tuple[uuid.UUID, str, bool] | None = None,
    ) -> PlannedRun:
        """The rows of a new run and its steps, and its first messages, without any I/O.

        Callers insert the rows (one run, or many in bulk) and send the messages after commit.
        """
        now = utcnow()
        rid = run_id or uuid.uuid4()
        run_key = _key_of(workflow.concurrency, data, f"workflow {workflow.name!r}")
        partition = run_key if workflow.partition_by is not None else None
        run = {
            "id": rid,
            "workflow": workflow.name,
            "status": P.RUN_PENDING,
            "input": data,
            "error": None,
            "created_at": now,
            "started_at": None,
            "finished_at": None,
            "event_id": event_id,
            "dedupe_key": dedupe_key,
            "concurrency_key": run_key,
            "version": workflow.version,
            # (parent run, its node or step, detached): `flow.call`, `ctx.start_run`.
            "parent_run_id": parent[0] if parent else None,
            "parent_step": parent[1] if parent else None,
            "detached": parent[2] if parent else None,
            "output": None,
            "traceparent": tracing.run_started(workflow.name, str(rid)) if tracing.enabled else None,
        }

        def context_for(name: str) -> StepContext:
            return StepContext(str(rid), workflow.name, name, data, {}, attempt=0)

        statuses = dict.fromkeys(workflow.steps, P.PENDING)
        if workflow.concurrency is not None:
            decision = Decision(changes={})  # waits for admission (`admit_planned`)
        else:
            decision = self._decide(rid, workflow, statuses, context_for, now, partition)
        steps = []
        for step in workflow.steps.values():
            row = {
                "run_id": rid,
                "name": step.name,
                "status": P.PENDING,
                "queue": workflow.queue_of(step, partition),
                "concurrency_key": _key_of(
                    step.concurrency, data, f"workflow {workflow.name!r}: step {step.name!r}"
                ),
                "attempts": 0,
                "max_attempts": step.max_attempts,
                "result": None,
                "error": None,
                "queued_at": None,
                "started_at": None,
                "finished_at": None,
                "lease_expires_at": None,
                "task_id": None,
                "reason": None,
                "handed_back_at": None,
                "map_node": None,
                "map_index": None,
                "item": None,
            }
            row.update(decision.changes.get(step.name, {}))
            steps.append(row)
        steps.extend(decision.items)
        if decision.run_status is not None:  # every root skipped
            run.update(status=decision.run_status, finished_at=now, error=decision.run_error)
        elif decision.opens or decision.items:  # under way at once (no claim of a node will say so)
            run.update(status=P.RUN_RUNNING, started_at=now)
        return PlannedRun(run=run, steps=steps, dispatches=decision.dispatches, waits=decision.opens,
                          children=decision.children)

    def admit_planned(self, session: Session, outbox: Outbox, planned: Iterable[PlannedRun]) -> None:
        """After inserting runs of limited workflows, admit those that have a free slot.

        Must run in the inserting transaction (the Kafka consumer's batch, `start_run`).
        """
        keys = sorted(
            {
                (p.run["workflow"], p.run["concurrency_key"])
                for p in planned
                if p.run.get("concurrency_key") is not None
            }
        )
        for workflow_name, key in keys:
            self.admit(session, outbox, self.registry.get(workflow_name), key)

    def admit(self, session: Session, outbox: Outbox, workflow: Workflow, key: str) -> list[str]:
        """Start the pending runs of `key` that its limit and strategy allow, oldest first.

        Takes the key's distributed lock; returns the ids of the runs started. Reads at
        most `limit` running runs and, for `queue`, only the oldest pending runs that fit,
        so its cost does not grow with the backlog (see `concurrency.pending_to_decide`).
        """
        limit = workflow.concurrency
        if limit is None:
            return []
        C.lock_key(session, C.run_scope(workflow.name), key)
        running = C.runs_of_key(session, workflow.name, key, P.RUN_RUNNING, limit=limit.limit)
        free = limit.limit - len(running)
        pending = C.pending_to_decide(session, workflow.name, key, limit.strategy, free)
        admit, drop, evict = C.choose(limit.strategy, limit.limit, running, pending)
        now = utcnow()
        for row in evict:
            run = session.get(Run, row.id, with_for_update=True)
            if run is not None and run.status not in P.RUN_FINAL:
                self._cancel_rows(run, C.CANCELLED_IN_PROGRESS.format(key=key), outbox, now, terminate=True)
        for row in drop:
            run = session.get(Run, row.id, with_for_update=True)
            if run is not None and run.status == P.RUN_PENDING:
                reason = C.CANCELLED_NEWEST.format(limit=limit.limit, key=key)
                self._cancel_rows(run, reason, outbox, now)
        started = []
        for row in admit:
            run = session.get(Run, row.id, with_for_update=True)
            if run is None or run.status != P.RUN_PENDING:
                continue
            run.status = P.RUN_RUNNING
            run.started_at = now
            self._advance(run, self._definition_of(run, session), {s.name: s for s in run.steps}, outbox, now)
            started.append(str(run.id))
        session.flush()
        return started

    def admit_waiting(self) -> int:
        """Recovery: admit pending runs of every limited workflow whose keys have free slots.

        Admission normally happens in the transaction that frees a slot; this sweep covers
        a crash between. Returns how many runs it started.
        """
        started = 0
        for workflow in self.registry:
            if workflow.concurrency is None:
                continue
            with self.sessions() as session:
                keys = C.workflow_keys_waiting(session, workflow)
            for key in keys:
                try:
                    with self.transaction() as (session, outbox):
                        started += len(self.admit(session, outbox, workflow, key))
                except (OperationalError, InterfaceError, DisconnectionError):
                    raise
                except Exception:  # noqa: BLE001 - one bad key must not stop the others
                    log.exception("could not admit waiting runs of workflow %r, key %r", workflow.name, key)
        return started

    def _after_run_change(
        self, session: Session, outbox: Outbox, run: Run, workflow: Workflow | None
    ) -> None:
        """A limited run finished or was cancelled: its slot may go to the next one.

        Today's limit governs admission; without the workflow's code or a recorded version
        (`None`) nothing can be admitted here.
        """
        workflow = self.registry.find(run.workflow) or workflow
        if workflow is not None and workflow.concurrency is not None and run.concurrency_key is not None and run.status in P.RUN_FINAL:
            session.flush()
            self.admit(session, outbox, workflow, run.concurrency_key)

    # -- the planner, applied ----------------------------------------------------

    def _decide(
        self,
        run_id: uuid.UUID,
        workflow: Workflow,
        statuses: Mapping[str, str],
        context_for: Callable[[str], StepContext],
        now: datetime,
        partition: str | None = None,
    ) -> Decision:
        """Ask the planner what follows, evaluating `when` conditions (user code) as needed.

        Returns column changes per step, the messages to send after commit and the run's
        new status; callers write them with the ORM (cold paths) or Core (the hot path).
        A run whose recorded steps differ from the definition (deploy skew) fails.
        """
        skewed = S.mismatch(workflow, statuses)
        if skewed is not None:
            return _failed_now(statuses, skewed, now)
        deps = workflow.dag
        rules = workflow.trigger_rules
        handler = workflow.failure_handler
        current = dict(statuses)
        changes: dict[str, dict[str, Any]] = {}
        openings: dict[str, dict[str, Any]] = {}
        expanded: dict[str, list[Any]] = {}
        children: dict[str, PlannedRun] = {}
        while True:
            plan = P.plan(deps, current, rules=rules, on_failure=handler, fail_on=workflow.fail_on)
            settled = True
            for name in plan.queue:
                step = workflow.steps[name]
                if step.wait is not None and name not in openings:
                    try:
                        openings[name] = WT.opening(run_id, workflow, step, context_for(name), now)
                    except Exception as exc:  # noqa: BLE001 - user code (correlate, until) or its result
                        error = WT.opening_error(step, exc)
                        changes[name] = {"status": P.FAILED, "error": error, "finished_at": now}
                        current[name] = P.FAILED
                        settled = False
                        break
                if step.when is None:
                    continue
                try:
                    go = step.when(context_for(name))
                except Exception as exc:  # noqa: BLE001 - user code
                    error = f"condition of step {name!r} raised {type(exc).__name__}: {exc}"
                    changes[name] = {"status": P.FAILED, "error": error, "finished_at": now}
                    current[name] = P.FAILED
                    settled = False
                    break
                if not go:
                    changes[name] = {"status": P.SKIPPED, "finished_at": now,
                                     "reason": f"condition of step {name!r} was false"}
                    current[name] = P.SKIPPED
                    settled = False
                    break
            else:
                # Maps and calls run user code as they start (`over`, `input`).
                for name in plan.queue:
                    step = workflow.steps[name]
                    if name in expanded or name in children or step.kind not in (M.MAP, M.CALL):
                        continue
                    try:
                        if step.map is not None:
                            expanded[name] = self._items_of(step, context_for(name))
                        else:
                            children[name] = self._plan_child(run_id, workflow, step, context_for(name))
                    except Exception as exc:  # noqa: BLE001 - user code (over, input) or its result
                        changes[name] = {"status": P.FAILED, "error": _composition_error(step, exc),
                                         "finished_at": now}
                        current[name] = P.FAILED
                        settled = False
                        break
                    if step.map is not None and not expanded[name]:  # nothing to map: done at once
                        changes[name] = {"status": P.SUCCEEDED, "result": [], "queued_at": now,
                                         "started_at": now, "finished_at": now}
                        current[name] = P.SUCCEEDED
                        settled = False
                        break
            if settled:
                break
        for name in plan.skip:
            changes[name] = {"status": P.SKIPPED, "finished_at": now, "reason": plan.reasons[name]}
        for name in plan.cancel:
            changes[name] = {"status": P.CANCELLED, "finished_at": now, "reason": plan.reasons[name]}
        decision = Decision(changes=changes, run_status=plan.run_status)
        lease = now + timedelta(seconds=self.settings.redeliver_after)
        for name in plan.queue:
            step = workflow.steps[name]
            if step.map is not None:  # its items are the tasks; the node itself holds no worker
                changes[name] = {"status": P.RUNNING, "queued_at": now, "started_at": now,
                                 "lease_expires_at": None, "task_id": None}
                rows, messages = CM.item_rows(
                    run_id, name, expanded[name], workflow.queue_of(step, partition),
                    step.max_attempts, step.timeout, step.map.concurrency, now, lease,
                )
                decision.items.extend(rows)
                decision.dispatches.extend(messages)
                continue
            if step.call is not None:  # waits for its child run
                child = children[name]
                changes[name] = {"status": P.WAITING, "queued_at": now, "started_at": now}
                decision.opens.append(CM.call_wait(run_id, name, child.run["id"], step.call.workflow, now))
                decision.children.append(child)
                continue
            if step.waits:  # holds no worker: a `waits` row, written by `open_waits`
                changes[name] = {"status": P.WAITING, "queued_at": now, "started_at": now}
                decision.opens.append(openings[name])
                continue
            message = Dispatch(str(run_id), name, workflow.queue_of(step, partition), step.timeout)
            changes[name] = {
                "status": P.QUEUED,
                "queued_at": now,
                "lease_expires_at": lease,
                "task_id": message.task_id,
            }
            decision.dispatches.append(message)
        if plan.run_status == P.RUN_FAILED:
            failed = [n for n, s in current.items() if s == P.FAILED and n != handler]
            decision.run_error = f"step {failed[0]!r} failed" if failed else "failed"
        decision.closes = _closed(statuses, changes)
        return decision

    def _advance(
        self,
        run: Run,
        workflow: Workflow | None,
        steps: Mapping[str, StepRun],
        outbox: Outbox,
        now: datetime,
    ) -> None:
        """Apply the planner's decisions to loaded ORM rows (the caller holds the run lock).

        Without the workflow's code (`None`: a deploy removed it) the run cannot go on: it fails.
        """
        if workflow is None:
            self._fail_run(run, steps, S.not_loaded(run.workflow, None), outbox, now)
            return

        def context_for(name: str) -> StepContext:
            return StepContext(str(run.id), workflow.name, name, run.input,
                               _upstream_results(workflow, steps, name), attempt=0)

        partition = run.concurrency_key if workflow.partition_by is not None else None
        decision = self._decide(
            run.id, workflow, {n: r.status for n, r in steps.items()}, context_for, now, partition
        )
        self._apply(run, steps, decision, outbox, now)

    def _fail_run(
        self, run: Run, steps: Mapping[str, StepRun], error: str, outbox: Outbox, now: datetime
    ) -> None:
        """Fail a locked run at once with `error`, using no definition (`_failed_now`); its
        maps stop too (their items still to start are cancelled)."""
        maps = [row for row in steps.values() if _is_map_node(row)]
        if maps:
            session = object_session(run)
            assert session is not None
            for row in maps:
                row.status, row.finished_at, row.reason = P.CANCELLED, now, error
            session.flush()
            outbox.revoke.extend(CM.cancel_items(session, [run.id], None, error, now))
        self._apply(run, steps, _failed_now({n: r.status for n, r in steps.items()}, error, now), outbox, now)

    def _apply(
        self, run: Run, steps: Mapping[str, StepRun], decision: Decision, outbox: Outbox, now: datetime
    ) -> None:
        """Write a decision to loaded ORM rows; its messages go to the outbox."""
        for name, values in decision.changes.items():
            for column, value in values.items():
                setattr(steps[name], column, value)
        outbox.extend(decision.dispatches)
        session = object_session(run)
        assert session is not None
        if decision.items or decision.children:
            session.flush()
            if decision.items:
                session.execute(insert(StepRun.__table__), decision.items)
            self.insert_planned(session, outbox, decision.children)
        if decision.run_status is not None and run.status not in P.RUN_FINAL:
            if decision.run_status == P.RUN_SUCCEEDED:
                workflow = self._definition_of(run, session)
                if workflow is not None:
                    session.flush()
                    output, error = self._output(session, workflow, run.id, run.parent_run_id, run.detached)
                    run.output = output
                    if error is not None:
                        decision.run_status, decision.run_error = P.RUN_FAILED, error
            run.status = decision.run_status
            run.finished_at = now
            if decision.run_error and run.error is None:
                run.error = decision.run_error
            if run.parent_run_id is not None and not run.detached:
                outbox.ended.append(run.id)
        if decision.closes:
            calls = [n for n in decision.closes if n in self._call_nodes(run, session)]
            if calls:
                outbox.orphans.append((run.id, tuple(calls)))
        if decision.closes or decision.opens:
            if decision.closes:
                WT.close_waits(session, [run.id], decision.closes, now)
            if decision.opens:
                session.flush()
                self.open_waits(session, outbox, decision.opens)  # type: ignore[arg-type]

    # -- nodes that wait (see `orchestrator.waiting`) ---------------------------------

    def open_waits(self, session: Session, outbox: Outbox, rows: list[dict[str, Any]]) -> None:
        """Write the `waits` rows of nodes a decision set `waiting`, in its transaction.

        An event wait with a lookback is completed at once by the earliest matching event
        recorded within it; the advisory lock of its correlation orders this with the
        intake recording such an event, so whichever commits second sees the other.
        """
        if not rows:
            return
        now = utcnow()
        for wait_id, row in WT.insert_waits(session, rows):
            if row["kind"] == W.EVENT and row["spec"].get("lookback"):
                found = WT.lookback(session, row)
                if found is not None and self.complete_event_wait(
                    session, outbox, wait_id, row["run_id"], row["step"], found, now
                ):
                    WT.mark_matched(session, [found.event_id])

    def complete_event_wait(
        self, session: Session, outbox: Outbox, wait_id: int, run_id: uuid.UUID, step: str,
        event: WT.MatchedEvent, now: datetime,
    ) -> bool:
        """An event matched an open wait: the node succeeds with the event's payload.

        False when the wait was no longer open (another event won, it timed out, the run
        was cancelled): the event is recorded as usual and nothing else happens.
        """
        run = self._lock_run(session, run_id)
        if not WT.end_wait(session, wait_id, W.MATCHED, now, event_id=event.event_id):
            return False
        return self.settle_waiting(session, outbox, run, step, P.SUCCEEDED, now, result=event.payload)

    def settle_waiting(
        self, session: Session, outbox: Outbox, run: Run, step: str, status: str, now: datetime, *,
        result: Any = None, error: str | None = None, reason: str | None = None,
    ) -> bool:
        """End a locked run's waiting node with `status` and move the run on."""
        row = _end_waiting_step(run, step, status, now, result=result, error=error, reason=reason)
        if row is None:
            return False
        self._settled(session, outbox, run, self._definition_of(run, session), row, now)
        return True

    def decide(self, run_id: str, step: str, decision: str, comment: str | None = None,
               by: str | None = None) -> dict[str, Any]:
        """A person's decision on an approval node: approve (it succeeds, its result holds
        the decision) or reject (it fails with the comment as its error).

        Raises `RunNotFound`, or `NotWaiting` when the node is not an approval that is
        waiting (already decided, timed out, cancelled, or not an approval).
        """
        if decision not in W.DECISIONS:
            raise InvalidInput(f"decision={decision!r}: use 'approve' or 'reject'")
        for what, text in (("comment", comment), ("by", by)):
            if text is not None and (not isinstance(text, str) or len(text) > W.MAX_COMMENT_CHARS
                                     or "\x00" in text):
                raise InvalidInput(f"{what} must be text of at most {W.MAX_COMMENT_CHARS} characters "
                                   "(no NUL)")
        now = utcnow()
        rid = parse_run_id(run_id)
        with self.transaction() as (session, outbox):
            run = self._lock_run(session, rid)
            wait = WT.open_wait_of(session, rid, step)
            if wait is None or wait.kind != W.APPROVAL:
                definition = self._definition_of(run, session)
                node = definition.steps.get(step) if definition is not None else None
                raise NotWaiting(WT.not_waiting(session, run, step, node.kind if node is not None else None))
            outcome = {"decision": decision, "comment": comment, "by": by, "at": now.isoformat()}
            WT.end_wait(session, wait.id, W.APPROVED if decision == "approve" else W.REJECTED, now,
                        decision=decision, comment=comment, decided_by=by)
            if decision == "approve":
                self.settle_waiting(session, outbox, run, step, P.SUCCEEDED, now, result=outcome)
            else:
                # The comment is the error, as the person wrote it (who and when are stored apart).
                error = comment or (f"rejected by {by}" if by else "rejected")
                self.settle_waiting(session, outbox, run, step, P.FAILED, now, error=error)
        return outcome

    def fire_due(self, limit: int = 500) -> int:
        """Fire the timers due now (sleeps end; waits and approvals time out), oldest first,
        in one transaction per batch of at most `limit`. Returns how many fired.

        The runs are locked with `SKIP LOCKED` (a run busy in another transaction is taken
        at the next tick). The batch is fired in one savepoint, its waits closed by one
        statement and its steps written by one flush, so a timer costs no round trip of its
        own (10,000 due in a minute keep up; see bench/timers.py). Should any run raise,
        that savepoint is rolled back and the batch fired again one run per savepoint, each
        its own failure domain: one that cannot be settled gets its node failed with the
        error in a transaction of its own.
        """
        now = utcnow()
        fired = 0
        broken: list[tuple[int, uuid.UUID, str, Exception]] = []
        with self.transaction() as (session, outbox):
            due = WT.due_waits(session, now, limit)
            if not due:
                return 0
            runs = WT.lock_runs(session, {w.run_id for w in due}, skip_locked=True, with_steps=True)
            due = [w for w in due if w.run_id in runs]
            batch = Outbox()
            try:
                with session.begin_nested(), session.no_autoflush:
                    fired = self._fire_batch(session, batch, runs, due, now)
            except (OperationalError, InterfaceError, DisconnectionError):
                raise
            except Exception:  # noqa: BLE001 - some run raised: find which, one by one
                log.debug("a batch of %d timers raised; firing them one by one", len(due), exc_info=True)
                fired, batch = 0, Outbox()
                session.expire_all()  # the rolled-back writes; the run locks are still held
                for wait in due:
                    try:
                        with session.begin_nested():
                            if self._fire(session, batch, runs[wait.run_id], wait, now):
                                fired += 1
                    except (OperationalError, InterfaceError, DisconnectionError):
                        raise
                    except Exception as exc:  # noqa: BLE001 - one bad run must not stop the others
                        broken.append((wait.id, wait.run_id, wait.step, exc))
            outbox.extend(batch)
            outbox.revoke.extend(batch.revoke)
            outbox.terminate.extend(batch.terminate)
        for wait_id, rid, step, exc in broken:
            log.exception("timer of %s/%s could not fire; failing the node", rid, step, exc_info=exc)
            self._fail_wait(wait_id, rid, step, f"its timer could not fire: {type(exc).__name__}: {exc}")
        return fired

    def _fire_batch(self, session: Session, outbox: Outbox, runs: Mapping[uuid.UUID, Run],
                    due: list[Any], now: datetime) -> int:
        """Fire locked runs' due timers: close the still-open waits at once, then settle."""
        sleeps = [w.id for w in due if w.kind == W.SLEEP]
        closed = WT.end_waits(session, sleeps, W.FIRED, now) | WT.end_waits(
            session, [w.id for w in due if w.kind != W.SLEEP], W.TIMED_OUT, now
        )
        # The nodes first, then what follows them: each flush then writes rows changed
        # alike together (a statement per kind, not two per timer).
        ended = []
        for wait in due:
            if wait.id in closed:
                status, outcome = _timer_outcome(wait, now)
                row = _end_waiting_step(runs[wait.run_id], wait.step, status, now, **outcome)
                if row is not None:
                    ended.append((runs[wait.run_id], row))
        session.flush()
        for run, row in ended:
            self._settled(session, outbox, run, self._definition_of(run, session), row, now)
        session.flush()
        return len(ended)

    def _fire(self, session: Session, outbox: Outbox, run: Run, wait: Any, now: datetime) -> bool:
        if not WT.end_wait(session, wait.id, W.FIRED if wait.kind == W.SLEEP else W.TIMED_OUT, now):
            return False
        status, outcome = _timer_outcome(wait, now)
        return self.settle_waiting(session, outbox, run, wait.step, status, now, **outcome)

    def _fail_wait(self, wait_id: int, rid: uuid.UUID, step: str, error: str) -> None:
        now = utcnow()
        try:
            with self.transaction() as (session, outbox):
                run = self._lock_run(session, rid)
                if WT.end_wait(session, wait_id, W.TIMED_OUT, now):
                    self.settle_waiting(session, outbox, run, step, P.FAILED, now, error=error)
        except (OperationalError, InterfaceError, DisconnectionError):
            raise
        except Exception:  # noqa: BLE001 - logged; the next tick tries again
            log.exception("could not fail the node %s/%s whose timer broke", rid, step)

    # -- composition: maps and calls (see `orchestrator.composing`) ------------------

    def _items_of(self, step: Any, ctx: StepContext) -> list[Any]:
        """The checked items of a map node that starts now (runs its `over`)."""
        items = M.items_of(step.name, step.map.over(ctx), self.settings.max_map_items)
        for index, item in enumerate(items):
            check_json(item, f"item {index} of map {step.name!r}")
        return items

    def _plan_child(self, run_id: uuid.UUID, workflow: Workflow, step: Any, ctx: StepContext) -> PlannedRun:
        """The run a call node starts (runs its `input`; the child's input is checked)."""
        target = self.registry.get(step.call.workflow)
        data = validate_input(target, step.call.input_of(ctx))
        return self.plan_run(target, data, parent=(run_id, step.name, False))

    def _call_nodes(self, run: Run, session: Session) -> dict[str, str]:
        workflow = self._definition_of(run, session)
        return workflow.calls if workflow is not None else {}

    def _output(self, session: Session, workflow: Workflow, rid: uuid.UUID, parent: uuid.UUID | None,
                detached: bool | None) -> tuple[Any, str | None]:
        """A succeeded run's output, and an error if its `output` function failed. Computed
        only where it is wanted: the workflow names one, or a parent waits for the run."""
        if workflow.output is None and (parent is None or detached):
            return None, None
        results = succeeded_results(session, rid)
        try:
            if workflow.output is None:
                output = M.default_output(workflow.sinks(), results)
            else:
                output = workflow.output(results)
            check_json(output, f"output of workflow {workflow.name!r}")
        except Exception as exc:  # noqa: BLE001 - user code, or what it returned
            return None, f"output of workflow {workflow.name!r} raised {type(exc).__name__}: {exc}"
        return output, None

    def _start_detached(self, session: Session, outbox: Outbox, claim: Claim,
                        starts: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """Runs an attempt started with `ctx.start_run`, inserted with its success."""
        planned = []
        for name, data in starts:
            target = self.registry.get(name)
            planned.append(self.plan_run(target, validate_input(target, data),
                                         parent=(parse_run_id(claim.run_id), claim.step, True)))
        self.insert_planned(session, outbox, planned)

    def check_starts(self, starts: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """Raise `WorkflowNotFound` / `InvalidInput` for a `ctx.start_run` that cannot start
        (the executor fails the attempt with it, before recording a success)."""
        for name, data in starts:
            validate_input(self.registry.get(name), data)

    def _finish_item(self, claim: Claim, outcome: Outcome) -> None:
        """An item of a map succeeded: its row and attempt, without the run's lock; the next
        pending item takes its slot; the map is settled after commit if it was the last."""
        now = utcnow()
        rid = parse_run_id(claim.run_id)
        workflow = self.claimed_definition(claim)
        step = workflow.steps[claim.node_name]
        limited = step.map is not None and step.map.concurrency is not None
        if not (limited or outcome.emits or outcome.starts):
            # Nothing to write but the item's row and attempt: one statement committed by
            # itself where the database allows (see `hot_path.settle_item_alone`).
            settled = self.hot_path.settle_item_alone(
                claim.step_id, claim.attempt, claim.attempt_id, outcome.result, outcome.logs or [], now
            )
            if settled is not None:
                if not settled:
                    with self.transaction() as (session, _):
                        self._lease_lost(session, claim)
                    return
                after = Outbox()
                after.maps.add((rid, claim.node_name))
                self._after_commit(after)
                return
        with self.transaction() as (session, outbox):
            if not self.hot_path.settle_item(session, claim.step_id, claim.attempt, claim.attempt_id,
                                             outcome.result, outcome.logs or [], now):
                self._lease_lost(session, claim)
                return
            self._record_effects(session, outbox, claim, outcome, now)
            if step.map is not None and step.map.concurrency is not None:
                lease = now + timedelta(seconds=self.settings.redeliver_after)
                outbox.extend(CM.promote(session, rid, claim.node_name, 1, step.timeout, now, lease))
            outbox.maps.add((rid, claim.node_name))

    def _record_effects(self, session: Session, outbox: Outbox, claim: Claim, outcome: Outcome,
                        now: datetime) -> None:
        """A success's emits (outbox rows) and started runs, in its transaction."""
        if outcome.emits:
            conn = session.connection()
            conn.execute(_INSERT_OUTBOX, outbox_rows(claim, outcome.emits, now))
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql(f"NOTIFY {OUTBOX_CHANNEL}")  # delivered at the commit
        if outcome.starts:
            self._start_detached(session, outbox, claim, outcome.starts)

    def _item_ended(self, session: Session, outbox: Outbox, run: Run, workflow: Workflow | None,
                    row: StepRun, now: datetime) -> None:
        """Cold path (the run is locked): an item ended other than by success. Out of retries
        it fails its map, unless the map allows failures; then its slot goes to the next."""
        if row.status not in P.STEP_FINAL or row.map_node is None:
            return
        node = _node_row(run, row.map_node)
        step = workflow.steps.get(row.map_node) if workflow is not None else None
        if node is None or node.status != P.RUNNING:
            return
        if row.status == P.FAILED and (step is None or step.map is None or not step.map.allow_failures):
            self._fail_map(session, outbox, run, node, f"item {row.map_index} of map {node.name!r} "
                           f"failed: {row.error or 'failed'}", now)
            return
        if step is not None and step.map is not None and step.map.concurrency is not None:
            lease = now + timedelta(seconds=self.settings.redeliver_after)
            outbox.extend(CM.promote(session, run.id, node.name, 1, step.timeout, now, lease))
        outbox.maps.add((run.id, node.name))

    def _fail_map(self, session: Session, outbox: Outbox, run: Run, node: StepRun, error: str,
                  now: datetime) -> None:
        """Fail a locked run's map node: its items still to start are cancelled."""
        node.status = P.FAILED
        node.error = error
        node.finished_at = now
        session.flush()
        outbox.revoke.extend(CM.cancel_items(session, [run.id], [node.name], f"map {node.name!r} failed", now))

    def _map_item_ended(self, rid: uuid.UUID, node: str) -> None:
        """After an item's commit: if no item of the map is left, settle the map."""
        with self.hot_path.reader() as conn:
            if CM.items_open(conn, rid, node):
                return
        self.settle_map(rid, node)

    def settle_map(self, rid: uuid.UUID, node: str) -> bool:
        """Settle a map whose items have all ended: it succeeds with their results in item
        order (or fails, naming the first failed item), and its run moves on. Idempotent:
        False if the map was settled already or still has items to end."""
        now = utcnow()
        with self.transaction() as (session, outbox):
            run = self._lock_run(session, rid)
            row = _node_row(run, node)
            if row is None or row.status != P.RUNNING or CM.items_open(session, rid, node):
                return False
            workflow = self._definition_of(run, session)
            step = workflow.steps.get(node) if workflow is not None else None
            allow = bool(step is not None and step.map is not None and step.map.allow_failures)
            ok, result, error = M.map_outcome(node, CM.item_ends(session, rid, node), allow)
            row.status = P.SUCCEEDED if ok else P.FAILED
            row.result = result
            row.error = error
            row.finished_at = now
            if run.status not in P.RUN_FINAL:
                self._advance(run, workflow, {s.name: s for s in run.steps}, outbox, now)
            self._after_run_change(session, outbox, run, workflow)
            return True

    def _child_ended(self, child_id: uuid.UUID) -> None:
        """After a child run's end was committed: settle its parent's call node."""
        with self.sessions() as session:
            link = CM.child_link(session, child_id)
        if link is not None and link.parent_run_id is not None and not link.detached:
            self.settle_call(link.parent_run_id, child_id)

    def settle_call(self, parent: uuid.UUID, child_id: uuid.UUID) -> bool:
        """A call node's child ended: the node succeeds with the child's output, or, on
        failure, starts a new child while retries remain, else fails with the child's error.
        Idempotent: False if the node no longer waits for that child."""
        now = utcnow()
        with self.transaction() as (session, outbox):
            run = self._lock_run(session, parent)
            child = session.get(Run, child_id)
            if child is None or child.status not in P.RUN_FINAL or child.parent_step is None:
                return False
            node = child.parent_step
            wait_id = CM.open_call(session, parent, node, child_id)
            row = _node_row(run, node)
            if wait_id is None or row is None or row.status != P.WAITING:
                return False
            WT.end_wait(session, wait_id, W.MATCHED if child.status == P.RUN_SUCCEEDED else W.CLOSED, now)
            row.attempts += 1
            workflow = self._definition_of(run, session)
            if child.status == P.RUN_SUCCEEDED:
                row.status, row.result, row.error, row.finished_at = P.SUCCEEDED, child.output, None, now
            else:
                error = _child_error(child)
                step = workflow.steps.get(node) if workflow is not None else None
                # A child that was cancelled (by hand) is not retried: someone stopped it.
                if (step is not None and step.call is not None and row.attempts < row.max_attempts
                        and child.status == P.RUN_FAILED and run.status not in P.RUN_FINAL):
                    try:  # a new child, with the node's input computed again
                        ctx = StepContext(str(run.id), run.workflow, node, run.input, _upstream_results(
                            workflow, {s.name: s for s in run.steps}, node), attempt=0)
                        planned = self._plan_child(run.id, workflow, step, ctx)  # type: ignore[arg-type]
                    except Exception as exc:  # noqa: BLE001 - user code
                        error = _composition_error(step, exc)
                    else:
                        row.error = error
                        self.insert_planned(session, outbox, [planned])
                        session.flush()
                        self.open_waits(session, outbox, [CM.call_wait(
                            run.id, node, planned.run["id"], step.call.workflow, now)])
                        return True
                row.status, row.error, row.finished_at = P.FAILED, error, now
            if run.status not in P.RUN_FINAL:
                self._advance(run, workflow, {s.name: s for s in run.steps}, outbox, now)
            self._after_run_change(session, outbox, run, workflow)
            return True

    def _cancel_children(self, parents: uuid.UUID | tuple[uuid.UUID, ...], nodes: tuple[str, ...] | None) -> None:
        """Cancel the live children of runs (of their call nodes `nodes`, or all of them)."""
        with self.sessions() as session:
            children = CM.live_children(session, [parents] if isinstance(parents, uuid.UUID) else list(parents), nodes)
        if children:
            self.cancel_runs([str(c) for c in children])

    def settle_composed(self) -> int:
        """Recovery: settle what a process died before settling after its commit: maps with
        no item left, call nodes whose child ended, children whose parent stopped waiting.
        Returns how many it settled."""
        with self.sessions() as session:
            maps = CM.stalled_maps(session)
            calls = CM.ended_children(session)
            orphans = CM.orphaned_children(session)
        done = 0
        for rid, node in maps:
            done += self._guarded(self.settle_map, rid, node)
        for parent, child in calls:
            done += self._guarded(self.settle_call, parent, child)
        if orphans:
            done += sum(self.cancel_runs([str(c) for c in orphans]).values())
        return done

    def _guarded(self, action: Callable[..., bool], *args: Any) -> int:
        try:
            return int(bool(action(*args)))
        except (OperationalError, InterfaceError, DisconnectionError):
            raise
        except Exception:  # noqa: BLE001 - one bad run must not stop the others
            log.exception("could not settle %s%r", action.__name__, args)
            return 0

    # -- executing a step (called by the Celery task) -----------------------------

    def claim(self, run_id: str, step_name: str, worker: str | None = None) -> Claim | None:
        """Take a queued step for this worker, or return None if it is not ours to run.

        None means: already succeeded or running elsewhere (a duplicate message), run
        cancelled or finished, or unknown, or (for a step with its own concurrency limit)
        no free slot: the step is then parked until a sibling finishes. The conditional
        UPDATE is the arbiter; it only takes a step of a workflow that defines it here, so a
        worker never claims a step it has no code for: it gets `StepNotLoaded` instead
        (the caller hands the message back or calls `fail_not_loaded`).
        """
        rid = parse_run_id(run_id)
        now = utcnow()
        lease = now + timedelta(seconds=self.settings.step_lease)
        node = M.node_of(step_name)  # an item's map, else the step itself
        workflows = self.registry.defining(node)
        parents = self.registry.parent_names(node)
        row = None
        with self.sessions() as session:
            if not workflows:
                pass  # no loaded workflow has this step: nothing to claim
            elif node == step_name and self.registry.is_limited_step(step_name):
                with session.begin():
                    held = self._step_slot(session, rid, step_name, now)
                    if held is None:
                        return None
                    lease = held + timedelta(seconds=self.settings.step_lease)
                    row = self.hot_path.claim_in(
                        session, rid, step_name, workflows, parents, worker, held, lease
                    )
            else:
                row = self.hot_path.claim(session, rid, step_name, workflows, parents, worker, now, lease)
            if row is None:
                self._check_loaded(session, rid, step_name, worker)
                return None
        return self._claim_of(rid, step_name, node, row)

    def _claim_of(self, rid: uuid.UUID, step_name: str, node: str, row: Any) -> Claim:
        """The `Claim` of a claimed row (`hotpath.ClaimedRow`), with what its step reads
        beyond its parents' results (older versions' parents, events, map errors, failures)."""
        claim = Claim(
            step_id=row.step_id,
            run_id=str(rid),
            workflow=row.workflow,
            step=step_name,
            attempt=row.attempts,
            attempt_id=row.attempt_id,
            input=row.input,
            results={},
            run_key=row.run_key,
            version=row.version,
            node=node if row.map_index is not None else None,
            index=row.map_index,
            item=row.item,
            event_id=row.event_id,
        )
        definition = self.claimed_definition(claim)
        own = definition.upstream(node)
        missing = [p for p in own if p not in row.results]
        if missing and row.version is not None:  # an older version's parents: read them too
            with self.sessions() as session:
                row.results.update(succeeded_results(session, rid, missing))
        claim.results = {p: row.results[p] for p in own if p in row.results}
        waited = [p for p in own if p in claim.results and definition.steps[p].kind == W.EVENT]
        lenient = [p for p in own if p in claim.results and definition.steps[p].map is not None
                   and definition.steps[p].map.allow_failures]  # type: ignore[union-attr]
        if waited or lenient:
            with self.sessions() as session:
                if waited:
                    claim.events = WT.events_of(session, rid, waited)
                if lenient:
                    claim.map_errors = CM.map_errors(session, rid, lenient)
        if step_name == definition.failure_handler:
            with self.sessions() as session:
                claim.failed = failed_errors(session, rid)
        return claim

    def _check_loaded(self, session: Session, rid: uuid.UUID, step_name: str, worker: str | None) -> None:
        """After a refused claim: raise `StepNotLoaded` if the step waits for code we lack."""
        found = session.execute(
            select(Run.workflow, Run.version)
            .join(StepRun, StepRun.run_id == Run.id)
            .where(
                Run.id == rid,
                Run.status.in_((P.RUN_PENDING, P.RUN_RUNNING)),
                StepRun.name == step_name,
                StepRun.status.in_((P.QUEUED, P.RETRYING)),
            )
        ).one_or_none()
        session.rollback()
        if found is None:
            return
        workflow = self.registry.find(found.workflow)
        if workflow is not None and M.node_of(step_name) in workflow.steps:
            return
        if found.version is None:  # a run from before versions
            if workflow is None:
                raise StepNotLoaded(S.not_loaded(found.workflow, worker))
            raise StepNotLoaded(f"{S.step_not_defined(found.workflow, step_name)} (worker {worker!r})")
        deployed = workflow.version if workflow is not None else None
        where = f" (worker {worker!r})" if worker else ""
        raise StepNotLoaded(missing_code(found.workflow, step_name, found.version, deployed) + where)

    def defer_not_loaded(self, run_id: str, step_name: str) -> float | None:
        """A worker without a step's code gives its message back: how long it has waited.

        Notes when the first hand-back happened (on the step row, so every worker and every
        copy of the message counts the same grace) and returns the seconds since, or None
        if the step is no longer waiting. Past `ORCHESTRATOR_VERSION_GRACE` the caller
        fails the step (`fail_not_loaded`).
        """
        now = utcnow()
        steps = StepRun.__table__
        with self.sessions() as session, session.begin():
            session.execute(
                update(steps)
                .where(steps.c.run_id == parse_run_id(run_id), steps.c.name == step_name,
                       steps.c.status.in_((P.QUEUED, P.RETRYING)), steps.c.handed_back_at.is_(None))
                .values(handed_back_at=now)
            )
            since = session.scalar(
                select(steps.c.handed_back_at)
                .where(steps.c.run_id == parse_run_id(run_id), steps.c.name == step_name,
                       steps.c.status.in_((P.QUEUED, P.RETRYING)))
            )
        if since is None:
            return None
        return max(0.0, (now - _aware(since)).total_seconds())

    def fail_not_loaded(self, run_id: str, step_name: str, error: str) -> bool:
        """Fail a queued step that no worker with its code took (see `skew.hand_back_pause`).

        Retries do not help, so the step fails at once, and with it the run. Returns False
        if the step was taken or had ended meanwhile.
        """
        now = utcnow()
        with self.transaction() as (session, outbox):
            run = self._lock_run(session, parse_run_id(run_id))
            steps = {s.name: s for s in run.steps}
            row = steps.get(step_name)
            if row is None and M.parse_item(step_name) is not None:  # an item of a map
                row = session.scalars(select(StepRun).where(StepRun.run_id == run.id,
                                                            StepRun.name == step_name)).one_or_none()
            if row is None or row.status not in (P.QUEUED, P.RETRYING) or run.status in P.RUN_FINAL:
                return False
            row.status = P.FAILED
            row.error = error
            row.finished_at = now
            row.lease_expires_at = None
            workflow = self._definition_of(run, session)
            if run.error is None and (workflow is None or step_name != workflow.failure_handler):
                run.error = f"step {step_name!r} failed: {error}"  # the handler's is not the run's
            if row.map_node is not None:
                self._item_ended(session, outbox, run, workflow, row, now)
            self._advance(run, workflow, steps, outbox, now)
            self._after_run_change(session, outbox, run, workflow)
            return True

    def _step_slot(self, session: Session, rid: uuid.UUID, step_name: str, now: datetime) -> datetime | None:
        """Under the step's key lock: is a slot free? If not, park the step.

        Returns the moment the slot is held (None: no slot, or nothing to claim). The
        attempt records that moment as its start, not `now`: the lock may have been waited
        for while a sibling settled, and a start taken before would precede the sibling's
        recorded end although the two never overlapped.
        """
        target = session.execute(
            select(StepRun.id, StepRun.concurrency_key, Run.workflow)
            .join(Run, Run.id == StepRun.run_id)
            .where(
                StepRun.run_id == rid,
                StepRun.name == step_name,
                StepRun.status.in_((P.QUEUED, P.RETRYING)),
            )
        ).one_or_none()
        if target is None:
            return None
        workflow = self.registry.find(target.workflow)
        step = workflow.steps.get(step_name) if workflow is not None else None
        if step is None or step.concurrency is None or target.concurrency_key is None:
            return now
        C.lock_key(session, C.step_scope(target.workflow, step_name), target.concurrency_key)
        limit = step.concurrency.limit
        busy = C.count_running_steps(session, target.workflow, step_name, target.concurrency_key, limit)
        if busy < limit:
            return utcnow()
        retry_at = now + timedelta(seconds=self.settings.redeliver_after)
        C.park_step(session, target.id, now, retry_at)
        return None

    def _wake_steps(self, session: Session, outbox: Outbox, workflow: Workflow, step_name: str, key: str | None) -> None:
        """A limited step ended: send the oldest parked siblings into the freed slots."""
        step = workflow.steps.get(step_name)
        if step is None or step.concurrency is None or key is None:
            return
        C.lock_key(session, C.step_scope(workflow.name, step_name), key)
        limit = step.concurrency.limit
        free = limit - C.count_running_steps(session, workflow.name, step_name, key, limit)
        if free <= 0:
            return
        lease = utcnow() + timedelta(seconds=self.settings.redeliver_after)
        for row in C.parked_steps(session, workflow.name, step_name, key, free):
            message = Dispatch(str(row.run_id), step_name, row.queue, step.timeout)
            session.execute(
                update(StepRun)
                .where(StepRun.id == row.id)
                .values(task_id=message.task_id, lease_expires_at=lease)
            )
            outbox.append(message)

    def heartbeat(self, leases: Iterable[tuple[int, int]]) -> None:
        """Extend the leases of attempts still running, given as (step id, attempt number)."""
        leases = list(leases)
        if not leases:
            return
        until = utcnow() + timedelta(seconds=self.settings.step_lease)
        with self.sessions() as session, session.begin():
            for step_id, attempt in leases:
                session.execute(
                    update(StepRun)
                    .where(
                        StepRun.id == step_id,
                        StepRun.attempts == attempt,
                        StepRun.status == P.RUNNING,
                    )
                    .values(lease_expires_at=until)
                )

    def finish(self, claim: Claim, outcome: Outcome, inline: Inline | None = None) -> Claim | None:
        """Record an attempt's outcome and move the run on, in one transaction.

        A success's emits (`ctx.emit`) become `outbox` rows in that same transaction, so
        they exist exactly when the success does; a failure's are never written. With
        `inline`, a success may also claim the next step, returned for the caller to run
        now (see `Inline`); None otherwise, and always for a failure.
        """
        if not outcome.ok:
            self._finish_failed(claim, outcome)
            return None
        if claim.node is not None:
            self._finish_item(claim, outcome)
            return None
        # The hot path: lock the run, settle the step, plan, queue successors.
        now = utcnow()
        rid = parse_run_id(claim.run_id)
        steps = StepRun.__table__
        workflow = self.claimed_definition(claim)
        follow: tuple[str, Any] | None = None
        with self.transaction() as (session, outbox):
            if claim.run_key is not None:
                C.lock_key(session, C.run_scope(workflow.name), claim.run_key)
            locked = self.hot_path.lock_run(session, rid)
            if locked is None:
                return None
            statuses = self.hot_path.settle_success(
                session, rid, claim.step_id, claim.attempt, claim.attempt_id,
                outcome.result, outcome.logs or [], now,
            )
            if statuses is None:
                self._lease_lost(session, claim)
                return None
            self._record_effects(session, outbox, claim, outcome, now)
            step = workflow.steps.get(claim.step)
            if step is not None and step.concurrency is not None:
                key = session.scalar(select(steps.c.concurrency_key).where(steps.c.id == claim.step_id))
                self._wake_steps(session, outbox, workflow, claim.step, key)
            if locked.status in P.RUN_FINAL:
                return None

            known: dict[str, Any] = {}  # read once per decision, when a condition needs them

            def context_for(name: str) -> StepContext:
                if not known:
                    known["input"] = session.connection().scalar(_RUN_INPUT, {"p_rid": rid})
                    known["results"] = succeeded_results(session, rid)
                done = known["results"]
                results = {p: done[p] for p in workflow.upstream(name) if p in done}
                return StepContext(claim.run_id, workflow.name, name, known["input"], results, attempt=0)

            partition = claim.run_key if workflow.partition_by is not None else None
            decision = self._decide(rid, workflow, statuses, context_for, now, partition)
            if inline is not None:
                follow = self._continue_inline(session, rid, workflow, claim, decision, inline, now)
            by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
            for name, values in decision.changes.items():
                by_columns.setdefault(tuple(sorted(values)), []).append(
                    {"p_rid": rid, "p_name": name, **{f"p_{c}": v for c, v in values.items()}}
                )
            for columns, params in by_columns.items():  # one executemany per kind of change
                session.connection().execute(_step_update(columns), params)
            outbox.extend(decision.dispatches)
            if decision.items:
                session.connection().execute(insert(steps), decision.items)
            self.insert_planned(session, outbox, decision.children)
            if decision.closes:
                WT.close_waits(session, [rid], decision.closes, now)
                calls = [n for n in decision.closes if n in workflow.calls]
                if calls:
                    outbox.orphans.append((rid, tuple(calls)))
            if decision.run_status is not None:
                output = None
                if decision.run_status == P.RUN_SUCCEEDED:
                    output, error = self._output(session, workflow, rid, locked.parent_run_id, locked.detached)
                    if error is not None:
                        decision.run_status, decision.run_error = P.RUN_FAILED, error
                session.connection().execute(_FINISH_RUN, {"p_rid": rid, "p_status": decision.run_status,
                                              "p_now": now, "p_error": decision.run_error,
                                              "p_output": output})
                if locked.parent_run_id is not None and not locked.detached:
                    outbox.ended.append(rid)
                if workflow.concurrency is not None and claim.run_key is not None:
                    self.admit(session, outbox, workflow, claim.run_key)
            if decision.opens:
                self.open_waits(session, outbox, decision.opens)
        if follow is None:
            return None
        name, row = follow
        return self._claim_of(rid, name, name, row)

    def _inline_candidate(self, workflow: Workflow, claim: Claim, decision: Decision,
                          inline: Inline) -> Dispatch | None:
        """The message of `decision` whose step may run inline after `claim`'s, if any.

        Only a plain task (no map, call, wait or sleep; no step concurrency limit, whose
        slot is taken at its claim), of the loaded code (so this worker has it: not a
        planning view of another version), on the queue this worker took `claim` from,
        without a `timeout` (a step with one gets its own message, hence its own Celery
        hard time limit; and so does any step after one with a timeout, whose task has a
        hard limit), reading only its parents' results (every parent a plain task), and
        not the failure handler.
        """
        if self.registry.find(workflow.name) is not workflow:
            return None
        current = workflow.steps.get(claim.step)
        if current is None or current.timeout is not None:
            return None
        for message in decision.dispatches:
            if message.queue != inline.queue or message.countdown is not None or message.timeout is not None:
                continue
            step = workflow.steps.get(message.step)
            if (step is None or step.kind != W.TASK or step.concurrency is not None
                    or step.timeout is not None or message.step == workflow.failure_handler):
                continue
            if all(workflow.steps[p].kind == W.TASK for p in workflow.upstream(message.step)):
                return message
        return None

    def _continue_inline(self, session: Session, rid: uuid.UUID, workflow: Workflow, claim: Claim,
                         decision: Decision, inline: Inline, now: datetime) -> tuple[str, Any] | None:
        """Claim the inline candidate of `decision` in the open transaction (the run lock is
        held); on success its message and queued change leave the decision. Returns the
        step's name and claimed row, or None (everything then goes as the decision says)."""
        message = self._inline_candidate(workflow, claim, decision, inline)
        if message is None:
            return None
        lease = now + timedelta(seconds=self.settings.step_lease)
        row = self.hot_path.continue_step(
            session, rid, message.step, [workflow.name], list(workflow.upstream(message.step)),
            inline.worker, inline.task_id, now, lease,
        )
        if row is None:
            return None
        decision.dispatches.remove(message)
        decision.changes.pop(message.step, None)
        return message.step, row

    def _lease_lost(self, session: Session, claim: Claim) -> None:
        """The recovery loop gave this attempt up while it ran: keep its record, drop its result."""
        attempts, steps = Attempt.__table__, StepRun.__table__
        # Not when the step holds this very attempt's success: an outcome recorded again
        # (its first commit's answer was lost with the connection) changes nothing.
        recorded = (
            select(steps.c.id)
            .where(steps.c.id == claim.step_id, steps.c.status == P.SUCCEEDED,
                   steps.c.attempts == claim.attempt)
            .exists()
        )
        session.execute(
            update(attempts)
            .where(attempts.c.id == claim.attempt_id, attempts.c.status.in_((P.RUNNING, P.SUCCEEDED)),
                   ~recorded)
            .values(status=P.FAILED, error="lease lost: the attempt finished after it was given up")
        )
        log.warning("step %s/%s finished after its lease was lost", claim.run_id, claim.step)

    def _finish_failed(self, claim: Claim, outcome: Outcome) -> None:
        now = utcnow()
        rid = parse_run_id(claim.run_id)
        with self.transaction() as (session, outbox):
            run = self._lock_run(session, rid)
            attempt = session.get(Attempt, claim.attempt_id)
            row = session.get(StepRun, claim.step_id)
            if attempt is not None:
                attempt.finished_at = now
                attempt.logs = outcome.logs or []
            if row is None or row.status != P.RUNNING or row.attempts != claim.attempt:
                self._lease_lost(session, claim)
                return
            if attempt is not None:
                attempt.status = P.FAILED
                attempt.error = outcome.error
                attempt.traceback = outcome.traceback
            workflow = self._definition_of(run, session)
            self._fail_attempt(run, workflow, row, outcome.error or "failed", outbox, now)
            self._settled(session, outbox, run, workflow, row, now)

    def _settled(
        self, session: Session, outbox: Outbox, run: Run, workflow: Workflow | None, row: StepRun,
        now: datetime,
    ) -> None:
        """After a cold-path attempt ended: move the run on, free the step's and run's slots."""
        if row.map_node is not None:
            self._item_ended(session, outbox, run, workflow, row, now)
        if run.status not in P.RUN_FINAL:
            self._advance(run, workflow, {s.name: s for s in run.steps}, outbox, now)
        if workflow is not None and row.status != P.RUNNING and row.concurrency_key is not None:
            session.flush()
            self._wake_steps(session, outbox, workflow, row.name, row.concurrency_key)
        self._after_run_change(session, outbox, run, workflow)

    def _fail_attempt(
        self,
        run: Run,
        workflow: Workflow | None,
        row: StepRun,
        error: str,
        outbox: Outbox,
        now: datetime,
    ) -> None:
        """Retry with backoff while attempts remain and the run is live; else fail the step.

        A step whose code is not loaded here (deploy skew) is not retried.
        """
        row.error = error
        row.lease_expires_at = None
        step = workflow.steps.get(M.node_of(row.name)) if workflow is not None else None
        if step is not None and row.attempts < row.max_attempts and run.status not in P.RUN_FINAL:
            delay = P.backoff_delay(row.attempts, step.backoff, step.max_backoff)
            message = Dispatch(str(run.id), row.name, row.queue, step.timeout, countdown=delay)
            row.status = P.RETRYING
            row.task_id = message.task_id
            row.queued_at = now
            row.lease_expires_at = now + timedelta(seconds=delay + self.settings.redeliver_after)
            outbox.append(message)
        else:
            row.status = P.CANCELLED if run.status == P.RUN_CANCELLED else P.FAILED
            row.finished_at = now

    # -- recovery -----------------------------------------------------------------

    def expire_lease(self, step_id: int) -> bool:
        """Give up a running attempt whose worker stopped heartbeating (killed, hard limit)."""
        now = utcnow()
        with self.transaction() as (session, outbox):
            row = session.get(StepRun, step_id)
            if row is None:
                return False
            run = self._lock_run(session, row.run_id)
            session.refresh(row)
            if row.status != P.RUNNING or row.lease_expires_at is None or _aware(row.lease_expires_at) > now:
                return False
            error = (
                f"worker lost: no heartbeat for {self.settings.step_lease:g}s "
                "(the process was killed, or exceeded its hard time limit)"
            )
            _fail_running_attempt(session, row, error, now)
            workflow = self._definition_of(run, session)
            self._fail_attempt(run, workflow, row, error, outbox, now)
            self._settled(session, outbox, run, workflow, row, now)
            return True

    def give_up(self, step_id: int, error: str) -> str | None:
        """Recovery could not settle a step (`expire_lease` or `redeliver` raised): fail it,
        and its run, with `error`, using no definition. Returns the run's id, or None if
        the step was gone or had ended."""
        now = utcnow()
        with self.transaction() as (session, outbox):
            row = session.get(StepRun, step_id)
            if row is None:
                return None
            run = self._lock_run(session, row.run_id)
            session.refresh(row)
            if row.status not in (P.RUNNING, P.QUEUED, P.RETRYING):
                return None
            if row.status == P.RUNNING:
                _fail_running_attempt(session, row, error, now)
            row.status = P.FAILED
            row.error = error
            row.finished_at = now
            row.lease_expires_at = None
            node = _node_row(run, row.map_node)
            if node is not None and node.status == P.RUNNING:
                self._fail_map(session, outbox, run, node, f"item {row.map_index} of map {node.name!r} "
                               f"failed: {error}", now)
            if run.status not in P.RUN_FINAL:
                self._fail_run(run, {s.name: s for s in run.steps}, error, outbox, now)
            return str(run.id)

    def hand_back(self, run_id: str, step_name: str, worker: str, task_id: str | None = None) -> bool:
        """A worker shutting down gives back a step that it (node `worker`) is still running.

        The attempt is recorded as interrupted and the step is queued again for another
        worker, as after a failed attempt but without counting this one against its retries
        (the step did nothing wrong). Returns False if the attempt had already ended. Should
        the interrupted process still finish, its result is dropped like any lost lease's.
        With `task_id` (the Celery task of `step_name`'s message), a step of the run that
        task went on to run inline (`Inline`) is handed back when `step_name` has ended.
        """
        now = utcnow()
        with self.transaction() as (session, outbox):
            run = self._lock_run(session, parse_run_id(run_id))
            row = session.scalars(
                select(StepRun).where(StepRun.run_id == run.id, StepRun.name == step_name)
            ).one_or_none()
            if (row is None or row.status != P.RUNNING) and task_id is not None:
                row = session.scalars(
                    select(StepRun).where(StepRun.run_id == run.id, StepRun.task_id == task_id,
                                          StepRun.status == P.RUNNING)
                ).first()
            if row is None or row.status != P.RUNNING:
                return False
            record = _current_attempt(session, row)
            if record is None or record.status != P.RUNNING or record.worker != worker:
                return False
            error = "interrupted: the worker shut down before the attempt finished; handed back"
            record.status = P.FAILED
            record.error = error
            record.finished_at = now
            row.max_attempts += 1
            workflow = self._definition_of(run, session)
            self._fail_attempt(run, workflow, row, error, outbox, now)
            self._settled(session, outbox, run, workflow, row, now)
            return True

    def redeliver(self, step_ids: Iterable[int]) -> int:
        """Re-send messages of steps queued too long (a message lost between commit and send,
        or with a broker that lost it); each step's copies come at growing intervals."""
        now = utcnow()
        sent = 0
        with self.transaction() as (session, outbox):
            rows = session.scalars(
                select(StepRun)
                .where(
                    StepRun.id.in_(list(step_ids)),
                    StepRun.status.in_((P.QUEUED, P.RETRYING)),
                    StepRun.lease_expires_at < now,
                )
                .with_for_update(skip_locked=True)
            ).all()
            for row in rows:
                step = self._step_or_none(row, session)
                message = Dispatch(
                    str(row.run_id), row.name, row.queue, step.timeout if step else None
                )
                row.status = P.QUEUED
                row.task_id = message.task_id
                # The next copy waits as long as the step has already waited (at least
                # `redeliver_after`): a step that is only waiting in a long queue gets a few
                # copies, not one every `redeliver_after`, which would flood that queue.
                waited = now - _aware(row.queued_at) if row.queued_at is not None else timedelta(0)
                row.lease_expires_at = now + max(timedelta(seconds=self.settings.redeliver_after), waited)
                outbox.append(message)
                sent += 1
        return sent

    def _step_or_none(self, row: StepRun, session: Session) -> Any:
        workflow = self._definition_of(row.run, session)
        return workflow.steps.get(M.node_of(row.name)) if workflow is not None else None

    # -- operator actions -----------------------------------------------------------

    def cancel_run(self, run_id: str) -> bool:
        """Cancel a live run: nothing new starts and queued messages are revoked.

        Steps already running finish their attempt; their results are kept but schedule
        nothing. Returns False if the run had already finished.
        """
        with self.transaction() as (session, outbox):
            run = self._lock_run(session, parse_run_id(run_id))
            if run.status in P.RUN_FINAL:
                return False
            self._cancel_rows(run, "cancelled", outbox, utcnow())
            self._after_run_change(session, outbox, run, self.registry.find(run.workflow))
        return True

    def cancel_runs(self, run_ids: Iterable[str]) -> dict[str, bool]:
        """Cancel a batch of runs in one transaction, each as `cancel_run` would (bulk cancel).

        Returns, for every run found, whether it was live and is now cancelled. Set-based
        statements, so the transaction stays short: callers pass a few hundred runs at a
        time. Lock order as everywhere: the batch's concurrency keys (sorted), then its run
        rows (by id); then each key's freed slots go to its next runs, one admission per
        key. Runs whose workflow is not loaded are cancelled all the same.
        """
        ids: list[uuid.UUID] = []
        for run_id in run_ids:
            try:
                ids.append(parse_run_id(run_id))
            except RunNotFound:
                continue
        if not ids:
            return {}
        runs, steps = Run.__table__, StepRun.__table__
        now = utcnow()
        with self.transaction() as (session, outbox):
            keys = C.lock_keys_of_runs(session, ids)
            found = dict(
                session.execute(
                    select(runs.c.id, runs.c.status).where(runs.c.id.in_(ids)).order_by(runs.c.id).with_for_update()
                ).all()
            )
            live = [rid for rid, status in found.items() if status not in P.RUN_FINAL]
            if live:
                # As `_cancel_rows`: revoke the messages of queued and retrying steps.
                outbox.revoke.extend(
                    session.scalars(
                        select(steps.c.task_id).where(
                            steps.c.run_id.in_(live),
                            steps.c.status.in_((P.QUEUED, P.RETRYING)),
                            steps.c.task_id.is_not(None),
                        )
                    )
                )
                WT.close_waits(session, live, None, now)
                session.execute(
                    update(steps)
                    .where(steps.c.run_id.in_(live),
                           or_(steps.c.status.in_((P.PENDING, P.QUEUED, P.RETRYING, P.WAITING)),
                               and_(steps.c.status == P.RUNNING, steps.c.attempts == 0)))  # maps
                    .values(status=P.CANCELLED, finished_at=now, lease_expires_at=None, reason="cancelled")
                )
                outbox.orphans.extend((rid, None) for rid in live)
                outbox.ended.extend(session.scalars(
                    select(runs.c.id).where(runs.c.id.in_(live), runs.c.parent_run_id.is_not(None),
                                            runs.c.detached.is_not(True))
                ))
                session.execute(
                    update(runs)
                    .where(runs.c.id.in_(live))
                    .values(status=P.RUN_CANCELLED, finished_at=now, error="cancelled")
                )
                for workflow_name, key in keys:
                    workflow = self.registry.get(workflow_name) if workflow_name in self.registry else None
                    if workflow is not None and workflow.concurrency is not None:
                        self.admit(session, outbox, workflow, key)
        cancelled = set(live)
        return {str(rid): rid in cancelled for rid in found}

    def _cancel_rows(
        self, run: Run, reason: str, outbox: Outbox, now: datetime, terminate: bool = False
    ) -> None:
        """Mark a locked run and its open steps cancelled; revoke their messages after commit.

        With `terminate`, the processes running its steps are stopped too.
        """
        run.status = P.RUN_CANCELLED
        run.finished_at = now
        run.error = reason
        session = object_session(run)
        assert session is not None
        waiting = [row.name for row in run.steps if row.status == P.WAITING]
        if waiting:
            WT.close_waits(session, [run.id], waiting, now)
        outbox.revoke.extend(CM.cancel_items(session, [run.id], None, reason, now))
        outbox.orphans.append((run.id, None))
        if run.parent_run_id is not None and not run.detached:
            outbox.ended.append(run.id)
        for row in run.steps:
            if _is_map_node(row):  # its items are cancelled above; running ones finish
                row.status = P.CANCELLED
                row.finished_at = now
                row.reason = reason
            elif row.status in (P.PENDING, P.QUEUED, P.RETRYING, P.WAITING):
                if row.status != P.PENDING and row.task_id:
                    outbox.revoke.append(row.task_id)
                row.status = P.CANCELLED
                row.finished_at = now
                row.lease_expires_at = None
                row.reason = reason
            elif row.status == P.RUNNING and terminate and row.task_id:
                outbox.terminate.append(row.task_id)

    def retry_run(self, run_id: str, current_version: bool = False) -> bool:
        """Re-run a finished run's failed and cancelled steps and everything after them.

        Succeeded steps keep their results. The run keeps the version it started with;
        with `current_version` it is re-planned on today's definition instead: steps in
        both keep their succeeded results, steps today's version adds run, and steps it
        no longer has are dropped. Returns False if the run is still live or has nothing
        to retry; raises `DeploySkew` if the code it needs is not loaded here.
        """
        now = utcnow()
        if current_version:
            self.record_versions()
        with self.transaction() as (session, outbox):
            run = self._lock_run(session, parse_run_id(run_id))
            if run.status not in P.RUN_FINAL:
                return False
            loaded = self.registry.find(run.workflow)
            if current_version:
                if loaded is None:
                    raise DeploySkew(
                        f"run {run_id} cannot be retried on the current version: workflow "
                        f"{run.workflow!r} is not in the deployed code"
                    )
                workflow = loaded
                steps = self._replan(session, run, loaded)
            else:
                workflow = self._definition_of(run, session)
                if workflow is None or loaded is None:
                    raise DeploySkew(
                        f"run {run_id} cannot be retried here: its workflow {run.workflow!r} is not "
                        "loaded (deploy skew?)"
                    )
                steps = {s.name: s for s in run.steps}
                skewed = S.mismatch(workflow, steps)
                if skewed is not None:
                    raise DeploySkew(f"run {run_id} cannot be retried: {skewed}")
            redo = P.affected_by_retry(workflow.dag, {n: r.status for n, r in steps.items()})
            redo += [n for n, r in steps.items() if r.status == P.PENDING and n not in redo]
            handler = workflow.failure_handler
            if redo and handler in steps and handler not in redo:
                redo.append(handler)  # it runs again should the retried run fail again
            if not redo:
                return False
            if not current_version:
                absent = [n for n in redo if n not in loaded.steps]
                if absent:
                    raise DeploySkew(
                        f"run {run_id} cannot be retried on its version {run.version!r}: "
                        f"{missing_code(run.workflow, absent[0], run.version, loaded.version)}; "
                        "retry it on the current version instead (--current-version)"
                    )
            CM.delete_items(session, run.id, [n for n in redo if workflow.steps[n].map is not None])
            for name in redo:
                row = steps[name]
                row.status = P.PENDING
                row.result = None
                row.error = None
                row.reason = None
                row.finished_at = None
                row.lease_expires_at = None
                row.handed_back_at = None
                row.max_attempts = row.attempts + workflow.steps[name].max_attempts
            run.finished_at = None
            run.error = None
            if workflow.concurrency is not None and run.concurrency_key is not None:
                run.status = P.RUN_PENDING  # waits for a slot like a new run
                session.flush()
                self.admit(session, outbox, loaded, run.concurrency_key)
            else:
                run.status = P.RUN_RUNNING
                self._advance(run, workflow, steps, outbox, now)
        return True

    def _replan(self, session: Session, run: Run, workflow: Workflow) -> dict[str, StepRun]:
        """Move a finished run onto `workflow`'s current version (`retry --current-version`).

        Step rows today's version no longer has are deleted (with their attempts); the steps
        it adds get new pending rows. Returns the run's steps by name.
        """
        steps = {s.name: s for s in run.steps}
        for name, row in list(steps.items()):
            if name not in workflow.steps:
                run.steps.remove(row)
                del steps[name]
        partition = run.concurrency_key if workflow.partition_by is not None else None
        for step in workflow.steps.values():
            if step.name in steps:
                steps[step.name].queue = workflow.queue_of(step, partition)
                continue
            row = StepRun(
                name=step.name,
                status=P.PENDING,
                queue=workflow.queue_of(step, partition),
                concurrency_key=_key_of(step.concurrency, run.input,
                                        f"workflow {workflow.name!r}: step {step.name!r}"),
                attempts=0,
                max_attempts=step.max_attempts,
            )
            run.steps.append(row)
            steps[step.name] = row
        run.version = workflow.version
        session.flush()
        return steps


_INSERT_OUTBOX = insert(OutboxRow.__table__)


def outbox_rows(claim: Claim, emits: Iterable[Emit], now: datetime) -> list[dict[str, Any]]:
    """The `outbox` rows of a succeeded attempt's emits, in call order (ids ascending)."""
    rid = parse_run_id(claim.run_id)
    return [
        {"run_id": rid, "step": claim.step, "attempt": claim.attempt, "topic": e.topic,
         "key": e.key, "value": e.value, "headers": headers_json(e.headers),
         "event_id": uuid.UUID(e.event_id), "created_at": now, "sent_at": None}
        for e in emits
    ]


_RUN_INPUT = select(Run.__table__.c.input).where(Run.__table__.c.id == bindparam("p_rid"))
_FINISH_RUN = (
    update(Run.__table__)
    .where(Run.__table__.c.id == bindparam("p_rid"))
    .values(status=bindparam("p_status"), finished_at=bindparam("p_now"), error=bindparam("p_error"),
            output=bindparam("p_output", type_=Run.__table__.c.output.type))
)


@functools.cache
def _step_update(columns: tuple[str, ...]) -> Any:
    """`UPDATE steps SET <columns> WHERE run_id = :p_rid AND name = :p_name`, built once per
    set of columns (the hot path writes a handful of such sets)."""
    table = StepRun.__table__
    return (
        update(table)
        .where(table.c.run_id == bindparam("p_rid"), table.c.name == bindparam("p_name"))
        .values({c: bindparam(f"p_{c}", type_=table.c[c].type) for c in columns})
    )


def _failed_now(statuses: Mapping[str, str], error: str, now: datetime) -> Decision:
    """The run fails at once: its open steps are cancelled (running ones finish their
    attempt and schedule nothing). Needs no definition, so it also serves a run whose
    code is gone."""
    open_steps = (P.PENDING, P.QUEUED, P.RETRYING, P.WAITING)
    changes: dict[str, dict[str, Any]] = {
        name: {"status": P.CANCELLED, "finished_at": now, "lease_expires_at": None, "reason": error}
        for name, status in statuses.items()
        if status in open_steps
    }
    return Decision(changes=changes, run_status=P.RUN_FAILED, run_error=error,
                    closes=_closed(statuses, changes))


def _closed(statuses: Mapping[str, str], changes: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Nodes a decision takes out of `waiting` (their open waits are to be closed)."""
    return [name for name, values in changes.items()
            if statuses.get(name) == P.WAITING and values.get("status", P.WAITING) != P.WAITING]


def _node_row(run: Run, name: str | None) -> StepRun | None:
    """A loaded run's node row called `name` (nodes only: `Run.steps` holds no items)."""
    return next((r for r in run.steps if r.name == name), None)


def _upstream_results(workflow: Workflow, steps: Mapping[str, StepRun], name: str) -> dict[str, Any]:
    """`ctx.results` of node `name` from a run's loaded rows (`Workflow.upstream`)."""
    return {p: steps[p].result for p in workflow.upstream(name)
            if p in steps and steps[p].status == P.SUCCEEDED}


def _is_map_node(row: StepRun) -> bool:
    """A map node still expanding: `running` without an attempt of its own (every claimed
    step has one); its items are the tasks."""
    return row.status == P.RUNNING and row.attempts == 0 and row.map_node is None


def _current_attempt(session: Session, row: StepRun) -> Attempt | None:
    """The attempt record of a step's latest attempt, if there is one."""
    return session.scalars(
        select(Attempt).where(Attempt.step_id == row.id, Attempt.number == row.attempts)
    ).one_or_none()


def _fail_running_attempt(session: Session, row: StepRun, error: str, now: datetime) -> None:
    """Close a step's latest attempt as failed with `error`, if it is still running."""
    attempt = _current_attempt(session, row)
    if attempt is not None and attempt.status == P.RUNNING:
        attempt.status = P.FAILED
        attempt.error = error
        attempt.finished_at = now


def _end_waiting_step(run: Run, step: str, status: str, now: datetime, *, result: Any = None,
                      error: str | None = None, reason: str | None = None) -> StepRun | None:
    """Set a locked run's waiting node to `status`; None if it is not waiting."""
    row = _node_row(run, step)
    if row is None or row.status != P.WAITING:
        return None
    row.status = status
    row.result = result
    row.error = error
    row.reason = reason
    row.finished_at = now
    return row


def _timer_outcome(wait: Any, now: datetime) -> tuple[str, dict[str, Any]]:
    """How a node ends when its timer fires: a sleep succeeds; a wait or an approval times
    out, failing or (`on_timeout="skip"`) skipped."""
    if wait.kind == W.SLEEP:
        return P.SUCCEEDED, {"result": {"slept_until": _aware(wait.due_at).isoformat(), "woke_at": now.isoformat()}}
    why = WT.timed_out(wait)
    if (wait.spec or {}).get("on_timeout") == "skip":
        return P.SKIPPED, {"reason": why}
    return P.FAILED, {"error": why}


def _aware(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; they were written in UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)



def _key_of(limit: Concurrency | None, data: Any, owner: str) -> str | None:
    """A concurrency key of a run's input; a key function that raises is bad input."""
    if limit is None:
        return None
    try:
        return limit.key_for(data)
    except Exception as exc:  # noqa: BLE001 - user code
        raise InvalidInput(
            f"{owner}: cannot compute the concurrency key: {type(exc).__name__}: {exc}"
        ) from None


def _composition_error(step: Any, exc: BaseException) -> str:
    """The error of a map whose `over`, or a call whose `input`, failed as it started."""
    if isinstance(exc, M.MapOverError):
        return str(exc)
    if step.kind == M.CALL:
        if isinstance(exc, (InvalidInput, WorkflowNotFound)):
            return f"call {step.name!r}: {exc}"
        return f"call {step.name!r}: input raised {type(exc).__name__}: {exc}"
    if isinstance(exc, InvalidInput):
        return f"map {step.name!r}: {exc}"
    return f"map {step.name!r}: over raised {type(exc).__name__}: {exc}"


def _child_error(child: Run) -> str:
    """A call node's error when its child run failed: the child's error and its first
    failed step's."""
    ended = "was cancelled" if child.status == P.RUN_CANCELLED else "failed"
    error = f"child run {child.id} of workflow {child.workflow!r} {ended}"
    if child.error:
        error += f": {child.error}"
    detail = next((s.error for s in child.steps if s.status == P.FAILED and s.error), None)
    if detail and detail not in error:
        error += f": {detail}"
    return error
