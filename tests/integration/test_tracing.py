"""Tracing and JSON logs across real processes: Tansu, `orchestrator consume`, Celery workers.

The consumer and the worker run the real CLI under `tests.tracing_launcher`, which sets a
TracerProvider writing every finished span to a shared JSON-lines file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.fixtures.config import KAFKA_TEST_WORKFLOWS, ROOT, kafka_env
from tests.fixtures.waiting import count, wait_for

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
EVENT_SPAN = "00f067aa0ba902b7"


@pytest.fixture
def settings(kafka_settings):
    return kafka_settings.with_(workflows=(*KAFKA_TEST_WORKFLOWS, "tests.tracing_flows"))


@pytest.fixture
def launch(settings, topic_prefix, redis_url, tmp_path):
    """Start `orchestrator <args>` under the tracing launcher; stopped after the test."""
    started: list[subprocess.Popen[bytes]] = []

    def start(name: str, *args: str, **extra_env: str) -> tuple[subprocess.Popen[bytes], Path, Path]:
        env = kafka_env(settings, topic_prefix, redis_url, TEST_SPANS_FILE=str(tmp_path / "spans.jsonl"),
                        **extra_env)
        out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            process = subprocess.Popen([sys.executable, "-m", "tests.tracing_launcher", *args],
                                       env=env, cwd=ROOT, stdout=stdout, stderr=stderr,
                                       start_new_session=True)
        started.append(process)
        return process, out, err

    yield start
    for process in started:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for process in started:
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _ready(process: subprocess.Popen[bytes], log: Path, done: str) -> None:
    deadline = time.monotonic() + 60
    while done not in log.read_text(errors="replace"):
        assert process.poll() is None, f"exited early:\n{log.read_text(errors='replace')[-3000:]}"
        assert time.monotonic() < deadline, f"not ready:\n{log.read_text(errors='replace')[-3000:]}"
        time.sleep(0.2)


def _start_services(launch, **env: str) -> tuple[Path, Path]:
    worker, _, worker_err = launch("worker", "worker", "--concurrency=2", "--hostname=traced@test", **env)
    _ready(worker, worker_err, " ready.")
    consumer, _, consumer_err = launch("consumer", "consume", **env)
    _ready(consumer, consumer_err, "partitions assigned: ")
    return worker_err, consumer_err


def _spans(tmp_path: Path) -> list[dict]:
    path = tmp_path / "spans.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_an_events_traceparent_is_continued_by_its_run_and_every_step_attempt(
    runtime, settings, kafka, topic_prefix, launch, tmp_path, wait_for_run
):
    source, emitted = f"{topic_prefix}traced", f"{topic_prefix}traced-out"
    kafka.create_topic(source)
    kafka.create_topic(emitted)
    _start_services(launch)
    kafka.publish(source, {"type": "traced"},
                  headers=[("traceparent", f"00-{TRACE_ID}-{EVENT_SPAN}-01".encode())])
    kafka.flush()
    wait_for(lambda: count(runtime, "SELECT count(*) FROM runs WHERE workflow = 'traced'") == 1, 60, 0.2,
             "the traced run")
    with runtime.sessions() as session:
        run_id, stored = session.execute(
            text("SELECT id, traceparent FROM runs WHERE workflow = 'traced'")
        ).one()
    assert wait_for_run(str(run_id), timeout=60)["status"] == "succeeded"

    def complete() -> list[dict]:
        spans = _spans(tmp_path)
        steps = [s for s in spans if s["name"] == "step" and s["attributes"].get("orchestrator.run_id") == str(run_id)]
        return spans if len(steps) == 2 else []

    spans = wait_for(complete, 30, 0.2, "the spans of both step attempts")
    intake = [s for s in spans if s["name"] == "event.intake" and s["trace_id"] == TRACE_ID]
    runs = [s for s in spans if s["name"] == "run" and s["attributes"]["orchestrator.run_id"] == str(run_id)]
    steps = {s["attributes"]["orchestrator.step"]: s for s in spans if s["name"] == "step"
             and s["attributes"]["orchestrator.run_id"] == str(run_id)}
    assert len(intake) == 1 and len(runs) == 1 and set(steps) == {"first", "second"}
    (intake,), (run,) = intake, runs
    assert intake["parent_id"] == EVENT_SPAN
    assert intake["attributes"]["messaging.destination.name"] == source
    assert run["trace_id"] == TRACE_ID and run["parent_id"] == intake["span_id"]
    assert run["attributes"]["orchestrator.workflow"] == "traced"
    assert stored == f"00-{TRACE_ID}-{run['span_id']}-01"  # kept on the run row
    for name, step in steps.items():
        assert step["trace_id"] == TRACE_ID and step["parent_id"] == run["span_id"], name
        assert step["attributes"] == {
            "orchestrator.workflow": "traced", "orchestrator.run_id": str(run_id),
            "orchestrator.step": name, "orchestrator.attempt": 1, "orchestrator.queue": "orchestrator",
        }
        assert step["status"] != "ERROR"
    assert intake["pid"] != steps["first"]["pid"]  # one trace across the consumer and a worker
    # The emitted event carries the emitting step's context, so its consumers continue the trace.
    records = wait_for(lambda: kafka.read_all(emitted), 30, 0.5, "the emitted event")
    headers = dict(records[0].headers)
    assert headers["traceparent"].decode() == f"00-{TRACE_ID}-{steps['second']['span_id']}-01"


def test_a_rejected_events_dead_letter_carries_the_intake_traceparent(
    runtime, settings, kafka, topic_prefix, launch, tmp_path
):
    source = f"{topic_prefix}traced"
    kafka.create_topic(source)
    _start_services(launch)
    kafka.publish(source, b"not json", headers=[("traceparent", f"00-{TRACE_ID}-{EVENT_SPAN}-01".encode())])
    kafka.flush()
    letters = wait_for(lambda: kafka.read_all(f"{source}.dlq"), 60, 0.5, "the dead letter")
    intake = wait_for(lambda: [s for s in _spans(tmp_path) if s["name"] == "event.intake"], 30, 0.2, "intake span")
    traceparents = [v.decode() for k, v in letters[0].headers if k == "traceparent"]
    assert traceparents == [f"00-{TRACE_ID}-{intake[0]['span_id']}-01"]
    assert intake[0]["attributes"]["orchestrator.event.outcome"] == "rejected"


def test_json_logs_are_one_object_per_line_with_the_steps_run_step_attempt_and_event(
    runtime, settings, kafka, topic_prefix, launch, wait_for_run
):
    source = f"{topic_prefix}traced"
    kafka.create_topic(source)
    worker_err, consumer_err = _start_services(launch, ORCHESTRATOR_LOG_FORMAT="json")
    kafka.publish(source, {"type": "traced"})
    kafka.flush()
    wait_for(lambda: count(runtime, "SELECT count(*) FROM runs WHERE workflow = 'traced'") == 1, 60, 0.2,
             "the traced run")
    wait_for(lambda: "first step of" in worker_err.read_text(), 60, 0.2, "the step's log line")
    lines = {}
    for path in (worker_err, consumer_err):
        objects = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        assert objects and all({"time", "level", "logger", "message"} <= set(o) for o in objects)
        lines[path] = objects
    (step_line,) = [o for o in lines[worker_err] if o["message"].startswith("first step of")]
    assert step_line["step"] == "first" and step_line["attempt"] == 1
    assert step_line["run_id"] == step_line["message"].split()[-1]
    event_id = count(runtime, f"SELECT event_id FROM runs WHERE id = '{step_line['run_id']}'")
    assert event_id and step_line["event_id"] == event_id  # the event that started the run


def test_an_unknown_log_format_is_one_error_line_naming_the_setting(settings, redis_url, topic_prefix):
    env = kafka_env(settings, topic_prefix, redis_url, ORCHESTRATOR_LOG_FORMAT="xml")
    done = subprocess.run([sys.executable, "-m", "orchestrator", "workflows"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "Error: ORCHESTRATOR_LOG_FORMAT='xml' is not a log format: use text or json"
    )
