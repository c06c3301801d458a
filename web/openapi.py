"""The OpenAPI 3.1 document of the JSON API, served at /api/openapi.json.

Written by hand, next to nothing else, so it reads as the contract. The API tests check
it both ways: every route of the app is documented here (and nothing else is), and
every response the tests receive validates against the schema documented for it.
"""

from __future__ import annotations

from typing import Any

from orchestrator.db.composed import DEFAULT_ITEMS, ITEM_STATUSES, MAX_ITEMS
from orchestrator.db.queries import LIST_STATUSES

from .openapi_schemas import SCHEMAS, obj, ref
from .params import DEFAULT_PAGE, MAX_INDEX, MAX_PAGE, OUTCOMES


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(ref("Error"), description)


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    # An empty value means "not given" (what an HTML form sends for an unset filter).
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema, "allowEmptyValue": True}


def _path(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": schema}


RUN_ID = _path("run_id", "Run id", {"type": "string", "format": "uuid"})
EVENT_ID = _path("event_id", "Event id", {"type": "integer", "minimum": 1})
WORKFLOW_NAME = _path("name", "Workflow name", {"type": "string"})
SCHEDULED_WORKFLOW = _path("workflow", "Name of a workflow with schedules", {"type": "string"})
LIMIT = _query(
    "limit", f"Page size (default {DEFAULT_PAGE})", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}
)
CURSOR = _query("cursor", "`next_cursor` of the previous page", {"type": "string"})
SINCE = _query(
    "since",
    "Only runs created at or after this ISO 8601 time (UTC without offset), or a span back "
    "from now such as `30m`, `6h`, `7d`",
    {"type": "string"},
)
SECURED = [{"bearer": []}]
UNAUTHORIZED = _error("Missing or wrong bearer token")
#: Every read but /healthz can answer this when the server closes reads.
READ_UNAUTHORIZED = _error(
    "Missing or wrong bearer token, on a server that closes reads (ORCHESTRATOR_WEB_READ_AUTH=1)"
)

_BULK_BODY = {"required": True, "content": {"application/json": {"schema": ref("BulkRequest")}}}

