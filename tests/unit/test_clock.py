"""The process clock (`orchestrator.clock`) and the step timer's manners with other timers."""

from __future__ import annotations

import signal
import time
from datetime import UTC, datetime, timedelta

import pytest

from orchestrator import clock
from orchestrator.engine import utcnow
from orchestrator.executor import StepTimeout, time_limit

START = datetime(2030, 1, 1, tzinfo=UTC)


def test_system_clock_readings_strictly_increase():
    system = clock.SystemClock()
    readings = [system.now() for _ in range(1000)]
    assert all(a < b for a, b in zip(readings, readings[1:], strict=False))
    assert abs(readings[-1] - datetime.now(UTC)) < timedelta(seconds=5)


def test_a_fake_clock_moves_only_when_told_and_its_readings_still_increase():
    fake = clock.FakeClock(START)
    first, second = fake.now(), fake.now()
    assert first == START and second == START + clock.TICK
    assert fake.current == START  # readings do not move the set time
    fake.advance(90)
    assert fake.now() == START + timedelta(seconds=90)
    fake.move_to(START)  # never back
    assert fake.current == START + timedelta(seconds=90)
    with pytest.raises(ValueError):
        fake.advance(-1)


def test_a_fake_clock_needs_an_aware_start():
    with pytest.raises(ValueError, match="aware"):
        clock.FakeClock(datetime(2030, 1, 1))


def test_the_engine_reads_the_installed_clock_until_the_previous_one_is_back():
    before = clock.current()
    with clock.installed(clock.FakeClock(START)) as fake:
        assert utcnow() == START
        fake.advance(3600)
        assert utcnow() == START + timedelta(hours=1)
    assert clock.current() is before
    assert utcnow() > START.replace(year=2020)  # real time again (not the fake one's)


def test_a_step_timeout_still_fires():
    with pytest.raises(StepTimeout, match="timed out after 0.05s"), time_limit(0.05):
        time.sleep(1)


def test_a_step_timeout_re_arms_a_timer_it_found_with_what_was_left_of_it():
    previous = signal.signal(signal.SIGALRM, lambda *_: None)
    signal.setitimer(signal.ITIMER_REAL, 100)
    try:
        with time_limit(5):
            time.sleep(0.01)
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 99 < remaining <= 100
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
