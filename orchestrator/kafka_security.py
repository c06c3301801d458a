"""Kafka connection security: TLS and SASL settings, checked once and handed to every client.

`client_options(settings)` is what `kafka._common` adds to every client the project makes
(kafka-python's own option names); `tls_context(settings)` is the same TLS configuration as
an `ssl.SSLContext`, for the raw probes of `kafka`; `authenticate(sock, ...)` runs the SASL
exchange on a probe's socket, so that a refused login is one clear line at start-up rather
than kafka-python's endless "Unable to bootstrap".

The password is handed to kafka-python as a `Secret`, whose repr is `'***'`: kafka-python
logs its configuration at DEBUG level, and errors never quote it.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
from typing import Any

from .errors import ConfigurationError
from .settings import Settings

#: What ORCHESTRATOR_KAFKA_SECURITY_PROTOCOL accepts.
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
#: What ORCHESTRATOR_KAFKA_SASL_MECHANISM accepts.
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
#: Client id of the start-up probe's requests.
PROBE_CLIENT_ID = b"orchestrator-probe"

_METADATA, _SASL_HANDSHAKE, _SASL_AUTHENTICATE = 3, 17, 36


class Secret(str):
    """A string that shows as `'***'` in reprs (so in logged dicts), and is itself otherwise."""

    def __repr__(self) -> str:
        return "'***'"


def uses_tls(settings: Settings) -> bool:
    return settings.kafka_security_protocol in ("SSL", "SASL_SSL")


def uses_sasl(settings: Settings) -> bool:
    return settings.kafka_security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")


def _readable(name: str, path: str) -> None:
    if not os.path.isfile(path):
        raise ConfigurationError(f"{name}={path}: {'not a file' if os.path.exists(path) else 'no such file'}")
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise ConfigurationError(f"{name}={path}: cannot be read ({exc.strerror})") from None


def check_settings(settings: Settings) -> None:
    """Raise a ConfigurationError, naming the setting, for a protocol, mechanism,
    credential or file that cannot work; the TLS files are read and parsed here."""
    protocol = settings.kafka_security_protocol
    if protocol not in SECURITY_PROTOCOLS:
        raise ConfigurationError(
            f"ORCHESTRATOR_KAFKA_SECURITY_PROTOCOL={protocol!r} is not one of {', '.join(SECURITY_PROTOCOLS)}"
        )
    mechanism = settings.kafka_sasl_mechanism
    if uses_sasl(settings):
        if mechanism is None:
            raise ConfigurationError(
                f"ORCHESTRATOR_KAFKA_SECURITY_PROTOCOL={protocol} needs ORCHESTRATOR_KAFKA_SASL_MECHANISM "
                f"({', '.join(SASL_MECHANISMS)})"
            )
        if mechanism not in SASL_MECHANISMS:
            raise ConfigurationError(
                f"ORCHESTRATOR_KAFKA_SASL_MECHANISM={mechanism!r} is not one of {', '.join(SASL_MECHANISMS)}"
            )
        for name, value in (("ORCHESTRATOR_KAFKA_SASL_USERNAME", settings.kafka_sasl_username),
                            ("ORCHESTRATOR_KAFKA_SASL_PASSWORD", settings.kafka_sasl_password)):
            if not value:
                raise ConfigurationError(
                    f"ORCHESTRATOR_KAFKA_SECURITY_PROTOCOL={protocol} with SASL mechanism {mechanism} "
                    f"needs {name}"
                )
    else:
        given = [name for name, value in (
            ("ORCHESTRATOR_KAFKA_SASL_MECHANISM", mechanism),
            ("ORCHESTRATOR_KAFKA_SASL_USERNAME", settings.kafka_sasl_username),
            ("ORCHESTRATOR_KAFKA_SASL_PASSWORD", settings.kafka_sasl_password),
        ) if value]
        if given:
            raise ConfigurationError(
                f"{given[0]} is set but ORCHESTRATOR_KAFKA_SECURITY_PROTOCOL={protocol} does not use SASL: "
                "set it to SASL_SSL or SASL_PLAINTEXT, or unset the SASL settings"
            )
    files = (("ORCHESTRATOR_KAFKA_SSL_CAFILE", settings.kafka_ssl_cafile),
             ("ORCHESTRATOR_KAFKA_SSL_CERTFILE", settings.kafka_ssl_certfile),
             ("ORCHESTRATOR_KAFKA_SSL_KEYFILE", settings.kafka_ssl_keyfile))
    if not uses_tls(settings):
        given = [name for name, value in files if value]
        if given:
            raise ConfigurationError(
                f"{given[0]} is set but ORCHESTRATOR_KAFKA_SECURITY_PROTOCOL={protocol} does not use TLS: "
                "set it to SSL or SASL_SSL, or unset the SSL files"
            )
        return
    if settings.kafka_ssl_keyfile and not settings.kafka_ssl_certfile:
        raise ConfigurationError(
            "ORCHESTRATOR_KAFKA_SSL_KEYFILE is set without ORCHESTRATOR_KAFKA_SSL_CERTFILE: "
            "a client key needs its certificate"
        )
    for name, path in files:
        if path:
            _readable(name, path)
    _build_context(settings)


def _build_context(settings: Settings) -> ssl.SSLContext:
    """The context kafka-python builds from the same options (TLS 1.2 or later, verified)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = settings.kafka_ssl_check_hostname
    cafile = settings.kafka_ssl_cafile
    try:
        if cafile:
            context.load_verify_locations(cafile)
        else:
            context.load_default_certs()
    except ssl.SSLError as exc:
        raise ConfigurationError(
            f"ORCHESTRATOR_KAFKA_SSL_CAFILE={cafile}: not a PEM file of CA certificates ({exc.reason or exc})"
        ) from None
    if settings.kafka_ssl_certfile:
        try:
            context.load_cert_chain(settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile)
        except ssl.SSLError as exc:
            raise ConfigurationError(
                f"ORCHESTRATOR_KAFKA_SSL_CERTFILE={settings.kafka_ssl_certfile}: not a PEM certificate "
                f"with its key (ORCHESTRATOR_KAFKA_SSL_KEYFILE={settings.kafka_ssl_keyfile}): "
                f"{exc.reason or exc}"
            ) from None
    return context


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of the configured protocol; None for PLAINTEXT and SASL_PLAINTEXT."""
    return _build_context(settings) if uses_tls(settings) else None


def client_options(settings: Settings) -> dict[str, Any]:
    """kafka-python's security options for `settings` (checked first)."""
    check_settings(settings)
    options: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    if uses_sasl(settings):
        options.update(
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_plain_username=settings.kafka_sasl_username,
            sasl_plain_password=Secret(settings.kafka_sasl_password or ""),
        )
    if uses_tls(settings):
        options.update(
            ssl_cafile=settings.kafka_ssl_cafile,
            ssl_certfile=settings.kafka_ssl_certfile,
            ssl_keyfile=settings.kafka_ssl_keyfile,
            ssl_check_hostname=settings.kafka_ssl_check_hostname,
        )
    return options


