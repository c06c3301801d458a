"""The README's example commands work against the shipped example workflows of `workflows/`."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

from orchestrator import waits as W
from orchestrator.engine import validate_input
from orchestrator.formats import binary_headers
from orchestrator.intake import MATCHED, Message, TriggerIndex, assess
from orchestrator.registry import load_workflows
from orchestrator.settings import DEFAULT_WORKFLOWS
from orchestrator.triggers import matches
from tests.fixtures.config import ROOT

README = (ROOT / "README.md").read_text()
PUBLISH = re.compile(r"^orchestrator publish (\S+) '(\{.*\})'(.*)$", re.MULTILINE)
TRIGGER = re.compile(r"^orchestrator trigger (\S+) --input '(\{.*\})'", re.MULTILINE)


def test_the_readme_has_publish_and_trigger_examples():
    assert PUBLISH.search(README) and TRIGGER.search(README)


def test_every_readme_publish_example_starts_a_shipped_workflow_or_completes_its_wait():
    registry = load_workflows([DEFAULT_WORKFLOWS])
    index = TriggerIndex(registry)
    waits = [s.wait for w in registry for s in w.steps.values() if s.kind == W.EVENT]
    for topic, payload, flags in PUBLISH.findall(README):
        event = json.loads(payload)
        if topic in {w.topic for w in waits}:  # a wait-only topic: some wait must take it
            assert any(w.topic == topic and matches(w.match, event)
                       and W.event_correlation(event, w.paths) is not None for w in waits), payload
            continue
        message = Message(topic, 0, 0, payload.encode(), *_key_and_headers(flags))
        assessment = assess(message, index, 1 << 20)
        assert assessment.outcome == MATCHED, (payload, assessment.reason)


def _key_and_headers(flags: str) -> tuple[bytes | None, tuple[tuple[str, bytes], ...]]:
    """The key and headers `orchestrator publish` sends for these flags."""
    options = dict(re.findall(r"--(key|cloudevent|source) (\S+)", flags))
    headers = [(n, v.encode()) for n, v in re.findall(r"--header ([^=\s]+)=(\S*)", flags)]
    if "cloudevent" in options:
        moment = datetime(2026, 12, 4, tzinfo=UTC)
        headers = binary_headers(options["cloudevent"], options["source"], "readme-1", moment) + headers
    key = options.get("key")
    return (key.encode() if key is not None else None), tuple(headers)


def test_every_readme_trigger_example_is_a_valid_input_of_its_workflow():
    registry = load_workflows([DEFAULT_WORKFLOWS])
    for name, data in TRIGGER.findall(README):
        validate_input(registry.get(name), json.loads(data))
