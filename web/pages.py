"""The dashboard: server-rendered pages, with small static scripts for live updates.

Reading is open, like the API's GETs, unless ORCHESTRATOR_WEB_READ_AUTH=1. Every action
(start, retry, cancel, bulk, replay, approve, pause/resume schedules) is a form POST that needs a logged-in session and the
form's CSRF token (see `auth`).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Flask, flash, redirect, render_template, request, url_for
from werkzeug.exceptions import BadRequest, Conflict

from orchestrator import planner as P
from orchestrator import waits as W
from orchestrator.db.composed import ITEM_STATUSES, composed_nodes
from orchestrator.db.queries import LIST_STATUSES
from orchestrator.errors import DeploySkew, InvalidInput, NotWaiting

from . import context, graphics, params, services
from .auth import csrf_token, require_login, shown_logged_in

bp = Blueprint("pages", __name__)

FILTERS = ("workflow", "status", "version", "since")
#: Who a decision made on the dashboard is recorded as (a login is the token, not a person).
DASHBOARD_DECIDER = "dashboard"
#: The bulk form's actions: its two retry buttons and cancel.
BULK_ACTIONS = {"retry": ("retry", False), "retry_current": ("retry", True), "cancel": ("cancel", False)}


def _now() -> datetime:
    return datetime.now(UTC)


def _filters(source: Any) -> dict[str, str]:
    """The runs-list filters present in `source` (query string or form), as given."""
    return {k: source.get(k) for k in FILTERS if source.get(k)}


@bp.get("/")
def overview() -> Any:
    """Counts by status (last hour, last day), throughput chart, recent failures."""
    return render_template("overview.html", **services.overview(_now()), queues=services.latest_queues())


@bp.get("/workflows")
def workflows() -> Any:
    """Every workflow with its DAG and triggers."""
    items = [(w.describe(), services.dag_of(w)) for w in context.registry()]
    return render_template("workflows.html", items=items, queues=services.latest_queues())


@bp.get("/workflows/<name>")
def workflow(name: str) -> Any:
    """One workflow: DAG, triggers, input schema, a start form and its latest runs."""
    return render_template("workflow.html", **services.workflow_page(name), input_text="{}")


@bp.post("/workflows/<name>/start")
@require_login
def start(name: str) -> Any:
    """Start a run from the form's JSON input; back to the form with the reason if refused."""
    text = request.form.get("input", "").strip() or "{}"
    try:
        run_id = services.start_run(name, {"input": params.json_body(text.encode())})
    except (BadRequest, InvalidInput) as exc:
        message = exc.description if isinstance(exc, BadRequest) else str(exc)
        message = (message or "").replace("the request body", "the input")  # the form's words
        page = services.workflow_page(name)
        return render_template("workflow.html", **page, input_text=text, error=message), 400
    flash(f"Started run {run_id}.", "info")
    return redirect(url_for(".run", run_id=run_id))


@bp.post("/workflows/<name>/schedules/<action>")
@require_login
def schedules(name: str, action: str) -> Any:
    """Pause or resume (the button pressed) this workflow's schedules."""
    if action not in ("pause", "resume"):
        raise BadRequest("action must be pause or resume")
    found = services.set_paused(name, action == "pause")
    flash(f"{'Paused' if action == 'pause' else 'Resumed'} {len(found)} schedule(s).", "info")
    return redirect(url_for(".workflow", name=name) + "#schedules")


@bp.get("/runs")
def runs() -> Any:
    """Runs filtered by workflow, status, version and age; live-updating; bulk retry/cancel."""
    page = services.runs_page(request.args)
    filters = _filters(request.args)
    names = [w.name for w in context.registry()]
    if filters.get("workflow") and filters["workflow"] not in names:
        names.append(filters["workflow"])  # a workflow a deploy removed: still selectable
    return render_template(
        "runs.html",
        page=page,
        filters=filters,
        statuses=LIST_STATUSES,
        workflow_names=names,
        paged=bool(request.args.get("cursor")),
        limit=params.limit_arg(request.args),
        next_url=url_for(".runs", **filters, cursor=page["next_cursor"]) if page["next_cursor"] else None,
    )


@bp.post("/runs/bulk")
@require_login
def bulk() -> Any:
    """Retry (on their versions or the current one) or cancel selected or matching runs."""
    chosen = BULK_ACTIONS.get(request.form.get("action", ""))
    if chosen is None:
        raise BadRequest(f"action must be one of {', '.join(BULK_ACTIONS)}")
    action, current_version = chosen
    filters = _filters(request.form)
    if request.form.get("scope") == "matching":
        body: dict[str, Any] = dict(filters)
    else:
        body = {"ids": request.form.getlist("ids")}
    if current_version:
        body["current_version"] = True
    result = services.bulk(action, body)
    verb = {"retry": "Retried", "cancel": "Cancelled"}[action]
    if current_version:
        verb += " on the current version"
    message = f"{verb} {result['touched']} of {result['matched']} matching run(s)."
    if result["errors"]:
        message += f" {len(result['errors'])} refused: {next(iter(result['errors'].values()))}"
    if result["not_found"]:
        message += f" {len(result['not_found'])} not found."
    if result["remaining"]:
        message += " More runs match: repeat to continue."
    flash(message, "info")
    return redirect(url_for(".runs") + ("?" + urlencode(filters) if filters else ""))


