"""Keeping the leases of running steps alive from outside the processes that run them.

A lease renewed by a thread of the step's own process stops when the step holds the GIL
(a C call such as a huge regex or some parsers): the recovery loop then takes a live, busy
process for a dead one and runs the step a second time beside the first. So the renewal
happens elsewhere:

- each prefork child, once it has claimed an attempt, registers it in its worker's *lease
  board*: a directory of one small file per attempt, naming the step, the attempt number and
  the child (its pid and its start time, so a pid reused by a later process is not taken for
  it). It removes the file when the attempt ends;
- the worker's *lease keeper*, a spawned process beside it, renews in PostgreSQL the lease of
  every registered attempt whose process is alive (not gone, not a zombie), every third of
  `step_lease`, and forgets the attempts of processes that died.

A killed child (SIGKILL, out of memory, Celery's hard time limit) stops being renewed at once,
so its lease lapses as fast as before: within `step_lease`, then the recovery loop's next sweep.
A step that is alive but hung has its lease renewed for as long as its process lives: its
`timeout` (and the hard time limit after it) bounds it, not the lease.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .recovery import SpawnedProcess

if TYPE_CHECKING:
    from .engine import Claim
    from .settings import Settings

log = logging.getLogger("orchestrator.leases")

#: Environment variable through which `orchestrator worker` tells its pool children where its
#: lease board is (set by the worker for its own processes; not a setting).
BOARD_ENV = "ORCHESTRATOR_WORKER_LEASE_BOARD"
#: Start of the name of a board's directory (in the system's temporary directory).
PREFIX = "orchestrator-leases-"
#: Suffix of a registered attempt's file on the board.
SUFFIX = ".lease"


def renewal_interval(step_lease: float) -> float:
    """Seconds between renewals: three per lease, so one late renewal loses nothing."""
    return max(0.2, step_lease / 3)


def process_start(pid: int) -> int | None:
    """When process `pid` started (clock ticks after boot), or None if it is gone or a zombie.

    Where there is no /proc (not Linux), 0 for any process that exists: no protection
    against a reused pid there.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may hold spaces
    if fields[0] in ("Z", "X", "x"):
        return None
    return int(fields[19])  # field 22 of proc(5): starttime


@dataclass(frozen=True)
class Registered:
    """An attempt registered on a board: whose lease it is, and which process runs it."""

    step_id: int
    attempt: int
    pid: int
    started: int


#: The file on a board that says its worker is shutting down (`LeaseBoard.mark_stopping`).
STOPPING = "stopping"


