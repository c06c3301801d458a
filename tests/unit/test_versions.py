"""Workflow versions: what a version names, how two differ, and the grace arithmetic."""

from __future__ import annotations

import pytest

from orchestrator import Concurrency, Workflow
from orchestrator.errors import StepNotLoaded, WorkflowDefinitionError
from orchestrator.skew import HAND_BACK_MAX_PAUSE, hand_back_pause
from orchestrator.versions import diff, planning_view, structure


def flow(*, rename: bool = False, insert: bool = False, retries: int = 0, body=None, **options) -> Workflow:
    wf = Workflow("orders", **options)

    def fn(ctx):
        return 1

    wf.step(body or fn, name="reserve")
    middle = "reserve"
    if insert:
        wf.step(fn, name="audit", after="reserve")
        middle = "audit"
    wf.step(fn, name="bill" if rename else "charge", after=middle, retries=retries, when=lambda ctx: True)
    return wf


def test_the_version_is_a_hash_of_the_structure_not_of_the_function_bodies():
    assert flow().version == flow(body=lambda ctx: 2).version
    assert len(flow().version) == 12
    assert len({flow().version, flow(rename=True).version, flow(insert=True).version,
                flow(retries=3).version}) == 4


def test_a_given_version_is_kept_and_checked():
    assert flow(version="3").version == "3"
    assert flow(version=7).version == "7"
    with pytest.raises(WorkflowDefinitionError, match="version='no spaces'"):
        flow(version="no spaces")


def test_adding_a_step_changes_the_version():
    wf = flow()
    before = wf.version
    wf.step(lambda ctx: 1, name="ship", after="charge")
    assert wf.version != before


def test_diff_names_added_removed_and_rewired_steps():
    changes = diff(structure(flow()), structure(flow(rename=True, insert=True, retries=2)))
    assert changes["added"] == ["audit", "bill"]
    assert changes["removed"] == ["charge"]
    assert changes["changed_deps"] == {}
    rewired = diff(structure(flow()), structure(flow(insert=True, retries=2)))
    assert rewired["changed_deps"] == {"charge": {"old": ["reserve"], "new": ["audit"]}}
    assert rewired["changed_options"] == {"charge": ["retries"]}


def test_planning_view_has_the_versions_shape_and_the_loaded_code():
    old = flow(retries=4, concurrency=Concurrency(key="customer", limit=2))
    loaded = flow(rename=True, insert=True)
    view = planning_view("orders", old.version, structure(old), loaded)
    assert list(view.steps) == ["reserve", "charge"]
    assert view.steps["charge"].after == ("reserve",) and view.steps["charge"].retries == 4
    assert view.concurrency == Concurrency(key="customer", limit=2)
    assert view.steps["reserve"].fn is loaded.steps["reserve"].fn
    with pytest.raises(StepNotLoaded, match=f"in the run's version '{old.version}' but not in the "
                                            f"deployed version '{loaded.version}'"):
        view.steps["charge"].fn(None)
    with pytest.raises(StepNotLoaded, match="the condition of step 'charge'"):
        view.steps["charge"].when(None)
    gone = planning_view("orders", old.version, structure(old), None)
    with pytest.raises(StepNotLoaded, match="is not in the deployed code"):
        gone.steps["reserve"].fn(None)


def test_hand_back_pauses_grow_and_stop_at_the_grace():
    pauses = [hand_back_pause(n, waited=0.0, grace=600) for n in range(20)]
    assert pauses[0] == 0.5 and pauses == sorted(pauses) and max(pauses) == HAND_BACK_MAX_PAUSE
    assert hand_back_pause(30, waited=597.0, grace=600) == pytest.approx(3.0)
    assert hand_back_pause(0, waited=600.0, grace=600) is None
