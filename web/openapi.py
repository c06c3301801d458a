"""The OpenAPI 3.1 document of the JSON API, served at /api/openapi.json.

Written by hand, next to nothing else, so it reads as the contract. The API tests check
it both ways: every route of the app is documented here (and nothing else is), and
every response the tests receive validates against the schema documented for it.
"""

from __future__ import annotations

from typing import Any

from orchestrator import planner as P

from .params import DEFAULT_PAGE, MAX_PAGE, OUTCOMES

NULLABLE_STRING = {"type": ["string", "null"]}
NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
TIME = {"type": "string", "format": "date-time"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": False,
    }


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


def _path(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": schema}


RUN_ID = _path("run_id", "Run id", {"type": "string", "format": "uuid"})
EVENT_ID = _path("event_id", "Event id", {"type": "integer", "minimum": 1})
WORKFLOW_NAME = _path("name", "Workflow name", {"type": "string"})
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

RUN_FIELDS: dict[str, Any] = {
    "id": {"type": "string", "format": "uuid"},
    "workflow": {"type": "string"},
    "status": {"type": "string", "enum": list(P.RUN_STATUSES)},
    "input": {"type": "object"},
    "error": NULLABLE_STRING,
    "created_at": TIME,
    "started_at": NULLABLE_TIME,
    "finished_at": NULLABLE_TIME,
    "event_id": {"type": ["integer", "null"]},
}

CONCURRENCY = {
    "type": ["object", "null"],
    "description": "At most `limit` at once per value of `key`",
    "properties": {
        "key": {"type": ["string", "null"]},
        "limit": {"type": "integer"},
        "strategy": {"type": "string"},
    },
}

SCHEMAS: dict[str, Any] = {
    "Error": _object({"error": {"type": "string"}}),
    "StepDefinition": _object(
        {
            "name": {"type": "string"},
            "after": {"type": "array", "items": {"type": "string"}},
            "queue": {"type": "string"},
            "retries": {"type": "integer"},
            "backoff": {"type": "number"},
            "timeout": {"type": ["number", "null"]},
            "conditional": {"type": "boolean"},
            "concurrency": CONCURRENCY,
        },
        required=["name", "after", "queue", "retries", "backoff", "timeout", "conditional"],
    ),
    "Trigger": {
        "type": "object",
        "properties": {
            "type": {"type": "string"},
            "topic": {"type": "string"},
            "match": {},
            "input": NULLABLE_STRING,
            "dedupe": NULLABLE_STRING,
        },
        "required": ["type", "topic"],
    },
    "Workflow": _object(
        {
            "name": {"type": "string"},
            "description": {"type": "string"},
            "steps": {"type": "array", "items": _ref("StepDefinition")},
            "triggers": {"type": "array", "items": _ref("Trigger")},
            "input_schema": {"type": ["object", "null"]},
            "concurrency": CONCURRENCY,
            "partition_by": {"type": ["string", "null"], "description": "Dotted path, or <function>"},
            "shards": {"type": ["integer", "null"]},
            "queues": {"type": "array", "items": {"type": "string"}},
        },
        required=["name", "description", "steps", "triggers", "input_schema"],
    ),
    "LogLine": {
        "type": "object",
        "properties": {"ts": {"type": "string"}, "level": {"type": "string"}, "message": {"type": "string"}},
    },
    "Attempt": _object(
        {
            "number": {"type": "integer"},
            "status": {"type": "string", "enum": list(P.STEP_STATUSES)},
            "worker": NULLABLE_STRING,
            "started_at": TIME,
            "finished_at": NULLABLE_TIME,
            "error": NULLABLE_STRING,
            "traceback": NULLABLE_STRING,
            "logs": {"type": "array", "items": _ref("LogLine")},
        }
    ),
    "Step": _object(
        {
            "name": {"type": "string"},
            "status": {"type": "string", "enum": list(P.STEP_STATUSES)},
            "queue": {"type": "string"},
            "result": {"description": "The step's JSON result once it succeeded"},
            "error": NULLABLE_STRING,
            "attempt_count": {"type": "integer"},
            "queued_at": NULLABLE_TIME,
            "started_at": NULLABLE_TIME,
            "finished_at": NULLABLE_TIME,
            "attempts": {"type": "array", "items": _ref("Attempt")},
        }
    ),
    "EventRef": _object(
        {
            "id": {"type": "integer"},
            "topic": {"type": "string"},
            "partition": {"type": "integer"},
            "offset": {"type": "integer"},
            "key": NULLABLE_STRING,
        }
    ),
    "Run": _object(RUN_FIELDS),
    "RunDetail": _object(
        {
            **RUN_FIELDS,
            "steps": {"type": "array", "items": _ref("Step")},
            "event": {"oneOf": [_ref("EventRef"), {"type": "null"}]},
        }
    ),
    "RunRef": _object(
        {
            "id": {"type": "string", "format": "uuid"},
            "workflow": {"type": "string"},
            "status": {"type": "string", "enum": list(P.RUN_STATUSES)},
            "created_at": TIME,
        }
    ),
    "Event": _object(
        {
            "id": {"type": "integer"},
            "topic": {"type": "string"},
            "partition": {"type": "integer"},
            "offset": {"type": "integer"},
            "key": NULLABLE_STRING,
            "headers": {"type": "array"},
            "payload": {"description": "The decoded JSON payload; null when it was not JSON"},
            "raw": {"type": ["string", "null"], "description": "The message value as UTF-8 (lossy)"},
            "kafka_timestamp": NULLABLE_TIME,
            "received_at": TIME,
            "outcome": {"type": "string", "enum": list(OUTCOMES)},
            "reason": NULLABLE_STRING,
            "runs": {"type": "array", "items": _ref("RunRef")},
        }
    ),
    "RunPage": _object(
        {"runs": {"type": "array", "items": _ref("Run")}, "next_cursor": NULLABLE_STRING}
    ),
    "EventPage": _object(
        {"events": {"type": "array", "items": _ref("Event")}, "next_cursor": NULLABLE_STRING}
    ),
    "StartRun": _object({"input": {"type": "object"}}, required=[]),
    "BulkRequest": {
        "description": "Either `ids`, or a filter of at least one of workflow, status, since",
        "oneOf": [
            _object(
                {"ids": {"type": "array", "items": {"type": "string", "format": "uuid"}, "minItems": 1,
                         "maxItems": 10000}}
            ),
            {
                **_object(
                    {
                        "workflow": {"type": "string"},
                        "status": {"type": "string", "enum": list(P.RUN_STATUSES)},
                        "since": {"type": "string"},
                        "limit": {"type": "integer", "minimum": 1, "maximum": 10000},
                    },
                    required=[],
                ),
                "minProperties": 1,
            },
        ],
    },
    "BulkResult": _object(
        {
            "action": {"type": "string", "enum": ["retry", "cancel"]},
            "matched": {"type": "integer"},
            "touched": {"type": "integer"},
            "runs": {"type": "array", "items": {"type": "string"}},
            "not_found": {"type": "array", "items": {"type": "string"}},
            "errors": {"type": "object", "additionalProperties": {"type": "string"}},
            "remaining": {"type": "boolean"},
        }
    ),
    "Replay": _object(
        {
            "event_id": {"type": "integer"},
            "runs": {"type": "array", "items": {"type": "string"}},
            "started": {"type": "integer"},
        }
    ),
    "Health": _object(
        {
            "status": {"type": "string", "enum": ["ok", "unhealthy"]},
            "checks": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "properties": {
                        "ok": {"type": ["boolean", "null"]},
                        "detail": {"type": "string"},
                        "ms": {"type": "number"},
                    },
                    "required": ["ok", "detail"],
                },
            },
        }
    ),
}

