"""The workflow DSL: `Workflow`, `Step` and `StepContext`.

Users write::

    flow = Workflow("order-fulfilment", triggers=[kafka_trigger("orders", match={...})])

    @flow.step(retries=3, backoff=2.0, timeout=30)
    def reserve_stock(ctx): ...

    @flow.step(after=reserve_stock, queue="payments")
    def charge(ctx): ...

Every option is checked when the function is decorated, so a typo fails at import time,
not when the first event arrives. Upstream steps are referred to by object (or by name).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import composition as M
from . import rules as R
from . import waits as W
from .dag import validate_dag
from .emits import MAX_EMITS_PER_ATTEMPT, Emit, InvalidEmit, make_emit
from .errors import WorkflowDefinitionError

#: Retries a step gets when it does not say (a failed attempt is final).
DEFAULT_RETRIES = 0
#: Base delay in seconds before the first retry; doubled for each later retry.
DEFAULT_BACKOFF = 1.0
#: Longest delay in seconds between two attempts, whatever the backoff arithmetic says.
DEFAULT_MAX_BACKOFF = 300.0
#: Celery queue of steps that do not name one.
DEFAULT_QUEUE = "orchestrator"

#: Most retries a step may ask for. Attempt counts are stored as 32-bit integers, and the
#: backoff arithmetic (`backoff * 2**(n-1)`) must stay a float; 1000 is far beyond any use.
MAX_RETRIES = 1000
#: Longest `timeout`, `backoff` or `max_backoff`, in seconds (30 days): what SIGALRM, Celery's
#: countdowns and time limits, and lease arithmetic on datetimes all hold with room to spare.
MAX_SECONDS = 30 * 24 * 3600
#: Highest concurrency limit (of a workflow or a step); it is used in SQL `LIMIT` clauses.
MAX_CONCURRENCY_LIMIT = 1_000_000

#: The kind of the failure handler (`@flow.on_failure`): a task outside the DAG.
ON_FAILURE = "on_failure"
#: Kinds of node whose work a worker runs; every other kind waits and holds no worker.
#: Kinds whose node is run by a worker (a map's items are; the map node itself holds none).
WORKER_KINDS = (W.TASK, ON_FAILURE, M.MAP)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$")


def _check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise WorkflowDefinitionError(
            f"{kind} name {name!r} is invalid: use 1-200 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return name


@dataclass
class StepContext:
    """What a step function receives.

    `input` is the run's input, `results` maps each succeeded parent, and each node that
    waits anywhere upstream, to its JSON result (skipped steps are absent), `attempt` counts from 1, lines written to
    `logger` are stored with the attempt, and `emit` publishes events if the attempt
    succeeds. The failure handler (`@flow.on_failure`) sees every succeeded step's result
    in `results` and the failed steps' errors in `failed`.
    """

    run_id: str
    workflow: str
    step: str
    input: dict[str, Any]
    results: dict[str, Any]
    attempt: int = 1
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("orchestrator.step"))
    #: This attempt's emits, in call order; stored with its success, dropped if it fails.
    emits: list[Emit] = field(default_factory=list, repr=False)
    #: For each upstream `wait_for_event` node that an event completed: where that event
    #: came from (`topic`, `partition`, `offset`, `key`, `event_id`); its payload is in
    #: `results`.
    events: dict[str, Any] = field(default_factory=dict)
    #: For the failure handler only: each failed step of the run -> its error.
    failed: dict[str, str] = field(default_factory=dict)

    #: In an item of a `flow.map` node: the item (from `over`) and its position.
    item: Any = None
    index: int | None = None
    #: For each upstream map with `allow_failures=True`: its failed items, index -> error.
    map_errors: dict[str, dict[int, str]] = field(default_factory=dict)
    #: Runs this attempt starts (`start_run`), created only with its success.
    starts: list[tuple[str, dict[str, Any]]] = field(default_factory=list, repr=False)

    def start_run(self, workflow: str, input: Mapping[str, Any] | None = None) -> None:
        """Start a run of `workflow` with `input` if, and only if, this attempt succeeds.

        The run is created in the transaction that records the success (so it exists
        exactly when the success does) and is detached: nothing waits for it, and
        cancelling this run leaves it alone. Its page links back here. To wait for a run's
        result, use a `flow.call` node instead.
        """
        from .errors import InvalidInput

        if self.attempt < 1:
            raise InvalidInput("ctx.start_run is for step functions, not conditions")
        if not isinstance(workflow, str) or not workflow:
            raise InvalidInput(f"ctx.start_run: workflow={workflow!r}; pass a workflow name")
        data = {} if input is None else input
        if not isinstance(data, Mapping):
            raise InvalidInput(
                f"ctx.start_run({workflow!r}): input must be a JSON object, got {type(data).__name__}"
            )
        if len(self.starts) >= MAX_EMITS_PER_ATTEMPT:
            raise InvalidInput(
                f"ctx.start_run: one attempt may start at most {MAX_EMITS_PER_ATTEMPT} runs"
            )
        self.starts.append((workflow, dict(data)))

    def emit(
        self,
        topic: str,
        value: Any,
        key: str | None = None,
        headers: Mapping[str, str | bytes] | None = None,
    ) -> str:
        """Publish `value` (JSON) to Kafka `topic` if, and only if, this attempt succeeds.

        The event is written to the outbox in the same transaction as the success and sent
        afterwards by the relay, at least once, with header `orchestrator-event-id` (the id
        returned here, the same on every re-send), `orchestrator-run-id` and
        `orchestrator-step`. A failed or retried attempt's emits are discarded. Arguments
        are checked now: a bad one raises `InvalidEmit`, which fails the step.
        """
        if self.attempt < 1:
            raise InvalidEmit(
                "ctx.emit is for step functions: a `when` condition cannot emit events"
            )
        if len(self.emits) >= MAX_EMITS_PER_ATTEMPT:
            raise InvalidEmit(
                f"ctx.emit: one attempt may emit at most {MAX_EMITS_PER_ATTEMPT} events; "
                "split the work over several steps"
            )
        emitted = make_emit(topic, value, key, headers)
        self.emits.append(emitted)
        return emitted.event_id


Condition = Callable[[StepContext], Any]

#: What happens to a run over its concurrency limit.
STRATEGIES = ("queue", "cancel_newest", "cancel_in_progress")


@dataclass(frozen=True)
class Concurrency:
    """At most `limit` runs (or attempts of a step) with the same key at once, on every host.

    `key` is a dotted path into the run's input (`"customer_id"`, `"order.customer_id"`), a
    function of the input, or None for one limit across the whole workflow (or step).
    `strategy` says what happens to a run over the limit: `queue` (wait as `pending`, start
    oldest first as soon as a slot frees), `cancel_newest` (the new run is cancelled at once)
    or `cancel_in_progress` (the running one is cancelled and the new one starts).
    """

    key: str | Callable[[Any], Any] | None = None
    limit: int = 1
    strategy: str = "queue"

    def __post_init__(self) -> None:
        if (
            not isinstance(self.limit, int)
            or isinstance(self.limit, bool)
            or not 1 <= self.limit <= MAX_CONCURRENCY_LIMIT
        ):
            raise WorkflowDefinitionError(
                f"Concurrency limit={self.limit!r}: use an integer from 1 to {MAX_CONCURRENCY_LIMIT}"
            )
        if self.strategy not in STRATEGIES:
            raise WorkflowDefinitionError(
                f"Concurrency strategy={self.strategy!r}: use one of {', '.join(STRATEGIES)}"
            )
        if self.key is not None and not callable(self.key) and (
            not isinstance(self.key, str) or not self.key
        ):
            raise WorkflowDefinitionError(
                f"Concurrency key={self.key!r}: use a dotted path, a function of the input, or None"
            )

    def key_for(self, data: Any) -> str:
        """The key value of a run's input: "" for a workflow-wide limit, "null" when absent."""
        if self.key is None:
            return ""
        if callable(self.key):
            value = self.key(data)
        else:
            from .triggers import lookup

            value = lookup(data, self.key)
        if value is None or not isinstance(value, (str, int, float, bool, list, dict)):
            return "null"
        if isinstance(value, (list, dict)):
            return json.dumps(value, sort_keys=True)[:500]
        return str(value)[:500]


