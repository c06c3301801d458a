"""Trigger rules, the failure handler and `fail_on`: the planner's decisions, and the
definitions checked when a workflow is defined."""

from __future__ import annotations

import pytest

from orchestrator import StepContext, Workflow, WorkflowDefinitionError
from orchestrator import planner as P
from orchestrator.versions import planning_view, structure, structure_hash

# a -> (b, c) -> d: `b` is the branch that fails.
DIAMOND = {"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c")}


def after_b_failed(**others: str) -> dict[str, str]:
    return {"a": P.SUCCEEDED, "b": P.FAILED, "c": P.SUCCEEDED, "d": P.PENDING, **others}


# -- each rule at the join of a diamond whose branch `b` failed ---------------------------


@pytest.mark.parametrize(
    ("rule", "queued", "skipped", "cancelled"),
    [
        ("all_success", [], [], ["d"]),
        ("all_done", ["d"], [], []),
        ("one_success", ["d"], [], []),
        ("one_failed", ["d"], [], []),
        ("none_failed", [], [], ["d"]),
    ],
)
def test_the_join_of_a_diamond_with_a_failed_branch_follows_its_rule(rule, queued, skipped, cancelled):
    decision = P.plan(DIAMOND, after_b_failed(), rules={"d": rule})
    assert (decision.queue, decision.skip, decision.cancel) == (queued, skipped, cancelled)
    if cancelled:
        assert decision.reasons["d"] == "step 'b' failed"
        assert decision.run_status == P.RUN_FAILED
    else:
        assert decision.run_status is None  # d runs first


@pytest.mark.parametrize(
    ("rule", "queued", "skipped"),
    [
        ("all_success", ["d"], []),
        ("all_done", ["d"], []),
        ("one_success", ["d"], []),
        ("one_failed", [], ["d"]),
        ("none_failed", ["d"], []),
    ],
)
def test_the_join_of_a_diamond_without_failure_follows_its_rule(rule, queued, skipped):
    statuses = {"a": P.SUCCEEDED, "b": P.SUCCEEDED, "c": P.SUCCEEDED, "d": P.PENDING}
    decision = P.plan(DIAMOND, statuses, rules={"d": rule})
    assert (decision.queue, decision.skip) == (queued, skipped)
    if skipped:
        assert decision.reasons["d"] == "trigger rule one_failed: no parent failed"
        assert decision.run_status == P.RUN_SUCCEEDED


def test_one_success_and_one_failed_fire_without_waiting_for_the_other_parent():
    running_c = after_b_failed(c=P.RUNNING)
    assert P.plan(DIAMOND, running_c, rules={"d": "one_failed"}).queue == ["d"]
    assert P.plan(DIAMOND, running_c, rules={"d": "all_done"}).queue == []
    assert P.plan(DIAMOND, running_c, rules={"d": "none_failed"}).cancel == ["d"]
    succeeded_b = {"a": P.SUCCEEDED, "b": P.SUCCEEDED, "c": P.RUNNING, "d": P.PENDING}
    assert P.plan(DIAMOND, succeeded_b, rules={"d": "one_success"}).queue == ["d"]
    assert P.plan(DIAMOND, succeeded_b, rules={"d": "all_success"}).queue == []


def test_skipped_parents_count_as_not_failed_and_all_skipped_parents_skip_only_all_success():
    skipped = {"a": P.SUCCEEDED, "b": P.SKIPPED, "c": P.SKIPPED, "d": P.PENDING}
    assert P.plan(DIAMOND, skipped, rules={"d": "none_failed"}).queue == ["d"]
    assert P.plan(DIAMOND, skipped, rules={"d": "all_done"}).queue == ["d"]
    assert P.plan(DIAMOND, skipped).skip == ["d"]
    decision = P.plan(DIAMOND, skipped, rules={"d": "one_success"})
    assert decision.skip == ["d"] and decision.reasons["d"] == "trigger rule one_success: no parent succeeded"


