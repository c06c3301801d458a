"""What the API and the dashboard do for a request, in one function each.

Each function checks what the request carries (via `params`), calls one engine or query
function and returns plain data; the API turns it into JSON and the pages into HTML, so
both always agree.
"""

from __future__ import annotations

import functools
import uuid
from datetime import datetime, timedelta
from typing import Any

from werkzeug.exceptions import BadRequest, Conflict, NotFound

from orchestrator import scheduler
from orchestrator import waits as W
from orchestrator.bulk import MAX_BULK_LIMIT, RunFilter, bulk_action
from orchestrator.db import composed as CQ
from orchestrator.db import queries as Q
from orchestrator.db import stats
from orchestrator.db import versions as V
from orchestrator.db.windows import events_of_run, windows_of_event
from orchestrator.dsl import Workflow
from orchestrator.queues import QueueReport
from orchestrator.schedules import schedules_of
from orchestrator.versions import not_deployed

from . import context, graphics, params

#: Failed runs listed on the overview, and runs listed on a workflow's page.
RECENT_FAILURES = 10
RECENT_RUNS = 10


def run_json(run_id: str) -> dict[str, Any]:
    """A run with its steps, attempts, the event that started it, and its version beside
    the loaded one (`current_version`, and `version_diff` when they differ)."""
    return _run_and_version(run_id)[0]


def _run_and_version(run_id: str) -> tuple[dict[str, Any], V.RunVersion]:
    session = context.db()
    run = Q.get_run(session, run_id)
    versions = V.of_run(session, run.workflow, run.version, context.registry().find(run.workflow))
    data = CQ.run_detail(session, run, CQ.planned_structure(versions))
    data["event"] = Q.event_ref(run.event)
    data["absorbed_events"] = events_of_run(session, run.id)  # a debounce/batch run's events
    data["current_version"] = versions.current
    data["version_diff"] = versions.diff
    return data, versions


def items_page(run_id: str, step: str, args: Any) -> dict[str, Any]:
    """One page of a map's items in index order, filtered by `status`, after index
    `after` (keyset), with the map's progress. `NotFound` for an unknown run or step,
    `BadRequest` for a step that is not a map or a bad parameter."""
    session = context.db()
    run = Q.get_run(session, run_id)
    if step not in {s.name for s in run.steps}:
        raise NotFound(f"run {run_id} has no step {step[:200]!r}")
    versions = V.of_run(session, run.workflow, run.version, context.registry().find(run.workflow))
    if not CQ.is_map(session, run.id, step, CQ.planned_structure(versions)):
        raise BadRequest(f"step {step!r} of run {run.id} is not a map: only a map node has items")
    limit = params.limit_arg(args, default=CQ.DEFAULT_ITEMS, maximum=CQ.MAX_ITEMS)
    status = params.status_arg(args, CQ.ITEM_STATUSES)
    after = params.index_arg(args, "after")
    found = CQ.list_items(session, run.id, step, status=status, after=after, limit=limit + 1)
    more = len(found) > limit
    found = found[:limit]
    return {
        "run_id": str(run.id),
        "step": step,
        "map": CQ.map_progress(session, run.id, [step])[step],
        "items": found,
        "next_after": found[-1]["index"] if more and found else None,
    }


def runs_page(args: Any) -> dict[str, Any]:
    """One page of the runs list for query `args` (shared with the dashboard's runs page)."""
    limit = params.limit_arg(args)
    found = Q.list_runs(
        context.db(),
        workflow=params.workflow_arg(args),
        status=params.status_arg(args, Q.LIST_STATUSES),
        version=params.version_arg(args),
        since=params.since_arg(args),
        before=params.run_cursor_arg(args),
        limit=limit + 1,
    )
    more = len(found) > limit
    found = found[:limit]
    last = found[-1] if found else None
    return {
        "runs": [Q.run_dict(r, with_steps=False) for r in found],
        "next_cursor": params.run_cursor(last.created_at, last.id) if more and last else None,
    }


def events_page(args: Any) -> dict[str, Any]:
    """One page of recorded events, each with the runs it started."""
    session = context.db()
    limit = params.limit_arg(args)
    found = Q.list_events(
        session,
        topic=params.topic_arg(args),
        outcome=params.outcome_arg(args),
        before=params.event_cursor_arg(args),
        limit=limit + 1,
    )
    more = len(found) > limit
    found = found[:limit]
    ids = [e.id for e in found]
    lineage, completed = Q.runs_of_events(session, ids), Q.waits_of_events(session, ids)
    return {
        "events": [Q.event_dict(e, lineage[e.id], completed[e.id]) for e in found],
        "next_cursor": params.event_cursor(found[-1].id) if more and found else None,
    }


