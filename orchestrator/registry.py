"""Workflow discovery: import the modules named in ORCHESTRATOR_WORKFLOWS and collect workflows."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Iterable, Iterator
from types import ModuleType

from .dsl import Workflow
from .errors import ConfigurationError, WorkflowDefinitionError, WorkflowNotFound


class Registry:
    """The workflows a process knows, by name."""

    def __init__(self, workflows: Iterable[Workflow] = ()) -> None:
        self._workflows: dict[str, Workflow] = {}
        self._parents: dict[str, tuple[str, ...]] = {}
        self._defining: dict[str, tuple[str, ...]] = {}
        self._wait_paths: dict[str, set[str]] | None = None
        for workflow in workflows:
            self.add(workflow)
        if self._workflows:
            self.check_calls()

    def add(self, workflow: Workflow) -> None:
        existing = self._workflows.get(workflow.name)
        if existing is not None and existing is not workflow:
            raise WorkflowDefinitionError(
                f"two workflows are named {workflow.name!r}; workflow names must be unique"
            )
        workflow.validate()
        self._workflows[workflow.name] = workflow
        self._parents.clear()
        self._defining.clear()
        self._wait_paths = None

    def check_calls(self) -> None:
        """Once every workflow is loaded: each `flow.call` names a loaded workflow, and no
        chain of calls leads back to where it started (a run would start itself forever)."""
        for workflow in self._workflows.values():
            for node, target in workflow.calls.items():
                if target not in self._workflows:
                    known = ", ".join(sorted(self._workflows))
                    raise WorkflowDefinitionError(
                        f"workflow {workflow.name!r}: call {node!r} names unknown workflow "
                        f"{target!r} (loaded: {known})"
                    )
        for start in self._workflows:
            path = [start]
            todo = [(start, iter(sorted(set(self._workflows[start].calls.values()))))]
            while todo:
                _, targets = todo[-1]
                target = next(targets, None)
                if target is None:
                    todo.pop()
                    path.pop()
                    continue
                if target == start:
                    chain = " -> ".join([*path, target])
                    raise WorkflowDefinitionError(
                        f"workflow {start!r}: its calls lead back to itself ({chain}); a run "
                        "would start runs of itself forever"
                    )
                if target in path:
                    continue
                path.append(target)
                todo.append((target, iter(sorted(set(self._workflows[target].calls.values())))))

    @property
    def wait_paths(self) -> dict[str, set[str]]:
        """For each topic a loaded `wait_for_event` node names, its sets of correlation
        paths (what the intake probes open waits by, besides `wait_keys`)."""
        if self._wait_paths is None:
            found: dict[str, set[str]] = {}
            for workflow in self._workflows.values():
                for step in workflow.steps.values():
                    spec = step.wait
                    if spec is not None and getattr(spec, "topic", None):
                        found.setdefault(spec.topic, set()).add(spec.paths)
            self._wait_paths = found
        return self._wait_paths

    def parent_names(self, step: str) -> tuple[str, ...]:
        """Every name whose result a step called `step` sees (`Workflow.upstream`: its parents
        and the waiting nodes upstream) in any loaded workflow.

        Lets a worker fetch upstream results in the same statement that claims the step,
        before it knows the run's workflow; the engine then keeps the real parents only.
        """
        cached = self._parents.get(step)
        if cached is None:
            names = {p for w in self._workflows.values() if step in w.steps for p in w.upstream(step)}
            cached = self._parents[step] = tuple(sorted(names))
        return cached

    def defining(self, step: str) -> tuple[str, ...]:
        """The loaded workflows that have a step called `step`: only their runs' steps are ours."""
        cached = self._defining.get(step)
        if cached is None:
            cached = self._defining[step] = tuple(sorted(w.name for w in self._workflows.values()
                                                         if step in w.steps))
        return cached

    def find(self, name: str) -> Workflow | None:
        """The loaded workflow called `name`, or None (a run of a workflow a deploy removed)."""
        return self._workflows.get(name)

    def is_limited_step(self, step: str) -> bool:
        """Whether a step called `step` has its own concurrency limit in some workflow."""
        return any(
            step in w.steps and w.steps[step].concurrency is not None for w in self._workflows.values()
        )

    def get(self, name: str) -> Workflow:
        try:
            return self._workflows[name]
        except KeyError:
            known = ", ".join(sorted(self._workflows)) or "none loaded"
            raise WorkflowNotFound(f"unknown workflow {name!r} (known: {known})") from None

    def __contains__(self, name: object) -> bool:
        return name in self._workflows

    def __iter__(self) -> Iterator[Workflow]:
        return iter(sorted(self._workflows.values(), key=lambda w: w.name))

    def __len__(self) -> int:
        return len(self._workflows)

    @property
    def queues(self) -> set[str]:
        return {q for w in self._workflows.values() for q in w.queues}


def _modules(path: str) -> Iterator[ModuleType]:
    try:
        module = importlib.import_module(path)
    except WorkflowDefinitionError:
        raise
    except ImportError as exc:
        if exc.name and path.startswith(exc.name):
            raise ConfigurationError(
                f"cannot import workflow module {path!r} (from ORCHESTRATOR_WORKFLOWS): {exc}"
            ) from None
        raise ConfigurationError(f"workflow module {path!r} failed to import: {exc}") from None
    except Exception as exc:  # user code: report, do not crash with a traceback
        raise ConfigurationError(
            f"workflow module {path!r} raised {type(exc).__name__}: {exc}"
        ) from None
    yield module
    if hasattr(module, "__path__"):
        for info in pkgutil.iter_modules(module.__path__, prefix=module.__name__ + "."):
            yield from _modules(info.name)


def load_workflows(paths: Iterable[str]) -> Registry:
    """Import every module (and package submodule) in `paths` and register its workflows."""
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # the working directory, as `python -m` would
    registry = Registry()
    for path in paths:
        for module in _modules(path):
            for value in vars(module).values():
                if isinstance(value, Workflow):
                    registry.add(value)
    registry.check_calls()
    return registry
