"""`orchestrator web`'s server: waitress, stopped gracefully on SIGTERM.

waitress on its own dies at once on SIGTERM, cutting the requests it is answering. Here
SIGTERM (or Ctrl-C) instead:

1. closes the listening socket, so new connections are refused (a load balancer or a
   Kubernetes Service sends them to another replica);
2. closes idle keep-alive connections;
3. keeps serving the requests already received until each has been answered, for at most
   `shutdown_timeout` seconds;
4. exits with status 0, saying how many requests it finished and how many it had to cut.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.server import create_server

log = logging.getLogger("orchestrator.web")

#: Seconds in-flight requests get to finish after SIGTERM (`orchestrator web
#: --shutdown-timeout`, ORCHESTRATOR_WEB_SHUTDOWN_TIMEOUT); keep the platform's grace longer.
DEFAULT_SHUTDOWN_TIMEOUT = 20.0
#: Seconds one turn of the event loop waits for I/O: how soon a stop request is noticed.
LOOP_TIMEOUT = 0.2


class GracefulServer:
    """A waitress server whose `serve()` returns after a graceful stop (module docstring)."""

    def __init__(self, app: Any, host: str, port: int, threads: int,
                 shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT) -> None:
        self.server = create_server(app, host=host, port=port, threads=threads, ident="orchestrator")
        self.shutdown_timeout = shutdown_timeout
        self.stopping = threading.Event()

    @property
    def port(self) -> int:
        return int(self.server.effective_port)

    def stop(self, *_: object) -> None:
        """Ask `serve()` to stop; safe to call from a signal handler."""
        self.stopping.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def serve(self) -> None:
        server = self.server
        server.print_listen("Serving on http://{}:{}")
        while not self.stopping.is_set():
            wasyncore.loop(timeout=LOOP_TIMEOUT, map=server._map, use_poll=server.adj.asyncore_use_poll, count=1)
        self._drain()

    def _channels(self) -> list[HTTPChannel]:
        return [c for c in list(self.server._map.values()) if isinstance(c, HTTPChannel)]

    def _drain(self) -> None:
        server = self.server
        # Stop accepting: the listening socket goes; the trigger that wakes the loop stays.
        wasyncore.dispatcher.close(server)
        busy = [c for c in self._channels() if _in_flight(c)]
        log.info("stopping: no new connections; finishing %d request(s) in flight", len(busy))
        deadline = time.monotonic() + self.shutdown_timeout
        while time.monotonic() < deadline:
            for channel in self._channels():
                if not _in_flight(channel):
                    channel.handle_close()  # idle keep-alive connection
            if not self._channels():
                break
            wasyncore.loop(timeout=LOOP_TIMEOUT, map=server._map, use_poll=server.adj.asyncore_use_poll, count=1)
        cut = self._channels()
        server.task_dispatcher.shutdown(cancel_pending=True, timeout=1)
        wasyncore.close_all(server._map)
        if cut:
            log.warning("stopped after %gs with %d request(s) unanswered", self.shutdown_timeout, len(cut))
        else:
            log.info("stopped: every request in flight was answered")


def _in_flight(channel: HTTPChannel) -> bool:
    """A request being received, handled, or its response still being sent."""
    return bool(channel.requests or getattr(channel, "request", None) is not None
                or channel.total_outbufs_len)


def serve(app: Any, host: str, port: int, threads: int,
          shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT) -> None:
    """Serve `app` until SIGTERM or Ctrl-C, then stop gracefully (module docstring)."""
    server = GracefulServer(app, host, port, threads, shutdown_timeout)
    server.install_signal_handlers()
    server.serve()
