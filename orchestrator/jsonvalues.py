"""What may be stored as JSON: pure checks shared by the engine and the DSL (`ctx.emit`)."""

from __future__ import annotations

import json
from typing import Any

from .errors import InvalidInput


def check_json(value: Any, what: str) -> Any:
    """Return `value` if it can be stored as JSON, else raise saying why."""
    try:
        json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:  # before ValueError, its base class
        raise InvalidInput(
            f"{what} contains an unpaired surrogate (\\u{ord(exc.object[exc.start]):04x}), "
            "which PostgreSQL cannot store; remove it"
        ) from None
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidInput(f"{what} is not JSON-serialisable: {exc}") from None
    if _has_nul(value):
        raise InvalidInput(
            f"{what} contains a NUL character (\\u0000), which PostgreSQL cannot store; remove it"
        )
    return value


def _has_nul(value: Any) -> bool:
    """Whether any string or key in a JSON value holds U+0000 (PostgreSQL cannot store it)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False
