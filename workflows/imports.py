"""Stock import: load two supplier feeds in parallel, then clean up and report whatever
happened (trigger rules), and page someone if the import failed (`on_failure`)."""

from __future__ import annotations

from orchestrator import StepContext, Workflow

flow = Workflow(
    "stock-import",
    description="Import two supplier feeds; clean up whatever happens; alert when it failed.",
    input_schema={
        "type": "object",
        "properties": {"broken": {"type": "array", "items": {"enum": ["north", "south"]}}},
    },
)


def _load(ctx: StepContext, feed: str) -> dict:
    if feed in ctx.input.get("broken", []):
        raise ConnectionError(f"feed {feed} unreachable")
    ctx.logger.info("loaded feed %s", feed)
    return {"feed": feed, "rows": 100}


@flow.step
def open_batch(ctx: StepContext) -> dict:
    return {"batch": ctx.run_id[:8]}


@flow.step(after=open_batch)
def load_north(ctx: StepContext) -> dict:
    return _load(ctx, "north")


@flow.step(after=open_batch)
def load_south(ctx: StepContext) -> dict:
    return _load(ctx, "south")


@flow.step(after=[load_north, load_south], trigger_rule="all_done")
def close_batch(ctx: StepContext) -> dict:
    """Runs once both loads are final, whether they succeeded or not."""
    return {"closed": True, "loaded": sorted(ctx.results)}


@flow.step(after=[load_north, load_south], trigger_rule="one_success")
def refresh_search(ctx: StepContext) -> dict:
    """Runs as soon as one feed is in, without waiting for the other."""
    return {"refreshed": sorted(ctx.results)}


@flow.step(after=[load_north, load_south])
def publish_prices(ctx: StepContext) -> dict:
    """The default rule (all_success): cancelled if a feed failed."""
    return {"published": True}


@flow.on_failure(retries=2)
def alert(ctx: StepContext) -> dict:
    """Runs once when the run fails, after every other step settled."""
    ctx.logger.warning("stock import failed: %s", ctx.failed)
    return {"paged": sorted(ctx.failed)}