def _versions_json(workflow: Workflow, versions: list[V.VersionInfo]) -> dict[str, Any]:
    return {**workflow.describe(), "versions": [v.as_dict() for v in versions]}


def workflows_json() -> dict[str, Any]:
    """Every loaded workflow with its recorded versions, and the workflows the loaded code
    lacks that still have live runs (`not_loaded`, each with its warning)."""
    registry = context.registry()
    report = V.by_workflow(context.db(), registry)
    return {
        "workflows": [_versions_json(registry.get(w.workflow), w.versions) for w in report if w.loaded],
        "not_loaded": [_not_loaded_json(w) for w in report if not w.loaded],
    }


def workflow_json(name: str) -> dict[str, Any]:
    """One loaded workflow with its recorded versions and their live runs."""
    workflow = context.registry().get(name)
    return _versions_json(workflow, V.overview(context.db(), [name]))


def _not_loaded_json(report: V.WorkflowVersions) -> dict[str, Any]:
    return {
        "name": report.workflow,
        "active_runs": report.active_runs,
        "versions": [v.as_dict() for v in report.live],
        "warning": not_deployed(report.workflow, report.active_runs, context.settings().version_grace),
    }


def event_json(event_id: int) -> dict[str, Any]:
    if not params.event_id_ok(event_id):
        raise NotFound(f"no event {event_id}")
    session = context.db()
    event = Q.get_event(session, event_id)
    found = Q.event_dict(
        event, Q.runs_of_events(session, [event.id])[event.id], Q.waits_of_events(session, [event.id])[event.id]
    )
    found["windows"] = windows_of_event(session, event.id)  # debounce/batch windows it joined
    return found


def start_run(name: str, body: dict[str, Any]) -> str:
    """Check a start-run body and start the run; returns its id."""
    context.registry().get(name)  # 404 before looking at the body
    params.check_fields(body, {"input"})
    data = body.get("input", {})
    if not isinstance(data, dict):
        raise BadRequest(f"input must be a JSON object, got {type(data).__name__}")
    params.check_storable(data)
    return context.engine().start_run(name, data)


def cancel_run(run_id: str) -> None:
    """Cancel a live run; `Conflict` if it has already finished."""
    if not context.engine().cancel_run(run_id):
        raise Conflict(f"run {run_id} has already finished; nothing to cancel")


def retry_run(run_id: str, current_version: bool = False) -> None:
    """Retry a finished run, on its own version or with `current_version` on the loaded
    one; `Conflict` if it is still running or has nothing to retry."""
    if not context.engine().retry_run(run_id, current_version=current_version):
        raise Conflict(f"run {run_id} is still running or has nothing to retry")


def decision_body(body: dict[str, Any]) -> tuple[str, str | None]:
    """Check an approval decision `{"decision": "approve"|"reject", "comment": "..."}`."""
    params.check_fields(body, {"decision", "comment"})
    decision = body.get("decision")
    if decision not in W.DECISIONS:
        raise BadRequest(f"decision must be one of {', '.join(W.DECISIONS)}; got {decision!r}")
    comment = body.get("comment")
    if comment is not None and not isinstance(comment, str):
        raise BadRequest(f"comment must be a string, got {type(comment).__name__}")
    if comment is not None and len(comment) > W.MAX_COMMENT_CHARS:
        raise BadRequest(f"comment is {len(comment)} characters long; at most {W.MAX_COMMENT_CHARS} are kept")
    params.check_storable(comment, "comment")
    return decision, (comment or "").strip() or None


def decide(run_id: str, step: str, body: dict[str, Any], by: str) -> dict[str, Any]:
    """Check a decision body and record it on a waiting approval; returns the stored
    decision. `NotFound` for an unknown run or step (before the body is looked at),
    `BadRequest` for a bad body, `NotWaiting` (409) when the node is not waiting."""
    session = context.db()
    run = Q.get_run(session, run_id)
    if step not in {s.name for s in run.steps}:
        raise NotFound(f"run {run_id} has no step {step!r}")
    decision, comment = decision_body(body)
    session.rollback()  # end this read; the engine locks the run in a transaction of its own
    outcome = context.engine().decide(str(run.id), step, decision, comment, by)
    return {"run_id": str(run.id), "step": step, **outcome}


def retry_options(args: Any, body: dict[str, Any]) -> bool:
    """Whether a retry request asks for the current version: `{"current_version": true}`
    in the body or `?current_version=1`."""
    params.check_fields(body, {"current_version"})
    return params.body_flag(body, "current_version") or params.flag_arg(args, "current_version")


#: Fields of a bulk body that select runs by filter.
BULK_FILTERS = ("workflow", "status", "version", "since")


