"""The consistent-hash ring that maps a partition key to a shard, for per-key ordering.

Runs whose key is equal must land on the same shard (one Celery queue, served in order),
and changing the number of shards must move as few keys as possible, since a key that
moves can briefly run on two shards at once. A ring of virtual nodes gives both: each
shard owns `vnodes` points on a 64-bit circle, a key belongs to the first point at or
after its own hash, so adding one shard to N takes about 1/(N+1) of the keys (all of
them to the new shard) and removing one moves only the keys it owned, about 1/N.

Pure: no I/O and no global state besides a small cache of rings by shard count. The
hash is BLAKE2b cut to 64 bits, never Python's `hash()`, which is salted per process:
every producer, worker and host must agree on where a key lives.

Queue contract (shared with the engine and `orchestrator worker --shards`): shard `i` of
workflow `w` is the Celery queue `w.shard-i`, for `i` in `0 .. shards - 1`.
"""

from __future__ import annotations

import hashlib
import json
from bisect import bisect_right
from collections.abc import Iterable
from functools import lru_cache

from .errors import ConfigurationError

#: Virtual nodes per shard. The balance of a ring improves as 1/sqrt(vnodes); 1024 keeps
#: the busiest shard within about 10 % of the mean for 2 to 32 shards (6.3 % for 8
#: shards over 100,000 keys, see tests/unit/test_ring.py) while a ring of 32 shards stays
#: at 32,768 points, built in milliseconds.
DEFAULT_VNODES = 1024

#: A partition key: a string, bytes, or any JSON value read from an event.
RingKey = str | bytes | int | float | bool | None | list | dict


def stable_hash(data: bytes) -> int:
    """A 64-bit hash of `data` that is the same in every process, host and Python version."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def key_bytes(key: RingKey) -> bytes:
    """The bytes hashed for `key`.

    A string is its UTF-8 bytes, bytes are themselves, and any other JSON value is its
    canonical JSON text, so the integer 42 and the string "42" share a shard (harmless:
    equal keys are what must meet, and they do).
    """
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode("utf-8")
    try:
        text = json.dumps(key, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError):
        raise TypeError(
            f"a partition key must be a string, bytes or a JSON value, not {type(key).__name__}"
        ) from None
    return text.encode("utf-8")


class HashRing:
    """An immutable ring of named shards, each owning `vnodes` points.

    Two rings with the same shard names and vnode count map every key alike, whatever
    the order the names were given in.
    """

    __slots__ = ("_shards", "_vnodes", "_points", "_owners")

    def __init__(self, shards: Iterable[str], vnodes: int = DEFAULT_VNODES) -> None:
        names = tuple(shards)
        if not names:
            raise ConfigurationError("a hash ring needs at least one shard")
        if len(set(names)) != len(names):
            dupes = sorted({n for n in names if names.count(n) > 1})
            raise ConfigurationError(f"shard names must be unique; repeated: {', '.join(dupes)}")
        if not isinstance(vnodes, int) or vnodes < 1:
            raise ConfigurationError(f"vnodes must be a positive integer, not {vnodes!r}")
        ring = sorted(
            (stable_hash(f"{name}#{i}".encode()), name) for name in names for i in range(vnodes)
        )
        self._shards: tuple[str, ...] = tuple(sorted(names))
        self._vnodes = vnodes
        self._points: tuple[int, ...] = tuple(point for point, _ in ring)
        self._owners: tuple[str, ...] = tuple(name for _, name in ring)

    @property
    def shards(self) -> tuple[str, ...]:
        """The shard names, sorted."""
        return self._shards

    @property
    def vnodes(self) -> int:
        return self._vnodes

    def shard_for(self, key: RingKey) -> str:
        """The shard that owns `key`: the first point clockwise from the key's hash."""
        index = bisect_right(self._points, stable_hash(key_bytes(key)))
        return self._owners[index % len(self._owners)]

    def with_shard(self, name: str) -> HashRing:
        """This ring plus shard `name`; only keys that move to `name` change shard."""
        return HashRing((*self._shards, name), self._vnodes)

    def without_shard(self, name: str) -> HashRing:
        """This ring less shard `name`; only the keys `name` owned change shard."""
        if name not in self._shards:
            raise ConfigurationError(f"shard {name!r} is not on the ring ({', '.join(self._shards)})")
        return HashRing((s for s in self._shards if s != name), self._vnodes)

    def __len__(self) -> int:
        return len(self._shards)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HashRing):
            return NotImplemented
        return (self._shards, self._vnodes) == (other._shards, other._vnodes)

    def __hash__(self) -> int:
        return hash((self._shards, self._vnodes))

    def __repr__(self) -> str:
        return f"HashRing(shards={list(self._shards)!r}, vnodes={self._vnodes})"


# -- numbered shards and their Celery queues -------------------------------------------


def shard_name(index: int) -> str:
    """The ring name of shard `index`: `shard-<index>`."""
    return f"shard-{index}"


def _check_count(shards: int) -> None:
    if not isinstance(shards, int) or isinstance(shards, bool) or shards < 1:
        raise ConfigurationError(f"shards must be a positive integer, not {shards!r}")


@lru_cache(maxsize=64)
def numbered_ring(shards: int, vnodes: int = DEFAULT_VNODES) -> HashRing:
    """The ring of shards `shard-0 .. shard-<shards - 1>` (cached: rings are immutable)."""
    _check_count(shards)
    return HashRing((shard_name(i) for i in range(shards)), vnodes)


def shard_index(key: RingKey, shards: int, vnodes: int = DEFAULT_VNODES) -> int:
    """The shard number, in `0 .. shards - 1`, that owns `key` among `shards` shards."""
    owner = numbered_ring(shards, vnodes).shard_for(key)
    return int(owner.rsplit("-", 1)[1])


def shard_queue(workflow: str, index: int) -> str:
    """The Celery queue of shard `index` of `workflow`: `<workflow>.shard-<index>`."""
    return f"{workflow}.{shard_name(index)}"


def shard_queues(workflow: str, shards: int) -> tuple[str, ...]:
    """Every shard queue of `workflow`, in shard order: what its workers must serve."""
    _check_count(shards)
    return tuple(shard_queue(workflow, i) for i in range(shards))


def queue_for(workflow: str, key: RingKey, shards: int, vnodes: int = DEFAULT_VNODES) -> str:
    """The Celery queue that runs of `workflow` with partition `key` go to."""
    return shard_queue(workflow, shard_index(key, shards, vnodes))
