"""The baseline: plain Celery no-op tasks with the same delivery settings as the orchestrator."""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

app = Celery("plain", broker=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/14"))
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    task_ignore_result=True,
    worker_prefetch_multiplier=1,
    task_default_queue="plain",
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)
_counter: redis.Redis | None = None


@app.task(name="plain.noop")
def noop() -> None:
    return None


@app.task(name="plain.last")
def last(tag: str | None = None) -> None:
    """Count the chain done; with `tag`, also note when it ended (bench/peers.py's latency)."""
    global _counter
    if _counter is None:
        _counter = redis.Redis.from_url(os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/14"))
    if tag is not None:
        _counter.hset("plain:ended", tag, repr(time.time()))
    _counter.incr("plain:done")
