"""Fuzzing the JSON API with schemathesis, driven by its own OpenAPI document.

Every operation of `/api/openapi.json` gets generated requests, valid ones (positive) and
ones that break the documented schema (negative), with the right bearer token, none, or a
wrong one, and path parameters that are either generated or name runs, events and
workflows that exist. Every answer must be: no 5xx; a status the document lists, with a body
matching its schema; JSON `{"error": "..."}` with a message for every error; 401 for a
mutating call without the right token; the security headers. Derandomized and without an
example database, so every run sends the same requests.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)
from werkzeug.exceptions import HTTPException

from tests.webtools import TOKEN, add_event
from web.openapi import document

#: Generated requests per operation and mode (keeps the module well under a minute).
EXAMPLES = {GenerationMode.POSITIVE: 60, GenerationMode.NEGATIVE: 40}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
AUTH = {
    "valid": {"Authorization": f"Bearer {TOKEN}"},
    "missing": {},
    "wrong": {"Authorization": f"Bearer {TOKEN[:-1]}"},
    "other-scheme": {"Authorization": f"Basic {TOKEN}"},
}
#: Workflows whose names the fuzzer uses beside generated ones.
KNOWN_WORKFLOWS = ["diamond", "signup", "hostile-text", "branches"]
#: Step names the fuzzer uses beside generated ones: an approval, tasks, a map and a call.
KNOWN_STEPS = ["manager", "publish", "a", "square", "w-double"]


def _negatable(operation: dict[str, Any]) -> bool:
    """Whether schemathesis can generate a request that breaks this operation's schema."""
    if "requestBody" in operation:
        return True
    return any(set(p["schema"]) - {"type"} or p["schema"].get("type") != "string"
               for p in operation.get("parameters", []))


OPERATIONS = [
    pytest.param(path, method, mode, id=f"{method.upper()} {path} {mode.value}")
    for path, operations in document()["paths"].items()
    for method, operation in operations.items()
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or _negatable(operation)
]


@pytest.fixture
def known(client, runtime) -> dict[str, list[Any]]:
    """Runs, events and workflows that exist, for path parameters to name them."""
    runs = []
    for workflow, data in [("diamond", {}), ("diamond", {"n": 2}), ("signup", {"email": "a@b.c"}),
                           ("hostile-text", {"text": "<b>x</b>"})]:
        response = client.post(f"/api/workflows/{workflow}/runs", json={"input": data},
                               headers=AUTH["valid"])
        assert response.status_code == 201, response.get_json()
        runs.append(response.get_json()["id"])
    client.post(f"/api/runs/{runs[0]}/cancel", headers=AUTH["valid"])
    runs += [runtime.engine.start_run("sign-off", {}) for _ in range(3)]
    runs += [runtime.engine.start_run("w-squares", {"items": list(range(20))}),  # a map's items
             runtime.engine.start_run("w-caller", {})]  # a call node, and its child
    runs.append(client.get(f"/api/runs/{runs[-1]}").get_json()["children"][0]["id"])
    events = [
        add_event(runtime, {"type": "user.signed_up", "user": {"email": "e@f.g"}}),
        add_event(runtime, {"type": "other"}, outcome="ignored", reason=None),
        add_event(runtime, None, raw=b"\xff not json", reason="not JSON"),
        add_event(runtime, {"type": "user.signed_up"}, keep_raw=False, reason="no user"),
    ]
    return {"run_id": runs, "event_id": events, "name": KNOWN_WORKFLOWS, "step": KNOWN_STEPS,
            "workflow": [*KNOWN_WORKFLOWS, "scheduled-text"]}  # the one with a schedule, and some without


def _path_names(path: str, method: str) -> list[str]:
    operation = document()["paths"][path][method]
    return [p["name"] for p in operation.get("parameters", []) if p["in"] == "path"]


def header(response: Any, name: str) -> str:
    """One header of a schemathesis response (its headers are lists, by lower-case name)."""
    values = {k.lower(): v for k, v in response.headers.items()}.get(name.lower(), [""])
    return values[0] if isinstance(values, list) else values


def routed(case: Any) -> bool:
    """Whether the request's URL names a route at all (a negative path parameter may not)."""
    app = case.operation.schema.app
    try:
        app.url_map.bind("localhost").match(case.formatted_path, method=case.method.upper())
    except HTTPException:
        return False
    return True


