"""Secrets never leak: the database password, the broker password, the API token, the
session key and the Kafka SASL password appear in no log, no CLI output, no page and no API
answer.

Real processes run with secrets in their settings: a worker, a consumer and `orchestrator
web` (waitress) on PostgreSQL and Redis URLs that carry passwords (a Redis ACL user made for
the test; PostgreSQL trusts loopback, so its password is carried but never checked). The test
drives them (a login, runs started by the API and by Kafka events, a rejected event, a wrong
token), reads every dashboard page and API answer, runs the CLI, then greps it all.
"""

from __future__ import annotations

import base64
import re
import subprocess
import sys
import uuid
import zlib
from collections.abc import Iterator
from urllib.parse import quote

import pytest
import redis
import requests
from sqlalchemy.engine import make_url

from orchestrator.kafka import _common
from orchestrator.runtime import Runtime
from orchestrator.settings import Settings
from orchestrator.tansu import TansuBroker, free_port
from tests.fixtures.config import KAFKA_TEST_WORKFLOWS, ROOT, kafka_env
from tests.fixtures.waiting import count, wait_for
from tests.security.conftest import SECURITY_WORKFLOWS
from tests.webtools import add_event, make_app

SUFFIX = uuid.uuid4().hex[:12]
SECRETS = {
    "database password": f"dbpass{SUFFIX}",
    "broker password": f"brokerpass{SUFFIX}",
    "API token": f"apitoken{SUFFIX}",
    "session key": f"sessionkey{SUFFIX}",
    "Kafka password": f"kafkapass{SUFFIX}",
}


def leaks(text: str) -> list[str]:
    """The secrets `text` shows, as they are or URL-quoted."""
    return [name for name, value in SECRETS.items() if value in text or quote(value) in text]


@pytest.fixture
def broker_user(redis_url: str) -> Iterator[str]:
    """A Redis ACL user whose password is the broker password; removed afterwards."""
    admin = redis.Redis.from_url(redis_url)
    name = f"orchestrator-test-{SUFFIX}"
    admin.acl_setuser(name, enabled=True, passwords=[f"+{SECRETS['broker password']}"],
                      keys=["*"], channels=["*"], commands=["+@all"])
    yield name
    admin.acl_deluser(name)


@pytest.fixture
def settings(kafka_settings: Settings, broker_user: str, redis_url: str) -> Settings:
    database = make_url(kafka_settings.database_url).set(password=SECRETS["database password"])
    broker = redis_url.replace("redis://", f"redis://{broker_user}:{SECRETS['broker password']}@", 1)
    return kafka_settings.with_(
        database_url=database.render_as_string(hide_password=False),
        broker_url=broker,
        workflows=tuple(dict.fromkeys((*KAFKA_TEST_WORKFLOWS, *SECURITY_WORKFLOWS))),
    )


def web_env(settings: Settings, prefix: str, redis_url: str) -> dict[str, str]:
    return kafka_env(settings, prefix, redis_url, ORCHESTRATOR_API_TOKEN=SECRETS["API token"],
                     ORCHESTRATOR_SECRET_KEY=SECRETS["session key"])


def session_cookie(value: str) -> str:
    """The decoded payload of Flask's signed session cookie (possibly compressed)."""
    payload = value.split(".")[1] if value.startswith(".") else value.split(".")[0]
    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    return (zlib.decompress(raw) if value.startswith(".") else raw).decode()