def test_a_cancelled_parent_counts_as_failed_and_the_cause_is_carried_down():
    deps = {"a": (), "b": ("a",), "c": ("b",), "d": ("c",)}
    statuses = {"a": P.FAILED, "b": P.PENDING, "c": P.PENDING, "d": P.PENDING}
    decision = P.plan(deps, statuses, rules={"d": "one_failed"})
    assert decision.cancel == ["b", "c"]
    assert decision.reasons == {"b": "step 'a' failed", "c": "step 'a' failed"}
    assert decision.queue == ["d"]


def test_without_trigger_rules_the_first_failure_still_stops_the_whole_run():
    deps = {**DIAMOND, "e": ("a",), "f": ("e",)}
    statuses = {**after_b_failed(c=P.RUNNING), "e": P.SUCCEEDED, "f": P.PENDING}
    decision = P.plan(deps, statuses)
    assert decision.cancel == ["d", "f"]  # f does not descend from b: stopped all the same
    assert decision.reasons["f"] == "step 'b' failed"


def test_a_failure_stops_what_no_rule_waits_for_and_spares_what_leads_to_and_follows_a_rule():
    # a -> b (fails); a -> c -> d(all_done after b, c) -> e; a -> x -> y (unrelated to d)
    deps = {"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c"), "e": ("d",), "x": ("a",), "y": ("x",)}
    statuses = {"a": P.SUCCEEDED, "b": P.FAILED, "c": P.PENDING, "d": P.PENDING, "e": P.PENDING,
                "x": P.PENDING, "y": P.PENDING}
    decision = P.plan(deps, statuses, rules={"d": "all_done"})
    assert decision.queue == ["c"]
    assert decision.cancel == ["x", "y"]
    statuses.update(c=P.SUCCEEDED, x=P.CANCELLED, y=P.CANCELLED)
    assert P.plan(deps, statuses, rules={"d": "all_done"}).queue == ["d"]
    statuses.update(d=P.SUCCEEDED)
    decision = P.plan(deps, statuses, rules={"d": "all_done"})
    assert decision.queue == ["e"]  # what follows the rule goes on
    statuses.update(e=P.SUCCEEDED)
    assert P.plan(deps, statuses, rules={"d": "all_done"}).run_status == P.RUN_FAILED


def test_a_waiting_node_no_rule_needs_is_cancelled_by_a_failure():
    deps = {"a": (), "b": (), "wait": ()}
    statuses = {"a": P.FAILED, "b": P.RUNNING, "wait": P.WAITING}
    assert P.plan(deps, statuses).cancel == ["wait"]
    deps = {"a": (), "wait": (), "d": ("a", "wait")}
    statuses = {"a": P.FAILED, "wait": P.WAITING, "d": P.PENDING}
    decision = P.plan(deps, statuses, rules={"d": "all_done"})
    assert decision.cancel == [] and decision.run_status is None  # d waits for the wait


# -- the failure handler --------------------------------------------------------------


def test_the_failure_handler_is_queued_once_every_step_is_final_with_a_failure():
    statuses = {**after_b_failed(c=P.RUNNING), "alert": P.PENDING}
    decision = P.plan(DIAMOND, statuses, on_failure="alert")
    assert decision.cancel == ["d"] and decision.queue == [] and decision.run_status is None
    statuses.update(c=P.SUCCEEDED, d=P.CANCELLED)
    decision = P.plan(DIAMOND, statuses, on_failure="alert")
    assert decision.queue == ["alert"]
    assert decision.run_status is None  # the run is still running while the handler runs


@pytest.mark.parametrize("handler", [P.QUEUED, P.RUNNING, P.RETRYING])
def test_the_run_stays_open_while_its_failure_handler_is(handler):
    statuses = {**after_b_failed(d=P.CANCELLED), "alert": handler}
    decision = P.plan(DIAMOND, statuses, on_failure="alert")
    assert (decision.queue, decision.run_status) == ([], None)


