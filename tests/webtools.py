"""Helpers shared by the dashboard and API tests: the app, events, OpenAPI checks."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import jsonschema
from sqlalchemy import insert

from orchestrator.db.models import Event
from orchestrator.runtime import Runtime
from web import create_app
from web.openapi import document

TOKEN = "test-token-4c1d8a9e2f"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WORKFLOWS = ("tests.flows", "tests.web_flows")


def make_app(runtime: Runtime, **config: Any):  # noqa: ANN201 - a Flask app
    return create_app({"RUNTIME": runtime, "API_TOKEN": TOKEN, "TESTING": True, **config})


def add_event(
    runtime: Runtime,
    payload: Any,
    *,
    topic: str = "web-test.signups",
    outcome: str = "rejected",
    reason: str | None = "no trigger matched",
    offset: int | None = None,
    kafka_timestamp: datetime | None = None,
    raw: bytes | None = None,
    keep_raw: bool = True,
) -> int:
    """Record an event as the consumer would; returns its id."""
    with runtime.sessions() as session, session.begin():
        if offset is None:
            offset = session.query(Event).count()
        return session.execute(
            insert(Event)
            .values(
                topic=topic,
                partition=0,
                offset=offset,
                key="k",
                headers=[],
                payload=payload,
                raw=(raw if raw is not None else json.dumps(payload).encode()) if keep_raw else None,
                kafka_timestamp=kafka_timestamp,
                received_at=datetime.now(UTC),
                outcome=outcome,
                reason=reason,
            )
            .returning(Event.id)
        ).scalar_one()


def assert_documented(response: Any, path: str, method: str = "get") -> None:
    """The response's status is documented for `path` and its JSON body matches the schema."""
    doc = document()
    operation = doc["paths"][path][method]
    status = str(response.status_code)
    assert status in operation["responses"], (
        f"{method.upper()} {path} answered {status}, which the OpenAPI document does not list: "
        f"{response.get_data(as_text=True)[:300]}"
    )
    content = operation["responses"][status].get("content", {})
    if "application/json" in content and "schema" in content["application/json"]:
        schema = {**content["application/json"]["schema"], "components": doc["components"]}
        jsonschema.validate(
            response.get_json(),
            schema,
            cls=jsonschema.Draft202012Validator,
            format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
        )
