"""Where a dashboard login lives: server-side sessions, the failed-login limit, the cookie.

Both are rows in the database, the one store every web process (thread, pod) shares:

* A login is a random id in the signed cookie and its SHA-256 in `web_sessions`. Logout
  deletes the row, so a copy of the cookie stops working everywhere at once. A login lasts
  at most `SESSION_LIFETIME`.
* Each client address may try `LOGIN_ATTEMPTS` logins per `LOGIN_WINDOW` (a fixed window
  that starts with its first attempt); the next gets `429` with `Retry-After`. An attempt
  is counted *before* the token is checked, in one atomic upsert, so concurrent guesses
  cannot slip past the count; a successful login gives its attempt back. The address is
  the TCP peer's: behind a proxy all clients share the proxy's address (the app trusts no
  `X-Forwarded-For`).
* The cookie is `HttpOnly`, `SameSite=Lax`, and `Secure` when the request came over HTTPS
  or ORCHESTRATOR_WEB_SECURE_COOKIE is set. HTTPS means the WSGI server's own scheme;
  `X-Forwarded-Proto` is not believed, so behind a TLS-terminating proxy set the variable.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Flask, request
from flask.sessions import SecureCookieSessionInterface
from sqlalchemy import case, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from orchestrator.db.models import LoginFailures, WebSession

from . import context

#: Longest a login lasts, however active the browser.
SESSION_LIFETIME = timedelta(hours=12)
#: Login attempts one client address may make per window...
LOGIN_ATTEMPTS = 10
#: ...and the window.
LOGIN_WINDOW = timedelta(minutes=1)


def now() -> datetime:
    return datetime.now(UTC)


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def _aware(moment: datetime) -> datetime:
    """SQLite hands timestamps back without their (UTC) zone."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def client_address() -> str:
    return (request.remote_addr or "unknown")[:64]


# -- login sessions ---------------------------------------------------------------------------


def open_session() -> str:
    """Record a new login; returns the id the cookie carries (the table has only its digest)."""
    session_id = secrets.token_urlsafe(32)
    at = now()
    with context.runtime().sessions.begin() as db:
        db.execute(delete(WebSession).where(WebSession.expires_at <= at))
        db.add(WebSession(id=_digest(session_id), created_at=at, expires_at=at + SESSION_LIFETIME))
    return session_id


def session_alive(session_id: str) -> bool:
    """Whether this login is still open: not logged out, not expired."""
    found = context.db().execute(
        select(WebSession.expires_at).where(WebSession.id == _digest(session_id))
    ).scalar_one_or_none()
    return found is not None and _aware(found) > now()


def close_session(session_id: str) -> None:
    """End this login for every copy of its cookie."""
    with context.runtime().sessions.begin() as db:
        db.execute(delete(WebSession).where(WebSession.id == _digest(session_id)))


# -- the failed-login limit ---------------------------------------------------------------------


def count_attempt(address: str) -> int | None:
    """Count a login attempt of `address`; None if it may go on, else seconds until it may."""
    at = now()
    cutoff = at - LOGIN_WINDOW
    with context.runtime().sessions.begin() as db:
        failures, window_start = db.execute(_upsert_attempt(db, address, at, cutoff)).one()
    # Its own transaction: it never holds one address's row while waiting for another's.
    with context.runtime().sessions.begin() as db:
        db.execute(delete(LoginFailures).where(LoginFailures.window_start <= cutoff))
    if failures <= LOGIN_ATTEMPTS:
        return None
    left = (_aware(window_start) + LOGIN_WINDOW - at).total_seconds()
    return max(1, math.ceil(left))


def forgive_attempt(address: str) -> None:
    """A login succeeded: its attempt does not count against the address."""
    with context.runtime().sessions.begin() as db:
        db.execute(
            update(LoginFailures)
            .where(LoginFailures.address == address, LoginFailures.failures > 0)
            .values(failures=LoginFailures.failures - 1)
        )


def _upsert_attempt(db: Session, address: str, at: datetime, cutoff: datetime) -> Any:
    """One statement: start a window at `at` (count 1) or add 1 to the current window."""
    dialect = db.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    expired = LoginFailures.window_start <= cutoff
    statement = insert(LoginFailures).values(address=address, window_start=at, failures=1)
    return statement.on_conflict_do_update(
        index_elements=[LoginFailures.address],
        set_={
            "failures": case((expired, 1), else_=LoginFailures.failures + 1),
            "window_start": case((expired, at), else_=LoginFailures.window_start),
        },
    ).returning(LoginFailures.failures, LoginFailures.window_start)


# -- the cookie ---------------------------------------------------------------------------------


class SessionCookies(SecureCookieSessionInterface):
    """Flask's signed cookie, `Secure` also whenever the request itself came over HTTPS."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return super().get_cookie_secure(app) or request.is_secure


def init_app(app: Flask) -> None:
    app.session_interface = SessionCookies()
