"""Unit tests for count.storage.cache: the decoded-block LRU."""

from __future__ import annotations

import numpy as np
import pytest

from count.storage.cache import BlockCache
from count.storage.merge import Columns


def cols(n: int) -> Columns:
    return Columns(np.arange(n, dtype=np.int64), np.ones(n), np.zeros(n, np.uint64))


def test_hit_miss_and_lru_eviction_by_points():
    cache = BlockCache(points_max=100)
    assert cache.get(1) is None and cache.misses == 1
    cache.put(1, cols(40))
    cache.put(2, cols(40))
    assert cache.get(1) is not None  # 1 is now the most recent
    cache.put(3, cols(40))  # 120 points: evicts the least recent, 2
    assert cache.get(2) is None
    assert cache.get(1) is not None and cache.get(3) is not None
    assert cache.points == 80 and cache.hits == 3


def test_oversized_and_repeated_puts_are_ignored():
    cache = BlockCache(points_max=10)
    cache.put(1, cols(11))
    assert cache.get(1) is None and cache.points == 0
    cache.put(2, cols(5))
    cache.put(2, cols(5))
    assert cache.points == 5


def test_cached_columns_are_read_only():
    cache = BlockCache(points_max=10)
    cache.put(1, cols(3))
    with pytest.raises(ValueError):
        cache.get(1).val[0] = 2.0
