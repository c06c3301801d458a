"""Workflows of the fault-injection suite (loaded with ORCHESTRATOR_WORKFLOWS=tests.faults.flows).

Every step records each execution in the Redis side channel (ORCHESTRATOR_TEST_REDIS), keyed
by run, step and attempt number, so a test can prove across worker processes that no attempt
ran twice and that nothing ran after a step's success was recorded. The side channel is the
machine's Redis, never the Celery broker a test restarts.

Topic names start with ORCHESTRATOR_TEST_TOPIC_PREFIX, so every test has topics of its own.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime, timedelta

from orchestrator import Concurrency, StepContext, Workflow, kafka_trigger
from tests.flows import side_channel

PREFIX = os.environ.get("ORCHESTRATOR_TEST_TOPIC_PREFIX", "test.")
#: The load of the fault tests: every event starts a `chain` run; some also a hostile one.
LOAD_TOPIC = f"{PREFIX}load"
#: The orders of the high-availability test: keyed by customer.
ORDERS_TOPIC = f"{PREFIX}orders"
#: Side-channel hash of executions: field "<run>|<step>|<attempt>" -> times executed.
EXECUTIONS = "faults:executions"
#: Side-channel hash of finished executions (the step function returned).
RETURNED = "faults:returned"


def record(ctx: StepContext) -> None:
    side_channel().hincrby(EXECUTIONS, f"{ctx.run_id}|{ctx.step}|{ctx.attempt}", 1)


def returned(ctx: StepContext) -> None:
    side_channel().hincrby(RETURNED, f"{ctx.run_id}|{ctx.step}|{ctx.attempt}", 1)


def _assess(event: dict) -> bool:
    """Match every load event; `assess_ms` slows the consumer's batches down on purpose."""
    pause = event.get("assess_ms")
    if pause:
        time.sleep(pause / 1000)
    return event.get("type") == "load"


def _work(ctx: StepContext) -> dict:
    record(ctx)
    time.sleep(ctx.input.get("sleep", 0.01))
    returned(ctx)
    return {"id": ctx.input.get("id"), "step": ctx.step, "attempt": ctx.attempt}


# -- the load: a two-step chain per event -----------------------------------------------------
chain = Workflow("chain", triggers=[kafka_trigger(LOAD_TOPIC, match=_assess)])
chain.step(_work, name="first", retries=3, backoff=0.2)
chain.step(_work, name="second", after="first", retries=3, backoff=0.2)


# -- misbehaving steps: started by load events that carry {"hostile": "<workflow>"} ----------


def hostile(name: str) -> Workflow:
    """A workflow started by the load events whose `hostile` field names it."""
    return Workflow(name, triggers=[kafka_trigger(LOAD_TOPIC, match={"type": "load", "hostile": name})])


hangs = hostile("hangs")


@hangs.step(timeout=1)
def sleep_forever(ctx: StepContext) -> None:
    record(ctx)
    while True:
        time.sleep(0.5)


hangs_stubbornly = hostile("hangs-stubbornly")


@hangs_stubbornly.step(timeout=1)
def ignore_the_timeout(ctx: StepContext) -> None:
    """Swallows the in-process timeout: only the hard time limit can end it."""
    record(ctx)
    while True:
        try:
            time.sleep(0.5)
        except BaseException:  # noqa: BLE001, S110 - the point of the test
            pass


class UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ of this exception raises")

    def __repr__(self) -> str:
        raise RuntimeError("__repr__ of this exception raises")


raises_unprintable = hostile("raises-unprintable")


@raises_unprintable.step
def raise_unprintable(ctx: StepContext) -> None:
    record(ctx)
    raise UnprintableError("never shown")


class UnpicklableError(Exception):
    pass


raises_unpicklable = hostile("raises-unpicklable")


@raises_unpicklable.step
def raise_unpicklable(ctx: StepContext) -> None:
    record(ctx)
    raise UnpicklableError("has a lock, a lambda and a generator", threading.Lock(),
                           lambda: None, (i for i in range(3)))


class AbortStep(BaseException):
    """Not an Exception: escapes `except Exception` handlers."""


raises_base_exception = hostile("raises-base-exception")


@raises_base_exception.step
def raise_base_exception(ctx: StepContext) -> None:
    record(ctx)
    raise AbortStep("a BaseException that is not an Exception")


returns_a_set = hostile("returns-a-set")


@returns_a_set.step
def return_a_set(ctx: StepContext) -> set:
    record(ctx)
    return {1, 2, 3}


returns_nan = hostile("returns-nan")


@returns_nan.step
def return_nan(ctx: StepContext) -> float:
    record(ctx)
    return float("nan")


returns_a_lone_surrogate = hostile("returns-a-lone-surrogate")


