"""`orchestrator web [--host --port]` serves the dashboard and API with waitress."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from orchestrator.tansu import free_port
from tests.fixtures.config import ROOT, settings_env
from tests.fixtures.waiting import wait_for
from tests.webtools import TOKEN, WORKFLOWS


@pytest.fixture
def settings(settings):
    return settings.with_(workflows=WORKFLOWS)


def request(url: str, body: dict | None = None, token: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_web_command_serves_pages_and_the_api(runtime, settings, tmp_path):
    port = free_port()
    env = {**settings_env(settings), "ORCHESTRATOR_API_TOKEN": TOKEN}
    log = tmp_path / "web.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "web", "--host", "127.0.0.1", "--port", str(port)],
            env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: b"Serving on" in log.read_bytes(), 30, message="waitress to listen")
        status, health = request(f"{base}/healthz")
        assert status == 200 and health["checks"]["database"]["ok"]
        assert request(f"{base}/api/workflows/diamond/runs", {"input": {}})[0] == 401
        status, run = request(f"{base}/api/workflows/diamond/runs", {"input": {"n": 2}}, TOKEN)
        assert status == 201 and run["workflow"] == "diamond"
        with urllib.request.urlopen(f"{base}/runs/{run['id']}", timeout=10) as page:
            assert page.headers["Server"] == "orchestrator"
            assert run["id"] in page.read().decode()
    finally:
        process.terminate()
        process.wait(10)
    assert f"dashboard and API on http://127.0.0.1:{port}/" in log.read_text()
