"""The `orchestrator.testing` harness itself: its clock, fail=, patch_step, publish, isolation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from orchestrator import clock
from orchestrator.errors import InvalidInput
from orchestrator.testing import Harness, HarnessError
from orchestrator.testing.harness import seconds_of

FLOWS = "tests.harness.flows"
pytestmark = pytest.mark.orchestrator(workflows=[FLOWS])
START = datetime(2030, 1, 1, 9, 0, tzinfo=UTC)


def attempts(step) -> list[str]:  # noqa: ANN001 - a StepResult
    return [a.status for a in step.attempts]


# -- the clock -----------------------------------------------------------------------------


def test_start_returns_once_everything_due_now_has_run(orchestrator_test):
    run = orchestrator_test.start("harness-flaky")
    assert run.status == "running"
    wobble = run.steps["wobble"]
    assert wobble.status == "retrying" and attempts(wobble) == ["failed"]
    assert run.steps["settle"].status == "pending"
    assert [q.dispatch.step for q in orchestrator_test.queued] == ["wobble"]


def test_a_retry_runs_only_once_its_backoff_has_passed_on_the_clock(orchestrator_test):
    run = orchestrator_test.start("harness-flaky")
    assert orchestrator_test.advance("4s") == 0
    assert attempts(run.steps["wobble"]) == ["failed"]
    assert orchestrator_test.advance("1s") == 1  # 5 s: the first retry (backoff 5 s)
    assert attempts(run.steps["wobble"]) == ["failed", "failed"]
    orchestrator_test.advance("9s")
    assert run.status == "running"  # the second retry waits 10 s
    orchestrator_test.advance("1s")
    assert run.status == "succeeded"
    assert run.steps["wobble"].result == {"succeeded_on": 3}
    assert run.steps["settle"].result == {"after": {"succeeded_on": 3}}
    assert run.steps["wobble"].logs == ["attempt 1", "attempt 2", "attempt 3"]
    assert "ConnectionError: downstream unavailable (attempt 1)" in run.steps["wobble"].attempts[0].error


def test_advance_runs_what_fell_due_in_due_order_each_at_its_due_time(orchestrator_test):
    began = orchestrator_test.now
    run = orchestrator_test.start("harness-race")
    assert [q.dispatch.step for q in orchestrator_test.queued] == ["quick", "slow"]
    assert orchestrator_test.advance("1m") == 2
    steps = run.steps
    quick, slow = steps["quick"].attempts[1], steps["slow"].attempts[1]
    assert quick.started_at < quick.finished_at <= slow.started_at
    assert abs(quick.started_at - began - timedelta(seconds=10)) < timedelta(seconds=1)
    assert abs(slow.started_at - began - timedelta(seconds=30)) < timedelta(seconds=1)
    assert run.status == "succeeded"
    assert orchestrator_test.now - began >= timedelta(minutes=1)


@pytest.mark.orchestrator(workflows=[FLOWS], start=START)
def test_the_engine_records_the_fake_clocks_time(orchestrator_test):
    run = orchestrator_test.start("harness-chain", {"n": 1})
    assert run.state().created_at - START < timedelta(seconds=1)
    orchestrator_test.advance("25h")
    later = orchestrator_test.start("harness-chain", {"n": 2})
    assert later.state().created_at - START >= timedelta(hours=25)
    assert clock.now() - START >= timedelta(hours=25)


@pytest.mark.parametrize(
    ("duration", "seconds"),
    [("25h", 90_000), ("90s", 90), ("10m", 600), ("2d", 172_800), (5, 5), (2.5, 2.5),
     (timedelta(minutes=2), 120)],
)
def test_durations_read_as_the_settings_do(duration, seconds):
    assert seconds_of(duration) == seconds


@pytest.mark.parametrize("duration", ["soon", "-5s", -1, None])
def test_an_unreadable_or_negative_duration_says_how_to_write_one(duration):
    with pytest.raises(HarnessError):
        seconds_of(duration)


# -- replacing step bodies ---------------------------------------------------------------


def test_fail_raises_in_every_attempt_until_the_step_fails_the_run(orchestrator_test):
    run = orchestrator_test.start("harness-chain", {"n": 1}, fail={"second": RuntimeError("boom")})
    assert run.steps["second"].status == "retrying"
    orchestrator_test.advance("1m")
    assert run.status == "failed"
    assert run.error == "step 'second' failed"
    second = run.steps["second"]
    assert [a.error for a in second.attempts] == ["RuntimeError: boom"] * 2
    assert "Traceback" in second.attempts[0].traceback
    assert run.steps["first"].result == {"n": 2}


def test_fail_with_a_list_fails_those_attempts_then_runs_the_real_step(orchestrator_test):
    run = orchestrator_test.start("harness-chain", {"n": 1}, fail={"second": [TimeoutError, None]})
    assert attempts(run.steps["second"]) == ["failed"]
    assert run.steps["second"].attempts[0].error == "TimeoutError: failed by fail= (attempt 1)"
    orchestrator_test.advance("1m")
    assert run.status == "succeeded"
    assert run.steps["second"].result == {"n": 20}


def test_fail_applies_to_its_run_only(orchestrator_test):
    failing = orchestrator_test.start("harness-chain", {"n": 1}, fail={"first": ValueError("no")})
    fine = orchestrator_test.start("harness-chain", {"n": 2})
    assert failing.status == "failed" and fine.status == "succeeded"


def test_fail_must_name_a_step_of_the_workflow(orchestrator_test):
    with pytest.raises(HarnessError, match="its steps: first, second"):
        orchestrator_test.start("harness-chain", {"n": 1}, fail={"third": RuntimeError()})
    with pytest.raises(HarnessError, match="not an exception"):
        orchestrator_test.start("harness-chain", {"n": 1}, fail={"first": ["oops"]})


def test_patch_step_replaces_the_body_of_runs_started_while_it_is_in_force(orchestrator_test):
    with orchestrator_test.patch_step("first", lambda ctx: {"n": 100}):
        patched = orchestrator_test.start("harness-chain", {"n": 1})
    after = orchestrator_test.start("harness-chain", {"n": 1})
    assert patched.steps["second"].result == {"n": 1000}
    assert after.steps["second"].result == {"n": 20}


def test_a_run_keeps_its_patched_body_for_its_retries(orchestrator_test):
    calls: list[int] = []

    def flaky_once(ctx):  # noqa: ANN001, ANN202
        calls.append(ctx.attempt)
        if ctx.attempt == 1:
            raise ConnectionError("once")
        return {"n": -1}

    patch = orchestrator_test.patch_step("second", flaky_once)
    run = orchestrator_test.start("harness-chain", {"n": 1})
    patch.undo()
    orchestrator_test.advance("1m")
    assert calls == [1, 2]
    assert run.steps["second"].result == {"n": -1}


def test_patch_step_refuses_a_step_no_workflow_has(orchestrator_test):
    with pytest.raises(HarnessError, match="no step of that name"):
        orchestrator_test.patch_step("frist", lambda ctx: None)


def test_a_step_still_times_out_as_on_a_worker(orchestrator_test):
    run = orchestrator_test.start("harness-timeout")
    assert run.status == "failed"
    assert run.steps["dawdle"].error == "step timed out after 0.2s"


def test_bad_input_is_refused_as_by_the_engine(orchestrator_test):
    with pytest.raises(InvalidInput, match="'n' is a required property"):
        orchestrator_test.start("harness-chain", {})


# -- publishing events ---------------------------------------------------------------------


def test_a_published_event_starts_its_run_through_the_consumer(orchestrator_test):
    outcome = orchestrator_test.publish("things", {"type": "thing.happened", "thing": {"n": 4}}, key="4")
    assert outcome.matched and outcome.reason is None
    assert (outcome.topic, outcome.partition, outcome.offset) == ("things", 0, 0)
    [run] = outcome.runs
    assert run.workflow == "harness-chain"
    assert run.event_id == outcome.event_id
    assert run.steps["second"].result == {"n": 50}
    assert orchestrator_test.consumer.kafka_consumer.committed  # the offset was committed


def test_a_rejected_event_comes_back_with_its_reason_and_its_dead_letter(orchestrator_test):
    outcome = orchestrator_test.publish("things", {"type": "thing.happened", "thing": {"n": "four"}})
    assert outcome.rejected and outcome.runs == []
    assert "fails its schema at n: 'four' is not of type 'integer'" in outcome.reason
    [letter] = outcome.dead_letters
    assert letter.topic == "things.dlq"
    assert letter.header("orchestrator-reason") == outcome.reason
    assert letter.header("orchestrator-event-id") == str(outcome.event_id)


def test_a_message_that_is_not_json_is_rejected_as_such(orchestrator_test):
    outcome = orchestrator_test.publish("things", b"{not json")
    assert outcome.rejected
    assert outcome.reason.startswith("not JSON:")


def test_events_not_matching_any_trigger_are_ignored(orchestrator_test):
    outcome = orchestrator_test.publish("things", {"type": "thing.forgotten"})
    assert outcome.ignored and outcome.runs == []


def test_messages_get_successive_offsets_and_a_repeated_offset_is_a_redelivery(orchestrator_test):
    first = orchestrator_test.publish("things", {"type": "thing.happened", "thing": {"n": 1}})
    second = orchestrator_test.publish("things", {"type": "thing.happened", "thing": {"n": 2}})
    assert (first.offset, second.offset) == (0, 1)
    again = orchestrator_test.publish("things", {"type": "thing.happened", "thing": {"n": 1}},
                                      offset=first.offset)
    assert again.redelivered and again.runs == [] and again.event_id == first.event_id
    assert len(orchestrator_test.runs()) == 2


def test_a_recorded_offset_reused_by_a_newer_message_is_skipped_and_said(orchestrator_test, caplog):
    """A topic created again (or dev's in-memory broker restarted) reuses offsets: the
    message is still taken for recorded, but the log says why, once."""
    first = orchestrator_test.publish("things", {"type": "thing.happened", "thing": {"n": 1}}, partition=7)
    orchestrator_test.advance("1h")
    with caplog.at_level("WARNING", logger="orchestrator.events"):
        again = orchestrator_test.publish("things", {"type": "thing.happened", "thing": {"n": 9}},
                                          partition=7, offset=first.offset)
        orchestrator_test.publish("things", {"type": "thing.happened", "thing": {"n": 8}},
                                  partition=7, offset=first.offset)
    assert again.redelivered and again.event_id == first.event_id
    warnings = [r.getMessage() for r in caplog.records if "this offset is recorded already" in r.getMessage()]
    assert len(warnings) == 1 and "created again" in warnings[0]


def test_an_event_with_a_dedupe_value_already_seen_starts_nothing(orchestrator_test):
    orchestrator_test.publish("things", {"type": "thing.happened", "thing": {"n": 1}})
    twin = orchestrator_test.publish("things", {"type": "thing.happened", "thing": {"n": 1}})
    assert twin.matched and twin.runs == []


def test_publishing_to_a_topic_no_trigger_reads_is_a_mistake(orchestrator_test):
    with pytest.raises(HarnessError, match="topics it reads: things"):
        orchestrator_test.publish("thingz", {"type": "thing.happened"})


# -- operator actions, concurrency ----------------------------------------------------------


def test_cancelling_a_run_in_backoff_revokes_its_retry(orchestrator_test):
    run = orchestrator_test.start("harness-flaky")
    assert orchestrator_test.cancel(run)
    assert orchestrator_test.queued == []  # its retry message was revoked
    orchestrator_test.advance("1h")
    assert run.status == "cancelled"
    assert attempts(run.steps["wobble"]) == ["failed"]
    assert (run.steps["settle"].status, run.steps["settle"].reason) == ("cancelled", "cancelled")


def test_a_steps_reason_is_the_one_the_engine_recorded(orchestrator_test):
    from sqlalchemy import select

    from orchestrator.db.models import StepRun

    run = orchestrator_test.start("harness-flaky")
    orchestrator_test.cancel(run)
    with orchestrator_test.sessions() as session:
        recorded = dict(session.execute(select(StepRun.name, StepRun.reason)).all())
    assert {name: step.reason for name, step in run.steps.items()} == recorded


def test_retrying_a_failed_run_runs_its_failed_steps_again(orchestrator_test):
    run = orchestrator_test.start("harness-chain", {"n": 1}, fail={"second": [ValueError, ValueError]})
    orchestrator_test.advance("1m")
    assert run.status == "failed"
    assert orchestrator_test.retry(run)
    assert run.status == "succeeded"
    assert attempts(run.steps["second"]) == ["failed", "failed", "succeeded"]


def test_a_run_waiting_for_a_concurrency_slot_starts_when_the_slot_frees(orchestrator_test):
    first = orchestrator_test.start("harness-serial", {"customer": "c1", "ticket": 1, "fail_first": True})
    second = orchestrator_test.start("harness-serial", {"customer": "c1", "ticket": 2})
    other = orchestrator_test.start("harness-serial", {"customer": "c2", "ticket": 3})
    assert (first.status, second.status, other.status) == ("running", "pending", "succeeded")
    orchestrator_test.advance("20s")
    assert (first.status, second.status) == ("succeeded", "succeeded")
    assert second.state().started_at >= first.finished_at


# -- configuration and isolation ----------------------------------------------------------


def test_load_switches_workflows_and_keeps_the_database(orchestrator_test):
    run = orchestrator_test.start("harness-chain", {"n": 1})
    orchestrator_test.load(workflows=["workflows"])
    assert "order-fulfilment" in orchestrator_test.registry
    assert "harness-chain" not in orchestrator_test.registry
    assert orchestrator_test.run(run.id).status == "succeeded"


def test_load_takes_workflow_objects_too(orchestrator_test):
    from tests.harness.flows import chain

    orchestrator_test.load(workflows=[chain])
    assert [w.name for w in orchestrator_test.registry] == ["harness-chain"]


def test_the_workflows_default_to_the_environment_variable(monkeypatch, tmp_path):
    from orchestrator.testing.harness import default_workflows

    monkeypatch.setenv("ORCHESTRATOR_WORKFLOWS", f"{FLOWS}, workflows")
    assert default_workflows() == (FLOWS, "workflows")
    monkeypatch.delenv("ORCHESTRATOR_WORKFLOWS")
    assert default_workflows() == ("workflows",)


def test_a_harness_outside_pytest_puts_the_clock_back_when_closed():
    before = clock.current()
    with Harness.create([FLOWS], start=START) as harness:
        assert clock.current() is harness.clock
        assert harness.start("harness-chain", {"n": 1}).status == "succeeded"
    assert clock.current() is before


ISOLATION_TESTS = '''
import pytest

pytestmark = pytest.mark.orchestrator(workflows=["tests.harness.flows"])


def test_one_leaves_a_run_and_a_late_clock(orchestrator_test):
    orchestrator_test.start("harness-flaky")
    orchestrator_test.advance("2d")
    assert len(orchestrator_test.runs()) == 1


def test_two_starts_from_scratch(orchestrator_test):
    assert orchestrator_test.runs() == [] and orchestrator_test.queued == []
    assert orchestrator_test.start("harness-chain", {"n": 1}).status == "succeeded"


@pytest.mark.orchestrator(workflows=["workflows"], max_event_bytes=64)
def test_a_marker_on_the_test_wins_and_sets_settings(orchestrator_test):
    assert orchestrator_test.settings.max_event_bytes == 64
    assert "order-fulfilment" in orchestrator_test.registry
'''


def test_every_test_gets_a_fresh_database_clock_and_queue(pytester, monkeypatch):
    from tests.fixtures.config import ROOT

    monkeypatch.syspath_prepend(str(ROOT))
    pytester.makepyfile(test_isolation=ISOLATION_TESTS)
    result = pytester.runpytest_inprocess("-p", "orchestrator.testing", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
