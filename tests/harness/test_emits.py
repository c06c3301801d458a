"""`ctx.emit` under the harness: what a step emitted is inspectable, and only a succeeded
attempt's emits exist."""

from __future__ import annotations

import pytest

from tests.emit_flows import EMITTED

pytestmark = pytest.mark.orchestrator(workflows=["tests.emit_flows"])


def test_a_retried_steps_emits_are_those_of_its_succeeded_attempt(orchestrator_test):
    run = orchestrator_test.start("emitter", {"count": 3, "fail_first": True})
    assert run.steps["announce"].status == "retrying"
    assert run.steps["announce"].emits == () and orchestrator_test.emitted == []
    orchestrator_test.advance("1s")
    assert run.status == "succeeded"
    emits = run.steps["announce"].emits
    assert [(e.topic, e.value["n"], e.attempt, e.key) for e in emits] == [
        (EMITTED, 0, 2, "k0"), (EMITTED, 1, 2, "k1"), (EMITTED, 2, 2, "k2"),
    ]
    assert all(e.value["attempt"] == 2 and e.run_id == run.id and not e.sent for e in emits)
    assert emits[0].headers == {"source": b"emitter", "raw": b"\xff\x00"}
    assert orchestrator_test.emitted == list(emits)


def test_a_bad_emit_fails_the_step_with_what_is_wrong(orchestrator_test):
    def bad(ctx):  # noqa: ANN001, ANN202
        ctx.emit("not a topic", {})

    orchestrator_test.patch_step("announce", bad, workflow="emitter")
    run = orchestrator_test.start("emitter")
    orchestrator_test.advance("1s")
    assert run.status == "failed"
    assert "is not a Kafka topic name" in run.steps["announce"].error
    assert orchestrator_test.emitted == []
