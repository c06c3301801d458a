"""kombu's SQLAlchemy transport, polled often enough for dev-mode steps to follow each other fast.

kombu passes every transport option of this transport to `create_engine`, so the polling
interval cannot be set as an option; this subclass sets it instead.
"""

from __future__ import annotations

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport.sqlalchemy import Transport as SQLAlchemyTransport

#: Seconds between two polls of the SQLite message table when a queue is empty.
POLLING_INTERVAL = 0.05
ALIAS = "orchsqla"


class Transport(SQLAlchemyTransport):
    polling_interval = POLLING_INTERVAL


def broker_url(url: str) -> str:
    """Route `sqla+...` / `sqlalchemy+...` URLs to this transport."""
    TRANSPORT_ALIASES.setdefault(ALIAS, f"{__name__}:Transport")
    return ALIAS + "+" + url.split("+", 1)[1]
