"""A backlog of events drains with bounded memory while the dashboard stays responsive.

The backlog is published before the consumer starts. A trigger matches one event in a
thousand, so the consumer, not Celery, does the work. While it drains, a thread asks the
real `orchestrator web` process for the /runs page again and again. Memory is the
consumer process's peak resident set (VmHWM in /proc/<pid>/status), read when a fifth of
the backlog is recorded and again at the end: the ratio shows whether memory grows with
the backlog. Timings are reported, never asserted; the timeouts are hang guards.

CI drains 10,000 events; `./scripts/test --long` also drains 100,000.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from kafka import KafkaProducer

from tests.fixtures.waiting import count
from tests.web_process import web_process

#: Largest peak resident set the consumer may reach, in MiB, whatever the backlog.
PEAK_RSS_BOUND_MIB = 200
#: Largest growth of the peak between 20% and 100% of the drain (1.0 = none at all).
RSS_GROWTH_BOUND = 1.15
#: One event in this many starts a run.
RUN_EVERY = 1000
#: Seconds any one step (publishing, draining, one page) may take before it counts as hung.
HANG_GUARD = 600


@pytest.fixture
def settings(kafka_settings):
    return kafka_settings


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def publish_backlog(bootstrap: str, topic: str, events: int) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=256 * 1024)
    try:
        for i in range(events):
            kind = "load" if i % RUN_EVERY == 0 else "noise"
            event = {"type": kind, "i": i, "order": {"id": i, "customer": f"c-{i % 977}",
                                                     "items": [{"sku": f"sku-{i % 53}", "qty": 1 + i % 3}]}}
            producer.send(topic, json.dumps(event).encode(), key=str(i % 101).encode())
        producer.flush(timeout=HANG_GUARD)
    finally:
        producer.close(timeout=10)


@dataclass
class PageTimes:
    """Latencies of the /runs page, in milliseconds, asked for one after another."""

    url: str
    #: (when the request was sent, on the monotonic clock; milliseconds it took)
    samples: list[tuple[float, float]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def ask(self) -> None:
        sent = time.monotonic()
        began = time.perf_counter()
        try:
            with urllib.request.urlopen(self.url, timeout=60) as response:
                response.read()
                if response.status != 200:
                    self.failures.append(f"HTTP {response.status}")
        except Exception as exc:  # noqa: BLE001 - recorded and asserted on
            self.failures.append(repr(exc))
        self.samples.append((sent, (time.perf_counter() - began) * 1000))

    def keep_asking(self) -> None:
        while not self.stop.is_set():
            self.ask()

    def between(self, start: float, end: float) -> list[float]:
        return [ms for sent, ms in self.samples if start <= sent <= end]

    def summary(self, start: float = 0.0, end: float = float("inf")) -> str:
        ordered = sorted(self.between(start, end))
        if not ordered:
            return "no request"
        p95 = ordered[max(0, round(0.95 * len(ordered)) - 1)]
        return f"p50 {statistics.median(ordered):.1f} ms, p95 {p95:.1f} ms, max {ordered[-1]:.1f} ms, n={len(ordered)}"


@pytest.mark.parametrize("events", [10_000, pytest.param(100_000, marks=pytest.mark.long)])
def test_a_backlog_drains_with_bounded_consumer_memory_while_the_dashboard_answers(
    events, runtime, settings, redis_url, topic_prefix, start_consumer, start_worker, tmp_path,
    wait_for_run,
):
    topic = f"{topic_prefix}load"  # tests.kafka_flows: workflow `load` starts on {"type": "load"}
    publish_backlog(settings.kafka_bootstrap, topic, events)
    start_worker(concurrency=1)
    with web_process(settings, redis_url, tmp_path) as web:
        idle = PageTimes(f"{web.base}/runs")
        for _ in range(20):
            idle.ask()
        during = PageTimes(f"{web.base}/runs")

        consumer = start_consumer(wait_assigned=False)
        pid = consumer.process.pid
        pager = threading.Thread(target=during.keep_asking, name="dashboard")
        pager.start()
        peak_at_fifth = None
        began = None
        deadline = time.monotonic() + HANG_GUARD
        try:
            while True:
                recorded = count(runtime, "SELECT coalesce(max(id), 0) FROM events")
                if recorded and began is None:
                    began = time.monotonic()
                if peak_at_fifth is None and recorded >= events // 5:
                    peak_at_fifth = memory_kib(pid)["VmHWM"]
                    fifth_seen_at = recorded
                if recorded >= events:
                    break
                assert consumer.process.poll() is None, consumer.output()[-3000:]
                assert time.monotonic() < deadline, f"only {recorded} of {events} events recorded"
                time.sleep(0.02)
            ended = time.monotonic()
            drained_in = ended - (began or ended)
            peak = memory_kib(pid)["VmHWM"]
        finally:
            during.stop.set()
            pager.join(HANG_GUARD)
    assert consumer.stop() == 0

    assert count(runtime, "SELECT count(*) FROM events") == events
    assert count(runtime, "SELECT count(DISTINCT (partition, \"offset\")) FROM events") == events
    with runtime.db.connect() as conn:
        run_ids = [str(r) for (r,) in conn.exec_driver_sql("SELECT id FROM runs")]
    assert len(run_ids) == events // RUN_EVERY
    for run_id in run_ids:
        assert wait_for_run(run_id, timeout=120)["status"] == "succeeded"

    growth = peak / peak_at_fifth
    print(
        f"\nbacklog {events} events drained in {drained_in:.1f}s ({events / max(drained_in, 1e-9):.0f}/s); "
        f"consumer peak RSS {peak_at_fifth / 1024:.1f} MiB at {fifth_seen_at / events:.0%}, "
        f"{peak / 1024:.1f} MiB at 100% (ratio {growth:.3f}); /runs idle: {idle.summary()}; "
        f"/runs during the drain: {during.summary(began, ended)}"
    )
    assert peak / 1024 < PEAK_RSS_BOUND_MIB
    assert growth <= RSS_GROWTH_BOUND, "the consumer's memory grows with the backlog"
    assert not idle.failures and not during.failures, (idle.failures + during.failures)[:5]
    assert during.between(began, ended), "the dashboard answered nothing while the backlog drained"
