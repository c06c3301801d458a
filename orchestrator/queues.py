"""Which Celery queues the loaded workflows need, and which live workers serve them.

A step's messages wait in its queue until a worker serving that queue takes them, so a
queue nobody serves is a silent stall: runs sit `queued` for ever. `orchestrator workflows`
prints the queues a deployment must serve; the dashboard and `GET /api/queues` compare them
with what live workers answer over the broker (Celery's `inspect().active_queues()`, the
remote-control broadcast that `celery inspect` uses) and warn about any queue left unserved.

`needed_queues` and `queue_report` are pure. `ask_workers` does the I/O, bounded by a short
timeout. `QueueWatch` caches the answer for a few seconds; dashboard pages never wait for
it (they show the latest answer and a check runs in the background), `GET /api/queues`
waits at most one check.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .dsl import DEFAULT_QUEUE, Workflow

#: Seconds to wait for workers' answers: every live worker answers within it (a broadcast
#: cannot know how many there are, so a check always takes this long).
INSPECT_TIMEOUT = 1.0
#: Seconds an answer is reused before the workers are asked again.
CACHE_SECONDS = 10.0
#: Seconds a worker still counts as live after its last answer (one slow reply is no alarm).
FORGET_AFTER = 30.0


@dataclass(frozen=True)
class QueueStatus:
    """One queue the workflows need: the steps sent to it and the live workers serving it."""

    name: str
    steps: tuple[str, ...]
    workers: tuple[str, ...]

    @property
    def served(self) -> bool:
        return bool(self.workers)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "steps": list(self.steps), "workers": list(self.workers),
                "served": self.served}


@dataclass(frozen=True)
class QueueReport:
    """The needed queues and who serves them, as of `checked_at`.

    `error` says why the workers could not be asked (broker down, or a broker without
    broadcasts such as the SQLite one of `orchestrator dev`); coverage is then unknown and
    no queue is reported unserved.
    """

    checked_at: datetime
    queues: tuple[QueueStatus, ...]
    workers: tuple[str, ...] = ()
    error: str | None = None

    @property
    def unserved(self) -> tuple[QueueStatus, ...]:
        if self.error is not None:
            return ()
        return tuple(q for q in self.queues if not q.served)

    @property
    def status(self) -> str:
        """`ok`, `unserved` (some queue has no live worker) or `unknown` (could not ask)."""
        if self.error is not None:
            return "unknown"
        return "unserved" if self.unserved else "ok"

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "checked_at": self.checked_at.isoformat(),
            "error": self.error,
            "workers": list(self.workers),
            "queues": [q.as_dict() for q in self.queues],
        }


# -- pure -----------------------------------------------------------------------------------


def needed_queues(workflows: Iterable[Workflow]) -> dict[str, list[str]]:
    """Every queue the workflows' steps are sent to, with those steps (`workflow.step`)."""
    needed: dict[str, list[str]] = {}
    for workflow in workflows:
        for step in workflow.steps.values():
            if step.queue:
                queues: Iterable[str] = (step.queue,)
            elif workflow.shards:
                queues = workflow.shard_queues
            else:
                queues = (DEFAULT_QUEUE,)
            for queue in queues:
                needed.setdefault(queue, []).append(f"{workflow.name}.{step.name}")
    return dict(sorted(needed.items()))


def queue_report(
    needed: Mapping[str, list[str]],
    served: Mapping[str, Iterable[str]] | None,
    checked_at: datetime,
    error: str | None = None,
) -> QueueReport:
    """Combine the needed queues with the workers' answer (`served`: queue -> workers)."""
    served = served or {}
    workers = sorted({w for names in served.values() for w in names})
    queues = tuple(
        QueueStatus(name, tuple(steps), tuple(sorted(served.get(name, ()))))
        for name, steps in needed.items()
    )
    return QueueReport(checked_at, queues, tuple(workers), error)


def queues_of(replies: Mapping[str, Iterable[Mapping[str, Any]] | None] | None) -> dict[str, list[str]]:
    """Turn `active_queues()` replies (worker -> queue declarations) into worker -> queue names."""
    return {
        worker: [q["name"] for q in declared or () if isinstance(q, Mapping) and q.get("name")]
        for worker, declared in (replies or {}).items()
    }


