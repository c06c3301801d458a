"""Kafka triggers: which events start a workflow, and with what input. Pure logic.

`match` is a dict of dotted paths to conditions::

    {"type": "order.created",              # equality
     "order.total": {"gte": 100},          # gte / gt / lte / lt / ne
     "order.country": {"in": ["FR", "DE"]},
     "order.coupon": {"exists": False}}

or a function `event -> bool`. `input` maps the event to the run's input (default: the
event itself): a function of the event, or a dict `{field: path}`. `dedupe` names a dotted
path whose value allows at most one run.

`format` says how a message becomes the event the paths read (see `orchestrator.formats`):
`"json"` (the value is a JSON object), `"cloudevents"` (a CloudEvent, binary or structured
mode), `"text"` (`{"text": value}`). Whatever the format, a path may also read the message's
key, `$key`, and a header, `$headers.<name>` (its UTF-8 text; the last of that name counts).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import OrchestratorError, UnknownEventFormat, WorkflowDefinitionError
from .windows import Batch, Debounce, Window

if TYPE_CHECKING:
    from .dsl import Workflow

_MISSING = object()
_OPERATORS = frozenset({"eq", "ne", "in", "nin", "gt", "gte", "lt", "lte", "exists"})

#: How a trigger reads a message's value (see `orchestrator.formats`); the first is the default.
FORMATS = ("json", "cloudevents", "text")
#: The path of the message key; `HEADER_PREFIX` + a name is the path of a header.
KEY_PATH = "$key"
HEADER_PREFIX = "$headers."


class Unreadable(OrchestratorError):
    """A path names a key or header that is not UTF-8 text (the event is rejected)."""


@dataclass(frozen=True)
class Envelope:
    """What a trigger's paths read: the event its format decoded, and the message's key
    and headers (raw bytes: decoded only when a path asks for them)."""

    event: Any
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


def utf8(data: bytes, what: str) -> str:
    """`data` as text, or `Unreadable` naming `what` and the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Unreadable(f"{what} is not UTF-8 (invalid byte at position {exc.start})") from None


def read(envelope: Envelope, path: str) -> Any:
    """The value at `path`: `$key`, `$headers.<name>`, or a dotted path in the event; the
    `_MISSING` sentinel when absent. Raises `Unreadable` for a key or header not UTF-8."""
    if path == KEY_PATH:
        return _MISSING if envelope.key is None else utf8(envelope.key, "the message key")
    if path.startswith(HEADER_PREFIX):
        name = path[len(HEADER_PREFIX):]
        for header, value in reversed(envelope.headers):
            if header == name:
                return utf8(value or b"", f"header {name!r}")
        return _MISSING
    return lookup(envelope.event, path)


def lookup(payload: Any, path: str) -> Any:
    """Value at a dotted path (`order.items.0.sku`), or the `_MISSING` sentinel."""
    current = payload
    for part in path.split("."):
        if isinstance(current, Mapping):
            if part not in current:
                return _MISSING
            current = current[part]
        elif isinstance(current, list) and part.isdigit():
            index = int(part)
            if index >= len(current):
                return _MISSING
            current = current[index]
        else:
            return _MISSING
    return current


def _compare(op: str, actual: Any, expected: Any) -> bool:
    if op == "exists":
        return (actual is not _MISSING) == bool(expected)
    if actual is _MISSING:
        return op in ("ne", "nin")
    if op == "eq":
        return actual == expected
    if op == "ne":
        return actual != expected
    if op == "in":
        return actual in expected
    if op == "nin":
        return actual not in expected
    # Ordering: only numbers with numbers and strings with strings; anything else is no match.
    numeric = (int, float)
    if isinstance(actual, bool) or isinstance(expected, bool):
        return False
    if not (
        (isinstance(actual, numeric) and isinstance(expected, numeric))
        or (isinstance(actual, str) and isinstance(expected, str))
    ):
        return False
    if op == "gt":
        return actual > expected
    if op == "gte":
        return actual >= expected
    if op == "lt":
        return actual < expected
    return actual <= expected  # lte


