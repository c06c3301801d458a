"""The Celery app factory and the dispatcher that sends step messages through it."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from celery import Celery

from .dispatch import Dispatch
from .dsl import DEFAULT_QUEUE
from .settings import Settings
from .tracing import TRACEPARENT

log = logging.getLogger("orchestrator.dispatch")

#: Name of the one Celery task: run an attempt of `(run_id, step_name)`.
RUN_STEP_TASK = "orchestrator.run_step"
#: Seconds past a step's `timeout` before Celery kills the worker child (a step that
#: ignores the in-process timeout, e.g. stuck in C code). The lease then settles it.
HARD_LIMIT_GRACE = 10.0


def create_celery_app(settings: Settings) -> Celery:
    """A Celery app for `settings`; the step task is registered, nothing connects yet."""
    broker = settings.broker_url
    if broker.startswith(("sqla+", "sqlalchemy+")):
        from . import devbroker

        broker = devbroker.broker_url(broker)
    app = Celery("orchestrator", broker=broker, set_as_current=False)
    app.conf.update(
        task_default_queue=DEFAULT_QUEUE,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        worker_send_task_events=False,
        enable_utc=True,
    )
    if settings.broker_url.startswith(("redis", "rediss", "sentinel")):
        # An unacked message of a dead worker comes back after this long; the lease-based
        # recovery loop usually re-sends it well before that.
        app.conf.broker_transport_options = {"visibility_timeout": 3600}
    if settings.broker_url.startswith("redis://"):
        from .redis_broker import TRANSPORT

        app.conf.broker_transport = TRANSPORT  # survives a Redis restart (see redis_broker)
    from .tasks import register_tasks

    register_tasks(app)
    return app


class CeleryDispatcher:
    """Sends `Dispatch` messages as `orchestrator.run_step` tasks and revokes them."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def send(self, dispatches: Iterable[Dispatch]) -> None:
        with self.app.producer_or_acquire() as producer:
            for d in dispatches:
                options: dict[str, Any] = {}
                if d.timeout:
                    options["time_limit"] = d.timeout + HARD_LIMIT_GRACE
                if d.traceparent:
                    options["headers"] = {TRACEPARENT: d.traceparent}
                self.app.send_task(
                    RUN_STEP_TASK,
                    args=(d.run_id, d.step),
                    queue=d.queue,
                    routing_key=d.queue,
                    task_id=d.task_id,
                    countdown=d.countdown,
                    producer=producer,
                    **options,
                )

    def revoke(self, task_ids: Iterable[str], terminate: bool = False) -> None:
        """Revoke queued messages; with `terminate`, also stop the processes running them."""
        ids = list(task_ids)
        if not ids:
            return
        try:
            self.app.control.revoke(ids, terminate=terminate, signal="SIGTERM")
        except Exception:  # noqa: BLE001 - best effort: claims refuse cancelled steps anyway
            log.warning("could not broadcast revoke of %d task(s)", len(ids), exc_info=True)
