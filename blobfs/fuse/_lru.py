"""A bounded least-recently-used mapping: the mount's caches of attributes, listings and
directory nodes (event-loop thread only)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

__all__ = ["Lru"]

K = TypeVar("K")
V = TypeVar("V")


class Lru(Generic[K, V]):
    """A bounded mapping dropping the least recently used items past ``limit`` total weight."""

    __slots__ = ("_items", "_limit", "_weight")

    def __init__(self, limit: int) -> None:
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._limit = limit
        self._weight = 0

    def get(self, key: K) -> V | None:
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: K, value: V, weight: int = 1) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self._weight -= old[1]
        self._items[key] = (value, weight)
        self._weight += weight
        while self._weight > self._limit and len(self._items) > 1:
            _, (_, w) = self._items.popitem(last=False)
            self._weight -= w
