"""Who may change things: the API's bearer token, the dashboard's login session, CSRF.

* A mutating API call carries `Authorization: Bearer <ORCHESTRATOR_API_TOKEN>`, compared
  in constant time; anything else is `401`. With no token configured every mutating call
  is refused, so a server never runs open by accident.
* The dashboard's login form takes the same token. The signed session cookie holds a keyed
  fingerprint of it (changing the token logs every browser out) and the id of a login
  recorded in the database (logout ends it everywhere; see `sessions`, which also limits
  failed logins per client address).
* Every form that changes something carries a per-session CSRF token (checked in
  constant time); the cookie is `HttpOnly` and `SameSite=Lax`.
* Reads are open unless ORCHESTRATOR_WEB_READ_AUTH=1: then every GET except `/healthz`,
  the login form and the static assets (and `/metrics` with ORCHESTRATOR_METRICS_PUBLIC=1)
  needs the bearer token or a login; a page sends the reader to the login form, the API
  answers `401`.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import BadRequest, Unauthorized

from . import sessions
from .errors import wants_json

F = TypeVar("F", bound=Callable[..., Any])

bp = Blueprint("auth", __name__)

#: Endpoints anyone may read even with ORCHESTRATOR_WEB_READ_AUTH=1: the probe, the login
#: form, and the stylesheet and scripts it needs (code, no data).
OPEN_ENDPOINTS = frozenset({"health.healthz", "auth.login", "static"})
#: Methods that only read; the others have their own guards (token, login and CSRF).
READ_METHODS = frozenset({"GET", "HEAD"})


def session_secret(api_token: str | None, secret_key: str | None) -> str:
    """The cookie-signing key: the configured one, else derived from the token, else random."""
    if secret_key:
        return secret_key
    if api_token:
        return hmac.new(api_token.encode(), b"orchestrator web session", hashlib.sha256).hexdigest()
    return secrets.token_hex(32)


def token_ok(presented: str | None) -> bool:
    expected = current_app.config.get("API_TOKEN")
    if not expected or not presented:
        return False
    return hmac.compare_digest(presented.encode(), str(expected).encode())


def _fingerprint() -> str:
    token = str(current_app.config.get("API_TOKEN") or "")
    key = str(current_app.config["SECRET_KEY"]).encode()
    return hmac.new(key, token.encode(), hashlib.sha256).hexdigest()


def logged_in() -> bool:
    """A session of the current token whose login is still open on the server (once per request)."""
    if "logged_in" not in g:
        mark, login = session.get("auth"), session.get("login")
        g.logged_in = (
            bool(current_app.config.get("API_TOKEN"))
            and isinstance(mark, str)
            and isinstance(login, str)
            and hmac.compare_digest(mark.encode(), _fingerprint().encode())
            and sessions.session_alive(login)
        )
    return bool(g.logged_in)


def shown_logged_in() -> bool:
    """`logged_in` for templates: an error page still renders while the database is down."""
    try:
        return logged_in()
    except SQLAlchemyError:
        return False


def _bearer() -> str | None:
    """The token of an `Authorization: Bearer <token>` header (scheme case-blind), if any."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def require_token(view: F) -> F:
    """API views that change state: `401` unless the bearer token is right."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not current_app.config.get("API_TOKEN"):
            raise Unauthorized(
                "this server has no ORCHESTRATOR_API_TOKEN set, so every mutating call is "
                "refused; set it and restart"
            )
        presented = _bearer()
        if presented is None:
            raise Unauthorized("send the API token as 'Authorization: Bearer <token>'")
        if not token_ok(presented):
            raise Unauthorized("the API token is not valid")
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def csrf_token() -> str:
    """This session's CSRF token, created on first use (templates call it for forms)."""
    token = session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


def check_csrf() -> None:
    expected = session.get("csrf")
    presented = request.form.get("csrf_token", "")
    if not isinstance(expected, str) or not hmac.compare_digest(
        presented.encode(), expected.encode()
    ):
        raise BadRequest(
            "this form expired or was not sent from the dashboard (CSRF check failed); "
            "reload the page and try again"
        )


def _local(target: str | None) -> str | None:
    """`target` if it is a path on this site (no open redirects), else None."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return None
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc else None


def require_login(view: F) -> F:
    """Dashboard actions: a valid CSRF token, then a logged-in session (else to the login form)."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        check_csrf()
        if not logged_in():
            flash("Log in with the API token to do that.", "error")
            back = _local(request.form.get("next")) or request.path
            return redirect(url_for("auth.login", next=back))
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _gate_reads() -> Any:
    """With ORCHESTRATOR_WEB_READ_AUTH=1: a read needs the token or a login (module docstring)."""
    config = current_app.config
    if not config.get("READ_AUTH") or request.method not in READ_METHODS:
        return None
    if request.endpoint in OPEN_ENDPOINTS or (
        request.blueprint == "metrics" and config.get("METRICS_PUBLIC")
    ):
        return None
    presented = _bearer()
    if (presented is not None and token_ok(presented)) or logged_in():
        return None
    if wants_json():
        raise Unauthorized(
            "this server requires the API token to read (ORCHESTRATOR_WEB_READ_AUTH=1); send "
            "it as 'Authorization: Bearer <token>'"
            + ("" if config.get("API_TOKEN") else ", once ORCHESTRATOR_API_TOKEN is set")
        )
    query = request.query_string.decode("utf-8", "replace")
    return redirect(url_for("auth.login", next=request.path + ("?" + query if query else "")))


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    """The login form; a right token opens a login and returns to `next`."""
    target = _local(request.values.get("next")) or url_for("pages.overview")
    configured = bool(current_app.config.get("API_TOKEN"))
    if request.method == "POST":
        check_csrf()
        address = sessions.client_address()
        wait = sessions.count_attempt(address)
        if wait is not None:
            flash(f"Too many failed logins from your address; try again in {wait} s.", "error")
            page = render_template("login.html", next=target, configured=configured)
            return page, 429, {"Retry-After": str(wait)}
        if token_ok(request.form.get("token", "").strip()):
            sessions.forgive_attempt(address)
            session.clear()
            session["login"] = sessions.open_session()
            session["auth"] = _fingerprint()
            csrf_token()
            flash("Logged in.", "info")
            return redirect(target)
        flash("That token is not valid." if configured else "No API token is configured.", "error")
        return render_template("login.html", next=target, configured=configured), 401
    return render_template("login.html", next=target, configured=configured)


@bp.route("/logout", methods=["POST"])
def logout() -> Any:
    """End this login on the server (every copy of the cookie) and forget it here."""
    check_csrf()
    login = session.get("login")
    if isinstance(login, str):
        sessions.close_session(login)
    session.clear()
    g.pop("logged_in", None)
    flash("Logged out.", "info")
    return redirect(url_for("pages.overview"))


def init_app(app: Flask) -> None:
    sessions.init_app(app)
    app.before_request(_gate_reads)
