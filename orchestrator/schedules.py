"""Cron schedules: which ticks start a workflow, and with what input. Pure logic.

`schedule(cron, timezone=..., input=..., catchup=..., max_catchup=...)` is a trigger, like
`kafka_trigger`; the recovery process (`orchestrator.scheduler`) asks `Schedule.plan` which
ticks to fire. Cron expressions are parsed and stepped by `croniter` (5 fields; a 6th is
seconds, a 7th the year), in the schedule's time zone, so daylight-saving changes behave as
croniter does (see the README's "Schedules" section, proved by tests/unit/test_schedules.py):

- a local time that does not exist (spring forward) fires at the first time after the gap
  (`30 2 * * *` in Europe/Paris fires at 03:00 that day; an hourly `0 * * * *` has no 02:00);
- a local time that happens twice (fall back) fires twice, once at each UTC offset.

A tick the scheduler sees more than `MISSED_AFTER` after its time was *missed* (nothing was
running); ticks on time always fire, and `catchup` decides about the missed ones.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from .errors import WorkflowDefinitionError

if TYPE_CHECKING:
    from .dsl import Workflow

#: What to do with ticks missed while no scheduler ran: fire the most recent one only,
#: every one (at most `max_catchup`, the newest), or none (wait for the next tick).
CATCHUP = ("latest", "all", "none")
DEFAULT_CATCHUP = "latest"
#: Missed ticks fired at most by `catchup="all"`; older ones are dropped (and said so).
DEFAULT_MAX_CATCHUP = 100
#: A tick seen later than this after its time was missed. The scheduler looks every second
#: (`scheduler.INTERVAL`), so only a stop, an outage or a stall this long misses a tick.
MISSED_AFTER = timedelta(seconds=5)
#: Missed ticks counted at most (a per-second cron down for a week is not stepped through).
COUNT_LIMIT = 10_000

InputSpec = Mapping[str, Any] | Callable[[datetime], Any] | None


@dataclass(frozen=True)
class TickPlan:
    """What one scheduler pass does for a schedule (`Schedule.plan`)."""

    #: Ticks to start a run for, oldest first (aware datetimes in the schedule's zone).
    fire: list[datetime]
    #: Missed ticks left out by the catchup policy (at most `COUNT_LIMIT` are counted).
    skipped: int
    #: The newest due tick (UTC), fired or skipped: the next pass looks only after it (None: none due).
    newest: datetime | None
    #: The first tick after `now`.
    next_fire: datetime

    def note(self, catchup: str) -> str | None:
        """What the pass left out, for the schedule's `last_error` and the log; None if nothing."""
        if not self.skipped:
            return None
        count = f"{self.skipped}+" if self.skipped >= COUNT_LIMIT else str(self.skipped)
        if catchup == "all":
            return f"{count} missed tick(s) older than the newest max_catchup were dropped"
        return f"{count} missed tick(s) skipped (catchup={catchup!r})"


