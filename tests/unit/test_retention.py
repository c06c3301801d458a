"""The retention age parser: what `orchestrator prune --older-than` accepts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.retention import InvalidAge, PruneReport, cutoff_for, parse_age


@pytest.mark.parametrize(
    ("text", "age"),
    [
        ("30d", timedelta(days=30)),
        ("12h", timedelta(hours=12)),
        ("90m", timedelta(minutes=90)),
        ("45s", timedelta(seconds=45)),
        ("0s", timedelta(0)),
        (" 7d ", timedelta(days=7)),
    ],
)
def test_an_age_is_a_whole_number_and_a_unit(text, age):
    assert parse_age(text) == age


@pytest.mark.parametrize("text", ["30", "d", "30 days", "1.5h", "-3d", "30w", "", "3d4h", "30D"])
def test_anything_else_is_refused_with_the_accepted_forms(text):
    with pytest.raises(InvalidAge, match=r"s \(seconds\), m \(minutes\), h \(hours\) or d \(days\)"):
        parse_age(text)


def test_an_age_too_large_for_a_calendar_is_refused():
    with pytest.raises(InvalidAge, match="too large"):
        parse_age("9999999999d")
    with pytest.raises(InvalidAge, match="before year 1"):
        cutoff_for(parse_age("999999d"), datetime(2026, 1, 1, tzinfo=UTC))


def test_the_cutoff_is_the_age_before_now():
    now = datetime(2026, 3, 31, 12, 0, tzinfo=UTC)
    assert cutoff_for(parse_age("30d"), now) == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert cutoff_for(timedelta(0), now) == now


def test_the_summary_says_what_went_or_would_go():
    cutoff = datetime(2026, 3, 1, tzinfo=UTC)
    done = PruneReport(cutoff, runs=3, steps=6, attempts=7, events=9, batches=4)
    assert done.summary() == (
        "deleted 3 run(s) with 6 step(s) and 7 attempt(s), and 9 event(s), "
        "older than 2026-03-01T00:00:00+00:00, in 4 batch(es)"
    )
    assert PruneReport(cutoff, dry_run=True, runs=1).summary().startswith("would delete 1 run(s)")