def _concurrency(owner: str, value: Any) -> Concurrency | None:
    if value is None or isinstance(value, Concurrency):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return Concurrency(limit=value)
    raise WorkflowDefinitionError(
        f"{owner}: concurrency={value!r}; use Concurrency(key=..., limit=...) or an integer limit"
    )


@dataclass(frozen=True, eq=False)
class Step:
    """One node of a workflow's DAG: a function plus how to run it."""

    name: str
    fn: Callable[[StepContext], Any]
    after: tuple[str, ...] = ()
    retries: int = DEFAULT_RETRIES
    backoff: float = DEFAULT_BACKOFF
    max_backoff: float = DEFAULT_MAX_BACKOFF
    timeout: float | None = None
    queue: str | None = None
    when: Condition | None = None
    concurrency: Concurrency | None = None
    workflow: str = ""
    #: `task` (a function run by a worker), or a node that waits: `event`, `approval`, `sleep`.
    kind: str = W.TASK
    #: What a waiting node waits for (`orchestrator.waits`); None for a task.
    wait: W.WaitSpec | None = None
    #: Which outcomes of its parents let it run (`orchestrator.rules`); checked by
    #: `rules.check_trigger_rule` whatever the kind of node.
    trigger_rule: str = R.DEFAULT_TRIGGER_RULE
    #: A `flow.map` node's items and limits; a `flow.call` node's workflow and input.
    map: M.MapSpec | None = None
    call: M.CallSpec | None = None

    @property
    def max_attempts(self) -> int:
        return self.retries + 1

    @property
    def waits(self) -> bool:
        """A node that holds no worker: it waits for an event, a decision or a timer."""
        return self.kind not in WORKER_KINDS

    def __call__(self, ctx: StepContext) -> Any:
        return self.fn(ctx)

    def __repr__(self) -> str:
        return f"<Step {self.workflow}.{self.name}>"


