"""The processes' log output: `ORCHESTRATOR_LOG_FORMAT=text` (default) or `json`.

`json` writes one JSON object per line (`time`, `level`, `logger`, `message`, `exception`
when there is one) plus `run_id`, `step`, `attempt` and `event_id` where known: the
executor sets them around a step attempt and the consumer around an event or a batch, as
context variables that `ContextFilter` copies onto every record. Every process calls
`configure` (the CLI, the recovery and lease-keeper processes; Celery is told not to take
the root logger over, so its lines go through the same handler).
"""

from __future__ import annotations

import contextvars
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .errors import ConfigurationError

#: What `ORCHESTRATOR_LOG_FORMAT` may be.
FORMATS = ("text", "json")
#: The line format of `text`.
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Fields the executor and the consumer know, in the order they are written.
FIELDS = ("run_id", "step", "attempt", "event_id")

_fields: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "orchestrator_log_fields", default=None
)


def log_format(value: str | None = None) -> str:
    """The configured format (`value`, else ORCHESTRATOR_LOG_FORMAT), or a clear error."""
    raw = os.environ.get("ORCHESTRATOR_LOG_FORMAT", "text") if value is None else value
    chosen = (raw or "text").strip().lower()
    if chosen not in FORMATS:
        raise ConfigurationError(
            f"ORCHESTRATOR_LOG_FORMAT={raw!r} is not a log format: use text or json"
        )
    return chosen


class ContextFilter(logging.Filter):
    """Copies the known `run_id`, `step`, `attempt`, `event_id` onto each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        known = _fields.get()
        if known:
            for name, value in known.items():
                if not hasattr(record, name):
                    setattr(record, name, value)
        return True


def _json_formatter() -> logging.Formatter:
    from pythonjsonlogger.json import JsonFormatter

    return JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger",
                       "exc_info": "exception"},
        timestamp=False,
        json_ensure_ascii=False,
    )


def configure(level: str | int = logging.INFO, fmt: str | None = None) -> None:
    """Set up the root logger for this process in the configured format (idempotent:
    handlers set by an earlier call are replaced)."""
    chosen = log_format(fmt)
    handler = logging.StreamHandler()
    handler.setFormatter(_json_formatter() if chosen == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_orchestrator", False)]:
        root.removeHandler(old)
    handler._orchestrator = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    logging.captureWarnings(chosen == "json")  # Python's warnings as log lines too, not raw text


@contextmanager
def fields(**known: Any) -> Iterator[None]:
    """Add `known` (of `FIELDS`) to every log line written in the block."""
    merged = {**(_fields.get() or {}), **{k: v for k, v in known.items() if v is not None}}
    token = _fields.set(merged)
    try:
        yield
    finally:
        _fields.reset(token)
