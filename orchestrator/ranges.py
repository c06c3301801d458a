"""The range a reprocess reads: checked from its options (pure), then read from Kafka.

A time range covers every partition of the topic, an offset range one partition. It is read
without a consumer group (`assign` and `seek`), so no group's offsets are read or moved.

The end of a range without `to`/`to_offset` is each partition's high watermark when it is
first fetched: messages published later are not waited for. The high watermark is read
from the fetch (`highwater`), not `end_offsets`, which Tansu answers short (the last
batch's first offset + 1). A time range starts at the offset `offsets_for_times` gives for
`from` and stops before the one it gives for `to`; Tansu answers it with offset 0 and
timestamp -1 whatever the time, so an answer without a timestamp counts as unknown (from
the beginning, to the high watermark). A time range is always filtered by the messages' own
timestamps as well.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .errors import KafkaUnreachable, OrchestratorError
from .intake import Message

log = logging.getLogger("orchestrator.reprocess")

#: Milliseconds one poll of the range waits for messages.
POLL_TIMEOUT_MS = 500
#: Consecutive empty polls after which partitions whose ends are known but not reached (the
#: last offsets were compacted away, or are transaction markers) count as read.
EMPTY_POLLS = 4
#: Seconds without a single fetch answer after which Kafka counts as unreachable.
FETCH_TIMEOUT = 20.0


class ReprocessError(OrchestratorError):
    """A reprocess request that cannot be done as asked (the message says what to change)."""


@dataclass(frozen=True)
class Request:
    """What to reprocess: a time range over every partition, or an offset range of one.

    Times are inclusive at `start_time`, exclusive at `end_time`; offsets inclusive at
    `start_offset`, exclusive at `end_offset` (like Kafka's end offsets).
    """

    topic: str
    start_time: datetime | None = None
    end_time: datetime | None = None
    partition: int | None = None
    start_offset: int | None = None
    end_offset: int | None = None
    workflow: str | None = None
    dry_run: bool = False

    def keeps(self, message: Message) -> bool:
        """Whether a message read in the range's partitions belongs to the range."""
        if self.start_time is None:
            return self.end_offset is None or message.offset < self.end_offset
        if message.timestamp_ms is None:
            return False
        moment = message.timestamp_ms / 1000
        return moment >= self.start_time.timestamp() and (
            self.end_time is None or moment < self.end_time.timestamp()
        )


def parse_time(text: str, what: str) -> datetime:
    """An ISO 8601 moment (`2026-11-01T00:00Z`); one without a zone is UTC."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ReprocessError(
            f"{what} {text!r} is not an ISO 8601 time; write it like 2026-11-01T00:00Z"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_position(text: str, what: str) -> tuple[int, int]:
    """`P:O`, a partition and an offset, both integers from 0."""
    partition, sep, offset = text.strip().partition(":")
    if not sep or not partition.isdigit() or not offset.isdigit():
        raise ReprocessError(f"{what} {text!r} is not PARTITION:OFFSET (like 0:1500)")
    return int(partition), int(offset)


#: How `make_request`'s errors name the options: as the CLI spells them, or the API.
CLI_NAMES = {"from": "--from", "to": "--to", "from_offset": "--from-offset", "to_offset": "--to-offset"}
API_NAMES = {name: name for name in CLI_NAMES}


def make_request(
    topic: str,
    start: str | None = None,
    end: str | None = None,
    from_offset: str | None = None,
    to_offset: str | None = None,
    workflow: str | None = None,
    dry_run: bool = False,
    names: Mapping[str, str] = CLI_NAMES,
) -> Request:
    """Check the options of a reprocess (pure); `ReprocessError` names the wrong one."""
    since, until, first, last = names["from"], names["to"], names["from_offset"], names["to_offset"]
    if not topic or not topic.strip():
        raise ReprocessError("give the topic to reprocess")
    if (start is None) == (from_offset is None):
        raise ReprocessError(f"give either {since} TIME or {first} P:O (exactly one)")
    if start is not None:
        if to_offset is not None:
            raise ReprocessError(f"{last} goes with {first}, not {since} (use {until} TIME)")
        begin = parse_time(start, since)
        finish = parse_time(end, until) if end is not None else None
        if finish is not None and finish <= begin:
            raise ReprocessError(f"{until} {end} is not after {since} {start}")
        return Request(topic, start_time=begin, end_time=finish, workflow=workflow, dry_run=dry_run)
    if end is not None:
        raise ReprocessError(f"{until} goes with {since}, not {first} (use {last} P:O)")
    assert from_offset is not None
    partition, offset = parse_position(from_offset, first)
    stop: int | None = None
    if to_offset is not None:
        last_partition, stop = parse_position(to_offset, last)
        if last_partition != partition:
            raise ReprocessError(
                f"{last} {to_offset} is of partition {last_partition}, {first} of "
                f"partition {partition}: an offset range is within one partition"
            )
        if stop <= offset:
            raise ReprocessError(f"{last} {to_offset} is not after {first} {from_offset}")
    return Request(topic, partition=partition, start_offset=offset, end_offset=stop,
                   workflow=workflow, dry_run=dry_run)


#: Called with the messages scanned so far and the range's size once known.
Progress = Callable[[int, int | None], None]


def read_range(consumer: Any, request: Request, progress: Progress | None = None) -> Iterator[list[Message]]:
    """The messages of the range's partitions from its start to its end, batch by batch."""
    from kafka.errors import OffsetOutOfRangeError
    from kafka.structs import TopicPartition

    partitions = consumer.partitions_for_topic(request.topic)
    if not partitions:
        raise ReprocessError(f"topic {request.topic!r} does not exist in Kafka")
    if request.partition is not None:
        if request.partition not in partitions:
            raise ReprocessError(
                f"topic {request.topic!r} has no partition {request.partition} "
                f"(it has {len(partitions)}: 0-{max(partitions)})"
            )
        partitions = {request.partition}
    tps = [TopicPartition(request.topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    starts, stops = _bounds(consumer, request, tps)
    for tp in tps:
        consumer.seek(tp, starts[tp])
    ends: dict[Any, int] = {}
    empty = 0
    scanned = 0
    heard = time.monotonic()
    open_ = set(tps)
    while open_:
        try:
            records = consumer.poll(timeout_ms=POLL_TIMEOUT_MS)
        except OffsetOutOfRangeError as exc:  # a start past the partition's end: nothing to read
            beyond = set(exc.args[0]) if exc.args and isinstance(exc.args[0], dict) else set(open_)
            for tp in beyond & open_:
                ends.setdefault(tp, starts[tp])
                open_.discard(tp)
                consumer.pause(tp)
            continue
        batch: list[Message] = []
        for tp in list(open_):
            if tp not in ends and consumer.highwater(tp) is not None:
                high = consumer.highwater(tp)
                ends[tp] = min(high, stops.get(tp, high))
                heard = time.monotonic()
            for record in records.get(tp, ()):
                if tp in ends and record.offset >= ends[tp]:
                    break
                batch.append(Message.from_record(record))
            if tp in ends and consumer.position(tp) >= ends[tp]:
                open_.discard(tp)
                consumer.pause(tp)
        if records:
            empty = 0
            heard = time.monotonic()
        else:
            empty += 1
            if empty >= EMPTY_POLLS and all(tp in ends for tp in open_):
                break  # positions short of the end (compacted or deleted records): done
            if open_ and time.monotonic() - heard > FETCH_TIMEOUT:
                raise KafkaUnreachable(f"Kafka answered no fetch of {request.topic} within {FETCH_TIMEOUT:g}s")
        scanned += len(batch)
        if progress is not None:
            total = (sum(max(0, ends[tp] - starts[tp]) for tp in tps)
                     if len(ends) == len(tps) else None)
            progress(scanned, None if total is None else max(total, scanned))
        if batch:
            yield batch


def _bounds(consumer: Any, request: Request, tps: Sequence[Any]) -> tuple[dict[Any, int], dict[Any, int]]:
    """Each partition's first offset to read, and the offset to stop before where one is
    known before reading (`to_offset`, or the one Kafka gives for the end time); else the
    high watermark, taken at the first fetch, ends it."""
    beginning = consumer.beginning_offsets(list(tps))
    if request.start_offset is not None:
        stops = {} if request.end_offset is None else {tp: request.end_offset for tp in tps}
        return {tp: max(request.start_offset, beginning[tp]) for tp in tps}, stops
    assert request.start_time is not None
    starts: dict[Any, int] = {}
    for tp, found in _offsets_at(consumer, request.topic, tps, request.start_time).items():
        if found is _AT_END:
            starts[tp] = max(consumer.end_offsets([tp])[tp], beginning[tp])
        else:  # unknown (Tansu's answer): from the beginning, filtered by timestamp
            starts[tp] = beginning[tp] if found is None else max(found, beginning[tp])
    stops: dict[Any, int] = {}
    if request.end_time is not None:
        for tp, found in _offsets_at(consumer, request.topic, tps, request.end_time).items():
            if isinstance(found, int):
                stops[tp] = found
    return starts, stops


#: `_offsets_at`: the partition has no message at or after the moment.
_AT_END: Any = object()


def _offsets_at(consumer: Any, topic: str, tps: Sequence[Any], moment: datetime) -> dict[Any, Any]:
    """Per partition, Kafka's first offset whose timestamp is at or after `moment`; `_AT_END`
    when it has none; None when the broker gave no usable answer (the call failed, or
    Tansu's offset 0 with timestamp -1 whatever the time)."""
    wanted = int(moment.timestamp() * 1000)
    try:
        answers = consumer.offsets_for_times({tp: wanted for tp in tps})
    except Exception:  # noqa: BLE001 - a broker without ListOffsets by time: filter instead
        log.info("offsets_for_times failed; %s is filtered by timestamp", topic, exc_info=True)
        return dict.fromkeys(tps)
    found: dict[Any, Any] = {}
    for tp in tps:
        if tp not in answers:
            found[tp] = None
        elif answers[tp] is None:  # Kafka: no message at or after the moment
            found[tp] = _AT_END
        elif answers[tp].timestamp is None or answers[tp].timestamp < wanted:
            found[tp] = None
        else:
            found[tp] = answers[tp].offset
    return found