def bulk(action: str, body: dict[str, Any]) -> dict[str, Any]:
    """Retry or cancel the runs a body names: `ids`, or a filter (`workflow`, `status`,
    `version`, `since`); a retry with `current_version` re-plans each on the loaded version."""
    params.check_fields(body, {"ids", *BULK_FILTERS, "limit", "current_version"})
    limit = params.limit_arg(body, default=1000, maximum=MAX_BULK_LIMIT)
    current_version = params.body_flag(body, "current_version")
    if current_version and action != "retry":
        raise BadRequest("current_version applies to retry only")
    selection = {k: v for k, v in body.items() if k != "current_version"}
    if "ids" in selection:
        if set(selection) - {"ids"}:
            raise BadRequest(f"give either ids or a filter ({', '.join(BULK_FILTERS)}), not both")
        ids = params.id_list(body["ids"], MAX_BULK_LIMIT)
        result = bulk_action(context.engine(), action, ids=ids,  # type: ignore[arg-type]
                             current_version=current_version)
    else:
        where = RunFilter(
            workflow=params.workflow_arg(body),
            status=params.status_arg(body),
            version=params.version_arg(body),
            since=params.since_arg(body),
        )
        if where == RunFilter():
            raise BadRequest(
                f"give ids, or at least one filter field ({', '.join(BULK_FILTERS)}); "
                "an empty filter would touch every run"
            )
        result = bulk_action(context.engine(), action, where=where, limit=limit,  # type: ignore[arg-type]
                             current_version=current_version)
    return result.as_dict()


def schedules_json() -> list[dict[str, Any]]:
    """Every loaded schedule with its state (next fire time, last run, paused, last error)."""
    return scheduler.list_schedules(context.db(), context.registry())


def set_paused(workflow: str, paused: bool) -> list[dict[str, Any]]:
    """Pause or resume a workflow's schedules; returns them. `WorkflowNotFound` or
    `ScheduleNotFound` (404) for an unknown workflow or one without schedules."""
    return scheduler.set_paused(context.db(), context.registry(), workflow, paused)


def queues() -> QueueReport:
    """The queues the loaded workflows need and the live workers serving each (cached)."""
    return context.queue_watch().report()


def latest_queues() -> QueueReport | None:
    """The latest queue report without waiting for workers (None before the first check);
    pages show it, and the next view shows a fresher one."""
    return context.queue_watch().latest()


def replay(event_id: int) -> list[str]:
    """Re-evaluate a recorded event against today's triggers; ids of the runs it started."""
    from orchestrator.consumer import replay_event

    if not params.event_id_ok(event_id):
        raise NotFound(f"no event {event_id}")
    return list(replay_event(context.engine(), event_id))


#: Fields of a `POST /api/reprocess` body (the CLI's options).
REPROCESS_FIELDS = {"topic", "from", "to", "from_offset", "to_offset", "workflow", "dry_run"}


def reprocess(body: dict[str, Any]) -> dict[str, Any]:
    """Read a range of a topic again and start the runs today's triggers call for; the
    summary. `BadRequest` for a bad body; `ReprocessError` (400) for a bad range."""
    from orchestrator.ranges import API_NAMES
    from orchestrator.reprocess import make_request
    from orchestrator.reprocess import reprocess as run_reprocess

    params.check_fields(body, REPROCESS_FIELDS)
    text: dict[str, str | None] = {}
    for name in REPROCESS_FIELDS - {"dry_run"}:
        value = body.get(name)
        if value is not None and not isinstance(value, str):
            raise BadRequest(f"{name} must be a string, got {type(value).__name__}")
        text[name] = value
    dry_run = body.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise BadRequest(f"dry_run must be true or false, got {dry_run!r}")
    if not text["topic"]:
        raise BadRequest("topic is required")
    request = make_request(text["topic"], text["from"], text["to"], text["from_offset"],
                           text["to_offset"], text["workflow"], dry_run, names=API_NAMES)
    return run_reprocess(context.engine(), request).as_dict()


# -- dashboard pages ----------------------------------------------------------------------


def overview(now: datetime) -> dict[str, Any]:
    """Counts by status over the last hour and day, hourly throughput, recent failures."""
    session = context.db()
    day = now - timedelta(days=1)
    return {
        "hour": stats.run_counts_since(session, now - timedelta(hours=1)),
        "day": stats.run_counts_since(session, day),
        "chart": graphics.throughput_chart(stats.hourly_runs(session, day), now),
        "failures": [
            Q.run_dict(r, with_steps=False)
            for r in Q.list_runs(session, status="failed", limit=RECENT_FAILURES)
        ],
        "not_loaded": [_not_loaded_json(w) for w in V.not_loaded(session, context.registry())],
    }


