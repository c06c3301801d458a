"""Runs one claimed step attempt in the worker process: timeout, log capture, lease."""

from __future__ import annotations

import logging
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError

from . import logs, tracing
from .dsl import StepContext
from .engine import Claim, Inline, Outcome, WorkflowEngine, check_json
from .errors import InvalidInput, StepNotLoaded, WorkflowNotFound
from .leases import LeaseBoard, renewal_interval
from .skew import grace_expired, hand_back_pause

log = logging.getLogger("orchestrator.worker")

#: Seconds an attempt keeps trying to record its outcome while the database is unreachable.
RECORD_RETRY_WINDOW = 60.0
#: Pauses, in seconds, between those tries: first, longest.
RECORD_RETRY_PAUSE = (0.2, 2.0)


class HandBack(Exception):  # noqa: N818 - an instruction to the task, not an error
    """The worker has no code for this step: re-queue its message after `countdown` seconds
    (not a retry of the step: nothing was claimed)."""

    def __init__(self, countdown: float, reason: str) -> None:
        super().__init__(reason)
        self.countdown = countdown


class StepTimeout(Exception):
    """Raised inside a step that ran past its `timeout`."""


class _Capture(logging.Handler):
    """Collects a step's log lines so they are stored with the attempt."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not fail the step
            message = str(record.msg)
        self.lines.append(
            {
                "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
                "level": record.levelname,
                "message": printable(message[:10_000]),
            }
        )


def step_logger(claim: Claim) -> tuple[logging.Logger, _Capture]:
    """A logger private to one attempt whose lines also reach the worker's own log."""
    logger = logging.Logger(f"orchestrator.step.{claim.workflow}.{claim.step}", logging.DEBUG)
    logger.parent = logging.getLogger("orchestrator.step")
    capture = _Capture()
    logger.addHandler(capture)
    return logger, capture


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise StepTimeout in this thread after `seconds` (main thread only: SIGALRM).

    A timer this process had already armed (pytest-timeout's, when steps run in a test's
    process under `orchestrator.testing`) is armed again afterwards with what was left of
    it, so running a step never silently cancels it; it fires after the step at the latest.
    """
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def _expired(_signum: int, _frame: Any) -> None:
        raise StepTimeout(f"step timed out after {seconds:g}s")

    previous = signal.signal(signal.SIGALRM, _expired)
    outer, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    began = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer:
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - began), 0.001))


class Heartbeats:
    """Keeps the leases of the attempts this process runs.

    In a worker's pool child, attempts are registered on the worker's lease board and its
    lease keeper, another process, renews them while this process lives (see `leases`): a
    step that holds the GIL keeps its lease. Where no keeper exists (steps executed in the
    caller's process, as some tests do) a thread of this process renews them instead.
    """

    def __init__(self, engine: WorkflowEngine, board: LeaseBoard | None = None) -> None:
        self.engine = engine
        self.board = board
        self.active: dict[int, Claim] = {}
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.interval = renewal_interval(engine.settings.step_lease)

    def add(self, claim: Claim) -> None:
        if self.board is not None:
            self.board.register(claim)
            return
        with self.lock:
            self.active[claim.attempt_id] = claim
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)
                self.thread.start()

    def stopping(self) -> bool:
        """Whether this process's worker is shutting down (then no step runs inline)."""
        return self.board is not None and self.board.stopping()

    def remove(self, claim: Claim) -> None:
        if self.board is not None:
            self.board.unregister(claim)
            return
        with self.lock:
            self.active.pop(claim.attempt_id, None)

    def _loop(self) -> None:
        while True:
            threading.Event().wait(self.interval)
            with self.lock:
                claims = list(self.active.values())
            if not claims:
                continue
            try:
                self.engine.heartbeat((c.step_id, c.attempt) for c in claims)
            except Exception:  # noqa: BLE001 - the next beat retries; the lease is the backstop
                log.warning("heartbeat failed", exc_info=True)


def printable(text: str) -> str:
    """Text as stored: NUL characters and unpaired surrogates (which PostgreSQL rejects)
    shown as \\x00 and \\udXXX."""
    text = text.replace("\x00", "\\x00")
    if text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _describe(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - an exception whose __str__ raises
        text = f"<unprintable {type(exc).__name__}>"
    return printable(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def interrupts_ignored() -> bool:
    """True in a process that ignores SIGINT, as Celery's pool children do: a KeyboardInterrupt
    there was raised by the step itself, and is that attempt's failure like any exception."""
    return signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def record_outcome(engine: WorkflowEngine, claim: Claim, outcome: Outcome,
                   inline: Inline | None = None) -> Claim | None:
    """`engine.finish`, tried again while the database is unreachable (a restart, a failover).

    The attempt keeps its heartbeat meanwhile, so its lease is renewed as soon as the
    database answers and the recovery loop does not give the attempt up: its outcome is
    recorded once, instead of being lost and the step run again. Gives up (re-raises) after
    `RECORD_RETRY_WINDOW` seconds. Returns the step claimed to run next in this process
    (`inline`: see `engine.Inline`), if any.
    """
    deadline = time.monotonic() + RECORD_RETRY_WINDOW
    pause = RECORD_RETRY_PAUSE[0]
    while True:
        try:
            return engine.finish(claim, outcome, inline=inline)
        except (OperationalError, InterfaceError, DisconnectionError) as exc:
            if time.monotonic() + pause > deadline:
                raise
            if pause == RECORD_RETRY_PAUSE[0]:
                log.warning("step %s/%s: the database is unavailable (%s); trying again to record "
                            "its outcome", claim.run_id, claim.step, str(exc).splitlines()[0])
            time.sleep(pause)
            pause = min(pause * 2, RECORD_RETRY_PAUSE[1])


def execute(
    engine: WorkflowEngine,
    heartbeats: Heartbeats,
    run_id: str,
    step_name: str,
    worker: str | None = None,
    handed_back: int = 0,
    body: Callable[[StepContext], Any] | None = None,  # instead of the step's own function
    traceparent: str | None = None,  # the run's, from the step message (tracing)
    queue: str | None = None,
    task_id: str | None = None,  # the Celery task running this (inline steps need one)
) -> str:
    """Claim, run and record one attempt of a step. Returns what happened, for the task log.

    A step whose code this worker lacks is never claimed: `HandBack` asks the task to
    re-queue the message (`handed_back` counts how often that happened already), for
    another worker of a rolling deploy, until `skew.hand_back_pause` says that
    ORCHESTRATOR_VERSION_GRACE has passed: the step then fails, naming both versions.

    Given the `queue` and `task_id` of the message, a success may be followed by the next
    step of the run, claimed in the transaction that records the success (`engine.Inline`)
    and run here at once, without a message: up to `settings.inline_steps` steps in a row,
    each its own attempt (its own lease, time limit, log fields and span), then the next
    one goes by message again, so a long chain does not keep one process from other runs.
    """
    try:
        claim = engine.claim(run_id, step_name, worker)
    except StepNotLoaded as missing:
        grace = engine.settings.version_grace
        waited = engine.defer_not_loaded(run_id, step_name)
        if waited is None:
            return "skipped: not claimable (the step stopped waiting)"
        pause = hand_back_pause(handed_back, waited, grace)
        if pause is not None:
            raise HandBack(pause, str(missing)) from None
        error = grace_expired(str(missing), grace)
        log.warning("step %s/%s: %s; failing it", run_id, step_name, error)
        engine.fail_not_loaded(run_id, step_name, error)
        return f"failed: {error}"
    if claim is None:
        return "skipped: not claimable (duplicate message, finished or cancelled run)"
    budget = engine.settings.inline_steps if queue and task_id else 0
    inline = Inline(queue, worker, task_id) if budget else None
    done = _run_claimed(engine, heartbeats, claim, body, traceparent, queue, inline)
    ran = 1
    while isinstance(done, Claim):  # the next step, claimed with the success
        budget -= 1
        done = _run_claimed(engine, heartbeats, done, None, traceparent, queue,
                            inline if budget > 0 else None)
        ran += 1
    return done if ran == 1 else f"{done} ({ran} steps in a row)"


def _run_claimed(
    engine: WorkflowEngine,
    heartbeats: Heartbeats,
    claim: Claim,
    body: Callable[[StepContext], Any] | None,
    traceparent: str | None,
    queue: str | None,
    inline: Inline | None,
) -> str | Claim:
    """Run one claimed attempt in its log fields and span; the claim of the step to run
    next in this process (see `execute`), or what happened."""
    workflow = engine.claimed_definition(claim)
    step = workflow.steps[claim.node_name]
    logger, capture = step_logger(claim)
    ctx = StepContext(
        run_id=claim.run_id,
        workflow=claim.workflow,
        step=claim.step,
        input=claim.input,
        results=claim.results,
        attempt=claim.attempt,
        logger=logger,
        events=claim.events,
        item=claim.item,
        index=claim.index,
        map_errors=claim.map_errors,
        failed=claim.failed,
    )
    with logs.fields(run_id=claim.run_id, step=claim.step, attempt=claim.attempt,
                     event_id=claim.event_id):
        if not tracing.enabled:
            return _attempt(engine, heartbeats, claim, step, ctx, capture, body, inline)
        with tracing.step_span(traceparent, claim.workflow, claim.run_id, claim.step,
                               claim.attempt, queue) as span:
            done = _attempt(engine, heartbeats, claim, step, ctx, capture, body, inline)
            if isinstance(done, str) and done != "succeeded":
                tracing.failed(span, done)
            return done


def _attempt(engine: WorkflowEngine, heartbeats: Heartbeats, claim: Claim, step: Any,
             ctx: StepContext, capture: _Capture, body: Callable[[StepContext], Any] | None,
             inline: Inline | None = None) -> str | Claim:
    """Run a claimed attempt and record its outcome (see `execute`); a success recorded
    with `inline` may return the claim of the step to run next instead of "succeeded"."""
    following: Claim | None = None
    heartbeats.add(claim)
    try:
        try:
            with time_limit(step.timeout):
                # `body`: the test harness's stand-in for this one attempt (`fail=`,
                # `patch_step`); everything around it is the worker's own path.
                result = (body or step.fn)(ctx)
            check_json(result, f"result of step {claim.step!r}")
            engine.check_starts(ctx.starts)
            # The emits ride with the success only: every failure below drops them.
            emits = tracing.stamped(ctx.emits) if tracing.enabled else ctx.emits
            outcome = Outcome(ok=True, result=result, logs=capture.lines, emits=emits,
                              starts=ctx.starts)
        except (InvalidInput, WorkflowNotFound) as exc:
            outcome = Outcome(ok=False, error=str(exc), logs=capture.lines)
        except StepTimeout as exc:
            outcome = Outcome(ok=False, error=str(exc), logs=capture.lines)
        except BaseException as exc:  # noqa: BLE001 - user code may raise anything
            if isinstance(exc, KeyboardInterrupt) and not interrupts_ignored():
                raise  # Ctrl-C where steps run in-process: stop, it is not the step's failure
            try:
                tb = printable(traceback.format_exc())
            except Exception:  # noqa: BLE001
                tb = None
            outcome = Outcome(ok=False, error=_describe(exc), traceback=tb, logs=capture.lines)
        try:
            if inline is not None and (not outcome.ok or heartbeats.stopping()):
                inline = None
            following = record_outcome(engine, claim, outcome, inline)
        except (OperationalError, InterfaceError, DisconnectionError):
            raise  # the database stayed away: the task is retried, the lease settles the step
        except Exception as exc:  # noqa: BLE001 - the database refused what the attempt produced
            if not outcome.ok:
                raise
            log.warning("step %s/%s: its outcome could not be stored", claim.run_id, claim.step, exc_info=True)
            outcome = Outcome(ok=False, error=printable(
                f"the outcome of step {claim.step!r} could not be stored: {_describe(exc)[:2000]}"
            ))
            engine.finish(claim, outcome)
    finally:
        heartbeats.remove(claim)
    if following is not None:
        return following
    return "succeeded" if outcome.ok else f"failed: {outcome.error}"
