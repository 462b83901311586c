"""The in-process entry map behind `PolicyCache`: bounded, each entry lives `ttl` seconds.

A read is a dict lookup, a clock read and a move to the recent end, because it happens
several times on every CheckAccess (cachetools' TTLCache took ~1.7 µs per read here,
this ~0.3 µs). Full, it drops the entry used longest ago, as TTLCache did, so a hot
entry survives a stream of one-off keys. Expired entries are dropped when read or
pushed out by newer ones, so the bound holds either way.

Each entry also carries the moment until which it is current on its own (`current_until`:
read from Postgres at t, it is current until t + max staleness; read from L2 or set
without one, never on its own). `get(key, confirmed_until)` serves it only while the
clock is before `confirmed_until` (the cache as a whole is confirmed current: events
flowing, relay heartbeats arriving) or before its own `current_until`. On a hit while
confirmed that is one float comparison more, with the clock already read for the TTL.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from typing import Callable, Generic, Hashable, Iterator, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ExpiringMap(Generic[K, V]):
    __slots__ = ("_data", "_maxsize", "_ttl", "_clock")

    def __init__(self, maxsize: int, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._data: OrderedDict[K, tuple[V, float, float]] = OrderedDict()
        self._maxsize = maxsize
        self._ttl = ttl
        self._clock = clock

    def get(self, key: K, confirmed_until: float = math.inf) -> V | None:
        """The entry, unless it expired, or unless the clock is past both `confirmed_until`
        and the entry's own `current_until` (then it stays, for a later confirmation)."""
        item = self._data.get(key)
        if item is None:
            return None
        now = self._clock()
        if now >= item[1]:
            del self._data[key]
            return None
        if now >= confirmed_until and now >= item[2]:
            return None
        self._data.move_to_end(key)
        return item[0]

    def held(self, key: K) -> V | None:
        """The entry if one is held and not expired, current or not (no recency update)."""
        item = self._data.get(key)
        return None if item is None or self._clock() >= item[1] else item[0]

    def __setitem__(self, key: K, value: V) -> None:
        self.put(key, value)

    def put(self, key: K, value: V, current_until: float = -math.inf) -> None:
        data = self._data
        data[key] = (value, self._clock() + self._ttl, current_until)
        data.move_to_end(key)
        while len(data) > self._maxsize:
            data.popitem(last=False)

    def __contains__(self, key: K) -> bool:
        return self.get(key) is not None

    def pop(self, key: K, default: V | None = None) -> V | None:
        item = self._data.pop(key, None)
        return default if item is None else item[0]

    def keys(self) -> list[K]:
        return list(self._data.keys())

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[K]:
        return iter(self.keys())
