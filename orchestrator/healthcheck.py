"""Health checks for container probes, one per role, run as a separate short process.

    python -m orchestrator.healthcheck worker [--node NAME] [--skip-database]
    python -m orchestrator.healthcheck web [--url URL]
    python -m orchestrator.healthcheck database [--at-head]

Exit status 0 means healthy; anything else prints one line on stderr and exits 1, so a
Kubernetes exec probe or a compose `healthcheck` shows why. Each check is bounded by
`--timeout`; the probe's own timeout should be a little longer.

The worker check asks this container's Celery node, by name, for a `ping` over the
broker, so it proves the worker process is alive *and* consuming from the broker, which
a process check cannot. It finds the node by this host's name: start the worker with
`orchestrator worker --hostname orchestrator@%h` (Celery expands `%h` to the host name,
which in Kubernetes is the pod name and in compose the container's).
"""

from __future__ import annotations

import argparse
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .errors import OrchestratorError
from .settings import Settings

if TYPE_CHECKING:  # imported when a check needs them, so the web probe starts fast
    from celery import Celery
    from sqlalchemy import Connection

#: Seconds each check may take before the component counts as unhealthy.
DEFAULT_TIMEOUT = 5.0
#: Node name pattern the worker is started with; `%h` is the host name.
WORKER_NODE_PATTERN = "orchestrator@%h"
#: The web process's liveness endpoint, as the web command serves it by default.
DEFAULT_WEB_URL = "http://127.0.0.1:8080/healthz"


class Unhealthy(OrchestratorError):
    """A component failed its health check; the message says which and why."""


def local_worker_node(hostname: str | None = None) -> str:
    """The Celery node name of the worker in this container."""
    return WORKER_NODE_PATTERN.replace("%h", hostname or socket.gethostname())


def check_worker(app: Celery, node: str, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Raise `Unhealthy` unless Celery node `node` answers a ping within `timeout`."""
    try:
        replies = app.control.ping(destination=[node], timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - any broker failure means "cannot tell: unhealthy"
        raise Unhealthy(f"cannot reach the broker to ping {node}: {exc}") from None
    for reply in replies or ():
        if reply.get(node, {}).get("ok") == "pong":
            return
    raise Unhealthy(
        f"worker {node} did not answer a ping within {timeout:g}s (was it started with "
        f"--hostname {WORKER_NODE_PATTERN}?)"
    )


def check_database(url: str, timeout: float = DEFAULT_TIMEOUT, at_head: bool = False) -> None:
    """Raise `Unhealthy` unless the database at `url` answers and has the schema.

    With `at_head`, the schema must also be at the newest migration this code ships, so
    a pod of a new release waits (as an init container) for the migration job to finish.
    """
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.pool import NullPool

    from .db.session import create_db_engine

    options: dict[str, object] = {"poolclass": NullPool}
    if url.startswith("postgresql"):
        options["connect_args"] = {"connect_timeout": max(1, round(timeout))}
    engine = create_db_engine(url, **options)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1 FROM runs LIMIT 1"))
            if at_head:
                _check_revision(conn, url)
    except DBAPIError as exc:
        reason = str(exc.orig or exc).strip().splitlines()
        raise Unhealthy(
            f"database check failed: {reason[0] if reason else type(exc).__name__}"
        ) from None
    finally:
        engine.dispose()


def _check_revision(conn: Connection, url: str) -> None:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from .db.migrate import alembic_config

    current = set(MigrationContext.configure(conn).get_current_heads())
    expected = set(ScriptDirectory.from_config(alembic_config(url)).get_heads())
    if current != expected:
        raise Unhealthy(
            f"database schema is at revision {', '.join(sorted(current)) or 'none'}, this "
            f"release needs {', '.join(sorted(expected))}: run `orchestrator db upgrade`"
        )


def check_web(url: str = DEFAULT_WEB_URL, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Raise `Unhealthy` unless GET `url` answers 200 within `timeout`."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - local URL
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise Unhealthy(f"web check of {url} failed: {reason}") from None
    if status != 200:
        raise Unhealthy(f"web check of {url} answered HTTP {status}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.healthcheck",
        description="Container health checks.",
        allow_abbrev=False,
    )
    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    common.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds")
    roles = parser.add_subparsers(dest="role", required=True)

    def role(name: str, help: str) -> argparse.ArgumentParser:
        return roles.add_parser(name, parents=[common], allow_abbrev=False, help=help)

    worker = role("worker", "ping this container's Celery node, check the database")
    worker.add_argument("--node", default=None, help="node name (default: orchestrator@<host name>)")
    worker.add_argument(
        "--skip-database",
        action="store_true",
        help="only ping the node (for liveness: a database outage is no reason to restart)",
    )
    web = role("web", "GET the web process's /healthz")
    web.add_argument("--url", default=DEFAULT_WEB_URL)
    database = role("database", "check the database answers and has the schema")
    database.add_argument(
        "--at-head", action="store_true", help="also require the newest migration (init containers)"
    )
    return parser


def run(argv: Sequence[str] | None = None, settings: Settings | None = None) -> None:
    """Run the check `argv` names; raises `Unhealthy` (or `OrchestratorError`) if it fails."""
    args = _parser().parse_args(argv)
    if args.role == "web":
        check_web(args.url, args.timeout)
        return
    settings = settings or Settings.from_env()
    if args.role == "worker":
        from .celery_app import create_celery_app

        app = create_celery_app(settings)
        try:
            check_worker(app, args.node or local_worker_node(), args.timeout)
        finally:
            app.close()
        if args.skip_database:
            return
    check_database(settings.database_url, args.timeout, at_head=getattr(args, "at_head", False))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        run(argv)
    except OrchestratorError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
