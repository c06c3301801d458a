"""Intake: what becomes of one Kafka message. Pure logic, no I/O, unit-tested.

A message is first decoded: its value, key and headers together must be at most `max_bytes`
long (see `check_size`), and its value UTF-8 JSON and a JSON object. Then every loaded workflow with a trigger on the message's topic gets one
`Decision` (one per (event, workflow) pair, so a workflow with two triggers on a topic still
starts at most one run; its first trigger that matches decides the input and dedupe key):

- `matched`: the trigger matched and the mapped input satisfies the workflow's
  `input_schema`; a run will be started (unless its dedupe value already started one);
- `ignored`: no trigger of the workflow matched;
- `rejected`: a `match` or `input` function raised, or the input fails the schema.

The event's own outcome rolls these up: `rejected` if decoding failed or any workflow
rejected it (the reason names each), else `matched` if any workflow matched, else
`ignored`. A rejected event still starts the runs of the workflows that matched it cleanly;
replaying it later (after a fix) starts only the missing ones.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .dsl import Workflow
from .engine import validate_input
from .errors import OrchestratorError
from .triggers import KafkaTrigger

MATCHED = "matched"
IGNORED = "ignored"
REJECTED = "rejected"
OUTCOMES = (MATCHED, IGNORED, REJECTED)

#: Deepest nesting of objects and arrays accepted in an event or a run input.
MAX_NESTING = 100
#: Longest dedupe value stored as is; longer ones are stored as their SHA-256.
MAX_DEDUPE_CHARS = 200
#: Longest reason kept for one workflow's rejection (user exceptions can be huge).
MAX_REASON_CHARS = 1000


@dataclass(frozen=True)
class Message:
    """A Kafka message, independent of the client library that fetched it."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp_ms: int | None = None

    @classmethod
    def from_record(cls, record: Any) -> Message:
        """From a kafka-python `ConsumerRecord`."""
        timestamp = getattr(record, "timestamp", None)
        return cls(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            value=record.value,
            key=record.key,
            headers=tuple((k, v if v is not None else b"") for k, v in (record.headers or ())),
            timestamp_ms=timestamp if timestamp is not None and timestamp >= 0 else None,
        )


@dataclass(frozen=True)
class Decision:
    """What one workflow makes of one event."""

    workflow: str
    outcome: str
    input: dict[str, Any] | None = None
    dedupe_key: str | None = None
    reason: str | None = None
    #: The matching trigger's `Debounce` or `Batch`: the event joins a window (its key is
    #: `window_key`) instead of starting a run (see `orchestrator.windows`).
    window: Any = None
    window_key: str | None = None


@dataclass
class Assessment:
    """What becomes of one event: its outcome, its decoded payload and its decisions."""

    message: Message
    outcome: str
    reason: str | None = None
    payload: dict[str, Any] | None = None
    decisions: list[Decision] = field(default_factory=list)
    #: Set when the message is already recorded as this event (a redelivery): its triggers
    #: were not evaluated again, `outcome` and `reason` are the recorded ones, and nothing
    #: more is written for it.
    event_id: int | None = None
    #: Its `event.intake` span while the consumer handles it (tracing on), else None.
    trace: Any = None

    @property
    def to_start(self) -> list[Decision]:
        """The decisions that start a run (of their own: not those joining a window)."""
        return [d for d in self.decisions if d.outcome == MATCHED and d.window is None]

    @property
    def to_window(self) -> list[Decision]:
        """The decisions that add the event to a debounce or batch window."""
        return [d for d in self.decisions if d.outcome == MATCHED and d.window is not None]


class Rejected(OrchestratorError):
    """A message that cannot be an event; the message is the reason recorded with it."""


# -- the triggers a consumer serves ------------------------------------------------------


class TriggerIndex:
    """For each topic, the workflows with a trigger on it and those triggers, in order."""

    def __init__(self, workflows: Iterable[Workflow]) -> None:
        self._by_topic: dict[str, list[tuple[Workflow, list[KafkaTrigger]]]] = {}
        self._wait_topics: set[str] = set()
        for workflow in workflows:
            per_topic: dict[str, list[KafkaTrigger]] = {}
            for trigger in workflow.triggers:
                if isinstance(trigger, KafkaTrigger):
                    per_topic.setdefault(trigger.topic, []).append(trigger)
            for topic, triggers in per_topic.items():
                self._by_topic.setdefault(topic, []).append((workflow, triggers))
            self._wait_topics.update(workflow.wait_topics)

    @property
    def topics(self) -> list[str]:
        """Every topic a trigger or a `wait_for_event` node names (what the consumer reads)."""
        return sorted(set(self._by_topic) | self._wait_topics)

    def for_topic(self, topic: str) -> list[tuple[Workflow, list[KafkaTrigger]]]:
        return self._by_topic.get(topic, [])

    def __bool__(self) -> bool:
        return bool(self._by_topic or self._wait_topics)


