"""Kafka connection security settings: read from the environment, checked with one clear line
naming the setting, and handed to kafka-python as its own options by the one factory.

Real TLS and SASL brokers are in tests/integration/test_kafka_security.py; here the options
are checked against kafka-python's own consumers of them (its TLS context builder and its
SASL mechanisms), which need no broker.
"""

from __future__ import annotations

import logging
import re
import ssl

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.net.sasl.plain import SaslMechanismPlain
from kafka.net.sasl.scram import SaslMechanismScram
from kafka.net.transport import KafkaSSLTransport

from orchestrator import kafka, kafka_security
from orchestrator.errors import ConfigurationError
from orchestrator.settings import Settings
from tests.fixtures.config import ROOT
from tests.tls import issue, make_authority

PASSWORD = "kafka-pass-4f7a91"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    authority = make_authority(folder, "unit-ca")
    cert, key = issue(authority, folder, "client", dns=["client.example"])
    return {"ca": str(authority.cafile), "cert": str(cert), "key": str(key), "folder": folder}


def test_security_settings_come_from_the_environment_with_plaintext_and_hostname_checks_by_default():
    default = Settings.from_env({})
    assert default.kafka_security_protocol == "PLAINTEXT"
    assert default.kafka_sasl_mechanism is None and default.kafka_sasl_password is None
    assert default.kafka_ssl_check_hostname is True
    read = Settings.from_env({
        "ORCHESTRATOR_KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
        "ORCHESTRATOR_KAFKA_SASL_MECHANISM": "scram-sha-512",
        "ORCHESTRATOR_KAFKA_SASL_USERNAME": "alice",
        "ORCHESTRATOR_KAFKA_SASL_PASSWORD": PASSWORD,
        "ORCHESTRATOR_KAFKA_SSL_CAFILE": "/etc/kafka/ca.pem",
        "ORCHESTRATOR_KAFKA_SSL_CERTFILE": "/etc/kafka/client.pem",
        "ORCHESTRATOR_KAFKA_SSL_KEYFILE": "/etc/kafka/client.key",
        "ORCHESTRATOR_KAFKA_SSL_CHECK_HOSTNAME": "false",
    })
    assert (read.kafka_security_protocol, read.kafka_sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
    assert (read.kafka_sasl_username, read.kafka_sasl_password) == ("alice", PASSWORD)
    assert (read.kafka_ssl_cafile, read.kafka_ssl_certfile, read.kafka_ssl_keyfile) == (
        "/etc/kafka/ca.pem", "/etc/kafka/client.pem", "/etc/kafka/client.key")
    assert read.kafka_ssl_check_hostname is False
    assert PASSWORD not in repr(read) and "alice" in repr(read)
    with pytest.raises(ConfigurationError, match="ORCHESTRATOR_KAFKA_SSL_CHECK_HOSTNAME='maybe'"):
        Settings.from_env({"ORCHESTRATOR_KAFKA_SSL_CHECK_HOSTNAME": "maybe"})


def _sasl(protocol: str = "SASL_PLAINTEXT", **changes: object) -> Settings:
    base = Settings(kafka_bootstrap="127.0.0.1:9092", kafka_security_protocol=protocol,
                    kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username="alice",
                    kafka_sasl_password=PASSWORD)
    return base.with_(**changes)


@pytest.mark.parametrize(("changes", "message"), [
    ({"kafka_security_protocol": "TLS"},
     "ORCHESTRATOR_KAFKA_SECURITY_PROTOCOL='TLS' is not one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"),
    ({"kafka_sasl_mechanism": "GSSAPI"},
     "ORCHESTRATOR_KAFKA_SASL_MECHANISM='GSSAPI' is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"),
    ({"kafka_sasl_mechanism": None},
     "ORCHESTRATOR_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT needs ORCHESTRATOR_KAFKA_SASL_MECHANISM"),
    ({"kafka_sasl_username": None}, "needs ORCHESTRATOR_KAFKA_SASL_USERNAME"),
    ({"kafka_sasl_password": None}, "needs ORCHESTRATOR_KAFKA_SASL_PASSWORD"),
    ({"kafka_security_protocol": "PLAINTEXT", "kafka_sasl_username": None, "kafka_sasl_password": None},
     "ORCHESTRATOR_KAFKA_SASL_MECHANISM is set but ORCHESTRATOR_KAFKA_SECURITY_PROTOCOL=PLAINTEXT does not use SASL"),
    ({"kafka_security_protocol": "SSL", "kafka_sasl_mechanism": None},
     "ORCHESTRATOR_KAFKA_SASL_USERNAME is set but ORCHESTRATOR_KAFKA_SECURITY_PROTOCOL=SSL does not use SASL"),
    ({"kafka_ssl_cafile": "/etc/kafka/ca.pem"},
     "ORCHESTRATOR_KAFKA_SSL_CAFILE is set but ORCHESTRATOR_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT does not use TLS"),
    ({"kafka_security_protocol": "SASL_SSL", "kafka_ssl_cafile": "/no/such/ca.pem"},
     "ORCHESTRATOR_KAFKA_SSL_CAFILE=/no/such/ca.pem: no such file"),
    ({"kafka_security_protocol": "SASL_SSL", "kafka_ssl_keyfile": "/etc/kafka/client.key"},
     "ORCHESTRATOR_KAFKA_SSL_KEYFILE is set without ORCHESTRATOR_KAFKA_SSL_CERTFILE"),
])
def test_a_wrong_or_missing_security_setting_is_one_line_naming_it(changes, message):
    settings = _sasl(**changes)
    for build in (kafka_security.check_settings, kafka._common, kafka.create_admin, kafka.check_connection):
        with pytest.raises(ConfigurationError) as raised:
            build(settings)
        text = str(raised.value)
        assert message in text and "\n" not in text and PASSWORD not in text, text


def test_files_that_are_no_certificates_or_keys_are_named(pki):
    junk = pki["folder"] / "junk.pem"
    junk.write_text("not a certificate\n")
    tls = Settings(kafka_bootstrap="127.0.0.1:9092", kafka_security_protocol="SSL")
    with pytest.raises(ConfigurationError, match=f"ORCHESTRATOR_KAFKA_SSL_CAFILE={junk}: not a PEM file"):
        kafka_security.check_settings(tls.with_(kafka_ssl_cafile=str(junk)))
    with pytest.raises(ConfigurationError, match=f"ORCHESTRATOR_KAFKA_SSL_CERTFILE={pki['cert']}: not a PEM"):
        kafka_security.check_settings(tls.with_(kafka_ssl_certfile=pki["cert"], kafka_ssl_keyfile=str(junk)))
    with pytest.raises(ConfigurationError, match=f"ORCHESTRATOR_KAFKA_SSL_CERTFILE={pki['folder']}: not a file"):
        kafka_security.check_settings(tls.with_(kafka_ssl_certfile=str(pki["folder"])))


def test_plaintext_clients_get_no_security_options_but_the_protocol():
    options = kafka._common(Settings(kafka_bootstrap="127.0.0.1:9092"))
    assert options["security_protocol"] == "PLAINTEXT"
    assert not [k for k in options if k.startswith(("sasl_", "ssl_"))]


@pytest.mark.parametrize("protocol", ["SSL", "SASL_SSL"])
def test_tls_options_build_in_kafka_python_the_context_the_probe_uses(pki, protocol):
    settings = Settings(kafka_bootstrap="127.0.0.1:9092", kafka_security_protocol=protocol,
                        kafka_ssl_cafile=pki["ca"], kafka_ssl_certfile=pki["cert"], kafka_ssl_keyfile=pki["key"],
                        kafka_ssl_check_hostname=False)
    if protocol == "SASL_SSL":
        settings = settings.with_(kafka_sasl_mechanism="PLAIN", kafka_sasl_username="alice",
                                  kafka_sasl_password=PASSWORD)
    options = kafka._common(settings)
    assert options["security_protocol"] == protocol
    assert (options["ssl_cafile"], options["ssl_certfile"], options["ssl_keyfile"]) == (
        pki["ca"], pki["cert"], pki["key"])
    assert options["ssl_check_hostname"] is False
    theirs = KafkaSSLTransport._build_ssl_context({**KafkaSSLTransport.DEFAULT_CONFIG, **options})
    ours = kafka_security.tls_context(settings)
    assert ours is not None
    for context in (theirs, ours):
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname is False
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
        assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "unit-ca"),),)]
    checked = kafka_security.tls_context(settings.with_(kafka_ssl_check_hostname=True))
    assert checked is not None and checked.check_hostname is True


