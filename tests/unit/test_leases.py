"""The lease board: which registered attempts still have a live process to renew them for."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

from orchestrator.leases import LeaseBoard, process_start


def claim(attempt_id: int, step_id: int = 7, attempt: int = 1) -> SimpleNamespace:
    return SimpleNamespace(attempt_id=attempt_id, step_id=step_id, attempt=attempt)


def test_a_live_process_has_a_start_time_a_reaped_one_none():
    assert process_start(os.getpid()) == process_start(os.getpid()) is not None
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert process_start(child.pid) is None


def test_a_zombie_counts_as_dead():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
        assert process_start(child.pid) is None
    finally:
        child.wait()


def test_the_board_lists_attempts_of_live_processes_and_forgets_the_others(tmp_path):
    board = LeaseBoard(tmp_path)
    board.register(claim(1, step_id=10, attempt=2))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "2.lease").write_text(json.dumps(
        {"step_id": 11, "attempt": 1, "pid": dead.pid, "started": 1}))
    # Our pid, but another process's start time: a pid reused after the registrant died.
    (tmp_path / "3.lease").write_text(json.dumps(
        {"step_id": 12, "attempt": 1, "pid": os.getpid(), "started": process_start(os.getpid()) - 1}))
    (tmp_path / "4.lease").write_text("not json")

    [alive] = board.alive()
    assert (alive.step_id, alive.attempt, alive.pid) == (10, 2, os.getpid())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.lease"]
    board.unregister(claim(1))
    assert board.alive() == []
    board.unregister(claim(1))  # twice: nothing to do


def test_a_new_board_removes_those_of_workers_killed_outright(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = tmp_path / f"orchestrator-leases-{dead.pid}-123-abc"
    left.mkdir()
    live = LeaseBoard.create()
    assert not left.exists()
    assert LeaseBoard.create().directory.exists() and live.directory.exists()
