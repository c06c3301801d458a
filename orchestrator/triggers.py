"""Kafka triggers: which events start a workflow, and with what input. Pure logic.

`match` is a dict of dotted paths to conditions::

    {"type": "order.created",              # equality
     "order.total": {"gte": 100},          # gte / gt / lte / lt / ne
     "order.country": {"in": ["FR", "DE"]},
     "order.coupon": {"exists": False}}

or a function `event -> bool`. `input` maps the event to the run's input (default: the
event itself) and `dedupe` names a dotted path whose value allows at most one run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import WorkflowDefinitionError
from .windows import Batch, Debounce, Window

if TYPE_CHECKING:
    from .dsl import Workflow

_MISSING = object()
_OPERATORS = frozenset({"eq", "ne", "in", "nin", "gt", "gte", "lt", "lte", "exists"})


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
    """True when the event satisfies every condition of a `match` dict."""
    for path, condition in conditions.items():
        actual = lookup(event, path)
        if isinstance(condition, Mapping) and condition and set(condition) <= _OPERATORS:
            if not all(_compare(op, actual, expected) for op, expected in condition.items()):
                return False
        elif actual is _MISSING or actual != condition:
            return False
    return True


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
    input: Callable[[Any], Any] | None = None
    dedupe: str | None = None
    #: A `Debounce` or `Batch`: matched events wait in a window instead of starting a run each.
    window: Window | None = None
    workflow: str = field(default="", init=False)

    def bind(self, workflow: Workflow) -> None:
        self.workflow = workflow.name

    def matches(self, event: Any) -> bool:
        """Evaluate `match`; a function that raises propagates (the caller rejects the event)."""
        if self.match is None:
            return True
        if callable(self.match):
            return bool(self.match(event))
        return matches(self.match, event)

    def run_input(self, event: Any) -> Any:
        return self.input(event) if self.input is not None else event

    def dedupe_value(self, event: Any) -> str | None:
        if self.dedupe is None:
            return None
        value = lookup(event, self.dedupe)
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
            "input": None if self.input is None else "<function>",
            "dedupe": self.dedupe,
            "window": None if self.window is None else self.window.describe(),
        }

    def window_key(self, event: Any) -> str | None:
        """The event's window key, "" for a keyless batch; None when the key path is missing."""
        path = self.window.key if self.window is not None else None
        if path is None:
            return ""
        value = lookup(event, path)
        if value is _MISSING or value is None:
            return None
        from .windows import key_text

        return key_text(value)


def kafka_trigger(
    topic: str,
    *,
    match: Mapping[str, Any] | Callable[[Any], Any] | None = None,
    input: Callable[[Any], Any] | None = None,
    dedupe: str | None = None,
    debounce: Debounce | None = None,
    batch: Batch | None = None,
) -> KafkaTrigger:
    """Declare that events on `topic` start the workflow (see the module docstring)."""
    if not isinstance(topic, str) or not topic or len(topic) > 249:
        raise WorkflowDefinitionError(f"kafka_trigger: topic {topic!r} must be a non-empty string")
    _check_match(topic, match)
    if input is not None and not callable(input):
        raise WorkflowDefinitionError(f"kafka_trigger({topic!r}): input must be a function of the event")
    if dedupe is not None and (not isinstance(dedupe, str) or not dedupe):
        raise WorkflowDefinitionError(f"kafka_trigger({topic!r}): dedupe must be a dotted path string")
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
    return KafkaTrigger(topic=topic, match=match, input=input, dedupe=dedupe, window=debounce or batch)