@pytest.mark.parametrize(("protocol", "mechanism"), [
    ("SASL_PLAINTEXT", "PLAIN"), ("SASL_PLAINTEXT", "SCRAM-SHA-256"), ("SASL_SSL", "SCRAM-SHA-512"),
])
def test_sasl_options_reach_kafka_pythons_mechanisms(protocol, mechanism):
    settings = _sasl(protocol, kafka_sasl_mechanism=mechanism)
    options = kafka._common(settings)
    assert (options["security_protocol"], options["sasl_mechanism"]) == (protocol, mechanism)
    assert options["sasl_plain_username"] == "alice" and options["sasl_plain_password"] == PASSWORD
    if mechanism == "PLAIN":
        first = SaslMechanismPlain(**options).auth_bytes()
        assert first == f"alice\0alice\0{PASSWORD}".encode()
    else:
        scram = SaslMechanismScram(**options)
        assert scram.auth_bytes().startswith(b"n,,n=alice,r=")
        assert scram._scram_client.password == PASSWORD.encode()


def test_every_client_kind_accepts_every_security_option():
    """`_known` drops options a client does not know: none of the security ones may go."""
    options = kafka._common(_sasl("SASL_PLAINTEXT"))
    tls = {"ssl_cafile": None, "ssl_certfile": None, "ssl_keyfile": None, "ssl_check_hostname": True}
    for client in (KafkaConsumer, KafkaProducer, KafkaAdminClient):
        assert kafka._known(client, {**options, **tls}) == {**options, **tls}, client


