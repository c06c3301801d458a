"""Error responses: JSON `{"error": "..."}` for the API and probes, a page for the dashboard.

Every failure becomes a deliberate status: user mistakes are 4xx with a message that says
what to do, an unreachable database is 503, and anything unexpected is a logged 500 with
no traceback in the response.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, current_app, jsonify, render_template, request
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError, ProgrammingError
from werkzeug.exceptions import HTTPException

from orchestrator.errors import (
    ConfigurationError,
    DeploySkew,
    EventNotFound,
    KafkaUnreachable,
    NotWaiting,
    OrchestratorError,
    RunNotFound,
    ScheduleNotFound,
    WorkflowNotFound,
)

log = logging.getLogger("orchestrator.web")

#: Path prefixes answered in JSON (machines read them); everything else is a page.
JSON_PATHS = ("/api/", "/healthz", "/metrics")


def wants_json() -> bool:
    return request.path == "/api" or request.path.startswith(JSON_PATHS)


def _reason(exc: DBAPIError) -> str:
    text = str(exc.orig) if exc.orig is not None else str(exc)
    lines = text.strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def respond(status: int, message: str) -> Any:
    if wants_json():
        response = jsonify(error=message)
    else:
        response = render_template("error.html", status=status, message=message)
    headers = {"WWW-Authenticate": 'Bearer realm="orchestrator"'} if status == 401 else {}
    return response, status, headers


def too_large(limit: int | None) -> str:
    """The 413 message, naming the limit (`MAX_BODY_BYTES`) a request body went over."""
    if not limit:
        return "request body is too large"
    size = f"{limit // 1024**2} MiB" if limit % 1024**2 == 0 else f"{limit / 1024:g} KiB"
    return f"request body is over the limit of {limit} bytes ({size}); a run's input must fit in it"


def status_of(exc: OrchestratorError) -> int:
    from orchestrator.events import EventNotReplayable

    if isinstance(exc, (WorkflowNotFound, RunNotFound, EventNotFound, ScheduleNotFound)):
        return 404
    if isinstance(exc, (EventNotReplayable, DeploySkew, NotWaiting)):
        return 409
    if isinstance(exc, (ConfigurationError, KafkaUnreachable)):
        return 503
    return 400


def register(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Any:
        if exc.code == 413:
            return respond(413, too_large(current_app.config.get("MAX_CONTENT_LENGTH")))
        return respond(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(OrchestratorError)
    def orchestrator_error(exc: OrchestratorError) -> Any:
        return respond(status_of(exc), str(exc))

    @app.errorhandler(DBAPIError)
    def database_error(exc: DBAPIError) -> Any:
        if isinstance(exc, OperationalError):
            return respond(503, f"cannot reach the database: {_reason(exc)}")
        if isinstance(exc, DataError):
            return respond(400, f"the database refused a value: {_reason(exc)}")
        if isinstance(exc, IntegrityError):
            return respond(409, f"conflict with existing data: {_reason(exc)}")
        if isinstance(exc, ProgrammingError):
            return respond(
                503, "the database schema is missing or out of date; run `orchestrator db upgrade`"
            )
        log.exception("database error")
        return respond(503, f"database error: {_reason(exc)}")

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Any:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return respond(500, "internal error; the server log has the details")
