"""User sign-up: fan out to three independent steps, fan back in to a welcome summary."""

from __future__ import annotations

import hashlib

from orchestrator import StepContext, Workflow, kafka_trigger

flow = Workflow(
    "user-signup",
    description="Validate a new user, then provision, score and subscribe them in parallel.",
    input_schema={
        "type": "object",
        "required": ["email"],
        "properties": {"email": {"type": "string", "pattern": "^[^@\\s]+@[^@\\s]+$"}},
    },
    triggers=[
        kafka_trigger(
            "users",
            match={"type": "user.signed_up", "user.email": {"exists": True}},
            input=lambda event: event["user"],
            dedupe="user.email",
        )
    ],
)


@flow.step
def normalise(ctx: StepContext) -> dict:
    email = ctx.input["email"].strip().lower()
    return {"email": email, "domain": email.split("@", 1)[1]}


@flow.step(after=normalise, retries=2, backoff=0.5)
def provision_account(ctx: StepContext) -> dict:
    email = ctx.results["normalise"]["email"]
    return {"account_id": hashlib.sha1(email.encode()).hexdigest()[:12]}


@flow.step(after=normalise)
def risk_score(ctx: StepContext) -> dict:
    domain = ctx.results["normalise"]["domain"]
    disposable = domain in {"mailinator.com", "10minutemail.com", "guerrillamail.com"}
    return {"score": 90 if disposable else 10, "disposable": disposable}


@flow.step(after=normalise, when=lambda ctx: ctx.input.get("newsletter", False))
def subscribe_newsletter(ctx: StepContext) -> dict:
    return {"list": "weekly", "email": ctx.results["normalise"]["email"]}


@flow.step(after=[provision_account, risk_score, subscribe_newsletter])
def welcome(ctx: StepContext) -> dict:
    risky = ctx.results["risk_score"]["score"] > 50
    return {
        "account_id": ctx.results["provision_account"]["account_id"],
        "send_welcome": not risky,
        "newsletter": "subscribe_newsletter" in ctx.results,
    }
