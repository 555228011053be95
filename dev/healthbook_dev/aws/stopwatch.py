"""Each handler invocation of the in-process demo timed, with the time its AWS and HTTP calls took kept apart.

The whole bill's Lambda GB-seconds come from here (``healthbook_dev.bill``, docs/cost.md), not from the emulator's
billed milliseconds: LocalStack runs every function, itself and the benchmark on the same two cores, so its
durations describe the emulator. In process, against moto and the local fakes, the time of our own code is
measured as it runs; the time moto and the fakes took to answer is subtracted and replaced, in the bill, by a
stated latency per AWS call and per HTTP call.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Invocation:
    function: str
    units: int = 1  # what the invocation handled: files for ingest, one visit or one execution for the others
    wall_s: float = 0.0
    aws_s: float = 0.0  # inside botocore calls (moto answering)
    http_s: float = 0.0  # inside HTTP requests to the fakes (VNeID, the population service)
    aws_calls: Counter[str] = field(default_factory=Counter)  # "service.Operation"
    http_calls: int = 0

    @property
    def own_s(self) -> float:
        """Our code's time: the wall time less the time moto and the fakes took to answer."""
        return max(0.0, self.wall_s - self.aws_s - self.http_s)


class Stopwatch:
    """``with watch.installed():`` patches botocore and http.client for the block; ``with watch.invocation(name):``
    times one handler call on this thread."""

    def __init__(self) -> None:
        self.invocations: list[Invocation] = []
        self._current = threading.local()
        self._lock = threading.Lock()

    def _now(self) -> Invocation | None:
        return getattr(self._current, "invocation", None)

    @contextmanager
    def invocation(self, function: str, units: int = 1) -> Iterator[Invocation]:
        outer = self._now()
        record = Invocation(function, units)
        self._current.invocation = record
        started = time.perf_counter()
        try:
            yield record
        finally:
            record.wall_s = time.perf_counter() - started
            self._current.invocation = outer
            with self._lock:
                self.invocations.append(record)

    @contextmanager
    def installed(self) -> Iterator[Stopwatch]:
        from botocore.client import BaseClient  # type: ignore[import-untyped]
        from urllib3.connectionpool import HTTPConnectionPool

        make_api_call, make_request = BaseClient._make_api_call, HTTPConnectionPool._make_request
        watch = self

        def timed_api_call(client: Any, operation: str, params: Any) -> Any:
            record = watch._now()
            if record is None:
                return make_api_call(client, operation, params)
            started = time.perf_counter()
            try:
                return make_api_call(client, operation, params)
            finally:
                record.aws_s += time.perf_counter() - started
                record.aws_calls[f"{client.meta.service_model.service_name}.{operation}"] += 1

        def timed_request(pool: Any, *args: Any, **kwargs: Any) -> Any:  # one HTTP attempt (requests, urllib3)
            record = watch._now()
            started = time.perf_counter()
            try:
                return make_request(pool, *args, **kwargs)
            finally:
                if record is not None:
                    record.http_s += time.perf_counter() - started
                    record.http_calls += 1

        # setattr: patched for the block only, and put back
        setattr(BaseClient, "_make_api_call", timed_api_call)  # noqa: B010
        setattr(HTTPConnectionPool, "_make_request", timed_request)  # noqa: B010
        try:
            yield self
        finally:
            setattr(BaseClient, "_make_api_call", make_api_call)  # noqa: B010
            setattr(HTTPConnectionPool, "_make_request", make_request)  # noqa: B010


_ACTIVE: Stopwatch | None = None


@contextmanager
def timing(watch: Stopwatch) -> Iterator[Stopwatch]:
    """Make ``watch`` the one the sandbox's in-process Lambdas report to, for the block."""
    global _ACTIVE
    previous, _ACTIVE = _ACTIVE, watch
    try:
        with watch.installed():
            yield watch
    finally:
        _ACTIVE = previous


@contextmanager
def timed(function: str, units: int = 1) -> Iterator[None]:
    """Around one in-process handler call: timed when a stopwatch is active, free otherwise."""
    if _ACTIVE is None:
        yield
        return
    with _ACTIVE.invocation(function, units):
        yield


def profile_demo(visits: int = 60, seed: int = 2024) -> list[Invocation]:
    """Run the in-process demo (``healthbook demo``: a realistic mix of files, labelled defects included) under a
    stopwatch; every handler invocation, the first of each function being its cold one."""
    import contextlib
    import io
    from pathlib import Path
    from tempfile import TemporaryDirectory

    from healthbook_dev.demos import local

    watch = Stopwatch()
    with TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()), timing(watch):
        local.run(Path(out), visits=visits, seed=seed)
    return watch.invocations
