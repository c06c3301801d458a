"""Request parameters, cursors and bodies: clean values or a 400 that says what to send."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from werkzeug.exceptions import BadRequest

from web import params


def test_run_cursor_round_trips_a_keyset_position():
    moment, rid = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC), uuid.uuid4()
    assert params.run_cursor_arg({"cursor": params.run_cursor(moment, rid)}) == (moment, rid)


def test_event_cursor_round_trips_and_kinds_do_not_mix():
    assert params.event_cursor_arg({"cursor": params.event_cursor(42)}) == 42
    with pytest.raises(BadRequest):
        params.run_cursor_arg({"cursor": params.event_cursor(42)})
    with pytest.raises(BadRequest):
        params.event_cursor_arg({"cursor": params.run_cursor(datetime.now(UTC), uuid.uuid4())})


def test_since_takes_iso_times_and_spans_back_from_now():
    now = datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert params.since_arg({"since": "30m"}, now) == now - timedelta(minutes=30)
    assert params.since_arg({"since": "7d"}, now) == now - timedelta(days=7)
    assert params.since_arg({"since": "2024-01-01T00:00:00"}) == datetime(2024, 1, 1, tzinfo=UTC)
    assert params.since_arg({"since": "2024-01-01T02:00:00+02:00"}).utcoffset() == timedelta(hours=2)
    assert params.since_arg({}) is None
    with pytest.raises(BadRequest, match="ISO 8601"):
        params.since_arg({"since": "last week"})


@pytest.mark.parametrize("raw", ["0", "501", "-1", "1.5", "x", True])
def test_limit_outside_its_range_is_refused(raw):
    with pytest.raises(BadRequest, match="limit must be an integer from 1 to 500"):
        params.limit_arg({"limit": raw})


def test_json_body_must_be_an_object():
    assert params.json_body(b'{"a": 1}') == {"a": 1}
    assert params.json_body(b"  ", required=False) == {}
    for raw, message in [(b"", "must be a JSON object"), (b"[]", "got list"), (b"{", "not valid JSON"),
                         (b"[" * 100_000, "not valid JSON")]:
        with pytest.raises(BadRequest, match=message):
            params.json_body(raw)


def test_strings_with_nul_cannot_be_stored():
    params.check_storable({"a": ["fine", {"b": "also fine"}]})
    for bad in ({"a": "x\x00"}, {"\x00": 1}, ["\x00"]):
        with pytest.raises(BadRequest, match="NUL"):
            params.check_storable(bad)
