"""A small bounded, thread-safe LRU cache for values too big or too unhashable for functools.lru_cache."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    """Least recently used entries are dropped once there are more than `max_entries` or their costs
    (say, bytes) add up to more than `max_cost`; a single value costing more than that is never kept.

    Values are shared between threads, so they must never be changed once cached (make arrays read-only).
    A value missing from the cache may be computed by two threads at once; both get an equal value.
    """

    def __init__(self, max_entries: int, max_cost: int) -> None:
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._max_entries = max_entries
        self._max_cost = max_cost
        self._cost = 0
        self._lock = threading.Lock()

    def get(self, key: K, compute: Callable[[], V], cost: Callable[[V], int]) -> V:
        """The cached value for `key`, or `compute()` (outside the lock), kept if it fits."""
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                return found[0]
        value = compute()
        size = cost(value)
        if size > self._max_cost:
            return value
        with self._lock:
            if key not in self._entries:
                self._entries[key] = (value, size)
                self._cost += size
                while len(self._entries) > self._max_entries or self._cost > self._max_cost:
                    _, (_, dropped) = self._entries.popitem(last=False)
                    self._cost -= dropped
        return value

    def clear(self) -> None:
        """Forget every entry."""
        with self._lock:
            self._entries.clear()
            self._cost = 0
