"""Event formats: how a Kafka message becomes the event a trigger reads. Pure logic, no I/O.

A trigger's `format=` picks one (see `orchestrator.triggers`):

- `json` (the default): the value is a UTF-8 JSON object; the event is that object.
- `text`: the value is UTF-8 text; the event is `{"text": value}`.
- `cloudevents`: the message is a CloudEvent 1.0 in Kafka binary mode (`ce_*` headers, the
  data in the value) or structured mode (header `content-type: application/cloudevents+json`,
  the whole event as JSON in the value), read with the `cloudevents` SDK. The event is
  `{"id", "source", "type", "specversion", "subject", "time", "data", ...}`: `subject` and
  `time` are null when the message has none (`time` is the RFC 3339 text as sent), the
  optional attributes (`datacontenttype`, `dataschema`) and extensions follow when present,
  and binary data (not UTF-8, or `data_base64` in structured mode) is `data: null` with
  `data_base64` holding it as base64 text. JSON data (content type `application/json`,
  `*+json`, or none) must be valid JSON, else the message is not a CloudEvent.

`Readings` decodes one message in each format asked of it, at most once per format.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from .errors import OrchestratorError

#: Deepest nesting of objects and arrays accepted in an event or a run input.
MAX_NESTING = 100

JSON = "json"
CLOUDEVENTS = "cloudevents"
TEXT = "text"

#: The content type of a structured-mode CloudEvent (JSON event format).
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
#: The headers of a binary-mode CloudEvent that must be present (CloudEvents 1.0).
REQUIRED_CE_HEADERS = ("ce_specversion", "ce_id", "ce_source", "ce_type")
_CE_REQUIRED = ("id", "source", "type", "specversion")
_CE_ORDER = ("id", "source", "type", "specversion", "subject", "time")


class Rejected(OrchestratorError):
    """A message that cannot be an event; the message is the reason recorded with it."""


# -- JSON ---------------------------------------------------------------------------------


def decode(value: bytes | None, max_bytes: int) -> dict[str, Any]:
    """The JSON object in a message value, or `Rejected` saying why there is none."""
    payload, text = _json_value(value, max_bytes)
    return _json_object(payload, text)


def _json_value(value: bytes | None, max_bytes: int) -> tuple[Any, str]:
    """Any JSON value in a message value, and its text; `Rejected` if there is none."""
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
    return payload, text


def _json_object(payload: Any, text: str) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise Rejected(f"event is a JSON {_json_type(payload)}, expected a JSON object")
    check_storable(payload, "event", check_text=_suspect(text))
    return payload


def _suspect(text: str) -> bool:
    return any(e in text for e in _SUSPECT_ESCAPES)


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


def check_storable(value: Any, what: str, check_text: bool = True) -> None:
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


# -- text ---------------------------------------------------------------------------------


def decode_text(value: bytes | None) -> dict[str, Any]:
    """`{"text": value}` for a UTF-8 value, or `Rejected` naming the first bad byte."""
    if value is None:
        raise Rejected("message has no value (a tombstone); expected UTF-8 text")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejected(f"not UTF-8 text: invalid byte at position {exc.start}") from None
    if "\x00" in text:
        raise Rejected("text holds a NUL character (\\u0000), which cannot be stored")
    return {"text": text}


# -- CloudEvents ----------------------------------------------------------------------------


def decode_cloudevent(value: bytes | None, headers: Iterable[tuple[str, bytes]],
                      max_bytes: int) -> dict[str, Any]:
    """The CloudEvent in a message as a JSON object (see the module docstring), or
    `Rejected` saying why the message is not one."""
    named: dict[str, bytes] = {}
    for name, data in headers:  # the last of a name counts; only the binding's headers
        lowered = name.lower()
        if lowered.startswith("ce_") or lowered == "content-type":
            named[lowered] = data or b""
    texts: dict[str, str] = {}
    for name, data in named.items():
        try:
            texts[name] = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _not_a_cloudevent(
                f"header {name!r} is not UTF-8 (invalid byte at position {exc.start})") from None
    content_type = texts.get("content-type")
    if content_type is not None and content_type.lower().startswith("application/cloudevents"):
        media = content_type.split(";", 1)[0].strip().lower()
        if media != STRUCTURED_CONTENT_TYPE:
            raise _not_a_cloudevent(
                f"content-type {content_type!r}: only structured mode in {STRUCTURED_CONTENT_TYPE} "
                "is read")
        return _structured(value, named, max_bytes)
    if any(name.startswith("ce_") for name in texts):
        return _binary(value, named, texts, max_bytes)
    raise _not_a_cloudevent(
        "no ce_specversion header (binary mode) and content-type is not "
        f"{STRUCTURED_CONTENT_TYPE} (structured mode)")


def _not_a_cloudevent(reason: str) -> Rejected:
    return Rejected(f"not a CloudEvent: {reason}")


def _binary(value: bytes | None, named: dict[str, bytes], texts: dict[str, str],
            max_bytes: int) -> dict[str, Any]:
    from cloudevents.core.bindings.kafka import KafkaMessage, from_binary
    from cloudevents.core.formats.json import JSONFormat
    from cloudevents.core.v1.event import CloudEvent

    missing = [h for h in REQUIRED_CE_HEADERS if not texts.get(h)]
    if missing:
        raise _not_a_cloudevent(
            f"no {' or '.join(missing)} header (binary mode needs {', '.join(REQUIRED_CE_HEADERS)})")
    if "ce_time" in texts:
        _check_time(texts["ce_time"], "ce_time")
    # No key: the SDK would add it as a `partitionkey` attribute (`$key` reads it instead).
    try:
        event = from_binary(KafkaMessage(named, None, value or b""), JSONFormat(), CloudEvent)
    except Exception as exc:  # noqa: BLE001 - the SDK's validation errors are of many types
        raise _not_a_cloudevent(_sdk_error(exc)) from None
    attributes = dict(event.get_attributes())
    content_type = attributes.get("datacontenttype")
    data: Any = None
    data_base64: str | None = None
    if value:
        if _is_json(content_type):
            try:
                data, _ = _json_value(value, max_bytes)
            except Rejected as exc:
                raise _not_a_cloudevent(
                    f"its data is not JSON (content-type {content_type or 'absent, so application/json'}): "
                    f"{exc}") from None
        else:
            try:
                data = value.decode("utf-8")
            except UnicodeDecodeError:
                data_base64 = base64.b64encode(value).decode("ascii")
    return _event(attributes, texts.get("ce_time"), data, data_base64)


def _structured(value: bytes | None, named: dict[str, bytes], max_bytes: int) -> dict[str, Any]:
    from cloudevents.core.bindings.kafka import KafkaMessage, from_structured
    from cloudevents.core.formats.json import JSONFormat
    from cloudevents.core.v1.event import CloudEvent

    try:
        body, _ = _json_value(value, max_bytes)
    except Rejected as exc:
        raise _not_a_cloudevent(f"structured mode needs a JSON object: {exc}") from None
    if not isinstance(body, dict):
        raise _not_a_cloudevent(f"structured mode needs a JSON object, not a JSON {_json_type(body)}")
    missing = [a for a in _CE_REQUIRED if not body.get(a)]
    if missing:
        raise _not_a_cloudevent(f"no {' or '.join(missing)} attribute (needs {', '.join(_CE_REQUIRED)})")
    time = body.get("time")
    if time is not None:
        if not isinstance(time, str):
            raise _not_a_cloudevent(f"time {time!r} is not an RFC 3339 timestamp")
        _check_time(time, "time")
    data_base64 = body.get("data_base64")
    if data_base64 is not None:
        if "data" in body:
            raise _not_a_cloudevent("it has both data and data_base64")
        try:
            base64.b64decode(data_base64, validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise _not_a_cloudevent("data_base64 is not base64") from None
    try:
        event = from_structured(KafkaMessage(named, None, value or b""), JSONFormat(), CloudEvent)
    except Exception as exc:  # noqa: BLE001 - the SDK's validation errors are of many types
        raise _not_a_cloudevent(_sdk_error(exc)) from None
    return _event(dict(event.get_attributes()), time, body.get("data"), data_base64)


def _event(attributes: dict[str, Any], time: str | None, data: Any,
           data_base64: str | None) -> dict[str, Any]:
    """The run input of a CloudEvent: attributes in spec order, the SDK's `time` (it makes
    one up when the message has none) replaced by the text the message carried."""
    attributes["time"] = time
    event: dict[str, Any] = {name: attributes.pop(name, None) for name in _CE_ORDER}
    event.update(attributes)
    event["data"] = data
    if data_base64 is not None:
        event["data_base64"] = data_base64
    check_storable(event, "event")
    return event


def _check_time(text: str, name: str) -> None:
    from dateutil.parser import isoparse

    try:
        moment = isoparse(text)
    except (ValueError, OverflowError):
        raise _not_a_cloudevent(f"{name} {text!r} is not an RFC 3339 timestamp") from None
    if moment.tzinfo is None:
        raise _not_a_cloudevent(f"{name} {text!r} has no time zone (RFC 3339 needs one, e.g. Z)")


def _is_json(content_type: str | None) -> bool:
    if content_type is None:
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    kind, _, subtype = media.partition("/")
    return kind in ("application", "text") and (subtype == "json" or subtype.endswith("+json"))


def _sdk_error(exc: Exception) -> str:
    text = str(exc).removeprefix("Failed to create CloudEvent due to the validation errors: ")
    return text or type(exc).__name__


def binary_headers(type: str, source: str, id: str, time: datetime) -> list[tuple[str, bytes]]:
    """The headers of a binary-mode CloudEvent 1.0 with JSON data (`orchestrator publish
    --cloudevent`)."""
    moment = time.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return [(name, text.encode()) for name, text in (
        ("ce_specversion", "1.0"), ("ce_id", id), ("ce_type", type), ("ce_source", source),
        ("ce_time", moment), ("content-type", "application/json"))]


# -- one message in every format ---------------------------------------------------------


class Readings:
    """One message's value decoded in the formats asked for, each at most once."""

    def __init__(self, value: bytes | None, headers: Iterable[tuple[str, bytes]], max_bytes: int) -> None:
        self.value = value
        self.headers = tuple(headers)
        self.max_bytes = max_bytes
        self._events: dict[str, dict[str, Any]] = {}
        self._errors: dict[str, Rejected] = {}

    def seed(self, fmt: str, event: dict[str, Any]) -> None:
        """Take `event` as the message's decoding in `fmt` (a replay's stored payload)."""
        self._events[fmt] = event

    def event(self, fmt: str) -> dict[str, Any]:
        """The event in format `fmt`, or `Rejected` saying why the message is not one."""
        try:
            return self._events[fmt]  # the hot path: one dict lookup
        except KeyError:
            pass
        if fmt in self._errors:
            raise self._errors[fmt]
        try:
            event = self._events[fmt] = self._decode(fmt)
        except Rejected as exc:
            self._errors[fmt] = exc
            raise
        return event

    def payload(self) -> dict[str, Any] | None:
        """What the event row stores: the value's JSON object, else None."""
        try:
            return self.event(JSON)
        except Rejected:
            return None

    def _decode(self, fmt: str) -> dict[str, Any]:
        if fmt == JSON:
            return decode(self.value, self.max_bytes)
        if fmt == TEXT:
            return decode_text(self.value)
        if fmt == CLOUDEVENTS:
            return decode_cloudevent(self.value, self.headers, self.max_bytes)
        raise ValueError(f"unknown event format {fmt!r}")
