"""Errors a user can cause. Each message says what is wrong and what to do about it."""

from __future__ import annotations


class OrchestratorError(Exception):
    """Base class for every error the orchestrator reports to a user."""


class WorkflowDefinitionError(OrchestratorError):
    """A workflow or step definition breaks a rule (cycle, unknown dependency, bad option)."""


class WorkflowNotFound(OrchestratorError):
    """A run was asked for a workflow that no loaded module defines."""


class RunNotFound(OrchestratorError):
    """No run has the given id."""


class NotWaiting(OrchestratorError):
    """The node is not waiting for what was asked of it (a decision on an approval that
    was already decided, timed out or cancelled, or on a node that is not an approval)."""


class EventNotFound(OrchestratorError):
    """No recorded event has the given id."""


class InvalidInput(OrchestratorError):
    """A run's input is not a JSON object or fails the workflow's input schema."""


class ConfigurationError(OrchestratorError):
    """A setting is missing, malformed, or points at something unreachable."""


class UnknownEventFormat(WorkflowDefinitionError, ConfigurationError):
    """A trigger names an event format the orchestrator does not read (`format=`)."""


class StepResultNotSerialisable(OrchestratorError):
    """A step returned a value that cannot be stored as JSON."""


class DeploySkew(OrchestratorError):
    """A run and the loaded code disagree: its workflow, or one of its steps, was removed,
    renamed or added by a deploy since the run started."""


class StepNotLoaded(DeploySkew):
    """A worker was sent a step whose code it does not have (claimed by nobody)."""


class ScheduleNotFound(OrchestratorError):
    """A schedule was asked for of a workflow that has none (pause, resume, list)."""


class KafkaUnreachable(OrchestratorError):
    """No Kafka broker answers (a reprocess cannot read its range); retry when it is back."""
