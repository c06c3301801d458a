"""Stand-ins for step bodies: `fail=` of a run and `patch_step` of the harness.

A stand-in replaces only the step's function. The worker's whole path around it stays:
the claim, the timeout, the log capture, the JSON check of the result, the recording of the
outcome and the retries with backoff. The executor runs it through `execute(body=...)`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Self

from ..dsl import StepContext
from .errors import HarnessError

Body = Callable[[StepContext], Any]
#: How a step fails under `fail=`: an exception (instance or class) raised by every
#: attempt, or one entry per attempt, `None` meaning "run the body" for that attempt.
Failure = BaseException | type[BaseException] | Sequence[BaseException | type[BaseException] | None]


class StepPatch:
    """A `patch_step` in force; `undo()`, or leave its `with` block, to end it."""

    def __init__(self, patches: list[StepPatch], step: str, body: Body, workflow: str | None) -> None:
        self._patches = patches
        self.step = step
        self.body = body
        self.workflow = workflow

    def undo(self) -> None:
        """Runs started from now on run the step's own body again (idempotent)."""
        if self in self._patches:
            self._patches.remove(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.undo()


def failing(step: str, failure: Failure, body: Body) -> Body:
    """A body that raises what `failure` says for each attempt and otherwise runs `body`."""
    if isinstance(failure, (BaseException, type)):
        plan: list[Any] | None = None
        _check(step, failure)
    elif isinstance(failure, Sequence) and not isinstance(failure, (str, bytes)):
        plan = list(failure)
        for item in plan:
            if item is not None:
                _check(step, item)
    else:
        raise HarnessError(
            f"fail= of step {step!r} is {failure!r}: give an exception, an exception class, "
            "or a list of them (None for an attempt that runs the step)"
        )

    def stand_in(ctx: StepContext) -> Any:
        what = failure if plan is None else (plan[ctx.attempt - 1] if ctx.attempt <= len(plan) else None)
        if what is None:
            return body(ctx)
        if isinstance(what, type):
            raise what(f"failed by fail= (attempt {ctx.attempt})")
        raise what.with_traceback(None)  # the same instance again: not its last traceback too

    return stand_in


def _check(step: str, item: Any) -> None:
    if isinstance(item, BaseException) or (isinstance(item, type) and issubclass(item, BaseException)):
        return
    raise HarnessError(
        f"fail= of step {step!r} holds {item!r}, which is not an exception or exception class"
    )