class Workflow:
    """A named DAG of steps with the triggers that start it."""

    def __init__(
        self,
        name: str,
        *,
        triggers: Iterable[Any] = (),
        input_schema: Mapping[str, Any] | None = None,
        description: str = "",
        concurrency: Concurrency | int | None = None,
        partition_by: str | Callable[[Any], Any] | None = None,
        shards: int | None = None,
        version: str | None = None,
        fail_on: str = R.FAIL_ON_ANY,
        output: Callable[[dict[str, Any]], Any] | None = None,
    ) -> None:
        self.name = _check_name("workflow", name)
        if output is not None and not callable(output):
            raise WorkflowDefinitionError(
                f"workflow {name!r}: output={output!r}; pass a function of the step results "
                "(name -> result) returning the run's JSON output"
            )
        #: The run's result for a parent's `flow.call` node and the API: `output(results)`,
        #: else the results of the sink steps (`composition.default_output`).
        self.output = output
        #: Whether a run with a failed step fails (`any`) or only one whose failures were
        #: not handled by a step downstream of them (`unhandled`; see `rules`).
        self.fail_on = R.check_fail_on(self.name, fail_on)
        #: The version the user gave, if any; else `version` is a hash of the structure.
        self.explicit_version = None if version is None else _check_version(name, version)
        self._version: str | None = self.explicit_version
        #: What `upstream` found, by step; emptied whenever a step is added.
        self._upstream: dict[str, tuple[str, ...]] = {}
        self.concurrency = _concurrency(f"workflow {name!r}", concurrency)
        self.partition_by = partition_by
        self.shards = shards
        if partition_by is not None:
            # Per-key ordering: one run per key at a time, admitted oldest first.
            ordered = Concurrency(key=partition_by, limit=1)
            if self.concurrency is not None and self.concurrency != ordered:
                raise WorkflowDefinitionError(
                    f"workflow {name!r}: partition_by already limits runs to one per key; "
                    "drop concurrency= or make it Concurrency(key=<partition_by>, limit=1)"
                )
            self.concurrency = ordered
        if shards is not None:
            if partition_by is None:
                raise WorkflowDefinitionError(
                    f"workflow {name!r}: shards={shards!r} needs partition_by= (the key to shard by)"
                )
            if not isinstance(shards, int) or isinstance(shards, bool) or not 1 <= shards <= 1024:
                raise WorkflowDefinitionError(
                    f"workflow {name!r}: shards={shards!r}; use an integer from 1 to 1024"
                )
        self.triggers = list(triggers)
        self.input_schema = dict(input_schema) if input_schema is not None else None
        self.description = description
        self.steps: dict[str, Step] = {}
        if self.input_schema is not None:
            _check_schema(self.name, self.input_schema)
        for trigger in self.triggers:
            bind = getattr(trigger, "bind", None)
            if bind is None:
                raise WorkflowDefinitionError(
                    f"workflow {name!r}: trigger {trigger!r} is not a trigger; "
                    "use kafka_trigger(topic, ...)"
                )
            bind(self)

    def step(
        self,
        fn: Callable[[StepContext], Any] | None = None,
        *,
        name: str | None = None,
        after: Step | str | Iterable[Step | str] | None = None,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
        max_backoff: float = DEFAULT_MAX_BACKOFF,
        timeout: float | None = None,
        queue: str | None = None,
        when: Condition | None = None,
        concurrency: Concurrency | int | None = None,
        trigger_rule: str = R.DEFAULT_TRIGGER_RULE,
    ) -> Any:
        """Register a step; usable as `@flow.step` or `@flow.step(...)`.

        The decorated name is bound to the `Step`, so later steps can say `after=that_step`.
        `trigger_rule` says which outcomes of its parents let it run (`orchestrator.rules`).
        """

        def register(func: Callable[[StepContext], Any]) -> Step:
            step_name = self._function_name(func, name)
            step = Step(
                name=step_name,
                fn=func,
                after=self._resolve_after(step_name, after),
                **_attempt_options(self.name, step_name, retries, backoff, max_backoff, timeout, queue),
                when=_check_when(self.name, step_name, when),
                concurrency=_step_concurrency(self.name, step_name, concurrency),
                workflow=self.name,
                trigger_rule=R.check_trigger_rule(self.name, step_name, trigger_rule),
            )
            self.steps[step_name] = step
            self._structure_changed()
            return step

        if fn is not None:
            return register(fn)
        return register

    def on_failure(
        self,
        fn: Callable[[StepContext], Any] | None = None,
        *,
        name: str | None = None,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
        max_backoff: float = DEFAULT_MAX_BACKOFF,
        timeout: float | None = None,
        queue: str | None = None,
    ) -> Any:
        """Register the failure handler; usable as `@flow.on_failure` or `@flow.on_failure(...)`.

        It runs once, on a worker like any step (with its retries, timeout and queue), when
        a run fails: after the run's last step has settled with failures, and before the
        run is marked `failed` (the run stays `running` meanwhile). `ctx.failed` maps each
        failed step to its error. Its own failure is recorded on its step row and the run
        stays failed; it never runs for a run that succeeded or was cancelled. At most one
        per workflow.
        """

        def register(func: Callable[[StepContext], Any]) -> Step:
            handler = self.failure_handler
            if handler is not None:
                raise WorkflowDefinitionError(
                    f"workflow {self.name!r}: {handler!r} is already its on_failure handler; "
                    "a workflow has at most one (do both things in one function)"
                )
            step_name = self._function_name(func, name)
            step = Step(
                name=step_name,
                fn=func,
                **_attempt_options(self.name, step_name, retries, backoff, max_backoff, timeout, queue),
                workflow=self.name,
                kind=ON_FAILURE,
            )
            self.steps[step_name] = step
            self._structure_changed()
            return step

        if fn is not None:
            return register(fn)
        return register

    def _function_name(self, func: Any, name: str | None) -> str:
        """The name of a step registered from `func`, checked and not yet taken."""
        if not callable(func):
            raise WorkflowDefinitionError(f"workflow {self.name!r}: a step must be a function")
        step_name = _check_name("step", name or func.__name__)
        if step_name in self.steps:
            raise WorkflowDefinitionError(
                f"workflow {self.name!r}: duplicate step name {step_name!r}; "
                "give one of them name=..."
            )
        return step_name

    @property
    def failure_handler(self) -> str | None:
        """The name of the `@on_failure` handler's step, if the workflow has one."""
        return next((s.name for s in self.steps.values() if s.kind == ON_FAILURE), None)

    @property
    def dag(self) -> dict[str, tuple[str, ...]]:
        """Each node of the DAG -> its parents: every step but the failure handler."""
        return {s.name: s.after for s in self.steps.values() if s.kind != ON_FAILURE}

    @property
    def trigger_rules(self) -> dict[str, str]:
        """The nodes whose trigger rule is not the default, with their rule."""
        return {s.name: s.trigger_rule for s in self.steps.values()
                if s.trigger_rule != R.DEFAULT_TRIGGER_RULE}

    # -- composition (see `orchestrator.composition`) ---------------------------------

    def map(
        self,
        fn: Callable[[StepContext], Any] | None = None,
        *,
        over: Callable[[StepContext], Any] | None = None,
        name: str | None = None,
        after: Step | str | Iterable[Step | str] | None = None,
        concurrency: int | None = None,
        allow_failures: bool = False,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
        max_backoff: float = DEFAULT_MAX_BACKOFF,
        timeout: float | None = None,
        queue: str | None = None,
        when: Condition | None = None,
        trigger_rule: str = R.DEFAULT_TRIGGER_RULE,
    ) -> Any:
        """A node that runs the decorated function once per item of `over(ctx)` (a JSON
        list, evaluated when the parents are done), each item its own step instance with
        its own attempts (`retries`, `timeout`), at most `concurrency` at once. `ctx.item`
        and `ctx.index` say which. The node's result is the list of item results in item
        order. A failed item fails the map, unless `allow_failures`: then its place holds
        None and successors find its error in `ctx.map_errors[name][index]`.
        """

        def register(func: Callable[[StepContext], Any]) -> Step:
            if not callable(func):
                raise WorkflowDefinitionError(f"workflow {self.name!r}: a map must decorate a function")
            node = self._node_name("map", name or func.__name__)
            where = f"workflow {self.name!r}: map {node!r}"
            step = Step(
                name=node,
                fn=func,
                after=self._resolve_after(node, after),
                **_attempt_options(self.name, node, retries, backoff, max_backoff, timeout, queue),
                when=_check_when(self.name, node, when),
                workflow=self.name,
                kind=M.MAP,
                map=M.check_map(where, over, concurrency, allow_failures),
                trigger_rule=R.check_trigger_rule(self.name, node, trigger_rule),
            )
            self.steps[node] = step
            self._structure_changed()
            return step

        if fn is not None:
            return register(fn)
        return register

    def call(
        self,
        workflow: str,
        *,
        name: str | None = None,
        after: Step | str | Iterable[Step | str] | None = None,
        input: Callable[[StepContext], Any] | Mapping[str, Any] | None = None,
        retries: int = DEFAULT_RETRIES,
        when: Condition | None = None,
        trigger_rule: str = R.DEFAULT_TRIGGER_RULE,
    ) -> Step:
        """A node that starts a run of `workflow` (a child run, with its own page) with
        `input(ctx)` and waits for it without holding a worker. The child's `output` is the
        node's result; its failure fails the node, and `retries` start a new child. The
        node is named after the workflow unless `name` says otherwise. Cancelling this run
        cancels its children."""
        node = self._node_name("call", name if name is not None else workflow)
        where = f"workflow {self.name!r}: call {node!r}"
        step = Step(
            name=node,
            fn=_no_function(self.name, node, M.CALL),
            after=self._resolve_after(node, after),
            retries=_retry_count(self.name, node, "retries", retries),
            when=_check_when(self.name, node, when),
            workflow=self.name,
            kind=M.CALL,
            call=M.check_call(where, workflow, input),
            trigger_rule=R.check_trigger_rule(self.name, node, trigger_rule),
        )
        self.steps[node] = step
        self._structure_changed()
        return step

    @property
    def calls(self) -> dict[str, str]:
        """Each call node and the workflow it calls."""
        return {s.name: s.call.workflow for s in self.steps.values() if s.call is not None}

    def sinks(self) -> list[str]:
        """Steps no other step depends on (whose results make the default `output`)."""
        dag = self.dag
        parents = {p for after in dag.values() for p in after}
        return [name for name in dag if name not in parents]

    # -- nodes that wait (see `orchestrator.waits`) ------------------------------------

    def wait_for_event(
        self,
        name: str,
        *,
        topic: str,
        after: Step | str | Iterable[Step | str] | None = None,
        match: Mapping[str, Any] | None = None,
        correlate: Mapping[str, Any] | None = None,
        timeout: float | str | None = None,
        on_timeout: str = "fail",
        lookback: float | str | None = None,
        trigger_rule: str = R.DEFAULT_TRIGGER_RULE,
    ) -> Step:
        """A node that waits for a Kafka event on `topic` matching `match` (kafka_trigger's
        operators) whose `correlate` paths hold the values computed from the run (constants
        or functions of ctx). Its result is the event's payload. After `timeout` it fails
        (`on_timeout="fail"`) or is skipped with what only it leads to (`"skip"`). With
        `lookback`, a matching event recorded up to that long before the wait opened counts.
        """
        node = self._node_name("wait_for_event", name)
        where = f"workflow {self.name!r}: wait {node!r}"
        spec = W.EventWait(
            topic=W.check_topic(where, topic),
            match=W.check_match(where, match),
            correlate=W.check_correlate(where, correlate),
            timeout=None if timeout is None else W.seconds_of(where, "timeout", timeout),
            on_timeout=W.check_on_timeout(where, on_timeout),
            lookback=None if lookback is None else W.seconds_of(where, "lookback", lookback),
        )
        return self._add_node(node, after, spec, trigger_rule)

    def approval(
        self,
        name: str,
        *,
        after: Step | str | Iterable[Step | str] | None = None,
        timeout: float | str | None = None,
        on_timeout: str = "fail",
        trigger_rule: str = R.DEFAULT_TRIGGER_RULE,
    ) -> Step:
        """A node that waits for a person: approve and it succeeds (its result holds the
        decision, comment, who and when), reject and it fails with the comment as its
        error. After `timeout` it fails (`on_timeout="fail"`) or is skipped (`"skip"`)."""
        node = self._node_name("approval", name)
        where = f"workflow {self.name!r}: approval {node!r}"
        spec = W.ApprovalWait(
            timeout=None if timeout is None else W.seconds_of(where, "timeout", timeout),
            on_timeout=W.check_on_timeout(where, on_timeout),
        )
        return self._add_node(node, after, spec, trigger_rule)

    def sleep(
        self,
        name: str,
        *,
        after: Step | str | Iterable[Step | str] | None = None,
        duration: float | str | None = None,
        until: Callable[[StepContext], Any] | None = None,
        trigger_rule: str = R.DEFAULT_TRIGGER_RULE,
    ) -> Step:
        """A durable timer: the node succeeds `duration` after it opens, or at `until(ctx)`
        (an aware datetime; one in the past succeeds at once). The timer lives in the
        database, so it survives restarts; one due while everything was down fires at the
        next start."""
        node = self._node_name("sleep", name)
        where = f"workflow {self.name!r}: sleep {node!r}"
        if (duration is None) == (until is None):
            raise WorkflowDefinitionError(f"{where}: give exactly one of duration= or until=")
        if until is not None and not callable(until):
            raise WorkflowDefinitionError(
                f"{where}: until={until!r}; pass a function of ctx returning an aware datetime"
            )
        spec = W.SleepWait(
            duration=None if duration is None else W.seconds_of(where, "duration", duration),
            until=until,
        )
        return self._add_node(node, after, spec, trigger_rule)

    def _node_name(self, what: str, name: Any) -> str:
        if not isinstance(name, str):
            raise WorkflowDefinitionError(
                f"workflow {self.name!r}: {what}(name, ...) needs the node's name first, got {name!r}"
            )
        node = _check_name("step", name)
        if node in self.steps:
            raise WorkflowDefinitionError(
                f"workflow {self.name!r}: duplicate step name {node!r}; give one of them another name"
            )
        return node

    def _add_node(self, node: str, after: Any, spec: W.WaitSpec,
                  trigger_rule: str = R.DEFAULT_TRIGGER_RULE) -> Step:
        step = Step(
            name=node,
            fn=_no_function(self.name, node, spec.kind),
            after=self._resolve_after(node, after),
            workflow=self.name,
            kind=spec.kind,
            wait=spec,
            trigger_rule=R.check_trigger_rule(self.name, node, trigger_rule),
        )
        self.steps[node] = step
        self._structure_changed()
        return step

    @property
    def wait_topics(self) -> set[str]:
        """Topics this workflow's `wait_for_event` nodes listen on."""
        return {s.wait.topic for s in self.steps.values() if isinstance(s.wait, W.EventWait)}

    def _resolve_after(self, step_name: str, after: Any) -> tuple[str, ...]:
        if after is None:
            return ()
        items = [after] if isinstance(after, (Step, str)) or callable(after) else list(after)
        names: list[str] = []
        for item in items:
            if isinstance(item, Step):
                if item.workflow != self.name:
                    raise WorkflowDefinitionError(
                        f"workflow {self.name!r}: step {step_name!r} depends on {item!r} "
                        "from another workflow"
                    )
                dep = item.name
            elif isinstance(item, str):
                dep = item
            else:
                raise WorkflowDefinitionError(
                    f"workflow {self.name!r}: step {step_name!r} has after={item!r}; "
                    "pass a step (the decorated function) or a step name"
                )
            if dep == step_name:
                raise WorkflowDefinitionError(
                    f"workflow {self.name!r}: step {step_name!r} depends on itself (cycle)"
                )
            if dep not in names:
                names.append(dep)
        return tuple(names)

    @property
    def version(self) -> str:
        """This definition's version: `version=` when given, else a short hash of its
        structure (step names, dependencies, queues, options; not the function bodies).

        Runs record the version they start with and are planned on it (see `versions`).
        """
        if self._version is None:
            from .versions import structure, structure_hash

            self._version = structure_hash(structure(self))
        return self._version

    def validate(self) -> None:
        """Check the whole DAG (unknown dependencies, cycles, emptiness)."""
        if not self.steps:
            raise WorkflowDefinitionError(f"workflow {self.name!r} has no steps")
        validate_dag(self.name, self.dag)

    @property
    def queues(self) -> set[str]:
        """Queues this workflow's steps use (shard queues are listed by `shard_queues`).

        Nodes that wait use none: nothing of theirs goes to a worker."""
        tasks = [s for s in self.steps.values() if not s.waits]
        if self.shards:
            named = {s.queue for s in tasks if s.queue}
            return named | set(self.shard_queues)
        return {s.queue or DEFAULT_QUEUE for s in tasks}

    @property
    def shard_queues(self) -> tuple[str, ...]:
        from .ring import shard_queues

        return shard_queues(self.name, self.shards) if self.shards else ()

    def queue_of(self, step: Step, partition_key: str | None) -> str:
        """Where a step's messages go: its own queue, else its run's shard, else the default."""
        if step.queue:
            return step.queue
        if self.shards and partition_key is not None:
            from .ring import queue_for

            return queue_for(self.name, partition_key, self.shards)
        return DEFAULT_QUEUE

    def describe(self) -> dict[str, Any]:
        """JSON description for the CLI and the API."""
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "steps": [
                {
                    "name": s.name,
                    "after": list(s.after),
                    "queue": s.queue or DEFAULT_QUEUE,
                    "retries": s.retries,
                    "backoff": s.backoff,
                    "timeout": s.timeout,
                    "conditional": s.when is not None,
                    "concurrency": describe_concurrency(s.concurrency),
                    "kind": s.kind,
                    "trigger_rule": s.trigger_rule,
                    **({"wait": s.wait.describe()} if s.wait is not None else {}),
                    **({"map": s.map.describe()} if s.map is not None else {}),
                    **({"call": s.call.describe()} if s.call is not None else {}),
                }
                for s in self.steps.values()
            ],
            "on_failure": self.failure_handler,
            "fail_on": self.fail_on,
            "concurrency": describe_concurrency(self.concurrency),
            "partition_by": self.partition_by if isinstance(self.partition_by, str) or self.partition_by is None else "<function>",
            "shards": self.shards,
            "queues": sorted(self.queues),
            "triggers": [t.describe() for t in self.triggers],
            "input_schema": self.input_schema,
        }

    def upstream(self, step: str) -> tuple[str, ...]:
        """The steps whose results `ctx.results` of `step` holds: its parents, and every
        node upstream that waits (an event's payload, a decision, is wanted far downstream).
        Task ancestors beyond the parents are left out, as they always were. The failure
        handler sees every node of the DAG (what succeeded before the run failed)."""
        from .dag import ancestors

        found = self._upstream.get(step)
        if found is None and self.steps[step].kind == ON_FAILURE:
            found = self._upstream[step] = tuple(self.dag)  # the handler sees every result
        if found is None:
            parents = set(self.steps[step].after)
            found = self._upstream[step] = tuple(
                name for name in ancestors(self.dag, step)
                if name in parents or self.steps[name].waits
            )
        return found

    def _structure_changed(self) -> None:
        """A step was added: the version (unless given) and `upstream` are found anew."""
        self._version = self.explicit_version
        self._upstream = {}

    def roots(self) -> list[str]:
        return [s.name for s in self.steps.values() if not s.after]

    def __repr__(self) -> str:
        return f"<Workflow {self.name} steps={list(self.steps)}>"