def test_the_password_handed_to_kafka_python_never_shows_in_its_logged_configuration(caplog):
    options = kafka._common(_sasl("SASL_PLAINTEXT"))
    with caplog.at_level(logging.DEBUG, logger="kafka.admin.client"):
        logging.getLogger("kafka.admin.client").debug("Starting KafkaAdminClient with configuration: %s", options)
    assert "'sasl_plain_password': '***'" in caplog.text and PASSWORD not in caplog.text
    assert options["sasl_plain_password"].encode() == PASSWORD.encode()  # the real value for the login


def _commented_settings(*paths: str) -> dict[str, str]:
    """The `# ORCHESTRATOR_KAFKA_...: value` lines of deployment files: their SASL_SSL examples."""
    found: dict[str, str] = {}
    for path in paths:
        for line in (ROOT / path).read_text().splitlines():
            match = re.fullmatch(r"\s*# (ORCHESTRATOR_KAFKA_[A-Z_]+): (\S+)", line)
            if match:
                found[match.group(1)] = match.group(2)
    return found


@pytest.mark.parametrize("paths", [("compose.yaml",),
                                   ("deploy/kubernetes/configmap.yaml", "deploy/kubernetes/secret.yaml")])
def test_the_deployment_files_sasl_ssl_examples_are_valid_settings(pki, paths):
    example = _commented_settings(*paths)
    assert {"ORCHESTRATOR_KAFKA_SECURITY_PROTOCOL", "ORCHESTRATOR_KAFKA_SASL_MECHANISM",
            "ORCHESTRATOR_KAFKA_SASL_USERNAME", "ORCHESTRATOR_KAFKA_SASL_PASSWORD",
            "ORCHESTRATOR_KAFKA_SSL_CAFILE"} <= set(example), example
    settings = Settings.from_env({**example, "ORCHESTRATOR_KAFKA_BOOTSTRAP": "kafka.example.com:9096",
                                  "ORCHESTRATOR_KAFKA_SSL_CAFILE": pki["ca"]})  # the mounted file, here
    assert settings.kafka_security_protocol == "SASL_SSL"
    kafka_security.check_settings(settings)


# -- the start-up probe's SASL exchange, against the server side of RFC 5802 ------------------
# Tansu cannot hold a user (see tests/integration/test_kafka_security.py), so a successful
# login is checked here: a loopback server written from RFC 5802 and Kafka's protocol guide
# (ApiVersions v0, SaslHandshake v1, SaslAuthenticate v1), one connection per probe.


