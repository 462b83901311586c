"""One registry every counter of a process reports to.

Counters on the hot path stay plain attribute increments where they are kept (a dict or
dataclass field costs ~0.05 µs; a lock or a library call per event would cost more than
the answer): `CacheStats`, `SubscriberStats`, `RedisL2.errors`, `Answers.hits`, the
relay's and the call counters. Each owner registers a *source* here, a function returning
its current values, so one `snapshot()` reads every counter of the process under one
naming scheme (`<source>.<counter>`, labels as `name{label=value,...}`) — what a
Prometheus exporter, a debug endpoint or a test reads.
"""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from typing import Any, Callable, Mapping

Source = Callable[[], Mapping[str, float]]


class StatsRegistry:
    def __init__(self) -> None:
        self._sources: dict[str, Source] = {}

    def register(self, name: str, source: Source | Any) -> None:
        """Report `source` under `name`: a function returning {counter: value}, or a
        dataclass of counters (read as its fields each time). ValueError on a taken name."""
        if name in self._sources:
            raise ValueError(f"stats source {name!r} is registered already")
        if is_dataclass(source) and not isinstance(source, type):
            counters = source
            self._sources[name] = lambda: asdict(counters)
        elif callable(source) and not is_dataclass(source):  # a dataclass *class* is neither
            self._sources[name] = source
        else:
            raise TypeError(f"stats source {name!r} is neither a function nor a dataclass instance")

    def snapshot(self) -> dict[str, float]:
        """Every counter of every source now, as {"source.counter": value}."""
        values: dict[str, float] = {}
        for name, source in self._sources.items():
            for counter, value in source().items():
                values[f"{name}.{counter}"] = value
        return values
