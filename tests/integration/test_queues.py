"""The dashboard and `GET /api/queues` warn about a queue that no live worker serves.

Real Celery workers on Redis answer the broadcast; the answer is not cached in these tests.
"""

from __future__ import annotations

import pytest

from orchestrator.runtime import Runtime
from tests.webtools import assert_documented, make_app

WORKFLOWS = ("tests.flows", "tests.queue_flows")
SHARDS = "sharded.shard-0,sharded.shard-1,sharded.shard-2"


@pytest.fixture
def settings(settings):
    return settings.with_(workflows=WORKFLOWS)


@pytest.fixture
def client(runtime):
    return make_app(runtime, QUEUES_CACHE_SECONDS=0).test_client()


def queues(client) -> dict:
    response = client.get("/api/queues")
    assert_documented(response, "/api/queues")
    return response.get_json()


def warning_on(client, page: str) -> str:
    html = client.get(page).get_data(as_text=True)
    start = html.find('data-queues="unserved"')
    return html[start:html.find("</section>", start)] if start >= 0 else ""


def test_without_workers_every_needed_queue_is_reported_unserved(client):
    report = queues(client)
    assert report["status"] == "unserved" and report["workers"] == []
    by_name = {q["name"]: q for q in report["queues"]}
    assert set(by_name) == {"orchestrator", "payments", *SHARDS.split(",")}
    assert by_name["payments"] == {"name": "payments", "steps": ["billing-run.charge"], "workers": [],
                                   "served": False}
    for page in ("/", "/workflows"):
        warning = warning_on(client, page)
        assert "No live worker serves 5 queues" in warning
        assert "billing-run.charge" in warning


def test_the_warning_names_only_the_queues_no_live_worker_serves(client, start_worker):
    general = start_worker(concurrency=1, queues="orchestrator")
    report = queues(client)
    assert report["status"] == "unserved"
    served = {q["name"]: q["workers"] for q in report["queues"] if q["served"]}
    assert served == {"orchestrator": [general.name]}
    for page in ("/", "/workflows"):
        warning = warning_on(client, page)
        assert 'data-queue="payments"' in warning and 'data-queue="sharded.shard-1"' in warning
        assert 'data-queue="orchestrator"' not in warning
        assert f"orchestrator worker --queues payments,{SHARDS}" in warning

    other = start_worker(concurrency=1, queues=f"payments,{SHARDS}")
    report = queues(client)
    assert report["status"] == "ok" and sorted(report["workers"]) == sorted([general.name, other.name])
    assert warning_on(client, "/") == "" and warning_on(client, "/workflows") == ""


def test_a_broker_that_cannot_broadcast_gives_no_false_warning(settings, tmp_path, clean_state):
    runtime = Runtime(settings.with_(broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}"))
    try:
        client = make_app(runtime, QUEUES_CACHE_SECONDS=0).test_client()
        report = queues(client)
        assert report["status"] == "unknown" and "cannot broadcast" in report["error"]
        html = client.get("/").get_data(as_text=True)
        assert 'data-queues="unknown"' in html and 'data-queues="unserved"' not in html
    finally:
        runtime.close()
