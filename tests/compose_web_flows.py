"""Workflows of the dashboard, API and CLI tests of maps and calls (tests/integration/
test_compose_surfaces.py, tests/browser/test_composition.py): a map and a call that are
roots, so a run has its items and its child as soon as it starts, without a worker."""

from __future__ import annotations

from orchestrator import Workflow

squares = Workflow("w-squares")


@squares.map(over=lambda ctx: ctx.input["items"], concurrency=5, allow_failures=True)
def square(ctx):
    if ctx.item < 0:
        raise ValueError(f"negative: {ctx.item}")
    return ctx.item * ctx.item


@squares.step(after=square)
def total(ctx):
    return {"sum": sum(v for v in ctx.results["square"] if v is not None)}


doubler = Workflow("w-double", output=lambda results: {"doubled": results["double"]["value"]})


@doubler.step
def double(ctx):
    return {"value": ctx.input["x"] * 2}


caller = Workflow("w-caller")
report = caller.call("w-double", input=lambda ctx: {"x": ctx.input.get("x", 21)})


@caller.step(after=report)
def use(ctx):
    return {"got": ctx.results["w-double"]}


starter = Workflow("w-starter")


@starter.step
def kick(ctx):
    ctx.start_run("w-double", {"x": 5})
    return "kicked"


composed = Workflow("w-composed")


@composed.map(over=lambda ctx: ctx.input["items"], concurrency=10, allow_failures=True)
def each(ctx):
    if ctx.item < 0:
        raise ValueError(f"negative: {ctx.item}")
    return ctx.item + 1


child = composed.call("w-double", name="child", input=lambda ctx: {"x": 2})


@composed.step(after=[each, child])
def finish(ctx):
    return {"items": len(ctx.results["each"]), "child": ctx.results["child"]}