@returns_a_lone_surrogate.step
def return_a_lone_surrogate(ctx: StepContext) -> str:
    """Valid for json.dumps, refused by PostgreSQL's jsonb."""
    record(ctx)
    return "half of a pair: \ud83d"


raises_a_lone_surrogate = hostile("raises-a-lone-surrogate")


@raises_a_lone_surrogate.step
def raise_a_lone_surrogate(ctx: StepContext) -> None:
    record(ctx)
    raise ValueError("half of a pair: \ud83d")


logs_a_lone_surrogate = hostile("logs-a-lone-surrogate")


@logs_a_lone_surrogate.step
def log_a_lone_surrogate(ctx: StepContext) -> str:
    record(ctx)
    ctx.logger.warning("half of a pair: %s", "\ud83d")
    return "logged"


exits = hostile("exits")


@exits.step(retries=1, backoff=0.1)
def exit_the_worker(ctx: StepContext) -> None:
    record(ctx)
    os._exit(1)


#: What each hostile workflow's run must end with: (status, text in the step's error, or in
#: its log when it succeeds).
HOSTILE = {
    "hangs": ("failed", "step timed out after 1s"),
    "hangs-stubbornly": ("failed", "worker lost"),
    "raises-unprintable": ("failed", "UnprintableError: <unprintable UnprintableError>"),
    "raises-unpicklable": ("failed", "UnpicklableError: ('has a lock, a lambda and a generator'"),
    "raises-base-exception": ("failed", "AbortStep: a BaseException that is not an Exception"),
    "returns-a-set": ("failed", "result of step 'return_a_set' is not JSON-serialisable"),
    "returns-nan": ("failed", "result of step 'return_nan' is not JSON-serialisable"),
    "returns-a-lone-surrogate": ("failed", "result of step 'return_a_lone_surrogate'"),
    "raises-a-lone-surrogate": ("failed", "ValueError: half of a pair: \\ud83d"),
    "logs-a-lone-surrogate": ("succeeded", "half of a pair: \\ud83d"),
    "exits": ("failed", "worker lost"),
}


# -- high availability: per-key ordering and a concurrency limit --------------------------------
ORDERS = kafka_trigger(ORDERS_TOPIC, match={"type": "order"})

ordered = Workflow("ha-ordered", triggers=[ORDERS], partition_by="customer", shards=3)
ordered.step(_work, name="reserve", retries=3, backoff=0.2)
ordered.step(_work, name="charge", after="reserve", retries=3, backoff=0.2)

limited = Workflow(
    "ha-limited",
    triggers=[kafka_trigger(ORDERS_TOPIC, match={"type": "order"})],
    concurrency=Concurrency(key="region", limit=2),
)
limited.step(_work, name="call", retries=3, backoff=0.2)


# -- waits: sleeps and timeouts across restarts (test_wait_faults.py) ---------------------------
#: Load events {"flow": "<workflow>"} on it start the waiting workflows below.
WAITS_TOPIC = f"{PREFIX}waits"
#: The topic `impatient` waits on; nobody publishes the reply, so its timeout fires.
REPLIES_TOPIC = f"{PREFIX}replies"


def waiting(name: str) -> Workflow:
    return Workflow(name, triggers=[kafka_trigger(WAITS_TOPIC, match={"type": "load", "flow": name})])


def _wake_at(ctx: StepContext) -> datetime:
    """At `wake_at` (ISO time: many runs due at one moment), or `nap` seconds after the node
    opens: inputs, so each test picks its sleep."""
    if "wake_at" in ctx.input:
        return datetime.fromisoformat(ctx.input["wake_at"])
    return datetime.now(UTC) + timedelta(seconds=float(ctx.input["nap"]))


#: A task, a durable sleep, a task.
napper = waiting("napper")
napper.step(_work, name="before", retries=3, backoff=0.2)
napper.sleep("nap", after="before", until=_wake_at)
napper.step(_work, name="after", after="nap", retries=3, backoff=0.2)

#: A task, a wait for a reply that never comes (skipped after 5 s), a task skipped with it.
impatient = waiting("impatient")
impatient.step(_work, name="before", retries=3, backoff=0.2)
impatient.wait_for_event("reply", after="before", topic=REPLIES_TOPIC, match={"type": "reply"},
                         correlate={"id": lambda ctx: ctx.input["id"]}, timeout="5s", on_timeout="skip")
impatient.step(_work, name="answered", after="reply", retries=3, backoff=0.2)

#: A task and an approval nobody gives: the run fails 5 s after it opens.
unsigned = waiting("unsigned")
unsigned.step(_work, name="before", retries=3, backoff=0.2)
unsigned.approval("sign-off", after="before", timeout="5s", on_timeout="fail")
unsigned.step(_work, name="after", after="sign-off", retries=3, backoff=0.2)