PATHS: dict[str, Any] = {
    "/api/openapi.json": {
        "get": {
            "summary": "This document",
            "responses": {"200": {"description": "OpenAPI 3.1 document", "content": {"application/json": {}}}},
        }
    },
    "/api/workflows": {
        "get": {
            "summary": "Every loaded workflow with its steps, triggers and versions",
            "description": "`not_loaded` lists the workflows the loaded code does not define that "
            "still have pending or running runs (a deploy removed them): those runs fail after "
            "ORCHESTRATOR_VERSION_GRACE.",
            "responses": {
                "200": _json(
                    obj({"workflows": {"type": "array", "items": ref("Workflow")},
                         "not_loaded": {"type": "array", "items": ref("NotLoadedWorkflow")}}),
                    "Workflows",
                )
            },
        }
    },
    "/api/workflows/{name}": {
        "get": {
            "summary": "One workflow",
            "parameters": [WORKFLOW_NAME],
            "responses": {"200": _json(ref("Workflow"), "The workflow"), "404": _error("Unknown workflow")},
        }
    },
    "/api/queues": {
        "get": {
            "summary": "The queues the loaded workflows need and the live workers serving each",
            "description": "Workers are asked over the broker (Celery's inspect `active_queues`, "
            "waiting about a second) and the answer is cached for a few seconds.",
            "responses": {"200": _json(ref("QueueReport"), "Queues and their workers")},
        }
    },
    "/api/workflows/{name}/runs": {
        "post": {
            "summary": "Start a run",
            "security": SECURED,
            "parameters": [WORKFLOW_NAME],
            "requestBody": {"required": True, "content": {"application/json": {"schema": ref("StartRun")}}},
            "responses": {
                "201": _json(ref("RunDetail"), "The new run (Location header: its URL)"),
                "400": _error("The body is not a JSON object, or the input fails the workflow's schema"),
                "401": UNAUTHORIZED,
                "404": _error("Unknown workflow"),
            },
        }
    },
    "/api/runs": {
        "get": {
            "summary": "Runs, newest first, keyset paged",
            "parameters": [
                _query("workflow", "Only runs of this workflow", {"type": "string"}),
                _query("status", "Only runs in this status; `waiting`: live runs (pending or "
                       "running) with a node waiting for an event, a timer or a decision",
                       {"type": "string", "enum": list(LIST_STATUSES)}),
                _query("version", "Only runs that started with (or were retried onto) this workflow "
                       "version", {"type": "string"}),
                SINCE,
                LIMIT,
                CURSOR,
            ],
            "responses": {"200": _json(ref("RunPage"), "A page of runs"), "400": _error("A bad parameter")},
        }
    },
    "/api/runs/{run_id}": {
        "get": {
            "summary": "A run with its steps, attempts, logs and triggering event",
            "parameters": [RUN_ID],
            "responses": {"200": _json(ref("RunDetail"), "The run"), "404": _error("No such run")},
        }
    },
    "/api/runs/{run_id}/steps/{step}/items": {
        "get": {
            "summary": "A map's items in index order, keyset paged by index",
            "description": "Each item is its own step instance (`node[index]`) with its own "
            "attempts. Pass `next_after` back as `after` for the next page.",
            "parameters": [
                RUN_ID,
                _path("step", "Name of the map node", {"type": "string"}),
                _query("status", "Only items in this status", {"type": "string", "enum": list(ITEM_STATUSES)}),
                _query("limit", f"Page size (default {DEFAULT_ITEMS})",
                       {"type": "integer", "minimum": 1, "maximum": MAX_ITEMS}),
                _query("after", "Only items after this index (`next_after` of the previous page)",
                       {"type": "integer", "minimum": 0, "maximum": MAX_INDEX}),
            ],
            "responses": {
                "200": _json(ref("ItemPage"), "A page of items"),
                "400": _error("The step is not a map, or a bad parameter"),
                "404": _error("No such run, or the run has no such step"),
            },
        }
    },
    "/api/runs/{run_id}/cancel": {
        "post": {
            "summary": "Cancel a live run",
            "security": SECURED,
            "parameters": [RUN_ID],
            "responses": {
                "200": _json(ref("RunDetail"), "The cancelled run"),
                "401": UNAUTHORIZED,
                "404": _error("No such run"),
                "409": _error("The run has already finished"),
            },
        }
    },
    "/api/runs/{run_id}/retry": {
        "post": {
            "summary": "Re-run failed and cancelled steps and their dependants",
            "description": "On the run's own version, unless the body says "
            '`{"current_version": true}` (or the query `?current_version=1`): then the run is '
            "re-planned on the loaded version (steps in both keep their succeeded results, new "
            "steps run, the run's `version` becomes the current one). The body may be empty.",
            "security": SECURED,
            "parameters": [
                RUN_ID,
                _query("current_version", "`1` or `true`: retry on the loaded version", {"type": "string"}),
            ],
            "requestBody": {"required": False,
                            "content": {"application/json": {"schema": ref("RetryRequest")}}},
            "responses": {
                "200": _json(ref("RunDetail"), "The run, running again"),
                "400": _error("A bad body or parameter"),
                "401": UNAUTHORIZED,
                "404": _error("No such run"),
                "409": _error("The run is still running or has nothing to retry, or the code it "
                              "needs is not loaded (deploy skew)"),
            },
        }
    },
    "/api/runs/{run_id}/steps/{step}/approve": {
        "post": {
            "summary": "Approve or reject a waiting approval",
            "description": "Approve: the node succeeds (its result holds the decision) and the run "
            "goes on. Reject: the node fails with the comment as its error. The decision, comment, "
            "who (`api`) and when are stored with the wait and shown in the run.",
            "security": SECURED,
            "parameters": [RUN_ID, _path("step", "Name of the approval node", {"type": "string"})],
            "requestBody": {"required": True,
                            "content": {"application/json": {"schema": ref("DecisionRequest")}}},
            "responses": {
                "200": _json(ref("Decision"), "The stored decision"),
                "400": _error("A bad body: decision missing or not approve/reject, comment not a "
                              "string or over 2000 characters"),
                "401": UNAUTHORIZED,
                "404": _error("No such run, or the run has no such step"),
                "409": _error("The node is not an approval that is waiting (already decided, "
                              "timed out, cancelled, or not an approval)"),
            },
        }
    },
    "/api/runs/retry": {
        "post": {
            "summary": "Retry many runs by ids or by filter",
            "description": "Each on its own version, or with `current_version: true` on the loaded "
            "one (as the single retry); a run that cannot be retried is listed in `errors`.",
            "security": SECURED,
            "requestBody": _BULK_BODY,
            "responses": {
                "200": _json(ref("BulkResult"), "What was touched"),
                "400": _error("Neither ids nor a filter, or a bad value"),
                "401": UNAUTHORIZED,
            },
        }
    },
    "/api/runs/cancel": {
        "post": {
            "summary": "Cancel many runs by ids or by filter",
            "security": SECURED,
            "requestBody": _BULK_BODY,
            "responses": {
                "200": _json(ref("BulkResult"), "What was touched"),
                "400": _error("Neither ids nor a filter, or a bad value"),
                "401": UNAUTHORIZED,
            },
        }
    },
    "/api/events": {
        "get": {
            "summary": "Recorded events (matched, ignored, rejected), newest first, with their runs",
            "parameters": [
                _query("topic", "Only events of this topic", {"type": "string"}),
                _query("outcome", "Only events with this outcome", {"type": "string", "enum": list(OUTCOMES)}),
                LIMIT,
                CURSOR,
            ],
            "responses": {"200": _json(ref("EventPage"), "A page of events"), "400": _error("A bad parameter")},
        }
    },
    "/api/events/{event_id}": {
        "get": {
            "summary": "One event with the runs it started",
            "parameters": [EVENT_ID],
            "responses": {"200": _json(ref("Event"), "The event"), "404": _error("No such event")},
        }
    },
    "/api/events/{event_id}/replay": {
        "post": {
            "summary": "Re-evaluate an event against today's triggers",
            "description": "Starts runs exactly as a new event would: at most one per (event, "
            "workflow) and dedupe value, so replaying twice starts nothing new.",
            "security": SECURED,
            "parameters": [EVENT_ID],
            "responses": {
                "200": _json(ref("Replay"), "The runs the replay started (possibly none)"),
                "401": UNAUTHORIZED,
                "404": _error("No such event"),
                "409": _error("The event kept neither its payload nor its raw bytes"),
            },
        }
    },
    "/api/reprocess": {
        "post": {
            "summary": "Read a range of a topic again and start what today's triggers call for",
            "description": "A time range (`from`, `to`: ISO 8601, over every partition) or an "
            "offset range (`from_offset`, `to_offset`: `P:O`, one partition, end exclusive). Read "
            "without a consumer group; runs start as `replay` starts them (at most one per event "
            "and workflow, dedupe values honoured); messages never recorded are recorded first. "
            "`dry_run` reports what would start and writes nothing.",
            "security": SECURED,
            "requestBody": {"required": True,
                            "content": {"application/json": {"schema": ref("ReprocessRequest")}}},
            "responses": {
                "200": _json(ref("ReprocessSummary"), "What was read and started"),
                "400": _error("A bad body or range: both or neither of from and from_offset, a bad "
                              "time or P:O, an end before the start, an unknown topic or workflow"),
                "401": UNAUTHORIZED,
                "503": _error("Kafka is unreachable (or not configured)"),
            },
        }
    },
    "/api/schedules": {
        "get": {
            "summary": "Every loaded cron schedule with its next fire time, last run and state",
            "responses": {"200": _json({"type": "array", "items": ref("Schedule")}, "Schedules")},
        }
    },
    "/api/schedules/{workflow}/pause": {
        "post": {
            "summary": "Pause a workflow's schedules",
            "security": SECURED,
            "parameters": [SCHEDULED_WORKFLOW],
            "responses": {
                "200": _json({"type": "array", "items": ref("Schedule")}, "The workflow's schedules"),
                "401": UNAUTHORIZED,
                "404": _error("Unknown workflow, or a workflow without schedules"),
            },
        }
    },
    "/api/schedules/{workflow}/resume": {
        "post": {
            "summary": "Resume a workflow's schedules",
            "description": "From now on: ticks missed while paused do not fire.",
            "security": SECURED,
            "parameters": [SCHEDULED_WORKFLOW],
            "responses": {
                "200": _json({"type": "array", "items": ref("Schedule")}, "The workflow's schedules"),
                "401": UNAUTHORIZED,
                "404": _error("Unknown workflow, or a workflow without schedules"),
            },
        }
    },
    "/healthz": {
        "get": {
            "summary": "Database, broker and Kafka reachability",
            "responses": {
                "200": _json(ref("Health"), "Everything configured answers"),
                "503": _json(ref("Health"), "Something is down"),
            },
        }
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics",
            "responses": {
                "200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}
            },
        }
    },
}

for _path, _ops in PATHS.items():
    if "get" in _ops and _path != "/healthz":
        _ops["get"]["responses"].setdefault("401", READ_UNAUTHORIZED)


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Workflow orchestrator API",
            "version": "1",
            "description": "Runs, steps and events of the orchestrator. Errors are "
            '`{"error": "..."}`. Every mutating call needs `Authorization: Bearer '
            "<ORCHESTRATOR_API_TOKEN>`; every read but `/healthz` needs it too when the server "
            "sets ORCHESTRATOR_WEB_READ_AUTH=1. Lists are newest first; pass `next_cursor` back "
            "as `cursor` for the next page.",
        },
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