# -- decoding --------------------------------------------------------------------------


def decode(value: bytes | None, max_bytes: int) -> dict[str, Any]:
    """The JSON object in a message value, or `Rejected` saying why there is none."""
    if value is None:
        raise Rejected("message has no value (a tombstone); expected a JSON object")
    if len(value) > max_bytes:
        raise Rejected(
            f"event is {len(value)} bytes, over the limit of {max_bytes} bytes "
            "(ORCHESTRATOR_MAX_EVENT_BYTES)"
        )
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejected(f"not JSON: invalid UTF-8 at byte {exc.start}") from None
    try:
        payload = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float,
                             object_pairs_hook=unique_keys)
    except json.JSONDecodeError as exc:
        raise Rejected(
            f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except DuplicateKey as exc:
        raise Rejected(f"ambiguous JSON: {exc}") from None
    except ValueError as exc:  # NaN / Infinity
        raise Rejected(f"not JSON: {exc}") from None
    except RecursionError:
        raise Rejected(f"not JSON this orchestrator accepts: nested deeper than {MAX_NESTING} levels") from None
    if not isinstance(payload, dict):
        raise Rejected(f"event is a JSON {_json_type(payload)}, expected a JSON object")
    _check_storable(payload, "event", check_text=any(e in text for e in _SUSPECT_ESCAPES))
    return payload


#: JSON escapes that may hide text PostgreSQL refuses (NUL, surrogates); only then are the
#: strings of an event looked at one by one.
_SUSPECT_ESCAPES = ("\\u0000", "\\ud", "\\uD")


class DuplicateKey(ValueError):
    """A JSON object names a key twice."""


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`object_pairs_hook` for `json.loads` that refuses an object naming a key twice.

    Parsers disagree on which of the values counts (Python and PostgreSQL keep the last,
    others the first), so a producer's validator and a trigger could see different events.
    """
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        shown = repr(key) if len(key) <= 100 else repr(key[:100]) + "..."
        raise DuplicateKey(f"an object has the key {shown} twice")
    return obj


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else type(value).__name__


def _check_storable(value: Any, what: str, check_text: bool = True) -> None:
    """Refuse what PostgreSQL's JSONB cannot hold and absurd nesting.

    JSONB refuses NUL characters and unpaired UTF-16 surrogates in strings. `check_text`
    False skips looking at strings (the JSON text showed there are none). Iterative, so
    hostile nesting cannot exhaust the stack.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth > MAX_NESTING:
                raise Rejected(f"{what} is nested deeper than {MAX_NESTING} levels")
            for key, child in item.items():
                if check_text:
                    _check_text(key, what)
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            if depth > MAX_NESTING:
                raise Rejected(f"{what} is nested deeper than {MAX_NESTING} levels")
            stack.extend((child, depth + 1) for child in item)
        elif check_text and isinstance(item, str):
            _check_text(item, what)


def _check_text(text: Any, what: str) -> None:
    if not isinstance(text, str) or text.isascii() and "\x00" not in text:
        return
    if "\x00" in text:
        raise Rejected(f"{what} holds a NUL character (\\u0000), which cannot be stored")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise Rejected(
            f"{what} holds an unpaired surrogate (\\u{ord(text[_surrogate_at(text)]):04x}), "
            "which cannot be stored"
        ) from None


def _surrogate_at(text: str) -> int:
    return next(i for i, c in enumerate(text) if 0xD800 <= ord(c) <= 0xDFFF)


# -- evaluating triggers --------------------------------------------------------------


def dedupe_key(value: str | None) -> str | None:
    """The stored form of a dedupe value: as is when short, else its SHA-256."""
    if value is None:
        return None
    if len(value) > MAX_DEDUPE_CHARS or "\x00" in value:
        return "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    return value


def describe_error(exc: BaseException, what: str = "") -> str:
    """`what` and "TypeName: detail" of an exception raised by user code, as a bounded reason."""
    try:
        detail = str(exc)
    except Exception:  # noqa: BLE001 - an exception that cannot even say what it is
        detail = "(unprintable)"
    text = f"{what}{type(exc).__name__}: {detail}"
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 1] + "…"


def _user_error(what: str, exc: BaseException) -> str:
    return describe_error(exc, f"{what} raised ")