def served_by(workers: Mapping[str, Iterable[str]]) -> dict[str, list[str]]:
    """Worker -> queues, turned around: queue -> the workers serving it."""
    served: dict[str, list[str]] = {}
    for worker, names in workers.items():
        for name in names:
            served.setdefault(name, []).append(worker)
    return served


# -- I/O ------------------------------------------------------------------------------------


def ask_workers(celery: Any, timeout: float = INSPECT_TIMEOUT) -> dict[str, list[str]]:
    """Live worker -> the queues it serves, from a broadcast; raises `RuntimeError` saying
    why the workers could not be asked. Never waits much longer than `timeout`."""
    with celery.connection_for_read() as connection:
        channel_class = getattr(connection.transport, "Channel", None)
        if not getattr(channel_class, "supports_fanout", True):
            raise RuntimeError(
                f"the broker ({connection.transport_cls}) cannot broadcast to workers, so which "
                "queues they serve is unknown"
            )
    answer: dict[str, Any] = {}

    def inspect() -> None:
        try:
            answer["replies"] = celery.control.inspect(timeout=timeout).active_queues()
        except Exception as exc:  # noqa: BLE001 - reported as the reason
            answer["error"] = exc

    thread = threading.Thread(target=inspect, name="inspect-queues", daemon=True)
    thread.start()
    thread.join(timeout + 2.0)  # a broker that hangs must not hang the caller
    if thread.is_alive():
        raise RuntimeError(f"the broker did not answer within {timeout + 2.0:g}s")
    if "error" in answer:
        exc = answer["error"]
        lines = str(exc).strip().splitlines()
        raise RuntimeError(f"cannot ask the workers: {lines[0] if lines else type(exc).__name__}")
    return queues_of(answer.get("replies"))


@dataclass
class QueueWatch:
    """The latest `QueueReport`, refreshed at most every `ttl` seconds.

    `ask` returns live worker -> queues (`ask_workers` bound to a Celery app). A worker
    counts as live for `forget_after` seconds after its last answer, so one slow reply (a
    busy broker, a loaded machine) does not raise a false warning; a worker that stopped
    is reported gone that much later. Only one check runs at a time.
    """

    workflows: Callable[[], Iterable[Workflow]]
    ask: Callable[[], Mapping[str, Iterable[str]]]
    ttl: float = CACHE_SECONDS
    forget_after: float = FORGET_AFTER
    clock: Callable[[], float] = time.monotonic
    _state: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _asking: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _report: QueueReport | None = field(default=None, repr=False)
    _at: float = field(default=0.0, repr=False)
    _refreshing: bool = field(default=False, repr=False)
    _seen: dict[str, tuple[tuple[str, ...], float]] = field(default_factory=dict, repr=False)

    def report(self) -> QueueReport:
        """The latest report, checked now if it is stale (waits at most one check)."""
        with self._state:
            if self._fresh():
                return self._report  # type: ignore[return-value]
        self._refresh()
        with self._state:
            return self._report  # type: ignore[return-value]

    def latest(self) -> QueueReport | None:
        """The latest report without waiting (None before the first check); when it is
        stale, a check starts in the background. For pages that must not wait on a broker."""
        with self._state:
            if not self._fresh() and not self._refreshing:
                self._refreshing = True
                threading.Thread(target=self._refresh_later, name="queue-check", daemon=True).start()
            return self._report

    def _fresh(self) -> bool:
        return self._report is not None and self.clock() - self._at < self.ttl

    def _refresh(self) -> None:
        with self._asking:
            with self._state:
                if self._fresh():  # another caller checked while this one waited
                    return
            report = self._check()
            with self._state:
                self._report, self._at = report, self.clock()

    def _refresh_later(self) -> None:
        try:
            self._refresh()
        finally:
            with self._state:
                self._refreshing = False

    def _check(self) -> QueueReport:
        needed = needed_queues(self.workflows())
        try:
            answer = self.ask()
        except Exception as exc:  # noqa: BLE001 - a check that fails says why, it never raises
            return queue_report(needed, None, datetime.now(UTC), str(exc) or type(exc).__name__)
        now = self.clock()
        for worker, names in answer.items():
            self._seen[worker] = (tuple(names), now)
        for worker in [w for w, (_, at) in self._seen.items() if now - at > self.forget_after]:
            del self._seen[worker]
        live = {worker: names for worker, (names, _) in self._seen.items()}
        return queue_report(needed, served_by(live), datetime.now(UTC))