@pytest.mark.parametrize("handler", [P.SUCCEEDED, P.FAILED])
def test_the_run_fails_once_its_failure_handler_settled_whatever_its_outcome(handler):
    statuses = {**after_b_failed(d=P.CANCELLED), "alert": handler}
    decision = P.plan(DIAMOND, statuses, on_failure="alert")
    assert (decision.queue, decision.run_status) == ([], P.RUN_FAILED)


def test_the_failure_handler_is_skipped_when_the_run_succeeds():
    statuses = {"a": P.SUCCEEDED, "b": P.SUCCEEDED, "c": P.SUCCEEDED, "d": P.SUCCEEDED, "alert": P.PENDING}
    decision = P.plan(DIAMOND, statuses, on_failure="alert")
    assert decision.skip == ["alert"] and decision.reasons["alert"] == "the run did not fail"
    assert decision.run_status == P.RUN_SUCCEEDED
    new_run = P.plan(DIAMOND, dict.fromkeys([*DIAMOND, "alert"], P.PENDING), on_failure="alert")
    assert new_run.queue == ["a"]  # the handler is no root of the DAG


def test_a_cancelled_failure_handler_does_not_keep_a_run_open():
    statuses = {**after_b_failed(d=P.CANCELLED), "alert": P.CANCELLED}
    assert P.plan(DIAMOND, statuses, on_failure="alert").run_status == P.RUN_FAILED


# -- fail_on ---------------------------------------------------------------------------


def test_fail_on_any_fails_a_run_even_when_its_failure_was_handled():
    statuses = after_b_failed(d=P.SUCCEEDED)
    assert P.plan(DIAMOND, statuses, rules={"d": "all_done"}).run_status == P.RUN_FAILED


@pytest.mark.parametrize("rule", ["all_done", "one_failed", "one_success"])
def test_fail_on_unhandled_succeeds_when_every_failure_was_handled_downstream(rule):
    statuses = after_b_failed(d=P.SUCCEEDED)
    decision = P.plan(DIAMOND, statuses, rules={"d": rule}, fail_on="unhandled")
    assert decision.run_status == P.RUN_SUCCEEDED
    assert P.handled_failures(DIAMOND, statuses, {"d": rule}) == ["b"]


def test_fail_on_unhandled_fails_when_a_failure_has_no_handler_that_succeeded():
    deps = {**DIAMOND, "e": ("a",)}
    statuses = {**after_b_failed(d=P.SUCCEEDED), "e": P.FAILED}  # nothing handles e
    assert P.plan(deps, statuses, rules={"d": "all_done"}, fail_on="unhandled").run_status == P.RUN_FAILED
    failed_handler = after_b_failed(d=P.FAILED)
    assert P.plan(DIAMOND, failed_handler, rules={"d": "all_done"},
                  fail_on="unhandled").run_status == P.RUN_FAILED
    # A none_failed or all_success node downstream handles nothing: it does not run.
    assert P.plan(DIAMOND, after_b_failed(), rules={"d": "none_failed"},
                  fail_on="unhandled").run_status == P.RUN_FAILED


def test_fail_on_unhandled_lets_other_branches_run_while_a_failure_may_still_be_handled():
    deps = {**DIAMOND, "e": ("a",)}
    statuses = {**after_b_failed(c=P.RUNNING), "e": P.PENDING}
    decision = P.plan(deps, statuses, rules={"d": "all_done"}, fail_on="unhandled")
    assert decision.queue == ["e"]  # d may still handle b's failure: the run may succeed
    decision = P.plan(deps, statuses, rules={"d": "all_done"}, fail_on="any")
    assert decision.cancel == ["e"]


def test_a_handled_failure_skips_the_failure_handler():
    statuses = {**after_b_failed(d=P.SUCCEEDED), "alert": P.PENDING}
    decision = P.plan(DIAMOND, statuses, rules={"d": "all_done"}, on_failure="alert", fail_on="unhandled")
    assert decision.skip == ["alert"] and decision.run_status == P.RUN_SUCCEEDED