@dataclass(eq=False)
class Schedule:
    """Start `workflow` at each tick of `cron` in `timezone` (see the module docstring)."""

    cron: str
    timezone: str = "UTC"
    input: InputSpec = None
    catchup: str = DEFAULT_CATCHUP
    max_catchup: int = DEFAULT_MAX_CATCHUP
    workflow: str = field(default="", init=False)
    #: Stable across deploys while cron and time zone stay: a hash of both.
    id: str = field(default="", init=False)

    def bind(self, workflow: Workflow) -> None:
        """Check the options (now, when the workflow is defined) and take the workflow's name."""
        where = f"workflow {workflow.name!r}: schedule({self.cron!r})"
        if not isinstance(self.cron, str) or not croniter.is_valid(self.cron):
            raise WorkflowDefinitionError(
                f"{where}: not a valid cron expression; use 5 fields (minute hour day month "
                "weekday), a 6th for seconds, or a nickname such as @daily"
            )
        if not _known_zone(self.timezone):
            raise WorkflowDefinitionError(
                f"{where}: unknown timezone {self.timezone!r}; use an IANA name such as "
                "'Europe/Paris' or 'UTC'"
            )
        if self.catchup not in CATCHUP:
            raise WorkflowDefinitionError(
                f"{where}: catchup={self.catchup!r}; use one of {', '.join(CATCHUP)}"
            )
        if not isinstance(self.max_catchup, int) or isinstance(self.max_catchup, bool) or self.max_catchup < 1:
            raise WorkflowDefinitionError(f"{where}: max_catchup={self.max_catchup!r}; use a positive integer")
        if self.input is not None and not callable(self.input):
            if not isinstance(self.input, Mapping):
                raise WorkflowDefinitionError(
                    f"{where}: input must be a dict (the run input) or a function of the tick"
                )
            try:
                json.dumps(dict(self.input), allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise WorkflowDefinitionError(f"{where}: input is not JSON ({exc})") from None
        self.workflow = workflow.name
        self.id = schedule_id(self.cron, self.timezone)
        for other in workflow.triggers:
            if isinstance(other, Schedule) and other is not self and other.id == self.id:
                raise WorkflowDefinitionError(
                    f"{where}: the workflow has this cron and timezone twice; keep one schedule"
                )

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def run_input(self, tick: datetime) -> dict[str, Any]:
        """The run input for `tick`. A function that raises propagates; one that returns
        something else than a dict raises `TypeError` (the caller records either)."""
        if self.input is None:
            return {}
        if not callable(self.input):
            return dict(self.input)
        value = self.input(tick.astimezone(self.zone))
        if not isinstance(value, Mapping):
            raise TypeError(f"the input function returned {type(value).__name__}, not a dict")
        return dict(value)

    def dedupe_key(self, tick: datetime) -> str:
        """The run's dedupe key for `tick`: one run per (workflow, schedule, tick), whoever fires."""
        return dedupe_key(self.id, tick)

    def next_after(self, moment: datetime) -> datetime:
        """The first tick strictly after `moment`."""
        return croniter(self.cron, moment.astimezone(self.zone)).get_next(datetime)

    def plan(self, start: datetime, now: datetime, missed_after: timedelta = MISSED_AFTER) -> TickPlan:
        """Which ticks in (`start`, `now`] to fire: those on time (at most `missed_after`
        old) always; of the missed ones, by `catchup`: `latest` the newest when no tick
        is on time, `all` the newest `max_catchup`, `none` nothing."""
        # In UTC: aware datetimes of one zone compare and subtract by wall time, which a
        # fall-back hour makes ambiguous.
        start, now = start.astimezone(UTC), now.astimezone(UTC)
        wanted = {"latest": 1, "all": self.max_catchup, "none": 0}[self.catchup]
        on_time: list[datetime] = []
        missed: list[datetime] = []
        skipped = 0
        newest: datetime | None = None
        ticks = croniter(self.cron, (now + timedelta(microseconds=1)).astimezone(self.zone))
        while True:
            tick = ticks.get_prev(datetime).astimezone(UTC)
            if tick <= start:
                break
            newest = newest or tick
            if now - tick <= missed_after:
                on_time.append(tick)
            elif len(missed) < wanted:
                missed.append(tick)
            else:
                skipped += 1
                if skipped >= COUNT_LIMIT:
                    break
        if self.catchup == "latest" and on_time and missed:
            skipped += len(missed)
            missed = []
        return TickPlan(fire=[t.astimezone(self.zone) for t in sorted(on_time + missed)], skipped=skipped, newest=newest, next_fire=self.next_after(now))

    def describe(self) -> dict[str, Any]:
        """JSON description for the CLI and API."""
        return {
            "type": "schedule",
            "id": self.id,
            "cron": self.cron,
            "timezone": self.timezone,
            "input": None if self.input is None else ("<function>" if callable(self.input) else dict(self.input)),
            "catchup": self.catchup,
            "max_catchup": self.max_catchup,
        }


def _known_zone(name: Any) -> bool:
    if not isinstance(name, str) or not name:
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def schedule_id(cron: str, timezone: str) -> str:
    """A short, stable id for a schedule of a workflow: a hash of its cron and time zone."""
    text = " ".join(cron.split()) + "\n" + timezone
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def dedupe_key(schedule: str, tick: datetime) -> str:
    """`schedule:<schedule id>:<tick in UTC, ISO 8601>`."""
    moment = tick.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return f"schedule:{schedule}:{moment}"


def schedules_of(workflow: Workflow) -> list[Schedule]:
    """The workflow's schedule triggers, in the order given."""
    return [t for t in workflow.triggers if isinstance(t, Schedule)]


def schedule(
    cron: str,
    *,
    timezone: str = "UTC",
    input: InputSpec = None,
    catchup: str = DEFAULT_CATCHUP,
    max_catchup: int = DEFAULT_MAX_CATCHUP,
) -> Schedule:
    """Declare that the workflow starts at each tick of `cron` in `timezone`.

    `input` is the run input: a dict, or a function of the tick (an aware datetime in
    `timezone`) returning one. Options are checked when the workflow is defined.
    """
    return Schedule(cron=cron, timezone=timezone, input=input, catchup=catchup, max_catchup=max_catchup)