_BULK_BODY = {"required": True, "content": {"application/json": {"schema": _ref("BulkRequest")}}}

PATHS: dict[str, Any] = {
    "/api/openapi.json": {
        "get": {
            "summary": "This document",
            "responses": {"200": {"description": "OpenAPI 3.1 document", "content": {"application/json": {}}}},
        }
    },
    "/api/workflows": {
        "get": {
            "summary": "Every workflow with its steps, dependencies and triggers",
            "responses": {
                "200": _json(
                    _object({"workflows": {"type": "array", "items": _ref("Workflow")}}), "Workflows"
                )
            },
        }
    },
    "/api/workflows/{name}": {
        "get": {
            "summary": "One workflow",
            "parameters": [WORKFLOW_NAME],
            "responses": {"200": _json(_ref("Workflow"), "The workflow"), "404": _error("Unknown workflow")},
        }
    },
    "/api/workflows/{name}/runs": {
        "post": {
            "summary": "Start a run",
            "security": SECURED,
            "parameters": [WORKFLOW_NAME],
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("StartRun")}}},
            "responses": {
                "201": _json(_ref("RunDetail"), "The new run (Location header: its URL)"),
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
                _query("status", "Only runs in this status", {"type": "string", "enum": list(P.RUN_STATUSES)}),
                SINCE,
                LIMIT,
                CURSOR,
            ],
            "responses": {"200": _json(_ref("RunPage"), "A page of runs"), "400": _error("A bad parameter")},
        }
    },
    "/api/runs/{run_id}": {
        "get": {
            "summary": "A run with its steps, attempts, logs and triggering event",
            "parameters": [RUN_ID],
            "responses": {"200": _json(_ref("RunDetail"), "The run"), "404": _error("No such run")},
        }
    },
    "/api/runs/{run_id}/cancel": {
        "post": {
            "summary": "Cancel a live run",
            "security": SECURED,
            "parameters": [RUN_ID],
            "responses": {
                "200": _json(_ref("RunDetail"), "The cancelled run"),
                "401": UNAUTHORIZED,
                "404": _error("No such run"),
                "409": _error("The run has already finished"),
            },
        }
    },
    "/api/runs/{run_id}/retry": {
        "post": {
            "summary": "Re-run failed and cancelled steps and their dependants",
            "security": SECURED,
            "parameters": [RUN_ID],
            "responses": {
                "200": _json(_ref("RunDetail"), "The run, running again"),
                "401": UNAUTHORIZED,
                "404": _error("No such run"),
                "409": _error("The run is still running or has nothing to retry"),
            },
        }
    },
    "/api/runs/retry": {
        "post": {
            "summary": "Retry many runs by ids or by filter",
            "security": SECURED,
            "requestBody": _BULK_BODY,
            "responses": {
                "200": _json(_ref("BulkResult"), "What was touched"),
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
                "200": _json(_ref("BulkResult"), "What was touched"),
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
            "responses": {"200": _json(_ref("EventPage"), "A page of events"), "400": _error("A bad parameter")},
        }
    },
    "/api/events/{event_id}": {
        "get": {
            "summary": "One event with the runs it started",
            "parameters": [EVENT_ID],
            "responses": {"200": _json(_ref("Event"), "The event"), "404": _error("No such event")},
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
                "200": _json(_ref("Replay"), "The runs the replay started (possibly none)"),
                "401": UNAUTHORIZED,
                "404": _error("No such event"),
                "409": _error("The event kept neither its payload nor its raw bytes"),
            },
        }
    },
    "/healthz": {
        "get": {
            "summary": "Database, broker and Kafka reachability",
            "responses": {
                "200": _json(_ref("Health"), "Everything configured answers"),
                "503": _json(_ref("Health"), "Something is down"),
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


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Workflow orchestrator API",
            "version": "1",
            "description": "Runs, steps and events of the orchestrator. Errors are "
            '`{"error": "..."}`. Every mutating call needs `Authorization: Bearer '
            "<ORCHESTRATOR_API_TOKEN>`. Lists are newest first; pass `next_cursor` back "
            "as `cursor` for the next page.",
        },
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