# -- definitions ------------------------------------------------------------------------


def noop(ctx: StepContext) -> None:
    return None


def test_a_trigger_rule_typo_fails_when_decorated_naming_workflow_step_and_rules():
    flow = Workflow("typo")
    with pytest.raises(WorkflowDefinitionError) as raised:
        flow.step(noop, trigger_rule="all_sucess")
    message = str(raised.value)
    assert "'typo'" in message and "'noop'" in message and "all_sucess" in message
    assert "all_success, all_done, one_success, one_failed, none_failed" in message
    with pytest.raises(WorkflowDefinitionError, match="trigger_rule=None"):
        flow.approval("gate", trigger_rule=None)  # type: ignore[arg-type]


def test_every_kind_of_node_takes_a_trigger_rule():
    flow = Workflow("kinds")
    first = flow.step(noop)
    gate = flow.approval("gate", after=first, trigger_rule="all_done")
    nap = flow.sleep("nap", after=gate, duration=1, trigger_rule="one_failed")
    last = flow.step(name="last", after=nap, trigger_rule="none_failed")(noop)
    assert [s.trigger_rule for s in (first, gate, nap, last)] == [
        "all_success", "all_done", "one_failed", "none_failed"]
    assert flow.trigger_rules == {"gate": "all_done", "nap": "one_failed", "last": "none_failed"}


def test_a_second_failure_handler_is_rejected_naming_the_first():
    flow = Workflow("two-handlers")
    flow.step(noop)

    @flow.on_failure
    def alert(ctx: StepContext) -> None: ...

    with pytest.raises(WorkflowDefinitionError, match="'alert' is already its on_failure handler"):
        flow.on_failure(name="again")(noop)


def test_the_failure_handler_is_a_step_outside_the_dag_with_step_options():
    flow = Workflow("handled-flow")
    first = flow.step(noop)

    @flow.on_failure(retries=2, timeout=5, queue="alerts")
    def alert(ctx: StepContext) -> None: ...

    assert flow.failure_handler == "alert"
    assert (alert.kind, alert.retries, alert.timeout, alert.queue, alert.waits) == (
        "on_failure", 2, 5.0, "alerts", False)
    assert flow.dag == {"noop": ()}
    assert flow.upstream("alert") == ("noop",)  # it sees every result
    assert "alerts" in flow.queues
    flow.validate()
    described = flow.describe()
    assert described["on_failure"] == "alert" and described["fail_on"] == "any"
    assert [s["trigger_rule"] for s in described["steps"]] == ["all_success", "all_success"]
    assert first.name == "noop"
    with pytest.raises(WorkflowDefinitionError, match="retries=-1"):
        Workflow("bad-handler").on_failure(retries=-1)(noop)


def test_fail_on_is_checked_when_the_workflow_is_defined():
    with pytest.raises(WorkflowDefinitionError, match="fail_on='some'.*'any'.*'unhandled'"):
        Workflow("bad-fail-on", fail_on="some")
    assert Workflow("ok-fail-on", fail_on="unhandled").fail_on == "unhandled"


def test_versions_keep_their_hash_without_rules_and_restore_rules_and_handler():
    plain = Workflow("plain")
    first = plain.step(noop)
    plain.step(name="second", after=first)(noop)
    assert "trigger_rule" not in str(structure(plain)) and "fail_on" not in structure(plain)

    ruled = Workflow("ruled", fail_on="unhandled")
    first = ruled.step(noop)
    ruled.step(name="second", after=first, trigger_rule="all_done")(noop)
    ruled.on_failure(name="alert")(noop)
    shape = structure(ruled)
    assert structure_hash(shape) != structure_hash(structure(plain))
    view = planning_view("ruled", "v1", shape, None)
    assert view.trigger_rules == {"second": "all_done"}
    assert view.failure_handler == "alert" and view.fail_on == "unhandled"
    assert view.dag == {"noop": (), "second": ("noop",)}
    assert structure(view) == shape
