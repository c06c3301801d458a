"""Workflows used by the integration tests (loaded with ORCHESTRATOR_WORKFLOWS=tests.flows).

Steps record each execution in Redis (ORCHESTRATOR_TEST_REDIS) so tests can prove, across
worker processes, that no step ran twice.
"""

from __future__ import annotations

import os
import time

import redis

from orchestrator import StepContext, Workflow

_redis: redis.Redis | None = None


def side_channel() -> redis.Redis:
    global _redis
    if _redis is None or _redis.connection_pool.pid != os.getpid():
        _redis = redis.Redis.from_url(os.environ["ORCHESTRATOR_TEST_REDIS"])
    return _redis


def record(ctx: StepContext) -> None:
    """Count this execution and remember which process ran it."""
    r = side_channel()
    r.incr(f"exec:{ctx.run_id}:{ctx.step}")
    r.set(f"pid:{ctx.run_id}:{ctx.step}", os.getpid())


# -- diamond: a -> (b, c) -> d --------------------------------------------------------
diamond = Workflow("diamond")


@diamond.step
def a(ctx: StepContext) -> dict:
    record(ctx)
    return {"n": ctx.input.get("n", 1)}


@diamond.step(after=a)
def b(ctx: StepContext) -> dict:
    record(ctx)
    return {"n": ctx.results["a"]["n"] * 2}


@diamond.step(after=a)
def c(ctx: StepContext) -> dict:
    record(ctx)
    return {"n": ctx.results["a"]["n"] * 3}


@diamond.step(after=[b, c])
def d(ctx: StepContext) -> dict:
    record(ctx)
    ctx.logger.info("joining %s and %s", ctx.results["b"], ctx.results["c"])
    return {"sum": ctx.results["b"]["n"] + ctx.results["c"]["n"]}


# -- fan-out / fan-in: start -> 4 parallel sleepers -> join -------------------------------
fanout = Workflow("fanout")


@fanout.step
def start(ctx: StepContext) -> int:
    record(ctx)
    return 0


def _sleeper(index: int):  # noqa: ANN202
    def sleeper(ctx: StepContext) -> dict:
        record(ctx)
        began = time.time()
        time.sleep(ctx.input.get("sleep", 0.5))
        return {"index": index, "began": began, "ended": time.time()}

    return sleeper


parallel = [fanout.step(_sleeper(i), name=f"part{i}", after=start) for i in range(4)]


@fanout.step(after=parallel)
def join(ctx: StepContext) -> dict:
    record(ctx)
    return {"parts": sorted(r["index"] for r in ctx.results.values())}


# -- branches: a false condition skips its step and what depends only on it ----------------
branches = Workflow("branches")


@branches.step
def decide(ctx: StepContext) -> dict:
    return {"go": "left"}


@branches.step(after=decide, when=lambda ctx: ctx.results["decide"]["go"] == "left")
def left(ctx: StepContext) -> str:
    return "went left"


@branches.step(after=decide, when=lambda ctx: ctx.results["decide"]["go"] == "right")
def right(ctx: StepContext) -> str:
    return "went right"


@branches.step(after=right)
def after_right(ctx: StepContext) -> str:
    return "unreachable"


@branches.step(after=[left, right])
def merge(ctx: StepContext) -> list:
    return sorted(ctx.results)


# -- retries ---------------------------------------------------------------------------
flaky = Workflow("flaky")


@flaky.step(retries=3, backoff=0.1)
def wobbly(ctx: StepContext) -> dict:
    record(ctx)
    if ctx.attempt < 3:
        raise ConnectionError(f"downstream unavailable (attempt {ctx.attempt})")
    return {"succeeded_on": ctx.attempt}


doomed = Workflow("doomed")


@doomed.step
def first(ctx: StepContext) -> str:
    return "ok"


@doomed.step(after=first, retries=1, backoff=0.1)
def breaks(ctx: StepContext) -> None:
    record(ctx)
    raise ValueError("this step always fails")


@doomed.step(after=first)
def sibling(ctx: StepContext) -> str:
    time.sleep(0.3)
    return "sibling done"


@doomed.step(after=breaks)
def never(ctx: StepContext) -> str:
    record(ctx)
    return "must not run"


# -- timeouts, bad results ----------------------------------------------------------------
slow = Workflow("slow")


@slow.step(timeout=1)
def too_slow(ctx: StepContext) -> str:
    time.sleep(30)
    return "too late"


badresult = Workflow("badresult")


@badresult.step
def returns_a_set(ctx: StepContext) -> set:
    return {1, 2, 3}


# -- long-running steps for cancel and kill tests --------------------------------------------
long = Workflow("long")


@long.step(retries=2, backoff=0.1)
def linger(ctx: StepContext) -> dict:
    record(ctx)
    time.sleep(ctx.input.get("sleep", 4))
    return {"attempt": ctx.attempt}


@long.step(after=linger)
def afterwards(ctx: StepContext) -> str:
    record(ctx)
    return "done"


# -- concurrency limits and sharding ---------------------------------------------------------
from orchestrator import Concurrency  # noqa: E402


def _hold(ctx: StepContext) -> dict:
    record(ctx)
    time.sleep(ctx.input.get("sleep", 0.1))
    return {"key": ctx.input.get("customer")}


per_customer = Workflow("per-customer", concurrency=Concurrency(key="customer", limit=1))
per_customer.step(_hold, name="hold", retries=2, backoff=0.1)

two_at_a_time = Workflow("two-at-a-time", concurrency=2)
two_at_a_time.step(_hold, name="hold")

newest_loses = Workflow(
    "newest-loses", concurrency=Concurrency(key="customer", limit=1, strategy="cancel_newest")
)
newest_loses.step(_hold, name="hold")

latest_wins = Workflow(
    "latest-wins", concurrency=Concurrency(key="customer", limit=1, strategy="cancel_in_progress")
)
latest_wins.step(_hold, name="hold")

fragile_calls = Workflow("fragile-calls")
fragile_calls.step(_hold, name="prepare")
fragile_calls.step(_hold, name="call_fragile_service", after="prepare", concurrency=1)

sharded = Workflow("sharded", partition_by="customer", shards=3)
sharded.step(_hold, name="first")
sharded.step(_hold, name="second", after="first")


# -- inline steps: a chain one worker process runs without messages between its steps -------
inline_chain = Workflow("inline-chain")


def _link(ctx: StepContext) -> dict:
    """Sleeps `input["sleep"][step]` seconds in its first attempt."""
    record(ctx)
    ctx.logger.info("link %s, attempt %d", ctx.step, ctx.attempt)
    if ctx.attempt == 1:
        time.sleep(ctx.input.get("sleep", {}).get(ctx.step, 0))
    return {"pid": os.getpid(), "step": ctx.step, "seen": sorted(ctx.results)}


inline_chain.step(_link, name="first")
inline_chain.step(_link, name="second", after="first", retries=2, backoff=0.1)
inline_chain.step(_link, name="third", after="second")
inline_chain.step(_link, name="fourth", after="third", timeout=30)  # has a timeout: its own message
