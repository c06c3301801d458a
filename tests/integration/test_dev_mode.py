"""`orchestrator dev` as a user at a terminal sees it: it starts, answers, and stops everything.

Each test runs the real supervisor in a temporary working directory (its `.orchestrator/`
state goes there) on a free web port, so a test never depends on port 8080 being free.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.tansu import free_port
from tests.fixtures.config import ROOT
from tests.fixtures.waiting import wait_for

#: Seconds `orchestrator dev` may take to print its banner on a busy 2-core machine.
START_TIMEOUT = 120
#: Seconds every service gets to be gone after the supervisor is stopped or killed.
GONE_TIMEOUT = 20
#: The README's example event for the shipped `orders` trigger.
README_PUBLISH = re.compile(r"^orchestrator publish (\S+) '(\{.*\})'(.*)$", re.MULTILINE)


@dataclass
class Dev:
    process: subprocess.Popen[bytes]
    cwd: Path
    port: int
    env: dict[str, str]

    def output(self) -> str:
        return (self.cwd / "dev.log").read_text(errors="replace")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "orchestrator", *args], env=self.env,
                              cwd=self.cwd, capture_output=True, text=True, timeout=60)


def dev_env(port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    env["PYTHONPATH"] = str(ROOT)
    env["ORCHESTRATOR_WEB_PORT"] = str(port)
    return env


@pytest.fixture
def start_dev(tmp_path: Path) -> Iterator:
    """Start `orchestrator dev` in `tmp_path` on a free web port; killed (with its group) after."""
    started: list[Dev] = []

    def start(port: int | None = None) -> Dev:
        port = port or free_port()
        env = dev_env(port)
        with (tmp_path / "dev.log").open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "orchestrator", "dev"], cwd=tmp_path, env=env,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        dev = Dev(process, tmp_path, port, env)
        started.append(dev)
        return dev

    yield start
    for dev in started:
        if dev.process.poll() is None:
            left = descendants(dev.process.pid)
            os.killpg(dev.process.pid, signal.SIGKILL)
            dev.process.wait()
            for pid in left:  # whatever did not die with it (the defect under test)
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)


def wait_for_banner(dev: Dev) -> None:
    wait_for(lambda: "orchestrator dev is running" in dev.output() or dev.process.poll() is not None,
             START_TIMEOUT, 0.05, "dev to start")
    assert dev.process.poll() is None, dev.output()[-3000:]


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (children, their children, ...), from /proc."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                if child not in found:
                    found.add(child)
                    todo.append(child)
    return found


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped, does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def command_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ").strip()
    except OSError:
        return "?"


def assert_all_gone(pids: set[int]) -> None:
    deadline = time.monotonic() + GONE_TIMEOUT
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    left = {p: command_of(p) for p in pids if alive(p)}
    for pid in left:  # leave nothing behind for the next test
        os.kill(pid, signal.SIGKILL)
    assert not left, f"still running {GONE_TIMEOUT}s later: {left}"


def services_of(dev: Dev) -> set[int]:
    pids = descendants(dev.process.pid)
    commands = " | ".join(command_of(p) for p in pids)
    for service in ("orchestrator worker", "orchestrator consume", "orchestrator web", "tansu"):
        assert service in commands, f"no {service} among {commands}"
    return pids


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_dev_runs_the_examples_on_embedded_defaults_and_stops_cleanly(start_dev):
    dev = start_dev()
    wait_for_banner(dev)
    out = dev.cli("trigger", "sales-report", "--input", '{"sales": [3, 1, 2]}')
    assert out.returncode == 0, out.stderr
    run_id = out.stdout.split()[-1]

    def finished() -> dict | None:
        shown = dev.cli("run", run_id, "--json")
        run = json.loads(shown.stdout) if shown.returncode == 0 else {}
        return run if run.get("status") == "succeeded" else None

    run = wait_for(finished, 90, 1, "the example run to succeed")
    publish = {s["name"]: s for s in run["steps"]}["publish"]
    assert publish["result"] == {"count": 3, "sum": 6.0, "median": 2.0, "max": 3.0}
    os.killpg(dev.process.pid, signal.SIGINT)
    code = dev.process.wait(60)
    assert "stopped" in dev.output(), dev.output()[-3000:]
    assert code == 0


def test_the_readme_publish_examples_start_the_shipped_workflow(start_dev):
    readme = (ROOT / "README.md").read_text()
    examples = [m.groups() for m in README_PUBLISH.finditer(readme) if m.group(1) == "orders"]
    assert len(examples) >= 2  # a JSON event and a CloudEvent, each as a user would type it
    dev = start_dev()
    wait_for_banner(dev)
    for topic, payload, rest in examples:
        sent = dev.cli("publish", topic, payload, *shlex.split(rest))
        assert sent.returncode == 0, sent.stderr

    def started() -> list | None:
        listed = dev.cli("runs", "--workflow", "order-fulfilment", "--status", "succeeded", "--json")
        runs = json.loads(listed.stdout) if listed.returncode == 0 else []
        return runs if len(runs) >= len(examples) else None

    def rejected() -> str:
        return dev.cli("events", "--outcome", "rejected").stdout

    try:
        wait_for(started, 60, 1, "a run of order-fulfilment from each of the README's events")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; rejected events: {rejected()}") from None


def test_dev_gives_the_consumer_of_its_embedded_tansu_a_short_fetch_wait(start_dev):
    """Tansu answers a waiting fetch only when its wait is over: kafka-python's 0.5 s
    would hold every event that long, so dev mode's consumer gets 0.01 s."""
    dev = start_dev()
    wait_for_banner(dev)
    consumers = [p for p in services_of(dev) if "orchestrator consume" in command_of(p)]
    assert consumers, dev.output()[-3000:]
    environ = Path(f"/proc/{consumers[0]}/environ").read_bytes().split(b"\0")
    assert b"ORCHESTRATOR_KAFKA_FETCH_MAX_WAIT=0.01" in environ


def test_banner_comes_once_every_service_answers_and_sighup_stops_them_all(start_dev):
    dev = start_dev()
    wait_for_banner(dev)
    # The banner promises a dashboard: it answers at once, not a moment later.
    with urllib.request.urlopen(f"http://127.0.0.1:{dev.port}/healthz", timeout=10) as health:
        assert health.status == 200
    pids = services_of(dev)
    os.kill(dev.process.pid, signal.SIGHUP)  # the terminal was closed
    assert dev.process.wait(GONE_TIMEOUT + 10) == 0, dev.output()[-3000:]
    assert_all_gone(pids)
    assert port_is_free(dev.port)


def test_a_killed_dev_takes_every_service_with_it(start_dev):
    dev = start_dev()
    wait_for_banner(dev)
    pids = services_of(dev)
    os.kill(dev.process.pid, signal.SIGKILL)
    dev.process.wait(10)
    assert_all_gone(pids)
    assert port_is_free(dev.port)


def test_a_taken_web_port_is_one_line_naming_the_setting(start_dev):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        dev = start_dev(port=taken.getsockname()[1])
        code = dev.process.wait(START_TIMEOUT)
    output = dev.output()
    assert code == 1, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert "is running" not in output
    lines = [line for line in output.splitlines() if "ORCHESTRATOR_WEB_PORT" in line]
    assert len(lines) == 1 and f"port {dev.port}" in lines[0] and "in use" in lines[0], output