def check_response(case: Any, response: Any, auth: str, mode: GenerationMode) -> None:
    """The checks of the module docstring, on one answer."""
    checks = [*CHECKS, negative_data_rejection] if mode is GenerationMode.NEGATIVE else CHECKS
    case.validate_response(response, checks=checks)
    status = response.status_code
    path = case.operation.path
    if case.method.upper() == "POST" and auth != "valid" and routed(case):
        assert status == 401, f"a mutating call with a {auth} token answered {status}"
        assert header(response, "WWW-Authenticate").startswith("Bearer")
    if status >= 400 and path != "/healthz":  # /healthz answers 503 with its checks
        assert header(response, "Content-Type").startswith("application/json")
        body = response.json()
        assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"].strip()
        assert "Traceback" not in body["error"]
    policy = header(response, "Content-Security-Policy")
    assert "unsafe-inline" not in policy and "frame-ancestors 'none'" in policy
    assert header(response, "X-Content-Type-Options") == "nosniff"


@pytest.mark.parametrize(("path", "method", "mode"), OPERATIONS)
def test_fuzzed_requests_get_documented_answers_and_never_a_server_error(app, known, path, method, mode):
    schema = schemathesis.openapi.from_wsgi("/api/openapi.json", app)
    operation = schema[path][method.upper()]
    strategies = [operation.as_strategy(mode)]
    if mode is GenerationMode.POSITIVE:
        for name in _path_names(path, method):
            strategies.append(st.sampled_from(known[name]).flatmap(
                lambda value, name=name: operation.as_strategy(mode, path_parameters={name: value})
            ))
    failures: list[str] = []

    @settings(max_examples=EXAMPLES[mode], derandomize=True, database=None, deadline=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=st.one_of(strategies), auth=st.sampled_from(sorted(AUTH)))
    def fuzz(case: Any, auth: str) -> None:
        response = case.call(headers=AUTH[auth])
        try:
            check_response(case, response, auth, mode)
        except Exception as exc:  # noqa: BLE001 - collected, then reported together
            failures.append(
                f"{case.method} {case.formatted_path} query={case.query!r} body={case.body!r} "
                f"auth={auth} -> {response.status_code} {response.text[:300]!r}: "
                f"{str(exc)[:600]}"
            )

    fuzz()
    assert not failures, f"{len(failures)} failing request(s), first ones:\n" + "\n".join(failures[:5])


# -- hand-picked hostile bodies (each one a defect the fuzzing above cannot be relied on to find) --

HOSTILE_BODIES = [
    ("/api/workflows/diamond/runs", b'{"input": {"a": 1}, "input": {"b": 2}}',
     "ambiguous JSON: an object has the key 'input' twice"),
    ("/api/workflows/diamond/runs", b'{"input": {"a": 1, "a": 2}}', "has the key 'a' twice"),
    ("/api/workflows/diamond/runs", b'{"input": {"a": "\\ud800"}}', "unpaired surrogate (\\ud800)"),
    ("/api/workflows/diamond/runs", b'{"input": {"\\udc00": 1}}', "unpaired surrogate (\\udc00)"),
    ("/api/workflows/diamond/runs", b'{"input": {"a": "\\u0000"}}', "NUL character"),
    ("/api/workflows/diamond/runs", b'{"input": {"a": 1e999}}', "not JSON-serialisable"),
    ("/api/workflows/diamond/runs", b'{"input": {"a": ' + b"9" * 5000 + b"}}", "not valid JSON"),
    ("/api/workflows/diamond/runs", b'{"input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "not valid JSON"),
    ("/api/workflows/diamond/runs", b'{"input": {"a": "\xff"}}', "not valid JSON"),
    ("/api/runs/cancel", b'{"workflow": "diamond", "limit": 1e999}', "limit must be an integer"),
    ("/api/runs/cancel", b'{"workflow": "diamond", "limit": 2.5}', "limit must be an integer"),
    ("/api/runs/retry", b'{"ids": ["00000000-0000-0000-0000-000000000000"], "ids": []}', "has the key 'ids' twice"),
]


@pytest.mark.parametrize(("path", "body", "message"), HOSTILE_BODIES)
def test_hostile_bodies_are_refused_with_a_message_and_change_nothing(client, path, body, message):
    response = client.post(path, data=body, headers={**AUTH["valid"], "Content-Type": "application/json"})
    assert response.status_code == 400, response.get_data(as_text=True)[:300]
    assert message in response.get_json()["error"]
    assert client.get("/api/runs").get_json()["runs"] == []