def _no_function(workflow: str, node: str, kind: str) -> Callable[[StepContext], Any]:
    def waits(_ctx: StepContext) -> Any:
        raise WorkflowDefinitionError(
            f"workflow {workflow!r}: {node!r} is a {kind} node; it waits and has no function to run"
        )

    waits.__name__ = f"{kind}_{node}"
    return waits


_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+\-]{0,63}$")


def _check_version(workflow: str, version: Any) -> str:
    if isinstance(version, int) and not isinstance(version, bool):
        version = str(version)
    if not isinstance(version, str) or not _VERSION.match(version):
        raise WorkflowDefinitionError(
            f"workflow {workflow!r}: version={version!r} is invalid; use 1-64 letters, digits, "
            "'_', '-', '.', ':' or '+', starting with a letter or digit"
        )
    return version


def describe_concurrency(value: Concurrency | None) -> dict[str, Any] | None:
    if value is None:
        return None
    key = value.key if value.key is None or isinstance(value.key, str) else "<function>"
    return {"key": key, "limit": value.limit, "strategy": value.strategy}


def _step_concurrency(workflow: str, step: str, value: Any) -> Concurrency | None:
    limit = _concurrency(f"workflow {workflow!r}: step {step!r}", value)
    if limit is not None and limit.strategy != "queue":
        raise WorkflowDefinitionError(
            f"workflow {workflow!r}: step {step!r} concurrency strategy must be 'queue' "
            "(a step waits for a slot; cancelling strategies apply to runs)"
        )
    return limit