def matches(conditions: Mapping[str, Any], event: Any) -> bool:
    """True when the event (or an `Envelope`) satisfies every condition of a `match` dict."""
    if isinstance(event, Envelope):
        get: Callable[[Any, str], Any] = read
    else:
        get = lookup
    for path, condition in conditions.items():
        actual = get(event, path)
        if isinstance(condition, Mapping) and condition and set(condition) <= _OPERATORS:
            if not all(_compare(op, actual, expected) for op, expected in condition.items()):
                return False
        elif actual is _MISSING or actual != condition:
            return False
    return True


def _check_path(topic: str, what: str, path: str) -> None:
    """`$key` and `$headers.<name>` are the only paths of the message around the event."""
    if path.startswith(KEY_PATH + ".") or path == HEADER_PREFIX.rstrip("."):
        raise WorkflowDefinitionError(
            f"kafka_trigger({topic!r}): {what} path {path!r}: use {KEY_PATH!r} for the message key "
            f"or '{HEADER_PREFIX}<name>' for a header"
        )
    if path == HEADER_PREFIX:
        raise WorkflowDefinitionError(f"kafka_trigger({topic!r}): {what} path {path!r} names no header")


def _check_input(topic: str, input: Any) -> None:
    if input is None or callable(input):
        return
    if not isinstance(input, Mapping) or not input:
        raise WorkflowDefinitionError(
            f"kafka_trigger({topic!r}): input must be a function of the event or a non-empty "
            "dict {field: path}"
        )
    for name, path in input.items():
        if not isinstance(name, str) or not isinstance(path, str) or not path:
            raise WorkflowDefinitionError(
                f"kafka_trigger({topic!r}): input {{{name!r}: {path!r}}} must map a field name to "
                "a path string (a dotted path, '$key' or '$headers.<name>')"
            )
        _check_path(topic, "input", path)


def _check_match(topic: str, match: Any) -> None:
    if match is None or callable(match):
        return
    if not isinstance(match, Mapping):
        raise WorkflowDefinitionError(
            f"kafka_trigger({topic!r}): match must be a dict of dotted paths or a function"
        )
    for path, condition in match.items():
        if not isinstance(path, str) or not path:
            raise WorkflowDefinitionError(
                f"kafka_trigger({topic!r}): match key {path!r} must be a dotted path string"
            )
        if isinstance(condition, Mapping) and condition and set(condition) <= _OPERATORS:
            for op, expected in condition.items():
                if op in ("in", "nin") and not isinstance(expected, (list, tuple, set, frozenset)):
                    raise WorkflowDefinitionError(
                        f"kafka_trigger({topic!r}): {path}.{op} needs a list, got {expected!r}"
                    )
        elif isinstance(condition, Mapping) and condition and set(condition) & _OPERATORS:
            unknown = sorted(set(condition) - _OPERATORS)
            raise WorkflowDefinitionError(
                f"kafka_trigger({topic!r}): unknown operator(s) {unknown} for {path!r}; "
                f"use {sorted(_OPERATORS)}"
            )


