"""Debounce and batch windows of Kafka triggers: the DSL objects and the pure arithmetic.

`Debounce(key, period, max_wait)`: the matched events of one key (the value at a dotted path
of the event, or `$key` / `$headers.<name>`) start one run once the key has been quiet for
`period`, or `max_wait` after the window's first event. `Batch(max_size, window, key)`: one run per `max_size` events, or
per `window` after the batch's first event, per key when `key` is given.

No I/O here: `orchestrator.db.windows` keeps the windows in the database, in the consumer's
transaction, and closes them (`close_due`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .errors import WorkflowDefinitionError
from .waits import seconds_of

DEBOUNCE = "debounce"
BATCH = "batch"
#: Largest `Batch(max_size=...)`: the run input holds every event's input.
MAX_BATCH_SIZE = 10_000
#: The key of a window of a trigger without one (`Batch(key=None)`).
NO_KEY = ""


@dataclass(frozen=True)
class Debounce:
    """One run per burst of events of one key; see the module docstring."""

    key: str
    period: float | str
    max_wait: float | str | None = None

    def __post_init__(self) -> None:
        where = "Debounce"
        if not isinstance(self.key, str) or not self.key:
            raise WorkflowDefinitionError(f"{where}: key={self.key!r} must be a dotted path string")
        period = seconds_of(where, "period", self.period)
        object.__setattr__(self, "period", period)
        if self.max_wait is not None:
            max_wait = seconds_of(where, "max_wait", self.max_wait)
            if max_wait < period:
                raise WorkflowDefinitionError(
                    f"{where}: max_wait={self.max_wait!r} is shorter than period={self.period!r}; "
                    "make it at least the period, or leave it out"
                )
            object.__setattr__(self, "max_wait", max_wait)

    kind = DEBOUNCE

    def describe(self) -> dict[str, Any]:
        return {"kind": DEBOUNCE, "key": self.key, "period": self.period, "max_wait": self.max_wait}


@dataclass(frozen=True)
class Batch:
    """One run per full batch or per window; see the module docstring."""

    max_size: int
    window: float | str
    key: str | None = None

    def __post_init__(self) -> None:
        where = "Batch"
        if (not isinstance(self.max_size, int) or isinstance(self.max_size, bool)
                or not 1 <= self.max_size <= MAX_BATCH_SIZE):
            raise WorkflowDefinitionError(
                f"{where}: max_size={self.max_size!r}; use an integer from 1 to {MAX_BATCH_SIZE}"
            )
        object.__setattr__(self, "window", seconds_of(where, "window", self.window))
        if self.key is not None and (not isinstance(self.key, str) or not self.key):
            raise WorkflowDefinitionError(f"{where}: key={self.key!r} must be a dotted path string or None")

    kind = BATCH

    def describe(self) -> dict[str, Any]:
        return {"kind": BATCH, "max_size": self.max_size, "window": self.window, "key": self.key}


Window = Debounce | Batch


def key_text(value: Any) -> str:
    """A window key's stored form: strings as they are, anything else as compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def first_closes_at(spec: Window, now: datetime) -> datetime:
    """When a window opened at `now` closes if nothing else happens."""
    if isinstance(spec, Batch):
        return now + timedelta(seconds=float(spec.window))
    return extended(spec, opened_at=now, now=now)


def extended(spec: Debounce, opened_at: datetime, now: datetime) -> datetime:
    """A debounce window's closing time after an event at `now`: `period` later, but never
    past `max_wait` after its first event."""
    closes = now + timedelta(seconds=float(spec.period))
    if spec.max_wait is not None:
        closes = min(closes, opened_at + timedelta(seconds=float(spec.max_wait)))
    return closes


def run_input(spec: Window, inputs: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    """The input of the run a window starts, from its events' (id, input) in id order.

    Debounce: the last event's input plus `$events`, the ids of every event absorbed.
    Batch: `{"events": [each event's input, in offset order]}`.
    """
    ordered = sorted(inputs, key=lambda pair: pair[0])
    if isinstance(spec, Batch):
        return {"events": [data for _, data in ordered]}
    data = dict(ordered[-1][1]) if ordered else {}
    data["$events"] = [event_id for event_id, _ in ordered]
    return data
