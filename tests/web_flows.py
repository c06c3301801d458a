"""Workflows for the dashboard and API tests (loaded beside tests.flows).

`signup` has an input schema (so a bad input is a 400) and a Kafka trigger with a dedupe
key (so replaying a recorded event is observable and idempotent).
"""

from __future__ import annotations

from orchestrator import StepContext, Workflow, kafka_trigger

#: Topic the `signup` trigger listens to.
SIGNUPS = "web-test.signups"

signup = Workflow(
    "signup",
    description="Greet a new user <b>(not bold)</b>",
    input_schema={
        "type": "object",
        "required": ["email"],
        "properties": {"email": {"type": "string", "minLength": 3}},
    },
    triggers=[
        kafka_trigger(
            SIGNUPS,
            match={"type": "user.signed_up"},
            input=lambda event: {"email": event["user"]["email"]},
            dedupe="user.email",
        )
    ],
)


@signup.step
def greet(ctx: StepContext) -> dict:
    ctx.logger.info("greeting %s", ctx.input["email"])
    return {"greeted": ctx.input["email"]}
