"""Kafka connection security, for real: TLS through a real terminator, SASL against Tansu.

TLS: Tansu 0.6 cannot serve TLS, so `socat` (OpenSSL) terminates it in front of a Tansu
that advertises the terminator's port (tests/tls.py); the CA and the certificates are made
at run time. A real `orchestrator consume` process, `orchestrator publish`, the dead-letter
producer, the admin client and /healthz all go through it.

SASL: Tansu's `--authentication` offers SCRAM-SHA-256 and SCRAM-SHA-512, but no user can be
created on its in-memory storage (and no other storage keeps one), so what is tested for
real is the refusals: each is one line naming the setting, without the password.
"""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from orchestrator.errors import ConfigurationError
from orchestrator.kafka import (
    answers_kafka,
    check_connection,
    create_admin,
    create_consumer,
    ensure_topics,
)
from orchestrator.kafka_security import tls_context
from orchestrator.runtime import Runtime
from orchestrator.settings import Settings
from orchestrator.tansu import TansuBroker, free_port
from tests.fixtures.config import ROOT, kafka_env, make_kafka_settings
from tests.fixtures.kafka import read_topic
from tests.fixtures.waiting import count, wait_for
from tests.tls import NO_SOCAT, TlsTerminator, issue, make_authority, socat_path
from tests.webtools import make_app

PASSWORD = "sasl-pass-9c1e55"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory):
    """A Tansu reached only through TLS; a second terminator whose certificate names another
    host; a CA that signed neither."""
    if socat_path() is None:
        pytest.skip(NO_SOCAT)
    folder = tmp_path_factory.mktemp("kafka-tls")
    authority = make_authority(folder, "test-ca")
    stranger = make_authority(folder, "stranger-ca")
    cert, key = issue(authority, folder, "broker", dns=["localhost"], ips=["127.0.0.1"])
    other_cert, other_key = issue(authority, folder, "elsewhere", dns=["kafka.elsewhere.example"])
    port = free_port()
    broker = TansuBroker(advertised=f"127.0.0.1:{port}", log_path=folder / "tansu.log").start()
    terminator = TlsTerminator(broker.port, cert, key, folder / "socat.log", port=port).start()
    misnamed = TlsTerminator(broker.port, other_cert, other_key, folder / "socat-misnamed.log").start()
    yield SimpleNamespace(address=terminator.address, misnamed=misnamed.address, plain=broker.bootstrap,
                          cafile=str(authority.cafile), stranger=str(stranger.cafile))
    misnamed.stop()
    terminator.stop()
    broker.stop()


def tls_env(cafile: str, **extra: str) -> dict[str, str]:
    return {"ORCHESTRATOR_KAFKA_SECURITY_PROTOCOL": "SSL", "ORCHESTRATOR_KAFKA_SSL_CAFILE": cafile, **extra}


@pytest.fixture
def settings(pg_url, redis_url, tls, topic_prefix) -> Settings:
    """The consumer tests' settings, on the TLS address."""
    return make_kafka_settings(pg_url, redis_url, tls.address, topic_prefix).with_(
        kafka_security_protocol="SSL", kafka_ssl_cafile=tls.cafile)