def handshake_failure(settings: Settings, where: str, exc: BaseException) -> ConfigurationError:
    """The one line for a TLS handshake with `where` ("host:port") that failed."""
    if settings.kafka_ssl_cafile:
        setting = f"ORCHESTRATOR_KAFKA_SSL_CAFILE={settings.kafka_ssl_cafile}"
    else:
        setting = "ORCHESTRATOR_KAFKA_SSL_CAFILE (unset: the system's CAs)"
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = f"certificate verify failed: {exc.verify_message}"
        if "mismatch" in (exc.verify_message or ""):  # the CA is right, the name is not
            setting = "ORCHESTRATOR_KAFKA_SSL_CHECK_HOSTNAME=true"
    elif isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
    elif isinstance(exc, TimeoutError | socket.timeout):
        reason = ("no TLS answer in time (is this a plaintext listener? then "
                  "ORCHESTRATOR_KAFKA_SECURITY_PROTOCOL should be PLAINTEXT or SASL_PLAINTEXT)")
    else:
        reason = str(exc) or type(exc).__name__
    return ConfigurationError(f"{setting}: TLS handshake with {where} failed: {reason}")


# -- SASL on a probe's socket ---------------------------------------------------------------


def exchange(sock: socket.socket, api_key: int, version: int, correlation: int, body: bytes) -> bytes:
    """Send one request (header v1) and return its response's body (after the correlation id);
    a ConnectionError when the broker closes the connection or answers another request."""
    header = struct.pack(">hhih", api_key, version, correlation, len(PROBE_CLIENT_ID)) + PROBE_CLIENT_ID
    sock.sendall(struct.pack(">i", len(header) + len(body)) + header + body)
    size = struct.unpack(">i", _read_exactly(sock, 4))[0]
    answer = _read_exactly(sock, size)
    if struct.unpack(">i", answer[:4])[0] != correlation:
        raise ConnectionError("the broker answered another request")
    return answer[4:]


def _read_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError("the broker closed the connection")
        data += chunk
    return data


