"""Request-scoped access to the app's runtime: one database session per request.

The runtime (settings, database engine, registry, Celery, workflow engine) is built once
per app by `create_app` and kept in `app.extensions`; a view asks for the piece it needs.
"""

from __future__ import annotations

from flask import Flask, current_app, g
from sqlalchemy.orm import Session

from orchestrator.engine import WorkflowEngine
from orchestrator.queues import CACHE_SECONDS, INSPECT_TIMEOUT, QueueWatch, ask_workers
from orchestrator.registry import Registry
from orchestrator.runtime import Runtime
from orchestrator.settings import Settings

EXTENSION = "orchestrator"
QUEUES = "orchestrator.queues"


def runtime_of(app: Flask) -> Runtime:
    return app.extensions[EXTENSION]


def runtime() -> Runtime:
    return runtime_of(current_app)


def settings() -> Settings:
    return runtime().settings


def registry() -> Registry:
    return runtime().registry


def engine() -> WorkflowEngine:
    return runtime().engine


def queue_watch() -> QueueWatch:
    """The app's cached view of which queues live workers serve (built on first use)."""
    app = current_app
    watch = app.extensions.get(QUEUES)
    if watch is None:
        rt = runtime()
        timeout = app.config.get("QUEUES_INSPECT_TIMEOUT", INSPECT_TIMEOUT)
        watch = app.extensions.setdefault(QUEUES, QueueWatch(
            lambda: rt.registry,
            lambda: ask_workers(rt.celery, timeout),
            ttl=app.config.get("QUEUES_CACHE_SECONDS", CACHE_SECONDS),
        ))
    return watch


def db() -> Session:
    """This request's session, opened on first use and closed when the request ends."""
    if "db_session" not in g:
        g.db_session = runtime().sessions()
    return g.db_session


def _close_session(_exc: BaseException | None = None) -> None:
    session = g.pop("db_session", None)
    if session is not None:
        session.close()


def init_app(app: Flask, rt: Runtime) -> None:
    app.extensions[EXTENSION] = rt
    app.teardown_appcontext(_close_session)
