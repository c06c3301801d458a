"""Reprocessing a topic against real PostgreSQL and a real Tansu broker over Kafka.

Messages are published but never consumed (no consumer runs), then `reprocess` reads them
with its own group-less consumer. Runs are only started (rows and first-step messages in
Redis); no worker is needed to see what started. Two tests drive the real CLI process (one
under the tracing launcher); the API is the Flask app in process.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner
from kafka import KafkaConsumer, TopicPartition
from sqlalchemy import func, select, text

from orchestrator import Batch, Workflow, kafka_trigger
from orchestrator.celery_app import CeleryDispatcher
from orchestrator.cli import main
from orchestrator.db.models import Event, Run
from orchestrator.engine import WorkflowEngine
from orchestrator.registry import Registry
from orchestrator.reprocess import KafkaUnreachable, ReprocessError, make_request, reprocess
from orchestrator.runtime import Runtime
from tests.fixtures.config import ROOT, kafka_env
from tests.webtools import AUTH, assert_documented, make_app

#: A moment all time-range tests publish around (message timestamps are set explicitly).
BASE_MS = 1_800_000_000_000


@pytest.fixture
def settings(kafka_settings):
    return kafka_settings


def flows(prefix: str, with_audit: bool = True) -> list[Workflow]:
    topic = f"{prefix}orders"
    orders = Workflow("rp-orders", triggers=[kafka_trigger(topic, match={"type": "order"}, dedupe="id")])

    @orders.step
    def ship(ctx):  # noqa: ANN001, ANN202
        return None

    counter = Workflow("rp-count", triggers=[kafka_trigger(topic, match={"type": "count"})],
                       input_schema={"type": "object", "required": ["n"]})

    @counter.step
    def count(ctx):  # noqa: ANN001, ANN202
        return None

    found = [orders, counter]
    if with_audit:
        audit = Workflow("rp-audit", triggers=[kafka_trigger(topic, match={"type": "order"})])

        @audit.step
        def note(ctx):  # noqa: ANN001, ANN202
            return None

        found.append(audit)
    return found


def engine_of(runtime, prefix: str, with_audit: bool = True) -> WorkflowEngine:
    return WorkflowEngine(runtime.sessions, Registry(flows(prefix, with_audit)),
                          CeleryDispatcher(runtime.celery), runtime.settings)


def runs_by_workflow(runtime) -> dict[str, int]:
    with runtime.sessions() as session:
        return dict(session.execute(select(Run.workflow, func.count()).group_by(Run.workflow)).all())


def publish_mix(kafka, topic: str) -> None:
    """Four messages on partition 0: an order, the same order again (its dedupe value), an
    ignored event and one that is not JSON."""
    kafka.create_topic(topic, partitions=1)
    kafka.publish(topic, {"type": "order", "id": 1}, key="c-1", partition=0, headers=[("source", b"shop")])
    kafka.publish(topic, {"type": "order", "id": 1}, partition=0)
    kafka.publish(topic, {"type": "other"}, partition=0)
    kafka.publish(topic, b"not json", partition=0)
    kafka.flush()


# -- reading and starting ---------------------------------------------------------------------


def test_messages_never_consumed_are_recorded_and_start_runs_and_a_second_pass_starts_nothing(
        runtime, kafka, topic_prefix):
    topic = f"{topic_prefix}orders"
    publish_mix(kafka, topic)
    engine = engine_of(runtime, topic_prefix)

    first = reprocess(engine, make_request(topic, from_offset="0:0"))
    assert (first.read, first.recorded, first.started) == (4, 4, 3)  # orders once, audit twice
    assert (first.already_handled, first.rejected, first.ignored) == (0, 1, 1)
    assert runs_by_workflow(runtime) == {"rp-orders": 1, "rp-audit": 2}
    with runtime.sessions() as session:
        events = session.scalars(select(Event).order_by(Event.offset)).all()
        assert [e.outcome for e in events] == ["matched", "matched", "ignored", "rejected"]
        first_event = events[0]
        assert (first_event.key, first_event.headers) == ("c-1", [{"key": "source", "value": "shop"}])
        assert first_event.payload == {"type": "order", "id": 1} and first_event.kafka_timestamp is not None
        assert events[3].raw == b"not json" and "not JSON" in events[3].reason

    letters = kafka.read_all(f"{topic}.dlq")  # the rejected one, as the consumer copies it
    assert [m.value for m in letters] == [b"not json"]

    second = reprocess(engine, make_request(topic, from_offset="0:0"))
    assert (second.read, second.recorded, second.started, second.runs) == (4, 0, 0, [])
    assert (second.already_handled, second.rejected, second.ignored) == (2, 1, 1)
    assert runs_by_workflow(runtime) == {"rp-orders": 1, "rp-audit": 2}
    assert len(kafka.read_all(f"{topic}.dlq")) == 1  # recorded before: not copied again


def test_a_workflow_added_since_starts_its_runs_for_recorded_events_only_with_workflow(
        runtime, kafka, topic_prefix):
    topic = f"{topic_prefix}orders"
    publish_mix(kafka, topic)
    reprocess(engine_of(runtime, topic_prefix, with_audit=False), make_request(topic, from_offset="0:0"))
    assert runs_by_workflow(runtime) == {"rp-orders": 1}

    engine = engine_of(runtime, topic_prefix)
    with pytest.raises(ReprocessError, match="no loaded workflow is named 'rp-nope'"):
        reprocess(engine, make_request(topic, from_offset="0:0", workflow="rp-nope"))
    only = reprocess(engine, make_request(topic, from_offset="0:0", workflow="rp-audit"))
    assert (only.read, only.recorded, only.started) == (4, 0, 2)
    # As far as rp-audit is concerned: two orders started, the other event ignored, the
    # message that is not JSON rejected.
    assert (only.already_handled, only.ignored, only.rejected) == (0, 1, 1)
    assert runs_by_workflow(runtime) == {"rp-orders": 1, "rp-audit": 2}
    with runtime.sessions() as session:  # its outcome stays what all triggers made of it
        assert session.scalar(select(Event.outcome).where(Event.offset == 2)) == "ignored"


def test_a_time_range_selects_only_the_messages_of_its_range_in_every_partition(runtime, kafka, topic_prefix):
    topic = f"{topic_prefix}orders"
    kafka.create_topic(topic, partitions=2)
    for n, (partition, seconds) in enumerate([(0, -10), (0, 1), (1, 2), (1, 59), (0, 100)]):
        kafka.producer.send(topic, value=f'{{"type": "order", "id": {n}}}'.encode(), partition=partition,
                            timestamp_ms=BASE_MS + seconds * 1000)
    kafka.flush()
    engine = engine_of(runtime, topic_prefix)
    start, end = "2027-01-15T08:00:00Z", "2027-01-15T08:01:00Z"  # BASE_MS and a minute after
    assert make_request(topic, start=start).start_time.timestamp() * 1000 == BASE_MS

    dry = reprocess(engine, make_request(topic, start=start, end=end, dry_run=True))
    assert sorted(item["offset"] for item in dry.would_start if item["workflow"] == "rp-orders") == [0, 1, 1]
    summary = reprocess(engine, make_request(topic, start=start, end=end))
    assert (summary.read, summary.started) == (3, 6)
    with runtime.sessions() as session:
        ids = {e.payload["id"] for e in session.scalars(select(Event))}
    assert ids == {1, 2, 3}

    open_ended = reprocess(engine, make_request(topic, start=start))
    assert (open_ended.read, open_ended.recorded, open_ended.already_handled) == (4, 1, 3)


def test_an_offset_range_reads_one_partition_from_its_first_offset_to_before_its_last(
        runtime, kafka, topic_prefix):
    topic = f"{topic_prefix}orders"
    kafka.create_topic(topic, partitions=2)
    for n in range(5):
        kafka.publish(topic, {"type": "order", "id": n}, partition=0)
    kafka.publish(topic, {"type": "order", "id": 99}, partition=1)
    kafka.flush()
    summary = reprocess(engine_of(runtime, topic_prefix), make_request(topic, from_offset="0:1", to_offset="0:3"))
    assert (summary.read, summary.started) == (2, 4)
    with runtime.sessions() as session:
        assert sorted(session.scalars(select(Event.offset))) == [1, 2]
    beyond = reprocess(engine_of(runtime, topic_prefix), make_request(topic, from_offset="0:50"))
    assert beyond.read == 0
    with pytest.raises(ReprocessError, match="has no partition 7"):
        reprocess(engine_of(runtime, topic_prefix), make_request(topic, from_offset="7:0"))


def test_a_dry_run_reports_what_would_start_and_writes_nothing(runtime, kafka, topic_prefix):
    topic = f"{topic_prefix}orders"
    publish_mix(kafka, topic)
    engine = engine_of(runtime, topic_prefix)
    dry = reprocess(engine, make_request(topic, from_offset="0:0", dry_run=True))
    assert (dry.read, dry.recorded, dry.started, dry.runs) == (4, 4, 3, [])
    assert sorted((i["offset"], i["workflow"]) for i in dry.would_start) == [
        (0, "rp-audit"), (0, "rp-orders"), (1, "rp-audit")]
    with runtime.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Event)) == 0
        assert session.scalar(select(func.count()).select_from(Run)) == 0
    reprocess(engine, make_request(topic, from_offset="0:0"))
    again = reprocess(engine, make_request(topic, from_offset="0:0", dry_run=True))
    assert (again.started, again.recorded, again.already_handled) == (0, 0, 2)


def test_a_topic_missing_from_kafka_and_an_unreachable_kafka_are_clear_errors(runtime, topic_prefix):
    engine = engine_of(runtime, topic_prefix)
    with pytest.raises(ReprocessError, match="does not exist in Kafka"):
        reprocess(engine, make_request(f"{topic_prefix}orders", from_offset="0:0"))
    with pytest.raises(ReprocessError, match="no loaded workflow has a Kafka trigger"):
        reprocess(engine, make_request("elsewhere", from_offset="0:0"))
    closed = WorkflowEngine(engine.sessions, engine.registry, engine.dispatcher,
                            engine.settings.with_(kafka_bootstrap="127.0.0.1:9"))
    with pytest.raises(KafkaUnreachable, match="cannot reach Kafka at 127.0.0.1:9"):
        reprocess(closed, make_request(f"{topic_prefix}orders", from_offset="0:0"))


# -- the command line -------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "message"), [
    (["--from", "2026-11-01T00:00Z", "--from-offset", "0:0"], "exactly one"),
    ([], "exactly one"),
    (["--from-offset", "zero"], "'zero' is not PARTITION:OFFSET"),
    (["--from-offset", "0:5", "--to-offset", "1:9"], "an offset range is within one partition"),
    (["--from-offset", "0:5", "--to-offset", "0:5"], "is not after --from-offset"),
    (["--from", "2026-11-02T00:00Z", "--to", "2026-11-01T00:00Z"], "is not after --from"),
    (["--from", "yesterday"], "is not an ISO 8601 time"),
    (["--from", "2026-11-01T00:00Z", "--to-offset", "0:1"], "--to-offset goes with --from-offset"),
])
def test_bad_arguments_are_one_line_errors(args, message):
    result = CliRunner().invoke(main, ["reprocess", "orders", *args])
    assert result.exit_code == 1, result.output
    assert message in result.output and result.output.strip().count("\n") == 0, result.output


def test_an_unknown_topic_is_a_one_line_error(settings, redis_url, topic_prefix):
    env = kafka_env(settings, topic_prefix, redis_url)
    result = CliRunner().invoke(main, ["reprocess", "nowhere", "--from-offset", "0:0"], env=env)
    assert result.exit_code == 1, result.output
    assert "no loaded workflow has a Kafka trigger" in result.output
    assert result.output.strip().count("\n") == 0, result.output


def test_the_command_prints_progress_and_a_summary_and_starts_the_runs(
        runtime, kafka, settings, redis_url, topic_prefix):
    topic = f"{topic_prefix}orders"  # tests.kafka_flows: order-fulfilment and order-audit
    kafka.create_topic(topic, partitions=1)
    kafka.publish(topic, {"type": "order.created", "order": {"id": 7, "total": 150}}, partition=0)
    kafka.publish(topic, {"type": "order.created", "order": {"id": 8, "total": 5}}, partition=0)
    kafka.flush()
    env = kafka_env(settings, topic_prefix, redis_url)
    command = [sys.executable, "-m", "orchestrator", "reprocess", topic, "--from-offset", "0:0"]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "read 2 of 2 message(s)" in lines, done.stdout
    assert lines[-1].startswith(f"read 2 message(s) of {topic}: 0 already handled, started 3 run(s)"), done.stdout
    assert runs_by_workflow(runtime) == {"order-fulfilment": 1, "order-audit": 2}
    dry = subprocess.run([*command, "--dry-run"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert "2 already handled, would start 0 run(s)" in dry.stdout.splitlines()[-1], dry.stdout


# -- the API ------------------------------------------------------------------------------------


@pytest.fixture
def client(runtime, topic_prefix):
    runtime.registry = Registry(flows(topic_prefix))
    return make_app(runtime).test_client()


def test_the_api_answers_the_summary(client, runtime, kafka, topic_prefix):
    topic = f"{topic_prefix}orders"
    publish_mix(kafka, topic)
    response = client.post("/api/reprocess", json={"topic": topic, "from_offset": "0:0", "dry_run": True},
                           headers=AUTH)
    assert response.status_code == 200, response.get_json()
    assert_documented(response, "/api/reprocess", "post")
    assert response.get_json()["started"] == 3 and runs_by_workflow(runtime) == {}
    response = client.post("/api/reprocess", json={"topic": topic, "from": "2020-01-01T00:00Z"}, headers=AUTH)
    assert_documented(response, "/api/reprocess", "post")
    body = response.get_json()
    assert (body["read"], body["started"], len(body["runs"]), body["rejected"]) == (4, 3, 3, 1)


@pytest.mark.parametrize(("body", "message"), [
    ({"topic": "x", "from": "2026-11-01T00:00Z", "from_offset": "0:0"},
     "give either from TIME or from_offset P:O (exactly one)"),
    ({"topic": "x"}, "exactly one"),
    ({"topic": "x", "from": "2026-11-02T00:00Z", "to": "2026-11-01T00:00Z"},
     "to 2026-11-01T00:00Z is not after from 2026-11-02T00:00Z"),
    ({"topic": "x", "from_offset": "0-0"}, "is not PARTITION:OFFSET"),
    ({"topic": "x", "from_offset": 5}, "from_offset must be a string"),
    ({"topic": "x", "from_offset": "0:0", "dry_run": "yes"}, "dry_run must be true or false"),
    ({"topic": "x", "from_offset": "0:0", "partition": 1}, "unknown field(s) 'partition'"),
    ({"from_offset": "0:0"}, "topic is required"),
    ({"topic": "elsewhere", "from_offset": "0:0"}, "no loaded workflow has a Kafka trigger"),
])
def test_the_api_answers_400_with_the_reason(client, body, message):
    response = client.post("/api/reprocess", json=body, headers=AUTH)
    assert response.status_code == 400, response.get_json()
    assert_documented(response, "/api/reprocess", "post")
    assert message in response.get_json()["error"]


def test_the_api_needs_the_token_and_answers_503_without_kafka(client, runtime, topic_prefix):
    body = {"topic": f"{topic_prefix}orders", "from_offset": "0:0"}
    response = client.post("/api/reprocess", json=body)
    assert response.status_code == 401
    assert_documented(response, "/api/reprocess", "post")
    away = Runtime(runtime.settings.with_(kafka_bootstrap="127.0.0.1:9"))
    away.registry = Registry(flows(topic_prefix))
    try:
        response = make_app(away).test_client().post("/api/reprocess", json=body, headers=AUTH)
    finally:
        away.close()
    assert response.status_code == 503, response.get_json()
    assert_documented(response, "/api/reprocess", "post")
    assert "cannot reach Kafka at 127.0.0.1:9" in response.get_json()["error"]


def test_reading_stops_at_the_end_the_partition_had_and_moves_no_group_offsets(runtime, kafka, topic_prefix):
    topic = f"{topic_prefix}orders"
    kafka.create_topic(topic, partitions=1)
    for n in range(3):
        kafka.publish(topic, {"type": "count", "n": n}, partition=0)
    kafka.flush()
    seen: list[tuple[int, int | None]] = []

    def publish_more(scanned: int, total: int | None) -> None:
        if total is not None and not any(t for _, t in seen):  # the end is known: publish more
            for n in range(3, 6):
                kafka.publish(topic, {"type": "count", "n": n}, partition=0)
            kafka.flush()
        seen.append((scanned, total))

    summary = reprocess(engine_of(runtime, topic_prefix), make_request(topic, from_offset="0:0"), publish_more)
    assert summary.read == 3 and seen[-1] == (3, 3)
    assert len(kafka.read_all(topic)) == 6  # the later three are there, and were not read
    group = KafkaConsumer(bootstrap_servers=kafka.bootstrap, group_id=runtime.settings.kafka_group,
                          enable_auto_commit=False)
    try:  # the production group's offsets are neither read nor moved
        assert group.committed(TopicPartition(topic, 0)) is None
    finally:
        group.close()


def test_with_tracing_on_an_events_traceparent_is_continued_by_the_run_it_starts(
        runtime, kafka, settings, redis_url, topic_prefix, tmp_path):
    trace_id, event_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    topic = f"{topic_prefix}traced"  # tests.tracing_flows: the "traced" workflow
    kafka.create_topic(topic, partitions=1)
    kafka.publish(topic, {"type": "traced"}, partition=0,
                  headers=[("traceparent", f"00-{trace_id}-{event_span}-01".encode())])
    kafka.flush()
    spans_file = tmp_path / "spans.jsonl"
    env = kafka_env(settings, topic_prefix, redis_url, TEST_SPANS_FILE=str(spans_file),
                    ORCHESTRATOR_WORKFLOWS="tests.flows,tests.kafka_flows,tests.tracing_flows")
    done = subprocess.run([sys.executable, "-m", "tests.tracing_launcher", "reprocess", topic,
                           "--from-offset", "0:0"], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=90)
    assert done.returncode == 0, done.stderr
    spans = [json.loads(line) for line in spans_file.read_text().splitlines()]
    (intake,) = [s for s in spans if s["name"] == "event.intake"]
    assert (intake["trace_id"], intake["parent_id"]) == (trace_id, event_span)
    assert intake["attributes"]["orchestrator.event.reprocessed"] is True
    with runtime.sessions() as session:
        (stored,) = session.scalars(select(Run.traceparent).where(Run.workflow == "traced")).all()
    assert stored.startswith(f"00-{trace_id}-")


def test_a_recorded_event_a_trigger_now_batches_starts_a_run_of_its_own_and_new_ones_join_a_window(
        runtime, kafka, topic_prefix):
    topic = f"{topic_prefix}orders"
    kafka.create_topic(topic, partitions=1)
    for n in range(2):
        kafka.publish(topic, {"type": "tick", "n": n}, partition=0)
    kafka.flush()

    def ticks(match: str, batch: Batch | None = None) -> WorkflowEngine:
        flow = Workflow("rp-ticks", triggers=[kafka_trigger(topic, match={"type": match}, batch=batch)])

        @flow.step
        def tally(ctx):  # noqa: ANN001, ANN202
            return None

        return WorkflowEngine(runtime.sessions, Registry([flow]), CeleryDispatcher(runtime.celery),
                              runtime.settings)

    first = reprocess(ticks("tock"), make_request(topic, from_offset="0:0", to_offset="0:1"))
    assert (first.recorded, first.ignored) == (1, 1)
    fixed = ticks("tick", Batch(max_size=10, window="1h"))
    dry = reprocess(fixed, make_request(topic, from_offset="0:0", dry_run=True))
    assert [(i["offset"], i["workflow"]) for i in dry.would_start] == [(0, "rp-ticks")]
    assert (dry.started, dry.already_handled, dry.recorded) == (1, 1, 1)
    summary = reprocess(fixed, make_request(topic, from_offset="0:0"))
    assert (summary.read, summary.started, summary.recorded, summary.already_handled) == (2, 1, 1, 1)
    with runtime.sessions() as session:
        joined = session.execute(text("SELECT count(*) FROM window_events")).scalar_one()
    assert joined == 1 and runs_by_workflow(runtime) == {"rp-ticks": 1}
