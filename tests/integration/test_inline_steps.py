"""Inline steps: a success claims the next step of its run in the same transaction and the
worker process runs it at once, without a message (`engine.Inline`, `executor.execute`).

Real PostgreSQL throughout; real worker processes on Redis except where the engine is
driven in this process to count the messages it sends. `inline-chain` (tests/flows.py) is
first -> second -> third -> fourth, the last with a timeout (so always its own message).
"""

from __future__ import annotations

import signal

from sqlalchemy import text

from orchestrator.dispatch import RecordingDispatcher
from orchestrator.engine import Inline, Outcome, WorkflowEngine
from orchestrator.executor import Heartbeats, execute
from tests.fixtures.waiting import wait_for

CHAIN = ("first", "second", "third", "fourth")


def rows(runtime, sql: str, **params) -> list[tuple]:
    with runtime.db.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql), params)]


def task_ids(runtime, run_id: str) -> dict[str, str]:
    return dict(rows(runtime, "SELECT name, task_id FROM steps WHERE run_id = :r", r=run_id))


def executions(side_channel, run_id: str, step: str) -> int:
    return int(side_channel.get(f"exec:{run_id}:{step}") or 0)


def steps_of(run: dict) -> dict[str, dict]:
    return {s["name"]: s for s in run["steps"]}


def test_a_chain_runs_on_its_first_message_and_only_the_step_with_a_timeout_gets_another(
    runtime, settings, side_channel
):
    quiet = WorkflowEngine(runtime.sessions, runtime.registry, RecordingDispatcher(), settings)
    run_id = quiet.start_run("inline-chain", {})
    (first,) = quiet.dispatcher.sent
    heartbeats = Heartbeats(quiet)

    done = execute(quiet, heartbeats, run_id, "first", worker="w@test", queue=first.queue,
                   task_id=first.task_id)

    assert done == "succeeded (3 steps in a row)"
    assert [d.step for d in quiet.dispatcher.sent] == ["first", "fourth"]  # nothing for second, third
    ids = task_ids(runtime, run_id)
    assert ids["first"] == ids["second"] == ids["third"] == first.task_id
    assert ids["fourth"] == quiet.dispatcher.sent[1].task_id != first.task_id
    attempts = rows(runtime, "SELECT s.name, a.number, a.status, a.worker, a.logs FROM attempts a "
                             "JOIN steps s ON s.id = a.step_id WHERE s.run_id = :r ORDER BY a.id", r=run_id)
    assert [(name, number, status, worker) for name, number, status, worker, _ in attempts] == [
        (name, 1, "succeeded", "w@test") for name in CHAIN[:3]
    ]
    for name, _, _, _, logs in attempts:  # each attempt keeps its own log lines
        assert [line["message"] for line in logs] == [f"link {name}, attempt 1"]
    results = dict(rows(runtime, "SELECT name, result FROM steps WHERE run_id = :r", r=run_id))
    assert results["second"]["seen"] == ["first"] and results["third"]["seen"] == ["second"]
    assert rows(runtime, "SELECT status FROM steps WHERE run_id = :r AND name = 'fourth'", r=run_id) == [("queued",)]

    # The first step's message delivered again: nothing runs twice, nothing more is sent.
    again = execute(quiet, heartbeats, run_id, "first", worker="w@test", queue=first.queue,
                    task_id=first.task_id)
    assert again.startswith("skipped")
    assert len(quiet.dispatcher.sent) == 2
    assert [executions(side_channel, run_id, name) for name in CHAIN[:3]] == [1, 1, 1]


def test_a_success_recorded_twice_claims_the_next_step_once(runtime, settings):
    quiet = WorkflowEngine(runtime.sessions, runtime.registry, RecordingDispatcher(), settings)
    run_id = quiet.start_run("inline-chain", {})
    (message,) = quiet.dispatcher.sent
    claim = quiet.claim(run_id, "first", "w@test")
    inline = Inline(message.queue, "w@test", message.task_id)
    outcome = Outcome(ok=True, result={"n": 1})

    follower = quiet.finish(claim, outcome, inline)
    # The commit's answer was lost and the outcome is recorded again (`record_outcome`).
    assert quiet.finish(claim, outcome, inline) is None

    assert follower is not None and follower.step == "second" and follower.attempt == 1
    assert follower.results == {"first": {"n": 1}}
    assert rows(runtime, "SELECT s.status, s.attempts, count(a.id) FROM steps s JOIN attempts a "
                         "ON a.step_id = s.id WHERE s.run_id = :r AND s.name = 'second' "
                         "GROUP BY 1, 2", r=run_id) == [("running", 1, 1)]
    assert len(quiet.dispatcher.sent) == 1
    # Another queue's process gets no inline step: the message goes as always.
    follower_outcome = Outcome(ok=True, result=None)
    assert quiet.finish(follower, follower_outcome, Inline("elsewhere", "w@test", "t")) is None
    assert [d.step for d in quiet.dispatcher.sent] == ["first", "third"]


