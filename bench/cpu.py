"""CPU time of benchmark processes, read from /proc (Linux): a worker's whole process
tree and the PostgreSQL backends serving it, so a benchmark can print CPU per run."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import Engine, text

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()  # fields after the command name


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of `pids` (own time; a process that exited counts 0)."""
    total = 0
    for pid in pids:
        fields = _stat(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICK


def session_pids(leader: int) -> list[int]:
    """Every live process of the session `leader` started (`start_new_session=True`): a
    worker's pool children, lease keeper and recovery process included."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and int(fields[3]) == leader:  # session id
                found.append(int(entry.name))
    return found


def backend_pids(db: Engine, application_name: str) -> list[int]:
    """PostgreSQL backends whose clients set `application_name` (PGAPPNAME); a name
    starting with "db:" means every backend of that database but this query's own."""
    if application_name.startswith("db:"):
        query = ("SELECT pid FROM pg_stat_activity WHERE datname = :name AND pid <> pg_backend_pid()")
        name = application_name[3:]
    else:
        query, name = "SELECT pid FROM pg_stat_activity WHERE application_name = :name", application_name
    with db.connect() as conn:
        return [pid for (pid,) in conn.execute(text(query), {"name": name})]


class Meter:
    """CPU seconds a worker (its session) and its PostgreSQL backends spend between
    `start` and `stop`. Backends that close meanwhile are missed (pools keep theirs)."""

    def __init__(self, leader: int, db: Engine | None = None, application_name: str | None = None) -> None:
        self.leader, self.db, self.application_name = leader, db, application_name

    def _sample(self) -> dict[str, dict[int, float]]:
        sample = {"worker": {p: cpu_seconds([p]) for p in session_pids(self.leader)}, "postgres": {}}
        if self.db is not None and self.application_name is not None:
            sample["postgres"] = {p: cpu_seconds([p]) for p in backend_pids(self.db, self.application_name)}
        return sample

    def start(self) -> None:
        self.began = self._sample()

    def stop(self) -> dict[str, float]:
        """{"worker": seconds, "postgres": seconds} since `start`."""
        ended = self._sample()
        return {kind: sum(t - self.began[kind].get(p, 0.0) for p, t in ended[kind].items())
                for kind in ended}
