"""Workflow versions: a workflow's structure, its version, and the difference of two.

A version names a workflow's *shape*: its step names, dependencies, queues and options,
not the bodies of its functions. Each run records the version it started with, and the
engine plans it on that version's structure whatever code is deployed later (see
`planning_view`); the step code is the loaded code, matched by step name.

Pure: no I/O. The structures are stored once per version in `workflow_versions`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

from . import composition as M
from . import rules as R
from . import waits as W
from .dsl import ON_FAILURE, Concurrency, Step, StepContext, Workflow
from .dsl import describe_concurrency as _limit  # one JSON form of a limit
from .errors import StepNotLoaded

#: Hex digits of the structure's SHA-256 in a computed version.
HASH_LENGTH = 12


def structure(workflow: Workflow) -> dict[str, Any]:
    """The JSON structure of a workflow: what a version names.

    What was added later is written only when it differs from its default (a trigger rule,
    `fail_on`, the failure handler's kind), so the versions of workflows that use none
    keep their hash.
    """
    shape: dict[str, Any] = {
        "steps": [
            {
                "name": s.name,
                "after": list(s.after),
                "queue": s.queue,
                "retries": s.retries,
                "backoff": s.backoff,
                "max_backoff": s.max_backoff,
                "timeout": s.timeout,
                "conditional": s.when is not None,
                "concurrency": _limit(s.concurrency),
                # Only nodes that wait say their kind: a task-only workflow keeps its hash.
                **({"kind": s.kind, "wait": s.wait.describe()} if s.wait is not None else {}),
                **({"kind": s.kind, "map": s.map.describe()} if s.map is not None else {}),
                **({"kind": s.kind, "call": s.call.describe()} if s.call is not None else {}),
                **({"kind": s.kind} if s.kind == ON_FAILURE else {}),
                **({"trigger_rule": s.trigger_rule}
                   if s.trigger_rule != R.DEFAULT_TRIGGER_RULE else {}),
            }
            for s in workflow.steps.values()
        ],
        "concurrency": _limit(workflow.concurrency),
        "partitioned": workflow.partition_by is not None,
        "shards": workflow.shards,
    }
    if workflow.fail_on != R.FAIL_ON_ANY:
        shape["fail_on"] = workflow.fail_on
    return shape


def structure_hash(shape: Mapping[str, Any]) -> str:
    """A short, stable hash of a structure (the version of a workflow that names none)."""
    text = json.dumps(shape, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_LENGTH]


def diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """What changed from structure `old` to `new`, per step.

    `added` and `removed` are step names; `changed_deps` maps a step in both to its old and
    new parents; `changed_options` maps a step in both to the options that differ.
    """
    before = {s["name"]: s for s in old.get("steps", [])}
    after = {s["name"]: s for s in new.get("steps", [])}
    changed_deps = {
        name: {"old": before[name]["after"], "new": after[name]["after"]}
        for name in before
        if name in after and list(before[name]["after"]) != list(after[name]["after"])
    }
    changed_options: dict[str, list[str]] = {}
    for name in before:
        if name in after:
            keys = sorted(k for k in set(before[name]) | set(after[name])
                          if k not in ("name", "after") and before[name].get(k) != after[name].get(k))
            if keys:
                changed_options[name] = keys
    return {
        "added": [n for n in after if n not in before],
        "removed": [n for n in before if n not in after],
        "changed_deps": changed_deps,
        "changed_options": changed_options,
    }


def planning_view(
    name: str, version: str, shape: Mapping[str, Any], loaded: Workflow | None
) -> Workflow:
    """A `Workflow` with the structure of a stored version and the loaded code.

    What the engine plans a run of an older (or newer) version with: dependencies, queues,
    retries, timeouts and limits are the version's; step functions and conditions are
    the loaded ones, by step name. A step (or condition) the loaded code lacks gets a
    function that raises `StepNotLoaded` naming both versions: the engine never runs it
    here (the claim refuses it), and a condition that cannot be evaluated fails its step.
    """
    deployed = loaded.version if loaded is not None else None
    view = object.__new__(Workflow)  # not `Workflow(...)`: no triggers, nothing to validate
    view.name = name
    view.description = loaded.description if loaded is not None else ""
    view.triggers = []
    view.input_schema = None
    view.concurrency = _restore_limit(shape.get("concurrency"))
    view.partition_by = (loaded.partition_by if loaded is not None and loaded.partition_by is not None
                         else ("<unknown>" if shape.get("partitioned") else None))
    view.shards = shape.get("shards")
    view.fail_on = shape.get("fail_on", R.FAIL_ON_ANY)
    view.explicit_version = version
    view._version = version
    view._upstream = {}
    view.output = loaded.output if loaded is not None else None
    view.steps = {}
    for item in shape.get("steps", []):
        code = loaded.steps.get(item["name"]) if loaded is not None else None
        when = None
        if item.get("conditional"):
            when = code.when if code is not None and code.when is not None else _missing(
                name, item["name"], version, deployed, "the condition of step"
            )
        kind = item.get("kind", W.TASK)
        wait = None
        mapped, called = _restore_composed(kind, item, code, _missing(
            name, item["name"], version, deployed, f"the {kind} node"))
        if kind not in (W.TASK, ON_FAILURE, M.MAP, M.CALL):
            same_kind = code.wait if code is not None and code.kind == kind else None
            wait = (same_kind if same_kind is not None and same_kind.describe() == item.get("wait")
                    else _restore_wait(kind, item.get("wait") or {}, same_kind,
                                       _missing(name, item["name"], version, deployed, f"the {kind} node")))
        view.steps[item["name"]] = Step(
            kind=kind,
            wait=wait,
            map=mapped,
            call=called,
            name=item["name"],
            fn=code.fn if code is not None else _missing(name, item["name"], version, deployed, "step"),
            after=tuple(item.get("after", ())),
            retries=int(item.get("retries", 0)),
            backoff=float(item.get("backoff", 1.0)),
            max_backoff=float(item.get("max_backoff", 300.0)),
            timeout=item.get("timeout"),
            queue=item.get("queue"),
            when=when,
            concurrency=_restore_limit(item.get("concurrency")),
            workflow=name,
            trigger_rule=item.get("trigger_rule", R.DEFAULT_TRIGGER_RULE),
        )
    return view


def _restore_wait(kind: str, spec: Mapping[str, Any], loaded: W.WaitSpec | None,
                  missing: Callable[[StepContext], Any]) -> W.WaitSpec:
    """A stored node's wait, with the version's options and the loaded code's functions
    (correlation values by path, `until`) where the loaded node of that name has them; a
    function it lacks raises `StepNotLoaded`, which fails the node as it opens."""
    if kind == W.EVENT:
        code = loaded.correlate if isinstance(loaded, W.EventWait) else {}
        return W.EventWait(topic=spec.get("topic", ""), match=spec.get("match") or {},
                           correlate={p: code.get(p, missing) for p in spec.get("correlate") or ()},
                           timeout=spec.get("timeout"), on_timeout=spec.get("on_timeout", "fail"),
                           lookback=spec.get("lookback"))
    if kind == W.APPROVAL:
        return W.ApprovalWait(timeout=spec.get("timeout"), on_timeout=spec.get("on_timeout", "fail"))
    if spec.get("until"):
        until = loaded.until if isinstance(loaded, W.SleepWait) and loaded.until else missing
        return W.SleepWait(until=until)
    return W.SleepWait(duration=spec.get("duration"))


def _restore_composed(kind: str, item: Mapping[str, Any], code: Step | None,
                      missing: Callable[[StepContext], Any]) -> tuple[M.MapSpec | None, M.CallSpec | None]:
    """A stored map's or call's spec: the version's options, the loaded node's functions
    (`over`, `input`) where the loaded node of that name is of the same kind."""
    if kind == M.MAP:
        stored = item.get("map") or {}
        over = code.map.over if code is not None and code.map is not None else missing
        return M.MapSpec(over=over, concurrency=stored.get("concurrency"),
                         allow_failures=bool(stored.get("allow_failures"))), None
    if kind == M.CALL:
        stored = item.get("call") or {}
        loaded = code.call if code is not None and code.call is not None else None
        return None, M.CallSpec(workflow=stored.get("workflow", ""),
                                input=loaded.input if loaded is not None else missing)
    return None, None


def _restore_limit(value: Mapping[str, Any] | None) -> Concurrency | None:
    if not value:
        return None
    return Concurrency(key=value.get("key"), limit=int(value["limit"]), strategy=value["strategy"])


def missing_code(workflow: str, step: str, version: str | None, deployed: str | None,
                 what: str = "step") -> str:
    """Why a step of a run cannot run here: the deployed code lacks it."""
    if deployed is None:
        return (f"{what} {step!r} of workflow {workflow!r} (run version {version!r}) cannot run: "
                f"workflow {workflow!r} is not in the deployed code")
    return (f"{what} {step!r} of workflow {workflow!r} is in the run's version {version!r} but "
            f"not in the deployed version {deployed!r}")


def _missing(workflow: str, step: str, version: str, deployed: str | None,
             what: str) -> Callable[[StepContext], Any]:
    def missing(_ctx: StepContext) -> Any:
        raise StepNotLoaded(missing_code(workflow, step, version, deployed, what))

    missing.__name__ = f"missing_{step}"
    return missing


def not_deployed(workflow: str, active_runs: int, grace: float) -> str:
    """The warning for a workflow a deploy removed while runs of it are still live.

    Said the same way by `orchestrator workflows` and the dashboard's overview, so an
    operator who sees it in one place recognises it in the other.
    """
    runs = "run" if active_runs == 1 else "runs"
    return (f"workflow {workflow} is not in the deployed code; its {active_runs} active {runs} "
            f"will fail after ORCHESTRATOR_VERSION_GRACE ({span(grace)})")


def span(seconds: float) -> str:
    """A grace period for people: `10 min`, `90 s`, `2 h`."""
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"
