"""The Celery task: thin on purpose. It finds the process's runtime and calls the engine."""

from __future__ import annotations

from typing import Any

from celery import Celery, Task
from sqlalchemy.exc import InterfaceError, OperationalError


def register_tasks(app: Celery) -> None:
    from .celery_app import RUN_STEP_TASK

    @app.task(
        bind=True,
        name=RUN_STEP_TASK,
        acks_late=True,
        reject_on_worker_lost=True,
        # The database went away: let Celery re-deliver with backoff instead of dropping.
        autoretry_for=(OperationalError, InterfaceError),
        retry_backoff=True,
        retry_backoff_max=30,
        max_retries=None,
    )
    def run_step(self: Task, run_id: str, step_name: str, handed_back: int = 0, **_later: Any) -> str:
        # `_later`: options a newer release may add to its messages; an older worker of a
        # rolling upgrade ignores them instead of failing the message.
        from . import runtime
        from .executor import HandBack, execute

        rt = runtime.current()
        try:
            return execute(rt.engine, rt.heartbeats, run_id, step_name,
                           worker=self.request.hostname, handed_back=handed_back,
                           traceparent=self.request.get("traceparent"),
                           queue=(self.request.delivery_info or {}).get("routing_key"),
                           task_id=self.request.id)
        except HandBack as back:  # no code here: to the same queue, for a worker that has it
            raise self.retry(countdown=back.countdown, max_retries=None,
                             kwargs={"handed_back": handed_back + 1}) from None
