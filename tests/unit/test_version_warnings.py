"""What an operator is told about workflows a deploy removed while their runs were live."""

from __future__ import annotations

import pytest

from orchestrator.versions import not_deployed, span


def test_the_warning_names_the_workflow_its_live_runs_and_the_grace_period():
    assert not_deployed("billing", 3, 600) == (
        "workflow billing is not in the deployed code; its 3 active runs will fail after "
        "ORCHESTRATOR_VERSION_GRACE (10 min)"
    )
    assert "its 1 active run will fail" in not_deployed("billing", 1, 600)


@pytest.mark.parametrize(("seconds", "text"), [(600, "10 min"), (90, "90 s"), (7200, "2 h"), (0.5, "0.5 s")])
def test_grace_periods_read_in_the_largest_whole_unit(seconds, text):
    assert span(seconds) == text
