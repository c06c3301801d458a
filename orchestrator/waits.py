"""Nodes that wait: for a Kafka event (`wait_for_event`), for a person (`approval`), or
for time (`sleep`). Pure: the specs, their checks, and the values a wait is indexed by.

A waiting node holds no worker and no process. When its parents are done the engine
writes one `waits` row (status `open`) and sets the step `waiting`; what ends it:

* an event: the Kafka intake looks the wait up by (topic, correlation paths, hash of the
  expected values), one indexed lookup per distinct set of paths on the event's topic,
  in the transaction that records the event (`orchestrator.waiting.match_events`);
* a decision: `POST /api/runs/<id>/steps/<name>/approve`, `orchestrator approve`;
* its timer (`due_at`): fired by the recovery process (`orchestrator.waiting.fire_due`).

Durations are seconds or spans: `30s`, `15m`, `24h`, `3d`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .errors import WorkflowDefinitionError

# Node kinds (`Step.kind`).
TASK = "task"
EVENT = "event"
APPROVAL = "approval"
SLEEP = "sleep"
KINDS = (TASK, EVENT, APPROVAL, SLEEP)

# `waits.status`.
OPEN = "open"
MATCHED = "matched"      # an event completed it
APPROVED = "approved"
REJECTED = "rejected"
FIRED = "fired"          # a sleep's timer
TIMED_OUT = "timed_out"  # a wait's or an approval's timer
CLOSED = "closed"        # the run was cancelled or failed elsewhere
WAIT_STATUSES = (OPEN, MATCHED, APPROVED, REJECTED, FIRED, TIMED_OUT, CLOSED)

ON_TIMEOUT = ("fail", "skip")

#: Longest wait, sleep or lookback (a run can wait a month, and then some).
MAX_WAIT_SECONDS = 366 * 24 * 3600
#: The decisions a person can take on an approval.
DECISIONS = ("approve", "reject")
#: Longest comment (or name of who decided) an approval's decision stores.
MAX_COMMENT_CHARS = 2000
#: Recorded events a lookback reads at most (oldest first within its window).
LOOKBACK_SCAN_LIMIT = 20_000

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def seconds_of(node: str, option: str, value: Any, *, allow_zero: bool = False) -> float:
    """`value` (a number of seconds or a span like `24h`) as seconds, or a definition error
    naming the node."""
    seconds: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        unit = text[-1:] if text[-1:] in _UNITS else ""
        number = text[: len(text) - len(unit)] if unit else text
        try:
            seconds = float(number) * _UNITS.get(unit, 1.0)
        except ValueError:
            seconds = None
    if (
        seconds is None
        or not math.isfinite(seconds)
        or seconds < 0
        or (seconds == 0 and not allow_zero)
        or seconds > MAX_WAIT_SECONDS
    ):
        raise WorkflowDefinitionError(
            f"{node}: {option}={value!r}; use seconds or a span like '30s', '15m', '24h', '3d', "
            f"{'at least 0' if allow_zero else 'greater than 0'} and at most 366 days"
        )
    return seconds


@dataclass(frozen=True)
class EventWait:
    """`flow.wait_for_event(...)`: complete with the first matching event on `topic`."""

    topic: str
    match: Mapping[str, Any]
    #: Event dotted path -> the value it must have, a constant or a function of ctx.
    correlate: Mapping[str, Any]
    timeout: float | None = None
    on_timeout: str = "fail"
    lookback: float | None = None

    kind = EVENT

    @property
    def paths(self) -> str:
        return paths_key(self.correlate)

    def describe(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "match": dict(self.match),
            "correlate": sorted(self.correlate),
            "timeout": self.timeout,
            "on_timeout": self.on_timeout,
            "lookback": self.lookback,
        }


@dataclass(frozen=True)
class ApprovalWait:
    """`flow.approval(...)`: complete when a person approves (or fail when they reject)."""

    timeout: float | None = None
    on_timeout: str = "fail"

    kind = APPROVAL

    def describe(self) -> dict[str, Any]:
        return {"timeout": self.timeout, "on_timeout": self.on_timeout}


@dataclass(frozen=True)
class SleepWait:
    """`flow.sleep(...)`: complete `duration` seconds after it opens, or at `until(ctx)`."""

    duration: float | None = None
    until: Callable[[Any], datetime] | None = None

    kind = SLEEP

    def describe(self) -> dict[str, Any]:
        return {"duration": self.duration, "until": None if self.until is None else "<function>"}


WaitSpec = EventWait | ApprovalWait | SleepWait

_TOPIC_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def span(seconds: float) -> str:
    """Seconds as people write them in a definition: `24h`, `3d`, `90s`."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def check_topic(node: str, topic: Any) -> str:
    if (
        not isinstance(topic, str)
        or not 1 <= len(topic) <= 249
        or not set(topic) <= _TOPIC_CHARS
        or topic in (".", "..")
    ):
        raise WorkflowDefinitionError(
            f"{node}: topic={topic!r} is not a Kafka topic name; use 1-249 letters, digits, "
            "'.', '_' or '-'"
        )
    return topic


