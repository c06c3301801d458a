"""Cron schedules as pure logic: options checked at definition, which ticks a pass fires
under each catchup policy (with an explicit `now`), and what daylight-saving changes do
(the README's "Schedules" section states exactly this)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from orchestrator import Workflow, WorkflowDefinitionError, kafka_trigger, schedule
from orchestrator.intake import TriggerIndex
from orchestrator.registry import Registry
from orchestrator.schedules import COUNT_LIMIT, MISSED_AFTER, Schedule, dedupe_key

PARIS = ZoneInfo("Europe/Paris")


def bound(cron: str = "* * * * *", name: str = "nightly", **options: object) -> Schedule:
    trigger = schedule(cron, **options)  # type: ignore[arg-type]
    flow = Workflow(name, triggers=[trigger])

    @flow.step
    def only(ctx):  # noqa: ANN001, ANN202
        return None

    return trigger


def at(text: str, zone: ZoneInfo | None = None) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment.replace(tzinfo=zone or UTC) if moment.tzinfo is None else moment


# -- definition -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "said"),
    [
        ({"cron": "61 * * * *"}, "not a valid cron expression"),
        ({"cron": "every day"}, "not a valid cron expression"),
        ({"timezone": "Mars/Olympus"}, "unknown timezone 'Mars/Olympus'"),
        ({"timezone": ""}, "unknown timezone ''"),
        ({"catchup": "some"}, "catchup='some'; use one of latest, all, none"),
        ({"max_catchup": 0}, "max_catchup=0; use a positive integer"),
        ({"max_catchup": True}, "max_catchup=True"),
        ({"max_catchup": 2.5}, "max_catchup=2.5"),
        ({"input": [1, 2]}, "input must be a dict (the run input) or a function of the tick"),
        ({"input": {"at": datetime(2026, 1, 1)}}, "input is not JSON"),
    ],
)
def test_a_bad_option_fails_the_workflow_definition_naming_it(options, said):
    cron = options.pop("cron", "0 2 * * *")
    with pytest.raises(WorkflowDefinitionError) as caught:
        Workflow("nightly-invoices", triggers=[schedule(cron, **options)])
    assert "workflow 'nightly-invoices': schedule(" in str(caught.value)
    assert said in str(caught.value)


def test_the_same_cron_and_timezone_twice_in_one_workflow_is_refused():
    with pytest.raises(WorkflowDefinitionError, match="this cron and timezone twice"):
        Workflow("w", triggers=[schedule("0 2 * * *"), schedule("0  2 * * *", input={"x": 1})])


def test_six_fields_are_seconds_and_nicknames_are_accepted():
    assert bound("* * * * * */2").next_after(at("2026-01-01T00:00:00")) == at("2026-01-01T00:00:02")
    assert bound("@daily").next_after(at("2026-01-01T10:00:00")) == at("2026-01-02T00:00:00")


def test_the_id_depends_on_cron_and_timezone_only_and_the_dedupe_key_on_the_tick_in_utc():
    a = bound("0 2 * * *", timezone="Europe/Paris", input={"region": "eu"})
    b = bound("0 2 * * *", name="other", timezone="Europe/Paris", catchup="all")
    c = bound("0 3 * * *", timezone="Europe/Paris")
    assert a.id == b.id != c.id and len(a.id) == 12
    tick = at("2026-07-01T02:00:00", PARIS)
    assert a.dedupe_key(tick) == f"schedule:{a.id}:2026-07-01T00:00:00Z" == dedupe_key(a.id, tick)


def test_a_schedule_is_not_taken_for_a_kafka_trigger():
    flow = Workflow("both", triggers=[kafka_trigger("orders"), schedule("0 * * * *")])

    @flow.step
    def only(ctx):  # noqa: ANN001, ANN202
        return None

    assert TriggerIndex(Registry([flow])).topics == ["orders"]
    assert [t["type"] for t in flow.describe()["triggers"]] == ["kafka", "schedule"]


def test_the_input_function_gets_the_tick_in_the_schedules_zone_and_must_return_a_dict():
    seen = []
    sched = bound("0 2 * * *", timezone="Europe/Paris", input=lambda tick: seen.append(tick) or {"day": tick.day})
    assert sched.run_input(at("2026-07-01T00:00:00")) == {"day": 1}
    assert seen[0].tzinfo == PARIS and seen[0].hour == 2
    assert bound(input={"region": "eu"}).run_input(at("2026-07-01T00:00:00")) == {"region": "eu"}
    assert bound().run_input(at("2026-07-01T00:00:00")) == {}
    with pytest.raises(TypeError, match="returned list, not a dict"):
        bound(input=lambda tick: [1]).run_input(at("2026-07-01T00:00:00"))


# -- which ticks a pass fires ---------------------------------------------------------------------


def test_a_pass_on_time_fires_the_tick_just_passed_and_says_when_the_next_one_is():
    plan = bound().plan(start=at("2026-01-01T10:00:30"), now=at("2026-01-01T10:01:00.400"))
    assert plan.fire == [at("2026-01-01T10:01:00")]
    assert plan.newest == at("2026-01-01T10:01:00") and plan.skipped == 0
    assert plan.next_fire == at("2026-01-01T10:02:00")


def test_nothing_is_due_before_the_first_tick_after_start():
    plan = bound().plan(start=at("2026-01-01T10:01:00"), now=at("2026-01-01T10:01:59"))
    assert (plan.fire, plan.newest, plan.skipped) == ([], None, 0)


#: 10 minutes down: the last tick handled was 10:00, the scheduler is back at 10:10:30.
DOWN_FROM, BACK_AT = at("2026-01-01T10:00:00"), at("2026-01-01T10:10:30")
MISSED = [at(f"2026-01-01T10:{m:02d}:00") for m in range(1, 11)]


def test_catchup_latest_fires_only_the_most_recent_missed_tick():
    plan = bound(catchup="latest").plan(DOWN_FROM, BACK_AT)
    assert plan.fire == [MISSED[-1]] and plan.skipped == 9 and plan.newest == MISSED[-1]
    assert plan.note("latest") == "9 missed tick(s) skipped (catchup='latest')"


def test_catchup_all_fires_every_missed_tick_oldest_first():
    plan = bound(catchup="all").plan(DOWN_FROM, BACK_AT)
    assert plan.fire == MISSED and plan.skipped == 0 and plan.note("all") is None


def test_catchup_all_keeps_the_newest_max_catchup_and_says_how_many_were_dropped():
    plan = bound(catchup="all", max_catchup=3).plan(DOWN_FROM, BACK_AT)
    assert plan.fire == MISSED[-3:] and plan.skipped == 7 and plan.newest == MISSED[-1]
    assert plan.note("all") == "7 missed tick(s) older than the newest max_catchup were dropped"


def test_catchup_none_skips_every_missed_tick_and_waits_for_the_next():
    plan = bound(catchup="none").plan(DOWN_FROM, BACK_AT)
    assert plan.fire == [] and plan.skipped == 10 and plan.newest == MISSED[-1]
    assert plan.next_fire == at("2026-01-01T10:11:00")


@pytest.mark.parametrize("catchup", ["latest", "all", "none"])
def test_a_tick_on_time_fires_whatever_the_policy_and_latest_drops_the_missed_ones_then(catchup):
    now = at("2026-01-01T10:10:00") + MISSED_AFTER / 2
    plan = bound(catchup=catchup).plan(DOWN_FROM, now)
    assert plan.fire[-1] == MISSED[-1]
    assert plan.fire == {"latest": [MISSED[-1]], "all": MISSED, "none": [MISSED[-1]]}[catchup]


def test_a_long_outage_of_a_per_second_schedule_is_not_stepped_through_tick_by_tick():
    plan = bound("* * * * * *", catchup="none").plan(at("2026-01-01T00:00:00"), at("2026-01-08T00:00:00"))
    assert plan.skipped == COUNT_LIMIT and plan.note("none").startswith(f"{COUNT_LIMIT}+ missed")
    assert plan.newest == at("2026-01-08T00:00:00")


# -- daylight saving (Europe/Paris: 2026-03-29 02:00 -> 03:00, 2026-10-25 03:00 -> 02:00) -----------


def fired(cron: str, start: str, end: str) -> list[str]:
    """Every tick from start to end in Paris, as `local time (UTC offset)`, as passes fire them."""
    sched = bound(cron, timezone="Europe/Paris", catchup="all", max_catchup=1000)
    plan = sched.plan(at(start, PARIS), at(end, PARIS), missed_after=timedelta(0))
    return [f"{t:%m-%d %H:%M} ({t:%z})" for t in plan.fire]


def test_spring_forward_a_nonexistent_time_fires_once_at_the_end_of_the_gap():
    assert fired("30 2 * * *", "2026-03-28T00:00:00", "2026-03-30T12:00:00") == [
        "03-28 02:30 (+0100)", "03-29 03:00 (+0200)", "03-30 02:30 (+0200)"]
    assert fired("0 * * * *", "2026-03-29T00:30:00", "2026-03-29T04:30:00") == [
        "03-29 01:00 (+0100)", "03-29 03:00 (+0200)", "03-29 04:00 (+0200)"]  # no 02:00


def test_fall_back_a_time_that_happens_twice_fires_twice():
    assert fired("30 2 * * *", "2026-10-24T12:00:00", "2026-10-26T12:00:00") == [
        "10-25 02:30 (+0200)", "10-25 02:30 (+0100)", "10-26 02:30 (+0100)"]
    assert fired("0 * * * *", "2026-10-25T00:30:00", "2026-10-25T03:30:00") == [
        "10-25 01:00 (+0200)", "10-25 02:00 (+0200)", "10-25 02:00 (+0100)", "10-25 03:00 (+0100)"]


def test_dst_ticks_have_distinct_dedupe_keys_so_both_fall_back_runs_start():
    sched = bound("30 2 * * *", timezone="Europe/Paris", catchup="all")
    plan = sched.plan(at("2026-10-25T00:00:00", PARIS), at("2026-10-25T12:00:00", PARIS))
    assert len({sched.dedupe_key(t) for t in plan.fire}) == 2
