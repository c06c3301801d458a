"""The pure part of reprocessing: checking a request's options and what belongs to a range."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from orchestrator.events import narrowed
from orchestrator.intake import IGNORED, MATCHED, REJECTED, Assessment, Decision, Message
from orchestrator.reprocess import ReprocessError, make_request

NOV_1_MS = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp() * 1000)


def message(offset: int = 0, timestamp_ms: int | None = NOV_1_MS) -> Message:
    return Message("orders", 0, offset, b"{}", timestamp_ms=timestamp_ms)


def test_a_time_range_is_inclusive_at_its_start_and_exclusive_at_its_end():
    request = make_request("orders", start="2026-11-01T00:00Z", end="2026-11-01T01:00Z")
    assert request.start_time == datetime(2026, 11, 1, tzinfo=UTC)
    assert request.keeps(message(timestamp_ms=NOV_1_MS))
    assert request.keeps(message(timestamp_ms=NOV_1_MS + 3_600_000 - 1))
    assert not request.keeps(message(timestamp_ms=NOV_1_MS + 3_600_000))
    assert not request.keeps(message(timestamp_ms=NOV_1_MS - 1))
    assert not request.keeps(message(timestamp_ms=None))  # no timestamp: in no time range


def test_a_time_without_a_zone_is_utc_and_other_zones_are_converted():
    assert make_request("orders", start="2026-11-01T00:00").start_time == datetime(2026, 11, 1, tzinfo=UTC)
    later = make_request("orders", start="2026-11-01T02:00+02:00")
    assert later.keeps(message(timestamp_ms=NOV_1_MS))


def test_an_offset_range_is_one_partition_and_exclusive_at_its_end():
    request = make_request("orders", from_offset="3:10", to_offset="3:12")
    assert (request.partition, request.start_offset, request.end_offset) == (3, 10, 12)
    assert request.keeps(message(11)) and not request.keeps(message(12))
    assert make_request("orders", from_offset="0:5").end_offset is None


@pytest.mark.parametrize(("options", "message_part"), [
    ({"start": "2026-11-01T00:00Z", "from_offset": "0:0"}, "exactly one"),
    ({}, "exactly one"),
    ({"from_offset": "0"}, "is not PARTITION:OFFSET"),
    ({"from_offset": "-1:0"}, "is not PARTITION:OFFSET"),
    ({"from_offset": "0:1", "to_offset": "0:1"}, "is not after"),
    ({"from_offset": "0:1", "end": "2026-11-01T00:00Z"}, "--to goes with --from"),
    ({"start": "2026-11-01T00:00Z", "end": "2026-11-01T00:00Z"}, "is not after"),
    ({"start": "next tuesday"}, "ISO 8601"),
])
def test_bad_options_say_which_option_is_wrong(options, message_part):
    with pytest.raises(ReprocessError, match=message_part):
        make_request("orders", **options)


def test_narrowed_to_one_workflow_its_decision_makes_the_outcome():
    decisions = [Decision("a", MATCHED, input={}), Decision("b", REJECTED, reason="boom"),
                 Decision("c", IGNORED)]
    assessment = Assessment(message(), REJECTED, "workflow 'b': boom", {}, decisions)
    assert narrowed(assessment, "a").outcome == MATCHED and narrowed(assessment, "a").reason is None
    assert narrowed(assessment, "b").reason == "workflow 'b': boom"
    assert narrowed(assessment, "c").outcome == IGNORED
    undecodable = Assessment(message(), REJECTED, "not JSON")
    assert narrowed(undecodable, "a") is undecodable
