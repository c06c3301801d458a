"""Events a step emits (`ctx.emit`): what one emit is, and the checks made at the call.

Pure core, no I/O. An attempt's emits are collected on its `StepContext`; the engine writes
them to the `outbox` table in the transaction that records the attempt's success (so a
failed or retried attempt's emits are discarded), and the relay (`orchestrator.relay`)
publishes them to Kafka afterwards. Every check happens at the call, so a bad emit fails
the step with a message naming the argument, not the relay later.
"""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import InvalidInput
from .jsonvalues import check_json

#: Header every relayed message carries: the emit's id, the same on every re-send, so a
#: reader (this project's consumer included) can drop the duplicates at-least-once brings.
EVENT_ID_HEADER = "orchestrator-event-id"
#: Header holding the id of the run whose step emitted the message.
RUN_ID_HEADER = "orchestrator-run-id"
#: Header holding the name of the step that emitted the message.
STEP_HEADER = "orchestrator-step"
#: PostgreSQL channel a success with emits notifies at its commit: the relay listens, so
#: it publishes at once rather than at its next look (ORCHESTRATOR_RELAY_INTERVAL).
OUTBOX_CHANNEL = "orchestrator_outbox"
#: Header names a step may not set itself: the relay's own, present and future.
RESERVED_HEADER_PREFIX = "orchestrator-"
#: Most emits one attempt may make; each becomes an outbox row in the success's transaction.
MAX_EMITS_PER_ATTEMPT = 10_000
#: What Kafka accepts as a topic name (and "." and ".." are refused besides).
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


class InvalidEmit(InvalidInput):
    """`ctx.emit` was called with an argument that cannot be published; the step fails."""


@dataclass(frozen=True)
class Emit:
    """One event to publish once its attempt has succeeded.

    `headers` are the step's own, values as bytes; `event_id` is fixed here, at the call,
    and stored with the outbox row, so every send of the row carries the same id.
    """

    topic: str
    value: Any
    key: str | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    event_id: str = ""


def make_emit(topic: Any, value: Any, key: Any = None, headers: Any = None) -> Emit:
    """An `Emit` of these arguments, or `InvalidEmit` saying which one is wrong and why."""
    if not isinstance(topic, str) or not _TOPIC.match(topic) or topic in (".", ".."):
        raise InvalidEmit(
            f"ctx.emit: topic {topic!r} is not a Kafka topic name: use 1-249 letters, digits, "
            "'.', '_' or '-'"
        )
    check_json(value, f"ctx.emit: the value emitted to {topic!r}")
    if key is not None and not isinstance(key, str):
        raise InvalidEmit(f"ctx.emit: key must be a string or None, got {type(key).__name__}")
    if key is not None and "\x00" in key:
        raise InvalidEmit("ctx.emit: key contains a NUL character (\\u0000), which cannot be stored")
    return Emit(topic, value, key, _headers(headers), str(uuid.uuid4()))


def _headers(headers: Any) -> tuple[tuple[str, bytes], ...]:
    if headers is None:
        return ()
    if not isinstance(headers, Mapping):
        raise InvalidEmit(
            f"ctx.emit: headers must be a mapping of str to str or bytes, got {type(headers).__name__}"
        )
    checked: list[tuple[str, bytes]] = []
    for name, value in headers.items():
        if not isinstance(name, str) or not name or "\x00" in name:
            raise InvalidEmit(f"ctx.emit: header name {name!r} must be a non-empty string without NUL")
        if name.lower().startswith(RESERVED_HEADER_PREFIX):
            raise InvalidEmit(
                f"ctx.emit: header {name!r} is reserved (the relay sets the "
                f"{RESERVED_HEADER_PREFIX}* headers itself); choose another name"
            )
        if isinstance(value, str):
            try:
                data = value.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidEmit(f"ctx.emit: header {name!r} contains an unpaired surrogate") from None
        elif isinstance(value, (bytes, bytearray, memoryview)):
            data = bytes(value)
        else:
            raise InvalidEmit(
                f"ctx.emit: header {name!r} must be str or bytes, got {type(value).__name__}"
            )
        checked.append((name, data))
    return tuple(checked)


def headers_json(headers: tuple[tuple[str, bytes], ...]) -> list[dict[str, str]]:
    """Headers as stored in the outbox: `{"key", "value"}` for UTF-8 text, else
    `{"key", "base64"}` (JSON holds no bytes, and PostgreSQL no NUL in text)."""
    stored: list[dict[str, str]] = []
    for name, data in headers:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is None or "\x00" in text:
            stored.append({"key": name, "base64": base64.b64encode(data).decode("ascii")})
        else:
            stored.append({"key": name, "value": text})
    return stored


def headers_of_json(stored: Any) -> list[tuple[str, bytes]]:
    """The inverse of `headers_json`."""
    headers: list[tuple[str, bytes]] = []
    for item in stored or ():
        if "base64" in item:
            headers.append((item["key"], base64.b64decode(item["base64"])))
        else:
            headers.append((item["key"], str(item.get("value", "")).encode("utf-8")))
    return headers