def _string(data: bytes, at: int) -> tuple[str | None, int]:
    (length,) = struct.unpack_from(">h", data, at)
    if length < 0:
        return None, at + 2
    return data[at + 2:at + 2 + length].decode("utf-8", "replace"), at + 2 + length


def _authenticate_once(sock: socket.socket, correlation: int, auth: bytes) -> tuple[int, str | None, bytes]:
    """One SaslAuthenticate (v1): error code, error message, the server's bytes."""
    data = exchange(sock, _SASL_AUTHENTICATE, 1, correlation, struct.pack(">i", len(auth)) + auth)
    (error,) = struct.unpack_from(">h", data, 0)
    message, at = _string(data, 2)
    (length,) = struct.unpack_from(">i", data, at)
    return error, message, data[at + 4:at + 4 + max(length, 0)]


def check_no_login_needed(sock: socket.socket, settings: Settings, where: str) -> None:
    """Without SASL, ask for metadata (v1, no topics): a broker that wants a login first
    closes the connection here, which kafka-python would only report as "Unable to bootstrap"."""
    try:
        exchange(sock, _METADATA, 1, 2, struct.pack(">i", 0))
    except ConnectionError:
        raise ConfigurationError(
            f"ORCHESTRATOR_KAFKA_SECURITY_PROTOCOL={settings.kafka_security_protocol}: the broker at {where} "
            "closed the connection before any login: it requires SASL authentication (set "
            "ORCHESTRATOR_KAFKA_SECURITY_PROTOCOL=SASL_SSL or SASL_PLAINTEXT and the ORCHESTRATOR_KAFKA_SASL_* settings)"
        ) from None


def authenticate(sock: socket.socket, settings: Settings, where: str) -> None:
    """Log in on `sock` (after ApiVersions) as Kafka's SaslHandshake v1 and SaslAuthenticate
    v1 do; a ConfigurationError, naming the setting, when the broker refuses."""
    from kafka.net.sasl.scram import ScramClient

    mechanism = settings.kafka_sasl_mechanism or ""
    user = settings.kafka_sasl_username or ""
    name = mechanism.encode()
    try:
        data = exchange(sock, _SASL_HANDSHAKE, 1, 1, struct.pack(">h", len(name)) + name)
    except ConnectionError:
        raise ConfigurationError(
            f"ORCHESTRATOR_KAFKA_SASL_MECHANISM={mechanism}: the broker at {where} closed the connection "
            f"at the SASL handshake: it does not offer {mechanism}"
        ) from None
    (error, count) = struct.unpack_from(">hi", data, 0)
    offered, at = [], 6
    for _ in range(max(count, 0)):
        value, at = _string(data, at)
        offered.append(value or "")
    if error != 0 or mechanism not in offered:
        raise ConfigurationError(
            f"ORCHESTRATOR_KAFKA_SASL_MECHANISM={mechanism}: the broker at {where} refused the SASL "
            f"handshake (error code {error}; mechanisms it lists: {', '.join(offered) or 'none'}): check "
            "the mechanism, and that this listener uses SASL"
        )

    def refused(reason: str) -> ConfigurationError:
        return ConfigurationError(
            f"ORCHESTRATOR_KAFKA_SASL_USERNAME={user}: the broker refused SASL authentication "
            f"({mechanism}): {reason}"
        )

    if mechanism == "PLAIN":
        plain = "\0".join([user, user, settings.kafka_sasl_password or ""]).encode()
        error, message, _ = _authenticate_once(sock, 2, plain)
        if error != 0:
            raise refused(message or f"error code {error}")
        return
    scram = ScramClient(user, settings.kafka_sasl_password or "", mechanism)
    error, message, first = _authenticate_once(sock, 2, scram.first_message())
    if error != 0:
        raise refused(message or f"error code {error}")
    if first.startswith(b"e="):
        raise refused(first[2:].decode("utf-8", "replace"))
    try:
        scram.process_server_first_message(first)
    except (ValueError, KeyError) as exc:
        raise refused(f"unexpected server-first message ({exc})") from None
    error, message, final = _authenticate_once(sock, 3, scram.final_message())
    if error != 0:
        raise refused(message or f"error code {error}")
    fields = dict(part.split("=", 1) for part in final.decode("utf-8", "replace").split(",") if "=" in part)
    if "e" in fields:
        raise refused(fields["e"])
    try:
        scram.process_server_final_message(final)
    except (ValueError, KeyError):
        raise refused("the broker's SCRAM signature does not match (a broker impersonating it?)") from None
