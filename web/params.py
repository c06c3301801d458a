"""Parsing and checking what a request carries: query parameters, cursors, JSON bodies.

Every helper either returns a clean value or raises `BadRequest` with a message that
says what is wrong and what is accepted, so no input reaches the database unchecked.
Pages and the API share these helpers.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import BadRequest

from orchestrator import planner as P
from orchestrator.intake import DuplicateKey, unique_keys

#: Page size when a request does not give `limit`, and the largest it may ask for.
DEFAULT_PAGE = 50
MAX_PAGE = 500
#: Event outcomes the consumer records.
OUTCOMES = ("matched", "ignored", "rejected")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$")  # workflow and step names
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+\-]{0,63}$")  # as `Workflow(version=...)`
_TOPIC = re.compile(r"^[A-Za-z0-9._\-]{1,249}$")  # Kafka's legal topic names
_RELATIVE = re.compile(r"^(\d{1,6})([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_MAX_BIGINT = 2**63 - 1


def _text(args: Mapping[str, Any], name: str) -> str | None:
    value = args.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string")
    return value


def limit_arg(args: Mapping[str, Any], default: int = DEFAULT_PAGE, maximum: int = MAX_PAGE) -> int:
    raw = args.get("limit")
    if raw is None or raw == "":
        return default
    if isinstance(raw, bool) or isinstance(raw, float) and not raw.is_integer():
        raise BadRequest(f"limit must be an integer from 1 to {maximum}, got {raw!r}")
    try:
        value = int(raw)
    except (TypeError, ValueError, OverflowError):
        raise BadRequest(f"limit must be an integer from 1 to {maximum}, got {raw!r}") from None
    if not 1 <= value <= maximum:
        raise BadRequest(f"limit must be an integer from 1 to {maximum}, got {value}")
    return value


def workflow_arg(args: Mapping[str, Any], name: str = "workflow") -> str | None:
    value = _text(args, name)
    if value is not None and not _NAME.match(value):
        raise BadRequest(f"{name} {value!r} is not a workflow name (letters, digits, '_', '-', '.')")
    return value


def version_arg(args: Mapping[str, Any]) -> str | None:
    """A workflow version: what `Workflow(version=...)` accepts, or a structure hash."""
    value = _text(args, "version")
    if value is not None and not _VERSION.match(value):
        raise BadRequest(
            f"version {value!r} is not a workflow version (1-64 letters, digits, '_', '-', '.', ':', '+')"
        )
    return value


#: What a query parameter or form field may say for a yes/no flag.
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def flag_arg(args: Mapping[str, Any], name: str) -> bool:
    """A yes/no flag from a JSON body (true/false) or a query string or form (1/0, true/false)."""
    value = args.get(name)
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
        return value.lower() in _TRUE
    raise BadRequest(f"{name} must be true or false, got {value!r}")


def body_flag(body: Mapping[str, Any], name: str) -> bool:
    """A yes/no field of a JSON body: true, false or null (absent); anything else is a 400."""
    value = body.get(name)
    if value is None or isinstance(value, bool):
        return bool(value)
    raise BadRequest(f"{name} must be true or false (a JSON boolean), got {value!r}")


def status_arg(args: Mapping[str, Any], statuses: tuple[str, ...] = P.RUN_STATUSES) -> str | None:
    """A run status among `statuses` (a runs list also accepts `waiting`)."""
    value = _text(args, "status")
    if value is not None and value not in statuses:
        raise BadRequest(f"status must be one of {', '.join(statuses)}; got {value!r}")
    return value


def outcome_arg(args: Mapping[str, Any]) -> str | None:
    value = _text(args, "outcome")
    if value is not None and value not in OUTCOMES:
        raise BadRequest(f"outcome must be one of {', '.join(OUTCOMES)}; got {value!r}")
    return value


def topic_arg(args: Mapping[str, Any]) -> str | None:
    value = _text(args, "topic")
    if value is not None and not _TOPIC.match(value):
        raise BadRequest(f"topic {value!r} is not a Kafka topic name (letters, digits, '.', '_', '-')")
    return value


def since_arg(args: Mapping[str, Any], now: datetime | None = None) -> datetime | None:
    """An ISO 8601 time (UTC when it has no offset) or a span back from now: 30m, 6h, 7d."""
    value = _text(args, "since")
    if value is None:
        return None
    relative = _RELATIVE.match(value)
    if relative:
        amount, unit = int(relative.group(1)), _UNITS[relative.group(2)]
        try:
            return (now or datetime.now(UTC)) - timedelta(**{unit: amount})
        except OverflowError:
            raise BadRequest(f"since {value!r} reaches too far back") from None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(
            f"since must be an ISO 8601 time (2024-05-01T12:00:00Z) or a span like 30m, 6h, 7d; "
            f"got {value!r}"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


#: Highest item index an `after` may name (a map has at most ORCHESTRATOR_MAX_MAP_ITEMS).
MAX_INDEX = 2**31 - 1


def index_arg(args: Mapping[str, Any], name: str = "after") -> int | None:
    """A map item's index (0 or more): the keyset position of a page of items."""
    raw = _text(args, name)
    if raw is None:
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 10 or int(raw) > MAX_INDEX:
        raise BadRequest(
            f"{name} must be an item index (an integer from 0 to {MAX_INDEX}): pass next_after "
            f"of the previous page; got {raw[:40]!r}"
        )
    return int(raw)


