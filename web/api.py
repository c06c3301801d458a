"""The JSON API under /api; documented by the OpenAPI document at /api/openapi.json.

Reads are open unless ORCHESTRATOR_WEB_READ_AUTH=1; every call that changes state needs the
bearer token (see `auth`).
Lists are newest first and paged by an opaque keyset cursor (`next_cursor`).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request, url_for

from . import params, services
from .auth import require_token
from .openapi import document

bp = Blueprint("api", __name__)

#: Who a decision made through the API is recorded as (the token names nobody in particular).
API_DECIDER = "api"


# -- views -----------------------------------------------------------------------------------


@bp.get("/openapi.json")
def openapi() -> Any:
    """The OpenAPI 3.1 document describing every endpoint."""
    return jsonify(document())


@bp.get("/workflows")
def list_workflows() -> Any:
    """Every loaded workflow with its steps, triggers and versions; unloaded ones with live runs."""
    return jsonify(services.workflows_json())


@bp.get("/workflows/<name>")
def show_workflow(name: str) -> Any:
    """One workflow with its steps, dependencies, triggers and versions."""
    return jsonify(services.workflow_json(name))


@bp.get("/queues")
def list_queues() -> Any:
    """Each queue the loaded workflows need, its steps and the live workers serving it."""
    return jsonify(services.queues().as_dict())


@bp.post("/workflows/<name>/runs")
@require_token
def create_run(name: str) -> Any:
    """Start a run with `{"input": {...}}`; 201 with the run."""
    run_id = services.start_run(name, params.json_body(request.get_data()))
    return jsonify(services.run_json(run_id)), 201, {"Location": url_for(".show_run", run_id=run_id)}


@bp.get("/runs")
def list_runs() -> Any:
    """Runs newest first, filtered by workflow, status, version and since; keyset paged."""
    return jsonify(services.runs_page(request.args))


@bp.get("/runs/<run_id>")
def show_run(run_id: str) -> Any:
    """A run with input, event, status, times and every step with its attempts."""
    return jsonify(services.run_json(run_id))


@bp.get("/runs/<run_id>/steps/<step>/items")
def list_items(run_id: str, step: str) -> Any:
    """A map's items in index order, filtered by status, keyset paged by index (`after`)."""
    return jsonify(services.items_page(run_id, step, request.args))


@bp.post("/runs/<run_id>/cancel")
@require_token
def cancel_run(run_id: str) -> Any:
    """Cancel a live run; 409 if it has already finished."""
    services.cancel_run(run_id)
    return jsonify(services.run_json(run_id))


@bp.post("/runs/<run_id>/retry")
@require_token
def retry_run(run_id: str) -> Any:
    """Re-run a finished run's failed steps and dependants, on its version or the current one."""
    body = params.json_body(request.get_data(), required=False)
    services.retry_run(run_id, current_version=services.retry_options(request.args, body))
    return jsonify(services.run_json(run_id))


@bp.post("/runs/<run_id>/steps/<step>/approve")
@require_token
def decide(run_id: str, step: str) -> Any:
    """Approve or reject a waiting approval: `{"decision": "approve"|"reject", "comment": "..."}`;
    409 when it is not waiting. Answers the stored decision."""
    return jsonify(services.decide(run_id, step, params.json_body(request.get_data()), by=API_DECIDER))


@bp.post("/runs/retry")
@require_token
def bulk_retry() -> Any:
    """Retry many runs, by `ids` or by filter; reports how many were touched."""
    return jsonify(services.bulk("retry", params.json_body(request.get_data())))


@bp.post("/runs/cancel")
@require_token
def bulk_cancel() -> Any:
    """Cancel many runs, by `ids` or by filter; reports how many were touched."""
    return jsonify(services.bulk("cancel", params.json_body(request.get_data())))


@bp.get("/events")
def list_events() -> Any:
    """Recorded events newest first, filtered by topic and outcome, with their runs."""
    return jsonify(services.events_page(request.args))


@bp.get("/events/<int:event_id>")
def show_event(event_id: int) -> Any:
    """One recorded event with its payload, outcome, reason, the runs it started and the
    waiting nodes it completed."""
    return jsonify(services.event_json(event_id))


@bp.post("/events/<int:event_id>/replay")
@require_token
def replay_event(event_id: int) -> Any:
    """Re-evaluate an event against today's triggers; lists the runs it started."""
    started = services.replay(event_id)
    return jsonify(event_id=event_id, runs=started, started=len(started))


@bp.post("/reprocess")
@require_token
def reprocess() -> Any:
    """Read a time or offset range of a topic again and start what today's triggers call
    for; answers the summary (read, already handled, started, rejected, ignored)."""
    return jsonify(services.reprocess(params.json_body(request.get_data())))


@bp.get("/schedules")
def list_schedules() -> Any:
    """Every loaded cron schedule: next fire time, last tick and run, paused, last error."""
    return jsonify(services.schedules_json())


@bp.post("/schedules/<workflow>/pause")
@require_token
def pause_schedules(workflow: str) -> Any:
    """Pause a workflow's schedules; answers them. 404 for an unknown workflow or one without."""
    return jsonify(services.set_paused(workflow, True))


@bp.post("/schedules/<workflow>/resume")
@require_token
def resume_schedules(workflow: str) -> Any:
    """Resume a workflow's schedules from now on (ticks missed while paused do not fire)."""
    return jsonify(services.set_paused(workflow, False))
