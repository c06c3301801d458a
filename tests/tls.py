"""TLS for the Kafka security tests: certificates made at run time, and a real TLS terminator.

Tansu 0.6 cannot serve TLS itself (`--cert` with `--key` is refused by its CLI; either alone
leaves a plaintext listener), so the tests put `socat` (OpenSSL) in front of a Tansu that
advertises the terminator's port: every connection a client makes, bootstrap or after
metadata, goes through TLS.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from orchestrator.tansu import free_port

#: Why TLS tests skip on a machine without socat (CI installs it: .ci/run).
NO_SOCAT = "socat (with OpenSSL) is not installed: apt-get install -y socat"


def socat_path() -> str | None:
    return shutil.which("socat")


@dataclass(frozen=True)
class Authority:
    """A certificate authority made for one test session; `cafile` is its PEM certificate."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate
    cafile: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_authority(folder: Path, name: str) -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    cafile = folder / f"{name}.pem"
    cafile.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return Authority(key, certificate, cafile)


def issue(authority: Authority, folder: Path, name: str, dns: list[str] = (), ips: list[str] = ()) -> tuple[Path, Path]:
    """A server certificate for `dns` names and `ips`, signed by `authority`: (cert, key) files."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    names = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    certificate = (
        x509.CertificateBuilder().subject_name(_name(name)).issuer_name(authority.certificate.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(authority.key, hashes.SHA256())
    )
    cert, keyfile = folder / f"{name}.crt", folder / f"{name}.key"
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    keyfile.chmod(0o600)
    return cert, keyfile


class TlsTerminator:
    """`socat` accepting TLS on `port` (free when not given) and forwarding to a plain TCP port."""

    def __init__(self, target_port: int, cert: Path, key: Path, log: Path, port: int | None = None) -> None:
        self.target_port = target_port
        self.cert, self.key, self.log = cert, key, log
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> TlsTerminator:
        listen = (f"OPENSSL-LISTEN:{self.port},bind=127.0.0.1,reuseaddr,fork,"
                  f"cert={self.cert},key={self.key},verify=0")
        with self.log.open("ab") as out:
            self.process = subprocess.Popen([socat_path() or "socat", listen, f"TCP:127.0.0.1:{self.target_port}"],
                                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"socat exited: {self.log.read_text(errors='replace')}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"socat did not listen on {self.port}")

    def stop(self) -> None:
        """SIGTERM to socat and the children it forked for open connections."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None
