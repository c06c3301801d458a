"""Composition: a map over a list (`flow.map`) and a call of another workflow (`flow.call`).
Pure: the specs, their checks, the names of a map's items and how their results combine.

A **map** node, once its parents are done, evaluates `over(ctx)` (a JSON list) and becomes
one step instance per item: a `steps` row named `node[index]` (`item_name`) with its own
attempts, retries, logs and lease, run by workers like any step. At most `concurrency` of
them are queued or running at once. Items settle without locking their run: the map node
is settled once, when its last item ends, and its result is the list of item results in
item order.

A **call** node starts a run of another workflow (its *child*: a real run with its own
page) and waits for it without holding a worker: the node is `waiting` with a `waits` row
of kind `call`. The child's end settles it: its `output` is the node's result, its
failure the node's failure.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import WorkflowDefinitionError

# Node kinds (`Step.kind`), beside `orchestrator.waits`' task, event, approval and sleep.
MAP = "map"
CALL = "call"

#: Most items one map may have when ORCHESTRATOR_MAX_MAP_ITEMS does not say.
DEFAULT_MAX_MAP_ITEMS = 10_000
#: Highest `concurrency` of a map (it is a SQL `LIMIT`).
MAX_MAP_CONCURRENCY = 100_000

_ITEM = re.compile(r"^(?P<node>.+)\[(?P<index>\d+)\]$")


def item_name(node: str, index: int) -> str:
    """The step name of a map's item: `send_invoice[17]` (brackets never occur in a step
    name, so it cannot collide with a node)."""
    return f"{node}[{index}]"


def parse_item(name: str) -> tuple[str, int] | None:
    """(map node, index) of an item's step name; None for a node's own name."""
    if not name.endswith("]"):
        return None
    found = _ITEM.match(name)
    return (found.group("node"), int(found.group("index"))) if found else None


def node_of(name: str) -> str:
    """The node a step name belongs to: itself, or an item's map."""
    parsed = parse_item(name)
    return parsed[0] if parsed else name


@dataclass(frozen=True)
class MapSpec:
    """`over(ctx)` gives the items; at most `concurrency` run at once (None: no limit)."""

    over: Callable[[Any], Any]
    concurrency: int | None = None
    allow_failures: bool = False

    def describe(self) -> dict[str, Any]:
        return {"concurrency": self.concurrency, "allow_failures": self.allow_failures}


@dataclass(frozen=True)
class CallSpec:
    """Start a run of `workflow` with `input(ctx)` (or the constant `input`)."""

    workflow: str
    input: Callable[[Any], Any] | Mapping[str, Any] | None = None

    def describe(self) -> dict[str, Any]:
        return {"workflow": self.workflow}

    def input_of(self, ctx: Any) -> Any:
        if self.input is None:
            return {}
        if callable(self.input):
            return self.input(ctx)
        return dict(self.input)


def check_map(where: str, over: Any, concurrency: Any, allow_failures: Any) -> MapSpec:
    if over is None:
        raise WorkflowDefinitionError(
            f"{where}: a map needs over=, a function of ctx returning the list to map over"
        )
    if not callable(over):
        raise WorkflowDefinitionError(
            f"{where}: over={over!r}; pass a function of ctx returning a list"
        )
    if concurrency is not None and (
        not isinstance(concurrency, int) or isinstance(concurrency, bool)
        or not 1 <= concurrency <= MAX_MAP_CONCURRENCY
    ):
        raise WorkflowDefinitionError(
            f"{where}: concurrency={concurrency!r}; use an integer from 1 to "
            f"{MAX_MAP_CONCURRENCY} (items of this map running at once), or None for no limit"
        )
    if not isinstance(allow_failures, bool):
        raise WorkflowDefinitionError(f"{where}: allow_failures={allow_failures!r}; use True or False")
    return MapSpec(over=over, concurrency=concurrency, allow_failures=allow_failures)


def check_call(where: str, workflow: Any, input: Any) -> CallSpec:
    if not isinstance(workflow, str) or not workflow:
        raise WorkflowDefinitionError(
            f"{where}: call(workflow, ...) needs the name of the workflow to call, got {workflow!r}"
        )
    if input is not None and not callable(input) and not isinstance(input, Mapping):
        raise WorkflowDefinitionError(
            f"{where}: input={input!r}; pass a function of ctx returning the child's input, or a dict"
        )
    return CallSpec(workflow=workflow, input=input)


class MapOverError(ValueError):
    """`over` gave something a map cannot expand; the message is the node's error."""


def items_of(node: str, value: Any, limit: int) -> list[Any]:
    """The items `over` returned, checked: a list of at most `limit` items."""
    if not isinstance(value, list):
        raise MapOverError(
            f"map {node!r}: over must return a list, got {type(value).__name__}"
        )
    if len(value) > limit:
        raise MapOverError(
            f"map {node!r}: over returned {len(value)} items, more than the "
            f"{limit} allowed (ORCHESTRATOR_MAX_MAP_ITEMS)"
        )
    return value


@dataclass(frozen=True)
class ItemEnd:
    """How one item of a map ended (read from its row)."""

    index: int
    status: str
    result: Any = None
    error: str | None = None


def map_outcome(node: str, items: Sequence[ItemEnd], allow_failures: bool) -> tuple[bool, Any, str | None]:
    """(succeeded, result, error) of a map whose items have all ended.

    Its result is the item results in item order; with `allow_failures`, a failed item's
    place holds None. Without it, the first failed item (by index) fails the map.
    """
    ordered = sorted(items, key=lambda i: i.index)
    failed = [i for i in ordered if i.status != "succeeded"]
    if failed and not allow_failures:
        first = failed[0]
        more = f" ({len(failed) - 1} more failed)" if len(failed) > 1 else ""
        return False, None, f"item {first.index} of map {node!r} failed: {first.error or first.status}{more}"
    return True, [i.result if i.status == "succeeded" else None for i in ordered], None


def default_output(sinks: Sequence[str], results: Mapping[str, Any]) -> Any:
    """A workflow's output when it names none: the results of its sink steps, by name."""
    return {name: results.get(name) for name in sinks}