def _check_schema(workflow: str, schema: Mapping[str, Any]) -> None:
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise WorkflowDefinitionError(
            f"workflow {workflow!r}: input_schema is not a valid JSON Schema: {exc.message}"
        ) from None


def _check_when(workflow: str, step: str, when: Any) -> Condition | None:
    if when is not None and not callable(when):
        raise WorkflowDefinitionError(
            f"workflow {workflow!r}: step {step!r} has when={when!r}; pass a function of ctx"
        )
    return when


def _attempt_options(workflow: str, step: str, retries: Any, backoff: Any, max_backoff: Any,
                     timeout: Any, queue: Any) -> dict[str, Any]:
    """The checked options of a node whose attempts a worker runs (a step, a map's items,
    the failure handler)."""
    return {
        "retries": _retry_count(workflow, step, "retries", retries),
        "backoff": _non_negative(workflow, step, "backoff", backoff),
        "max_backoff": _non_negative(workflow, step, "max_backoff", max_backoff),
        "timeout": None if timeout is None else _positive(workflow, step, "timeout", timeout),
        "queue": None if queue is None else _check_name("queue", queue),
    }


def _retry_count(workflow: str, step: str, option: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_RETRIES:
        raise WorkflowDefinitionError(
            f"workflow {workflow!r}: step {step!r} has {option}={value!r}; "
            f"use an integer from 0 to {MAX_RETRIES}"
        )
    return value


def _seconds(value: Any, minimum: float, inclusive: bool) -> float | None:
    """`value` as seconds if it is a real, finite number within [minimum, MAX_SECONDS]."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    seconds = float(value) if not isinstance(value, int) or abs(value) <= MAX_SECONDS else math.inf
    if not math.isfinite(seconds) or seconds > MAX_SECONDS:
        return None
    if seconds < minimum or (not inclusive and seconds == minimum):
        return None
    return seconds


def _non_negative(workflow: str, step: str, option: str, value: Any) -> float:
    seconds = _seconds(value, 0.0, inclusive=True)
    if seconds is None:
        raise WorkflowDefinitionError(
            f"workflow {workflow!r}: step {step!r} has {option}={value!r}; "
            f"use a finite number of seconds >= 0 and <= {MAX_SECONDS} (30 days)"
        )
    return seconds


def _positive(workflow: str, step: str, option: str, value: Any) -> float:
    seconds = _seconds(value, 0.0, inclusive=False)
    if seconds is None:
        raise WorkflowDefinitionError(
            f"workflow {workflow!r}: step {step!r} has {option}={value!r}; "
            f"use a finite number of seconds > 0 and <= {MAX_SECONDS} (30 days)"
        )
    return seconds
