"""The harness's message queue: step messages kept in memory with their due time.

The engine hands this dispatcher what it would hand Celery (`Dispatch`, after each
commit). A message without a countdown is due at once; a retry's countdown makes it due
that many seconds later on the test's clock, so a backoff passes when the test advances the
clock, not in real time. The harness takes messages out in due order (ties in the order
they were sent) and runs each with the worker's own `executor.execute`.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from ..clock import FakeClock
from ..dispatch import Dispatch


@dataclass(order=True, frozen=True)
class Queued:
    """A message waiting to be run: `dispatch` is due at `due`.

    `handed_back` counts how often a worker without the step's code gave it back (the
    Celery task's `handed_back` argument).
    """

    due: datetime
    seq: int
    dispatch: Dispatch = field(compare=False)
    handed_back: int = field(default=0, compare=False)


class LocalDispatcher:
    """A `Dispatcher` that keeps messages for the harness to run (see the module docstring)."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self._heap: list[Queued] = []
        self._seq = 0
        #: Task ids revoked before they ran (a cancelled run's queued steps).
        self.revoked: set[str] = set()
        #: Every message sent, in order (what a broker would have seen).
        self.sent: list[Dispatch] = []

    def send(self, dispatches: Iterable[Dispatch]) -> None:
        for dispatch in dispatches:
            self.sent.append(dispatch)
            self.put(dispatch, dispatch.countdown or 0.0)

    def put(self, dispatch: Dispatch, countdown: float, handed_back: int = 0) -> None:
        """Queue `dispatch` to be due `countdown` seconds from the clock's current time."""
        due = self.clock.current + timedelta(seconds=countdown)
        self._seq += 1
        heapq.heappush(self._heap, Queued(due, self._seq, dispatch, handed_back))

    def revoke(self, task_ids: Iterable[str], terminate: bool = False) -> None:
        # Steps run one at a time in the test's thread, so none is running to terminate.
        self.revoked.update(task_ids)

    def pop_due(self, until: datetime) -> Queued | None:
        """The earliest message due at or before `until`, taken out; None if there is none."""
        while self._heap and self._heap[0].due <= until:
            item = heapq.heappop(self._heap)
            if item.dispatch.task_id in self.revoked:
                self.revoked.discard(item.dispatch.task_id)
                continue
            return item
        return None

    @property
    def pending(self) -> list[Queued]:
        """Messages not run yet (revoked ones left out), earliest first."""
        return sorted(q for q in self._heap if q.dispatch.task_id not in self.revoked)
