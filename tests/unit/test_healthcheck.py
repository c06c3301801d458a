"""Container health checks: each names the failing component in one line and exits 1."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from orchestrator.healthcheck import (
    Unhealthy,
    check_database,
    check_web,
    check_worker,
    local_worker_node,
    main,
)


def fake_app(ping: Any) -> Any:
    return SimpleNamespace(control=SimpleNamespace(ping=ping))


def test_worker_is_healthy_when_its_own_node_answers_pong() -> None:
    seen = {}

    def ping(destination: list[str], timeout: float) -> list[dict]:
        seen.update(destination=destination, timeout=timeout)
        return [{"orchestrator@pod-1": {"ok": "pong"}}]

    check_worker(fake_app(ping), "orchestrator@pod-1", timeout=2)
    assert seen == {"destination": ["orchestrator@pod-1"], "timeout": 2}


def test_worker_is_unhealthy_when_no_node_answers() -> None:
    with pytest.raises(Unhealthy, match="orchestrator@pod-1 did not answer a ping within 2s"):
        check_worker(fake_app(lambda **_: []), "orchestrator@pod-1", timeout=2)


def test_worker_is_unhealthy_when_the_broker_is_unreachable() -> None:
    def ping(**_: Any) -> list[dict]:
        raise ConnectionError("Connection refused")

    with pytest.raises(Unhealthy, match="cannot reach the broker.*Connection refused"):
        check_worker(fake_app(ping), "orchestrator@pod-1")


def test_local_node_name_matches_the_worker_hostname_pattern() -> None:
    assert local_worker_node("orchestrator-worker-7d9f-abcde") == (
        "orchestrator@orchestrator-worker-7d9f-abcde"
    )


def test_database_without_schema_is_unhealthy(tmp_path: Path) -> None:
    with pytest.raises(Unhealthy, match="no such table: runs"):
        check_database(f"sqlite:///{tmp_path / 'empty.db'}")


def test_migrated_database_is_healthy(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ok.db'}"
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE runs (id TEXT PRIMARY KEY)"))
    engine.dispose()
    check_database(url)


@pytest.fixture
def web_url() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200 if self.path == "/healthz" else 503)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_web_is_healthy_on_200_and_unhealthy_otherwise(web_url: str) -> None:
    check_web(f"{web_url}/healthz", timeout=2)
    with pytest.raises(Unhealthy, match="answered HTTP 503"):
        check_web(f"{web_url}/broken", timeout=2)


def test_main_prints_one_line_and_exits_1(web_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["web", "--url", f"{web_url}/healthz"]) == 0
    assert main(["web", "--url", f"{web_url}/broken", "--timeout", "2"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("unhealthy: web check")


def test_database_at_head_requires_the_newest_migration(tmp_path: Path) -> None:
    from orchestrator.db.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'migrated.db'}"
    upgrade(url)
    check_database(url, at_head=True)

    stale = f"sqlite:///{tmp_path / 'stale.db'}"
    engine = create_engine(stale)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE runs (id TEXT PRIMARY KEY)"))
    engine.dispose()
    check_database(stale)
    with pytest.raises(Unhealthy, match="schema is at revision none.*orchestrator db upgrade"):
        check_database(stale, at_head=True)
