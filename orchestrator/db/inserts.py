"""Bulk INSERTs that skip rows violating a unique constraint, on PostgreSQL and SQLite.

The Kafka consumer writes a poll batch (hundreds of events, their runs and steps) per
transaction. On PostgreSQL the rows travel as one JSON document turned back into typed rows
by `jsonb_to_recordset`, so the statement text is small and the same for every batch
(parsed and planned once, no thousands of placeholders, one C-speed `json.dumps`);
`ON CONFLICT DO NOTHING` drops the rows that would break a unique constraint, and
`RETURNING` tells which rows went in. A JSON `null` there becomes SQL NULL. SQLite gets the
same semantics from an executemany of its own `INSERT ... ON CONFLICT DO NOTHING`.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Column, LargeBinary, Table, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session

from ..errors import ConfigurationError


def insert_ignoring_conflicts(
    session: Session,
    table: Table,
    rows: Sequence[dict[str, Any]],
    *,
    conflict_columns: Sequence[str] | None = None,
    returning: Sequence[str] = (),
) -> list[tuple[Any, ...]]:
    """Insert `rows`, skipping each that conflicts; returns `returning` of those inserted.

    `conflict_columns` names the unique constraint to check; None skips a row that breaks
    any unique constraint. A column missing from a row is NULL (SQL NULL for JSON columns,
    never JSON `null`).
    """
    if not rows:
        return []
    dialect = session.get_bind().dialect
    if dialect.name == "postgresql":
        return _postgresql(session, dialect, table, rows, conflict_columns, returning, True)
    if dialect.name == "sqlite":
        return _sqlite(session, table, rows, conflict_columns, returning)
    raise ConfigurationError(f"bulk event recording needs PostgreSQL or SQLite, not {dialect.name}")


def insert_all(session: Session, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert `rows` (a conflict is an error), as fast as the database allows."""
    if not rows:
        return
    dialect = session.get_bind().dialect
    if dialect.name == "postgresql":
        _postgresql(session, dialect, table, rows, None, (), False)
    else:
        for group in _by_columns(rows):
            session.execute(table.insert(), group)


def _postgresql(
    session: Session,
    dialect: Dialect,
    table: Table,
    rows: Sequence[dict[str, Any]],
    conflict_columns: Sequence[str] | None,
    returning: Sequence[str],
    ignore_conflicts: bool,
) -> list[tuple[Any, ...]]:
    quote = dialect.identifier_preparer.quote
    present = set().union(*(row.keys() for row in rows))
    columns: list[Column[Any]] = [c for c in table.columns if c.name in present]
    binary = {c.name for c in columns if isinstance(c.type, LargeBinary)}
    definitions = [
        f"{quote(c.name)} {'TEXT' if c.name in binary else c.type.compile(dialect=dialect)}"
        for c in columns
    ]
    values = [
        f"decode(r.{quote(c.name)}, 'base64')" if c.name in binary else f"r.{quote(c.name)}"
        for c in columns
    ]
    records = [{c.name: row.get(c.name) for c in columns} for row in rows]
    if binary:
        for record in records:
            for name in binary:
                if record[name] is not None:
                    record[name] = base64.b64encode(record[name]).decode("ascii")
    statement = (
        f"INSERT INTO {quote(table.name)} ({', '.join(quote(c.name) for c in columns)}) "
        f"SELECT {', '.join(values)} FROM jsonb_to_recordset(CAST(:rows AS JSONB)) "
        f"AS r({', '.join(definitions)})"
    )
    if ignore_conflicts:
        target = f" ({', '.join(quote(c) for c in conflict_columns)})" if conflict_columns else ""
        statement += f" ON CONFLICT{target} DO NOTHING"
    params = {"rows": json.dumps(records, default=_json_default, allow_nan=False)}
    if returning:
        statement += f" RETURNING {', '.join(quote(c) for c in returning)}"
        return [tuple(r) for r in session.execute(text(statement), params)]
    session.execute(text(statement), params)
    return []


def _json_default(value: Any) -> Any:
    """Column values JSON has no type for, in the text form PostgreSQL parses back."""
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (uuid.UUID, Decimal)):
        return str(value)
    raise TypeError(f"cannot send {type(value).__name__} in a bulk insert")


def _sqlite(
    session: Session,
    table: Table,
    rows: Sequence[dict[str, Any]],
    conflict_columns: Sequence[str] | None,
    returning: Sequence[str],
) -> list[tuple[Any, ...]]:
    inserted: list[tuple[Any, ...]] = []
    for group in _by_columns(rows):
        statement = sqlite.insert(table).on_conflict_do_nothing(index_elements=conflict_columns)
        if returning:
            statement = statement.returning(*(table.c[name] for name in returning))
            inserted.extend(tuple(r) for r in session.execute(statement, group))
        else:
            session.execute(statement, group)
    return inserted


def _by_columns(rows: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Group rows by the columns they set (one executemany each): a column left out gets
    its SQL default (NULL), which for JSON columns differs from None (JSON `null`)."""
    groups: dict[frozenset[str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(frozenset(row), []).append(row)
    return list(groups.values())
