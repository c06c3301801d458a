"""The process's clock: every moment the engine records or compares comes from `now()`.

One swappable clock, so that a test can make time pass (`orchestrator.testing` installs a
`FakeClock` and moves it with `advance`): backoffs, leases, admission order and every
timestamp then follow it. Production never installs anything and gets `SystemClock`.

Readings are strictly increasing within a process: runs are admitted in creation order
under concurrency limits, so two runs created in the same microsecond (one consumer batch)
must still compare in the order they came. Both clocks keep that promise.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Protocol

#: The smallest step between two readings (what datetimes and both databases resolve).
TICK = timedelta(microseconds=1)


class Clock(Protocol):
    """A source of aware UTC datetimes, strictly increasing from one call to the next."""

    def now(self) -> datetime: ...


class _StrictlyIncreasing:
    """Readings of `_moment()`, each nudged forward by `TICK` when it would not be later
    than the one before."""

    def __init__(self) -> None:
        self._last: datetime | None = None
        self._lock = threading.Lock()

    def _moment(self) -> datetime:
        raise NotImplementedError

    def now(self) -> datetime:
        with self._lock:
            moment = self._moment()
            if self._last is not None and moment <= self._last:
                moment = self._last + TICK
            self._last = moment
            return moment


class SystemClock(_StrictlyIncreasing):
    """Wall-clock UTC, nudged forward by `TICK` when two readings would be equal or go back."""

    def _moment(self) -> datetime:
        return datetime.now(UTC)


class FakeClock(_StrictlyIncreasing):
    """A clock that only moves when told to (`advance`, `move_to`).

    It keeps a *set time*, which only `advance` and `move_to` change, and its readings are
    the set time, nudged forward by `TICK` when a reading would not be later than the one
    before. So readings are strictly increasing, as `SystemClock`'s are, while the set time
    stays exact: a retry due 1 s + 2 s after a failure is due at the set time + 3 s, not 3 s
    and a few microseconds of readings later.
    """

    def __init__(self, start: datetime | None = None) -> None:
        moment = start or datetime.now(UTC).replace(microsecond=0)
        if moment.tzinfo is None:
            raise ValueError("FakeClock needs an aware datetime (tzinfo=UTC)")
        super().__init__()
        self._set = moment.astimezone(UTC)

    def _moment(self) -> datetime:
        return self._set

    @property
    def current(self) -> datetime:
        """The set time (looking does not take a reading)."""
        return self._set

    def advance(self, seconds: float) -> datetime:
        """Move the set time forward by `seconds` (>= 0); returns it."""
        if seconds < 0:
            raise ValueError(f"a clock cannot go back ({seconds:g}s)")
        with self._lock:
            self._set += timedelta(seconds=seconds)
            return self._set

    def move_to(self, moment: datetime) -> datetime:
        """Move the set time forward to `moment`; an earlier moment leaves it where it is."""
        with self._lock:
            if moment > self._set:
                self._set = moment
            return self._set


_current: Clock = SystemClock()


def now() -> datetime:
    """UTC now from the installed clock (see the module docstring)."""
    return _current.now()


def current() -> Clock:
    """The installed clock."""
    return _current


def install(clock: Clock) -> Clock:
    """Make `clock` the process's clock; returns the one it replaces (to put it back)."""
    global _current
    previous, _current = _current, clock
    return previous


@contextmanager
def installed(clock: Clock) -> Iterator[Clock]:
    """`clock` is the process's clock for the block, the previous one again after it."""
    previous = install(clock)
    try:
        yield clock
    finally:
        install(previous)
