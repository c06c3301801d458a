"""The Celery broker on Redis: kombu's transport, with its reconnection fault fixed.

When a worker's connection to Redis drops (a Redis restart, a failover), Celery first
collects the connection, which detaches its transport (`transport.client = None`), and then
closes it; closing the channel restores the messages the worker had not acknowledged, and an
acknowledgement still arriving from a finished task does the same work. Both ask the detached
transport for its connection parameters and fail with `AttributeError: 'NoneType' object has
no attribute 'hostname'` (kombu 5.7, `kombu/transport/redis.py`, `Channel._connparams`).
Celery takes that for an unrecoverable error: the worker stops and exits, on most Redis
restarts under load (tests/faults/test_redis_restart.py).

Here a detached transport raises redis's `ConnectionError` instead, which kombu and Celery
handle as the connection loss it is: the worker logs it and reconnects. Messages it could not
restore stay in Redis's unacknowledged set until the visibility timeout, and the recovery loop
re-sends their steps before that.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError

#: Celery's `broker_transport` for `redis://` broker URLs.
TRANSPORT = f"{__name__}:Transport"


class Channel(kombu_redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        if self.connection.client is None:
            raise RedisConnectionError("the connection to the broker was closed")
        return super()._connparams(asynchronous=asynchronous)


class Transport(kombu_redis.Transport):
    Channel = Channel