def decide(workflow: Workflow, triggers: list[KafkaTrigger], payload: dict[str, Any]) -> Decision:
    """One workflow's decision about one decoded event (see the module docstring)."""
    for trigger in triggers:
        # User code may mutate what it is given: it gets a copy, so every workflow (and the
        # stored payload) sees the event as it was sent. A `match` dict only reads.
        event = copy.deepcopy(payload) if callable(trigger.match) else payload
        try:
            matched = trigger.matches(event)
        except Exception as exc:  # noqa: BLE001 - user code
            return Decision(workflow.name, REJECTED, reason=_user_error("match function", exc))
        if not matched:
            continue
        if trigger.input is not None and event is payload:
            event = copy.deepcopy(payload)
        try:
            data = trigger.run_input(event)
        except Exception as exc:  # noqa: BLE001 - user code
            return Decision(workflow.name, REJECTED, reason=_user_error("input function", exc))
        try:
            if trigger.input is not None and isinstance(data, dict):
                _check_storable(data, "input")
            data = validate_input(workflow, data)
        except (Rejected, OrchestratorError) as exc:
            return Decision(workflow.name, REJECTED, reason=str(exc))
        except Exception as exc:  # noqa: BLE001 - e.g. a schema check recursing too deep
            return Decision(workflow.name, REJECTED, reason=_user_error("input validation", exc))
        key = dedupe_key(trigger.dedupe_value(payload))
        if trigger.window is not None:
            window_key = trigger.window_key(payload)
            if window_key is None:
                return Decision(workflow.name, REJECTED, reason=(
                    f"the {trigger.window.kind} key {trigger.window.key!r} is missing from the event "
                    "(or null)"))
            return Decision(workflow.name, MATCHED, input=data, dedupe_key=key,
                            window=trigger.window, window_key=dedupe_key(window_key))
        return Decision(workflow.name, MATCHED, input=data, dedupe_key=key)
    return Decision(workflow.name, IGNORED)


#: Per workflow, seconds spent deciding and events decided (see `assess`).
Timings = dict[str, tuple[float, int]]


def assess_payload(
    message: Message, payload: dict[str, Any], index: TriggerIndex, timings: Timings | None = None
) -> Assessment:
    """Evaluate every workflow with a trigger on the message's topic."""
    decisions = []
    for workflow, triggers in index.for_topic(message.topic):
        started = time.perf_counter()
        decisions.append(decide(workflow, triggers, payload))
        if timings is not None:
            seconds, events = timings.get(workflow.name, (0.0, 0))
            timings[workflow.name] = (seconds + time.perf_counter() - started, events + 1)
    rejected = [d for d in decisions if d.outcome == REJECTED]
    if rejected:
        reason = "; ".join(f"workflow {d.workflow!r}: {d.reason}" for d in rejected)
        return Assessment(message, REJECTED, reason, payload, decisions)
    if any(d.outcome == MATCHED for d in decisions):
        return Assessment(message, MATCHED, None, payload, decisions)
    return Assessment(message, IGNORED, None, payload, decisions)


def check_size(message: Message, max_bytes: int) -> None:
    """Refuse a message whose value, key and headers (names and values) exceed `max_bytes`.

    Everything the message makes the orchestrator store and copy counts: the value's bytes,
    the key's bytes, and each header's name (UTF-8) and value bytes.
    """
    value = len(message.value or b"")
    key = len(message.key or b"")
    headers = sum(
        len(k.encode("utf-8", "surrogateescape") if isinstance(k, str) else k or b"") + len(v or b"")
        for k, v in message.headers
    )
    total = value + key + headers
    if total > max_bytes:
        raise Rejected(
            f"event is {total} bytes, over the limit of {max_bytes} bytes "
            f"(ORCHESTRATOR_MAX_EVENT_BYTES), counting the value ({value}), the key ({key}) "
            f"and the headers' names and values ({headers})"
        )


def assess(
    message: Message, index: TriggerIndex, max_bytes: int, timings: Timings | None = None
) -> Assessment:
    """Decode a message and evaluate the triggers on its topic; never raises for bad input.

    `timings`, when given, accumulates the time each workflow's triggers took (user code
    runs on the consumer's loop, so the consumer watches it).
    """
    try:
        check_size(message, max_bytes)
        payload = decode(message.value, max_bytes)
    except Rejected as exc:
        return Assessment(message, REJECTED, str(exc))
    return assess_payload(message, payload, index, timings)


# -- text for storage -----------------------------------------------------------------


def text_of(raw: bytes | None) -> str | None:
    """Bytes as text for storage: UTF-8 where valid, escapes elsewhere, never NUL."""
    if raw is None:
        return None
    return raw.decode("utf-8", errors="backslashreplace").replace("\x00", "\\x00")


def headers_json(headers: Iterable[tuple[str, bytes]]) -> list[dict[str, str | None]]:
    """Message headers as stored with the event: `[{"key": ..., "value": ...}]`."""
    return [
        {"key": (text_of(k.encode("utf-8", "surrogateescape")) if isinstance(k, str) else text_of(k)),
         "value": text_of(v)}
        for k, v in headers
    ]

