"""What a function's runtime keeps between invocations of one container: its settings, read once from the
environment, and the clients and keys built from them, each rebuilt after its TTL when it has one."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from healthbook.aws.settings import FunctionSettings
from healthbook.kernel import Metrics, NoMetrics

if TYPE_CHECKING:  # the records adapter loads with the first store that needs it (the report function never does)
    from healthbook.aws.records import ConflictRetry

T = TypeVar("T")
S = TypeVar("S", bound=FunctionSettings)


@dataclass
class CachedRuntime:
    env: Mapping[str, str] = field(default_factory=lambda: os.environ)
    metrics: Metrics = field(default_factory=NoMetrics)
    clock: Callable[[], float] = time.monotonic
    _cache: dict[str, tuple[float, Any]] = field(default_factory=dict)

    def _cached(self, name: str, build: Callable[[], T], ttl: float | None = None) -> T:
        now = self.clock()
        hit = self._cache.get(name)
        if hit is not None and (ttl is None or now - hit[0] < ttl):
            cached: T = hit[1]
            return cached
        value = build()
        self._cache[name] = (now, value)
        close = getattr(hit[1], "close", None) if hit is not None else None
        if callable(close):  # an HTTP client rebuilt after the TTL: release its connection pool
            close()
        return value

    def settings(self, kind: type[S]) -> S:
        return self._cached(kind.__name__, lambda: kind.from_env(self.env))

    def _conflicts(self) -> ConflictRetry:
        """How this container's DynamoDB transactions retry a TransactionConflict, each retry counted."""
        return self._cached("conflicts", lambda: conflict_retry(self.metrics))


def conflict_retry(metrics: Metrics) -> ConflictRetry:
    """Transactions retried on TransactionConflict (docs/capacity.md), each retry counted as the metric
    CounterConflictRetries: what on call reads to see the counters' items getting hot."""
    from healthbook.aws.records import ConflictRetry

    return ConflictRetry(on_retry=lambda: metrics.count("CounterConflictRetries"))
