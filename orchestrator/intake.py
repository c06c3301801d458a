"""Intake: what becomes of one Kafka message. Pure logic, no I/O, unit-tested.

A message is first decoded: its value, key and headers together must be at most `max_bytes`
long (see `check_size`), and its value must be readable in the format of at least one
trigger on its topic (`orchestrator.formats`: a JSON object by default; with only
`wait_for_event` nodes on the topic, JSON). Then every loaded workflow with a trigger on the
message's topic gets one `Decision` (one per (event, workflow) pair, so a workflow with two
triggers on a topic still starts at most one run; its first trigger that matches decides the
input and dedupe key; a trigger whose format cannot read the message does not match):

- `matched`: the trigger matched and the mapped input satisfies the workflow's
  `input_schema`; a run will be started (unless its dedupe value already started one);
- `ignored`: no trigger of the workflow matched;
- `rejected`: a `match` or `input` function raised, a path read a key or header that is not
  UTF-8 (`$key`, `$headers.<name>`), or the input fails the schema.

The event's own outcome rolls these up: `rejected` if decoding failed or any workflow
rejected it (the reason names each), else `matched` if any workflow matched, else
`ignored`. A rejected event still starts the runs of the workflows that matched it cleanly;
replaying it later (after a fix) starts only the missing ones.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .dsl import Workflow
from .engine import validate_input
from .errors import OrchestratorError
from .formats import JSON, Readings
from .formats import MAX_NESTING as MAX_NESTING
from .formats import DuplicateKey as DuplicateKey
from .formats import Rejected as Rejected
from .formats import check_storable as _check_storable
from .formats import decode as decode
from .formats import unique_keys as unique_keys
from .triggers import Envelope, KafkaTrigger, Unreadable

MATCHED = "matched"
IGNORED = "ignored"
REJECTED = "rejected"
OUTCOMES = (MATCHED, IGNORED, REJECTED)

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

    @property
    def position(self) -> tuple[str, int, int]:
        """(topic, partition, offset): where the message is in Kafka, one event's identity."""
        return (self.topic, self.partition, self.offset)

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


_JSON_ONLY = (JSON,)


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
        self._formats = {
            topic: tuple(sorted({t.format for _, triggers in pairs for t in triggers},
                                key=lambda f: (f != JSON, f)))
            for topic, pairs in self._by_topic.items()
        }

    @property
    def topics(self) -> list[str]:
        """Every topic a trigger or a `wait_for_event` node names (what the consumer reads)."""
        return sorted(set(self._by_topic) | self._wait_topics)

    def for_topic(self, topic: str) -> list[tuple[Workflow, list[KafkaTrigger]]]:
        return self._by_topic.get(topic, [])

    def formats(self, topic: str) -> tuple[str, ...]:
        """The formats the triggers on `topic` read, JSON first (the stored payload is JSON);
        JSON alone for a topic of `wait_for_event` nodes only."""
        return self._formats.get(topic, _JSON_ONLY)

    def __bool__(self) -> bool:
        return bool(self._by_topic or self._wait_topics)


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


def decide(workflow: Workflow, triggers: list[KafkaTrigger],
           payload: dict[str, Any] | Readings, key: bytes | None = None,
           headers: tuple[tuple[str, bytes], ...] = ()) -> Decision:
    """One workflow's decision about one event (see the module docstring): `payload` is a
    decoded JSON event, or the message's `Readings` in each trigger's format."""
    for trigger in triggers:
        if isinstance(payload, Readings):
            try:
                body = payload.event(trigger.format)
            except Rejected:
                continue  # another format of the topic reads the message (see `assess`)
        else:
            body = payload
        # User code may mutate what it is given: it gets a copy, so every workflow (and the
        # stored payload) sees the event as it was sent. A `match` dict only reads. Paths
        # that read the key or headers get them in an `Envelope`.
        wrap = trigger.reads_message
        event = copy.deepcopy(body) if callable(trigger.match) else body
        try:
            matched = trigger.matches(Envelope(event, key, headers) if wrap else event)
        except Unreadable as exc:
            return Decision(workflow.name, REJECTED, reason=f"match: {exc}")
        except Exception as exc:  # noqa: BLE001 - user code
            return Decision(workflow.name, REJECTED, reason=_user_error("match function", exc))
        if not matched:
            continue
        if trigger.input is not None and event is body:
            event = copy.deepcopy(body)
        try:
            data = trigger.run_input(Envelope(event, key, headers) if wrap else event)
        except Unreadable as exc:
            return Decision(workflow.name, REJECTED, reason=f"input: {exc}")
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
        reading = Envelope(body, key, headers) if wrap else body
        try:
            dedupe = dedupe_key(trigger.dedupe_value(reading))
        except Unreadable as exc:
            return Decision(workflow.name, REJECTED, reason=f"dedupe: {exc}")
        try:
            window_key = trigger.window_key(reading) if trigger.window is not None else None
        except Unreadable as exc:
            return Decision(workflow.name, REJECTED, reason=f"{trigger.window.kind} key: {exc}")
        if trigger.window is not None:
            if window_key is None:
                return Decision(workflow.name, REJECTED, reason=(
                    f"the {trigger.window.kind} key {trigger.window.key!r} is missing from the event "
                    "(or null)"))
            return Decision(workflow.name, MATCHED, input=data, dedupe_key=dedupe,
                            window=trigger.window, window_key=dedupe_key(window_key))
        return Decision(workflow.name, MATCHED, input=data, dedupe_key=dedupe)
    return Decision(workflow.name, IGNORED)