def orchestrator(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def read_all(settings: Settings, topic: str, timeout: float = 20.0) -> list:
    """Every message of `topic`, read over the settings' connection (the project's factory)."""
    return read_topic(create_consumer(settings, group_id=None), topic, timeout)


def healthz(settings: Settings) -> tuple[int, dict, str]:
    """/healthz of a web process with `settings`: status, JSON, raw body."""
    rt = Runtime(settings)
    try:
        answer = make_app(rt).test_client().get("/healthz")
        return answer.status_code, answer.get_json(), answer.get_data(as_text=True)
    finally:
        rt.close()


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, done.stderr
    return errors[0]


# -- TLS ---------------------------------------------------------------------------------------


def test_the_consumer_its_dead_letters_and_publish_work_over_tls(
    runtime, settings, tls, topic_prefix, redis_url, start_consumer
):
    bad = f"{topic_prefix}bad"
    admin = create_admin(settings)
    try:
        ensure_topics(admin, [bad], partitions=1)
    finally:
        admin.close()
    env = kafka_env(settings, topic_prefix, redis_url, **tls_env(tls.cafile))
    consumer = start_consumer(**tls_env(tls.cafile))  # joins its group over TLS (partitions assigned)

    good = orchestrator(["publish", bad, json.dumps({"n": 7})], env)
    assert good.returncode == 0 and f"published to {bad} partition 0 offset 0" in good.stdout, good.stderr
    rejected = orchestrator(["publish", bad, "not json", "--raw"], env)
    assert rejected.returncode == 0 and "offset 1" in rejected.stdout, rejected.stderr

    wait_for(lambda: count(runtime, "SELECT count(*) FROM events") == 2, 60, 0.2, "both events recorded")
    assert count(runtime, "SELECT count(*) FROM runs WHERE workflow = 'strict'") == 1
    assert count(runtime, "SELECT count(*) FROM events WHERE outcome = 'rejected'") == 1
    letters = wait_for(lambda: read_all(settings, bad + ".dlq"), 30, 0.5, "the rejected event in the .dlq topic")
    assert [letter.value for letter in letters] == [b"not json"]
    assert consumer.process.poll() is None
    assert tls.address in consumer.output() and "unavailable" not in consumer.output()


def test_healthz_reaches_kafka_over_tls_and_names_a_wrong_ca(runtime, settings, tls):
    status, answer, _ = healthz(settings)
    assert status == 200, answer
    assert answer["checks"]["kafka"]["ok"] is True and answer["checks"]["kafka"]["detail"].endswith("broker(s)")

    status, answer, _ = healthz(settings.with_(kafka_ssl_cafile=tls.stranger))
    assert status == 503
    detail = answer["checks"]["kafka"]["detail"]
    assert f"ORCHESTRATOR_KAFKA_SSL_CAFILE={tls.stranger}: TLS handshake with {tls.address} failed: " \
           "certificate verify failed" in detail, detail


def test_a_wrong_ca_stops_consume_publish_relay_and_web_with_one_line_naming_it(settings, tls, topic_prefix, redis_url):
    env = kafka_env(settings, topic_prefix, redis_url, **tls_env(tls.stranger))
    expected = (f"ORCHESTRATOR_KAFKA_SSL_CAFILE={tls.stranger}: TLS handshake with {tls.address} failed: "
                "certificate verify failed: unable to get local issuer certificate")
    for command in (["consume"], ["publish", f"{topic_prefix}bad", "{}"], ["relay"],
                    ["web", "--port", str(free_port())]):
        assert expected in one_line_error(orchestrator(command, env)), command


def test_the_certificate_must_name_the_host_unless_hostname_checks_are_off(settings, tls):
    misnamed = settings.with_(kafka_bootstrap=tls.misnamed)
    with pytest.raises(ConfigurationError) as raised:
        check_connection(misnamed)
    assert str(raised.value).startswith(
        f"ORCHESTRATOR_KAFKA_SSL_CHECK_HOSTNAME=true: TLS handshake with {tls.misnamed} failed: "
        "certificate verify failed: IP address mismatch")
    host, port = tls.misnamed.rsplit(":", 1)
    assert answers_kafka(host, int(port), tls=tls_context(misnamed)) is False

    unchecked = misnamed.with_(kafka_ssl_check_hostname=False)
    assert check_connection(unchecked) is True
    assert answers_kafka(host, int(port), tls=tls_context(unchecked)) is True
    admin = create_admin(unchecked)  # bootstraps through the misnamed terminator
    try:
        assert admin.describe_cluster()["brokers"]
    finally:
        admin.close()


def test_a_tls_client_on_a_plaintext_listener_and_a_plaintext_client_on_tls_are_told_apart(settings, tls):
    with pytest.raises(ConfigurationError, match="no TLS answer in time .is this a plaintext listener"):
        check_connection(settings.with_(kafka_bootstrap=tls.plain), timeout=1.0)
    plain = Settings(kafka_bootstrap=tls.address)
    assert check_connection(plain, timeout=1.0) is False  # no Kafka answer: waited for as an outage


# -- SASL (Tansu --authentication) -------------------------------------------------------------


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory):
    broker = TansuBroker(authentication=True, log_path=tmp_path_factory.mktemp("tansu-sasl") / "tansu.log")
    yield broker.start()
    broker.stop()


def sasl_env(mechanism: str) -> dict[str, str]:
    return {"ORCHESTRATOR_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "ORCHESTRATOR_KAFKA_SASL_MECHANISM": mechanism,
            "ORCHESTRATOR_KAFKA_SASL_USERNAME": "alice", "ORCHESTRATOR_KAFKA_SASL_PASSWORD": PASSWORD}


@pytest.fixture
def sasl_settings(pg_url, redis_url, sasl_broker, topic_prefix) -> Settings:
    return make_kafka_settings(pg_url, redis_url, sasl_broker.bootstrap, topic_prefix)


def test_a_refused_login_stops_consume_and_publish_with_one_line_and_no_password(
    sasl_settings, sasl_broker, topic_prefix, redis_url
):
    env = kafka_env(sasl_settings, topic_prefix, redis_url, ORCHESTRATOR_LOG_LEVEL="DEBUG",
                    **sasl_env("SCRAM-SHA-512"))
    for command in (["consume"], ["publish", f"{topic_prefix}orders", "{}"]):
        done = orchestrator(command, env)
        line = one_line_error(done)
        assert ("ORCHESTRATOR_KAFKA_SASL_USERNAME=alice: the broker refused SASL authentication "
                "(SCRAM-SHA-512): unknown-user") in line, line
        assert PASSWORD not in done.stdout + done.stderr


def test_a_mechanism_the_broker_does_not_offer_and_a_missing_login_are_named(sasl_settings, sasl_broker):
    plain = sasl_settings.with_(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="PLAIN",
                                kafka_sasl_username="alice", kafka_sasl_password=PASSWORD)
    with pytest.raises(ConfigurationError) as raised:
        check_connection(plain)
    assert str(raised.value) == (f"ORCHESTRATOR_KAFKA_SASL_MECHANISM=PLAIN: the broker at {sasl_broker.bootstrap} "
                                 "closed the connection at the SASL handshake: it does not offer PLAIN")
    with pytest.raises(ConfigurationError, match="ORCHESTRATOR_KAFKA_SECURITY_PROTOCOL=PLAINTEXT: the broker at "
                                                 ".* requires SASL authentication"):
        check_connection(sasl_settings)
    with pytest.raises(ConfigurationError, match="refused SASL authentication .SCRAM-SHA-256.: unknown-user"):
        check_connection(plain.with_(kafka_sasl_mechanism="SCRAM-SHA-256"))


def test_healthz_names_a_refused_login_without_the_password(runtime, sasl_settings):
    status, answer, body = healthz(sasl_settings.with_(
        kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="alice", kafka_sasl_password=PASSWORD))
    assert status == 503
    detail = answer["checks"]["kafka"]["detail"]
    assert "refused SASL authentication (SCRAM-SHA-512): unknown-user" in detail, detail
    assert PASSWORD not in body
