"""GET /metrics: Prometheus text format from a registry of this app's own.

Everything is read from the database (the source of truth, shared by every web process),
so any number of web processes report the same figures:

* `orchestrator_runs` and `orchestrator_steps` by workflow and status (gauges);
* `orchestrator_events_total` by outcome;
* `orchestrator_outbox_backlog` (events steps emitted that the relay has not yet sent) and
  `orchestrator_relay_lag_seconds` (age of the oldest of them; 0 when there is none);
* `orchestrator_waits_open` by kind (event, approval, sleep: nodes waiting now) and
  `orchestrator_timers_due` (open waits whose timer is due but not yet fired: a growing
  figure means no recovery process is firing timers);
* `orchestrator_consumer_lag` per topic and partition, from Kafka's end offsets and the
  consumer group's committed offsets (only when ORCHESTRATOR_KAFKA_BOOTSTRAP is set);
* three histograms, so an operator sees where time goes: event to run (Kafka timestamp
  to run committed), queue wait (step queued to started) and execution (attempt start
  to finish).

The histograms behave like in-process ones: they count what happens from the moment the app
starts (a restart resets them, which Prometheus' `rate()` expects). Each scrape adds only the
observations since the previous one, read from an indexed time window, so a scrape stays
cheap however many runs the database holds. Observations younger than `SETTLE_SECONDS` wait
for the next scrape, so a transaction that commits an older timestamp late is still counted. Step counts need a GROUP BY over every
step; they are reused for `STEP_COUNTS_TTL` seconds.

A source that cannot be read is reported by `orchestrator_metrics_source_up{source}` = 0
instead of failing the scrape.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Blueprint, Flask, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from orchestrator import waits as W
from orchestrator.db import stats
from orchestrator.runtime import Runtime

from . import context, kafka_admin

log = logging.getLogger("orchestrator.web.metrics")

bp = Blueprint("metrics", __name__)

EXTENSION = "orchestrator_metrics"
#: Histogram bucket bounds in seconds.
EVENT_TO_RUN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
QUEUE_WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
EXECUTION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
#: Seconds an observation waits before a scrape counts it (covers slow commits and clock skew).
SETTLE_SECONDS = 30.0
#: Seconds the per-workflow step counts are reused between scrapes.
STEP_COUNTS_TTL = 30.0

#: Kinds of waiting node, each reported by `orchestrator_waits_open` (0 when none is open).
WAIT_KINDS = (W.EVENT, W.APPROVAL, W.SLEEP)

HistogramQuery = Callable[..., stats.Histogram]
#: (metric name, help, buckets, query) of the three latency histograms.
HISTOGRAMS: tuple[tuple[str, str, tuple[float, ...], HistogramQuery], ...] = (
    (
        "orchestrator_event_to_run_seconds",
        "From an event's Kafka timestamp to the run it started being committed",
        EVENT_TO_RUN_BUCKETS,
        stats.event_to_run_histogram,
    ),
    (
        "orchestrator_step_queue_wait_seconds",
        "From a step being queued to a worker starting it",
        QUEUE_WAIT_BUCKETS,
        stats.queue_wait_histogram,
    ),
    (
        "orchestrator_step_execution_seconds",
        "From an attempt starting to finishing",
        EXECUTION_BUCKETS,
        stats.execution_histogram,
    ),
)


def _histogram(name: str, doc: str, data: stats.Histogram) -> HistogramMetricFamily:
    buckets = [(f"{b:g}", c) for b, c in zip(data.bounds, data.counts, strict=True)]
    buckets.append(("+Inf", data.count))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=data.sum)


class StateCollector(Collector):
    """Reads runs, steps, events and durations from the database at each scrape."""

    def __init__(
        self,
        runtime: Runtime,
        kafka_bootstrap: str | None,
        kafka_group: str,
        settle: float = SETTLE_SECONDS,
    ) -> None:
        self.runtime = runtime
        self.kafka_bootstrap = kafka_bootstrap
        self.kafka_group = kafka_group
        self.settle = timedelta(seconds=settle)
        self._lock = threading.Lock()
        self._histograms = {name: stats.Histogram.empty(bounds) for name, _, bounds, _ in HISTOGRAMS}
        self._counted_until = datetime.now(UTC) - self.settle
        self._step_counts: tuple[float, list[tuple[str, str, int]]] | None = None

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "orchestrator_metrics_source_up",
            "1 when the source could be read for this scrape",
            labels=["source"],
        )
        try:
            yield from self._database()
            up.add_metric(["database"], 1)
        except Exception as exc:  # noqa: BLE001 - report, do not fail the scrape
            log.warning("metrics: cannot read the database: %s", exc)
            up.add_metric(["database"], 0)
        if self.kafka_bootstrap:
            try:
                yield self._lag()
                up.add_metric(["kafka"], 1)
            except Exception as exc:  # noqa: BLE001
                log.warning("metrics: cannot read consumer lag: %s", exc)
                up.add_metric(["kafka"], 0)
        yield up

    def _database(self) -> list[Metric]:
        with self._lock, self.runtime.sessions() as session:
            runs = GaugeMetricFamily(
                "orchestrator_runs", "Runs by workflow and status", labels=["workflow", "status"]
            )
            for workflow, status, count in stats.runs_by_workflow_status(session):
                runs.add_metric([workflow, status], count)
            steps = GaugeMetricFamily(
                "orchestrator_steps", "Steps by workflow and status", labels=["workflow", "status"]
            )
            for workflow, status, count in self._steps(session):
                steps.add_metric([workflow, status], count)
            events = CounterMetricFamily(
                "orchestrator_events", "Recorded Kafka events by outcome", labels=["outcome"]
            )
            for outcome, count in sorted(stats.events_by_outcome(session).items()):
                events.add_metric([outcome], count)
            unsent, oldest = stats.outbox_backlog(session)
            backlog = GaugeMetricFamily(
                "orchestrator_outbox_backlog", "Emitted events not yet sent to Kafka by the relay",
                value=unsent,
            )
            lag = 0.0 if oldest is None else max(0.0, (datetime.now(UTC) - oldest).total_seconds())
            relay_lag = GaugeMetricFamily(
                "orchestrator_relay_lag_seconds",
                "Age of the oldest emitted event not yet sent to Kafka (0: none waiting)",
                value=lag,
            )
            by_kind, due = stats.open_waits(session, datetime.now(UTC))
            waits_open = GaugeMetricFamily(
                "orchestrator_waits_open", "Nodes waiting for an event, a decision or a timer, by kind",
                labels=["kind"],
            )
            for kind in WAIT_KINDS:
                waits_open.add_metric([kind], by_kind.get(kind, 0))
            timers_due = GaugeMetricFamily(
                "orchestrator_timers_due", "Open waits whose timer is due and not yet fired", value=due,
            )
            until = datetime.now(UTC) - self.settle
            added = {
                name: query(session, bounds, until=until, after=self._counted_until)
                for name, _doc, bounds, query in HISTOGRAMS
            }
            # Moved on only once every window was read: a failed scrape skips nothing.
            for name, histogram in added.items():
                self._histograms[name] = self._histograms[name] + histogram
            self._counted_until = until
            return [
                runs,
                steps,
                events,
                backlog,
                relay_lag,
                waits_open,
                timers_due,
                *(_histogram(name, doc, self._histograms[name]) for name, doc, _, _ in HISTOGRAMS),
            ]

    def _steps(self, session: Any) -> list[tuple[str, str, int]]:
        now = time.monotonic()
        if self._step_counts is None or self._step_counts[0] < now:
            self._step_counts = (now + STEP_COUNTS_TTL, stats.steps_by_workflow_status(session))
        return self._step_counts[1]

    def _lag(self) -> Metric:
        topics = {
            t.topic for w in self.runtime.registry for t in w.triggers if hasattr(t, "topic")
        }
        lag = GaugeMetricFamily(
            "orchestrator_consumer_lag",
            "Messages not yet consumed by the trigger consumer group (end offset - committed)",
            labels=["topic", "partition"],
        )
        settings = self.runtime.settings.with_(
            kafka_bootstrap=self.kafka_bootstrap, kafka_group=self.kafka_group
        )
        for p in kafka_admin.consumer_lag(settings, topics):
            lag.add_metric([p.topic, str(p.partition)], p.lag)
        return lag


def init_app(app: Flask) -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        StateCollector(
            context.runtime_of(app),
            app.config.get("KAFKA_BOOTSTRAP"),
            app.config["KAFKA_GROUP"],
            settle=app.config.get("METRICS_SETTLE_SECONDS", SETTLE_SECONDS),
        )
    )
    app.extensions[EXTENSION] = registry


@bp.get("/metrics")
def metrics() -> Any:
    """Prometheus text format: runs, steps, events, consumer lag and latency histograms."""
    registry: CollectorRegistry = current_app.extensions[EXTENSION]
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
