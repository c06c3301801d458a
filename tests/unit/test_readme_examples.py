"""The README's example commands work against the shipped example workflows of `workflows/`."""

from __future__ import annotations

import json
import re

from orchestrator.engine import validate_input
from orchestrator.intake import MATCHED, Message, TriggerIndex, assess_payload
from orchestrator.registry import load_workflows
from orchestrator.settings import DEFAULT_WORKFLOWS
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()
PUBLISH = re.compile(r"^orchestrator publish (\S+) '(\{.*\})'", re.MULTILINE)
TRIGGER = re.compile(r"^orchestrator trigger (\S+) --input '(\{.*\})'", re.MULTILINE)


def test_the_readme_has_publish_and_trigger_examples():
    assert PUBLISH.search(README) and TRIGGER.search(README)


def test_every_readme_publish_example_starts_a_shipped_workflow():
    index = TriggerIndex(load_workflows([DEFAULT_WORKFLOWS]))
    for topic, payload in PUBLISH.findall(README):
        assessment = assess_payload(Message(topic, 0, 0, payload.encode()), json.loads(payload), index)
        assert assessment.outcome == MATCHED, (payload, assessment.reason)


def test_every_readme_trigger_example_is_a_valid_input_of_its_workflow():
    registry = load_workflows([DEFAULT_WORKFLOWS])
    for name, data in TRIGGER.findall(README):
        validate_input(registry.get(name), json.loads(data))