def test_a_worker_runs_a_chain_in_one_process_within_its_inline_budget(
    runtime, start_worker, wait_for_run, side_channel
):
    start_worker(concurrency=2, inline_steps=1)
    run_id = runtime.engine.start_run("inline-chain", {})
    run = wait_for_run(run_id)
    assert run["status"] == "succeeded", run
    ids = task_ids(runtime, run_id)
    assert ids["first"] == ids["second"]  # one step inline after the message's own
    assert len({ids["second"], ids["third"], ids["fourth"]}) == 3
    pids = {name: steps_of(run)[name]["result"]["pid"] for name in CHAIN}
    assert pids["first"] == pids["second"]
    assert [executions(side_channel, run_id, name) for name in CHAIN] == [1, 1, 1, 1]


def test_a_worker_killed_during_an_inline_step_is_recovered_through_its_lease(
    runtime, settings, start_worker, wait_for_run, side_channel
):
    victim = start_worker(concurrency=1)
    run_id = runtime.engine.start_run("inline-chain", {"sleep": {"second": 60}})
    wait_for(lambda: executions(side_channel, run_id, "second"), 30, message="second to start")
    ids = task_ids(runtime, run_id)
    assert ids["second"] == ids["first"]  # it runs inline, on the first step's message
    victim.kill(signal.SIGKILL)
    start_worker(concurrency=1)

    run = wait_for_run(run_id, timeout=settings.step_lease + 60)
    assert run["status"] == "succeeded", run
    second = steps_of(run)["second"]
    assert [a["status"] for a in second["attempts"]] == ["failed", "succeeded"]
    assert second["attempts"][0]["error"].startswith("worker lost")
    # The first step's message, redelivered after the kill, ran nothing again.
    assert [executions(side_channel, run_id, name) for name in CHAIN] == [1, 2, 1, 1]


def test_cancelling_a_run_during_an_inline_step_runs_nothing_after_it(
    runtime, start_worker, wait_for_run, side_channel
):
    start_worker(concurrency=1)
    run_id = runtime.engine.start_run("inline-chain", {"sleep": {"second": 3}})
    wait_for(lambda: executions(side_channel, run_id, "second"), 30, message="second to start")
    assert runtime.engine.cancel_run(run_id)

    # The running attempt finishes (cancel keeps its result) and schedules nothing.
    wait_for(lambda: rows(runtime, "SELECT status FROM steps WHERE run_id = :r AND name = 'second'",
                          r=run_id) == [("succeeded",)], 30, message="second to finish")
    run = wait_for_run(run_id)
    assert run["status"] == "cancelled"
    statuses = {name: step["status"] for name, step in steps_of(run).items()}
    assert statuses == {"first": "succeeded", "second": "succeeded", "third": "cancelled",
                        "fourth": "cancelled"}
    assert executions(side_channel, run_id, "third") == 0


def test_on_sqlite_a_chain_runs_on_its_first_message_too(tmp_path, redis_url, monkeypatch):
    # The portable statements (`GenericHotPath.continue_step`), as `orchestrator dev` runs them.
    from orchestrator.db.migrate import upgrade
    from orchestrator.runtime import Runtime
    from orchestrator.settings import Settings

    monkeypatch.setenv("ORCHESTRATOR_TEST_REDIS", redis_url)
    url = f"sqlite:///{tmp_path / 'state.db'}"
    upgrade(url)
    settings = Settings(database_url=url, broker_url="memory://", workflows=("tests.flows",))
    rt = Runtime(settings)
    try:
        quiet = WorkflowEngine(rt.sessions, rt.registry, RecordingDispatcher(), settings)
        run_id = quiet.start_run("inline-chain", {})
        (first,) = quiet.dispatcher.sent
        done = execute(quiet, Heartbeats(quiet), run_id, "first", worker="w@test", queue=first.queue,
                       task_id=first.task_id)
        assert done == "succeeded (3 steps in a row)"
        assert [d.step for d in quiet.dispatcher.sent] == ["first", "fourth"]
        with rt.db.connect() as conn:
            found = conn.execute(text("SELECT name, status, attempts, task_id FROM steps ORDER BY id")).all()
        assert [tuple(r) for r in found] == [
            ("first", "succeeded", 1, first.task_id), ("second", "succeeded", 1, first.task_id),
            ("third", "succeeded", 1, first.task_id), ("fourth", "queued", 0, quiet.dispatcher.sent[1].task_id),
        ]
    finally:
        rt.close()