@dataclass
class KafkaTrigger:
    """Start `workflow` for each event on `topic` that matches."""

    topic: str
    match: Mapping[str, Any] | Callable[[Any], Any] | None = None
    #: A function of the event, or a dict {field: path} (missing paths leave the field out).
    input: Callable[[Any], Any] | Mapping[str, str] | None = None
    dedupe: str | None = None
    #: A `Debounce` or `Batch`: matched events wait in a window instead of starting a run each.
    window: Window | None = None
    #: How the message becomes the event: one of `FORMATS`.
    format: str = "json"
    workflow: str = field(default="", init=False)
    #: Whether a path reads the message's key or a header (then the intake hands the
    #: trigger an `Envelope`; else the event alone, which is cheaper).
    reads_message: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        paths = [*(self.match if isinstance(self.match, Mapping) else ()),
                 *(self.input.values() if isinstance(self.input, Mapping) else ()),
                 self.dedupe or "", getattr(self.window, "key", None) or ""]
        self.reads_message = any(p == KEY_PATH or p.startswith(HEADER_PREFIX) for p in paths)

    def bind(self, workflow: Workflow) -> None:
        self.workflow = workflow.name

    def matches(self, event: Any) -> bool:
        """Evaluate `match` on an event or an `Envelope` (a function gets the event alone);
        a function that raises, or `Unreadable`, propagates (the caller rejects the event)."""
        if self.match is None:
            return True
        if callable(self.match):
            return bool(self.match(_event_of(event)))
        return matches(self.match, event)

    def run_input(self, event: Any) -> Any:
        """The run's input: the event itself, `input(event)`, or the dict of `input`'s paths."""
        if self.input is None:
            return _event_of(event)
        if callable(self.input):
            return self.input(_event_of(event))
        data = {}
        for name, path in self.input.items():
            value = _read(event, path)
            if value is not _MISSING:
                data[name] = value
        return data

    def dedupe_value(self, event: Any) -> str | None:
        if self.dedupe is None:
            return None
        value = _read(event, self.dedupe)
        if value is _MISSING or value is None:
            return None
        return str(value)

    def describe(self) -> dict[str, Any]:
        """JSON description for the CLI and API."""
        if self.match is None:
            match: Any = None
        elif callable(self.match):
            match = f"<function {getattr(self.match, '__name__', 'predicate')}>"
        else:
            match = dict(self.match)
        return {
            "type": "kafka",
            "topic": self.topic,
            "match": match,
            "input": None if self.input is None else "<function>" if callable(self.input) else dict(self.input),
            "dedupe": self.dedupe,
            "format": self.format,
            "window": None if self.window is None else self.window.describe(),
        }

    def window_key(self, event: Any) -> str | None:
        """The event's window key, "" for a keyless batch; None when the key path is missing."""
        path = self.window.key if self.window is not None else None
        if path is None:
            return ""
        value = _read(event, path)
        if value is _MISSING or value is None:
            return None
        from .windows import key_text

        return key_text(value)


def _event_of(event: Any) -> Any:
    return event.event if isinstance(event, Envelope) else event


def _read(event: Any, path: str) -> Any:
    return read(event, path) if isinstance(event, Envelope) else lookup(event, path)


def kafka_trigger(
    topic: str,
    *,
    match: Mapping[str, Any] | Callable[[Any], Any] | None = None,
    input: Callable[[Any], Any] | Mapping[str, str] | None = None,
    dedupe: str | None = None,
    debounce: Debounce | None = None,
    batch: Batch | None = None,
    format: str = "json",
) -> KafkaTrigger:
    """Declare that events on `topic` start the workflow (see the module docstring)."""
    if not isinstance(topic, str) or not topic or len(topic) > 249:
        raise WorkflowDefinitionError(f"kafka_trigger: topic {topic!r} must be a non-empty string")
    if format not in FORMATS:
        raise UnknownEventFormat(
            f"kafka_trigger({topic!r}): format={format!r} is not an event format; use one of "
            + ", ".join(repr(f) for f in FORMATS)
        )
    _check_match(topic, match)
    if isinstance(match, Mapping):
        for path in match:
            _check_path(topic, "match", path)
    _check_input(topic, input)
    if dedupe is not None and (not isinstance(dedupe, str) or not dedupe):
        raise WorkflowDefinitionError(f"kafka_trigger({topic!r}): dedupe must be a dotted path string")
    if dedupe is not None:
        _check_path(topic, "dedupe", dedupe)
    for window in (debounce, batch):
        if isinstance(window, (Debounce, Batch)) and window.key is not None:
            _check_path(topic, f"{window.kind} key", window.key)
    if debounce is not None and not isinstance(debounce, Debounce):
        raise WorkflowDefinitionError(f"kafka_trigger({topic!r}): debounce must be Debounce(key=..., period=...)")
    if batch is not None and not isinstance(batch, Batch):
        raise WorkflowDefinitionError(f"kafka_trigger({topic!r}): batch must be Batch(max_size=..., window=...)")
    if debounce is not None and batch is not None:
        raise WorkflowDefinitionError(
            f"kafka_trigger({topic!r}): give debounce= or batch=, not both"
        )
    if batch is not None and dedupe is not None:
        raise WorkflowDefinitionError(
            f"kafka_trigger({topic!r}): dedupe= cannot be used with batch= (a batch run holds many "
            "events); use debounce=, or dedupe the events in the workflow"
        )
    return KafkaTrigger(topic=topic, match=match, input=input, dedupe=dedupe, window=debounce or batch,
                        format=format)
