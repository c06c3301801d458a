"""A real `orchestrator web` process (waitress) for tests that need the dashboard over HTTP."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from orchestrator.settings import Settings
from orchestrator.tansu import free_port
from tests.fixtures.config import ROOT, settings_env
from tests.fixtures.waiting import wait_for
from tests.webtools import TOKEN


@dataclass
class WebProcess:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def web_process(settings: Settings, redis_url: str, tmp_path: Path, **env: str) -> Iterator[WebProcess]:
    """Start `orchestrator web` on a free port (token: `tests.webtools.TOKEN`); stopped after."""
    port = free_port()
    log = tmp_path / f"web-{port}.log"
    environment = {**settings_env(settings, redis_url), "ORCHESTRATOR_API_TOKEN": TOKEN, **env}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "web", "--port", str(port)],
            env=environment, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    web = WebProcess(process, port, log)
    try:
        wait_for(lambda: b"Serving on" in log.read_bytes() or process.poll() is not None, 30,
                 message="waitress to listen")
        assert process.poll() is None, f"orchestrator web exited early:\n{web.output()[-3000:]}"
        yield web
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
