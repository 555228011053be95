"""Each handler invocation of the in-process demo timed, with the time its AWS and HTTP calls took kept apart.

The whole bill's Lambda GB-seconds come from here (``healthbook_dev.bill``, docs/cost.md), not from the emulator's
billed milliseconds: LocalStack runs every function, itself and the benchmark on the same two cores, so its
durations describe the emulator. In process, against moto and the local fakes, the time of our own code is
measured as it runs (its CPU time, since 2026-12-07: a delivery task runs its visits on threads); the time moto and
the fakes took to answer is left out and replaced, in the bill, by a stated latency per AWS call and per HTTP call.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

MAIN_THREAD = 0  # the invocation's own thread, in Invocation.thread_calls; a worker it started is keyed by its ident
HTTP = "http"  # one HTTP attempt, among a thread's calls


@dataclass
class Invocation:
    """One handler invocation. Our code's time is CPU time (``time.thread_time``) of the invocation's thread and of
    the pool threads it starts, less the CPU moto took to answer in them: wall time would count a thread's waiting
    for the GIL while another runs (the workflow's own threads, the fakes, the other workers of a batch). The calls
    it waited on are kept per thread (``thread_calls``; its sleeps in ``thread_slept_s``): the bill prices each call
    at a stated latency, a thread's one after the other and the threads' at once."""

    function: str
    units: int = 1  # what the invocation handled: files for ingest, visits for deliver, one for the others
    wall_s: float = 0.0
    cpu_s: float = 0.0  # CPU of its threads, moto's answers included
    aws_s: float = 0.0  # wall inside botocore calls (moto answering)
    aws_cpu_s: float = 0.0  # CPU inside botocore calls
    aws_calls: Counter[str] = field(default_factory=Counter)  # "service.Operation", all threads
    thread_calls: dict[int, Counter[str]] = field(default_factory=dict)  # by thread: AWS calls and HTTP attempts
    thread_slept_s: dict[int, float] = field(default_factory=dict)  # by thread: time.sleep (Lambda bills it)
    thread: int = 0  # the ident of the invocation's own thread

    @property
    def own_s(self) -> float:
        """Our code's time: the CPU of the invocation's threads less what moto took to answer."""
        return max(0.0, self.cpu_s - self.aws_cpu_s)

    def key(self, thread: int) -> int:
        """How ``thread_calls`` and ``thread_slept_s`` name a thread."""
        return MAIN_THREAD if thread == self.thread else thread

    def calls_of(self, thread: int) -> Counter[str]:
        return self.thread_calls.setdefault(self.key(thread), Counter())


class Stopwatch:
    """``with watch.installed():`` patches botocore, http.client, ``time.sleep`` and ``ThreadPoolExecutor.submit``
    for the block; ``with watch.invocation(name):`` times one handler call on this thread and the pool threads it
    starts."""

    def __init__(self) -> None:
        self.invocations: list[Invocation] = []
        self._current = threading.local()
        self._lock = threading.Lock()

    def _now(self) -> Invocation | None:
        return getattr(self._current, "invocation", None)

    @contextmanager
    def invocation(self, function: str, units: int = 1) -> Iterator[Invocation]:
        outer = self._now()
        record = Invocation(function, units, thread=threading.get_ident())
        self._current.invocation = record
        started, cpu = time.perf_counter(), time.thread_time()
        try:
            yield record
        finally:
            record.wall_s = time.perf_counter() - started
            with self._lock:
                record.cpu_s += time.thread_time() - cpu
                self.invocations.append(record)
            self._current.invocation = outer

    @contextmanager
    def installed(self) -> Iterator[Stopwatch]:
        from concurrent.futures import ThreadPoolExecutor

        from botocore.client import BaseClient  # type: ignore[import-untyped]
        from urllib3.connectionpool import HTTPConnectionPool

        make_api_call, make_request = BaseClient._make_api_call, HTTPConnectionPool._make_request
        submit, sleep = ThreadPoolExecutor.submit, time.sleep
        watch = self

        def timed_api_call(client: Any, operation: str, params: Any) -> Any:
            record = watch._now()
            if record is None:
                return make_api_call(client, operation, params)
            started, cpu = time.perf_counter(), time.thread_time()
            try:
                return make_api_call(client, operation, params)
            finally:
                call = f"{client.meta.service_model.service_name}.{operation}"
                with watch._lock:
                    record.aws_s += time.perf_counter() - started
                    record.aws_cpu_s += time.thread_time() - cpu
                    record.aws_calls[call] += 1
                    record.calls_of(threading.get_ident())[call] += 1

        def timed_request(pool: Any, *args: Any, **kwargs: Any) -> Any:  # one HTTP attempt (requests, urllib3)
            record = watch._now()
            try:
                return make_request(pool, *args, **kwargs)
            finally:
                if record is not None:
                    with watch._lock:
                        record.calls_of(threading.get_ident())[HTTP] += 1

        def timed_sleep(seconds: float) -> None:
            record = watch._now()
            if record is not None:
                with watch._lock:
                    thread = record.key(threading.get_ident())
                    record.thread_slept_s[thread] = record.thread_slept_s.get(thread, 0.0) + seconds
            sleep(seconds)

        def traced_submit(pool: Any, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
            record = watch._now()
            if record is None:
                return submit(pool, fn, *args, **kwargs)

            def run(*given: Any, **named: Any) -> Any:  # on the pool's thread: part of the invocation
                outer = watch._now()
                watch._current.invocation = record
                cpu = time.thread_time()
                try:
                    return fn(*given, **named)
                finally:
                    with watch._lock:
                        record.cpu_s += time.thread_time() - cpu
                    watch._current.invocation = outer

            return submit(pool, run, *args, **kwargs)

        # setattr: patched for the block only, and put back
        setattr(BaseClient, "_make_api_call", timed_api_call)  # noqa: B010
        setattr(HTTPConnectionPool, "_make_request", timed_request)  # noqa: B010
        setattr(ThreadPoolExecutor, "submit", traced_submit)  # noqa: B010
        setattr(time, "sleep", timed_sleep)  # noqa: B010
        try:
            yield self
        finally:
            setattr(BaseClient, "_make_api_call", make_api_call)  # noqa: B010
            setattr(HTTPConnectionPool, "_make_request", make_request)  # noqa: B010
            setattr(ThreadPoolExecutor, "submit", submit)  # noqa: B010
            setattr(time, "sleep", sleep)  # noqa: B010


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
