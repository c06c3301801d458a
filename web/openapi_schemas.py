"""The schemas of the OpenAPI document: the JSON shape of every object the API returns.

Response objects forbid undocumented fields (`additionalProperties: false`), so the API
tests notice when a response grows a field this document does not describe.
"""

from __future__ import annotations

from typing import Any

from orchestrator import planner as P
from orchestrator import rules as R
from orchestrator.db.composed import ITEM_STATUSES, MAX_CHILDREN
from orchestrator.waits import WAIT_STATUSES

from .params import OUTCOMES

NULLABLE_STRING = {"type": ["string", "null"]}
NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
TIME = {"type": "string", "format": "date-time"}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": False,
    }


RUN_FIELDS: dict[str, Any] = {
    "id": {"type": "string", "format": "uuid"},
    "workflow": {"type": "string"},
    "version": {"type": ["string", "null"],
                "description": "The workflow version the run started with (null: from before versions)"},
    "status": {"type": "string", "enum": list(P.RUN_STATUSES)},
    "input": {"type": "object"},
    "error": NULLABLE_STRING,
    "created_at": TIME,
    "started_at": NULLABLE_TIME,
    "finished_at": NULLABLE_TIME,
    "event_id": {"type": ["integer", "null"]},
    "parent_run_id": {"type": ["string", "null"], "format": "uuid",
                      "description": "The run that started this one: with a `flow.call` node "
                      "(`parent_step`), or from a step with `ctx.start_run` (then `detached`)"},
    "parent_step": {**NULLABLE_STRING, "description": "The parent's call node or step"},
    "detached": {"type": "boolean", "description": "Started by `ctx.start_run`: nothing waits "
                 "for it and cancelling the parent leaves it alone"},
    "output": {"description": "A succeeded run's output (what a parent's call node gets): "
               "the workflow's `output(results)`, or its sinks' results for a call's child; null "
               "before it succeeds, or when the workflow names no output and no parent waits"},
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

RETRY_CURRENT = {
    "type": "boolean",
    "default": False,
    "description": "Retry only: re-plan on the loaded (current) version instead of the run's "
    "own; steps in both keep their succeeded results, new steps run",
}

STEP_NAMES = {"type": "array", "items": {"type": "string"}}

VERSION_DIFF = {
    "description": "What the current version changes from the run's: steps it adds and "
    "removes, steps whose dependencies (old and new parents) or options changed",
    **obj(
        {
            "added": STEP_NAMES,
            "removed": STEP_NAMES,
            "changed_deps": {
                "type": "object",
                "additionalProperties": obj({"old": STEP_NAMES, "new": STEP_NAMES}),
            },
            "changed_options": {"type": "object", "additionalProperties": STEP_NAMES},
        }
    ),
}

SCHEMAS: dict[str, Any] = {
    "Error": obj({"error": {"type": "string"}}),
    "StepDefinition": obj(
        {
            "name": {"type": "string"},
            "after": {"type": "array", "items": {"type": "string"}},
            "queue": {"type": "string"},
            "retries": {"type": "integer"},
            "backoff": {"type": "number"},
            "timeout": {"type": ["number", "null"]},
            "conditional": {"type": "boolean"},
            "concurrency": CONCURRENCY,
            "kind": {"type": "string",
                     "enum": ["task", "event", "approval", "sleep", "map", "call", "on_failure"],
                     "description": "a task runs a function on a worker, as does the failure "
                     "handler (on_failure, outside the DAG); a map runs it once per item of a "
                     "list; a call starts a run of another workflow and waits for it; the others wait"},
            "trigger_rule": {"type": "string", "enum": list(R.TRIGGER_RULES),
                             "description": "which outcomes of its parents let it run"},
            "map": {"type": "object", "description": "A map's options (concurrency, allow_failures)"},
            "call": {"type": "object", "description": "A call's workflow"},
            "wait": {"type": "object", "description": "what a waiting node waits for "
                     "(topic, match, correlate paths, timeout, on_timeout, lookback; or "
                     "duration/until of a sleep)"},
        },
        required=["name", "after", "queue", "retries", "backoff", "timeout", "conditional", "kind"],
    ),
    "Trigger": {
        "type": "object",
        "description": "A Kafka trigger (`type: kafka`: topic, format, match, input, dedupe) or a cron "
        "schedule (`type: schedule`: id, cron, timezone, input, catchup, max_catchup)",
        "properties": {
            "type": {"type": "string", "enum": ["kafka", "schedule"]},
            "topic": {"type": "string"},
            "match": {},
            "input": {"description": "`<function>`, null, a kafka trigger's {field: path} object, "
                      "or a schedule's input object"},
            "dedupe": NULLABLE_STRING,
            "format": {"type": "string", "enum": ["json", "cloudevents", "text"],
                       "description": "How a kafka trigger reads a message's value"},
            "id": {"type": "string"},
            "cron": {"type": "string"},
            "timezone": {"type": "string"},
            "catchup": {"type": "string", "enum": ["latest", "all", "none"]},
            "max_catchup": {"type": "integer", "minimum": 1},
        },
        "required": ["type"],
    },
    "Schedule": obj(
        {
            "workflow": {"type": "string"},
            "id": {"type": "string", "description": "A hash of cron and timezone: a changed cron is a new schedule"},
            "cron": {"type": "string"},
            "timezone": {"type": "string"},
            "catchup": {"type": "string", "enum": ["latest", "all", "none"]},
            "paused": {"type": "boolean"},
            "active_since": {**TIME, "description": "First seen or last resumed: no older tick fires"},
            "last_tick": {**NULLABLE_TIME, "description": "The newest tick handled (fired, or skipped by catchup)"},
            "next_fire_at": {**NULLABLE_TIME, "description": "Null while paused"},
            "last_run_id": {"type": ["string", "null"], "format": "uuid"},
            "last_error": {**NULLABLE_STRING,
                           "description": "Why the newest handled tick started no run, or which missed ticks were left out"},
            "updated_at": TIME,
        }
    ),
    "WorkflowVersion": obj(
        {
            "version": {"type": "string"},
            "active_runs": {"type": "integer", "description": "Its runs that are pending or running"},
            "created_at": NULLABLE_TIME,
            "last_seen_at": {**NULLABLE_TIME,
                             "description": "Last time a process with this version's code said it was up"},
        }
    ),
    "NotLoadedWorkflow": obj(
        {
            "name": {"type": "string"},
            "active_runs": {"type": "integer"},
            "versions": {"type": "array", "items": ref("WorkflowVersion"),
                         "description": "Its versions that still have live runs"},
            "warning": {"type": "string"},
        }
    ),
    "Workflow": obj(
        {
            "name": {"type": "string"},
            "version": {"type": "string", "description": "version= of the definition, else a hash of its structure"},
            "description": {"type": "string"},
            "steps": {"type": "array", "items": ref("StepDefinition")},
            "triggers": {"type": "array", "items": ref("Trigger")},
            "input_schema": {"type": ["object", "null"]},
            "concurrency": CONCURRENCY,
            "partition_by": {"type": ["string", "null"], "description": "Dotted path, or <function>"},
            "shards": {"type": ["integer", "null"]},
            "queues": {"type": "array", "items": {"type": "string"}},
            "on_failure": {**NULLABLE_STRING, "description": "The failure handler's step, if any"},
            "fail_on": {"type": "string", "enum": list(R.FAIL_ON),
                        "description": "any: a run with a failed step fails; unhandled: only "
                        "if a failed step was not handled downstream"},
            "versions": {"type": "array", "items": ref("WorkflowVersion"),
                         "description": "Every recorded version, oldest first, with its live runs"},
        },
        required=["name", "version", "description", "steps", "triggers", "input_schema", "versions"],
    ),
    "LogLine": {
        "type": "object",
        "properties": {"ts": {"type": "string"}, "level": {"type": "string"}, "message": {"type": "string"}},
    },
    "Attempt": obj(
        {
            "number": {"type": "integer"},
            "status": {"type": "string", "enum": list(P.STEP_STATUSES)},
            "worker": NULLABLE_STRING,
            "started_at": TIME,
            "finished_at": NULLABLE_TIME,
            "error": NULLABLE_STRING,
            "traceback": NULLABLE_STRING,
            "logs": {"type": "array", "items": ref("LogLine")},
        }
    ),
    "Step": obj(
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
            "wait": {"oneOf": [ref("Wait"), {"type": "null"}],
                     "description": "A wait, approval or sleep node's latest wait; null for a task "
                     "or a node that has not opened yet"},
            "map": {"oneOf": [ref("MapProgress"), {"type": "null"}],
                    "description": "A map node's items by status; null for other nodes"},
            "child_run_id": {"type": ["string", "null"], "format": "uuid",
                             "description": "A call node's child run (the latest, after retries); "
                             "null for other nodes or before it starts"},
            "attempts": {"type": "array", "items": ref("Attempt")},
        }
    ),
    "MapProgress": obj(
        {
            **{status: {"type": "integer", "minimum": 0} for status in ITEM_STATUSES},
            "total": {"type": "integer", "minimum": 0, "description": "Items of the map"},
            "done": {"type": "integer", "minimum": 0,
                     "description": "Items that ended (succeeded, failed or cancelled)"},
        }
    ),
    "MapItem": obj(
        {
            "index": {"type": "integer", "minimum": 0},
            "name": {"type": "string", "description": "The item's step name, `node[index]`"},
            "status": {"type": "string", "enum": list(ITEM_STATUSES)},
            "item": {"description": "The item's value (from `over`)"},
            "attempts": {"type": "integer"},
            "result": {"description": "Its JSON result once it succeeded"},
            "error": NULLABLE_STRING,
            "started_at": NULLABLE_TIME,
            "finished_at": NULLABLE_TIME,
        }
    ),
    "ItemPage": obj(
        {
            "run_id": {"type": "string", "format": "uuid"},
            "step": {"type": "string"},
            "map": ref("MapProgress"),
            "items": {"type": "array", "items": ref("MapItem")},
            "next_after": {"type": ["integer", "null"],
                           "description": "Pass as `after` for the next page; null on the last"},
        }
    ),
    "ChildRun": obj(
        {
            "id": {"type": "string", "format": "uuid"},
            "workflow": {"type": "string"},
            "status": {"type": "string", "enum": list(P.RUN_STATUSES)},
            "step": {**NULLABLE_STRING, "description": "The parent's call node or step that started it"},
            "detached": {"type": "boolean", "description": "Started by `ctx.start_run`"},
            "created_at": TIME,
        }
    ),
    "Wait": obj(
        {
            "kind": {"type": "string", "enum": ["event", "approval", "sleep", "call"],
                     "description": "call: a call node waiting for its child run"},
            "status": {"type": "string", "enum": list(WAIT_STATUSES),
                       "description": "open while the node is waiting; then how it ended"},
            "topic": {**NULLABLE_STRING, "description": "The topic an event wait listens to"},
            "match": {"type": ["object", "null"], "description": "What the event must match"},
            "correlate": {"type": ["object", "null"],
                          "description": "Event dotted path -> the value this run expects there"},
            "timeout": {"type": ["number", "null"], "description": "Seconds before it times out"},
            "on_timeout": {"type": ["string", "null"], "enum": ["fail", "skip", None]},
            "lookback": {"type": ["number", "null"],
                         "description": "Seconds before opening whose matching events count"},
            "duration": {"type": ["number", "null"], "description": "A sleep's seconds (null: until=)"},
            "opened_at": TIME,
            "due_at": {**NULLABLE_TIME, "description": "When its timer fires: a sleep ends, a wait "
                       "or approval times out (null: no timer)"},
            "closed_at": NULLABLE_TIME,
            "event_id": {"type": ["integer", "null"], "description": "The event that completed it"},
            "decision": {"type": ["string", "null"], "enum": ["approve", "reject", None]},
            "comment": NULLABLE_STRING,
            "decided_by": NULLABLE_STRING,
        }
    ),
    "WaitRef": obj(
        {
            "run_id": {"type": "string", "format": "uuid"},
            "step": {"type": "string"},
            "workflow": {"type": "string"},
            "status": {"type": "string", "enum": list(P.RUN_STATUSES)},
        }
    ),
    "DecisionRequest": obj(
        {
            "decision": {"type": "string", "enum": ["approve", "reject"]},
            "comment": {"type": ["string", "null"], "maxLength": 2000,
                        "description": "Why; a rejection fails the node with it as its error"},
        },
        required=["decision"],
    ),
    "Decision": obj(
        {
            "run_id": {"type": "string", "format": "uuid"},
            "step": {"type": "string"},
            "decision": {"type": "string", "enum": ["approve", "reject"]},
            "comment": NULLABLE_STRING,
            "by": {"type": "string", "description": "Who decided (`api` for the JSON API)"},
            "at": TIME,
        }
    ),
    "EventRef": obj(
        {
            "id": {"type": "integer"},
            "topic": {"type": "string"},
            "partition": {"type": "integer"},
            "offset": {"type": "integer"},
            "key": NULLABLE_STRING,
        }
    ),
    "Run": obj(RUN_FIELDS),
    "RunDetail": obj(
        {
            **RUN_FIELDS,
            "absorbed_events": {"type": "array", "items": {"type": "integer"},
                                "description": "A debounce or batch run's events (ids); empty for other runs"},
            "steps": {"type": "array", "items": ref("Step")},
            "children": {"type": "array", "items": ref("ChildRun"), "maxItems": MAX_CHILDREN,
                         "description": f"Runs this run started, newest first (at most {MAX_CHILDREN})"},
            "event": {"oneOf": [ref("EventRef"), {"type": "null"}]},
            "current_version": {"type": ["string", "null"],
                                "description": "The loaded workflow's version (null: not loaded)"},
            "version_diff": {"oneOf": [VERSION_DIFF, {"type": "null"}],
                             "description": "Null unless the run's version differs from the "
                             "current one and both structures are known"},
        }
    ),
    "RunRef": obj(
        {
            "id": {"type": "string", "format": "uuid"},
            "workflow": {"type": "string"},
            "status": {"type": "string", "enum": list(P.RUN_STATUSES)},
            "created_at": TIME,
        }
    ),
    "Event": obj(
        {
            "id": {"type": "integer"},
            "topic": {"type": "string"},
            "partition": {"type": "integer"},
            "offset": {"type": "integer"},
            "key": NULLABLE_STRING,
            "headers": {"type": "array", "description": "[{key, value}]: value as UTF-8 text (lossy), "
                        "plus base64 (the exact bytes) when it is not UTF-8 text without NUL"},
            "payload": {"description": "The decoded JSON payload; null when it was not JSON"},
            "raw": {"type": ["string", "null"], "description": "The message value as UTF-8 (lossy)"},
            "kafka_timestamp": NULLABLE_TIME,
            "received_at": TIME,
            "outcome": {"type": "string", "enum": list(OUTCOMES)},
            "reason": NULLABLE_STRING,
            "runs": {"type": "array", "items": ref("RunRef")},
            "waits": {"type": "array", "items": ref("WaitRef"),
                      "description": "The waiting nodes this event completed"},
            "windows": {"type": "array", "items": ref("Window"),
                        "description": "The debounce/batch windows this event joined "
                        "(in `GET /api/events/<id>` only)"},
        },
        required=["id", "topic", "partition", "offset", "key", "headers", "payload", "raw",
                  "kafka_timestamp", "received_at", "outcome", "reason", "runs", "waits"],
    ),
    "Window": obj(
        {
            "window_id": {"type": "integer"},
            "workflow": {"type": "string"},
            "kind": {"type": "string", "enum": ["debounce", "batch"]},
            "key": NULLABLE_STRING,
            "size": {"type": "integer"},
            "open": {"type": "boolean"},
            "closes_at": TIME,
            "closed_at": NULLABLE_TIME,
            "run_id": {"type": ["string", "null"], "format": "uuid"},
            "error": NULLABLE_STRING,
        }
    ),
    "RunPage": obj(
        {"runs": {"type": "array", "items": ref("Run")}, "next_cursor": NULLABLE_STRING}
    ),
    "EventPage": obj(
        {"events": {"type": "array", "items": ref("Event")}, "next_cursor": NULLABLE_STRING}
    ),
    "StartRun": obj({"input": {"type": "object"}}, required=[]),
    "BulkRequest": {
        "description": "Either `ids`, or a filter of at least one of workflow, status, version, "
        "since; a retry may add `current_version`",
        "oneOf": [
            obj(
                {"ids": {"type": "array", "items": {"type": "string", "format": "uuid"}, "minItems": 1,
                         "maxItems": 10000},
                 "current_version": RETRY_CURRENT},
                required=["ids"],
            ),
            {
                **obj(
                    {
                        "workflow": {"type": "string"},
                        "status": {"type": "string", "enum": list(P.RUN_STATUSES)},
                        "version": {"type": "string"},
                        "since": {"type": "string"},
                        "limit": {"type": "integer", "minimum": 1, "maximum": 10000},
                        "current_version": RETRY_CURRENT,
                    },
                    required=[],
                ),
                "minProperties": 1,
            },
        ],
    },
    "RetryRequest": obj({"current_version": RETRY_CURRENT}, required=[]),
    "BulkResult": obj(
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
    "Replay": obj(
        {
            "event_id": {"type": "integer"},
            "runs": {"type": "array", "items": {"type": "string"}},
            "started": {"type": "integer"},
        }
    ),
    "ReprocessRequest": obj(
        {
            "topic": {"type": "string"},
            "from": {"type": "string", "description": "ISO 8601 time, inclusive (no zone: UTC)"},
            "to": {"type": "string", "description": "ISO 8601 time, exclusive"},
            "from_offset": {"type": "string", "description": "`P:O`: partition P from offset O, inclusive"},
            "to_offset": {"type": "string", "description": "`P:O`, exclusive"},
            "workflow": {"type": "string", "description": "Start runs of this workflow only"},
            "dry_run": {"type": "boolean"},
        },
        required=["topic"],
    ),
    "ReprocessSummary": obj(
        {
            "topic": {"type": "string"},
            "dry_run": {"type": "boolean"},
            "read": {"type": "integer", "description": "Messages in the range"},
            "recorded": {"type": "integer", "description": "Of them, recorded for the first time"},
            "already_handled": {"type": "integer",
                                "description": "Matched messages whose runs exist already"},
            "started": {"type": "integer", "description": "Runs started (dry run: that would start)"},
            "rejected": {"type": "integer"},
            "ignored": {"type": "integer"},
            "runs": {"type": "array", "items": {"type": "string"},
                     "description": "Ids of the runs started (at most 1000)"},
            "would_start": {
                "type": "array",
                "description": "Dry run: the runs that would start (at most 1000)",
                "items": obj({"topic": {"type": "string"}, "partition": {"type": "integer"},
                              "offset": {"type": "integer"}, "workflow": {"type": "string"}}),
            },
        }
    ),
    "Queue": obj(
        {
            "name": {"type": "string"},
            "steps": {"type": "array", "items": {"type": "string"},
                      "description": "Steps sent to this queue, as `workflow.step`"},
            "workers": {"type": "array", "items": {"type": "string"},
                        "description": "Live Celery workers serving it (empty: nobody takes its messages)"},
            "served": {"type": "boolean"},
        }
    ),
    "QueueReport": obj(
        {
            "status": {
                "type": "string",
                "enum": ["ok", "unserved", "unknown"],
                "description": "`unserved`: some queue has no live worker; `unknown`: the workers "
                "could not be asked (see `error`)",
            },
            "checked_at": TIME,
            "error": NULLABLE_STRING,
            "workers": {"type": "array", "items": {"type": "string"}},
            "queues": {"type": "array", "items": ref("Queue")},
        }
    ),
    "Health": obj(
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
