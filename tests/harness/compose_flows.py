"""Workflows for tests/harness/test_compose.py: maps and calls."""

from __future__ import annotations

from orchestrator import Workflow

fanout = Workflow("c-fanout", output=lambda results: {"total": sum(results["square"])})


@fanout.step
def numbers(ctx):
    return {"n": ctx.input.get("n", 3)}


@fanout.map(over=lambda ctx: list(range(ctx.results["numbers"]["n"])), after=numbers, concurrency=2, retries=1)
def square(ctx):
    if ctx.input.get("fail") == ctx.index and ctx.attempt <= ctx.input.get("fail_times", 1):
        raise RuntimeError(f"item {ctx.index} broke")
    return ctx.item * ctx.item


@fanout.step(after=square)
def total(ctx):
    return {"sum": sum(ctx.results["square"]), "count": len(ctx.results["square"])}


lenient = Workflow("c-lenient")


@lenient.map(over=lambda ctx: ctx.input["items"], allow_failures=True)
def check(ctx):
    if ctx.item < 0:
        raise ValueError(f"negative: {ctx.item}")
    return ctx.item


@lenient.step(after=check)
def summary(ctx):
    return {"results": ctx.results["check"], "errors": {str(k): v for k, v in ctx.map_errors["check"].items()}}


bad_over = Workflow("c-bad-over")


@bad_over.map(over=lambda ctx: ctx.input.get("items"))
def each(ctx):
    return ctx.item


child = Workflow("c-child", output=lambda results: {"doubled": results["double"]["value"]})


@child.step
def double(ctx):
    if ctx.input.get("fail"):
        raise RuntimeError("child broke")
    return {"value": ctx.input["x"] * 2}


parent = Workflow("c-parent")


@parent.step
def prepare(ctx):
    return {"x": ctx.input.get("x", 21)}


report = parent.call("c-child", after=prepare, retries=1,
                     input=lambda ctx: {"x": ctx.results["prepare"]["x"], "fail": ctx.input.get("fail", False)})


@parent.step(after=report)
def use(ctx):
    return {"got": ctx.results["c-child"]}


starter = Workflow("c-starter")


@starter.step
def kick(ctx):
    ctx.start_run("c-child", {"x": 5})
    return "kicked"


sibling = Workflow("c-sibling")


@sibling.step
def breaks(ctx):
    raise RuntimeError("sibling broke")


waits_for_child = sibling.call("c-slow-child", name="slow")

slow_child = Workflow("c-slow-child")
slow_child.sleep("nap", duration="1h")


limited = Workflow("c-limited", concurrency=1)


@limited.map(over=lambda ctx: ctx.input["items"], when=lambda ctx: not ctx.input.get("skip"))
def each_limited(ctx):
    if ctx.item == "bad" and not ctx.input.get("fixed"):
        raise RuntimeError("bad item")
    return ctx.item.upper()


nested = Workflow("c-nested")
nested.call("c-fanout", name="inner", input=lambda ctx: {"n": 4})


skips = Workflow("c-skips")


@skips.step(when=lambda ctx: ctx.input.get("go", False))
def gate(ctx):
    return {"n": 2}


@skips.map(over=lambda ctx: list(range(ctx.results["gate"]["n"])), after=gate)
def after_gate(ctx):
    return ctx.item


skipped_call = skips.call("c-child", name="child_after_gate", after=after_gate,
                          input=lambda ctx: {"x": len(ctx.results["after_gate"])})


@skips.step(after=skipped_call)
def last(ctx):
    return ctx.results["child_after_gate"]
