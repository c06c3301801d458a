"""Event formats through a real Tansu broker and a real `orchestrator consume` process:
CloudEvents in binary and structured mode, text values, `$key` and `$headers` matches, and
`orchestrator publish --cloudevent/--header`; runs and rejections land in PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from sqlalchemy import text

from tests.fixtures.config import KAFKA_TEST_WORKFLOWS, ROOT, kafka_env
from tests.fixtures.waiting import count, wait_for
from tests.webtools import AUTH, make_app

CE = [("ce_specversion", b"1.0"), ("ce_source", b"/shop"), ("ce_type", b"com.shop.order.created")]


@pytest.fixture
def settings(kafka_settings):
    return kafka_settings.with_(workflows=(*KAFKA_TEST_WORKFLOWS, "tests.format_flows"))


def runs_of(runtime, workflow: str) -> list[dict]:
    with runtime.db.connect() as conn:
        return [data for (data,) in conn.execute(text(
            "SELECT r.input FROM runs r JOIN events e ON e.id = r.event_id "
            "WHERE r.workflow = :w ORDER BY e.topic, e.offset"), {"w": workflow})]


def events_of(runtime, topic: str) -> list[tuple]:
    with runtime.db.connect() as conn:
        return [tuple(row) for row in conn.execute(text(
            'SELECT id, outcome, reason, payload, raw FROM events WHERE topic = :t ORDER BY "offset"'),
            {"t": topic})]


def test_cloudevents_text_and_key_header_matches_start_runs_and_bad_messages_are_rejected(
    runtime, settings, kafka, topic_prefix, redis_url, start_consumer
):
    cloud, keyed, notes = (f"{topic_prefix}{name}" for name in ("cloud", "keyed", "notes"))
    for name in (cloud, keyed, notes):
        kafka.create_topic(name)
    start_consumer()

    kafka.publish(cloud, {"total": 150}, headers=[*CE, ("ce_id", b"b-1"), ("content-type", b"application/json")])
    structured = {"specversion": "1.0", "id": "s-1", "source": "/web", "type": "com.shop.order.created",
                  "subject": "order-2", "time": "2026-12-04T10:00:00Z", "data": {"total": 200}}
    kafka.publish(cloud, structured, headers=[("content-type", b"application/cloudevents+json")])
    kafka.publish(cloud, {"total": 999}, headers=CE)  # no ce_id: not a CloudEvent
    kafka.publish(cloud, {"total": 5}, headers=[*CE, ("ce_id", b"b-2")])  # too small: ignored
    kafka.publish(keyed, {"order": {"id": 1}}, key="vip", headers=[("region", b"eu")])
    kafka.publish(keyed, {"order": {"id": 2}}, key="regular", headers=[("region", b"eu")])
    kafka.publish(keyed, {"order": {"id": 3}}, key="vip", headers=[("region", b"\xffeu")])
    kafka.publish(notes, b"deploy finished")
    kafka.publish(notes, b"caf\xe9")
    kafka.flush()
    published = subprocess.run(
        [sys.executable, "-m", "orchestrator", "publish", cloud, json.dumps({"total": 500}),
         "--cloudevent", "com.shop.order.created", "--source", "/cli", "--header", "tenant=acme",
         "--key", "k-9"],
        env=kafka_env(settings, topic_prefix, redis_url), cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert published.returncode == 0, published.stderr
    wait_for(lambda: count(runtime, "SELECT count(*) FROM events") >= 10, 60, 0.2, "ten events recorded")

    big = runs_of(runtime, "ce-big-orders")
    assert [(r["id"], r["source"], r["data"]) for r in big[:2]] == [
        ("b-1", "/shop", {"total": 150}), ("s-1", "/web", {"total": 200})]
    assert big[0]["time"] is None and big[0]["datacontenttype"] == "application/json"
    assert (big[1]["subject"], big[1]["time"]) == ("order-2", "2026-12-04T10:00:00Z")
    from_cli = big[2]
    assert (from_cli["source"], from_cli["type"], from_cli["data"]) == ("/cli", "com.shop.order.created", {"total": 500})
    assert from_cli["id"] and from_cli["time"].endswith("Z") and from_cli["specversion"] == "1.0"
    assert len(big) == 3

    cloud_events = events_of(runtime, cloud)
    assert [o for _, o, *_ in cloud_events] == ["matched", "matched", "rejected", "ignored", "matched"]
    assert cloud_events[2][2] == ("not a CloudEvent: no ce_id header (binary mode needs ce_specversion, "
                                  "ce_id, ce_source, ce_type)")
    assert cloud_events[0][3] == {"total": 150} and bytes(cloud_events[0][4]) == b'{"total": 150}'
    with runtime.db.connect() as conn:
        key, headers = conn.execute(text("SELECT key, headers FROM events WHERE id = :i"),
                                    {"i": cloud_events[4][0]}).one()
    assert key == "k-9" and {"key": "tenant", "value": "acme"} in headers
    assert {h["key"] for h in headers} >= {"ce_specversion", "ce_id", "ce_type", "ce_source", "ce_time"}

    assert runs_of(runtime, "vip-orders") == [{"order": 1, "customer": "vip", "region": "eu"}]
    keyed_events = events_of(runtime, keyed)
    assert [o for _, o, *_ in keyed_events] == ["matched", "ignored", "rejected"]
    assert keyed_events[2][2] == ("workflow 'vip-orders': match: header 'region' is not UTF-8 "
                                  "(invalid byte at position 0)")

    assert runs_of(runtime, "text-notes") == [{"text": "deploy finished"}]
    note_events = events_of(runtime, notes)
    assert [(o, r, p) for _, o, r, p, _ in note_events] == [
        ("matched", None, None), ("rejected", "not UTF-8 text: invalid byte at position 3", None)]

    # The dashboard shows an event that is not JSON (payload null) with its raw text.
    client = make_app(runtime).test_client()
    page = client.get(f"/events/{note_events[0][0]}", headers=AUTH)
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Not JSON." in html and "deploy finished" in html
    api = client.get(f"/api/events/{note_events[1][0]}", headers=AUTH).get_json()
    assert api["payload"] is None and api["outcome"] == "rejected"
