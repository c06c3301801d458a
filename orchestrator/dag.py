"""Pure DAG checks: unknown dependencies and cycles, with messages that name the culprits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .errors import WorkflowDefinitionError


def validate_dag(workflow: str, deps: Mapping[str, Sequence[str]]) -> list[str]:
    """Return the steps in a topological order, or raise naming the problem."""
    for step, parents in deps.items():
        for parent in parents:
            if parent not in deps:
                raise WorkflowDefinitionError(
                    f"workflow {workflow!r}: step {step!r} depends on unknown step {parent!r}"
                )
    order: list[str] = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        mark = state.get(node)
        if mark == 2:
            return
        if mark == 1:
            cycle = path[path.index(node):] + [node]
            raise WorkflowDefinitionError(
                f"workflow {workflow!r} has a cycle: {' -> '.join(cycle)}"
            )
        state[node] = 1
        path.append(node)
        for parent in deps[node]:
            visit(parent, path)
        path.pop()
        state[node] = 2
        order.append(node)

    for node in deps:
        visit(node, [])
    return order


def children(deps: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Invert a step -> parents map into step -> children."""
    out: dict[str, list[str]] = {name: [] for name in deps}
    for step, parents in deps.items():
        for parent in parents:
            out[parent].append(step)
    return out


def ancestors(deps: Mapping[str, Sequence[str]], node: str) -> tuple[str, ...]:
    """Every step upstream of `node` (parents, their parents...), in definition order."""
    seen: set[str] = set()
    todo = list(deps.get(node, ()))
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(deps.get(name, ()))
    return tuple(n for n in deps if n in seen)
