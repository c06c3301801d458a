"""Workflows whose every piece of text the dashboard shows is hostile (loaded beside the
dashboard's test workflows by the security tests).

`hostile-text` carries the strings of `tests.security.hostile` in its description, its
trigger, its step's result and log lines, and the error of its last step, so a test can check
each place they are shown escaped and stored verbatim. `unstorable-text` logs and raises text
PostgreSQL cannot store as it is (a lone surrogate, a NUL character).
"""

from __future__ import annotations

import os

from orchestrator import StepContext, Workflow, kafka_trigger, schedule
from tests.security.hostile import HOSTILE_STRINGS

PREFIX = os.environ.get("ORCHESTRATOR_TEST_TOPIC_PREFIX", "test.")
#: Topic of the `hostile-text` trigger (per test, like the other Kafka test workflows).
HOSTILE_TOPIC = f"{PREFIX}hostile"

hostile = Workflow(
    "hostile-text",
    description="Shows " + " ".join(HOSTILE_STRINGS),
    triggers=[kafka_trigger(HOSTILE_TOPIC, match={"kind": {"in": list(HOSTILE_STRINGS)}})],
)


@hostile.step
def echo(ctx: StepContext) -> dict:
    for text in HOSTILE_STRINGS:
        ctx.logger.warning("log line: %s", text)
    return {"echo": ctx.input, "strings": list(HOSTILE_STRINGS)}


@hostile.step(after=echo)
def explode(ctx: StepContext) -> None:
    raise ValueError("refused: " + " | ".join(HOSTILE_STRINGS))


unstorable = Workflow("unstorable-text")


@unstorable.step
def surrogates(ctx: StepContext) -> None:
    ctx.logger.warning("a lone surrogate \ud800 and a NUL \x00 in a log line")
    raise ValueError("a lone surrogate \udcff and a NUL \x00 in an error")


unstorable_result = Workflow("unstorable-result")


@unstorable_result.step
def lone_surrogate(ctx: StepContext) -> dict:
    return {"text": "a lone surrogate \ud800 in a result"}


#: A schedule to pause and resume (yearly, so it never fires during a test).
scheduled = Workflow("scheduled-text", triggers=[schedule("0 0 1 1 *", input={"text": HOSTILE_STRINGS[0]})])


@scheduled.step
def yearly(ctx: StepContext) -> dict:
    return {}
