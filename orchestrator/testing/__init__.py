"""`orchestrator.testing`: a pytest plugin to test workflows on the real engine, in-process.

    def test_express_order_ships_by_courier(orchestrator_test):
        run = orchestrator_test.start("order-fulfilment", {"order_id": 1, "express": True,
                                                            "items": [{"sku": "tea", "qty": 1}]})
        assert run.status == "succeeded"
        assert run.steps["ship_standard"].status == "skipped"

The fixture (`plugin`) gives each test a `Harness` (`harness`): the engine, the executor
and the consumer's batch path the workers and the consumer run, on a SQLite database of
the test's own, with steps executed in the test's process and a clock that moves only when
the test says (`advance("25h")`). Installed with the package (a `pytest11` entry point);
otherwise `pytest -p orchestrator.testing`. See "Testing your workflows" in the README.

The public names below are imported on first use, so that loading the plugin into every
pytest session stays free.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .plugin import orchestrator_database_template as orchestrator_database_template
from .plugin import orchestrator_test as orchestrator_test
from .plugin import pytest_configure as pytest_configure

if TYPE_CHECKING:
    from ..clock import FakeClock as FakeClock
    from .dispatcher import Queued as Queued
    from .errors import HarnessError as HarnessError
    from .harness import Harness as Harness
    from .kafka import SentMessage as SentMessage
    from .results import AttemptResult as AttemptResult
    from .results import EmittedEvent as EmittedEvent
    from .results import PublishOutcome as PublishOutcome
    from .results import RunResult as RunResult
    from .results import StepResult as StepResult
    from .steps import StepPatch as StepPatch

#: Where each public name lives.
_PUBLIC = {
    "AttemptResult": ".results",
    "EmittedEvent": ".results",
    "FakeClock": "..clock",
    "Harness": ".harness",
    "HarnessError": ".errors",
    "PublishOutcome": ".results",
    "Queued": ".dispatcher",
    "RunResult": ".results",
    "SentMessage": ".kafka",
    "StepPatch": ".steps",
    "StepResult": ".results",
}


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_PUBLIC[name], __name__), name)
    globals()[name] = value
    return value


__all__ = [
    *sorted(_PUBLIC),
    "orchestrator_database_template",
    "orchestrator_test",
    "pytest_configure",
]
