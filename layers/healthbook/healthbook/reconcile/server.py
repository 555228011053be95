"""A fake population service for tests and the demo: stdlib only, one ThreadingHTTPServer in a background thread,
serving a :class:`~healthbook.reconcile.population.FakePopulation` (or any registry) under the HTTP contract
that :class:`~healthbook.reconcile.http.PopulationClient` speaks (docs/reconciliation.md, "HTTP contract").

Endpoints:

* ``GET /v1/citizens/{id_number}`` - ``200`` ``{"id_number", "full_name", "birth", "sex"}``, ``404``
  ``{"error": "citizen_not_found"}``, ``400`` ``invalid_id_number``; ``401`` ``invalid_api_key`` when the server
  has an API key and ``X-Api-Key`` does not match it;
* ``/_admin/*`` - failure injection and counters for tests driven from another process
  (``POST /_admin/fail {"mode", "seconds"}``, ``POST /_admin/reset``, ``GET /_admin/stats``).

Failure injection: :meth:`FakePopulationServer.fail` (an outage of N seconds: ``5xx`` or ``timeout``).
Run standalone with ``python -m healthbook.reconcile.server --population FILE.json --port N``: the URL is printed
on stdout (one line) and the server runs until killed. Not a security boundary: bind it to 127.0.0.1 only.
Nothing is logged: request lines carry ID numbers.
"""

from __future__ import annotations

import argparse
import json
import secrets
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any, Literal
from urllib.parse import unquote

from healthbook.reconcile.matching import PopulationRegistry, PopulationUnavailable, id_format_ok
from healthbook.reconcile.population import FakePopulation

__all__ = ["FakePopulationServer", "main"]

FailMode = Literal["5xx", "timeout"]
NOT_FOUND_CODE = "citizen_not_found"  # the same value as healthbook.reconcile.http.NOT_FOUND_CODE (stdlib only here)
_CITIZEN_PATH = "/v1/citizens/"
_MAX_BODY = 64 * 1024


@dataclass(frozen=True)
class _Answer:
    status: int
    body: bytes
    content_type: str = "application/json; charset=utf-8"


def _json_answer(status: int, payload: Any) -> _Answer:
    return _Answer(status, json.dumps(payload, ensure_ascii=False).encode("utf-8"))


