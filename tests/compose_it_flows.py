"""Workflows for tests/integration/test_compose.py and tests/faults/test_map_faults.py:
maps and calls run by real worker processes."""

from __future__ import annotations

import os
import time

import redis

from orchestrator import Workflow


def _side() -> redis.Redis:
    return redis.Redis.from_url(os.environ["ORCHESTRATOR_TEST_REDIS"])


items = Workflow("it-map")


@items.map(over=lambda ctx: list(range(ctx.input["n"])), concurrency=5, retries=2, backoff=0.1)
def work(ctx):
    if ctx.index in ctx.input.get("flaky", []) and ctx.attempt == 1:
        raise RuntimeError(f"item {ctx.index} fails its first attempt")
    if ctx.index in ctx.input.get("broken", []):
        raise ValueError(f"item {ctx.index} always fails")
    if ctx.input.get("sleep"):
        time.sleep(ctx.input["sleep"])
    _side().incr(f"item:{ctx.run_id}:{ctx.index}")
    return {"i": ctx.index, "square": ctx.item * ctx.item}


@items.step(after=work)
def count(ctx):
    return {"n": len(ctx.results["work"]), "last": ctx.results["work"][-1] if ctx.results["work"] else None}


lenient = Workflow("it-lenient")


@lenient.map(over=lambda ctx: ctx.input["values"], allow_failures=True)
def invert(ctx):
    return 1 / ctx.item


@lenient.step(after=invert)
def report(ctx):
    return {"results": ctx.results["invert"], "failed": sorted(ctx.map_errors["invert"])}


child = Workflow("it-child", output=lambda results: {"total": results["add"]["total"]})


@child.step
def add(ctx):
    if ctx.input.get("fail_first") and _side().set(f"child-failed:{ctx.input['tag']}", 1, nx=True):
        raise RuntimeError("the first child fails")
    if ctx.input.get("fail"):
        raise RuntimeError("child always fails")
    if ctx.input.get("sleep"):
        time.sleep(ctx.input["sleep"])
    return {"total": sum(ctx.input["values"])}


parent = Workflow("it-parent")


@parent.step
def gather(ctx):
    return {"values": ctx.input.get("values", [1, 2, 3])}


total = parent.call("it-child", name="total", after=gather, retries=1,
                    input=lambda ctx: {**ctx.input, "values": ctx.results["gather"]["values"],
                                       "tag": ctx.run_id})


@parent.step(after=total)
def publish(ctx):
    return {"published": ctx.results["total"]}
