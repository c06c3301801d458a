"""Event-driven workflow orchestrator: the public DSL and entry points.

Workflow modules import from here and nothing else::

    from orchestrator import Workflow, kafka_trigger, schedule
"""

from __future__ import annotations

from typing import Any

from .dsl import Concurrency as Concurrency
from .dsl import Step as Step
from .dsl import StepContext as StepContext
from .dsl import Workflow as Workflow
from .emits import InvalidEmit as InvalidEmit
from .errors import InvalidInput as InvalidInput
from .errors import OrchestratorError as OrchestratorError
from .errors import RunNotFound as RunNotFound
from .errors import WorkflowDefinitionError as WorkflowDefinitionError
from .errors import WorkflowNotFound as WorkflowNotFound
from .schedules import schedule as schedule
from .triggers import kafka_trigger as kafka_trigger
from .windows import Batch as Batch
from .windows import Debounce as Debounce


def start_run(name: str, input: dict[str, Any] | None = None) -> str:
    """Start a run of workflow `name` with `input`; returns the run id.

    Uses this process's settings (ORCHESTRATOR_* environment variables).
    """
    from .runtime import current

    return current().engine.start_run(name, input)


__all__ = [
    "Batch",
    "Debounce",
    "Concurrency",
    "InvalidEmit",
    "InvalidInput",
    "OrchestratorError",
    "RunNotFound",
    "Step",
    "StepContext",
    "Workflow",
    "WorkflowDefinitionError",
    "WorkflowNotFound",
    "kafka_trigger",
    "schedule",
    "start_run",
]
