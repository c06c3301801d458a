"""The dashboard and JSON API: an app factory and one blueprint per area.

    api      /api/...           JSON API (bearer token on every mutating call)
    pages    /, /runs, ...      server-rendered dashboard
    auth     /login, /logout    the dashboard's session login; closed reads
                                (ORCHESTRATOR_WEB_READ_AUTH=1)
    health   /healthz           database, broker and Kafka reachability
    metrics  /metrics           Prometheus text format
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, request

from orchestrator.runtime import Runtime
from orchestrator.settings import Settings

from . import context, errors

#: Largest request body accepted (a run's input travels in one).
MAX_BODY_BYTES = 1024 * 1024
#: Sent with every response; scripts only from our own static files, no framing.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the web app.

    Settings come from the environment unless `test_config` gives `SETTINGS` (a
    `Settings`) or `RUNTIME` (a prebuilt `Runtime`); its other keys are Flask config
    and win over the defaults (e.g. `API_TOKEN`, `SECRET_KEY`, `TESTING`).
    """
    from .auth import session_secret

    config = dict(test_config or {})
    rt: Runtime | None = config.pop("RUNTIME", None)
    settings: Settings = config.pop("SETTINGS", None) or (
        rt.settings if rt is not None else Settings.from_env()
    )
    rt = rt or Runtime(settings)
    token = config.get("API_TOKEN", settings.api_token)

    app = Flask(__name__)
    app.config.from_mapping(
        API_TOKEN=token,
        SECRET_KEY=session_secret(token, config.get("SECRET_KEY", settings.secret_key)),
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        SESSION_COOKIE_NAME="orchestrator_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.web_secure_cookie,  # and on every HTTPS request
        READ_AUTH=settings.web_read_auth,
        METRICS_PUBLIC=settings.metrics_public,
        KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        KAFKA_GROUP=settings.kafka_group,
        POLL_MS=2000,
    )
    app.config.update(config)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    context.init_app(app, rt)
    errors.register(app)

    from . import api, auth, health, metrics, pages

    app.register_blueprint(api.bp, url_prefix="/api")
    app.register_blueprint(pages.bp)
    app.register_blueprint(auth.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(metrics.bp)
    auth.init_app(app)
    metrics.init_app(app)
    pages.init_app(app)

    @app.after_request
    def security_headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "same-origin"
        if not request.path.startswith("/static/"):
            response.headers["Cache-Control"] = "no-store"
        return response

    return app


__all__ = ["create_app"]