class FakePopulationServer:
    """``with FakePopulationServer.start(population) as server: client = PopulationClient(server.url)``."""

    def __init__(self, population: PopulationRegistry, *, api_key: str | None = None) -> None:
        self.population = population
        self._api_key = api_key or None
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.reset()

    def __repr__(self) -> str:
        state = self.url if self._server is not None else "stopped"
        return f"FakePopulationServer({state}, {self.lookups} lookups)"

    # -- lifecycle

    @classmethod
    def start(cls, population: PopulationRegistry, host: str = "127.0.0.1", port: int = 0,
              api_key: str | None = None) -> FakePopulationServer:
        server = cls(population, api_key=api_key)
        server._serve(host, port)
        return server

    def _serve(self, host: str, port: int) -> None:
        class Handler(_Handler):
            pass

        Handler.fake = self
        server = ThreadingHTTPServer((host, port), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="fake-population",
                                        daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakePopulationServer is not running")
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

    def __enter__(self) -> FakePopulationServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- state and failure injection

    def reset(self) -> None:
        """Forget counters and injected failures (the population itself is kept)."""
        with self._lock:
            self._counts = {"requests": 0, "lookups": 0, "found": 0, "not_found": 0, "unauthorised": 0,
                            "injected_failures": 0}
            self._fail_mode: FailMode | None = None
            self._fail_until = 0.0

    def fail(self, mode: FailMode = "5xx", seconds: float = 1.0) -> None:
        """An outage of ``seconds``: every ``/v1/`` request answers 503 (``5xx``), or hangs with no answer until
        the outage ends and then has its connection dropped (``timeout``). ``seconds=0`` ends an outage."""
        if mode not in ("5xx", "timeout"):
            raise ValueError(f"unknown failure mode {mode!r}")
        with self._lock:
            self._fail_mode = mode
            self._fail_until = time.monotonic() + max(0.0, seconds)

    def counts(self) -> dict[str, int]:
        """``requests`` (to ``/v1/``), ``lookups`` (reached the population), ``found``, ``not_found``,
        ``unauthorised``, ``injected_failures``."""
        with self._lock:
            return dict(self._counts)

    @property
    def lookups(self) -> int:
        """Lookups that reached the population (refused and failed requests excluded)."""
        return self.counts()["lookups"]

    # -- request handling (called from handler threads)

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def _injected(self) -> tuple[str, float]:
        """What the failure injection does to this request: ("proceed" | "5xx" | "hang", seconds to hang)."""
        with self._lock:
            self._counts["requests"] += 1
            remaining = self._fail_until - time.monotonic()
            if self._fail_mode is None or remaining <= 0:
                return "proceed", 0.0
            self._counts["injected_failures"] += 1
            return ("5xx", 0.0) if self._fail_mode == "5xx" else ("hang", remaining)

    def _authorised(self, presented: str | None) -> bool:
        if self._api_key is None:
            return True
        return presented is not None and secrets.compare_digest(presented.encode(), self._api_key.encode())

    def _lookup(self, raw_id: str, presented_key: str | None) -> _Answer:
        if not self._authorised(presented_key):
            self._count("unauthorised")
            return _json_answer(401, {"error": "invalid_api_key"})
        id_number = unquote(raw_id)
        if not id_format_ok(id_number):
            return _json_answer(400, {"error": "invalid_id_number"})
        try:
            with self._lock:  # FakePopulation is not thread-safe (its call counter)
                self._counts["lookups"] += 1
                citizen = self.population.lookup(id_number)
        except PopulationUnavailable:  # a registry that is itself a proxy
            return _json_answer(503, {"error": "service_unavailable"})
        if citizen is None:
            self._count("not_found")
            return _json_answer(404, {"error": NOT_FOUND_CODE})
        self._count("found")
        return _json_answer(200, asdict(citizen))

    def _admin(self, path: str, body: bytes) -> _Answer:
        try:
            args = json.loads(body) if body else {}
            if not isinstance(args, dict):
                raise ValueError
            if path == "/_admin/fail":
                self.fail(args.get("mode", "5xx"), float(args.get("seconds", 1.0)))
            elif path == "/_admin/reset":
                self.reset()
            elif path != "/_admin/stats":
                return _json_answer(404, {"error": "not_found"})
        except (ValueError, TypeError):
            return _json_answer(400, {"error": "invalid_admin_request"})
        return _json_answer(200, self.counts())


class _Handler(BaseHTTPRequestHandler):
    fake: FakePopulationServer
    protocol_version = "HTTP/1.1"
    server_version = "FakePopulation/1"
    # Buffered, so headers and body leave in one segment: written apart on a keep-alive connection, they meet
    # Nagle's algorithm and the client's delayed ACK, and every lookup waits ~40 ms.
    wbufsize = 64 * 1024

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
        if length > _MAX_BODY:
            raise ValueError("body too large")
        return self.rfile.read(length) if length > 0 else b""

    def _handle(self, method: str) -> None:
        fake = self.fake
        path = self.path.split("?", 1)[0]
        try:
            body = self._read_body()
        except ValueError:
            self.close_connection = True
            self._send(_json_answer(413, {"error": "too_large"}))
            return
        if path.startswith("/_admin/"):  # never failed, never counted as requests
            self._send(fake._admin(path, body) if method == "POST" or path == "/_admin/stats"
                       else _json_answer(405, {"error": "method_not_allowed"}))
            return
        if not path.startswith("/v1/"):
            self._send(_json_answer(404, {"error": "not_found"}))
            return
        action, hang = fake._injected()
        if action == "hang":
            fake._stopping.wait(hang)
            self.close_connection = True  # no answer at all: the client sees a read timeout or a dropped socket
            return
        if action == "5xx":
            self._send(_json_answer(503, {"error": "service_unavailable"}))
            return
        raw_id = path[len(_CITIZEN_PATH):] if path.startswith(_CITIZEN_PATH) else ""
        if not raw_id or "/" in raw_id:
            self._send(_json_answer(404, {"error": "not_found"}))
        elif method != "GET":
            self._send(_json_answer(405, {"error": "method_not_allowed"}))
        else:
            self._send(fake._lookup(raw_id, self.headers.get("X-Api-Key")))

    def _send(self, answer: _Answer) -> None:
        try:
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


# ------------------------------------------------------------------------------------------------------ CLI


def main(argv: Sequence[str] | None = None) -> int:
    """Serve a dumped FakePopulation until SIGTERM/SIGINT; the URL goes to stdout first, on one line."""
    parser = argparse.ArgumentParser(prog="python -m healthbook.reconcile.server",
                                     description="Serve a dumped FakePopulation over the population HTTP contract.")
    parser.add_argument("--population", required=True, metavar="FILE.json", help="written by FakePopulation.dump")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; keep it local)")
    parser.add_argument("--port", type=int, default=0, help="0 (the default) picks a free port")
    parser.add_argument("--api-key", default=None, help="require this X-Api-Key (demo only: visible in ps)")
    args = parser.parse_args(argv)

    try:
        population = FakePopulation.load(args.population)
    except (OSError, ValueError) as exc:  # FakePopulation.load's messages carry no personal data
        print(f"cannot load the population file: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            server = FakePopulationServer.start(population, args.host, args.port, api_key=args.api_key)
        except OSError as exc:
            print(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        with server:
            print(server.url, flush=True)
            while not stop.wait(0.5):
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
