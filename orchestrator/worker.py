"""The worker process: a Celery worker, its lease keeper and recovery loop beside it, and a
bounded shutdown.

SIGTERM (what Kubernetes, Docker and systemd send) starts Celery's warm shutdown:

1. the worker stops taking messages. Those it had reserved but not started were never
   acknowledged (`acks_late`), so they go back to the broker as it disconnects, for another
   worker;
2. the recovery loop of this process starts no new sweep (and one in progress ends); its
   lease keeper goes on renewing the leases of the steps still running;
3. the steps it is running finish and record their outcome; the messages of their
   successors go to the broker for other workers;
4. steps still running `shutdown_timeout` seconds after SIGTERM are handed back
   (`WorkflowEngine.hand_back`: the attempt is recorded as interrupted and the step is queued
   again, not counted against its retries) and their processes are stopped;
5. the process exits with status 0.

So a SIGTERM never loses a step and never runs a succeeded one again; it takes at most
`shutdown_timeout` seconds plus a moment to record the hand-backs. A second SIGTERM changes
nothing; SIGQUIT, or Ctrl-C twice, is Celery's cold shutdown (running steps are killed and
recovered by their lease, like after a crash).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from typing import Any

from celery import signals

from .leases import BOARD_ENV, LeaseBoard, LeaseKeeper
from .recovery import RecoveryProcess
from .runtime import Runtime

log = logging.getLogger("orchestrator.worker")

#: Seconds after SIGTERM before steps still running are handed back to other workers
#: (`orchestrator worker --shutdown-timeout`, ORCHESTRATOR_WORKER_SHUTDOWN_TIMEOUT). Keep the
#: platform's grace period longer (Kubernetes' terminationGracePeriodSeconds: 120 in deploy/).
DEFAULT_SHUTDOWN_TIMEOUT = 60.0
#: Seconds the process waits, as it exits, for a recovery sweep in progress.
RECOVERY_STOP_WAIT = 10.0


class GracefulShutdown:
    """Celery signal receivers that stop the recovery loop and bound the warm shutdown."""

    def __init__(self, rt: Runtime, timeout: float, recovery: RecoveryProcess | None) -> None:
        self.rt = rt
        self.timeout = timeout
        self.recovery = recovery
        self.requested = threading.Event()
        self.finished = threading.Event()
        self._worker: Any = None  # Celery's WorkController, once built

    def connect(self) -> GracefulShutdown:
        signals.worker_init.connect(self._on_worker_init, weak=False)
        signals.worker_shutting_down.connect(self._on_shutting_down, weak=False)
        return self

    def _on_worker_init(self, sender: Any = None, **_: Any) -> None:
        self._worker = sender

    def _on_shutting_down(self, sig: str = "", how: str = "", **_: Any) -> None:
        # Called from Celery's signal handler: set flags and start a thread, nothing more.
        if self.requested.is_set():
            return
        self.requested.set()
        board = LeaseBoard.from_env()
        if board is not None:
            board.mark_stopping()  # no more inline steps in the pool's processes
        if self.recovery is not None:
            self.recovery.stopped.set()
        if how == "Warm":
            threading.Thread(target=self._deadline, name="shutdown-deadline", daemon=True).start()

    def _deadline(self) -> None:
        if not self.finished.wait(self.timeout):
            self.hand_back_running()

    def hand_back_running(self) -> int:
        """Hand back every step this worker is still running and stop its process."""
        from celery.worker import state

        pool = getattr(self._worker, "pool", None)
        given = []
        # Every database call first, then every termination: a terminated child may be
        # replaced by a fork, which must not happen while this thread holds a lock.
        for request in list(state.active_requests):
            run_id, step = request.args[0], request.args[1]  # orchestrator.run_step(run_id, step)
            try:
                if self.rt.engine.hand_back(run_id, step, request.hostname, request.id):
                    given.append(request)
            except Exception:  # noqa: BLE001 - the step's lease recovers it instead
                log.warning("could not hand back step %s of run %s", step, run_id, exc_info=True)
        if pool is not None:
            for request in given:
                request.terminate(pool, signal="SIGTERM")
        log.warning(
            "shutdown: %d step(s) still running after %gs handed back to other workers",
            len(given), self.timeout,
        )
        return len(given)

    def close(self) -> None:
        """The worker has stopped: end the deadline and the recovery loop (waiting for a sweep)."""
        self.finished.set()
        if self.recovery is not None:
            self.recovery.stop(wait=RECOVERY_STOP_WAIT)
            log.info("recovery loop stopped")


def run_worker(
    rt: Runtime,
    argv: Sequence[str],
    *,
    recovery: bool = True,
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
) -> None:
    """Run the Celery worker `argv` describes until it shuts down (module docstring).

    Beside it run its lease keeper (always: it renews the leases of the steps this worker
    runs, see `leases`) and, unless `recovery` is False, the recovery loop.
    """
    board = LeaseBoard.create()
    os.environ[BOARD_ENV] = str(board.directory)  # inherited by the pool children
    keeper = LeaseKeeper(rt.settings, board).start()
    loop = RecoveryProcess(rt.settings).start() if recovery else None
    shutdown = GracefulShutdown(rt, shutdown_timeout, loop).connect()
    try:
        rt.celery.worker_main(list(argv))
    finally:
        shutdown.close()
        # Last: the pool's children have exited, none of their leases needs renewing.
        keeper.stop(wait=RECOVERY_STOP_WAIT)
        os.environ.pop(BOARD_ENV, None)
    log.info("worker stopped")