@bp.get("/runs/<run_id>")
def run(run_id: str) -> Any:
    """A run: DAG by step status, attempts timeline, results, errors, logs, its event or
    parent, its children, and its maps' items (`?items=<map>&item_status=&after=` pages one)."""
    return render_template("run.html", **services.run_page(run_id, _now(), request.args))


def _act(run_id: str, action: Any, done: str) -> Any:
    try:
        action(run_id)
        flash(done, "info")
    except Conflict as exc:
        flash(exc.description or "Nothing to do.", "error")
    except DeploySkew as exc:  # the code the run needs is not loaded: say so on its page
        flash(str(exc), "error")
    return redirect(url_for(".run", run_id=run_id))


@bp.post("/runs/<run_id>/retry")
@require_login
def retry(run_id: str) -> Any:
    """Retry this run's failed and cancelled steps, on its version or (a form field) the current one."""
    if params.flag_arg(request.form, "current_version"):
        return _act(run_id, lambda r: services.retry_run(r, current_version=True),
                    "Retrying the run on the current version.")
    return _act(run_id, services.retry_run, "Retrying the run's failed and cancelled steps.")


@bp.post("/runs/<run_id>/cancel")
@require_login
def cancel(run_id: str) -> Any:
    """Cancel this run."""
    return _act(run_id, services.cancel_run, "Cancelled the run.")


@bp.post("/runs/<run_id>/steps/<step>/approve")
@require_login
def approve(run_id: str, step: str) -> Any:
    """Approve or reject (the button pressed) this waiting approval, with the form's comment."""
    body = {"decision": request.form.get("decision", ""), "comment": request.form.get("comment", "")}
    try:
        outcome = services.decide(run_id, step, body, by=DASHBOARD_DECIDER)
    except (BadRequest, NotWaiting) as exc:
        flash((exc.description if isinstance(exc, BadRequest) else str(exc)) or "Refused.", "error")
    else:
        verb = "Approved" if outcome["decision"] == "approve" else "Rejected"
        flash(f"{verb} {step}.", "info")
    return redirect(url_for(".run", run_id=run_id))


@bp.get("/events")
def events() -> Any:
    """The event log, filterable by topic and outcome, each event with its runs."""
    page = services.events_page(request.args)
    filters = {k: request.args[k] for k in ("topic", "outcome") if request.args.get(k)}
    return render_template(
        "events.html",
        page=page,
        filters=filters,
        outcomes=params.OUTCOMES,
        next_url=url_for(".events", **filters, cursor=page["next_cursor"]) if page["next_cursor"] else None,
    )


@bp.get("/events/<int:event_id>")
def event(event_id: int) -> Any:
    """One event: payload, raw value, reason, and the runs it started."""
    return render_template("event.html", event=services.event_json(event_id))


@bp.post("/events/<int:event_id>/replay")
@require_login
def replay(event_id: int) -> Any:
    """Re-evaluate this event against today's triggers."""
    started = services.replay(event_id)
    flash(f"Replay started {len(started)} run(s)." if started else "Replay started no run.", "info")
    return redirect(url_for(".event", event_id=event_id))


# -- template helpers ----------------------------------------------------------------------


def _pretty(value: Any) -> str:
    """JSON for people: indented, non-ASCII kept; escaped by the template like any text."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)


def _compact(value: Any) -> str:
    """JSON on one line, for a match or a correlation value in a sentence."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def _when(value: str | None) -> str:
    """An ISO time as `YYYY-MM-DD HH:MM:SS` UTC."""
    if not value:
        return "—"
    try:
        moment = datetime.fromisoformat(value).astimezone(UTC)
    except ValueError:
        return value
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _took(start: str | None, end: str | None) -> str:
    if not start or not end:
        return ""
    seconds = (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:.2f}s"


def _definition_notes(description: dict[str, Any]) -> dict[str, Any]:
    """The map and call labels of a workflow's drawing (`Workflow.describe()`)."""
    return graphics.node_notes(composed_nodes(description))


def init_app(app: Flask) -> None:
    app.jinja_env.filters["pretty"] = _pretty
    app.jinja_env.filters["when"] = _when
    app.jinja_env.filters["compact"] = _compact
    app.jinja_env.filters["span"] = W.span
    app.jinja_env.globals["took"] = _took
    app.jinja_env.globals["final_statuses"] = sorted(P.RUN_FINAL)
    app.jinja_env.globals["item_statuses"] = ITEM_STATUSES
    app.jinja_env.globals["definition_notes"] = _definition_notes
    # Globals (not a context processor) so that imported macros see them too.
    app.jinja_env.globals["csrf_token"] = csrf_token
    app.jinja_env.globals["logged_in"] = shown_logged_in
