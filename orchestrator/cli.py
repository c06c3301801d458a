"""The `orchestrator` command line (a Click group installed as a console script)."""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import socket
from collections.abc import Callable
from typing import Any, TypeVar

import click
from sqlalchemy.exc import DBAPIError, OperationalError

from . import tracing
from .db.queries import LIST_STATUSES
from .errors import ConfigurationError, OrchestratorError
from .runtime import Runtime, install
from .settings import Settings
from .versions import not_deployed

F = TypeVar("F", bound=Callable[..., Any])


def _db_reason(exc: DBAPIError) -> str:
    text = str(exc.orig) if exc.orig is not None else str(exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def friendly_errors(fn: F) -> F:
    """Turn a user-caused error into one line on stderr and exit status 1, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except OrchestratorError as exc:
            raise click.ClickException(str(exc)) from None
        except OperationalError as exc:
            raise click.ClickException(f"cannot reach the database: {_db_reason(exc)}") from None
        except DBAPIError as exc:
            raise click.ClickException(
                f"database error: {_db_reason(exc)} (is the schema up to date? run "
                "`orchestrator db upgrade`)"
            ) from None

    return wrapper  # type: ignore[return-value]


def _runtime() -> Runtime:
    runtime = Runtime(Settings.from_env())
    install(runtime)
    return runtime


def _message_headers(header_args: tuple[str, ...], ce_type: str | None,
                     source: str | None) -> list[tuple[str, bytes]]:
    """`publish`'s headers: a CloudEvent's (--cloudevent), then each --header NAME=VALUE
    (replacing a CloudEvent header of the same name)."""
    if source is not None and ce_type is None:
        raise click.UsageError("--source is the source of a CloudEvent: give --cloudevent TYPE too")
    given: list[tuple[str, bytes]] = []
    for arg in header_args:
        name, sep, value = arg.partition("=")
        if not sep or not name:
            raise click.ClickException(f"--header {arg!r}: expected NAME=VALUE (a header name, '=', its value)")
        given.append((name, value.encode()))
    if ce_type is None:
        return given
    if not ce_type or not source:
        raise click.UsageError("--cloudevent TYPE needs a non-empty TYPE and --source SRC")
    import uuid

    from .clock import now
    from .formats import binary_headers

    names = {name.lower() for name, _ in given}
    cloudevent = [(n, v) for n, v in binary_headers(ce_type, source, str(uuid.uuid4()), now())
                  if n not in names]
    return cloudevent + given


def _json_arg(raw: str, what: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise click.ClickException(f"{what} is not valid JSON: {exc.msg} at position {exc.pos}") from None


@click.group()
@click.version_option(package_name="kafka-orchestrator")
@click.option("--log-level", default="INFO", show_default=True, envvar="ORCHESTRATOR_LOG_LEVEL")
@click.pass_context
def main(ctx: click.Context, log_level: str) -> None:
    """Event-driven workflow orchestrator: Kafka events in, Celery steps out, state in SQL."""
    from . import logs

    try:
        logs.configure(log_level, None)
        tracing.configure(f"orchestrator-{ctx.invoked_subcommand or 'cli'}")
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # start-up noise


# -- schema ---------------------------------------------------------------------------


@main.group()
def db() -> None:
    """Database schema commands."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@friendly_errors
def db_upgrade(revision: str) -> None:
    """Create or migrate the schema with Alembic."""
    from .db.migrate import upgrade

    settings = Settings.from_env()
    result = upgrade(settings.database_url, revision)
    where = f"database at {_safe_url(settings.database_url)} is at revision {revision}"
    if result.changed:
        before = ", ".join(result.before) or "an empty schema"
        click.echo(f"{where}: upgraded from {before} to {', '.join(result.after)}")
    else:
        click.echo(f"{where}: already at {revision} ({', '.join(result.after) or 'empty'}), nothing to do")


def _safe_url(url: str) -> str:
    """A database or broker URL with its password hidden, for printing."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not an SQLAlchemy URL (a broker URL)
        if "@" in url and "://" in url:
            scheme, rest = url.split("://", 1)
            creds, host = rest.rsplit("@", 1)
            user = creds.split(":", 1)[0]
            return f"{scheme}://{user}:***@{host}"
        return url


# -- workflows and runs ----------------------------------------------------------------


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@friendly_errors
def workflows(as_json: bool) -> None:
    """List loaded workflows with their steps, queues, triggers and versions.

    Each shows its current version and the versions that still have active (pending or
    running) runs; a workflow the loaded code lacks that still has active runs (a deploy
    removed it) is listed too, with a warning. Without a database, versions are skipped.
    """
    rt = _runtime()
    registry = rt.registry
    report, unknown = _versions_report(rt)
    items = [{**w.describe(), "loaded": True, "versions": _versions_of(report, w.name)} for w in registry]
    gone = [r for r in (report or []) if not r.loaded]
    warnings = [not_deployed(r.workflow, r.active_runs, rt.settings.version_grace) for r in gone]
    if unknown:
        click.echo(f"warning: versions and active runs are unknown: {unknown}", err=True)
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        items += [
            {"name": r.workflow, "loaded": False, "version": None, "active_runs": r.active_runs,
             "versions": [v.as_dict() for v in r.live], "warning": warning}
            for r, warning in zip(gone, warnings, strict=True)
        ]
        click.echo(json.dumps(items, indent=2))
        return
    if not items and not gone:
        click.echo("no workflows loaded (ORCHESTRATOR_WORKFLOWS={})".format(",".join(Settings.from_env().workflows)))
    for item in items:
        click.echo(f"{item['name']}  version {item['version']}")
        for version in item["versions"] or []:
            if version["active_runs"]:
                current = " (current)" if version["version"] == item["version"] else ""
                click.echo(f"  version {version['version']}{current}: {_active(version['active_runs'])}")
        if item.get("fail_on", "any") != "any":
            click.echo(f"  fail_on={item['fail_on']}")
        for step in item["steps"]:
            after = f" after {', '.join(step['after'])}" if step["after"] else ""
            rule = step.get("trigger_rule", "all_success")
            if rule != "all_success":
                after += f" [{rule}]"
            if step.get("wait") is not None:
                click.echo(f"  {step['kind']} {step['name']}{after} ({_wait_line(step['wait'])})")
                continue
            extras = [f"queue={step['queue']}"]
            if step["retries"]:
                extras.append(f"retries={step['retries']}")
            if step["timeout"]:
                extras.append(f"timeout={step['timeout']:g}s")
            if step["conditional"]:
                extras.append("conditional")
            what = "on_failure" if step["kind"] == "on_failure" else "step"
            click.echo(f"  {what} {step['name']}{after} ({', '.join(extras)})")
        for trigger in item["triggers"]:
            if trigger["type"] == "schedule":
                click.echo(f"  trigger schedule cron={trigger['cron']!r} timezone={trigger['timezone']} "
                           f"catchup={trigger['catchup']}")
                continue
            match = json.dumps(trigger["match"]) if trigger["match"] is not None else "every event"
            click.echo(f"  trigger kafka topic={trigger['topic']} match={match}")
    for r in gone:
        click.echo(f"{r.workflow}  not loaded: {_active(r.active_runs)}")
        for version in r.live:
            click.echo(f"  version {version.version}: {_active(version.active_runs)}")
    if items:
        queues = sorted({s["queue"] for i in items for s in i["steps"] if s.get("wait") is None})
        click.echo(f"queues to serve: {', '.join(queues)}")


def _wait_line(wait: dict[str, Any]) -> str:
    """What a waiting node waits for, as `orchestrator workflows` shows it."""
    from .waits import span

    parts = []
    if wait.get("topic"):
        parts.append(f"topic={wait['topic']}")
        if wait.get("match"):
            parts.append(f"match={json.dumps(wait['match'])}")
        if wait.get("correlate"):
            parts.append(f"correlate={','.join(wait['correlate'])}")
    for option in ("duration", "timeout", "lookback"):
        if wait.get(option):
            parts.append(f"{option}={span(wait[option])}")
    if wait.get("until"):
        parts.append("until=<function>")
    if wait.get("timeout") and wait.get("on_timeout"):
        parts.append(f"on_timeout={wait['on_timeout']}")
    return ", ".join(parts) or "waits for a decision"


def _active(count: int) -> str:
    return f"{count} active run{'' if count == 1 else 's'}"


def _versions_report(rt: Runtime) -> tuple[list[Any] | None, str | None]:
    """Every workflow's versions and live runs, or (None, why) when the database cannot
    say: listing the loaded code must work without one (e.g. to check a deploy)."""
    from .db.versions import by_workflow

    try:
        with rt.sessions() as session:
            return by_workflow(session, rt.registry), None
    except OperationalError as exc:
        return None, f"cannot reach the database: {_db_reason(exc)}"
    except DBAPIError as exc:
        return None, f"database error: {_db_reason(exc)} (run `orchestrator db upgrade`)"


def _versions_of(report: list[Any] | None, name: str) -> list[dict[str, Any]] | None:
    """The JSON versions of workflow `name` (None: unknown, without a database)."""
    if report is None:
        return None
    return next(([v.as_dict() for v in r.versions] for r in report if r.workflow == name), [])


@main.command()
@click.argument("name")
@click.option("--input", "input_json", default="{}", show_default=True, help="Run input, a JSON object.")
@friendly_errors
def trigger(name: str, input_json: str) -> None:
    """Start a run of workflow NAME by hand; prints the run id last."""
    data = _json_arg(input_json, "--input")
    run_id = _runtime().engine.start_run(name, data)
    click.echo(f"started run of {name}: {run_id}")


@main.command()
@click.option("--workflow", default=None, help="Only runs of this workflow.")
@click.option("--status", type=click.Choice(LIST_STATUSES), default=None,
              help="Only runs in this status; `waiting`: live runs with a node waiting.")
@click.option("--version", "version", default=None, metavar="V",
              help="Only runs on this workflow version (see `orchestrator workflows`).")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@friendly_errors
def runs(workflow: str | None, status: str | None, version: str | None, limit: int, as_json: bool) -> None:
    """List runs, newest first, with the version each is on."""
    from .db.queries import list_runs, run_dict, waits_of_runs

    rt = _runtime()
    with rt.sessions() as session:
        found = list_runs(
            session, workflow=workflow, status=status, version=version, limit=limit, with_steps=as_json
        )
        waits = waits_of_runs(session, [r.id for r in found]) if as_json else {}
        items = [run_dict(r, with_steps=as_json, waits=waits.get(r.id)) for r in found]
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    if not items:
        click.echo("no runs")
    for item in items:
        click.echo(
            f"{item['id']}  {item['workflow']:<24} {item['status']:<10} {item['created_at']}  "
            f"{item['version'] or '-'}"
        )


@main.command("run")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@friendly_errors
def show_run(run_id: str, as_json: bool) -> None:
    """Show one run with its steps, their attempts, what waiting nodes wait for, each
    map's progress, each call node's child run, and the run's parent and children."""
    from .db.composed import planned_structure, run_detail
    from .db.queries import get_run
    from .db.versions import of_run

    rt = _runtime()
    with rt.sessions() as session:
        run = get_run(session, run_id)
        versions = of_run(session, run.workflow, run.version, rt.registry.find(run.workflow))
        item = run_detail(session, run, planned_structure(versions))
    if as_json:
        click.echo(json.dumps(item, indent=2))
        return
    click.echo(f"run {item['id']} of {item['workflow']}: {item['status']}")
    click.echo(f"  version: {item['version'] or 'none (started before versions)'}")
    click.echo(f"  input: {json.dumps(item['input'])}")
    click.echo(f"  created {item['created_at']}  started {item['started_at']}  finished {item['finished_at']}")
    if item["error"]:
        click.echo(f"  error: {item['error']}")
    if item["parent_run_id"]:
        how = "ctx.start_run, detached" if item["detached"] else "call node"
        click.echo(f"  parent: run {item['parent_run_id']} (step {item['parent_step']}, {how})")
    if item["output"] is not None:
        click.echo(f"  output: {json.dumps(item['output'])}")
    for step in item["steps"]:
        click.echo(f"  step {step['name']}: {step['status']}" + _map_note(step["map"]))
        if step["child_run_id"]:
            click.echo(f"    child run: {step['child_run_id']}")
        if step["result"] is not None:
            click.echo(f"    result: {json.dumps(step['result'])}")
        if step["error"]:
            click.echo(f"    error: {step['error']}")
        if step["wait"]:
            click.echo(f"    {_describe_wait(step['wait'])}")
        for attempt in step["attempts"]:
            click.echo(
                f"    attempt {attempt['number']} {attempt['status']} on {attempt['worker']} "
                f"{attempt['started_at']} -> {attempt['finished_at']}"
                + (f": {attempt['error']}" if attempt["error"] else "")
            )
    if item["children"]:
        click.echo(f"  children ({len(item['children'])}, newest first):")
        for child in item["children"]:
            click.echo(
                f"    {child['id']}  {child['workflow']:<24} {child['status']:<10} step {child['step']}"
                + ("  detached" if child["detached"] else "")
            )


def _map_note(progress: dict[str, int] | None) -> str:
    """`  map 37/100 done, 2 failed` after a map node's status; nothing for other nodes."""
    if progress is None:
        return ""
    note = f"  map {progress['done']}/{progress['total']} done"
    if progress["failed"]:
        note += f", {progress['failed']} failed"
    if progress["cancelled"]:
        note += f", {progress['cancelled']} cancelled"
    return note


def _describe_wait(wait: dict[str, Any]) -> str:
    """One line: what a waiting node waits for and how it ended."""
    if wait["kind"] == "event":
        what = f"event on {wait['topic']} matching {json.dumps(wait['match'] or {})}"
        if wait["correlate"]:
            what += f" with {json.dumps(wait['correlate'])}"
    elif wait["kind"] == "approval":
        what = "a decision"
    elif wait["kind"] == "call":
        what = "its child run"
    else:
        what = "its timer"
    line = f"{wait['status']}: waits for {what}"
    if wait["due_at"]:
        line += f" until {wait['due_at']}"
    if wait["event_id"] is not None:
        line += f"; completed by event {wait['event_id']}"
    if wait["decision"]:
        line += f"; decided by {wait['decided_by'] or '?'} at {wait['closed_at']}"
        if wait["comment"]:
            line += f": {wait['comment']}"
    return line


#: Who a decision made on the command line is recorded as.
CLI_DECIDER = "cli"


@main.command()
@click.argument("run_id")
@click.argument("step")
@click.option("--reject", is_flag=True, help="Reject (the node fails with the comment as its error).")
@click.option("--comment", default=None, help="Why; stored and shown with the decision.")
@friendly_errors
def approve(run_id: str, step: str, reject: bool, comment: str | None) -> None:
    """Approve (or --reject) the waiting approval STEP of run RUN_ID."""
    decision = "reject" if reject else "approve"
    outcome = _runtime().engine.decide(run_id, step, decision, comment, CLI_DECIDER)
    said = f": {outcome['comment']}" if outcome["comment"] else ""
    verb = "rejected" if reject else "approved"
    click.echo(f"{verb} {step} of run {run_id}{said}")


@main.command()
@click.argument("run_id")
@friendly_errors
def cancel(run_id: str) -> None:
    """Cancel a live run: nothing new starts, queued steps are revoked."""
    if _runtime().engine.cancel_run(run_id):
        click.echo(f"cancelled run {run_id}")
    else:
        raise click.ClickException(f"run {run_id} has already finished")


@main.command()
@click.argument("run_id")
@click.option("--current-version", is_flag=True,
              help="Re-plan the run on the loaded (current) version of its workflow: steps in "
                   "both keep their succeeded results, new steps run. Default: the run's own version.")
@friendly_errors
def retry(run_id: str, current_version: bool) -> None:
    """Re-run a finished run's failed and cancelled steps and what depends on them."""
    rt = _runtime()
    if not rt.engine.retry_run(run_id, current_version=current_version):
        raise click.ClickException(f"run {run_id} is still running or has nothing to retry")
    if current_version:
        from .db.queries import get_run

        with rt.sessions() as session:
            version = get_run(session, run_id).version
        click.echo(f"retrying run {run_id} on the current version {version}")
    else:
        click.echo(f"retrying run {run_id}")


# -- schedules -------------------------------------------------------------------------


@main.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_context
@friendly_errors
def schedules(ctx: click.Context, as_json: bool) -> None:
    """List the loaded workflows' cron schedules: next fire time, last run, paused.

    `orchestrator schedules pause|resume WORKFLOW` pauses or resumes a workflow's schedules.
    """
    if ctx.invoked_subcommand is not None:
        return
    from .scheduler import list_schedules

    rt = _runtime()
    with rt.sessions() as session:
        items = list_schedules(session, rt.registry)
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    if not items:
        click.echo("no schedules (give a workflow triggers=[schedule(cron, ...)])")
        return
    click.echo(f"{'WORKFLOW':<24} {'CRON':<16} {'TIMEZONE':<16} {'NEXT FIRE (UTC)':<26} "
               f"{'LAST RUN':<37} PAUSED")
    for item in items:
        click.echo(
            f"{item['workflow']:<24} {item['cron']:<16} {item['timezone']:<16} "
            f"{item['next_fire_at'] or '-':<26} {item['last_run_id'] or '-':<37} "
            f"{'yes' if item['paused'] else 'no'}"
        )
        if item["last_error"]:
            click.echo(f"  last error: {item['last_error']}")


def _pause(workflow: str, paused: bool) -> None:
    from .scheduler import set_paused

    rt = _runtime()
    with rt.sessions() as session:
        items = set_paused(session, rt.registry, workflow, paused)
    verb = "paused" if paused else "resumed"
    click.echo(f"{verb} {len(items)} schedule(s) of {workflow}: {', '.join(i['cron'] for i in items)}")


@schedules.command("pause")
@click.argument("workflow")
@friendly_errors
def schedules_pause(workflow: str) -> None:
    """Stop WORKFLOW's schedules from starting runs (until resumed)."""
    _pause(workflow, True)


@schedules.command("resume")
@click.argument("workflow")
@friendly_errors
def schedules_resume(workflow: str) -> None:
    """Start WORKFLOW's schedules again, from now on: ticks missed while paused do not fire."""
    _pause(workflow, False)


# -- services --------------------------------------------------------------------------


@main.command()
@click.option("--concurrency", "-c", type=click.IntRange(1, 512), default=None,
              help="Worker processes (default: CPU count).")
@click.option("--queues", "-Q", default=None,
              help="Comma-separated queues to serve (default: every queue the loaded workflows use).")
@click.option("--hostname", "-n", default=None, help="Celery node name (default: orchestrator@<host>-<pid>).")
@click.option("--shards", default=None,
              help="Serve shard queues <workflow>.shard-<i> of every sharded workflow: 'all' or "
                   "indices such as 0,2-3. With --shards alone, only those shard queues.")
@click.option("--no-recovery", is_flag=True, help="Do not run the recovery loop in this worker.")
@click.option("--shutdown-timeout", type=click.FloatRange(0), default=None,
              envvar="ORCHESTRATOR_WORKER_SHUTDOWN_TIMEOUT",
              help="Seconds after SIGTERM before steps still running are handed back to other "
                   "workers (default: 60).")
@friendly_errors
def worker(concurrency: int | None, queues: str | None, shards: str | None, hostname: str | None,
           no_recovery: bool, shutdown_timeout: float | None) -> None:
    """Run a Celery worker that executes workflow steps.

    SIGTERM stops it gracefully: reserved messages go back to the broker, running steps
    finish (or are handed back after --shutdown-timeout), then it exits with status 0.
    """
    from .worker import DEFAULT_SHUTDOWN_TIMEOUT, run_worker

    rt = _runtime()
    registry = rt.registry  # load and validate before forking children
    selected = [q.strip() for q in queues.split(",") if q.strip()] if queues else []
    if shards:
        selected += shard_queues_for(registry, shards)
    elif not queues:
        selected = sorted(registry.queues | {"orchestrator"})
    if not selected:
        raise click.ClickException(f"--shards {shards} selects no queue: no loaded workflow has shards")
    _check_database(rt)
    argv = [
        "worker",
        "--loglevel=INFO",
        "--pool=prefork",
        f"--queues={','.join(selected)}",
        f"--hostname={hostname or f'orchestrator@{socket.gethostname()}-{os.getpid()}'}",
        "--without-gossip",
        "--without-mingle",
    ]
    if concurrency:
        argv.append(f"--concurrency={concurrency}")
    click.echo(f"worker serving queues {', '.join(selected)} with {len(registry)} workflow(s)")
    _announce_when_celery_is_ready()
    run_worker(rt, argv, recovery=not no_recovery,
               shutdown_timeout=DEFAULT_SHUTDOWN_TIMEOUT if shutdown_timeout is None else shutdown_timeout)


def _announce_when_celery_is_ready() -> None:
    """Tell `orchestrator dev`, if it started this worker, once Celery takes messages."""
    from celery import signals

    from .supervision import announce_ready

    signals.worker_ready.connect(lambda **_: announce_ready(), weak=False)


def shard_queues_for(registry: Any, spec: str) -> list[str]:
    """Queues of the shards `spec` names ('all', or '0,2-3') in every sharded workflow."""
    wanted: set[int] | None = None
    if spec.strip() != "all":
        wanted = set()
        for part in spec.split(","):
            part = part.strip()
            try:
                if "-" in part:
                    low, high = (int(x) for x in part.split("-", 1))
                    wanted.update(range(low, high + 1))
                elif part:
                    wanted.add(int(part))
            except ValueError:
                raise click.ClickException(
                    f"--shards {spec!r}: use 'all' or shard numbers such as 0,2-3"
                ) from None
    queues = []
    for workflow in registry:
        for index, queue in enumerate(workflow.shard_queues):
            if wanted is None or index in wanted:
                queues.append(queue)
    return queues


def _check_database(rt: Runtime) -> None:
    from sqlalchemy import text

    with rt.db.connect() as conn:
        try:
            conn.execute(text("SELECT 1 FROM runs LIMIT 1"))
        except OperationalError:
            raise
        except DBAPIError:
            raise ConfigurationError(
                "the database has no orchestrator schema; run `orchestrator db upgrade`"
            ) from None


#: Request threads of `orchestrator web` (waitress) when --threads is not given.
WEB_THREADS = 8


@main.command("web")
@click.option("--host", default=None, help="Interface to listen on (default: ORCHESTRATOR_WEB_HOST or 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Port to listen on (default: ORCHESTRATOR_WEB_PORT or 8080).")
@click.option("--threads", type=click.IntRange(1, 256), default=WEB_THREADS, show_default=True)
@click.option("--shutdown-timeout", type=click.FloatRange(0), default=None,
              envvar="ORCHESTRATOR_WEB_SHUTDOWN_TIMEOUT",
              help="Seconds requests in flight get to finish after SIGTERM (default: 20).")
@friendly_errors
def web_command(host: str | None, port: int | None, threads: int, shutdown_timeout: float | None) -> None:
    """Serve the dashboard and JSON API with waitress (a production WSGI server).

    SIGTERM stops it gracefully: no new connections, requests in flight are answered
    (for --shutdown-timeout seconds at most), then it exits with status 0.
    """
    from web import create_app
    from web.server import DEFAULT_SHUTDOWN_TIMEOUT, serve

    rt = _runtime()
    rt.registry  # noqa: B018 - load and validate the workflows before serving
    settings = rt.settings
    if settings.kafka_bootstrap:
        from .kafka import check_connection

        check_connection(settings)  # a refused TLS handshake or login stops it; an outage does not
    host = host or settings.web_host
    port = port or settings.web_port
    if not settings.api_token:
        click.echo(
            "warning: ORCHESTRATOR_API_TOKEN is not set: pages and reads work, "
            "every action and mutating API call is refused",
            err=True,
        )
    click.echo(f"dashboard and API on http://{host}:{port}/ (API document: /api/openapi.json)")
    try:
        serve(create_app({"RUNTIME": rt}), host=host, port=port, threads=threads,
              shutdown_timeout=DEFAULT_SHUTDOWN_TIMEOUT if shutdown_timeout is None else shutdown_timeout)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        raise ConfigurationError(
            f"port {port} on {host} is in use; set ORCHESTRATOR_WEB_PORT (or --port) to another port"
        ) from None
    click.echo("web stopped")


@main.command()
@click.option("--concurrency", "-c", type=click.IntRange(1, 64), default=1, show_default=True)
@friendly_errors
def dev(concurrency: int) -> None:
    """Run everything on embedded defaults (SQLite state, SQLite broker, one worker)."""
    from .devserver import run_dev

    run_dev(Settings.from_env(), concurrency=concurrency)


# -- Kafka events ------------------------------------------------------------------------


def _kafka_settings() -> Settings:
    """Settings with a Kafka to talk to: ORCHESTRATOR_KAFKA_BOOTSTRAP, else `orchestrator dev`'s."""
    from .tansu import running_dev_broker

    settings = Settings.from_env()
    if settings.kafka_bootstrap is None:
        bootstrap = running_dev_broker()
        if bootstrap is not None:
            settings = settings.with_(kafka_bootstrap=bootstrap)
    return settings


@main.command()
@click.option("--relay/--no-relay", default=True, show_default=True, envvar="ORCHESTRATOR_CONSUME_RELAY",
              help="Also publish the outbox (events steps emit) from a thread of this process; "
                   "--no-relay where `orchestrator relay` runs apart.")
@friendly_errors
def consume(relay: bool) -> None:
    """Turn events on the trigger topics into runs, until SIGTERM or Ctrl-C.

    Run several to share the topics' partitions (one consumer group: ORCHESTRATOR_KAFKA_GROUP).
    """
    import signal

    from .consumer import EventConsumer
    from .relay import RelayThread
    from .supervision import announce_ready

    rt = Runtime(_kafka_settings())
    install(rt)
    _check_database(rt)
    service = EventConsumer(rt.engine)

    def _stop(_signum: int, _frame: object) -> None:
        service.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    # Its own thread, producer and connections: a relay failure never stops consuming.
    relay_thread = RelayThread(rt.db, rt.settings).start() if relay else None
    announce_ready()  # to `orchestrator dev`: the consumer joins its group from here on
    try:
        service.run()
    finally:
        if relay_thread is not None:
            relay_thread.stop()
    click.echo("consumer stopped")


@main.command("relay")
@friendly_errors
def relay_command() -> None:
    """Publish the outbox (events steps emitted) to Kafka, until SIGTERM or Ctrl-C.

    `orchestrator consume` does this too unless started with --no-relay. Several relays
    may run: on PostgreSQL one publishes at a time, the others stand by.
    """
    import signal

    from .kafka import check_connection, quiet_client_logs
    from .relay import Relay
    from .supervision import announce_ready

    rt = Runtime(_kafka_settings())
    check_connection(rt.settings)  # a clear error now rather than in the loop (an outage is waited for)
    _check_database(rt)
    quiet_client_logs()
    service = Relay(rt.db, rt.settings)

    def _stop(_signum: int, _frame: object) -> None:
        service.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    announce_ready()
    try:
        service.run()
    finally:
        rt.close()
    click.echo("relay stopped")


@main.command()
@click.argument("topic")
@click.argument("payload")
@click.option("--key", default=None, help="Message key (events with one key keep their order).")
@click.option("--raw", is_flag=True, help="Send PAYLOAD as is, even if it is not JSON.")
@click.option("--header", "header_args", multiple=True, metavar="NAME=VALUE",
              help="A message header (repeatable); triggers read it as $headers.NAME.")
@click.option("--cloudevent", "ce_type", default=None, metavar="TYPE",
              help="Send a binary-mode CloudEvent of this type (needs --source).")
@click.option("--source", default=None, metavar="SRC", help="The CloudEvent's source (with --cloudevent).")
@friendly_errors
def publish(topic: str, payload: str, key: str | None, raw: bool, header_args: tuple[str, ...],
            ce_type: str | None, source: str | None) -> None:
    """Publish one event, PAYLOAD (JSON), to TOPIC; prints its partition and offset.

    With --cloudevent TYPE --source SRC it is a CloudEvent in Kafka binary mode: headers
    ce_specversion, ce_id (generated), ce_type, ce_source, ce_time (now) and content-type
    application/json, PAYLOAD its data. A --header of the same name replaces one of these.
    """
    from kafka.errors import KafkaError

    from .kafka import check_connection, create_producer, quiet_client_logs

    if not raw:
        _json_arg(payload, "PAYLOAD")
    headers = _message_headers(header_args, ce_type, source)
    quiet_client_logs()
    settings = _kafka_settings()
    try:
        if not check_connection(settings):
            raise click.ClickException(f"cannot reach Kafka at {settings.kafka_bootstrap}: no broker answers")
        producer = create_producer(settings)
    except KafkaError as exc:
        raise click.ClickException(f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}") from None
    try:
        with tracing.publish_span(topic) as traceparent:  # tracing on: the event starts a trace
            if traceparent:
                headers.append((tracing.TRACEPARENT, traceparent.encode()))
            sent = producer.send(topic, value=payload.encode(),
                                 key=key.encode() if key is not None else None, headers=headers or None)
            metadata = sent.get(timeout=30)
    except KafkaError as exc:
        raise click.ClickException(f"could not publish to {topic}: {exc}") from None
    finally:
        producer.close(timeout=5)
    click.echo(f"published to {topic} partition {metadata.partition} offset {metadata.offset}")


@main.command()
@click.option("--topic", default=None, help="Only events of this topic.")
@click.option("--outcome", type=click.Choice(["matched", "ignored", "rejected"]), default=None)
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@friendly_errors
def events(topic: str | None, outcome: str | None, limit: int, as_json: bool) -> None:
    """List recorded events, newest first, with what became of each."""
    from .db.queries import event_dict, list_events, runs_of_events

    rt = _runtime()
    with rt.sessions() as session:
        found = list_events(session, topic=topic, outcome=outcome, limit=limit)
        lineage = runs_of_events(session, [e.id for e in found])
        items = [event_dict(e, lineage[e.id]) for e in found]
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    if not items:
        click.echo("no events")
    for item in items:
        where = f"{item['topic']}[{item['partition']}]@{item['offset']}"
        runs = ", ".join(f"{r['workflow']} {r['id']}" for r in item["runs"])
        detail = item["reason"] if item["outcome"] == "rejected" else runs
        click.echo(f"{item['id']:>8}  {where:<32} {item['outcome']:<9} {detail or ''}")


@main.command()
@click.argument("event_id", type=int)
@friendly_errors
def replay(event_id: int) -> None:
    """Evaluate recorded event EVENT_ID against today's triggers and start its missing runs."""
    from .events import replay_event

    started = replay_event(_runtime().engine, event_id)
    if not started:
        click.echo(f"event {event_id} started no new run")
    for run_id in started:
        click.echo(f"started run {run_id}")


@main.command()
@click.argument("topic")
@click.option("--from", "start", default=None, metavar="TIME",
              help="First message time, ISO 8601 (2026-11-01T00:00Z; no zone: UTC), inclusive.")
@click.option("--to", "end", default=None, metavar="TIME", help="End time, exclusive (default: now).")
@click.option("--from-offset", default=None, metavar="P:O", help="Partition P from offset O, inclusive.")
@click.option("--to-offset", default=None, metavar="P:O",
              help="End offset, exclusive (default: the end of the partition when it starts).")
@click.option("--workflow", default=None, help="Start runs of this workflow only.")
@click.option("--dry-run", is_flag=True, help="Report what would start; write nothing.")
@friendly_errors
def reprocess(topic: str, start: str | None, end: str | None, from_offset: str | None,
              to_offset: str | None, workflow: str | None, dry_run: bool) -> None:
    """Read a range of TOPIC again and start the runs today's triggers call for."""
    from .reprocess import make_request
    from .reprocess import reprocess as run_reprocess

    request = make_request(topic, start, end, from_offset, to_offset, workflow, dry_run)
    rt = Runtime(_kafka_settings())
    install(rt)
    with _Progress() as progress:
        summary = run_reprocess(rt.engine, request, progress)
    for item in summary.would_start:
        click.echo(f"would start {item['workflow']} for {item['topic']}[{item['partition']}]@{item['offset']}")
    if summary.started > len(summary.would_start) and dry_run:
        click.echo(f"... and {summary.started - len(summary.would_start)} more")
    click.echo(summary.line())


class _Progress:
    """Reprocess progress: a bar on a terminal, else a line every `PLAIN_EVERY` messages."""

    PLAIN_EVERY = 1000

    def __init__(self) -> None:
        self._bar: Any = None
        self._shown = 0
        self._tty = click.get_text_stream("stdout").isatty()

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)

    def __call__(self, scanned: int, total: int | None) -> None:
        if self._tty:
            if self._bar is None and total is not None:
                self._bar = click.progressbar(length=total, label="reading").__enter__()
            if self._bar is not None:
                self._bar.length = max(self._bar.length or 0, total or 0)
                self._bar.update(scanned - self._shown)
                self._shown = scanned
        elif scanned - self._shown >= self.PLAIN_EVERY or (total is not None and scanned >= total > self._shown):
            click.echo(f"read {scanned}" + (f" of {total}" if total is not None else "") + " message(s)")
            self._shown = scanned


# -- retention ---------------------------------------------------------------------------


@main.command("prune")
@click.option("--older-than", "older_than", required=True,
              help="Age such as 30d, 12h, 90m or 45s: runs that finished, and events that "
                   "arrived, longer ago than this go.")
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=None,
              help="Runs (or events) deleted per transaction (default: 500).")
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted.")
@friendly_errors
def prune_command(older_than: str, batch_size: int | None, dry_run: bool) -> None:
    """Delete finished runs (with steps and attempts) and unreferenced events older than an age.

    Pending and running runs are never deleted. Work is done in short batches, each its
    own transaction, so workers, consumers and the dashboard never wait on it for long.
    """
    from .retention import DEFAULT_BATCH_SIZE, cutoff_for, parse_age, prune

    cutoff = cutoff_for(parse_age(older_than))
    rt = Runtime(Settings.from_env())
    _check_database(rt)
    try:
        report = prune(rt.db, cutoff, batch_size=batch_size or DEFAULT_BATCH_SIZE, dry_run=dry_run)
    finally:
        rt.close()
    click.echo(report.summary())


if __name__ == "__main__":  # pragma: no cover
    main()