def test_no_secret_in_logs_cli_output_pages_or_api_answers(
    runtime, settings, kafka, topic_prefix, redis_url, broker_user, start_worker, start_consumer, wait_for_run,
    tmp_path,
):
    assert settings.database_url.count(SECRETS["database password"]) == 1
    kafka.create_topic(f"{topic_prefix}orders", partitions=1)
    kafka.create_topic(f"{topic_prefix}bad", partitions=1)
    worker = start_worker(concurrency=1)
    consumer = start_consumer()
    port = free_port()
    web_log = tmp_path / "web.log"
    env = web_env(settings, topic_prefix, redis_url)
    with web_log.open("wb") as out:
        web = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "web", "--host", "127.0.0.1", "--port", str(port)],
            env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    seen: list[tuple[str, str]] = []  # (where, text) of everything a user or an operator sees
    try:
        wait_for(lambda: b"Serving on" in web_log.read_bytes() or web.poll() is not None, 30, 0.1,
                 "waitress to listen")
        assert web.poll() is None, web_log.read_text()
        browser = requests.Session()
        token = SECRETS["API token"]

        def see(response: requests.Response, where: str) -> requests.Response:
            seen.append((where, response.text))
            seen.append((f"{where} headers", "\n".join(f"{k}: {v}" for k, v in response.headers.items())))
            policy = response.headers.get("Content-Security-Policy", "")
            assert "script-src 'self'" in policy and "unsafe-inline" not in policy, where
            assert response.headers.get("X-Content-Type-Options") == "nosniff", where
            return response

        # Work for every process: a login, an API run, a wrong token, a matched and a bad event.
        login_page = see(browser.get(f"{base}/login", timeout=10), "/login")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', login_page.text).group(1)
        see(browser.post(f"{base}/login", data={"token": token, "csrf_token": csrf}, timeout=10), "POST /login")
        cookie = browser.cookies.get("orchestrator_session")
        assert cookie and not leaks(session_cookie(cookie)) and not leaks(cookie)
        started = see(requests.post(f"{base}/api/workflows/hostile-text/runs", json={"input": {"n": 1}},
                                    headers={"Authorization": f"Bearer {token}"}, timeout=10), "POST run")
        assert started.status_code == 201, started.text
        refused = see(requests.post(f"{base}/api/workflows/diamond/runs", json={},
                                    headers={"Authorization": f"Bearer {token[:-1]}"}, timeout=10), "wrong token")
        assert refused.status_code == 401
        kafka.publish(f"{topic_prefix}orders", {"type": "order.created", "order": {"id": 5, "total": 500}})
        kafka.publish(f"{topic_prefix}bad", b"not json")
        kafka.flush()
        wait_for(lambda: count(runtime, "SELECT count(*) FROM runs") == 3, 60, 0.2, "three runs")
        with runtime.db.connect() as conn:
            from sqlalchemy import text

            run_ids = [str(r) for (r,) in conn.execute(text("SELECT id FROM runs"))]
            event_ids = [e for (e,) in conn.execute(text("SELECT id FROM events"))]
        for run_id in run_ids:
            wait_for_run(run_id, timeout=60)
        event_ids.append(add_event(runtime, {"type": "user.signed_up", "user": {"email": "a@b.c"}}))

        # Every page and API answer, as a logged-in user sees them.
        app = make_app(runtime)
        adapter = app.url_map.bind("localhost")
        values = {"run_id": run_ids, "event_id": event_ids, "name": ["hostile-text", "order-fulfilment"],
                  "filename": ["app.js", "run.js", "runs.js", "app.css"]}
        mapped = runtime.engine.start_run("w-squares", {"items": [1, 2]})  # for a map's items
        for rule in app.url_map.iter_rules():
            if "GET" not in rule.methods:
                continue
            if "step" in rule.arguments:
                choices = [{"run_id": mapped, "step": "square"}]
            else:
                choices = [{}] if not rule.arguments else [{rule.arguments.copy().pop(): v}
                                                           for v in values[next(iter(rule.arguments))]]
            for args in choices:
                path = adapter.build(rule.endpoint, args)
                response = see(browser.get(f"{base}{path}", timeout=20), path)
                assert response.status_code in (200, 503), (path, response.status_code, response.text[:300])
        see(browser.get(f"{base}/no-such-page", timeout=10), "404 page")
        see(requests.post(f"{base}/api/runs/cancel", data=b"{not json",
                          headers={"Authorization": f"Bearer {token}"}, timeout=10), "400 answer")

        # The CLI an operator runs with the same environment, including failures.
        cli_env = {**env, "ORCHESTRATOR_LOG_LEVEL": "DEBUG"}
        commands = [["db", "upgrade"], ["workflows"], ["runs", "--json"], ["run", run_ids[0]], ["events"],
                    ["trigger", "diamond", "--input", "{}"], ["replay", str(event_ids[-1])]]
        for command in commands:
            done = subprocess.run([sys.executable, "-m", "orchestrator", *command], env=cli_env, cwd=ROOT,
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, (command, done.stderr[-2000:])
            seen.append((f"orchestrator {' '.join(command)}", done.stdout + done.stderr))
        unreachable = {
            **cli_env,
            "ORCHESTRATOR_DATABASE_URL": make_url(settings.database_url).set(port=free_port())
            .render_as_string(hide_password=False),
        }
        for command in (["runs"], ["db", "upgrade"], ["worker", "--concurrency", "1"], ["consume"]):
            failed = subprocess.run([sys.executable, "-m", "orchestrator", *command], env=unreachable,
                                    cwd=ROOT, capture_output=True, text=True, timeout=60)
            assert failed.returncode != 0, command
            seen.append((f"orchestrator {' '.join(command)} without a database", failed.stdout + failed.stderr))
    finally:
        web.terminate()
        web.wait(15)
    consumer.stop()
    seen += [("web log", web_log.read_text(errors="replace")), ("worker log", worker.output()),
             ("consumer log", consumer.output())]

    assert len(seen) > 40
    shown = dict(seen)
    assert f"{broker_user}:**@" in shown["worker log"]  # the secret-bearing URLs were in use
    assert "postgres:***@127.0.0.1" in shown["orchestrator db upgrade"]
    leaked = [(where, leaks(text)) for where, text in seen if leaks(text)]
    assert not leaked, leaked


def test_probes_and_error_pages_of_unreachable_services_hide_their_passwords(runtime, settings):
    down_db = make_url(settings.database_url).set(port=free_port()).render_as_string(hide_password=False)
    down_broker = re.sub(r"@127\.0\.0\.1:\d+", f"@127.0.0.1:{free_port()}", settings.broker_url)
    for changes in ({"database_url": down_db}, {"broker_url": down_broker}):
        broken = Runtime(settings.with_(**changes))
        client = make_app(broken, API_TOKEN=SECRETS["API token"]).test_client()
        answers = [client.get("/healthz"), client.get("/runs"), client.get("/api/runs"), client.get("/")]
        if "broker_url" in changes:
            answers.append(client.post("/api/workflows/diamond/runs", json={"input": {}},
                                       headers={"Authorization": f"Bearer {SECRETS['API token']}"}))
        assert answers[0].status_code == 503
        for response in answers:
            assert not leaks(response.get_data(as_text=True)), response.get_data(as_text=True)
        broken.close()


def test_settings_and_runtime_never_show_their_secrets(settings):
    full = settings.with_(api_token=SECRETS["API token"], secret_key=SECRETS["session key"],
                          kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="SCRAM-SHA-512",
                          kafka_sasl_username="alice", kafka_sasl_password=SECRETS["Kafka password"],
                          extra={"ORCHESTRATOR_API_TOKEN": SECRETS["API token"],
                                 "ORCHESTRATOR_KAFKA_SASL_PASSWORD": SECRETS["Kafka password"]})
    # kafka-python logs its clients' configuration (the factory's options) at DEBUG level.
    for shown in (repr(full), str(full), repr(Runtime(full)), repr(_common(full)), str(_common(full))):
        assert not leaks(shown), shown
    assert ":***@127.0.0.1" in repr(full)  # still says where it connects, as which user


def test_a_kafka_login_the_broker_refuses_never_shows_the_password(runtime, settings, topic_prefix, redis_url,
                                                                    tmp_path):
    """A real broker that wants a SASL login (Tansu --authentication) refuses ours: /healthz,
    the pages and `orchestrator consume`/`publish` at DEBUG level say so without the password."""
    sasl = {"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_mechanism": "SCRAM-SHA-512",
            "kafka_sasl_username": "alice", "kafka_sasl_password": SECRETS["Kafka password"]}
    with TansuBroker(authentication=True, log_path=tmp_path / "tansu.log") as broker:
        refused = Runtime(settings.with_(kafka_bootstrap=broker.bootstrap, **sasl))
        client = make_app(refused, API_TOKEN=SECRETS["API token"]).test_client()
        answers = [client.get(path) for path in ("/healthz", "/metrics", "/runs", "/api/runs", "/")]
        refused.close()
        assert answers[0].status_code == 503
        assert "refused SASL authentication" in answers[0].get_json()["checks"]["kafka"]["detail"]
        for response in answers:
            assert not leaks(response.get_data(as_text=True)), response.get_data(as_text=True)
        env = kafka_env(settings.with_(kafka_bootstrap=broker.bootstrap), topic_prefix, redis_url,
                        ORCHESTRATOR_LOG_LEVEL="DEBUG", ORCHESTRATOR_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
                        ORCHESTRATOR_KAFKA_SASL_MECHANISM="SCRAM-SHA-512", ORCHESTRATOR_KAFKA_SASL_USERNAME="alice",
                        ORCHESTRATOR_KAFKA_SASL_PASSWORD=SECRETS["Kafka password"])
        for command in (["consume"], ["publish", f"{topic_prefix}orders", "{}"]):
            done = subprocess.run([sys.executable, "-m", "orchestrator", *command], env=env, cwd=ROOT,
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 1 and "refused SASL authentication" in done.stderr, done.stderr
            assert not leaks(done.stdout + done.stderr), done.stdout + done.stderr
