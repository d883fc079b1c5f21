"""A bounded LRU cache of decoded full blocks, so repeated range reads skip the decode.

Full blocks are immutable and their sequence numbers are never reused while the process
lives (a block rewritten by late points gets a new one), so an entry can never be stale;
entries of deleted blocks simply age out. The bound is in points, which is what memory
follows (24 bytes each).
"""

from __future__ import annotations

from collections import OrderedDict

from count.storage.merge import Columns

BLOCK_CACHE_POINTS_MAX = 1_000_000


class BlockCache:
    def __init__(self, points_max: int = BLOCK_CACHE_POINTS_MAX) -> None:
        assert points_max >= 0
        self.points_max = points_max
        self.points = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[int, Columns] = OrderedDict()

    def get(self, seq: int) -> Columns | None:
        found = self._entries.get(seq)
        if found is None:
            self.misses += 1
            return None
        self._entries.move_to_end(seq)
        self.hits += 1
        return found

    def put(self, seq: int, cols: Columns) -> None:
        if len(cols) > self.points_max or seq in self._entries:
            return
        for column in cols:
            column.flags.writeable = False  # shared by every later read
        self._entries[seq] = cols
        self.points += len(cols)
        while self.points > self.points_max:
            _, evicted = self._entries.popitem(last=False)
            self.points -= len(evicted)