@functools.lru_cache(maxsize=256)
def _layout(deps: tuple[tuple[str, tuple[str, ...]], ...]) -> graphics.DagLayout:
    return graphics.layout_dag(dict(deps))


_Deps = tuple[tuple[str, tuple[str, ...]], ...]


@functools.lru_cache(maxsize=256)
def _version_layout(drawn: _Deps, current: _Deps) -> graphics.DagLayout:
    return graphics.layout_versions(dict(drawn), dict(current))


def _deps(shape: dict[str, Any]) -> _Deps:
    """A structure's (step, parents) pairs, hashable for the layout caches."""
    return tuple((s["name"], tuple(s["after"])) for s in shape.get("steps", []))


def dag_of(workflow: Workflow) -> graphics.DagLayout:
    """The workflow's DAG layout (computed once per shape)."""
    return _layout(tuple((s.name, tuple(s.after)) for s in workflow.steps.values()))


def dag_of_run(versions: V.RunVersion, loaded: Workflow | None) -> graphics.DagLayout | None:
    """A run's DAG: its own version's structure, with what the loaded version changes
    drawn on it when they differ. Runs from before versions are drawn from the loaded
    definition (the one they are planned on); None when no structure is known."""
    if versions.structure is None:
        return dag_of(loaded) if loaded is not None and versions.version is None else None
    if versions.diff is not None and versions.current_structure is not None:
        return _version_layout(_deps(versions.structure), _deps(versions.current_structure))
    return _layout(_deps(versions.structure))


def workflow_page(name: str) -> dict[str, Any]:
    """A workflow's description, DAG, recorded versions, latest runs and schedules."""
    workflow = context.registry().get(name)
    recent = Q.list_runs(context.db(), workflow=name, limit=RECENT_RUNS)
    has_schedules = bool(schedules_of(workflow))
    return {
        "workflow": workflow_json(name),
        "dag": dag_of(workflow),
        "runs": [Q.run_dict(r, with_steps=False) for r in recent],
        "schedules": scheduler.list_schedules(context.db(), context.registry(), name) if has_schedules else [],
    }


def run_page(run_id: str, now: datetime, args: Any = None) -> dict[str, Any]:
    """A run with its DAG (from its own version), how the loaded version differs, its
    attempts' timeline, its parent, and a page of each map's items (`args`: which map is
    filtered or paged on, see `_map_sections`)."""
    run, versions = _run_and_version(run_id)
    dag = dag_of_run(versions, context.registry().find(run["workflow"]))
    attempts = [
        (s["name"], a["number"], a["status"], _time(a["started_at"]), _time(a["finished_at"]))
        for s in run["steps"]
        for a in s["attempts"]
        if a["started_at"]
    ]
    timeline = graphics.timeline(attempts, now, [s["name"] for s in run["steps"]])
    statuses = {s["name"]: s["status"] for s in run["steps"]}
    notes = graphics.node_notes(CQ.composed_nodes(CQ.planned_structure(versions)),
                                {s["name"]: s["map"] for s in run["steps"]})
    links = {s["name"]: s["child_run_id"] for s in run["steps"] if s["child_run_id"]}
    session = context.db()
    parent = CQ.run_ref(session, run["parent_run_id"]) if run["parent_run_id"] else None
    return {"run": run, "dag": dag, "timeline": timeline, "statuses": statuses, "notes": notes,
            "links": links, "parent": parent, "maps": _map_sections(run, args or {})}


#: Items of each map a run page lists; the others are a "next page" link away.
PAGE_ITEMS = 100


def _map_sections(run: dict[str, Any], args: Any) -> list[dict[str, Any]]:
    """A page of items for each map of a run: the first ones, except for the map the
    query names (`items`), which gets its `item_status` filter and `after` position."""
    maps = [s for s in run["steps"] if s["map"] is not None]
    chosen = args.get("items") or None
    if chosen is not None and chosen not in {s["name"] for s in maps}:
        raise BadRequest(f"items={str(chosen)[:200]!r}: this run has no map of that name")
    status = params.status_arg({"status": args.get("item_status")}, CQ.ITEM_STATUSES)
    after = params.index_arg(args, "after")
    session = context.db()
    sections = []
    for step in maps:
        own = step["name"] == chosen
        found = CQ.list_items(session, uuid.UUID(run["id"]), step["name"], status=status if own else None,
                              after=after if own else None, limit=PAGE_ITEMS + 1)
        sections.append({
            "name": step["name"],
            "map": step["map"],
            "items": found[:PAGE_ITEMS],
            "status": status if own else None,
            "after": after if own else None,
            "next_after": found[PAGE_ITEMS - 1]["index"] if len(found) > PAGE_ITEMS else None,
        })
    return sections


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None