#: Per workflow, seconds spent deciding and events decided (see `assess`).
Timings = dict[str, tuple[float, int]]


def assess_payload(
    message: Message, payload: dict[str, Any] | Readings, index: TriggerIndex,
    timings: Timings | None = None,
) -> Assessment:
    """Evaluate every workflow with a trigger on the message's topic; `payload` is its JSON
    event (every trigger reads it), or its `Readings` (each trigger reads its format)."""
    stored = payload.payload() if isinstance(payload, Readings) else payload
    if stored is not None and index.formats(message.topic) == _JSON_ONLY:
        payload = stored  # every trigger reads the JSON object: no per-trigger lookup
    decisions = []
    key, headers = message.key, message.headers
    for workflow, triggers in index.for_topic(message.topic):
        started = time.perf_counter()
        decisions.append(decide(workflow, triggers, payload, key, headers))
        if timings is not None:
            seconds, events = timings.get(workflow.name, (0.0, 0))
            timings[workflow.name] = (seconds + time.perf_counter() - started, events + 1)
    rejected = [d for d in decisions if d.outcome == REJECTED]
    if rejected:
        reason = "; ".join(f"workflow {d.workflow!r}: {d.reason}" for d in rejected)
        return Assessment(message, REJECTED, reason, stored, decisions)
    if any(d.outcome == MATCHED for d in decisions):
        return Assessment(message, MATCHED, None, stored, decisions)
    return Assessment(message, IGNORED, None, stored, decisions)


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


def read_message(message: Message, index: TriggerIndex, max_bytes: int,
                 readings: Readings | None = None) -> Readings:
    """The message's `Readings` (decoded lazily, each format once), or `Rejected` when no
    format its topic's triggers read can read it (the reason names each format's objection
    when there are several)."""
    readings = readings or Readings(message.value, message.headers, max_bytes)
    formats = index.formats(message.topic)
    reasons = []
    for fmt in formats:
        try:
            readings.event(fmt)
            return readings
        except Rejected as exc:
            reasons.append((fmt, str(exc)))
    if len(reasons) == 1:
        raise Rejected(reasons[0][1])
    raise Rejected("no trigger's format reads it: " + "; ".join(f"{f}: {r}" for f, r in reasons))


def assess(
    message: Message, index: TriggerIndex, max_bytes: int, timings: Timings | None = None,
    readings: Readings | None = None,
) -> Assessment:
    """Decode a message and evaluate the triggers on its topic; never raises for bad input.

    `timings`, when given, accumulates the time each workflow's triggers took (user code
    runs on the consumer's loop, so the consumer watches it). `readings` may be given
    seeded with decodings known already (a replay's stored payload).
    """
    try:
        check_size(message, max_bytes)
        readings = read_message(message, index, max_bytes, readings)
    except Rejected as exc:
        return Assessment(message, REJECTED, str(exc))
    return assess_payload(message, readings, index, timings)


# -- text for storage -----------------------------------------------------------------


def text_of(raw: bytes | None) -> str | None:
    """Bytes as text for storage: UTF-8 where valid, escapes elsewhere, never NUL."""
    if raw is None:
        return None
    return raw.decode("utf-8", errors="backslashreplace").replace("\x00", "\\x00")


def headers_json(headers: Iterable[tuple[str, bytes]]) -> list[dict[str, str | None]]:
    """Message headers as stored with the event: `[{"key": ..., "value": ...}]`, plus
    `"base64"` (the exact bytes) for a value that is not UTF-8 text without NUL, so a replay
    sees the headers as they arrived (see `headers_of`)."""
    stored: list[dict[str, str | None]] = []
    for k, v in headers:
        item = {"key": (text_of(k.encode("utf-8", "surrogateescape")) if isinstance(k, str) else text_of(k)),
                "value": text_of(v)}
        if v and not exact_text(v):
            item["base64"] = base64.b64encode(v).decode("ascii")
        stored.append(item)
    return stored


def headers_of(stored: Iterable[dict[str, Any]] | None) -> tuple[tuple[str, bytes], ...]:
    """The message headers an event's stored `headers` describe (the inverse of `headers_json`)."""
    headers = []
    for item in stored or ():
        if not isinstance(item, dict):
            continue
        data = base64.b64decode(item["base64"]) if item.get("base64") else (item.get("value") or "").encode()
        headers.append((str(item.get("key") or ""), data))
    return tuple(headers)


def exact_text(data: bytes) -> bool:
    """True when `text_of` keeps `data` as it is (UTF-8 without NUL)."""
    if b"\x00" in data:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