# -- cursors: opaque to clients, a keyset position to us -------------------------------------


def _encode(parts: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(parts).encode()).decode().rstrip("=")


def _decode(value: str) -> Any:
    try:
        return json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None


def run_cursor(created_at: datetime, run_id: uuid.UUID | str) -> str:
    """The cursor after a run: where the next page of the newest-first list starts."""
    return _encode(["r", created_at.isoformat(), str(run_id)])


def run_cursor_arg(args: Mapping[str, Any]) -> tuple[datetime, uuid.UUID] | None:
    value = _text(args, "cursor")
    if value is None:
        return None
    parts = _decode(value)
    try:
        kind, created, rid = parts  # type: ignore[misc]
        if kind != "r":
            raise ValueError
        moment = datetime.fromisoformat(created)
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)), uuid.UUID(rid)
    except (TypeError, ValueError, AttributeError):
        raise BadRequest("cursor is not valid: pass next_cursor from a previous page unchanged") from None


def event_cursor(event_id: int) -> str:
    return _encode(["e", event_id])


def event_cursor_arg(args: Mapping[str, Any]) -> int | None:
    value = _text(args, "cursor")
    if value is None:
        return None
    parts = _decode(value)
    if (
        isinstance(parts, list)
        and len(parts) == 2
        and parts[0] == "e"
        and isinstance(parts[1], int)
        and not isinstance(parts[1], bool)
        and 0 < parts[1] <= _MAX_BIGINT
    ):
        return parts[1]
    raise BadRequest("cursor is not valid: pass next_cursor from a previous page unchanged")


def event_id_ok(event_id: int) -> bool:
    """Whether an id from a URL can be an event id at all (BIGINT range)."""
    return 0 < event_id <= _MAX_BIGINT


# -- bodies --------------------------------------------------------------------------------


def json_body(raw: bytes, required: bool = True) -> dict[str, Any]:
    """The request body as a JSON object; an empty body is `{}` unless `required`."""
    if not raw.strip():
        if required:
            raise BadRequest("the request body must be a JSON object")
        return {}
    try:
        data = json.loads(raw, object_pairs_hook=unique_keys)
    except DuplicateKey as exc:
        raise BadRequest(f"the request body is ambiguous JSON: {exc}") from None
    except (ValueError, RecursionError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "too deeply nested or malformed"
        raise BadRequest(f"the request body is not valid JSON: {reason}") from None
    if not isinstance(data, dict):
        raise BadRequest(f"the request body must be a JSON object, got {type(data).__name__}")
    return data


def check_fields(data: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise BadRequest(
            f"unknown field(s) {', '.join(map(repr, unknown))}; accepted: {', '.join(sorted(allowed))}"
        )


def check_storable(value: Any, what: str = "input", depth: int = 0) -> None:
    """PostgreSQL cannot store NUL characters or unpaired surrogates in text or JSON; reject
    them up front."""
    if depth > 200:
        raise BadRequest(f"{what} is nested too deeply (more than 200 levels)")
    if isinstance(value, str):
        if "\x00" in value:
            raise BadRequest(f"{what} contains a NUL character (\\u0000), which cannot be stored")
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise BadRequest(
                    f"{what} contains an unpaired surrogate (\\u{ord(value[exc.start]):04x}), "
                    "which cannot be stored"
                ) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            check_storable(key, what, depth + 1)
            check_storable(item, what, depth + 1)
    elif isinstance(value, list):
        for item in value:
            check_storable(item, what, depth + 1)


def id_list(values: Any, maximum: int) -> list[str]:
    """A list of run ids (UUID strings), at most `maximum` of them."""
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise BadRequest("ids must be a list of run id strings")
    if not values:
        raise BadRequest("ids is empty: give at least one run id, or a filter instead")
    if len(values) > maximum:
        raise BadRequest(f"ids holds {len(values)} runs; at most {maximum} per call")
    for value in values:
        try:
            uuid.UUID(value)
        except ValueError:
            raise BadRequest(f"{value!r} is not a run id (run ids are UUIDs)") from None
    return values


def form_args(form: MultiDict[str, str]) -> dict[str, str]:
    """A form's single-valued fields as a plain mapping."""
    return {key: form.get(key, "") for key in form}
