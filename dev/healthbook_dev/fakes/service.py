"""The HTTP plumbing shared by the fake services (:class:`~healthbook_dev.fakes.vneid.FakeVneid`,
:class:`~healthbook_dev.fakes.population_server.FakePopulationServer`): stdlib only, one ThreadingHTTPServer in a
background thread, JSON answers, outage injection and the ``/_admin/`` endpoints.

A fake subclasses :class:`FakeService`, calls ``super().__init__()`` once its own settings are set, serves with
``self._serve(host, port)`` from its ``start`` and answers its own routes in :meth:`FakeService._route`.
Every request goes: body read (``413`` past ``_max_body``) -> ``/_admin/*`` (never failed, never counted) ->
``404`` outside ``_api_prefix`` -> counted as a request and put through failure injection
(:meth:`FakeService._injected`) -> :meth:`FakeService._route`. Nothing is logged: request lines carry ID numbers.
Not a security boundary: bind it to 127.0.0.1 only.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Self

__all__ = ["Answer", "FakeService", "json_answer"]


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    content_type: str = "application/json; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


def json_answer(status: int, payload: Any, *headers: tuple[str, str]) -> Answer:
    return Answer(status, json.dumps(payload, ensure_ascii=False).encode("utf-8"), headers=tuple(headers))


class FakeService:
    """Lifecycle (``url``, ``stop``, context manager), counters and outages; subclasses add the routes."""

    _server_version: ClassVar[str] = "FakeService/1"
    _thread_name: ClassVar[str] = "fake-service"
    _max_body: ClassVar[int] = 64 * 1024
    _api_prefix: ClassVar[str] = ""  # requests outside it answer 404, uncounted and never failed
    _methods: ClassVar[tuple[str, ...]] = ("GET", "POST", "PUT", "DELETE")  # any other: 501, as http.server does
    _fail_modes: ClassVar[tuple[str, ...]] = ("5xx", "timeout")
    _counters: ClassVar[tuple[str, ...]] = ()  # between "requests" and "injected_failures" in counts()

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.reset()

    # -- lifecycle

    def _serve(self, host: str, port: int) -> None:
        class Handler(_Handler):
            pass

        Handler.service = self
        Handler.server_version = self._server_version
        server = ThreadingHTTPServer((host, port), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), name=self._thread_name,
                                        daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError(f"{type(self).__name__} is not running")
        host, port = self._server.server_address[:2]
        host_text = host.decode() if isinstance(host, bytes) else str(host)
        return f"http://{host_text}:{port}"

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers parked in a 'timeout' outage
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- state and failure injection

    def reset(self) -> None:
        """Forget counters and injected failures."""
        with self._lock:
            self._counts = dict.fromkeys(("requests", *self._counters, "injected_failures"), 0)
            self._fail_mode: str | None = None
            self._fail_until = 0.0

    def _begin_outage(self, mode: str, seconds: float) -> None:
        """What ``fail`` does (each fake's ``fail`` has its own modes and options): ``seconds=0`` ends an outage."""
        if mode not in self._fail_modes:
            raise ValueError(f"unknown failure mode {mode!r}")
        with self._lock:
            self._fail_mode = mode
            self._fail_until = time.monotonic() + max(0.0, seconds)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    # -- request handling (called from handler threads)

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def _injected(self, path: str) -> tuple[str, float, Answer | None]:
        """Counts the request and says what the failure injection does to it: (action, seconds to wait first,
        the answer to give instead of routing it). Action ``hang``: no answer at all, the connection is dropped
        after the wait; any other: wait, then answer (the given answer, or the route's)."""
        with self._lock:
            self._counts["requests"] += 1
            remaining = self._fail_until - time.monotonic()
            if self._fail_mode is None or remaining <= 0:
                return "proceed", 0.0, None
            self._counts["injected_failures"] += 1
            return self._outage(self._fail_mode, remaining)

    def _outage(self, mode: str, remaining: float) -> tuple[str, float, Answer | None]:
        """What an outage of ``mode`` does to a request (``remaining`` seconds left of it)."""
        if mode == "timeout":
            return "hang", remaining, None
        return "answer", 0.0, json_answer(503, {"error": "service_unavailable"})

    def _route(self, method: str, path: str, headers: Message, body: bytes) -> Answer:
        return json_answer(404, {"error": "not_found"})

    def _admin(self, path: str, body: bytes) -> Answer:
        try:
            args = json.loads(body) if body else {}
            if not isinstance(args, dict):
                raise ValueError
            if not self._admin_action(path, args):
                return json_answer(404, {"error": "not_found"})
        except (ValueError, KeyError, TypeError):
            return json_answer(400, {"error": "invalid_admin_request"})
        return json_answer(200, self.counts())

    def _admin_action(self, path: str, args: dict[str, Any]) -> bool:
        """Does what ``POST /_admin/...`` asks (every one answers the counts); False: no such endpoint."""
        if path == "/_admin/reset":
            self.reset()
        elif path != "/_admin/stats":
            return False
        return True


class _Handler(BaseHTTPRequestHandler):
    service: FakeService
    protocol_version = "HTTP/1.1"
    # Each answer leaves in one write: headers and body written apart on a keep-alive connection meet Nagle's
    # algorithm and the client's delayed ACK, and every request waits ~40 ms. The buffer holds any answer up to
    # its size; past it, no Nagle means the second write is not held back either.
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the request line holds an ID number: never log it (this also silences log_error)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > self.service._max_body:
            raise ValueError("body too large")
        return self.rfile.read(length) if length > 0 else b""

    def _handle(self, method: str) -> None:
        service = self.service
        if method not in service._methods:  # what http.server answers a method with no do_ handler
            self.send_error(HTTPStatus.NOT_IMPLEMENTED, f"Unsupported method ({method!r})")
            return
        path = self.path.split("?", 1)[0]
        try:
            body = self._read_body()
        except ValueError:
            self.close_connection = True  # the unread body must not be taken for the next request
            self._send(json_answer(413, {"error": "too_large"}))
            return
        if path.startswith("/_admin/"):  # never failed, never counted as requests
            self._send(service._admin(path, body) if method == "POST" or path == "/_admin/stats"
                       else json_answer(405, {"error": "method_not_allowed"}))
            return
        if not path.startswith(service._api_prefix):
            self._send(json_answer(404, {"error": "not_found"}))
            return
        action, delay, answer = service._injected(path)
        if delay > 0:
            service._stopping.wait(delay)
        if action == "hang":
            self.close_connection = True  # no answer at all: the client sees a read timeout or a dropped socket
            return
        if answer is None:
            answer = service._route(method, path, self.headers, body)
        self._send(answer)

    def _send(self, answer: Answer) -> None:
        try:
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(answer.body)))
            for name, value in answer.headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(answer.body)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
