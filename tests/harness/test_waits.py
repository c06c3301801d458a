"""The semantics of nodes that wait, through the harness (the real engine and intake on
SQLite, a fake clock). The same paths on PostgreSQL with real processes and Kafka are in
tests/integration/test_waits.py."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from orchestrator.db.models import Wait
from orchestrator.errors import NotWaiting

pytestmark = pytest.mark.orchestrator(workflows=["tests.harness.wait_flows"])


def waits_of(h, run) -> list[tuple[str, str]]:
    with h.sessions() as session:
        rows = session.execute(select(Wait.step, Wait.status).where(Wait.run_id == _uuid(run.id))
                               .order_by(Wait.id)).all()
    return [tuple(r) for r in rows]


def _uuid(text):
    import uuid

    return uuid.UUID(str(text))


def test_a_later_event_completes_the_wait_and_its_payload_is_the_result(orchestrator_test):
    h = orchestrator_test
    run = h.publish("w-orders", {"type": "created", "id": 5}).runs[0]
    assert run.steps["paid"].status == "waiting"
    assert h.publish("w-payments", {"type": "paid", "order": {"id": 6}, "amount": 1}).ignored
    assert h.publish("w-payments", {"type": "refund", "order": {"id": 5}, "amount": 1}).ignored
    done = h.publish("w-payments", {"type": "paid", "order": {"id": 5.0}, "amount": 3})
    assert done.matched and done.runs == []
    assert run.status == "succeeded"
    assert run.steps["ship"].result == {"amount": 3, "offset": done.offset}
    assert waits_of(h, run) == [("paid", "matched")]
    # A second matching event completes nothing more.
    assert h.publish("w-payments", {"type": "paid", "order": {"id": 5}, "amount": 9}).ignored


def test_lookback_takes_an_event_recorded_before_the_wait_opened_but_not_an_older_one(orchestrator_test):
    h = orchestrator_test
    h.publish("w-payments", {"type": "paid", "order": {"id": 1}, "amount": 1})
    h.advance("6m")  # outside the 5 min lookback
    h.publish("w-payments", {"type": "paid", "order": {"id": 2}, "amount": 2})
    h.advance("4m")  # inside it
    old = h.publish("w-orders", {"type": "created", "id": 1}).runs[0]
    recent = h.publish("w-orders", {"type": "created", "id": 2}).runs[0]
    assert old.steps["paid"].status == "waiting"
    assert recent.status == "succeeded" and recent.steps["ship"].result["amount"] == 2


def test_timeout_fails_the_node_and_retry_reopens_the_wait(orchestrator_test):
    h = orchestrator_test
    run = h.publish("w-orders", {"type": "created", "id": 7}).runs[0]
    h.advance("1h")
    assert run.status == "failed"
    assert run.steps["paid"].error == "timed out: no matching event on 'w-payments' within 1h"
    # An event after the timeout, then a retry: the lookback of the new wait finds it.
    h.publish("w-payments", {"type": "paid", "order": {"id": 7}, "amount": 4})
    assert h.retry(run)
    assert run.status == "succeeded"
    assert waits_of(h, run) == [("paid", "timed_out"), ("paid", "matched")]


def test_skip_on_timeout_skips_what_only_the_wait_leads_to(orchestrator_test):
    h = orchestrator_test
    run = h.start("wait-optional", {"user": "u1"})
    assert run.steps["welcome"].status == "succeeded"
    h.advance("10m")
    assert run.status == "succeeded"
    assert run.steps["bonus"].status == "skipped"
    assert run.steps["bonus"].reason == "timed out: no matching event on 'w-bonus' within 10m"
    assert run.steps["credit"].status == "skipped"


def test_cancel_closes_the_waits_and_a_later_event_completes_nothing(orchestrator_test):
    h = orchestrator_test
    run = h.publish("w-orders", {"type": "created", "id": 8}).runs[0]
    assert h.cancel(run)
    assert run.steps["paid"].status == "cancelled"
    assert waits_of(h, run) == [("paid", "closed")]
    assert h.publish("w-payments", {"type": "paid", "order": {"id": 8}, "amount": 1}).ignored


def test_a_failure_elsewhere_cancels_a_waiting_node_and_closes_its_wait(orchestrator_test):
    h = orchestrator_test
    run = h.start("wait-parallel", {"fail": True})
    assert run.status == "failed"
    assert run.steps["sign-off"].status == "cancelled"
    assert waits_of(h, run) == [("sign-off", "closed")]
    with pytest.raises(NotWaiting, match="not waiting"):
        h.approve(run, "sign-off")


def test_approval_decisions_and_refusals(orchestrator_test):
    h = orchestrator_test
    run = h.start("wait-parallel", {})
    with pytest.raises(NotWaiting, match="not an approval"):
        h.approve(run, "risky")
    outcome = h.approve(run, "sign-off", comment="ok", by="ann")
    assert outcome["decision"] == "approve" and outcome["by"] == "ann"
    assert run.status == "succeeded"
    with pytest.raises(NotWaiting, match="already decided: approve"):
        h.approve(run, "sign-off", reject=True)
    with h.sessions() as session:
        wait = session.scalars(select(Wait).where(Wait.run_id == _uuid(run.id))).one()
    assert (wait.status, wait.decision, wait.comment, wait.decided_by) == ("approved", "approve", "ok", "ann")


def test_approval_times_out(orchestrator_test):
    h = orchestrator_test
    run = h.start("wait-parallel", {})
    h.advance("2d")
    assert run.status == "failed"
    assert run.steps["sign-off"].error == "timed out: no decision on approval 'sign-off' within 2d"


def test_sleep_until_a_moment_and_one_in_the_past(orchestrator_test):
    h = orchestrator_test
    wake_at = h.now + timedelta(hours=3)
    run = h.start("wait-sleepy", {"until": wake_at.isoformat()})
    h.advance("2h")
    assert run.steps["nap"].status == "waiting"
    h.advance("1h")
    assert run.status == "succeeded"
    assert run.steps["wake"].result["slept_until"] == wake_at.isoformat()
    past = h.start("wait-sleepy", {"until": (h.now - timedelta(days=1)).isoformat()})
    h.run_due()
    assert past.status == "succeeded"


def test_timers_due_at_one_moment_fire_together_each_as_it_would_alone(orchestrator_test):
    h = orchestrator_test
    moment = (h.now + timedelta(minutes=10)).isoformat()
    sleepers = [h.start("wait-sleepy", {"until": moment}) for _ in range(3)]
    both = h.start("wait-two-naps", {"until": moment})  # two nodes of one run in one batch
    optional = h.start("wait-optional", {"user": "u2"})  # its 10m timeout: skip
    h.advance("10m")
    assert [r.status for r in sleepers] == ["succeeded"] * 3
    assert both.status == "succeeded"
    assert both.steps["join"].result == ["nap-a", "nap-b"]
    assert (both.steps["nap-a"].status, both.steps["nap-b"].status) == ("succeeded", "succeeded")
    assert optional.status == "succeeded" and optional.steps["bonus"].status == "skipped"
    assert waits_of(h, both) == [("nap-a", "fired"), ("nap-b", "fired")]


def test_sleep_until_a_naive_datetime_fails_the_node(orchestrator_test):
    run = orchestrator_test.start("wait-sleepy", {"until": "2030-01-01T00:00:00"})
    assert run.status == "failed"
    assert "it must return an aware datetime" in run.steps["nap"].error


def test_a_correlate_that_raises_fails_the_node_with_the_error(orchestrator_test):
    run = orchestrator_test.start("wait-broken", {})
    assert run.status == "failed"
    assert run.steps["never"].error == "event node 'never': correlate raised KeyError: 'missing'"


def test_one_event_completes_every_open_wait_it_matches(orchestrator_test):
    h = orchestrator_test
    run = h.start("wait-twice", {"id": 3})
    small = h.publish("w-payments", {"order": {"id": 3}, "amount": 1})
    assert small.matched
    assert (run.steps["one"].status, run.steps["two"].status) == ("succeeded", "waiting")
    h.publish("w-payments", {"order": {"id": 3}, "amount": 20})
    assert run.status == "succeeded"