def check_on_timeout(node: str, value: Any) -> str:
    if value not in ON_TIMEOUT:
        raise WorkflowDefinitionError(
            f"{node}: on_timeout={value!r}; use 'fail' (the node fails) or 'skip' "
            "(the node and what only it leads to are skipped)"
        )
    return value


def check_correlate(node: str, correlate: Any) -> dict[str, Any]:
    if correlate is None:
        return {}
    if not isinstance(correlate, Mapping):
        raise WorkflowDefinitionError(
            f"{node}: correlate={correlate!r}; use a mapping of event dotted paths to values "
            "or functions of ctx, e.g. {'order.id': lambda ctx: ctx.input['order_id']}"
        )
    checked: dict[str, Any] = {}
    for path, value in correlate.items():
        if not isinstance(path, str) or not path or path.startswith(".") or path.endswith("."):
            raise WorkflowDefinitionError(
                f"{node}: correlate key {path!r} must be a dotted path into the event"
            )
        if not callable(value):
            try:
                canonical(node, path, value)  # a constant must be a JSON value now
            except ValueError as exc:
                raise WorkflowDefinitionError(str(exc)) from None
        checked[path] = value
    return checked


def check_match(node: str, match: Any) -> dict[str, Any]:
    """A wait's `match`: a dict with kafka_trigger's operators (stored with the wait, so the
    intake matches it without the workflow's code)."""
    from .triggers import _check_match

    if match is None:
        return {}
    if not isinstance(match, Mapping):
        raise WorkflowDefinitionError(
            f"{node}: match must be a dict of dotted paths to values or conditions "
            "(the operators of kafka_trigger); a wait's match is stored with it, so not a function"
        )
    try:
        _check_match("", match)
    except WorkflowDefinitionError as exc:
        detail = str(exc).removeprefix("kafka_trigger(''): ")
        raise WorkflowDefinitionError(f"{node}: {detail}") from None
    try:
        json.dumps(match)
    except (TypeError, ValueError):
        raise WorkflowDefinitionError(f"{node}: match={match!r} must hold JSON values only") from None
    return dict(match)


def paths_key(correlate: Mapping[str, Any]) -> str:
    """The set of correlation paths as one string ("" for none): part of the index key."""
    return "\x1f".join(sorted(correlate))


def canonical(node: str, path: str, value: Any) -> Any:
    """A correlation value in the form both sides compare: JSON, integral floats as ints."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if value is None or isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{node}: the correlation value for {path!r} is {value!r}; it must be a "
                         "JSON value other than null")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        raise ValueError(
            f"{node}: the correlation value for {path!r} is a {type(value).__name__}, not a JSON value"
        ) from None
    return value


def correlation_hash(values: list[Any]) -> str:
    """The indexed form of the expected values, in path order (sha256 hex, 64 chars)."""
    text = json.dumps(values, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def event_correlation(payload: Any, paths: str) -> str | None:
    """The correlation hash an event has for a set of paths, or None if it lacks one."""
    from .triggers import _MISSING, lookup

    values: list[Any] = []
    for path in paths.split("\x1f") if paths else ():
        value = lookup(payload, path)
        if value is _MISSING:
            return None
        try:
            values.append(canonical("event", path, value))  # as the opener canonicalised its own
        except ValueError:
            return None
    return correlation_hash(values)


def lock_name(topic: str, paths: str, correlation: str) -> str:
    """The advisory lock that orders a wait's opening (and lookback) with the recording of
    an event that could complete it: whichever commits second sees the other."""
    return f"{topic}\x1f{paths}\x1f{correlation}"
