"""The second version of the workflows of `tests/deploy_v1.py`, as a deploy changed them."""

from __future__ import annotations

from orchestrator import Workflow
from tests.deploy_v1 import _step

renaming = Workflow("renaming")
renaming.step(_step, name="a")
renaming.step(_step, name="b2", after="a")
renaming.step(_step, name="c", after="b2")

growing = Workflow("growing")
growing.step(_step, name="a")
growing.step(_step, name="audit", after="a")
growing.step(_step, name="c", after="audit")
