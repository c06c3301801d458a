"""Dead letters: rejected events copied to `<topic><ORCHESTRATOR_DLQ_SUFFIX>`.

A copy keeps the original key, value and headers and adds why the event was rejected, where
it came from and which recorded event it is. Copies are sent at least once: a consumer that
dies after recording a batch but before its offsets are committed sends them again, so a
reader of the dead-letter topic de-duplicates on `orchestrator-event-id`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kafka.errors import KafkaError, MessageSizeTooLargeError

from . import tracing
from .intake import Message
from .kafka import create_admin, ensure_topics
from .settings import Settings

log = logging.getLogger("orchestrator.dead_letters")

#: Header holding why the event was rejected.
REASON_HEADER = "orchestrator-reason"
#: Header holding `[topic, partition, offset]` of the original message, as JSON.
SOURCE_HEADER = "orchestrator-source"
#: Header holding the id of the recorded event (to de-duplicate copies).
EVENT_ID_HEADER = "orchestrator-event-id"
#: Header of a copy sent without its value because the value was too big to send.
DROPPED_BYTES_HEADER = "orchestrator-dropped-bytes"
#: Seconds a batch's copies may take to be acknowledged by the broker.
SEND_TIMEOUT = 30.0


@dataclass(frozen=True)
class DeadLetter:
    """A rejected event to copy to its topic's dead-letter topic."""

    message: Message
    reason: str
    event_id: int
    #: The `traceparent` of the event's intake (tracing on): replaces the original's.
    traceparent: str | None = None


def dead_letter_topic(topic: str, settings: Settings) -> str:
    return topic + settings.dlq_suffix


def dead_letter_headers(letter: DeadLetter) -> list[tuple[str, bytes]]:
    """The original headers plus the orchestrator's: why, from where, which event."""
    message = letter.message
    return [
        *tracing.with_traceparent(message.headers, letter.traceparent),
        (REASON_HEADER, letter.reason.encode("utf-8", "backslashreplace")),
        (SOURCE_HEADER, json.dumps([message.topic, message.partition, message.offset]).encode()),
        (EVENT_ID_HEADER, str(letter.event_id).encode()),
    ]


def send_dead_letters(producer: Any, letters: Iterable[DeadLetter], settings: Settings) -> None:
    """Copy `letters` and wait until the broker has every copy; raises `KafkaError` if not."""
    futures = []
    for letter in letters:
        topic = dead_letter_topic(letter.message.topic, settings)
        headers = dead_letter_headers(letter)
        key = letter.message.key
        try:
            future = producer.send(topic, value=_sendable(letter.message.value, key), key=key,
                                   headers=headers)
        except MessageSizeTooLargeError:
            # Too big to send: keep the record of it, without the body (the database has it).
            size = str(len(letter.message.value or b"")).encode()
            future = producer.send(topic, value=_sendable(None, key), key=key,
                                   headers=[*headers, (DROPPED_BYTES_HEADER, size)])
        futures.append(future)
    if not futures:
        return
    producer.flush(timeout=SEND_TIMEOUT)
    for future in futures:
        future.get(timeout=SEND_TIMEOUT)


def _sendable(value: bytes | None, key: bytes | None) -> bytes | None:
    """The value to send: the client refuses a message with neither key nor value (a keyless
    tombstone, or a message it could not read), so that one is copied with an empty value."""
    return b"" if value is None and key is None else value


def ensure_dead_letter_topics(settings: Settings, topics: Iterable[str]) -> None:
    """Create the dead-letter topics of `topics` now (best effort: else they are auto-created)."""
    wanted = [dead_letter_topic(t, settings) for t in topics]
    try:
        admin = create_admin(settings)
    except KafkaError as exc:
        log.info("could not check the dead-letter topics (%s); they will be auto-created", exc)
        return
    try:
        created = ensure_topics(admin, wanted)
        if created:
            log.info("created dead-letter topic(s) %s", ", ".join(created))
    except KafkaError as exc:
        log.info("could not create the dead-letter topics (%s); they will be auto-created", exc)
    finally:
        admin.close()
