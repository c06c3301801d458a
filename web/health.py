"""GET /healthz: can this web process reach the database, the broker and Kafka?

Each check runs in its own thread with a deadline, so one hung dependency cannot hang
the probe. `200` when every configured dependency answers, `503` otherwise; Kafka is
reported as not configured (and does not fail the probe) without ORCHESTRATOR_KAFKA_BOOTSTRAP.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from flask import Blueprint, current_app, jsonify
from sqlalchemy import text

from orchestrator.kafka import check_connection

from . import context, kafka_admin
from .kafka_admin import PROBE_TIMEOUT_MS

bp = Blueprint("health", __name__)

#: Seconds the whole probe waits for its checks.
DEADLINE = PROBE_TIMEOUT_MS / 1000 + 1.0


def check_database() -> str:
    with context.runtime().db.connect() as conn:
        conn.execute(text("SELECT 1 FROM runs LIMIT 1"))
    return "answers, schema present"


def check_broker() -> str:
    with context.runtime().celery.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=PROBE_TIMEOUT_MS / 1000)
    return f"connected ({conn.transport_cls})"


def check_kafka(bootstrap: str) -> str:
    """Brokers in the cluster; a refused TLS handshake or login says which setting is wrong."""
    settings = context.settings().with_(kafka_bootstrap=bootstrap)
    if not check_connection(settings, timeout=PROBE_TIMEOUT_MS / 1000):
        raise ConnectionError(f"no broker answers at {bootstrap}")
    return f"{kafka_admin.ping(settings)} broker(s)"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


@bp.get("/healthz")
def healthz() -> Any:
    """Reachability of database, broker and Kafka; 503 when any is down."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    checks: dict[str, Callable[[], str]] = {"database": check_database, "broker": check_broker}
    bootstrap = app.config.get("KAFKA_BOOTSTRAP")
    if bootstrap:
        checks["kafka"] = lambda: check_kafka(bootstrap)

    def timed(check: Callable[[], str]) -> tuple[str, float]:
        with app.app_context():
            began = time.perf_counter()
            return check(), (time.perf_counter() - began) * 1000

    results: dict[str, dict[str, Any]] = {}
    pool = ThreadPoolExecutor(max_workers=len(checks), thread_name_prefix="healthz")
    try:
        futures = {name: pool.submit(timed, check) for name, check in checks.items()}
        deadline = time.monotonic() + DEADLINE
        for name, future in futures.items():
            try:
                detail, ms = future.result(timeout=max(deadline - time.monotonic(), 0.01))
                results[name] = {"ok": True, "detail": detail, "ms": round(ms, 1)}
            except FutureTimeout:
                results[name] = {"ok": False, "detail": f"no answer within {DEADLINE:g}s"}
            except Exception as exc:  # noqa: BLE001 - any failure means "down", said in one line
                results[name] = {"ok": False, "detail": _first_line(exc)}
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    if not bootstrap:
        results["kafka"] = {"ok": None, "detail": "not configured (ORCHESTRATOR_KAFKA_BOOTSTRAP is unset)"}
    healthy = all(r["ok"] is not False for r in results.values())
    return jsonify(status="ok" if healthy else "unhealthy", checks=results), 200 if healthy else 503