def _scram_server(password: str, plain_error: tuple[int, str] | None = None):  # noqa: ANN202
    import base64
    import hashlib
    import hmac
    import socket
    import struct
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    salt, iterations = b"pepper-salt", 4096
    seen: list[str] = []

    def answer(conn: socket.socket, correlation: int, body: bytes) -> None:
        conn.sendall(struct.pack(">ii", len(body) + 4, correlation) + body)

    def authenticate_answer(error: int, message: str | None, data: bytes) -> bytes:
        text = struct.pack(">h", -1) if message is None else struct.pack(">h", len(message)) + message.encode()
        return struct.pack(">h", error) + text + struct.pack(">i", len(data)) + data + struct.pack(">q", 0)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            first_bare = server_first = b""
            while True:
                head = conn.recv(4, socket.MSG_WAITALL)
                if len(head) < 4:
                    return
                request = conn.recv(struct.unpack(">i", head)[0], socket.MSG_WAITALL)
                api_key, _version, correlation, id_length = struct.unpack_from(">hhih", request)
                body = request[10 + id_length:]
                seen.append({18: "ApiVersions", 17: "SaslHandshake", 36: "SaslAuthenticate"}[api_key])
                if api_key == 18:
                    answer(conn, correlation, struct.pack(">hi", 0, 0))
                elif api_key == 17:
                    mechanism = body[2:]
                    answer(conn, correlation, struct.pack(">hih", 0, 1, len(mechanism)) + mechanism)
                elif plain_error is not None:
                    answer(conn, correlation, authenticate_answer(plain_error[0], plain_error[1], b""))
                    return
                else:
                    message = body[4:4 + struct.unpack_from(">i", body)[0]]
                    if not first_bare:
                        first_bare = message[3:]  # after the "n,," header
                        nonce = dict(p.split(b"=", 1) for p in first_bare.split(b","))[b"r"] + b"srv"
                        server_first = b"r=%s,s=%s,i=%d" % (nonce, base64.b64encode(salt), iterations)
                        answer(conn, correlation, authenticate_answer(0, None, server_first))
                        continue
                    without_proof, _, proof = message.rpartition(b",p=")
                    salted = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
                    client_key = hmac.digest(salted, b"Client Key", "sha512")
                    auth_message = first_bare + b"," + server_first + b"," + without_proof
                    signature = hmac.digest(hashlib.sha512(client_key).digest(), auth_message, "sha512")
                    claimed = bytes(a ^ b for a, b in zip(base64.b64decode(proof), signature, strict=True))
                    if hashlib.sha512(claimed).digest() == hashlib.sha512(client_key).digest():
                        server_key = hmac.digest(salted, b"Server Key", "sha512")
                        final = b"v=" + base64.b64encode(hmac.digest(server_key, auth_message, "sha512"))
                    else:
                        final = b"e=invalid-proof"
                    answer(conn, correlation, authenticate_answer(0, None, final))
                    return

    threading.Thread(target=serve, daemon=True).start()
    return listener, seen


@pytest.mark.parametrize(("given", "refusal"), [(PASSWORD, None), ("not-the-password", "invalid-proof")])
def test_the_startup_probe_logs_in_with_scram_and_names_a_refusal(given, refusal):
    listener, seen = _scram_server(PASSWORD)
    with listener:
        settings = _sasl(kafka_bootstrap=f"127.0.0.1:{listener.getsockname()[1]}", kafka_sasl_password=given)
        if refusal is None:
            assert kafka.check_connection(settings, timeout=5.0) is True
        else:
            with pytest.raises(ConfigurationError) as raised:
                kafka.check_connection(settings, timeout=5.0)
            assert str(raised.value) == ("ORCHESTRATOR_KAFKA_SASL_USERNAME=alice: the broker refused SASL "
                                         f"authentication (SCRAM-SHA-512): {refusal}")
            assert given not in str(raised.value)
    assert seen == ["ApiVersions", "SaslHandshake", "SaslAuthenticate", "SaslAuthenticate"]


def test_the_startup_probe_names_a_plain_login_kafka_refuses_with_an_error_code():
    message = "Authentication failed: Invalid username or password"
    listener, seen = _scram_server(PASSWORD, plain_error=(58, message))
    with listener:
        settings = _sasl(kafka_bootstrap=f"127.0.0.1:{listener.getsockname()[1]}", kafka_sasl_mechanism="PLAIN")
        with pytest.raises(ConfigurationError, match=f"refused SASL authentication .PLAIN.: {message}$"):
            kafka.check_connection(settings, timeout=5.0)
    assert seen == ["ApiVersions", "SaslHandshake", "SaslAuthenticate"]