class LeaseBoard:
    """The directory in which a worker's processes register the attempts they run."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @classmethod
    def create(cls) -> LeaseBoard:
        """A new board for this process's worker; removes those left by workers killed outright
        (named after the worker's pid and start time, so a reused pid is not taken for its own)."""
        import tempfile

        root = Path(tempfile.gettempdir())
        for old in root.glob(f"{PREFIX}*-*-*"):
            try:
                _, pid, started, _ = old.name.rsplit("-", 3)
                if process_start(int(pid)) != int(started):
                    shutil.rmtree(old, ignore_errors=True)
            except ValueError:
                continue
        me = os.getpid()
        return cls(Path(tempfile.mkdtemp(prefix=f"{PREFIX}{me}-{process_start(me)}-", dir=root)))

    @classmethod
    def from_env(cls) -> LeaseBoard | None:
        """This worker's board, in one of its pool children; None outside `orchestrator worker`."""
        directory = os.environ.get(BOARD_ENV)
        return cls(Path(directory)) if directory else None

    def register(self, claim: Claim) -> None:
        """Register an attempt this process has claimed (raises if the board cannot be written:
        an attempt whose lease nothing would renew must not run)."""
        pid = os.getpid()
        started = process_start(pid)
        record = {"step_id": claim.step_id, "attempt": claim.attempt, "pid": pid, "started": started}
        path = self._path(claim.attempt_id)
        partial = path.with_name(f".{path.name}.tmp")  # never read: the rename is atomic
        partial.write_text(json.dumps(record))
        os.replace(partial, path)

    def unregister(self, claim: Claim) -> None:
        try:
            self._path(claim.attempt_id).unlink(missing_ok=True)
        except OSError:
            log.warning("could not unregister attempt %d from %s", claim.attempt_id, self.directory,
                        exc_info=True)

    def alive(self) -> list[Registered]:
        """The registered attempts whose process is alive; forgets those of dead processes."""
        found = []
        for path, entry in self._entries():
            if entry is None or process_start(entry.pid) != entry.started:
                path.unlink(missing_ok=True)
            else:
                found.append(entry)
        return found

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def mark_stopping(self) -> None:
        """The worker is shutting down: its processes run no further step inline (`Inline`);
        what a success makes ready goes back to the broker as messages."""
        try:
            (self.directory / STOPPING).touch()
        except OSError:
            log.warning("could not mark %s stopping", self.directory, exc_info=True)

    def stopping(self) -> bool:
        return (self.directory / STOPPING).exists()

    def _path(self, attempt_id: int) -> Path:
        return self.directory / f"{attempt_id}{SUFFIX}"

    def _entries(self) -> Iterator[tuple[Path, Registered | None]]:
        try:
            paths = list(self.directory.glob(f"*{SUFFIX}"))
        except OSError:
            return
        for path in paths:
            try:
                record = json.loads(path.read_text())
                yield path, Registered(int(record["step_id"]), int(record["attempt"]),
                                       int(record["pid"]), record["started"])
            except FileNotFoundError:
                continue  # the attempt just ended
            except (OSError, ValueError, KeyError, TypeError):
                yield path, None


class LeaseKeeper(SpawnedProcess):
    """The process that renews the leases registered on a worker's board.

    Spawned, like the recovery loop and for the same reason (see `SpawnedProcess`). It runs
    whether or not the worker runs the recovery loop, and through a graceful shutdown (steps
    still running are renewed until they finish or are handed back). It is stopped once the
    worker has stopped; should the worker die without stopping it, it goes on while processes
    it renews for still live, then removes the board and exits.
    """

    def __init__(self, settings: Settings, board: LeaseBoard) -> None:
        super().__init__(_keeper_main, (settings, str(board.directory), os.getpid()),
                         "orchestrator-leases")
        self.board = board

    def stop(self, wait: float | None = None) -> None:
        super().stop(wait)
        self.board.remove()


def _keeper_main(settings: Settings, directory: str, parent: int) -> None:
    """Entry point of the spawned lease keeper."""
    from .dispatch import RecordingDispatcher
    from .engine import WorkflowEngine
    from .registry import Registry
    from .runtime import Runtime

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group; the worker decides
    from . import logs

    logs.configure(logging.INFO)  # ORCHESTRATOR_LOG_FORMAT, checked by the parent already
    board = LeaseBoard(Path(directory))
    rt = Runtime(settings, pre_ping=True)
    # It renews leases and nothing else: no workflow code to load, no message to send.
    engine = WorkflowEngine(rt.sessions, Registry(), RecordingDispatcher(), settings)
    failing = False
    try:
        while not stop.wait(renewal_interval(settings.step_lease)):
            try:
                running = board.alive()
                if not running and os.getppid() != parent:
                    log.warning("lease keeper: the worker that started it is gone; stopping")
                    board.remove()
                    return
                engine.heartbeat((r.step_id, r.attempt) for r in running)
                if failing:
                    log.warning("lease keeper: renewing leases again")
                failing = False
            except Exception as exc:  # noqa: BLE001 - the next renewal tries again; log once
                if not failing:
                    log.warning("lease keeper: could not renew leases (%s); will keep trying", exc)
                failing = True
    finally:
        rt.close()
