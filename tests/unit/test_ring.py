"""The consistent-hash ring: minimal movement, balance, and the same answer everywhere."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections import Counter

import pytest

from orchestrator.errors import ConfigurationError
from orchestrator.ring import (
    DEFAULT_VNODES,
    HashRing,
    key_bytes,
    numbered_ring,
    queue_for,
    shard_index,
    shard_queue,
    shard_queues,
    stable_hash,
)

KEYS = [f"customer-{i}" for i in range(100_000)]


def assignment(ring: HashRing) -> list[str]:
    return [ring.shard_for(k) for k in KEYS]


def moved_fraction(before: list[str], after: list[str]) -> float:
    return sum(a != b for a, b in zip(before, after, strict=True)) / len(before)


@pytest.fixture(scope="module")
def eight() -> list[str]:
    return assignment(numbered_ring(8))


def test_adding_a_ninth_shard_moves_about_a_ninth_of_the_keys_all_to_it(eight: list[str]) -> None:
    nine = assignment(numbered_ring(8).with_shard("shard-8"))
    moved = moved_fraction(eight, nine)
    assert abs(moved - 1 / 9) <= 0.02, moved
    assert all(b == "shard-8" for a, b in zip(eight, nine, strict=True) if a != b)


@pytest.mark.parametrize("count", [4, 8, 12])
def test_removing_one_of_n_shards_moves_only_its_keys_about_one_nth(count: int) -> None:
    ring = numbered_ring(count)
    removed = "shard-1"
    before = assignment(ring)
    after = assignment(ring.without_shard(removed))
    moved = moved_fraction(before, after)
    assert abs(moved - 1 / count) <= 0.02, moved
    assert moved == before.count(removed) / len(KEYS)
    assert removed not in after


def test_eight_shards_are_balanced_within_fifteen_percent(eight: list[str]) -> None:
    loads = Counter(eight)
    assert len(loads) == 8
    assert max(loads.values()) / (len(KEYS) / 8) < 1.15


@pytest.mark.parametrize("count", [2, 3, 5, 9, 16])
def test_other_shard_counts_are_balanced_too(count: int) -> None:
    loads = Counter(numbered_ring(count).shard_for(k) for k in KEYS[:40_000])
    assert max(loads.values()) / (40_000 / count) < 1.15


def test_mapping_is_the_same_in_another_process_with_another_hash_seed() -> None:
    code = (
        "import hashlib, sys\n"
        "from orchestrator.ring import numbered_ring\n"
        "ring = numbered_ring(8)\n"
        "text = ','.join(ring.shard_for(f'customer-{i}') for i in range(5000))\n"
        "sys.stdout.write(hashlib.sha256(text.encode()).hexdigest())\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    child = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=60
    )
    here = ",".join(numbered_ring(8).shard_for(f"customer-{i}") for i in range(5000))
    assert child.stdout == hashlib.sha256(here.encode()).hexdigest()


def test_hash_and_placement_are_pinned() -> None:
    # A change of hash, point naming or DEFAULT_VNODES re-shards every live deployment:
    # it must show up here, not in production.
    assert stable_hash(b"order-42") == 0x94AEB5761A06C9F3
    assert [shard_index(f"customer-{i}", 8) for i in range(12)] == [
        6, 4, 2, 0, 2, 6, 4, 5, 4, 0, 1, 7
    ]


def test_order_of_shard_names_does_not_matter() -> None:
    a = HashRing(["b", "a", "c"], vnodes=64)
    b = HashRing(["c", "b", "a"], vnodes=64)
    assert a == b and hash(a) == hash(b)
    assert all(a.shard_for(k) == b.shard_for(k) for k in KEYS[:2000])


def test_json_keys_hash_by_canonical_text() -> None:
    assert key_bytes(42) == key_bytes("42") == b"42"
    assert key_bytes({"b": 1, "a": 2}) == b'{"a":2,"b":1}'
    assert key_bytes(b"raw") == b"raw"
    assert key_bytes(True) == b"true"
    with pytest.raises(TypeError, match="partition key"):
        key_bytes(object())  # type: ignore[arg-type]


def test_queue_names_follow_the_workflow_dot_shard_contract() -> None:
    assert shard_queue("order-fulfilment", 3) == "order-fulfilment.shard-3"
    assert shard_queues("orders", 3) == ("orders.shard-0", "orders.shard-1", "orders.shard-2")
    queue = queue_for("orders", "customer-7", 4)
    assert queue == f"orders.shard-{shard_index('customer-7', 4)}"
    assert queue in shard_queues("orders", 4)
    assert queue_for("orders", "anything", 1) == "orders.shard-0"


def test_invalid_rings_are_refused_with_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="at least one shard"):
        HashRing([])
    with pytest.raises(ConfigurationError, match="repeated: a"):
        HashRing(["a", "a"])
    with pytest.raises(ConfigurationError, match="vnodes"):
        HashRing(["a"], vnodes=0)
    with pytest.raises(ConfigurationError, match="shards must be a positive integer"):
        shard_queues("orders", 0)
    with pytest.raises(ConfigurationError, match="not on the ring"):
        numbered_ring(2).without_shard("shard-5")


def test_default_ring_size() -> None:
    ring = numbered_ring(8)
    assert ring.vnodes == DEFAULT_VNODES and len(ring) == 8
    assert ring.shards == tuple(f"shard-{i}" for i in range(8))
