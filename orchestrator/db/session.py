"""Engine and session factories. Nothing connects at import time."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from ..errors import ConfigurationError


def create_db_engine(url: str, *, pre_ping: bool = True, **kwargs: object) -> Engine:
    """An Engine for `url`; SQLite gets WAL, a busy timeout and writer-serialising BEGINs.

    `pre_ping` tests each pooled connection before use (survives a database restart
    without an error); workers turn it off to save a round trip per transaction and rely
    on the step task's retry when a stale connection fails.
    """
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)  # type: ignore[arg-type]

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            dbapi_conn.isolation_level = None  # let BEGIN below take over transactions
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):  # type: ignore[no-untyped-def]
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    try:
        if "poolclass" not in kwargs:
            kwargs = {"pool_size": 5, "max_overflow": 10, **kwargs}
        return create_engine(url, pool_pre_ping=pre_ping, pool_recycle=1800, **kwargs)  # type: ignore[arg-type]
    except Exception as exc:  # malformed URL, missing driver
        raise ConfigurationError(f"ORCHESTRATOR_DATABASE_URL is not usable: {exc}") from None


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
