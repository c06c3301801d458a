"""A process's wiring: settings, database, registry, Celery and the engine, built lazily.

Nothing is built at import time. `current()` gives this process's runtime and rebuilds
it after a fork (Celery's prefork children must not share the parent's connections).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from functools import cached_property

from celery import Celery
from sqlalchemy import Engine
from sqlalchemy.orm import Session, configure_mappers, sessionmaker

from .celery_app import CeleryDispatcher, create_celery_app
from .db.session import create_db_engine, session_factory
from .engine import WorkflowEngine
from .registry import Registry, load_workflows
from .settings import Settings


@dataclass
class Runtime:
    settings: Settings
    #: Test pooled connections before use; worker processes turn it off (see create_db_engine).
    pre_ping: bool = True

    @cached_property
    def db(self) -> Engine:
        return create_db_engine(self.settings.database_url, pre_ping=self.pre_ping)

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        # Configure the ORM mappers now, in one thread, rather than lazily under a global
        # lock on whichever thread first needs them.
        configure_mappers()
        return session_factory(self.db)

    @cached_property
    def registry(self) -> Registry:
        return load_workflows(self.settings.workflows)

    @cached_property
    def celery(self) -> Celery:
        return create_celery_app(self.settings)

    @cached_property
    def engine(self) -> WorkflowEngine:
        return WorkflowEngine(self.sessions, self.registry, CeleryDispatcher(self.celery), self.settings)

    @cached_property
    def heartbeats(self):  # type: ignore[no-untyped-def]
        from .executor import Heartbeats
        from .leases import LeaseBoard

        return Heartbeats(self.engine, LeaseBoard.from_env())

    def close(self) -> None:
        if "engine" in self.__dict__:
            self.engine.hot_path.dispose()
        if "db" in self.__dict__:
            self.db.dispose()


_lock = threading.Lock()
_current: Runtime | None = None
_pid: int | None = None


def current() -> Runtime:
    """This process's runtime, from the environment; rebuilt in a forked child."""
    global _current, _pid
    with _lock:
        if _current is None or _pid != os.getpid():
            if _current is not None and "db" in _current.__dict__:
                _current.db.dispose(close=False)  # the parent's connections stay the parent's
            if _current is not None and "engine" in _current.__dict__:
                _current.engine.hot_path.dispose(close=False)
            _current = Runtime(Settings.from_env(), pre_ping=False)
            _pid = os.getpid()
        return _current


def install(runtime: Runtime) -> None:
    """Use `runtime` as this process's runtime (the CLI and tests build their own)."""
    global _current, _pid
    with _lock:
        _current, _pid = runtime, os.getpid()
