"""`Harness`: the real engine, executor and consumer path in one process, on a fake clock.

Nothing here re-implements the orchestrator. A run is started by `WorkflowEngine.start_run`;
its steps run through `executor.execute`, exactly as a Celery worker runs them (claim,
timeout, log capture, record the outcome, plan what follows); a published message goes
through `EventConsumer.handle`, the consumer loop's batch path. What differs is only where
messages wait and what time it is:

- the engine's dispatcher is a `LocalDispatcher`: messages are run in the caller's process,
  one at a time, as soon as they are due; a retry's backoff makes its message due later;
- the process clock (`orchestrator.clock`) is a `FakeClock` that moves only in `advance`.

So `start` and `publish` return once everything due now has run, and `advance("10s")` runs,
in due order, whatever the ten seconds make due (retries after their backoff, the runs that
waited for a concurrency slot after them...).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Self

from kafka.structs import TopicPartition
from sqlalchemy import select
from sqlalchemy.orm import configure_mappers

from .. import clock, waiting
from ..db.models import Event, Run
from ..db.session import session_factory
from ..dsl import Workflow
from ..engine import WorkflowEngine
from ..executor import HandBack, Heartbeats, execute
from ..intake import Message
from ..registry import Registry, load_workflows
from ..settings import Settings, parse_duration
from .database import copy_of, create_test_engine, shared_template
from .dispatcher import LocalDispatcher, Queued
from .errors import HarnessError
from .kafka import LocalConsumer
from .results import EmittedEvent, PublishOutcome, RunResult, emitted_events
from .steps import Body, Failure, StepPatch, failing

#: The `worker` recorded on every attempt the harness runs.
WORKER = "harness@local"
#: Most step attempts one call (`start`, `publish`, `advance`...) runs before it stops and
#: says so: a run that never ends (a step retried for ever with no backoff) must not hang.
MAX_ATTEMPTS_PER_CALL = 100_000

Duration = str | float | int | timedelta
#: What `workflows=` accepts: module paths (as in ORCHESTRATOR_WORKFLOWS) and `Workflow`s.
WorkflowSource = str | Workflow


def default_workflows() -> tuple[str, ...]:
    """ORCHESTRATOR_WORKFLOWS, else the settings default (`workflows`), as the workers read it."""
    raw = os.environ.get("ORCHESTRATOR_WORKFLOWS")
    return Settings.from_env({} if raw is None else {"ORCHESTRATOR_WORKFLOWS": raw}).workflows


def seconds_of(duration: Duration) -> float:
    """Seconds in "90s", "10m", "25h", "2d", a number of seconds or a timedelta."""
    if isinstance(duration, timedelta):
        seconds = duration.total_seconds()
    elif isinstance(duration, (int, float)) and not isinstance(duration, bool):
        seconds = float(duration)
    elif isinstance(duration, str):
        try:
            seconds = parse_duration(duration)
        except ValueError:
            raise HarnessError(
                f"cannot read the duration {duration!r}: say 90s, 10m, 25h, 2d or a number of seconds"
            ) from None
    else:
        raise HarnessError(f"a duration is a string like '10m', a number of seconds or a timedelta, "
                           f"not {type(duration).__name__}")
    if seconds < 0:
        raise HarnessError(f"the clock cannot go back ({duration!r})")
    return seconds


def registry_of(workflows: WorkflowSource | Iterable[WorkflowSource]) -> Registry:
    """A registry of module paths (comma-separated in one string, as the env var) and `Workflow`s."""
    items = [workflows] if isinstance(workflows, (str, Workflow)) else list(workflows)
    paths: list[str] = []
    objects: list[Workflow] = []
    for item in items:
        if isinstance(item, Workflow):
            objects.append(item)
        elif isinstance(item, str):
            paths.extend(p.strip() for p in item.split(",") if p.strip())
        else:
            raise HarnessError(f"workflows= takes module paths and Workflow objects, not {item!r}")
    registry = load_workflows(paths)
    for workflow in objects:
        registry.add(workflow)
    if not len(registry):
        raise HarnessError(f"no workflow found in {items!r}; name the modules that define them")
    return registry


class _Unwatched(Heartbeats):
    """No lease renewal: a step runs to its end in the caller's thread before the clock can
    move, so its lease cannot lapse (and no recovery loop would notice if it did)."""

    def add(self, claim: Any) -> None:
        return None

    def remove(self, claim: Any) -> None:
        return None


class Harness:
    """One isolated orchestrator: its own SQLite database, clock, workflows and messages.

    `workflows` as in `registry_of` (default: `default_workflows()`); `start`, the clock's
    first reading (default: now, to the second); any other keyword is a `Settings` field.
    The harness installs its clock as the process clock until `close()` (or the end of a
    `with` block): use one harness at a time. Pytest users get one per test from the
    `orchestrator_test` fixture.
    """

    def __init__(
        self,
        database_url: str,
        workflows: WorkflowSource | Iterable[WorkflowSource] | None = None,
        *,
        start: datetime | None = None,
        **settings: Any,
    ) -> None:
        self.clock = clock.FakeClock(start)
        self.database_url = database_url
        self._overrides = dict(settings)
        self._cleanup: Path | None = None
        configure_mappers()
        self.db = create_test_engine(database_url)
        self.sessions = session_factory(self.db)
        self.dispatcher = LocalDispatcher(self.clock)
        #: Step bodies standing in for the real ones, per run id and step name.
        self._bodies: dict[str, dict[str, Body]] = {}
        self._patches: list[StepPatch] = []
        self._offsets: dict[tuple[str, int], int] = defaultdict(int)
        self._previous_clock = clock.install(self.clock)
        try:
            self.load(workflows if workflows is not None else default_workflows())
        except BaseException:
            self.close()
            raise

    @classmethod
    def create(
        cls,
        workflows: WorkflowSource | Iterable[WorkflowSource] | None = None,
        *,
        directory: Path | None = None,
        **options: Any,
    ) -> Harness:
        """A harness on a fresh database in `directory` (default: a temporary directory,
        removed by `close`), outside pytest. The schema is migrated once per process."""
        own = directory is None
        where = Path(tempfile.mkdtemp(prefix="orchestrator-test-")) if own else Path(directory)
        template = shared_template(Path(tempfile.gettempdir()) / f"orchestrator-template-{os.getpid()}")
        harness = cls(copy_of(template, where), workflows, **options)
        harness._cleanup = where if own else None
        return harness

    # -- configuration ----------------------------------------------------------------

    def load(self, workflows: WorkflowSource | Iterable[WorkflowSource]) -> Self:
        """Serve `workflows` from now on (module paths and `Workflow` objects); the database,
        the clock and queued messages stay. Usually the first thing a test does."""
        registry = registry_of(workflows)
        try:
            settings = Settings(database_url=self.database_url, broker_url="memory://",
                                workflows=tuple(w.name for w in registry), **self._overrides)
        except TypeError as exc:
            raise HarnessError(f"{exc}; settings are the fields of orchestrator.settings.Settings") from None
        self.registry = registry
        self.settings = settings
        self.engine = WorkflowEngine(self.sessions, registry, self.dispatcher, settings)
        self.heartbeats = _Unwatched(self.engine)
        self.consumer = LocalConsumer(self.engine)
        return self

    def patch_step(self, step: str, body: Body, *, workflow: str | None = None) -> StepPatch:
        """Run `body(ctx)` instead of step `step` in the runs started from now on.

        In force until `undo()`, or the end of the `with` block when used as one; a run keeps
        the bodies it started with until it ends (its retries too). `workflow` narrows it
        to one workflow when several have a step of that name. A `fail=` of `start` for the
        same step wins over the patch (and its `None` entries run the patched body).
        """
        owners = [w.name for w in self.registry if step in w.steps and workflow in (None, w.name)]
        if not owners:
            where = f"workflow {workflow!r}" if workflow else "any loaded workflow"
            raise HarnessError(f"cannot patch step {step!r}: {where} has no step of that name")
        patch = StepPatch(self._patches, step, body, workflow)
        self._patches.append(patch)
        return patch

    # -- starting runs and publishing events --------------------------------------------

    def start(self, workflow: str, input: Mapping[str, Any] | None = None, *,
              fail: Mapping[str, Failure] | None = None) -> RunResult:
        """Start a run as `orchestrator trigger` does and run every step due now.

        `fail` makes steps of this run raise instead of running: `{"charge": RuntimeError("card
        declined")}` fails every attempt of `charge`; a list fails attempt n with item n
        (`None`: run the real body), so `[TimeoutError(), None]` fails once, then succeeds.
        Retries then wait for their backoff: `advance` the clock to run them.
        """
        definition = self.registry.get(workflow)
        overrides = self._overrides_for(definition, fail)
        run_id = self.engine.start_run(workflow, dict(input) if input is not None else None)
        if overrides:
            self._bodies[run_id] = overrides
        self.run_due()
        return RunResult(self.sessions, run_id, workflow)

    def publish(
        self,
        topic: str,
        event: Any,
        *,
        key: str | bytes | None = None,
        headers: Mapping[str, str | bytes] | Sequence[tuple[str, bytes]] | None = None,
        partition: int = 0,
        offset: int | None = None,
        fail: Mapping[str, Failure] | None = None,
    ) -> PublishOutcome:
        """Deliver one message on `topic` to the consumer and run every step due now.

        `event` is JSON-encoded unless it is already bytes or text (to test malformed
        messages; None is a tombstone). Each message gets the next offset of its topic and
        partition, unless `offset` repeats an earlier one (a redelivery). `fail` as for
        `start`, for every run the event starts.
        """
        if topic not in self.consumer.index.topics:
            topics = ", ".join(self.consumer.index.topics) or "none"
            raise HarnessError(f"no loaded workflow has a trigger or a wait_for_event node on topic "
                               f"{topic!r}, so the consumer would not read it (topics it reads: {topics})")
        if offset is None:
            offset = self._offsets[(topic, partition)]
        self._offsets[(topic, partition)] = max(self._offsets[(topic, partition)], offset + 1)
        message = Message(topic, partition, offset, _encode(event), key=_bytes(key),
                          headers=_headers(headers),
                          timestamp_ms=int(self.clock.current.timestamp() * 1000))
        self.consumer.kafka_consumer.partitions.add(_partition(topic, partition))
        copies = len(self.consumer.producer.sent)
        batch = self.consumer.handle([message])
        if batch is None:
            raise HarnessError(f"the consumer could not record the message on {topic!r} (the "
                               "database refused it); see the log above")
        with self.sessions() as session:
            recorded = session.execute(
                select(Event.id, Event.outcome, Event.reason)
                .where(Event.topic == topic, Event.partition == partition, Event.offset == offset)
            ).one()
            names = dict(session.execute(select(Run.id, Run.workflow)
                                         .where(Run.id.in_([_uuid(r) for r in batch.run_ids]))).all())
        runs = [RunResult(self.sessions, rid, names[_uuid(rid)]) for rid in batch.run_ids]
        for run in runs:
            overrides = self._overrides_for(self.registry.get(run.workflow), fail)
            if overrides:
                self._bodies[run.id] = overrides
        self.run_due()
        return PublishOutcome(topic, partition, offset, recorded.outcome, recorded.reason, recorded.id,
                              runs, redelivered=batch.duplicates > 0,
                              dead_letters=self.consumer.producer.sent[copies:])

    # -- time ---------------------------------------------------------------------------

    @property
    def now(self) -> datetime:
        """What time it is for the engine."""
        return self.clock.current

    def advance(self, duration: Duration) -> int:
        """Move the clock forward by `duration` ("25h", "90s", "10m", "2d", seconds, a
        timedelta), running in due order every message that falls due on the way, each at
        its due time. Returns how many step messages ran."""
        # From the last moment the engine was told (a few microseconds past `current` when
        # it asked several times in one instant): a 2 h sleep opened "now" ends in `advance("2h")`.
        start = max(self.clock.current, self.clock._last or self.clock.current)
        target = start + timedelta(seconds=seconds_of(duration))
        ran = self._run_until(target)
        self.clock.move_to(target)
        return ran

    def run_due(self) -> int:
        """Run every message due now (and what those make due now); returns how many ran."""
        return self._run_until(self.clock.current)

    @property
    def queued(self) -> list[Queued]:
        """Messages waiting for their due time (retries in backoff), earliest first."""
        return self.dispatcher.pending

    # -- operator actions and inspection --------------------------------------------------

    def cancel(self, run: RunResult | str) -> bool:
        """`orchestrator cancel`: cancel a live run; False if it had finished."""
        done = self.engine.cancel_run(_id(run))
        self.run_due()
        return done

    def approve(self, run: RunResult | str, step: str, *, reject: bool = False,
                comment: str | None = None, by: str | None = "harness") -> dict[str, Any]:
        """`orchestrator approve`: decide an approval node that is waiting (raises
        `NotWaiting` when it is not); runs what the decision makes due."""
        outcome = self.engine.decide(_id(run), step, "reject" if reject else "approve", comment, by)
        self.run_due()
        return outcome

    def retry(self, run: RunResult | str) -> bool:
        """`orchestrator retry`: re-run a finished run's failed steps (with the bodies it
        started with); False if there is nothing to retry."""
        done = self.engine.retry_run(_id(run))
        self.run_due()
        return done

    def run(self, run_id: str) -> RunResult:
        """The run with id `run_id`."""
        with self.sessions() as session:
            workflow = session.scalar(select(Run.workflow).where(Run.id == _uuid(run_id)))
        if workflow is None:
            raise HarnessError(f"no run {run_id}")
        return RunResult(self.sessions, str(run_id), workflow)

    @property
    def emitted(self) -> list[EmittedEvent]:
        """Every event steps emitted with `ctx.emit` (succeeded attempts' only), in the
        order they were written: what the relay would publish."""
        with self.sessions() as session:
            return emitted_events(session)

    def runs(self, workflow: str | None = None) -> list[RunResult]:
        """Every run (of `workflow`, if given), oldest first."""
        query = select(Run.id, Run.workflow).order_by(Run.created_at)
        if workflow is not None:
            query = query.where(Run.workflow == workflow)
        with self.sessions() as session:
            rows = session.execute(query).all()
        return [RunResult(self.sessions, str(rid), name) for rid, name in rows]

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Put the previous process clock back and release the database."""
        if clock.current() is self.clock:
            clock.install(self._previous_clock)
        if hasattr(self, "engine"):
            self.engine.hot_path.dispose()
        self.db.dispose()
        if self._cleanup is not None:
            shutil.rmtree(self._cleanup, ignore_errors=True)
            self._cleanup = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- running messages -------------------------------------------------------------------

    def _run_until(self, until: datetime) -> int:
        """Run due messages and fire due timers (sleeps, wait and approval timeouts) in due
        order, each at its due time, as the workers and the recovery process would."""
        ran = 0
        limit = max(until, self.clock.current)
        # A timer due "now" is due at the engine's last (nudged) moment, just past `current`.
        timers_until = max(limit, self.clock._last or limit)
        while True:
            with self.sessions() as session:
                timer = waiting.next_due(session)
            upcoming = self.dispatcher.pending
            message_due = upcoming[0].due if upcoming else None
            if timer is not None and timer <= timers_until and (message_due is None or timer < message_due):
                self.clock.move_to(max(timer, self.clock.current))
                self.engine.fire_due()
                continue
            item = self.dispatcher.pop_due(limit)
            if item is None:
                return ran
            ran += 1
            if ran > MAX_ATTEMPTS_PER_CALL:
                raise HarnessError(
                    f"ran {MAX_ATTEMPTS_PER_CALL} step messages without running out of due ones; "
                    "does a step retry forever without backoff?"
                )
            self.clock.move_to(item.due)
            self._execute(item)

    def _execute(self, item: Queued) -> None:
        """What the Celery task `run_step` does with one message."""
        message = item.dispatch
        body = self._bodies.get(message.run_id)
        try:
            execute(self.engine, self.heartbeats, message.run_id, message.step, worker=WORKER,
                    handed_back=item.handed_back, body=body.get(message.step) if body else None)
        except HandBack as back:  # no code for the step here: as the task, re-queue it later
            self.dispatcher.put(message, back.countdown, item.handed_back + 1)

    def _overrides_for(self, workflow: Workflow, fail: Mapping[str, Failure] | None) -> dict[str, Body]:
        """The bodies standing in for `workflow`'s steps in a run starting now."""
        bodies: dict[str, Body] = {}
        for patch in self._patches:
            if patch.step in workflow.steps and patch.workflow in (None, workflow.name):
                bodies[patch.step] = patch.body
        for step, failure in (fail or {}).items():
            if step not in workflow.steps:
                raise HarnessError(f"fail= names step {step!r}, which workflow {workflow.name!r} does "
                                   f"not have (its steps: {', '.join(workflow.steps)})")
            bodies[step] = failing(step, failure, bodies.get(step) or workflow.steps[step].fn)
        return bodies


def _id(run: RunResult | str) -> str:
    return run.id if isinstance(run, RunResult) else str(run)


def _uuid(run_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(run_id))
    except ValueError:
        raise HarnessError(f"no run {run_id!r}: run ids are UUIDs") from None


def _partition(topic: str, partition: int) -> TopicPartition:
    return TopicPartition(topic, partition)


def _encode(event: Any) -> bytes | None:
    if event is None or isinstance(event, bytes):
        return event
    if isinstance(event, str):
        return event.encode("utf-8", "surrogatepass")
    return json.dumps(event).encode("utf-8")


def _bytes(value: str | bytes | None) -> bytes | None:
    return value.encode("utf-8") if isinstance(value, str) else value


def _headers(headers: Mapping[str, str | bytes] | Sequence[tuple[str, bytes]] | None) -> tuple[tuple[str, bytes], ...]:
    if headers is None:
        return ()
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    return tuple((k, _bytes(v) or b"") for k, v in pairs)

