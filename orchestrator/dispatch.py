"""What the engine asks the message queue to do once a transaction has committed."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Dispatch:
    """One step-attempt message: `(run_id, step)` on `queue`, after `countdown` seconds."""

    run_id: str
    step: str
    queue: str
    timeout: float | None = None
    countdown: float | None = None
    task_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    #: The run's W3C `traceparent` (tracing on), sent as the message's `traceparent` header.
    traceparent: str | None = None


class Dispatcher(Protocol):
    """Sends step messages and revokes them. The Celery implementation is in `celery_app`."""

    def send(self, dispatches: Iterable[Dispatch]) -> None: ...

    def revoke(self, task_ids: Iterable[str], terminate: bool = False) -> None: ...


class RecordingDispatcher:
    """Keeps messages in a list; for unit tests of the engine and for dry runs."""

    def __init__(self) -> None:
        self.sent: list[Dispatch] = []
        self.revoked: list[str] = []

    def send(self, dispatches: Iterable[Dispatch]) -> None:
        self.sent.extend(dispatches)

    def revoke(self, task_ids: Iterable[str], terminate: bool = False) -> None:
        self.revoked.extend(task_ids)
