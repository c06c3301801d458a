"""Temp-file cleanup every 5 minutes: a cron schedule whose input is computed from the tick.

Runs only where a worker runs its recovery loop (the scheduler lives there); see the
README's "Schedules" section. `orchestrator schedules` shows its next fire time.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from orchestrator import StepContext, Workflow, schedule

#: Files older than this at the tick are removed.
MAX_AGE = timedelta(hours=1)


def cutoff_for(tick: datetime) -> dict:
    """The run input of a tick: remove what was last touched before an hour ago."""
    return {"older_than": (tick - MAX_AGE).isoformat(), "tick": tick.isoformat()}


flow = Workflow(
    "temp-cleanup",
    description="Every 5 minutes, list temporary files older than an hour and remove them.",
    triggers=[schedule("*/5 * * * *", timezone="UTC", input=cutoff_for, catchup="latest")],
)


@flow.step
def find_stale(ctx: StepContext) -> dict:
    cutoff = datetime.fromisoformat(ctx.input["older_than"])
    files = ctx.input.get("files", [])  # a real workflow would list a directory or a bucket
    stale = [f["name"] for f in files if datetime.fromisoformat(f["modified"]) < cutoff]
    ctx.logger.info("%d of %d file(s) older than %s", len(stale), len(files), cutoff)
    return {"stale": stale}


@flow.step(after=find_stale, retries=2)
def remove(ctx: StepContext) -> dict:
    stale = ctx.results["find_stale"]["stale"]
    return {"removed": len(stale)}
